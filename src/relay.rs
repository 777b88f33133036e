//! Lifecycle phase **relay**: bytes both ways until both sides are done.
//!
//! Half-close aware: when one side finishes writing, the other side's write half is shut down
//! (a TLS stream sends close_notify, then FIN) and the other direction keeps flowing. An idle
//! timer closes the connection after `idle_timeout` without a byte either way. The side that
//! caused an I/O error is remembered so the failure is classified once.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
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

const BUF: usize = 16 * 1024;

/// Copies both ways until both directions reached EOF, an error, or the idle timeout.
pub async fn relay<C, U>(
    client: C,
    upstream: U,
    idle: Option<Duration>,
) -> Result<Relayed, ConnError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let shared = Arc::new(Shared {
        start: Instant::now(),
        last: AtomicU64::new(0),
        failed: AtomicU8::new(0),
    });
    let mut client = Tracked {
        inner: client,
        side: Side::Client,
        shared: shared.clone(),
    };
    let mut upstream = Tracked {
        inner: upstream,
        side: Side::Upstream,
        shared: shared.clone(),
    };
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, BUF, BUF);
    let outcome = match idle {
        Some(idle) => tokio::select! {
            r = copy => r,
            () = idle_expired(&shared, idle) => {
                return Err(ConnError::new(Side::Internal, Reason::IdleTimeout,
                    format!("idle timeout: no data either way for {}", humantime::format_duration(idle))));
            }
        },
        None => copy.await,
    };
    match outcome {
        Ok((sent, received)) => Ok(Relayed { sent, received }),
        Err(e) => {
            let side = match shared.failed.load(Ordering::Relaxed) {
                1 => Side::Client,
                2 => Side::Upstream,
                _ => Side::Internal,
            };
            Err(ConnError::from_io(side, &e))
        }
    }
}

struct Shared {
    start: Instant,
    /// Milliseconds since `start` of the last byte moved.
    last: AtomicU64,
    /// 0 none, 1 client, 2 upstream: who failed first.
    failed: AtomicU8,
}

impl Shared {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    fn fail(&self, side: Side) {
        let code = if side == Side::Client { 1 } else { 2 };
        let _ = self
            .failed
            .compare_exchange(0, code, Ordering::Relaxed, Ordering::Relaxed);
    }
}

async fn idle_expired(shared: &Shared, idle: Duration) {
    loop {
        let deadline =
            shared.start + Duration::from_millis(shared.last.load(Ordering::Relaxed)) + idle;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// A stream that reports activity and which side failed.
struct Tracked<S> {
    inner: S,
    side: Side,
    shared: Arc<Shared>,
}

impl<S> Tracked<S> {
    fn note<T>(&self, poll: Poll<io::Result<T>>, active: bool) -> Poll<io::Result<T>> {
        match &poll {
            Poll::Ready(Ok(_)) if active => self.shared.touch(),
            Poll::Ready(Err(_)) => self.shared.fail(self.side),
            _ => {}
        }
        poll
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let active = buf.filled().len() > before;
        self.note(poll, active)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, data);
        self.note(poll, true)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.note(poll, false)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.note(poll, false)
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
}
