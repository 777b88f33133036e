//! Lifecycle phase **relay**: bytes both ways until both sides are done.
//!
//! Half-close aware: when one side finishes writing, the other side's write half is shut down
//! (a TLS stream sends close_notify, then FIN) and the other direction keeps flowing. An idle
//! timer closes the connection after `idle_timeout` without a byte either way (checked at
//! quarter-timeout ticks, so never before and at most a quarter after). The side that caused an
//! I/O error is named in the error, so the failure is classified once. One task polls both
//! directions; a [`Watch`] per direction can follow the bytes (PostgreSQL pooling does) and end
//! the relay without shutting anything down.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::error::{ConnError, Reason, Side};

/// Bytes moved by a finished relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Relayed {
    /// Client → upstream.
    pub sent: u64,
    /// Upstream → client.
    pub received: u64,
}

/// A direction's buffer: it starts at `BUF_START` (an idle connection holds little) and grows
/// to `BUF` the first time a read fills it.
const BUF: usize = 16 * 1024;
const BUF_START: usize = 2 * 1024;

/// Looks at the bytes of one direction as they are read, before they are written on.
pub trait Watch {
    /// `data` was just read. Returns `None` to pass it all on, or `Some(n)` to pass on its
    /// first `n` bytes and then end the relay (both directions, without shutting either down).
    fn inspect(&mut self, data: &[u8]) -> Option<usize>;
}

/// A direction nobody watches.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unwatched;

impl Watch for Unwatched {
    fn inspect(&mut self, _: &[u8]) -> Option<usize> {
        None
    }
}

/// How a watched relay (or one of its directions) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// EOF read and everything written, the write side shut down after the last byte (for the
    /// relay: both directions).
    Closed,
    /// A watch ended it; what it let through is written and flushed, nothing was shut down.
    Stopped,
}

/// Copies both ways until both directions reached EOF, an error, or the idle timeout.
pub async fn relay<C, U>(
    mut client: C,
    mut upstream: U,
    idle: Option<Duration>,
) -> Result<Relayed, ConnError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    relay_watched(
        &mut client,
        &mut upstream,
        idle,
        &mut Unwatched,
        &mut Unwatched,
    )
    .await
    .map(|(relayed, _)| relayed)
}

/// [`relay`] with a [`Watch`] on each direction (`to_upstream` sees the client's bytes,
/// `to_client` the upstream's). One task polls both directions: no locks, no extra copies.
pub async fn relay_watched<C, U>(
    client: &mut C,
    upstream: &mut U,
    idle: Option<Duration>,
    to_upstream: &mut impl Watch,
    to_client: &mut impl Watch,
) -> Result<(Relayed, End), ConnError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut up = Pipe::new(Side::Client, Side::Upstream);
    let mut down = Pipe::new(Side::Upstream, Side::Client);
    let mut timer = idle.map(IdleTimer::new);
    std::future::poll_fn(|cx| {
        let mut moved = false;
        // What each side did already decides whether its going away is an error (`Ended`).
        let a = up.poll(
            cx,
            &mut *client,
            &mut *upstream,
            to_upstream,
            &mut moved,
            down.ended(),
        )?;
        let b = down.poll(
            cx,
            &mut *upstream,
            &mut *client,
            to_client,
            &mut moved,
            up.ended(),
        )?;
        let relayed = Relayed {
            sent: up.amt,
            received: down.amt,
        };
        match (a, b) {
            (Poll::Ready(End::Stopped), _) | (_, Poll::Ready(End::Stopped)) => {
                return Poll::Ready(Ok((relayed, End::Stopped)));
            }
            (Poll::Ready(End::Closed), Poll::Ready(End::Closed)) => {
                return Poll::Ready(Ok((relayed, End::Closed)));
            }
            _ => {}
        }
        if let Some(timer) = &mut timer {
            if moved {
                timer.active = true;
            }
            if let Poll::Ready(()) = timer.poll(cx) {
                return Poll::Ready(Err(idle_timeout(timer.idle)));
            }
        }
        Poll::Pending
    })
    .await
}

/// The error of a connection closed after `idle` without a byte either way.
pub fn idle_timeout(idle: Duration) -> ConnError {
    ConnError::new(
        Side::Internal,
        Reason::IdleTimeout,
        format!(
            "idle timeout: no data either way for {}",
            humantime::format_duration(idle)
        ),
    )
}

