//! Lifecycle phases **connect** and **secure**, shared by every protocol: a TCP connection to
//! the upstream within `connect_timeout`, then TLS with the resource's `ClientConfig` within
//! `handshake_timeout`. PostgreSQL and MySQL negotiate in their own protocol between the two.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::either::Either;

use crate::config::Upstream;
use crate::error::{ConnError, Reason, Side};
use crate::tls::TlsClient;

/// A connection to the upstream: TLS, or plaintext for `mode: disable`.
pub type UpstreamStream = Either<TcpStream, TlsStream<TcpStream>>;

/// Tells the connection's audit session (if any) about an upstream connection taken from a
/// pool (PostgreSQL): its address and TLS session.
pub fn audit_upstream(up: &UpstreamStream) {
    match up {
        Either::Left(tcp) => crate::audit::upstream_tcp(tcp),
        Either::Right(tls) => {
            crate::audit::upstream_tcp(tls.get_ref().0);
            crate::audit::upstream_tls(tls.get_ref().1);
        }
    }
}

/// TCP to the upstream, trying each resolved address in turn.
pub async fn connect(upstream: &Upstream, timeout: Duration) -> Result<TcpStream, ConnError> {
    let attempt = async {
        let addrs = crate::resolve::resolve(&upstream.host, upstream.port)
            .await
            .map_err(|e| {
                ConnError::new(
                    Side::Upstream,
                    Reason::Resolve,
                    format!("cannot resolve \"{}\": {e}", upstream.host),
                )
            })?;
        let mut last = None;
        for addr in addrs.iter() {
            match TcpStream::connect(*addr).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) => {
                let mut err = ConnError::from_io(Side::Upstream, &e);
                if err.reason == Reason::Io || err.reason == Reason::ConnectTimeout {
                    err.reason = Reason::ConnectFailed;
                    err.detail = format!("connecting to {upstream}: {e}");
                } else if err.reason == Reason::ConnectRefused {
                    err.detail = format!("connection refused by {upstream}");
                }
                err
            }
            None => ConnError::new(
                Side::Upstream,
                Reason::Resolve,
                format!("\"{}\" resolved to no address", upstream.host),
            ),
        })
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(ConnError::new(
            Side::Upstream,
            Reason::ConnectTimeout,
            format!(
                "connect timeout: {upstream} did not answer within {}",
                humantime::format_duration(timeout)
            ),
        )),
    }
}

/// TLS over an established TCP connection.
pub async fn secure(
    tcp: TcpStream,
    tls: &TlsClient,
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, ConnError> {
    let connector = TlsConnector::from(tls.config.clone());
    match tokio::time::timeout(timeout, connector.connect(tls.server_name.clone(), tcp)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => {
            let mut err = ConnError::from_io(Side::Upstream, &e);
            if err.reason == Reason::Truncated || err.reason == Reason::Reset {
                err.reason = Reason::Tls;
                err.detail = "the upstream closed the connection during the TLS handshake (is it a TLS port?)".to_owned();
            }
            Err(err)
        }
        Err(_) => Err(ConnError::new(
            Side::Upstream,
            Reason::HandshakeTimeout,
            format!(
                "handshake timeout: no TLS handshake within {}",
                humantime::format_duration(timeout)
            ),
        )),
    }
}

/// Proof that the app on whose behalf keyward is about to use a credential passed the
/// listener's inbound policy (`listen_tls` with `require_client_cert` or an `allow` list).
/// Everything that presents a credential upstream — the TLS handshake with keyward's client
/// certificate, a database password, a pooled logged-in connection, an HTTP injector — takes
/// one, so no protocol can reach the upstream login without the driver's check.
#[derive(Debug)]
pub struct Admitted {
    _checked: (),
}

impl Admitted {
    /// Only the connection driver (after the inbound policy check) and keyward's own
    /// operator commands (`probe`, no app involved) grant admission.
    pub(crate) fn grant() -> Self {
        Self { _checked: () }
    }
}

/// How to reach one upstream: connect + secure with one resource's TLS config and timeouts.
/// Shared by every protocol and by the HTTP connector. An empty `resource` is not observed in
/// the metrics (the OAuth2 token endpoint is not the resource's upstream).
#[derive(Debug, Clone)]
pub struct Dialer {
    /// The resource (metric label), or empty.
    pub resource: String,
    /// Where to connect.
    pub upstream: Upstream,
    /// TLS; `None` for `mode: disable`.
    pub tls: Option<TlsClient>,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// TLS handshake (and upstream login) timeout.
    pub handshake_timeout: Duration,
}

impl Dialer {
    /// connect: TCP, timed into `keyward_upstream_connect_seconds`. No credential is shown.
    pub async fn connect(&self) -> Result<TcpStream, ConnError> {
        let started = tokio::time::Instant::now();
        let tcp = connect(&self.upstream, self.connect_timeout).await?;
        if !self.resource.is_empty() {
            crate::audit::upstream_tcp(&tcp);
            crate::metrics::metrics()
                .connect_seconds
                .with_label_values(&[&self.resource])
                .observe(started.elapsed().as_secs_f64());
        }
        Ok(tcp)
    }

    /// secure: TLS over `tcp` (keyward's client certificate is a credential: admission
    /// first), timed into `keyward_tls_handshake_seconds`, recording the expiry of the leaf
    /// certificate the upstream presented.
    pub async fn secure(
        &self,
        tcp: TcpStream,
        tls: &TlsClient,
        _admitted: &Admitted,
    ) -> Result<TlsStream<TcpStream>, ConnError> {
        let started = tokio::time::Instant::now();
        let stream = secure(tcp, tls, self.handshake_timeout).await?;
        if self.resource.is_empty() {
            return Ok(stream);
        }
        crate::audit::upstream_tls(stream.get_ref().1);
        let m = crate::metrics::metrics();
        m.handshake_seconds
            .with_label_values(&[&self.resource])
            .observe(started.elapsed().as_secs_f64());
        if let Some(leaf) = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
        {
            m.observe_leaf(&self.resource, leaf);
        }
        Ok(stream)
    }

    /// connect + secure, per the TLS mode.
    pub async fn open(&self, admitted: &Admitted) -> Result<UpstreamStream, ConnError> {
        let tcp = self.connect().await?;
        match &self.tls {
            Some(tls) => Ok(Either::Right(self.secure(tcp, tls, admitted).await?)),
            None => Ok(Either::Left(tcp)),
        }
    }
}
