//! The connection driver: the one place where the life of an app connection is orchestrated,
//! for every protocol (docs/DESIGN.md "Lifecycle of a connection"):
//!
//! ```text
//!  accept ─▶ inbound TLS policy ─▶ handler.serve: handshake/authenticate ─▶ relay ─▶ record
//!  (server: span, limit,   (driver: listen_tls at    (protocol: its own      (driver: one
//!   Open guard, panic       the first byte, or the    messages, through       classification,
//!   catch)                  handler asks: App::       App's deadline and      log, metrics)
//!                           upgrade; App::admit)      size limit)
//! ```
//!
//! What holds for every protocol, because it lives here and not in the handlers:
//! - **Inbound policy.** A listener whose `listen_tls` requires a client certificate (or has an
//!   `allow` list) admits only apps that presented an allowed one: credentials are only
//!   reachable with an [`Admitted`], and [`App::admit`] is the one place that grants it.
//! - **A deadline on the app.** Every read from the app before keyward relays fails once
//!   `client_handshake_timeout` has passed ([`AppStream`]), whatever the handler was waiting
//!   for: startup packets, TLS with keyward, a MySQL handshake response, `client_password`
//!   exchanges, a Redis pre-AUTH command, the first HTTP request's headers.
//! - **Bounded buffers.** Before the relay, the app's reads go into a buffer capped at the
//!   handler's [`Handler::MAX_PRE_AUTH`]; over it the connection gets the protocol's error.
//! - **The protocol's own error.** A failure before the relay reaches the app through
//!   [`Handler::refuse`], in its wire format (ErrorResponse, ERR packet, `-ERR`, HTTP 502).
//!
//! A handler supplies only what differs: its TLS start, its limit, `serve` (handshake,
//! authenticate, relay) and `refuse`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::either::Either;

use crate::config::ResourceName;
use crate::connect::{Admitted, Dialer};
use crate::error::{ConnError, Expired, Reason, Side};
use crate::listener::{InboundStream, RawStream};
use crate::record::{Failure, Stats};
use crate::relay::Relayed;
use crate::tls::inbound::InboundTls;
use crate::wire::Wire;

/// How long a refusal may take to write (and, for Redis, to read the command it answers).
const REFUSAL_TIME: Duration = Duration::from_secs(6);
/// How long keyward's close_notify to an app may take to write.
const CLOSE_TIME: Duration = Duration::from_secs(1);

/// What a handler gets of its resource's runtime snapshot (taken at accept: a reload never
/// changes a live connection).
#[derive(Debug)]
pub struct Resource {
    /// The resource.
    pub name: ResourceName,
    /// connect + secure to its upstream.
    pub dialer: Arc<Dialer>,
    /// Close after this long without a byte either way.
    pub idle_timeout: Option<Duration>,
    /// How long the app has for everything it sends before keyward relays.
    pub client_handshake_timeout: Duration,
    /// keyward's TLS on the listener (`listen_tls`).
    pub inbound: Option<InboundTls>,
    /// What it records in the audit trail.
    pub audit: crate::audit::Policy,
}

/// How a handler's part of a connection ended.
pub type Served = Result<Relayed, Failure>;

/// Where keyward's own TLS with the app (`listen_tls`) starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsStart {
    /// At the first byte (tcp, http, redis).
    Accept,
    /// Inside the protocol: the handler calls [`App::upgrade`] (MySQL's SSL capability).
    InProtocol,
    /// At the first byte when it is a TLS record (PostgreSQL 17 direct TLS), else inside the
    /// protocol (SSLRequest).
    Sniffed,
}

/// One protocol's part of the lifecycle.
pub trait Handler: Send + Sync {
    /// Where `listen_tls` starts.
    const TLS_START: TlsStart;
    /// The largest message the app may send before keyward relays (README, "Limits").
    const MAX_PRE_AUTH: usize;

    /// Handshake with the app, authenticate upstream, relay. Errors before the relay are
    /// [`Failure::Open`] (the driver answers them with [`Handler::refuse`]) or
    /// [`Failure::Answered`] (the handler already answered).
    fn serve(
        &self,
        app: &mut App,
        res: &Arc<Resource>,
        stats: &Arc<Stats>,
    ) -> impl Future<Output = Served> + Send;

    /// Tells the app why its connection is refused, in the protocol's wire format.
    fn refuse(
        &self,
        app: &mut App,
        e: &ConnError,
        resource: &str,
    ) -> impl Future<Output = ()> + Send {
        let _ = (app, e, resource);
        async {}
    }
}

