//! The server: one accept loop per resource, connection tasks, reload publication and graceful
//! shutdown.
//!
//! Lifecycle (docs/DESIGN.md): **accept** (span with resource, client, conn) → connect →
//! secure → (authenticate) → relay → **record** (one classification, one log line, metrics).
//! A connection takes its resource's runtime snapshot at accept and keeps it: a reload never
//! changes a live connection.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::config::{protocol_name, ResourceName};
use crate::error::{ConnError, Reason, Side};
use crate::listener::{bind_one, BindError, BoundAddr, DetachedStream, Listener, Listeners};
use crate::metrics::metrics;
pub use crate::record::LastError;
use crate::record::{guarded, Stats};
use crate::runtime::{ResourceRuntime, Runtime};

/// Live state of one resource.
#[derive(Debug)]
pub struct ResourceState {
    /// The resource.
    pub name: ResourceName,
    /// Where it listens.
    pub addr: BoundAddr,
    runtime: ArcSwap<ResourceRuntime>,
    limit: ArcSwap<Semaphore>,
    stats: Arc<Stats>,
}

impl ResourceState {
    fn new(runtime: Arc<ResourceRuntime>, addr: BoundAddr) -> Self {
        Self {
            name: runtime.name.clone(),
            addr,
            limit: ArcSwap::from_pointee(Semaphore::new(runtime.max_connections)),
            stats: Arc::new(Stats::new(runtime.name.clone())),
            runtime: ArcSwap::new(runtime),
        }
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.stats.open()
    }

    /// Connections accepted so far (including refused ones).
    pub fn total(&self) -> u64 {
        self.stats.total()
    }

    /// Connections (and HTTP requests) that ended in an error.
    pub fn errors(&self) -> u64 {
        self.stats.errors()
    }

    /// The most recent failure.
    pub fn last_error(&self) -> Option<LastError> {
        self.stats.last_error()
    }

    /// The runtime snapshot new connections use.
    pub fn runtime(&self) -> Arc<ResourceRuntime> {
        self.runtime.load_full()
    }

    /// HTTP responses sent to apps, by status code.
    pub fn requests(&self) -> BTreeMap<u16, u64> {
        self.stats.requests()
    }

    /// Publishes a new snapshot for new connections (reload).
    fn publish(&self, runtime: Arc<ResourceRuntime>) {
        if runtime.max_connections != self.runtime().max_connections {
            // Live connections keep their permits of the old semaphore.
            self.limit
                .store(Arc::new(Semaphore::new(runtime.max_connections)));
        }
        self.runtime.store(runtime);
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Connections still open when the grace period ran out (and were closed).
    pub cut: usize,
}

struct Slot {
    state: Arc<ResourceState>,
    /// Stops the accept loop.
    stop: CancellationToken,
    /// Closes the resource's live connections (end of a drain).
    kill: CancellationToken,
}

struct Inner {
    slots: Mutex<BTreeMap<ResourceName, Slot>>,
    connections: TaskTracker,
    accept_loops: TaskTracker,
    kill: CancellationToken,
    shutdown: CancellationToken,
    ids: AtomicU64,
    grace: Mutex<Duration>,
    delay: Mutex<Duration>,
    started: AtomicBool,
    draining: AtomicBool,
}

/// A handle on the live server: state for the admin endpoint and tests, reload publication,
/// shutdown requests. Cheap to clone.
#[derive(Clone)]
pub struct State {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("resources", &self.resources().len())
            .finish_non_exhaustive()
    }
}

