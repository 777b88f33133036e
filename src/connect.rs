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
use crate::runtime::ResourceRuntime;
use crate::tls::TlsClient;

/// A connection to the upstream: TLS, or plaintext for `mode: disable`.
pub type UpstreamStream = Either<TcpStream, TlsStream<TcpStream>>;

/// TCP to the upstream, trying each resolved address in turn.
pub async fn connect(upstream: &Upstream, timeout: Duration) -> Result<TcpStream, ConnError> {
    let attempt = async {
        let addrs = tokio::net::lookup_host((upstream.host.as_str(), upstream.port))
            .await
            .map_err(|e| {
                ConnError::new(
                    Side::Upstream,
                    Reason::Resolve,
                    format!("cannot resolve \"{}\": {e}", upstream.host),
                )
            })?;
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
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

/// connect + secure, per the resource's TLS mode.
pub async fn open(res: &ResourceRuntime) -> Result<UpstreamStream, ConnError> {
    open_observed(
        res.name.as_str(),
        &res.upstream,
        res.tls.as_ref(),
        res.connect_timeout,
        res.handshake_timeout,
    )
    .await
}

/// connect + secure, timing both phases into the metrics and recording the expiry of the leaf
/// certificate the upstream presented. An empty `resource` is not observed.
pub async fn open_observed(
    resource: &str,
    upstream: &Upstream,
    tls: Option<&TlsClient>,
    connect_timeout: Duration,
    handshake_timeout: Duration,
) -> Result<UpstreamStream, ConnError> {
    let tcp = connect_observed(resource, upstream, connect_timeout).await?;
    match tls {
        Some(tls) => Ok(Either::Right(
            secure_observed(resource, tcp, tls, handshake_timeout).await?,
        )),
        None => Ok(Either::Left(tcp)),
    }
}

/// connect, timed into `keyward_upstream_connect_seconds` (unless `resource` is empty).
pub async fn connect_observed(
    resource: &str,
    upstream: &Upstream,
    timeout: Duration,
) -> Result<TcpStream, ConnError> {
    let started = tokio::time::Instant::now();
    let tcp = connect(upstream, timeout).await?;
    if !resource.is_empty() {
        crate::metrics::metrics()
            .connect_seconds
            .with_label_values(&[resource])
            .observe(started.elapsed().as_secs_f64());
    }
    Ok(tcp)
}

/// secure, timed into `keyward_upstream_handshake_seconds`, recording the expiry of the leaf
/// certificate the upstream presented (unless `resource` is empty).
pub async fn secure_observed(
    resource: &str,
    tcp: TcpStream,
    tls: &TlsClient,
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, ConnError> {
    let started = tokio::time::Instant::now();
    let stream = secure(tcp, tls, timeout).await?;
    if resource.is_empty() {
        return Ok(stream);
    }
    let m = crate::metrics::metrics();
    m.handshake_seconds
        .with_label_values(&[resource])
        .observe(started.elapsed().as_secs_f64());
    if let Some(leaf) = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
    {
        m.observe_leaf(resource, leaf);
    }
    Ok(stream)
}
