//! `protocol: tcp`: connect, secure, then relay bytes as they are. No authentication phase:
//! the credential is keyward's client certificate (mTLS), if configured.

use std::sync::Arc;

use tracing::debug;

use crate::connect;
use crate::error::ConnError;
use crate::listener::ClientStream;
use crate::relay::{relay, Relayed};
use crate::runtime::ResourceRuntime;

/// How a connection failed: before relaying (nothing reached the app) or while relaying.
#[derive(Debug)]
pub enum Failure {
    /// connect or secure failed; the client connection is closed.
    Open(ConnError),
    /// The relay ended with an error.
    Relay(ConnError),
}

/// Serves one application connection.
pub async fn serve(client: ClientStream, res: Arc<ResourceRuntime>) -> Result<Relayed, Failure> {
    let upstream = connect::open(&res).await.map_err(Failure::Open)?;
    if let tokio_util::either::Either::Right(tls) = &upstream {
        let (_, session) = tls.get_ref();
        debug!(version = ?session.protocol_version(), "upstream secured");
    }
    relay(client, upstream, res.idle_timeout)
        .await
        .map_err(Failure::Relay)
}
