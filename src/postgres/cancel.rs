//! Query cancellation. Each app session gets a backend key of keyward's own (never the
//! server's); a CancelRequest carrying it is sent on to the server, over a new connection
//! secured per the resource's TLS mode, with the server's real key. Unknown keys are ignored
//! silently, as PostgreSQL does.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use ring::rand::SecureRandom;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info};

use crate::config::{Negotiation, ResourceName};
use crate::connect::{Admitted, Dialer};

type Key = (i32, Vec<u8>);

/// Where a session's cancel requests go: its resource's upstream and the server's own key.
pub struct Target {
    /// The resource the session belongs to (a cancel arrives on its listener).
    pub resource: ResourceName,
    /// How the session's server connection was made.
    pub dialer: Arc<Dialer>,
    /// SSLRequest or direct TLS.
    pub negotiation: Negotiation,
    /// The server's process id.
    pub pid: i32,
    /// The server's secret key.
    pub key: Vec<u8>,
}

static SESSIONS: LazyLock<Mutex<HashMap<Key, Target>>> = LazyLock::new(Default::default);

fn sessions() -> std::sync::MutexGuard<'static, HashMap<Key, Target>> {
    match SESSIONS.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Removes a session's key when the session ends.
#[derive(Debug)]
pub struct Registration(Key);

impl Drop for Registration {
    fn drop(&mut self) {
        sessions().remove(&self.0);
    }
}

/// Registers a session whose server key is (`pid`, `key`); returns keyward's key for the app
/// (same length as the server's: 4 bytes in protocol 3.0).
pub fn register(target: Target) -> (Registration, i32, Vec<u8>) {
    let rng = ring::rand::SystemRandom::new();
    let mut own_key = vec![0u8; target.key.len().max(4)];
    let mut map = sessions();
    loop {
        let mut pid_bytes = [0u8; 4];
        // The OS RNG does not fail on Linux; a zero key would still be unique per pid.
        let _ = rng.fill(&mut pid_bytes);
        let _ = rng.fill(&mut own_key);
        let own_pid = (i32::from_be_bytes(pid_bytes) & 0x7fff_ffff).max(1);
        let k = (own_pid, own_key.clone());
        if map.contains_key(&k) {
            continue;
        }
        map.insert(k.clone(), target);
        return (Registration(k), own_pid, own_key);
    }
}

/// Forwards a CancelRequest received on `listener`'s port, if the key is one keyward gave
/// out for that resource. The key itself is the admission: only the app that got it knows it.
pub async fn forward(listener: &ResourceName, pid: i32, key: &[u8]) {
    let target = {
        let map = sessions();
        map.get(&(pid, key.to_vec()))
            .filter(|t| &t.resource == listener)
            .map(|t| {
                (
                    t.resource.clone(),
                    t.dialer.clone(),
                    t.negotiation,
                    t.pid,
                    t.key.clone(),
                )
            })
    };
    let Some((resource, dialer, negotiation, server_pid, server_key)) = target else {
        debug!("CancelRequest with an unknown key: ignored");
        return;
    };
    let send = async {
        let admitted = Admitted::grant();
        let mut upstream = super::dial::open(&dialer, negotiation, &admitted).await?;
        // The session may have ended while keyward connected (its server connection may even
        // serve another app by now, pooled): only a key still registered is sent on.
        if !sessions().contains_key(&(pid, key.to_vec())) {
            debug!("CancelRequest for a session that ended meanwhile: dropped");
            return Ok(());
        }
        upstream
            .write_all(&super::codec::cancel_request(server_pid, &server_key))
            .await
            .map_err(|e| crate::error::ConnError::from_io(crate::error::Side::Upstream, &e))?;
        let _ = upstream.flush().await;
        // The server closes the connection when it has read the request.
        let mut sink = [0u8; 64];
        let _ = tokio::time::timeout(Duration::from_secs(5), upstream.read(&mut sink)).await;
        Ok::<_, crate::error::ConnError>(())
    };
    match send.await {
        Ok(()) => info!(resource = %resource, "query cancel request forwarded"),
        Err(e) => {
            tracing::warn!(resource = %resource, reason = e.reason.as_str(), "could not forward a cancel request: {}", e.detail)
        }
    }
}
