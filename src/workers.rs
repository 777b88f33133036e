//! Connection workers: one thread per core (or `KEYWARD_WORKER_THREADS`), each running a
//! current-thread tokio runtime of its own.
//!
//! Every worker accepts on every listener (`server::spawn_slot`), and a connection lives on
//! the worker that accepted it: its handshake, its upstream connection, the relay and every
//! task it spawns run on that one thread, woken by that thread's own event loop. A work-stealing runtime instead moves tasks
//! between threads and wakes idle workers to look for work, which on a sidecar's one or two
//! cores costs more CPU per request than it saves (`bench/http.sh`: keyward with one worker
//! thread spent 0.85× the CPU per request of two work-stealing ones). Listeners, the admin
//! endpoint and reloads stay on the main runtime.

use std::cell::Cell;
use std::sync::OnceLock;

use tokio::runtime::Handle;

/// The started workers' runtimes.
#[derive(Debug)]
pub struct Workers {
    handles: Vec<Handle>,
}

static WORKERS: OnceLock<Workers> = OnceLock::new();

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// How many workers to run: `KEYWARD_WORKER_THREADS`, else one per core.
pub fn count() -> usize {
    std::env::var("KEYWARD_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The workers, started on first use. Empty if none could start (connections then run on the
/// caller's runtime).
pub fn workers() -> &'static Workers {
    WORKERS.get_or_init(|| {
        let handles = (0..count()).filter_map(start).collect::<Vec<_>>();
        Workers { handles }
    })
}

/// This thread's worker index (0 outside the workers): per-worker state is indexed by it.
pub fn index() -> usize {
    INDEX.with(Cell::get)
}

impl Workers {
    /// The workers' runtimes.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }
}

fn start(i: usize) -> Option<Handle> {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name(format!("keyward-worker-{i}"))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("worker {i}: cannot start its runtime: {e}");
                    return;
                }
            };
            INDEX.with(|c| c.set(i));
            if tx.send(runtime.handle().clone()).is_ok() {
                runtime.block_on(std::future::pending::<()>());
            }
        });
    match spawned {
        Ok(_) => rx.recv().ok(),
        Err(e) => {
            tracing::error!("worker {i}: cannot start its thread: {e}");
            None
        }
    }
}