/// The idle timeout without reading the clock per transfer: it ticks every quarter of the
/// timeout and fires after four quiet ticks in a row, so between 1 and 1.25 timeouts after the
/// last byte.
struct IdleTimer {
    idle: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    active: bool,
    quiet: u8,
}

impl IdleTimer {
    const TICKS: u8 = 4;

    fn new(idle: Duration) -> Self {
        let tick = idle / u32::from(Self::TICKS);
        Self {
            idle,
            sleep: Box::pin(tokio::time::sleep(tick)),
            active: false,
            quiet: 0,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while self.sleep.as_mut().poll(cx).is_ready() {
            if std::mem::take(&mut self.active) {
                self.quiet = 0;
            } else {
                self.quiet += 1;
                if self.quiet >= Self::TICKS {
                    return Poll::Ready(());
                }
            }
            let next = Instant::now() + self.idle / u32::from(Self::TICKS);
            self.sleep.as_mut().reset(next);
        }
        Poll::Pending
    }
}

/// How far one direction of a relay got, as the other direction sees it.
#[derive(Debug, Clone, Copy)]
struct Ended {
    /// Its write half is shut down: its writer's side was told keyward is done sending.
    told: bool,
    /// It read EOF: its reader's side is done sending.
    heard: bool,
}

/// Whether `e` (on `side`) only says the peer went away: a reset, a broken pipe, or a TLS
/// close without close_notify.
fn peer_gone(side: Side, e: &io::Error) -> bool {
    matches!(
        ConnError::from_io(side, e).reason,
        Reason::Reset | Reason::Truncated
    )
}

/// One direction's copy state (after tokio's `CopyBuffer`, plus the watch and error sides).
struct Pipe {
    buf: Box<[u8]>,
    /// How much of `buf` was ever filled: wiped when the pipe is dropped.
    used: usize,
    pos: usize,
    cap: usize,
    amt: u64,
    read_done: bool,
    need_flush: bool,
    stop_after: bool,
    finished: bool,
    reader: Side,
    writer: Side,
}

/// What passed through may include a credential keyward put there (Redis: an AUTH rewritten
/// to keyward's password): the part of the buffer ever used is wiped, not left in freed memory.
impl Drop for Pipe {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.buf[..self.used].zeroize();
    }
}

impl Pipe {
    fn new(reader: Side, writer: Side) -> Self {
        Self {
            buf: vec![0; BUF_START].into_boxed_slice(),
            used: 0,
            pos: 0,
            cap: 0,
            amt: 0,
            read_done: false,
            need_flush: false,
            stop_after: false,
            finished: false,
            reader,
            writer,
        }
    }

