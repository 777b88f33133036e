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
    /// `fill` refuses to buffer more than this many bytes.
    limit: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    /// Wraps `io`; errors are attributed to `side`.
    pub fn new(io: S, side: Side) -> Self {
        Self {
            io,
            // Small until a message needs more (`fill` grows it): a connection that waits
            // for its first bytes holds 1 KiB, not a full read buffer.
            buf: BytesMut::with_capacity(1024),
            side,
            limit: usize::MAX,
        }
    }

    /// The same, refusing to buffer more than `limit` bytes (a message before
    /// authentication that does not fit is an error, never unbounded buffering).
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Changes the buffer limit.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// Reads more bytes; an EOF is an error (`Truncated`) naming what was expected.
    pub async fn fill(&mut self, expecting: &str) -> Result<(), ConnError> {
        if self.buf.len() >= self.limit {
            return Err(ConnError::new(
                self.side,
                Reason::MessageTooLarge,
                format!(
                    "{expecting} is larger than {} bytes, the limit before authentication",
                    self.limit
                ),
            ));
        }
        let room = self.limit - self.buf.len();
        let read = if room < 8 * 1024 {
            // Never read past the limit: this read takes at most the room left.
            let mut chunk = vec![0u8; room];
            match self.io.read(&mut chunk).await {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    Ok(n)
                }
                Err(e) => Err(e),
            }
        } else {
            if self.buf.capacity() - self.buf.len() < 512 {
                self.buf.reserve(8 * 1024);
            }
            self.io.read_buf(&mut self.buf).await
        };
        match read {
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

/// What a [`Filtered`] stream does with each chunk read from its inner stream: appends what
/// the reader sees to `out`, and anything to write back to the inner stream to `reply`. An
/// error ends the stream: `out` and `reply` so far are delivered, then reads return it.
pub type Filter = Box<dyn FnMut(&[u8], &mut Vec<u8>, &mut Vec<u8>) -> std::io::Result<()> + Send>;

/// A stream whose reads serve `prefix` first (bytes read during a login), then pass through
/// an optional [`Filter`]; replies the filter asks for are written to the inner stream before
/// reading on. Writes go to the inner stream unchanged.
pub struct Filtered<S> {
    inner: S,
    filter: Option<Filter>,
    raw: Vec<u8>,
    out: Vec<u8>,
    /// How much of `raw` and of `out`'s capacity were ever used: what the drop wipes.
    raw_used: usize,
    out_used: usize,
    pos: usize,
    reply: Vec<u8>,
    /// The filter's error, returned once `out` and `reply` are delivered.
    ending: Option<std::io::Error>,
}

/// A filter may put a credential into what it passes on (Redis: the app's AUTH rewritten to
/// keyward's): its buffers are wiped when the stream is dropped.
impl<S> Drop for Filtered<S> {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        // Only a filtered stream has a read buffer of its own. What was never written to
        // holds nothing: only the used extent is wiped (a whole 32 KiB per Redis session was).
        if !self.raw.is_empty() {
            self.raw[..self.raw_used].zeroize();
            let used = self.out_used.max(self.out.len());
            self.out.resize(used, 0);
            self.out[..used].zeroize();
        }
    }
}

/// A stream with bytes already read served first.
pub type Prefixed<S> = Filtered<S>;

impl<S> Filtered<S> {
    /// `inner`, with `prefix` read first, unfiltered.
    pub fn new(inner: S, prefix: bytes::Bytes) -> Self {
        Self {
            inner,
            filter: None,
            raw: Vec::new(),
            out: prefix.to_vec(),
            raw_used: 0,
            out_used: 0,
            pos: 0,
            reply: Vec::new(),
            ending: None,
        }
    }

    /// `inner`, with `prefix` and everything read after it passed through `filter`.
    pub fn with_filter(inner: S, prefix: &[u8], mut filter: Filter) -> Self {
        let mut out = Vec::with_capacity(16 * 1024);
        let mut reply = Vec::new();
        let ending = filter(prefix, &mut out, &mut reply).err();
        Self {
            inner,
            filter: Some(filter),
            raw: vec![0; 16 * 1024],
            out_used: out.len(),
            out,
            raw_used: 0,
            pos: 0,
            reply,
            ending,
        }
    }
}

impl<S: AsyncWrite + Unpin> Filtered<S> {
    /// Whether the filter refused the very first bytes, with nothing before them to pass on:
    /// then the reply it made is written and its error returned, and the connection can end
    /// without ever reaching the upstream.
    pub async fn refused_at_once(&mut self) -> Option<std::io::Error> {
        if self.pos < self.out.len() {
            return None;
        }
        let e = self.ending.take()?;
        let _ = self.inner.write_all(&self.reply).await;
        let _ = self.inner.flush().await;
        self.reply.clear();
        Some(e)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Filtered<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            // The peer waits for these (e.g. an ERR for a refused command): nothing else flows.
            while !this.reply.is_empty() {
                match Pin::new(&mut this.inner).poll_write(cx, &this.reply) {
                    Poll::Ready(Ok(n)) => {
                        this.reply.drain(..n);
                        if this.reply.is_empty() {
                            let _ = Pin::new(&mut this.inner).poll_flush(cx);
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if this.pos < this.out.len() {
                let n = (this.out.len() - this.pos).min(buf.remaining());
                buf.put_slice(&this.out[this.pos..this.pos + n]);
                this.pos += n;
                if this.pos == this.out.len() {
                    this.out.clear();
                    this.pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = this.ending.take() {
                this.filter = None;
                return Poll::Ready(Err(e));
            }
            let Some(filter) = this.filter.as_mut() else {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            };
            let mut raw = ReadBuf::new(&mut this.raw);
            match Pin::new(&mut this.inner).poll_read(cx, &mut raw) {
                Poll::Ready(Ok(())) => {
                    let n = raw.filled().len();
                    if n == 0 {
                        return Poll::Ready(Ok(()));
                    }
                    this.raw_used = this.raw_used.max(n);
                    this.ending = filter(&this.raw[..n], &mut this.out, &mut this.reply).err();
                    this.out_used = this.out_used.max(this.out.len());
                }
                other => return other,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Filtered<S> {
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

/// For the fuzz targets that play both sides of an exchange: `data` minus its first byte, cut
/// where that byte says (0 = all server bytes, 255 = all app bytes): (the byte, app bytes,
/// server bytes).
#[doc(hidden)]
pub fn fuzz_split(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&split, rest) = data.split_first()?;
    let cut = (split as usize * rest.len()) / 255;
    let (app, server) = rest.split_at(cut.min(rest.len()));
    Some((split, app, server))
}

/// For the fuzz targets: runs `f` to completion on this thread's runtime (made once).
#[doc(hidden)]
pub fn fuzz_block_on<F: std::future::Future>(f: F) -> Option<F::Output> {
    thread_local! {
        static RT: Option<tokio::runtime::Runtime> =
            tokio::runtime::Builder::new_current_thread().enable_time().build().ok();
    }
    RT.with(|rt| rt.as_ref().map(|rt| rt.block_on(f)))
}

/// Test helper for the seeded corpora that stand in for the fuzz targets in `cargo test`:
/// `edits` random byte replacements, removals and insertions.
#[cfg(test)]
pub(crate) fn mutate(rng: &mut fastrand::Rng, m: &mut Vec<u8>, edits: usize) {
    for _ in 0..edits {
        let i = rng.usize(..m.len());
        match rng.u8(..3) {
            0 => m[i] = rng.u8(..),
            1 => {
                m.remove(i);
            }
            _ => m.insert(i, rng.u8(..)),
        }
    }
}
