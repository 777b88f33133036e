//! The upstream connector of an `http` resource: keyward's own connect + secure phases behind
//! hyper-util's pooled client, so pooled connections are verified exactly like TCP ones and
//! belong to one resource's TLS config (a new config = a new client = a new pool).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::connect::{Admitted, Dialer, UpstreamStream};
use crate::error::{ConnError, Reason, Side};

/// Connects to one upstream with one TLS client config; the request URI is not consulted.
#[derive(Clone, Debug)]
pub struct Connector {
    pub(crate) dialer: Arc<Dialer>,
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<Conn>;
    type Error = ConnError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let dialer = self.dialer.clone();
        Box::pin(async move {
            // The pool dials only for requests that `http::forward` sends, and `forward` takes
            // the app's admission: the check was made for the request this connection serves.
            let admitted = Admitted::grant();
            let stream = dialer.open(&admitted).await?;
            Ok(TokioIo::new(Conn(stream)))
        })
    }
}

/// A connection made by [`Connector`] (or by an `http` resource's own pool); reports ALPN
/// `h2` to the pool.
#[derive(Debug)]
pub struct Conn(UpstreamStream);

impl Conn {
    /// Wraps an upstream connection keyward opened.
    pub(crate) fn new(stream: UpstreamStream) -> Self {
        Self(stream)
    }

    /// Whether TLS negotiated HTTP/2 (ALPN `h2`).
    pub(crate) fn negotiated_h2(&self) -> bool {
        matches!(&self.0, tokio_util::either::Either::Right(tls)
            if tls.get_ref().1.alpn_protocol() == Some(b"h2"))
    }
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        if self.negotiated_h2() {
            Connected::new().negotiated_h2()
        } else {
            Connected::new()
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// Classifies an HTTP client error (hyper's, hyper-util's): keyward's own connect/TLS error
/// where there is one.
pub fn describe_client_error(err: &(dyn std::error::Error + 'static)) -> ConnError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(conn) = e.downcast_ref::<ConnError>() {
            return conn.clone();
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return ConnError::from_io(Side::Upstream, io);
        }
        source = e.source();
    }
    let detail = match err.source() {
        Some(inner) => format!("upstream HTTP error: {inner}"),
        None => format!("upstream HTTP error: {err}"),
    };
    ConnError::new(Side::Upstream, Reason::Protocol, detail)
}
