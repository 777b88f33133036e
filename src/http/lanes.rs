//! An `http` resource's upstream connections, driven in the app connection's own task.
//!
//! hyper-util's pooled client runs every upstream connection in a task of its own: each request
//! goes through the pool's checkout, a dispatch channel to that task and a oneshot back, and a
//! task spawned to watch the connection become idle again. Here an HTTP/1.1 upstream
//! connection is taken from the resource's [`Pool`] for one request and polled by the app
//! connection's task beside hyper's server side (see [`Lane::drive`]): the request, the response
//! and its body move without waking another task. When the response has been read the connection
//! goes back to the pool, where the next request of any app connection takes it (most recently
//! used first). An idle pooled connection is polled again when it is taken: one the upstream
//! closed meanwhile is seen closed then and skipped.
//!
//! HTTP/2 upstreams (ALPN `h2`, or `http2: always`) multiplex: one shared connection per pool,
//! driven by a task of its own as hyper's HTTP/2 client requires.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{header, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::time::Instant;
use tracing::Instrument as _;

use super::connector::{describe_client_error, Conn};
use crate::connect::{Admitted, Dialer};
use crate::error::ConnError;

/// Boxed error of proxied bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type keyward sends both ways.
pub type ProxyBody = http_body_util::combinators::BoxBody<bytes::Bytes, BoxError>;

type H1Conn = http1::Connection<TokioIo<Conn>, ProxyBody>;

/// An HTTP/1.1 upstream connection: the handle requests are sent through and the connection
/// itself, which whoever holds it polls.
struct H1 {
    sender: http1::SendRequest<ProxyBody>,
    conn: Pin<Box<H1Conn>>,
}

/// An idle pooled connection and when it became idle.
struct Idle {
    h1: H1,
    since: Instant,
}

/// One resource's upstream connections (one per TLS config: a reload that changes the
/// upstream builds a new pool; connections in use go back to the pool they came from).
pub struct Pool {
    dialer: Arc<Dialer>,
    /// Offered `h2` only (`http2: always`): HTTP/2 even without ALPN (cleartext upstreams).
    http2_only: bool,
    idle_timeout: Duration,
    /// Idle connections per worker (`crate::workers`): a connection is read by the thread
    /// that dialed it, so it serves only that worker's app connections.
    idle: Box<[Mutex<Vec<Idle>>]>,
    h2: Mutex<Option<http2::SendRequest<ProxyBody>>>,
    /// The upstream speaks HTTP/2 (`http2: always`, or a dial negotiated it): requests wait
    /// for one dial instead of each opening a connection.
    speaks_h2: AtomicBool,
    h2_dial: tokio::sync::Mutex<()>,
    reaper: AtomicBool,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field(
                "idle",
                &self
                    .idle
                    .iter()
                    .map(|i| i.lock().map_or(0, |i| i.len()))
                    .sum::<usize>(),
            )
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool dialing with `dialer`; idle connections are closed after `idle_timeout`.
    pub fn new(dialer: Arc<Dialer>, http2_only: bool, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            dialer,
            http2_only,
            idle_timeout,
            idle: (0..crate::workers::count())
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
            h2: Mutex::new(None),
            speaks_h2: AtomicBool::new(http2_only),
            h2_dial: tokio::sync::Mutex::new(()),
            reaper: AtomicBool::new(false),
        })
    }

    /// The most recently used idle connection that is still fresh.
    fn checkout(&self) -> Option<H1> {
        let mut idle = self.idle().lock().ok()?;
        close_stale(&mut idle, self.idle_timeout);
        idle.pop().map(|i| i.h1)
    }

    fn checkin(self: &Arc<Self>, h1: H1) {
        if let Ok(mut idle) = self.idle().lock() {
            idle.push(Idle {
                h1,
                since: Instant::now(),
            });
        }
        if !self.reaper.swap(true, Ordering::Relaxed) {
            tokio::spawn(reap(Arc::downgrade(self), self.idle_timeout));
        }
    }

    /// This worker's idle connections.
    fn idle(&self) -> &Mutex<Vec<Idle>> {
        &self.idle[crate::workers::index() % self.idle.len()]
    }

    /// The shared HTTP/2 connection, while it is open.
    fn h2(&self) -> Option<http2::SendRequest<ProxyBody>> {
        let mut h2 = self.h2.lock().ok()?;
        match h2.as_ref() {
            Some(s) if !s.is_closed() => Some(s.clone()),
            _ => {
                *h2 = None;
                None
            }
        }
    }

    /// Dials a new upstream connection: HTTP/1.1 for the lane, or HTTP/2 (shared from now on).
    fn dial<'a>(&'a self, admitted: &'a Admitted) -> Dialing<'a> {
        Box::pin(self.dial_inner(admitted))
    }

    async fn dial_inner(&self, admitted: &Admitted) -> Result<Dialed, ConnError> {
        let stream = self.dialer.open(admitted).await?;
        let conn = Conn::new(stream);
        if self.http2_only || conn.negotiated_h2() {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(hyper_util::rt::TokioTimer::new())
                .handshake(TokioIo::new(conn))
                .await
                .map_err(|e| describe_client_error(&e))?;
            tokio::spawn(
                async move {
                    if let Err(e) = connection.await {
                        tracing::debug!("upstream HTTP/2 connection ended: {e}");
                    }
                }
                .in_current_span(),
            );
            if let Ok(mut h2) = self.h2.lock() {
                *h2 = Some(sender.clone());
            }
            self.speaks_h2.store(true, Ordering::Relaxed);
            return Ok(Dialed::H2(sender));
        }
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(conn))
            .await
            .map_err(|e| describe_client_error(&e))?;
        Ok(Dialed::H1(H1 {
            sender,
            conn: Box::pin(conn),
        }))
    }
}

