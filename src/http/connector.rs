//! The upstream connector of an `http` resource: keyward's own connect + secure phases behind
//! hyper-util's pooled client, so pooled connections are verified exactly like TCP ones and
//! belong to one resource's TLS config (a new config = a new client = a new pool).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::config::Upstream;
use crate::connect::{self, UpstreamStream};
use crate::error::ConnError;
use crate::tls::TlsClient;

/// Connects to one upstream with one TLS client config; the request URI is not consulted.
#[derive(Clone, Debug)]
pub struct Connector {
    pub(crate) resource: String,
    pub(crate) upstream: Upstream,
    pub(crate) tls: Option<TlsClient>,
    pub(crate) connect_timeout: Duration,
    pub(crate) handshake_timeout: Duration,
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<Conn>;
    type Error = ConnError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let stream = connect::open_observed(
                &this.resource,
                &this.upstream,
                this.tls.as_ref(),
                this.connect_timeout,
                this.handshake_timeout,
            )
            .await?;
            Ok(TokioIo::new(Conn(stream)))
        })
    }
}

/// A connection made by [`Connector`]; reports ALPN `h2` to the pool.
#[derive(Debug)]
pub struct Conn(UpstreamStream);

impl Connection for Conn {
    fn connected(&self) -> Connected {
        match &self.0 {
            tokio_util::either::Either::Right(tls)
                if tls.get_ref().1.alpn_protocol() == Some(b"h2") =>
            {
                Connected::new().negotiated_h2()
            }
            _ => Connected::new(),
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
