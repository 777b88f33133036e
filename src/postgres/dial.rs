//! connect + secure to a PostgreSQL server: SSLRequest then TLS (protocol 3.0, "SSL Session
//! Encryption"), or PostgreSQL 17's direct TLS with ALPN `postgresql`.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_util::either::Either;

use crate::config::{Negotiation, TlsMode};
use crate::connect::{Admitted, Dialer, UpstreamStream};
use crate::error::{ConnError, Reason, Side};

use super::codec;

/// Connect, then TLS per the mode: SSLRequest first (`S` → TLS, `N` → refused unless the mode
/// is `disable`), or direct TLS with ALPN `postgresql`.
pub async fn open(
    dialer: &Dialer,
    negotiation: Negotiation,
    admitted: &Admitted,
) -> Result<UpstreamStream, ConnError> {
    let mut tcp = dialer.connect().await?;
    let Some(tls) = dialer.tls.as_ref() else {
        return Ok(Either::Left(tcp));
    };
    if negotiation == Negotiation::Postgres {
        ssl_request(
            &mut tcp,
            &dialer.upstream,
            tls.mode,
            dialer.handshake_timeout,
        )
        .await?;
    }
    let stream = dialer.secure(tcp, tls, admitted).await?;
    Ok(Either::Right(stream))
}

/// SSLRequest on a fresh connection; `Ok` when the server answered `S`.
pub async fn ssl_request(
    tcp: &mut TcpStream,
    upstream: &crate::config::Upstream,
    mode: TlsMode,
    timeout: Duration,
) -> Result<(), ConnError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        tcp.write_all(&codec::ssl_request()).await?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await?;
        Ok::<_, std::io::Error>(answer[0])
    };
    let answer = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| {
            ConnError::new(
                Side::Upstream,
                Reason::HandshakeTimeout,
                "the server did not answer the SSLRequest",
            )
        })?
        .map_err(|e| ConnError::from_io(Side::Upstream, &e))?;
    match answer {
        b'S' => Ok(()),
        b'N' => Err(ConnError::new(
            Side::Upstream,
            Reason::Tls,
            format!(
                "server does not support TLS (it answered N to SSLRequest) and tls.mode is {}",
                mode.as_str()
            ),
        )),
        other => Err(ConnError::new(
            Side::Upstream,
            Reason::Protocol,
            format!(
                "unexpected answer {:?} to SSLRequest: is {} a PostgreSQL server?",
                other as char, upstream
            ),
        )),
    }
}
