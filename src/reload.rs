//! Hot reload: file changes and SIGHUP only *ask*; one function reloads: read → resolve →
//! build everything → only if all of it succeeded, publish (docs/DESIGN.md "Reload").
//!
//! The watcher watches **directories** (docs/DESIGN.md: editors and Kubernetes replace files
//! by rename and by swapping a `..data` symlink; a watch on the file itself goes deaf after the
//! first swap). Events are debounced; a change that leaves a certificate and its key mismatched
//! or a PEM half-written is retried once after the debounce before it counts as an error.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{resource_files, Config, Problems};
use crate::metrics::metrics;
use crate::runtime::Runtime;
use crate::secret::Env;
use crate::server::State;

/// How long events are collected before one reload.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// Reloads one config file into a running server.
pub struct Reloader {
    path: PathBuf,
    env: Arc<dyn Env>,
    state: State,
    /// What the process started with and a reload does not change (`log`, `admin`).
    fixed: Fixed,
    /// Told when each reload starts and ends.
    pub hook: Option<Hook>,
}

/// The settings a reload cannot apply: the logger is set up once, the admin listener bound
/// once.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fixed {
    log: crate::config::LogSettings,
    admin: Option<crate::config::Admin>,
}

impl Fixed {
    fn of(config: &Config) -> Self {
        Self {
            log: config.log.clone(),
            admin: config.admin.clone(),
        }
    }

    /// The keys of `config` that differ from these, by name.
    fn changed_in(&self, config: &Config) -> Vec<&'static str> {
        let new = Self::of(config);
        let mut keys = Vec::new();
        if new.log.level != self.log.level {
            keys.push("log.level");
        }
        if new.log.format != self.log.format {
            keys.push("log.format");
        }
        match (&self.admin, &new.admin) {
            (Some(a), Some(b)) => {
                if a.listen != b.listen {
                    keys.push("admin.listen");
                }
                if a.shutdown_endpoint != b.shutdown_endpoint {
                    keys.push("admin.shutdown_endpoint");
                }
            }
            (None, None) => {}
            _ => keys.push("admin"),
        }
        keys
    }
}

/// Why a reload did not publish.
#[derive(Debug)]
pub enum ReloadError {
    /// The config or a file it names is wrong.
    Invalid(Problems),
    /// A new or moved listener could not be bound.
    Bind(crate::listener::BindError),
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Invalid(p) => write!(f, "{p}"),
            Self::Bind(e) => write!(f, "{e}"),
        }
    }
}

impl ReloadError {
    /// Looks like material caught mid-rotation (a pair changing together, a file half-written).
    fn transient(&self) -> bool {
        match self {
            Self::Invalid(p) => p.0.iter().any(|p| {
                let m = &p.message;
                m.contains("key does not match certificate")
                    || m.contains("malformed PEM")
                    || m.contains("no PEM")
                    || m.contains("not found")
            }),
            Self::Bind(_) => false,
        }
    }
}

/// Records a successful (re)load in the metrics.
pub fn count_success() {
    metrics().reloads.with_label_values(&["success"]).inc();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    metrics().last_reload_success.set(now);
    metrics().last_reload_ok.set(1);
}

/// Where a reload is: told to a [`Hook`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// A reload starts.
    Started,
    /// It ended (applied, or failed with the running configuration kept).
    Finished,
}

/// Told when each reload starts and ends.
pub type Hook = Arc<dyn Fn(Phase) + Send + Sync>;

impl Reloader {
    /// A reloader for the config at `path`, which the process started with as `running`.
    pub fn new(path: PathBuf, env: Arc<dyn Env>, state: State, running: &Config) -> Self {
        Self {
            path,
            env,
            state,
            fixed: Fixed::of(running),
            hook: None,
        }
    }

    /// Says which of `config`'s changes this process cannot apply (each reload, while they
    /// differ): the rest of the reload is applied.
    fn warn_fixed(&self, config: &Config) {
        let keys = self.fixed.changed_in(config);
        if !keys.is_empty() {
            warn!(
                keys = keys.join(", "),
                "reload applied, except {}: restart keyward to apply {}",
                keys.join(", "),
                if keys.len() == 1 { "it" } else { "them" }
            );
        }
    }

    /// One reload attempt; logs and counts the outcome. On failure the running configuration
    /// stays entirely as it was.
    pub async fn reload(&self) -> Result<Config, ReloadError> {
        self.reload_then(None::<fn() -> std::future::Ready<()>>)
            .await
    }

    /// A reload as [`Reloader::reload`], told to the hook; with `retry`, a reload that found
    /// material mid-rotation waits for it and tries once more.
    async fn reload_then<F: Future<Output = ()>>(
        &self,
        retry: Option<impl FnOnce() -> F>,
    ) -> Result<Config, ReloadError> {
        if let Some(hook) = &self.hook {
            hook(Phase::Started);
        }
        let mut result = self.try_reload().await;
        if let (Err(e), Some(wait)) = (&result, retry) {
            if e.transient() {
                debug!("reload found material mid-rotation; retrying once after the debounce: {e}");
                wait().await;
                result = self.try_reload().await;
            }
        }
        if let Some(hook) = &self.hook {
            hook(Phase::Finished);
        }
        match &result {
            Ok(config) => {
                count_success();
                info!(resources = config.resources.len(), "configuration reloaded");
                self.warn_fixed(config);
            }
            Err(e) => self.report(e),
        }
        result
    }

