//! Connection workers: one thread per core (or `KEYWARD_WORKER_THREADS`), each running a
//! current-thread tokio runtime of its own.
//!
//! Every worker accepts on every listener (`server::spawn_slot`), and a connection lives on
//! one worker: its handshake, its upstream connection, the relay and every task it spawns run
//! on that one thread, woken by that thread's own event loop. It is the worker that accepted
//! it unless that one carries at least two connections more than the least loaded one
//! ([`Workers::place`]): both workers wake for a new connection and whichever runs first takes
//! it, so without that a burst of connections can all land on one worker while the other
//! idles (`wrk -c32` once put all 32 on one thread). A work-stealing runtime instead moves tasks
//! between threads and wakes idle workers to look for work, which on a sidecar's one or two
//! cores costs more CPU per request than it saves (`bench/http.sh`: keyward with one worker
//! thread spent 0.85× the CPU per request of two work-stealing ones). Listeners, the admin
//! endpoint and reloads stay on the main runtime.

use std::cell::Cell;
use std::sync::OnceLock;

use prometheus::IntGauge;
use tokio::runtime::Handle;

/// The started workers' runtimes.
#[derive(Debug)]
pub struct Workers {
    handles: Vec<Handle>,
    /// Live connections per worker, for [`Workers::place`] (and the metric
    /// `keyward_worker_connections`).
    loads: Vec<IntGauge>,
}

/// A connection counted against a worker's load until it is dropped.
#[derive(Debug)]
pub struct Load(Option<&'static IntGauge>);

impl Drop for Load {
    fn drop(&mut self) {
        if let Some(load) = self.0 {
            load.dec();
        }
    }
}

static WORKERS: OnceLock<Workers> = OnceLock::new();

thread_local! {
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
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
        // Stops at the first that cannot start: a worker's index is its place in `handles`.
        let handles = (0..count()).map_while(start).collect::<Vec<_>>();
        let gauge = &crate::metrics::metrics().worker_connections;
        let loads = (0..handles.len())
            .map(|i| gauge.with_label_values(&[i.to_string().as_str()]))
            .collect();
        Workers { handles, loads }
    })
}

/// This thread's worker index (0 outside the workers): per-worker state is indexed by it.
pub fn index() -> usize {
    INDEX.with(Cell::get).unwrap_or(0)
}

impl Workers {
    /// The workers' runtimes.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// Where a connection accepted on this thread runs: here (`None`), unless this worker
    /// carries at least two connections more than the least loaded one, which then gets it.
    /// The connection counts against the chosen worker until the returned [`Load`] drops.
    pub fn place(&'static self) -> (Option<&'static Handle>, Load) {
        let Some(here) = INDEX.with(Cell::get).filter(|&i| i < self.loads.len()) else {
            return (None, Load(None));
        };
        let (chosen, handle) = match choose(here, self.loads.iter().map(IntGauge::get)) {
            Some(other) => (&self.loads[other], Some(&self.handles[other])),
            None => (&self.loads[here], None),
        };
        chosen.inc();
        (handle, Load(Some(chosen)))
    }
}

/// The worker to hand a connection accepted on worker `here` to, given every worker's live
/// connections: the least loaded one if `here` carries at least two more (so two workers
/// never trade connections back and forth over a difference of one), else none.
fn choose(here: usize, loads: impl IntoIterator<Item = i64>) -> Option<usize> {
    let (mut here_load, mut least) = (None, None::<(usize, i64)>);
    for (i, load) in loads.into_iter().enumerate() {
        if i == here {
            here_load = Some(load);
        }
        if least.is_none_or(|(_, l)| load < l) {
            least = Some((i, load));
        }
    }
    let (least, least_load) = least?;
    (here_load? - least_load > 1).then_some(least)
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
            INDEX.with(|c| c.set(Some(i)));
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

#[cfg(test)]
mod tests {
    use super::choose;

    #[test]
    fn a_connection_moves_only_to_a_worker_with_two_fewer() {
        assert_eq!(choose(0, [0, 0]), None);
        assert_eq!(choose(0, [1, 0]), None);
        assert_eq!(choose(0, [2, 0]), Some(1));
        assert_eq!(choose(1, [3, 9]), Some(0));
        assert_eq!(choose(1, [5, 4, 2]), Some(2));
        // the least loaded, not the first one with fewer
        assert_eq!(choose(0, [7, 4, 1, 3]), Some(2));
        assert_eq!(choose(2, [7, 4, 1, 3]), None);
        assert_eq!(choose(0, []), None);
        assert_eq!(choose(3, [1, 1]), None);
    }
}
