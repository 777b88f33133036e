//! Lifecycle phase **record**: how a connection (or an HTTP request, or an upgraded HTTP
//! connection) ended, classified once by (side, reason), becomes the log line, the metrics and
//! the resource's counters. A resource's [`Stats`] outlive its runtime snapshots (a reload
//! keeps them); [`Open`] counts a live connection and uncounts it on drop, so a connection task
//! that panics still gives back its gauges.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use futures_util::FutureExt as _;
use tracing::{debug, warn};

use crate::config::ResourceName;
use crate::error::{ConnError, Reason, Side};
use crate::metrics::metrics;
use crate::relay::Relayed;

/// How a connection failed.
#[derive(Debug)]
pub enum Failure {
    /// Before relaying; nothing was answered yet: the driver writes the error to the app in the
    /// protocol's own format, then closes.
    Open(ConnError),
    /// Before relaying; the app already got its answer (e.g. the server's own login error).
    Answered(ConnError),
    /// The relay ended with an error.
    Relay(ConnError),
}

impl Failure {
    /// The classified error.
    pub fn error(&self) -> &ConnError {
        match self {
            Self::Open(e) | Self::Answered(e) | Self::Relay(e) => e,
        }
    }
}

/// The last failure of a resource, with its time (for `/resources` and tests).
#[derive(Debug, Clone)]
pub struct LastError {
    /// When it happened.
    pub at: SystemTime,
    /// What it was.
    pub error: ConnError,
}

/// A resource's counters, kept across reloads.
#[derive(Debug)]
pub struct Stats {
    /// The resource.
    pub name: ResourceName,
    open: AtomicU64,
    total: AtomicU64,
    errors: AtomicU64,
    last_error: Mutex<Option<LastError>>,
    /// `keyward_http_requests_total` by status code, each looked up once (on the first
    /// response with that code) and kept with the count it had then, so that `/resources`
    /// counts what this resource answered since it was (re)defined: no lock per request.
    statuses: std::sync::OnceLock<Box<[std::sync::OnceLock<StatusCount>]>>,
    /// `keyward_http_request_duration_seconds` by status class (1xx..5xx), looked up once
    /// per class rather than per request, and only once a class is seen.
    http_duration: [std::sync::OnceLock<prometheus::Histogram>; 5],
    warnings: Warnings,
}

