//! The server: one accept loop per resource, connection tasks, and graceful shutdown.
//!
//! Lifecycle (ARCHITECTURE.md): **accept** (span with resource, client, conn) → connect →
//! secure → (authenticate) → relay → **record** (one classification, one log line, state).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::config::ResourceName;
use crate::error::{ConnError, Reason, Side};
use crate::listener::{BoundAddr, Listener, Listeners};
use crate::relay::Relayed;
use crate::runtime::{ResourceRuntime, Runtime};
use crate::tcp::{self, Failure};

/// The last failure of a resource, with its time (for `/resources` and tests).
#[derive(Debug, Clone)]
pub struct LastError {
    /// When it happened.
    pub at: SystemTime,
    /// What it was.
    pub error: ConnError,
}

/// Live state of one resource.
#[derive(Debug)]
pub struct ResourceState {
    /// The resource.
    pub name: ResourceName,
    /// Where it listens.
    pub addr: BoundAddr,
    runtime: ArcSwap<ResourceRuntime>,
    limit: Arc<Semaphore>,
    open: AtomicU64,
    total: AtomicU64,
    errors: AtomicU64,
    last_error: Mutex<Option<LastError>>,
    requests: Mutex<std::collections::BTreeMap<u16, u64>>,
}

impl ResourceState {
    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections accepted so far (including refused ones).
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Connections that ended in an error.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// The most recent failure.
    pub fn last_error(&self) -> Option<LastError> {
        self.last_error.lock().ok().and_then(|g| g.clone())
    }

    /// The runtime snapshot new connections use.
    pub fn runtime(&self) -> Arc<ResourceRuntime> {
        self.runtime.load_full()
    }

    /// HTTP responses sent to apps, by status code.
    pub fn requests(&self) -> std::collections::BTreeMap<u16, u64> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    pub(crate) fn count_request(&self, status: http::StatusCode) {
        if let Ok(mut r) = self.requests.lock() {
            *r.entry(status.as_u16()).or_default() += 1;
        }
    }

    pub(crate) fn record(&self, error: ConnError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(LastError {
                at: SystemTime::now(),
                error,
            });
        }
    }
}

/// Shared view of all resources' state.
#[derive(Debug, Clone, Default)]
pub struct State {
    resources: Vec<Arc<ResourceState>>,
}

impl State {
    /// The state of one resource.
    pub fn resource(&self, name: &str) -> Option<&Arc<ResourceState>> {
        self.resources.iter().find(|r| r.name.as_str() == name)
    }

    /// All resources.
    pub fn resources(&self) -> &[Arc<ResourceState>] {
        &self.resources
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Connections still open when the grace period ran out (and were closed).
    pub cut: usize,
}

/// A runtime and its bound listeners, ready to serve.
#[derive(Debug)]
pub struct Server {
    slots: Vec<(Arc<ResourceState>, Listener)>,
    state: State,
    grace: Duration,
}

/// The runtime and the listeners do not describe the same resources.
#[derive(Debug, thiserror::Error)]
#[error("no listener was bound for resource \"{0}\"")]
pub struct MissingListener(pub ResourceName);

impl Server {
    /// Pairs each resource with its listener.
    pub fn new(runtime: Runtime, listeners: Listeners) -> Result<Self, MissingListener> {
        let mut bound = listeners.0;
        let mut slots = Vec::new();
        for res in runtime.resources {
            let Some(i) = bound.iter().position(|b| b.resource == res.name) else {
                return Err(MissingListener(res.name.clone()));
            };
            let b = bound.swap_remove(i);
            let state = Arc::new(ResourceState {
                name: res.name.clone(),
                addr: b.addr,
                limit: Arc::new(Semaphore::new(res.max_connections)),
                runtime: ArcSwap::new(res),
                open: AtomicU64::new(0),
                total: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                last_error: Mutex::new(None),
                requests: Mutex::new(Default::default()),
            });
            slots.push((state, b.listener));
        }
        let state = State {
            resources: slots.iter().map(|(s, _)| s.clone()).collect(),
        };
        Ok(Self {
            slots,
            state,
            grace: runtime.shutdown_grace,
        })
    }

    /// A handle on the live state, usable while [`Server::run`] runs.
    pub fn state(&self) -> State {
        self.state.clone()
    }

