//! A stream with a read buffer, for the login phase of the database protocols: the codecs
//! (sans I/O) say how long the next message is; this reads until it is all there. Whatever
//! was read beyond the login is handed to the relay, never dropped.

use bytes::{Bytes, BytesMut};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::error::{ConnError, Reason, Side};

/// A stream and the bytes read from it but not consumed yet.
#[derive(Debug)]
pub struct Wire<S> {
    /// The stream.
    pub io: S,
    /// Read, not yet consumed.
    pub buf: BytesMut,
    side: Side,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    /// Wraps `io`; errors are attributed to `side`.
    pub fn new(io: S, side: Side) -> Self {
        Self {
            io,
            buf: BytesMut::with_capacity(8 * 1024),
            side,
        }
    }

    /// Reads more bytes; an EOF is an error (`Truncated`) naming what was expected.
    pub async fn fill(&mut self, expecting: &str) -> Result<(), ConnError> {
        match self.io.read_buf(&mut self.buf).await {
            Ok(0) => Err(ConnError::new(
                self.side,
                Reason::Truncated,
                format!(
                    "the {} closed the connection while keyward waited for {expecting}",
                    side_noun(self.side)
                ),
            )),
            Ok(_) => Ok(()),
            Err(e) => Err(ConnError::from_io(self.side, &e)),
        }
    }

    /// Reads until `parse` finds a whole message at the start of the buffer, then takes it.
    pub async fn message<E: std::fmt::Display>(
        &mut self,
        expecting: &str,
        parse: impl Fn(&[u8]) -> Result<Option<usize>, E>,
    ) -> Result<Bytes, ConnError> {
        loop {
            match parse(&self.buf) {
                Ok(Some(len)) => return Ok(self.buf.split_to(len).freeze()),
                Ok(None) => self.fill(expecting).await?,
                Err(e) => return Err(self.protocol(format!("{expecting}: {e}"))),
            }
        }
    }

    /// Writes all of `data` and flushes.
    pub async fn send(&mut self, data: &[u8]) -> Result<(), ConnError> {
        let result = async {
            self.io.write_all(data).await?;
            self.io.flush().await
        }
        .await;
        result.map_err(|e| ConnError::from_io(self.side, &e))
    }

    /// A protocol violation by this side.
    pub fn protocol(&self, detail: String) -> ConnError {
        ConnError::new(self.side, Reason::Protocol, detail)
    }
}

fn side_noun(side: Side) -> &'static str {
    match side {
        Side::Client => "app",
        Side::Upstream => "upstream",
        Side::Internal => "proxy",
    }
}

/// The upstream side of the relay, with bytes already read during login served first.
pub struct Prefixed<S> {
    inner: S,
    prefix: bytes::Bytes,
}

impl<S> Prefixed<S> {
    /// `inner`, with `prefix` read first.
    pub fn new(inner: S, prefix: bytes::Bytes) -> Self {
        Self { inner, prefix }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