impl State {
    /// The state of one resource.
    pub fn resource(&self, name: &str) -> Option<Arc<ResourceState>> {
        let slots = self.inner.slots.lock().ok()?;
        slots
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, s)| s.state.clone())
    }

    /// All resources, by name.
    pub fn resources(&self) -> Vec<Arc<ResourceState>> {
        self.inner
            .slots
            .lock()
            .map(|s| s.values().map(|slot| slot.state.clone()).collect())
            .unwrap_or_default()
    }

    /// Whether every listener is bound (the server is running).
    pub fn started(&self) -> bool {
        self.inner.started.load(Ordering::Relaxed)
    }

    /// Ready for traffic: started, not draining, every resource with a usable TLS config.
    /// Otherwise the reasons.
    pub fn ready(&self) -> Result<(), Vec<String>> {
        let mut not = Vec::new();
        if !self.started() {
            not.push("listeners are not bound yet".to_owned());
        }
        if self.inner.draining.load(Ordering::Relaxed) {
            not.push("shutting down".to_owned());
        }
        if not.is_empty() {
            Ok(())
        } else {
            Err(not)
        }
    }

    /// Asks for a graceful shutdown (as SIGTERM does).
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// Publishes a new runtime (reload): binds listeners of new resources and of resources
    /// whose address changed first — if any bind fails, nothing changes; then swaps snapshots,
    /// starts and retires accept loops. Removed or moved resources' live connections drain for
    /// the grace period. Resources that did not change are untouched.
    pub async fn apply(&self, runtime: Runtime) -> Result<(), BindError> {
        let needs_bind: Vec<Arc<ResourceRuntime>> = {
            let slots = self.inner.slots.lock().map_err(|_| poisoned())?;
            runtime
                .resources
                .iter()
                .filter(|res| {
                    slots
                        .get(&res.name)
                        .is_none_or(|slot| slot.state.runtime().listen != res.listen)
                })
                .cloned()
                .collect()
        };
        let mut bound = BTreeMap::new();
        for res in &needs_bind {
            bound.insert(res.name.clone(), bind_one(&res.name, &res.listen).await?);
        }
        if let Ok(mut grace) = self.inner.grace.lock() {
            *grace = runtime.shutdown_grace;
        }
        if let Ok(mut delay) = self.inner.delay.lock() {
            *delay = runtime.shutdown_delay;
        }
        let grace = runtime.shutdown_grace;
        let mut slots = self.inner.slots.lock().map_err(|_| poisoned())?;
        let keep: Vec<ResourceName> = runtime.resources.iter().map(|r| r.name.clone()).collect();
        let removed: Vec<ResourceName> = slots
            .keys()
            .filter(|n| !keep.contains(n))
            .cloned()
            .collect();
        for name in removed {
            if let Some(slot) = slots.remove(&name) {
                info!(resource = %name, "resource removed: listener closed, live connections drain");
                metrics().forget(name.as_str());
                retire(slot, grace);
            }
        }
        for res in runtime.resources {
            match bound.remove(&res.name) {
                Some(b) => {
                    if let Some(old) = slots.remove(&res.name) {
                        info!(resource = %res.name, from = %old.state.addr, to = %b.addr, "resource moved: old listener closed, its live connections drain");
                        retire(old, grace);
                    } else {
                        info!(resource = %res.name, addr = %b.addr, "resource added");
                    }
                    let slot = self.spawn_slot(res, b.addr, b.listener);
                    slots.insert(slot.state.name.clone(), slot);
                }
                None => {
                    if let Some(slot) = slots.get(&res.name) {
                        if slot.state.runtime().fingerprint == res.fingerprint {
                            debug!(resource = %res.name, "unchanged: keeps its running snapshot");
                        } else {
                            info!(resource = %res.name, "resource updated: new connections use the new settings, and kept-alive HTTP connections from their next request");
                            let mut res = res;
                            if let Some(new) = Arc::get_mut(&mut res) {
                                new.carry_over(&slot.state.runtime());
                            }
                            slot.state.publish(res);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn spawn_slot(
        &self,
        runtime: Arc<ResourceRuntime>,
        addr: BoundAddr,
        listener: Listener,
    ) -> Slot {
        crate::metrics::metrics().declare(runtime.name.as_str(), runtime.series());
        let state = Arc::new(ResourceState::new(runtime, addr));
        let stop = CancellationToken::new();
        let kill = self.inner.kill.child_token();
        info!(resource = %state.name, addr = %state.addr, upstream = %state.runtime().upstream, "listening");
        let accepting = {
            let (state, stop, kill) = (state.clone(), stop.clone(), kill.clone());
            let inner = self.inner.clone();
            move |listener| {
                accept_loop(
                    state.clone(),
                    listener,
                    stop.clone(),
                    kill.clone(),
                    inner.clone(),
                )
            }
        };
        // Every worker accepts on the listener itself: a connection starts on the thread that
        // accepted it and stays there unless that worker is the busier (`Workers::place`).
        let workers = crate::workers::workers().handles();
        if workers.is_empty() {
            self.inner.accept_loops.spawn(accepting(listener));
        } else {
            match listener.detach() {
                Ok(detached) => {
                    for worker in workers {
                        let copy = match detached.try_clone() {
                            Ok(copy) => copy,
                            Err(e) => {
                                error!(resource = %state.name, "cannot share the listener with a worker: {e}");
                                continue;
                            }
                        };
                        let accepting = accepting.clone();
                        let name = state.name.clone();
                        self.inner.accept_loops.spawn_on(
                            async move {
                                match copy.attach() {
                                    Ok(listener) => accepting(listener).await,
                                    Err(e) => error!(resource = %name, "a worker cannot accept on the listener: {e}"),
                                }
                            },
                            worker,
                        );
                    }
                }
                Err(e) => {
                    error!(resource = %state.name, "cannot hand the listener to the workers: {e}")
                }
            }
        }
        Slot { state, stop, kill }
    }
}

fn poisoned() -> BindError {
    BindError {
        resource: ResourceName::internal(),
        addr: crate::config::ListenAddr::Tcp(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        reason: "internal state lock poisoned".to_owned(),
    }
}

/// Stops a slot's accept loop now and closes its connections after `grace`.
fn retire(slot: Slot, grace: Duration) {
    slot.stop.cancel();
    let kill = slot.kill;
    tokio::spawn(async move {
        tokio::select! {
            () = tokio::time::sleep(grace) => kill.cancel(),
            () = kill.cancelled() => {}
        }
    });
}

/// A runtime and its bound listeners, ready to serve.
pub struct Server {
    state: State,
    pending: Vec<(Arc<ResourceRuntime>, BoundAddr, Listener)>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").finish_non_exhaustive()
    }
}

/// The runtime and the listeners do not describe the same resources.
#[derive(Debug, thiserror::Error)]
#[error("no listener was bound for resource \"{0}\"")]
pub struct MissingListener(pub ResourceName);

impl Server {
    /// Pairs each resource with its listener.
    pub fn new(runtime: Runtime, listeners: Listeners) -> Result<Self, MissingListener> {
        let mut bound = listeners.0;
        let mut pending = Vec::new();
        for res in runtime.resources {
            let Some(i) = bound.iter().position(|b| b.resource == res.name) else {
                return Err(MissingListener(res.name.clone()));
            };
            let b = bound.swap_remove(i);
            pending.push((res, b.addr, b.listener));
        }
        let inner = Arc::new(Inner {
            slots: Mutex::new(BTreeMap::new()),
            connections: TaskTracker::new(),
            accept_loops: TaskTracker::new(),
            kill: CancellationToken::new(),
            shutdown: CancellationToken::new(),
            ids: AtomicU64::new(0),
            grace: Mutex::new(runtime.shutdown_grace),
            delay: Mutex::new(runtime.shutdown_delay),
            started: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        });
        Ok(Self {
            state: State { inner },
            pending,
        })
    }

    /// A handle on the live state, usable while [`Server::run`] runs.
    pub fn state(&self) -> State {
        self.state.clone()
    }

    /// Serves until `shutdown` completes or [`State::shutdown`] is called; then: not ready at
    /// once, keeps accepting for `shutdown_delay`, stops accepting, lets live connections finish
    /// for `shutdown_grace`, and closes what is left.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Outcome {
        let state = self.state;
        {
            let mut slots = match state.inner.slots.lock() {
                Ok(slots) => slots,
                Err(poisoned) => poisoned.into_inner(),
            };
            for (runtime, addr, listener) in self.pending {
                let slot = state.spawn_slot(runtime, addr, listener);
                slots.insert(slot.state.name.clone(), slot);
            }
        }
        state.inner.started.store(true, Ordering::Relaxed);
        // "once per day per cert": re-check expiries daily (each load checks too).
        let daily = {
            let state = state.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(24 * 3600));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let resources = state.resources().iter().map(|r| r.runtime()).collect();
                    Runtime {
                        resources,
                        shutdown_grace: Duration::ZERO,
                        shutdown_delay: Duration::ZERO,
                        audit: None,
                    }
                    .warn_expiring();
                }
            })
        };
        tokio::select! {
            () = shutdown => {}
            () = state.inner.shutdown.cancelled() => info!("shutdown requested"),
        }
        daily.abort();
        state.inner.draining.store(true, Ordering::Relaxed);
        let delay = state.inner.delay.lock().map(|d| *d).unwrap_or_default();
        if !delay.is_zero() {
            info!(delay = %humantime::format_duration(delay), "not ready; still accepting during shutdown_delay");
            tokio::time::sleep(delay).await;
        }
        let grace = state.inner.grace.lock().map(|g| *g).unwrap_or_default();
        let inner = &state.inner;
        info!(live = inner.connections.len(), grace = %humantime::format_duration(grace), "shutting down: no new connections, waiting for live ones");
        if let Ok(slots) = inner.slots.lock() {
            for slot in slots.values() {
                slot.stop.cancel();
            }
        }
        inner.accept_loops.close();
        inner.accept_loops.wait().await;
        inner.connections.close();
        if tokio::time::timeout(grace, inner.connections.wait())
            .await
            .is_ok()
        {
            info!("all connections finished");
            return Outcome { cut: 0 };
        }
        let cut = inner.connections.len();
        warn!(cut, "grace period over: closing the remaining connections");
        inner.kill.cancel();
        inner.connections.wait().await;
        Outcome { cut }
    }
}