impl Stats {
    /// Zeroed counters for `name`.
    pub fn new(name: ResourceName) -> Self {
        Self {
            name,
            open: AtomicU64::new(0),
            total: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            last_error: Mutex::new(None),
            statuses: std::sync::OnceLock::new(),
            http_duration: Default::default(),
            warnings: Warnings::default(),
        }
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections accepted so far (including refused ones).
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Connections (and HTTP requests) that ended in an error.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// The most recent failure.
    pub fn last_error(&self) -> Option<LastError> {
        self.last_error.lock().ok().and_then(|g| g.clone())
    }

    /// HTTP responses sent to apps, by status code.
    pub fn requests(&self) -> BTreeMap<u16, u64> {
        let Some(statuses) = self.statuses.get() else {
            return BTreeMap::new();
        };
        (STATUS_MIN..)
            .zip(statuses.iter())
            .filter_map(|(code, slot)| Some((code, slot.get()?.count())))
            .collect()
    }

    /// One more accepted connection.
    pub fn accepted(&self) {
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    /// An HTTP response sent to an app, `took` after its request arrived.
    pub fn count_request(&self, status: http::StatusCode, took: std::time::Duration) {
        let m = metrics();
        let code = status.as_u16();
        let statuses = self.statuses.get_or_init(|| {
            (STATUS_MIN..=STATUS_MAX)
                .map(|_| std::sync::OnceLock::new())
                .collect()
        });
        statuses[usize::from(code - STATUS_MIN)]
            .get_or_init(|| {
                let counter = m
                    .http_requests
                    .with_label_values(&[self.name.as_str(), status.as_str()]);
                StatusCount {
                    base: counter.get(),
                    counter,
                }
            })
            .counter
            .inc();
        let class = crate::metrics::status_class(code);
        let slot = usize::from(class.as_bytes()[0] - b'1');
        self.http_duration[slot]
            .get_or_init(|| {
                m.http_duration
                    .with_label_values(&[self.name.as_str(), class])
            })
            .observe(took.as_secs_f64());
    }

    /// Whether a warning about this resource may be logged now (at most
    /// [`Warnings::PER_SECOND`] a second, so a flood of bad connections cannot flood the log;
    /// the metrics still count every one). `Some(n)`: log it, saying `n` were left out since
    /// the last one logged.
    pub fn may_warn(&self) -> Option<u64> {
        self.warnings.admit(Instant::now())
    }

    /// A failure: counted, labelled, kept as the last error.
    pub fn failed(&self, error: ConnError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        metrics()
            .errors
            .with_label_values(&[
                self.name.as_str(),
                error.side.as_str(),
                error.reason.as_str(),
            ])
            .inc();
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(LastError {
                at: SystemTime::now(),
                error,
            });
        }
    }

    /// Records how one connection (or upgraded HTTP connection) ended: exactly one call per
    /// end. `None`: closed by keyward at the end of a drain.
    pub fn record(
        &self,
        upstream: &dyn std::fmt::Display,
        result: Option<Result<Relayed, Failure>>,
    ) {
        match result {
            None => debug!("closed at the end of the grace period"),
            Some(Ok(done)) => {
                let bytes = &metrics().bytes;
                bytes
                    .with_label_values(&[self.name.as_str(), "client_to_upstream"])
                    .inc_by(done.sent);
                bytes
                    .with_label_values(&[self.name.as_str(), "upstream_to_client"])
                    .inc_by(done.received);
                debug!(sent = done.sent, received = done.received, "closed");
            }
            Some(Err(failure)) => {
                // Before the relay every failure is worth a warning; a relay that ends in an
                // error mostly means a peer went away (debug), unless TLS broke.
                let (loud, e) = match failure {
                    Failure::Open(e) | Failure::Answered(e) => (true, e),
                    Failure::Relay(e) => (
                        e.side == Side::Upstream
                            && matches!(e.reason, Reason::ClientCertRejected | Reason::Tls),
                        e,
                    ),
                };
                let (side, reason) = (e.side.as_str(), e.reason.as_str());
                if e.reason == Reason::Panic {
                    tracing::error!(side, reason, "{}", e.detail);
                } else if loud {
                    if let Some(left_out) = self.may_warn() {
                        // Named by the side at fault: an app's broken handshake is not the
                        // upstream's.
                        let msg = match e.side {
                            Side::Upstream => format!("upstream {upstream}: {}", e.detail),
                            Side::Client => format!("app: {}", e.detail),
                            Side::Internal => format!("keyward: {}", e.detail),
                        };
                        // Recorded only when some were left out.
                        let left_out = (left_out > 0).then_some(left_out);
                        warn!(side, reason, left_out, "{msg}");
                    }
                } else {
                    debug!(side, reason, "relay ended: {}", e.detail);
                }
                self.failed(e);
            }
        }
    }
}

/// The status codes an [`http::StatusCode`] can hold.
const STATUS_MIN: u16 = 100;
const STATUS_MAX: u16 = 999;

/// One status code's `keyward_http_requests_total` series and its value when this resource's
/// [`Stats`] first counted that code (a resource removed and defined again starts from zero in
/// `/resources`; the Prometheus counter keeps its total).
#[derive(Debug)]
struct StatusCount {
    counter: prometheus::IntCounter,
    base: u64,
}

impl StatusCount {
    fn count(&self) -> u64 {
        self.counter.get().saturating_sub(self.base)
    }
}

/// The warnings of one resource, at most [`Self::PER_SECOND`] in any window of a second; the
/// ones left out are counted and the next one logged says how many (`left_out`).
#[derive(Debug, Default)]
struct Warnings(Mutex<WarnWindow>);

#[derive(Debug, Default)]
struct WarnWindow {
    start: Option<Instant>,
    logged: u32,
    left_out: u64,
}

impl Warnings {
    const PER_SECOND: u32 = 10;