/// Serves one accepted app connection with `handler`: inbound TLS at accept if the handler
/// wants it there, the handler's part, and the refusal of a failure before the relay.
pub async fn drive<H: Handler>(
    handler: &H,
    raw: RawStream,
    res: &Arc<Resource>,
    stats: &Arc<Stats>,
) -> Result<Relayed, Failure> {
    let mut app = App::new(raw, res, H::MAX_PRE_AUTH);
    match H::TLS_START {
        TlsStart::Accept if res.inbound.is_some() => {
            // A TLS failure cannot be answered in the protocol: the handshake is the answer.
            app.upgrade().await.map_err(Failure::Open)?;
        }
        TlsStart::Sniffed if res.inbound.is_some() && app.starts_with_tls().await => {
            app.upgrade().await.map_err(Failure::Open)?;
        }
        _ => {}
    }
    let result = handler.serve(&mut app, res, stats).await;
    if let Err(Failure::Open(e)) = &result {
        let _ = tokio::time::timeout(REFUSAL_TIME, handler.refuse(&mut app, e, res.name.as_str()))
            .await;
    }
    // A connection keyward ends by design (a forwarded cancel, a refusal, a finished relay)
    // ends its TLS with close_notify: libpq 17 reports an encrypted cancel as failed on a bare
    // EOF. (Nothing to do for a stream already closed by the relay or handed over.)
    if app.is_tls() {
        let _ = tokio::time::timeout(CLOSE_TIME, app.wire.io.shutdown()).await;
    }
    result
}

/// The app's side of a connection as the driver hands it to a handler: a buffered reader
/// with the pre-authentication limit, over a stream with the client deadline.
pub struct App {
    /// Reads (bounded) and writes.
    pub wire: Wire<AppStream>,
    /// The snapshot's settings (an `Arc`: nothing is copied per connection).
    res: Arc<Resource>,
    deadline: Instant,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("tls", &self.is_tls())
            .finish_non_exhaustive()
    }
}

impl App {
    fn new(raw: RawStream, res: &Arc<Resource>, limit: usize) -> Self {
        let deadline = Instant::now() + res.client_handshake_timeout;
        let stream = AppStream {
            kind: Kind::Raw(raw),
            deadline: Some(Deadline {
                sleep: Box::pin(tokio::time::sleep_until(deadline)),
                after: res.client_handshake_timeout,
                released: None,
            }),
        };
        Self {
            wire: Wire::new(stream, Side::Client).with_limit(limit),
            res: res.clone(),
            deadline,
        }
    }

    /// Whether the app is on keyward's TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self.wire.io.kind, Kind::Tls(_))
    }

    /// Whether the app may still start TLS with keyward (`listen_tls`, not started yet).
    pub fn can_upgrade(&self) -> bool {
        self.res.inbound.is_some() && matches!(self.wire.io.kind, Kind::Raw(_))
    }

    /// The client deadline.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// keyward's TLS with the app, from now (any bytes already read are the start of its
    /// ClientHello: a MySQL client starts TLS right after its SSLRequest), within the client
    /// deadline and `handshake_timeout`; then the `allow` list.
    pub async fn upgrade(&mut self) -> Result<(), ConnError> {
        let res = self.res.clone();
        let Some(tls) = res.inbound.as_ref() else {
            return Err(ConnError::new(
                Side::Internal,
                Reason::Tls,
                "TLS upgrade without listen_tls",
            ));
        };
        let Kind::Raw(raw) = std::mem::replace(&mut self.wire.io.kind, Kind::Gone) else {
            return Err(ConnError::new(
                Side::Client,
                Reason::Protocol,
                "the app asked for TLS twice",
            ));
        };
        let early = self.wire.buf.split().freeze();
        let timeout = res
            .dialer
            .handshake_timeout
            .min(self.deadline.saturating_duration_since(Instant::now()));
        let secured = tls.accept(raw, early, timeout).await?;
        self.wire.io.kind = Kind::Tls(Box::new(secured));
        Ok(())
    }

    /// Whether the app's first byte is a TLS handshake record (read without consuming it,
    /// waiting until the client deadline; a silent app is taken as plaintext, and its next
    /// read fails on the deadline).
    async fn starts_with_tls(&mut self) -> bool {
        let Kind::Raw(Either::Left(tcp)) = &self.wire.io.kind else {
            return false;
        };
        let mut first = [0u8; 1];
        matches!(
            tokio::time::timeout_at(self.deadline, tcp.peek(&mut first)).await,
            Ok(Ok(1)) if first[0] == 0x16
        )
    }

    /// The inbound policy: with `listen_tls` requiring a client certificate (or an `allow`
    /// list), only an app on keyward's TLS is admitted — its certificate was verified and
    /// matched during the handshake. The one place admission is granted for apps.
    pub fn admit(&self) -> Result<Admitted, ConnError> {
        // The test suite makes a connection task panic here, deep in each protocol's serve
        // step, to prove the slot and gauges come back (only for resources so named; compiled
        // out without the `failpoints` feature).
        fail::fail_point!(
            "admit",
            self.res.name.as_str().starts_with("failpoint-"),
            |_| Err(ConnError::new(Side::Internal, Reason::Panic, "failpoint"))
        );
        let required = self
            .res
            .inbound
            .as_ref()
            .is_some_and(InboundTls::requires_client_cert);
        if required && !self.is_tls() {
            return Err(ConnError::new(
                Side::Client,
                Reason::ClientCertRequired,
                "this listener requires TLS with a client certificate",
            ));
        }
        Ok(Admitted::grant())
    }

    /// Ends the handshake phase: the client deadline no longer applies (the relay has its
    /// idle timeout) and the buffer limit is lifted. Returns the stream.
    pub fn relay(&mut self) -> &mut AppStream {
        crate::audit::client_tls(self.wire.io.tls());
        self.wire.io.deadline = None;
        self.wire.set_limit(usize::MAX);
        &mut self.wire.io
    }

    /// Waits for the app's first bytes after the handshake phase, as the relay would: without
    /// the client deadline (an app's pool may open a connection and keep it silent), within
    /// the resource's `idle_timeout`. `false`: the app closed without sending anything.
    pub async fn first_bytes(&mut self) -> Result<bool, ConnError> {
        if !self.wire.buf.is_empty() {
            return Ok(true);
        }
        self.relay();
        let read = self.wire.io.read_buf(&mut self.wire.buf);
        let read = match self.res.idle_timeout {
            Some(idle) => tokio::time::timeout(idle, read)
                .await
                .map_err(|_| crate::relay::idle_timeout(idle))?,
            None => read.await,
        };
        match read {
            Ok(n) => Ok(n > 0),
            Err(e) => Err(ConnError::from_io(Side::Client, &e)),
        }
    }

    /// Hands the stream over whole (HTTP: hyper owns it); the deadline stays until the
    /// returned [`Release`] is used.
    pub fn take(&mut self) -> (AppStream, Release) {
        let released = Arc::new(AtomicBool::new(false));
        let mut stream = std::mem::replace(
            &mut self.wire.io,
            AppStream {
                kind: Kind::Gone,
                deadline: None,
            },
        );
        if let Some(d) = stream.deadline.as_mut() {
            d.released = Some(released.clone());
        }
        (stream, Release(released))
    }
}