async fn accept_loop(
    state: Arc<ResourceState>,
    listener: Listener,
    stop: CancellationToken,
    kill: CancellationToken,
    inner: Arc<Inner>,
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
        let runtime = state.runtime();
        state.stats.accepted();
        metrics()
            .connections
            .with_label_values(&[state.name.as_str(), protocol_name(runtime.protocol)])
            .inc();
        let conn = inner.ids.fetch_add(1, Ordering::Relaxed);
        let Ok(permit) = state.limit.load_full().try_acquire_owned() else {
            let limit = runtime.max_connections;
            if let Some(left_out) = state.stats.may_warn() {
                let left_out = (left_out > 0).then_some(left_out);
                warn!(resource = %state.name, client = %peer, conn, limit, left_out, "closing new connection: max_connections reached");
            }
            state.stats.failed(ConnError::new(
                Side::Internal,
                Reason::MaxConnections,
                format!("max_connections ({limit}) reached"),
            ));
            drop(client);
            continue;
        };
        let stats = state.stats.clone();
        let kill = kill.clone();
        let audit = runtime.resource.audit.session(&state.name, conn, &peer);
        let span = info_span!("conn", resource = %state.name, client = %peer, conn);
        // This worker, or a less loaded one (the stream then moves to its event loop).
        let (elsewhere, load) = crate::workers::workers().place();
        let client = match elsewhere {
            None => Either::Left(client),
            Some(_) => match DetachedStream::detach(client) {
                Ok(moving) => Either::Right(moving),
                Err(e) => {
                    state.stats.failed(ConnError::from_io(Side::Client, &e));
                    continue;
                }
            },
        };
        let serving = async move {
            // Released by drop, whatever ends this task (the slot; `guarded` does the
            // gauges, catches a panic and records the end once).
            let (_permit, _load) = (permit, load);
            let client = match client {
                Either::Left(client) => client,
                Either::Right(moved) => match moved.attach() {
                    Ok(client) => client,
                    Err(e) => {
                        stats.failed(ConnError::from_io(Side::Internal, &e));
                        return;
                    }
                },
            };
            debug!("accepted");
            guarded(
                &stats,
                &runtime.upstream,
                runtime.serve(client, &stats),
                kill.cancelled(),
                audit,
            )
            .await;
        }
        .instrument(span);
        match elsewhere {
            None => inner.connections.spawn(serving),
            Some(worker) => inner.connections.spawn_on(serving, worker),
        };
    }
    if let BoundAddr::Unix(path) = &state.addr {
        let _ = std::fs::remove_file(path);
    }
}