    fn admit(&self, now: Instant) -> Option<u64> {
        let mut w = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if w.start
            .is_none_or(|s| now.saturating_duration_since(s) >= Duration::from_secs(1))
        {
            w.start = Some(now);
            w.logged = 0;
        }
        if w.logged < Self::PER_SECOND {
            w.logged += 1;
            Some(std::mem::take(&mut w.left_out))
        } else {
            w.left_out += 1;
            None
        }
    }
}

/// Runs one connection (or upgraded HTTP connection) to its end and records it once: counted
/// open for the whole task (a drop guard, released however the task ends), a panic caught and
/// recorded as `side=internal, reason=panic`, `kill` (the end of a drain) recorded as a close.
pub async fn guarded(
    stats: &Stats,
    upstream: &(dyn std::fmt::Display + Sync),
    serving: impl std::future::Future<Output = Result<Relayed, Failure>>,
    kill: impl std::future::Future<Output = ()>,
    audit: Option<std::sync::Arc<crate::audit::Session>>,
) {
    let _open = Open::new(stats);
    let serving = std::panic::AssertUnwindSafe(serving).catch_unwind();
    let serving = crate::audit::scoped(audit.clone(), serving);
    let result = tokio::select! {
        r = serving => Some(r.unwrap_or_else(|_| Err(Failure::Open(panicked())))),
        () = kill => None,
    };
    if let Some(session) = &audit {
        match &result {
            None => crate::audit::ended(session, None, None),
            Some(Ok(done)) => crate::audit::ended(session, Some((done.sent, done.received)), None),
            Some(Err(failure)) => {
                crate::audit::ended(session, Some((0, 0)), Some(failure.error()));
            }
        }
    }
    stats.record(upstream, result);
}

/// One open connection of a resource: counted in `open` and `keyward_connections_open` from
/// creation until drop, whatever ends the task (a return, a cancellation, a panic).
#[derive(Debug)]
pub struct Open<'a> {
    stats: &'a Stats,
    gauge: prometheus::IntGauge,
}

impl<'a> Open<'a> {
    /// Counts a connection open.
    pub fn new(stats: &'a Stats) -> Self {
        let gauge = metrics().open.with_label_values(&[stats.name.as_str()]);
        stats.open.fetch_add(1, Ordering::Relaxed);
        gauge.inc();
        Self { stats, gauge }
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
        self.gauge.dec();
    }
}

/// The error recorded for a connection task that panicked. The panic's own message stays
/// out of logs and labels (it may quote peer bytes); the panic hook prints it to stderr.
pub fn panicked() -> ConnError {
    ConnError::new(
        Side::Internal,
        Reason::Panic,
        "keyward bug: the connection task panicked (its message is on stderr); please report it",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_task_that_panics_releases_its_gauges_and_is_recorded_once() {
        let stats = Stats::new(ResourceName::internal());
        let gauge = metrics().open.with_label_values(&[stats.name.as_str()]);
        let before = gauge.get();
        let serving = async {
            assert_eq!(stats.open(), 1, "counted open while serving");
            if stats.total() == 0 {
                panic!("a bug in a handler");
            }
            Ok(Relayed::default())
        };
        guarded(&stats, &"upstream", serving, std::future::pending(), None).await;
        assert_eq!(stats.open(), 0);
        assert_eq!(gauge.get(), before);
        assert_eq!(stats.errors(), 1);
        let last = stats.last_error().unwrap().error;
        assert_eq!((last.side, last.reason), (Side::Internal, Reason::Panic));
    }

    #[test]
    fn warnings_are_limited_per_second_and_the_next_one_counts_those_left_out() {
        let w = Warnings::default();
        let t0 = Instant::now();
        for _ in 0..Warnings::PER_SECOND {
            assert_eq!(w.admit(t0), Some(0));
        }
        for i in 1..=25u32 {
            assert_eq!(w.admit(t0 + Duration::from_millis(u64::from(i) * 30)), None);
        }
        // A second after the window opened: logged again, with the 25 left out.
        assert_eq!(w.admit(t0 + Duration::from_secs(1)), Some(25));
        assert_eq!(w.admit(t0 + Duration::from_secs(1)), Some(0));
        // A quiet spell: everything logged.
        assert_eq!(w.admit(t0 + Duration::from_secs(60)), Some(0));
    }
}