/// Lifts the client deadline of a stream handed over with [`App::take`].
#[derive(Debug, Clone)]
pub struct Release(Arc<AtomicBool>);

impl Release {
    /// The app sent what it had to: the deadline no longer applies.
    pub fn release(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether [`Release::release`] was called.
    pub fn released(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

struct Deadline {
    sleep: Pin<Box<Sleep>>,
    after: Duration,
    released: Option<Arc<AtomicBool>>,
}

enum Kind {
    Raw(RawStream),
    Tls(Box<InboundStream>),
    /// Taken for a TLS upgrade or handed over; I/O on it fails.
    Gone,
}

/// A connection from an app: as accepted or on keyward's TLS, with the client deadline until
/// the relay starts.
pub struct AppStream {
    kind: Kind,
    deadline: Option<Deadline>,
}

impl std::fmt::Debug for AppStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            Kind::Raw(_) => "raw",
            Kind::Tls(_) => "tls",
            Kind::Gone => "gone",
        };
        f.debug_struct("AppStream")
            .field("kind", &kind)
            .field("deadline", &self.deadline.is_some())
            .finish()
    }
}

impl AppStream {
    /// The TLS session with the app, if any.
    pub fn tls(&self) -> Option<&rustls::ServerConnection> {
        match &self.kind {
            Kind::Tls(tls) => Some(tls.get_ref().1),
            _ => None,
        }
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "app stream handed over")
}

impl AsyncRead for AppStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let read = match &mut this.kind {
            Kind::Raw(s) => Pin::new(s).poll_read(cx, buf),
            Kind::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Kind::Gone => return Poll::Ready(Err(gone())),
        };
        if read.is_ready() {
            return read;
        }
        if let Some(d) = &mut this.deadline {
            if d.released
                .as_ref()
                .is_some_and(|r| r.load(Ordering::Relaxed))
            {
                this.deadline = None;
            } else if d.sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    Expired(d.after),
                )));
            }
        }
        Poll::Pending
    }
}

impl AsyncWrite for AppStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().kind {
            Kind::Raw(s) => Pin::new(s).poll_write(cx, buf),
            Kind::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Kind::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().kind {
            Kind::Raw(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Kind::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Kind::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.kind {
            Kind::Raw(s) => s.is_write_vectored(),
            Kind::Tls(s) => s.is_write_vectored(),
            Kind::Gone => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().kind {
            Kind::Raw(s) => Pin::new(s).poll_flush(cx),
            Kind::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Kind::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().kind {
            Kind::Raw(s) => Pin::new(s).poll_shutdown(cx),
            Kind::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Kind::Gone => Poll::Ready(Err(gone())),
        }
    }
}

/// `Bytes` of a buffer (for handlers relaying what was read during the handshake).
pub fn early(app: &mut App) -> Bytes {
    app.wire.buf.split().freeze()
}