    /// Serves until `shutdown` completes; then stops accepting, lets live connections finish
    /// for the grace period, and closes what is left.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Outcome {
        let stop = CancellationToken::new();
        let kill = CancellationToken::new();
        let tracker = TaskTracker::new();
        let ids = Arc::new(AtomicU64::new(0));
        let mut loops = JoinSet::new();
        for (state, listener) in self.slots {
            info!(resource = %state.name, addr = %state.addr, upstream = %state.runtime().upstream, "listening");
            loops.spawn(accept_loop(
                state,
                listener,
                stop.clone(),
                kill.clone(),
                tracker.clone(),
                ids.clone(),
            ));
        }
        shutdown.await;
        info!(live = tracker.len(), grace = %humantime::format_duration(self.grace), "shutting down: no new connections, waiting for live ones");
        stop.cancel();
        while loops.join_next().await.is_some() {}
        tracker.close();
        if tokio::time::timeout(self.grace, tracker.wait())
            .await
            .is_ok()
        {
            info!("all connections finished");
            return Outcome { cut: 0 };
        }
        let cut = tracker.len();
        warn!(cut, "grace period over: closing the remaining connections");
        kill.cancel();
        tracker.wait().await;
        Outcome { cut }
    }
}

async fn accept_loop(
    state: Arc<ResourceState>,
    listener: Listener,
    stop: CancellationToken,
    kill: CancellationToken,
    tracker: TaskTracker,
    ids: Arc<AtomicU64>,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (client, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                warn!(resource = %state.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        state.total.fetch_add(1, Ordering::Relaxed);
        let conn = ids.fetch_add(1, Ordering::Relaxed);
        let Ok(permit) = state.limit.clone().try_acquire_owned() else {
            let limit = state.runtime().max_connections;
            warn!(resource = %state.name, client = %peer, conn, limit, "closing new connection: max_connections reached");
            state.record(ConnError::new(
                Side::Internal,
                Reason::MaxConnections,
                format!("max_connections ({limit}) reached"),
            ));
            drop(client);
            continue;
        };
        let runtime = state.runtime();
        let state = state.clone();
        let kill = kill.clone();
        let span = info_span!("conn", resource = %state.name, client = %peer, conn);
        tracker.spawn(
            async move {
                let _permit = permit;
                state.open.fetch_add(1, Ordering::Relaxed);
                debug!("accepted");
                let serving = async {
                    match runtime.http.clone() {
                        Some(http) => crate::http::serve(client, http, state.clone())
                            .await
                            .map(|()| Relayed::default())
                            .map_err(Failure::Relay),
                        None => tcp::serve(client, runtime).await,
                    }
                };
                let result = tokio::select! {
                    r = serving => Some(r),
                    () = kill.cancelled() => None,
                };
                state.open.fetch_sub(1, Ordering::Relaxed);
                record(&state, result);
            }
            .instrument(span),
        );
    }
    if let BoundAddr::Unix(path) = &state.addr {
        let _ = std::fs::remove_file(path);
    }
}

/// Lifecycle phase **record**: one classification, one log line.
fn record(state: &ResourceState, result: Option<Result<Relayed, Failure>>) {
    match result {
        None => debug!("closed at the end of the shutdown grace period"),
        Some(Ok(done)) => debug!(sent = done.sent, received = done.received, "closed"),
        Some(Err(Failure::Open(e))) => {
            warn!(
                side = e.side.as_str(),
                reason = e.reason.as_str(),
                "upstream {}: {}",
                state.runtime().upstream,
                e.detail
            );
            state.record(e);
        }
        Some(Err(Failure::Relay(e))) => {
            let tls_trouble = e.side == Side::Upstream
                && matches!(e.reason, Reason::ClientCertRejected | Reason::Tls);
            if tls_trouble {
                warn!(
                    side = e.side.as_str(),
                    reason = e.reason.as_str(),
                    "upstream {}: {}",
                    state.runtime().upstream,
                    e.detail
                );
            } else {
                debug!(
                    side = e.side.as_str(),
                    reason = e.reason.as_str(),
                    "relay ended: {}",
                    e.detail
                );
            }
            state.record(e);
        }
    }
}