    fn report(&self, e: &ReloadError) {
        metrics().reloads.with_label_values(&["error"]).inc();
        metrics().last_reload_ok.set(0);
        match e {
            ReloadError::Invalid(problems) => {
                for p in &problems.0 {
                    warn!("reload failed, keeping the running configuration: {p}");
                }
            }
            ReloadError::Bind(b) => warn!("reload failed, keeping the running configuration: {b}"),
        }
    }

    async fn try_reload(&self) -> Result<Config, ReloadError> {
        let (config, runtime) =
            Runtime::load(&self.path, self.env.as_ref()).map_err(ReloadError::Invalid)?;
        crate::audit::configure(runtime.audit.as_ref()).map_err(|message| {
            ReloadError::Invalid(Problems(vec![crate::config::Problem {
                file: self.path.clone(),
                site: None,
                message,
            }]))
        })?;
        runtime.log_summary();
        self.state.apply(runtime).await.map_err(ReloadError::Bind)?;
        Ok(config)
    }

    /// Watches the config and every file it references; reloads on change or SIGHUP until
    /// `stop` is cancelled.
    pub async fn watch(self, config: Config, stop: CancellationToken) {
        let (tx, mut rx) = mpsc::unbounded_channel::<notify::Result<notify::Event>>();
        let mut watcher = match notify::recommended_watcher(move |event| {
            let _ = tx.send(event);
        }) {
            Ok(w) => w,
            Err(e) => {
                warn!("cannot watch files, hot reload on file change is off (SIGHUP still works): {e}");
                return self.sighup_only(stop).await;
            }
        };
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!("cannot listen for SIGHUP: {e}");
                None
            }
        };
        let mut watched = WatchSet::default();
        watched.update(&mut watcher, &self.path, &config);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                Some(event) = rx.recv() => {
                    if !watched.relevant(&event) {
                        continue;
                    }
                    debug!(?event, "watched file changed");
                }
                Some(()) = recv_hup(&mut hup) => info!("SIGHUP received: reloading"),
            }
            tokio::time::sleep(DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            let rx = &mut rx;
            let result = self
                .reload_then(Some(|| async move {
                    tokio::time::sleep(DEBOUNCE).await;
                    while rx.try_recv().is_ok() {}
                }))
                .await;
            match result {
                Ok(config) => watched.update(&mut watcher, &self.path, &config),
                Err(_) => {
                    // Watch what the new config names even though it failed, so a file that
                    // appears later (a secret mounted after the config) triggers the next reload.
                    if let Ok((config, _)) = crate::config::read(&self.path)
                        .and_then(|t| crate::config::parse_partial(&t, &self.path))
                    {
                        watched.add(&mut watcher, &self.path, &config);
                    }
                }
            }
        }
    }

    async fn sighup_only(self, stop: CancellationToken) {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = hup.recv() => { let _ = self.reload().await; }
            }
        }
    }
}

async fn recv_hup(hup: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match hup {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// The files a config depends on and the directories watched for them.
#[derive(Default)]
struct WatchSet {
    files: BTreeSet<PathBuf>,
    dirs: BTreeSet<PathBuf>,
}

impl WatchSet {
    /// Watches a config's files in addition to the current ones.
    fn add(
        &mut self,
        watcher: &mut notify::RecommendedWatcher,
        config_path: &Path,
        config: &Config,
    ) {
        let mut files = referenced_files(config_path, config);
        files.extend(self.files.iter().cloned());
        self.watch(watcher, files);
    }

    fn update(
        &mut self,
        watcher: &mut notify::RecommendedWatcher,
        config_path: &Path,
        config: &Config,
    ) {
        self.watch(watcher, referenced_files(config_path, config));
    }

    fn watch(&mut self, watcher: &mut notify::RecommendedWatcher, files: BTreeSet<PathBuf>) {
        let mut dirs = BTreeSet::new();
        for file in &files {
            let Some(dir) = file.parent() else { continue };
            // A directory that does not exist yet: watch the nearest existing ancestor.
            let mut dir = dir.to_path_buf();
            while !dir.exists() {
                match dir.parent() {
                    Some(p) => dir = p.to_path_buf(),
                    None => break,
                }
            }
            dirs.insert(if dir.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                dir
            });
        }
        for gone in self.dirs.difference(&dirs) {
            let _ = watcher.unwatch(gone);
        }
        for new in dirs.difference(&self.dirs) {
            if let Err(e) = watcher.watch(new, RecursiveMode::NonRecursive) {
                warn!(dir = %new.display(), "cannot watch directory: {e}");
            }
        }
        debug!(files = files.len(), dirs = dirs.len(), "watching");
        self.files = files;
        self.dirs = dirs;
    }

    /// An event about one of our files, a Kubernetes `..data` swap, or a directory on the way
    /// to one of our files.
    fn relevant(&self, event: &notify::Result<notify::Event>) -> bool {
        let Ok(event) = event else { return true };
        if matches!(event.kind, notify::EventKind::Access(_)) {
            return false;
        }
        event.paths.iter().any(|p| {
            self.files.contains(p)
                || p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(".."))
                || self.files.iter().any(|f| f.starts_with(p))
        })
    }
}

/// The config file and every file it names (TLS material, `${file:...}` secrets).
pub fn referenced_files(config_path: &Path, config: &Config) -> BTreeSet<PathBuf> {
    let mut files = BTreeSet::new();
    files.insert(absolute(config_path));
    for res in &config.resources {
        files.extend(resource_files(res).iter().map(|p| absolute(p)));
    }
    files
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    }
}