/// Boxed (and declared `Send` here, where the compiler can prove it for hyper's handshakes).
type Dialing<'a> = Pin<Box<dyn Future<Output = Result<Dialed, ConnError>> + Send + 'a>>;

enum Dialed {
    H1(H1),
    H2(http2::SendRequest<ProxyBody>),
}

/// Closes idle connections nobody took within the idle timeout; ends with its pool.
async fn reap(pool: Weak<Pool>, every: Duration) {
    loop {
        tokio::time::sleep(every.max(Duration::from_millis(100))).await;
        let Some(pool) = pool.upgrade() else { return };
        for idle in pool.idle.iter() {
            if let Ok(mut idle) = idle.lock() {
                close_stale(&mut idle, pool.idle_timeout);
            }
        }
    }
}

/// Closes the connections idle longer than `timeout` (the list is oldest first).
fn close_stale(idle: &mut Vec<Idle>, timeout: Duration) {
    if let Some(cut) = Instant::now().checked_sub(timeout) {
        let stale = idle.iter().take_while(|i| i.since <= cut).count();
        idle.drain(..stale);
    }
}

/// The upstream connection an app connection is using, if any.
#[derive(Default)]
struct Slot {
    busy: Option<(H1, Arc<Pool>)>,
    /// A connection was installed or given a request since the lane last polled it.
    kicked: bool,
}

/// One app connection's way upstream: the connection serving its current request, polled in
/// the app connection's task by [`Lane::drive`].
#[derive(Clone, Default)]
pub struct Lane(Arc<Mutex<Slot>>);

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lane")
    }
}