    /// How far this direction got, for the other one (see [`Ended`]).
    fn ended(&self) -> Ended {
        Ended {
            told: self.finished,
            heard: self.read_done,
        }
    }

    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        watch: &mut impl Watch,
        moved: &mut bool,
        other: Ended,
    ) -> Result<Poll<End>, ConnError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if self.finished {
            return Ok(Poll::Ready(End::Closed));
        }
        let (rs, ws) = (self.reader, self.writer);
        let err = |side: Side| move |e: io::Error| ConnError::from_io(side, &e);
        loop {
            if self.pos == self.cap && !self.read_done {
                if self.stop_after {
                    return match Pin::new(&mut *writer).poll_flush(cx).map_err(err(ws))? {
                        Poll::Ready(()) => Ok(Poll::Ready(End::Stopped)),
                        Poll::Pending => Ok(Poll::Pending),
                    };
                }
                if self.used == self.buf.len() && self.buf.len() < BUF {
                    // The last read filled the buffer: more is coming at a time. The old
                    // buffer is wiped like the one that replaces it will be.
                    use zeroize::Zeroize;
                    self.buf.zeroize();
                    self.buf = vec![0; BUF].into_boxed_slice();
                    self.used = 0;
                }
                let mut rb = ReadBuf::new(&mut self.buf);
                match Pin::new(&mut *reader).poll_read(cx, &mut rb) {
                    // The reader's side was told we are done (the other direction shut down
                    // its write half): its reset or TLS close without close_notify now is how
                    // it leaves (Redis and MySQL servers close so), not a failure.
                    Poll::Ready(Err(e)) if other.told && peer_gone(rs, &e) => {}
                    Poll::Ready(r) => r.map_err(err(rs))?,
                    Poll::Pending => {
                        if self.need_flush {
                            if let Poll::Ready(r) = Pin::new(&mut *writer).poll_flush(cx) {
                                r.map_err(err(ws))?;
                                self.need_flush = false;
                            }
                        }
                        return Ok(Poll::Pending);
                    }
                }
                let n = rb.filled().len();
                self.used = self.used.max(n);
                if n == 0 {
                    self.read_done = true;
                } else {
                    *moved = true;
                    self.pos = 0;
                    self.cap = match watch.inspect(&self.buf[..n]) {
                        Some(pass) => {
                            self.stop_after = true;
                            pass.min(n)
                        }
                        None => n,
                    };
                }
            }
            while self.pos < self.cap {
                let n = match Pin::new(&mut *writer).poll_write(cx, &self.buf[self.pos..self.cap]) {
                    // The writer's side had ended its own sending and then went away: it does
                    // not want what is left (an app that closed after QUIT, before the reply).
                    Poll::Ready(Err(e)) if other.heard && peer_gone(ws, &e) => {
                        self.finished = true;
                        return Ok(Poll::Ready(End::Closed));
                    }
                    Poll::Ready(r) => r.map_err(err(ws))?,
                    Poll::Pending => return Ok(Poll::Pending),
                };
                if n == 0 {
                    return Err(ConnError::from_io(
                        ws,
                        &io::Error::new(io::ErrorKind::WriteZero, "write zero bytes"),
                    ));
                }
                self.pos += n;
                self.amt += n as u64;
                self.need_flush = true;
                *moved = true;
            }
            if self.pos == self.cap && self.read_done {
                let closing = match Pin::new(&mut *writer).poll_flush(cx) {
                    Poll::Ready(Ok(())) => Pin::new(&mut *writer).poll_shutdown(cx),
                    other => other,
                };
                match closing {
                    Poll::Pending => return Ok(Poll::Pending),
                    // Telling a side that already left that we are done too.
                    Poll::Ready(Err(e)) if !(other.heard && peer_gone(ws, &e)) => {
                        return Err(err(ws)(e))
                    }
                    Poll::Ready(_) => {}
                }
                self.finished = true;
                return Ok(Poll::Ready(End::Closed));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_closes_a_silent_connection() {
        let (client, _app) = tokio::io::duplex(64);
        let (upstream, _server) = tokio::io::duplex(64);
        let err = relay(client, upstream, Some(Duration::from_secs(30)))
            .await
            .unwrap_err();
        assert_eq!(
            (err.side, err.reason),
            (Side::Internal, Reason::IdleTimeout)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_postpones_the_idle_timeout() {
        let (client, mut app) = tokio::io::duplex(64);
        let (upstream, mut server) = tokio::io::duplex(64);
        let task = tokio::spawn(relay(client, upstream, Some(Duration::from_secs(10))));
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(8)).await;
            app.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            server.read_exact(&mut b).await.unwrap();
        }
        assert!(
            !task.is_finished(),
            "40 s of traffic every 8 s must not hit a 10 s idle timeout"
        );
        drop(app);
        drop(server);
        let done = task.await.unwrap().unwrap();
        assert_eq!(done.sent, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_timeout_fires_between_one_and_one_and_a_quarter_timeouts() {
        let (client, mut app) = tokio::io::duplex(64);
        let (upstream, _server) = tokio::io::duplex(64);
        let start = Instant::now();
        let task = tokio::spawn(relay(client, upstream, Some(Duration::from_secs(40))));
        tokio::time::sleep(Duration::from_secs(7)).await;
        app.write_all(b"x").await.unwrap();
        let err = task.await.unwrap().unwrap_err();
        assert_eq!(err.reason, Reason::IdleTimeout);
        let quiet = start.elapsed() - Duration::from_secs(7);
        assert!(
            quiet >= Duration::from_secs(40) && quiet <= Duration::from_secs(50),
            "{quiet:?}"
        );
    }

    /// Stops the relay before the first `!`.
    struct StopAtBang;

    impl Watch for StopAtBang {
        fn inspect(&mut self, data: &[u8]) -> Option<usize> {
            data.iter().position(|&b| b == b'!')
        }
    }

    #[tokio::test]
    async fn a_watch_ends_the_relay_after_passing_what_it_allows() {
        let (mut client, mut app) = tokio::io::duplex(1024);
        let (mut upstream, mut server) = tokio::io::duplex(1024);
        server.write_all(b"hello").await.unwrap();
        app.write_all(b"abc!def").await.unwrap();
        let (done, end) = relay_watched(
            &mut client,
            &mut upstream,
            None,
            &mut StopAtBang,
            &mut Unwatched,
        )
        .await
        .unwrap();
        assert_eq!(end, End::Stopped);
        assert_eq!(done.sent, 3);
        let mut got = [0u8; 3];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"abc");
        // Nothing was shut down: both streams are still usable by the caller.
        upstream.write_all(b"more").await.unwrap();
        let mut more = [0u8; 4];
        server.read_exact(&mut more).await.unwrap();
        assert_eq!(&more, b"more");
    }

    #[tokio::test]
    async fn errors_name_the_side_that_failed() {
        let (client, mut app) = tokio::io::duplex(64);
        let (upstream, server) = tokio::io::duplex(64);
        drop(server);
        let task = tokio::spawn(relay(client, upstream, None));
        app.write_all(b"to nowhere").await.unwrap();
        let err = task.await.unwrap().unwrap_err();
        assert_eq!(err.side, Side::Upstream, "{err:?}");
    }

    /// keyward's end and the peer's end of a loopback TCP connection.
    async fn tcp_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (ours, theirs) = tokio::join!(ours, listener.accept());
        (ours.unwrap(), theirs.unwrap().0)
    }

    /// Closes with a reset (SO_LINGER 0), as a server that closes with unread data does.
    fn reset(stream: tokio::net::TcpStream) {
        stream.set_zero_linger().unwrap();
        drop(stream);
    }

    /// Issue 19 item 8: an upstream that resets after keyward told it the app is done (a
    /// MySQL server after COM_QUIT, a Redis server closing without close_notify) ended the
    /// session normally: no error (it counted as `reason="reset"` / `"truncated"` before).
    #[tokio::test]
    async fn an_upstream_that_resets_after_the_app_left_is_a_clean_end() {
        let (upstream, mut server) = tcp_pair().await;
        let (client, mut app) = tokio::io::duplex(1024);
        let task = tokio::spawn(relay(client, upstream, None));
        app.write_all(b"QUIT").await.unwrap();
        app.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"QUIT");
        reset(server);
        let done = task.await.unwrap().expect("a clean end");
        assert_eq!(done.sent, 4);
    }

    /// A reset while the app is still there is a failure, named on the upstream's side.
    #[tokio::test]
    async fn an_upstream_reset_while_the_app_is_still_there_is_an_error() {
        let (upstream, mut server) = tcp_pair().await;
        let (client, mut app) = tokio::io::duplex(1024);
        let task = tokio::spawn(relay(client, upstream, None));
        app.write_all(b"GET k").await.unwrap();
        let mut got = [0u8; 5];
        server.read_exact(&mut got).await.unwrap();
        reset(server);
        let err = task.await.unwrap().unwrap_err();
        assert_eq!(
            (err.side, err.reason),
            (Side::Upstream, Reason::Reset),
            "{err:?}"
        );
        drop(app);
    }

    #[tokio::test]
    async fn half_close_keeps_the_other_direction_open() {
        let (client, mut app) = tokio::io::duplex(1024);
        let (upstream, mut server) = tokio::io::duplex(1024);
        let task = tokio::spawn(relay(client, upstream, None));
        app.write_all(b"request").await.unwrap();
        app.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request");
        server.write_all(b"late reply").await.unwrap();
        server.shutdown().await.unwrap();
        let mut reply = Vec::new();
        app.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"late reply");
        assert_eq!(
            task.await.unwrap().unwrap(),
            Relayed {
                sent: 7,
                received: 10
            }
        );
    }

    #[tokio::test]
    async fn bulk_data_crosses_intact_as_the_buffers_grow() {
        let (client, mut app) = tokio::io::duplex(64 * 1024);
        let (upstream, mut server) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(relay(client, upstream, None));
        let data: Vec<u8> = (0..1_000_003u32).map(|i| (i * 7 % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            app.write_all(&sent).await.unwrap();
            app.shutdown().await.unwrap();
            app
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert!(got == data, "corrupted after {} bytes", got.len());
        server.shutdown().await.unwrap();
        drop(writer.await.unwrap());
        let done = task.await.unwrap().unwrap();
        assert_eq!(done.sent, data.len() as u64);
    }
}
