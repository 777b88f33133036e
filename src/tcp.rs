//! `protocol: tcp`: connect, secure, then relay bytes as they are. No authentication phase:
//! the credential is keyward's client certificate (mTLS), if configured.

use std::sync::Arc;

use tracing::debug;

use crate::driver::{App, Handler, Resource, Served, TlsStart};
use crate::record::{Failure, Stats};
use crate::relay::relay;

/// The `tcp` handler.
#[derive(Debug, Default)]
pub struct Tcp;

impl Handler for Tcp {
    const TLS_START: TlsStart = TlsStart::Accept;
    /// keyward reads nothing from the app before relaying.
    const MAX_PRE_AUTH: usize = 0;

    async fn serve(&self, app: &mut App, res: &Arc<Resource>, _stats: &Arc<Stats>) -> Served {
        let admitted = app.admit().map_err(Failure::Open)?;
        let upstream = res.dialer.open(&admitted).await.map_err(Failure::Open)?;
        if let tokio_util::either::Either::Right(tls) = &upstream {
            let (_, session) = tls.get_ref();
            debug!(version = ?session.protocol_version(), "upstream secured");
        }
        let app = app.relay();
        crate::audit::started();
        relay(app, upstream, res.idle_timeout)
            .await
            .map_err(Failure::Relay)
    }
}