impl Lane {
    /// Runs `serving` (the app connection's server side) with this lane's upstream connection
    /// polled beside it in the same task.
    pub fn drive<F: Future>(&self, serving: F) -> Driven<'_, F> {
        Driven {
            lane: self,
            serving: Box::pin(serving),
        }
    }

    fn kicked(&self) -> bool {
        self.0.lock().is_ok_and(|s| s.kicked)
    }

    /// Polls the connection in use: a closed one is dropped, one whose response has been read
    /// (ready for another request) goes back to its pool.
    fn poll(&self, cx: &mut Context<'_>) {
        let Ok(mut slot) = self.0.lock() else { return };
        slot.kicked = false;
        let Some((h1, _)) = slot.busy.as_mut() else {
            return;
        };
        if h1.conn.as_mut().poll(cx).is_ready() {
            slot.busy = None;
            return;
        }
        match h1.sender.poll_ready(cx) {
            Poll::Ready(Ok(())) => {
                if let Some((h1, pool)) = slot.busy.take() {
                    pool.checkin(h1);
                }
            }
            Poll::Ready(Err(_)) => slot.busy = None,
            Poll::Pending => {}
        }
    }

    /// Sends `request` upstream through `pool` and waits for the response head. `request`
    /// carries its `Host` header and an absolute URI; each protocol gets the form it needs.
    pub fn send<'a>(
        &'a self,
        pool: &'a Arc<Pool>,
        request: Request<ProxyBody>,
        admitted: &'a Admitted,
    ) -> Responding<'a> {
        Box::pin(self.send_inner(pool, request, admitted))
    }

    async fn send_inner(
        &self,
        pool: &Arc<Pool>,
        request: Request<ProxyBody>,
        admitted: &Admitted,
    ) -> Result<Response<Incoming>, ConnError> {
        let mut request = request;
        loop {
            if let Some(mut h2) = pool.h2() {
                return send_h2(&mut h2, request).await;
            }
            let (reused, pending) = match self.start(pool, request) {
                Started::Sent(pending) => (true, pending),
                Started::Empty(r) => {
                    let dialed = if pool.speaks_h2.load(Ordering::Relaxed) {
                        // One dial at a time; whoever waited uses the connection it made.
                        let _dialing = pool.h2_dial.lock().await;
                        match pool.h2() {
                            Some(h2) => Dialed::H2(h2),
                            None => pool.dial(admitted).await?,
                        }
                    } else {
                        pool.dial(admitted).await?
                    };
                    match dialed {
                        Dialed::H2(mut h2) => return send_h2(&mut h2, r).await,
                        Dialed::H1(h1) => (false, self.install(pool, h1, r)),
                    }
                }
            };
            match pending.await {
                Ok(response) => return Ok(response),
                Err(mut e) => match e.take_message() {
                    // Not written: the connection closed before it took the request. A
                    // pooled connection may have been closed by the upstream while idle.
                    Some(r) if reused => request = r,
                    _ => return Err(describe_client_error(e.error())),
                },
            }
        }
    }

    /// Sends on a pooled connection (polled first: one the upstream closed while idle is
    /// dropped), or gives the request back when the pool has none.
    fn start(&self, pool: &Arc<Pool>, request: Request<ProxyBody>) -> Started {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        // This app connection's own last connection, if the lane has not returned it to the
        // pool yet (pipelined requests): reused when its response has been read; one whose
        // response was not read to the end cannot serve another request and closes.
        let own = self.0.lock().ok().and_then(|mut slot| slot.busy.take());
        if let Some((mut h1, from)) = own {
            let open = h1.conn.as_mut().poll(&mut cx).is_pending();
            if open && matches!(h1.sender.poll_ready(&mut cx), Poll::Ready(Ok(()))) {
                if Arc::ptr_eq(&from, pool) {
                    return Started::Sent(self.install(pool, h1, request));
                }
                from.checkin(h1);
            }
        }
        while let Some(mut h1) = pool.checkout() {
            if h1.conn.as_mut().poll(&mut cx).is_ready() || h1.sender.is_closed() {
                continue;
            }
            return Started::Sent(self.install(pool, h1, request));
        }
        Started::Empty(request)
    }

    /// Makes `h1` this lane's connection and hands it `request`.
    fn install(&self, pool: &Arc<Pool>, mut h1: H1, request: Request<ProxyBody>) -> Pending {
        let pending = h1.sender.try_send_request(origin_form(request));
        if let Ok(mut slot) = self.0.lock() {
            slot.busy = Some((h1, pool.clone()));
            slot.kicked = true;
        }
        Box::pin(pending)
    }
}

type Pending = Pin<
    Box<
        dyn Future<
                Output = Result<
                    Response<Incoming>,
                    hyper::client::conn::TrySendError<Request<ProxyBody>>,
                >,
            > + Send,
    >,
>;

/// [`Lane::drive`]'s future.
pub struct Driven<'a, F> {
    lane: &'a Lane,
    serving: Pin<Box<F>>,
}

impl<F: Future> Future for Driven<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        this.lane.poll(cx);
        if let Poll::Ready(out) = this.serving.as_mut().poll(cx) {
            // The last response may have just been read: the connection can still go back
            // to the pool instead of closing with this app connection.
            this.lane.poll(cx);
            return Poll::Ready(out);
        }
        if this.lane.kicked() {
            this.lane.poll(cx);
        }
        Poll::Pending
    }
}

/// Boxed and declared `Send` here, where the compiler can prove it for hyper's client.
pub type Responding<'a> =
    Pin<Box<dyn Future<Output = Result<Response<Incoming>, ConnError>> + Send + 'a>>;

// Returned once per request and matched at once: boxing the request would cost an allocation.
#[allow(clippy::large_enum_variant)]
enum Started {
    Sent(Pending),
    Empty(Request<ProxyBody>),
}

async fn send_h2(
    h2: &mut http2::SendRequest<ProxyBody>,
    mut request: Request<ProxyBody>,
) -> Result<Response<Incoming>, ConnError> {
    // HTTP/2 carries the authority in `:authority` (from the URI): a `Host` header would be a
    // second copy (RFC 9113 §8.3.1).
    request.headers_mut().remove(header::HOST);
    h2.ready().await.map_err(|e| describe_client_error(&e))?;
    h2.send_request(request)
        .await
        .map_err(|e| describe_client_error(&e))
}

/// HTTP/1.1 requests name their target in origin form (`/path?query`); `Host` names the upstream.
fn origin_form(mut request: Request<ProxyBody>) -> Request<ProxyBody> {
    let pq = request.uri().path_and_query().cloned();
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = pq;
    *request.uri_mut() = Uri::from_parts(parts).unwrap_or_default();
    request
}
