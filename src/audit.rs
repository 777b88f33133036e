//! Audit events (README "Audit"): one JSON object per line, for every session (start and
//! end), every HTTP request (level `requests`), every statement (level `statements`) and
//! every request or command an `allow` rule denied.
//!
//! - **Never blocking the relay.** Events go through a bounded queue to one writer thread;
//!   when the queue is full (a slow disk, a pipe nobody reads) the event is dropped, counted in
//!   `keyward_audit_dropped_total{resource}`, and a warning is logged (at most once every
//!   10 s).
//! - **Nothing for resources that do not ask.** A connection's [`Session`] exists only when
//!   its resource's level is not `off`; every hook ([`upstream_tcp`], [`request`], ...) is a
//!   task-local lookup that finds nothing otherwise.
//! - **No secrets.** Events carry names, addresses, certificate subjects, SQL text (never bind
//!   values) and Redis command names (never arguments); never a credential.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwapOption;
use serde::Serialize;

use crate::config::{AuditLevel, AuditSettings, AuditSink, ResourceName};
use crate::error::ConnError;

/// The sink in use (`None`: no `audit` block).
static SINK: ArcSwapOption<Sink> = ArcSwapOption::const_empty();

struct Sink {
    settings: AuditSettings,
    queue: SyncSender<Vec<u8>>,
}

/// Installs the sink `settings` describe (at startup and on every reload; unchanged
/// settings keep the running writer). A file sink's file is opened here, so a bad path is
/// reported with the config instead of lost later. `None` removes the sink.
pub fn configure(settings: Option<&AuditSettings>) -> Result<(), String> {
    let current = SINK.load();
    if current.as_ref().map(|s| &s.settings) == settings {
        return Ok(());
    }
    let Some(settings) = settings else {
        SINK.store(None);
        return Ok(());
    };
    let out = match &settings.sink {
        AuditSink::Stdout => Out::Stdout(std::io::stdout()),
        AuditSink::File {
            path,
            max_size,
            max_files,
        } => {
            let file = open(path).map_err(|e| {
                format!(
                    "audit.path {}: {}",
                    path.display(),
                    crate::error::io_reason(&e)
                )
            })?;
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            Out::File(Rotating {
                file: std::io::BufWriter::with_capacity(64 * 1024, file),
                path: path.clone(),
                size,
                max_size: *max_size,
                max_files: *max_files,
            })
        }
    };
    let (queue, rx) = std::sync::mpsc::sync_channel(settings.queue);
    std::thread::Builder::new()
        .name("keyward-audit".to_owned())
        .spawn(move || write_loop(&rx, out))
        .map_err(|e| format!("audit: cannot start the writer thread: {e}"))?;
    // The previous writer drains what it holds and ends when its last sender goes.
    SINK.store(Some(Arc::new(Sink {
        settings: settings.clone(),
        queue,
    })));
    Ok(())
}

/// Opens (creates) the audit file for appending. A FIFO is opened without blocking (no
/// reader: an error now, instead of a startup that hangs), then written in blocking mode by
/// the writer thread (a reader that stops reading fills the queue, never the relay).
fn open(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::NXIO.raw_os_error()) {
                std::io::Error::other("a FIFO nobody has open for reading")
            } else {
                e
            }
        })?;
    let flags = rustix::fs::fcntl_getfl(&file)?;
    rustix::fs::fcntl_setfl(&file, flags - rustix::fs::OFlags::NONBLOCK)?;
    Ok(file)
}

enum Out {
    Stdout(std::io::Stdout),
    File(Rotating),
}

struct Rotating {
    file: std::io::BufWriter<std::fs::File>,
    path: PathBuf,
    size: u64,
    max_size: u64,
    max_files: u32,
}

impl Rotating {
    fn write(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > self.max_size {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    /// `path` → `path.1`, `path.1` → `path.2`, ... (the oldest beyond `max_files` replaced),
    /// then a new `path`.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        let name = |i: u32| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{i}"));
            PathBuf::from(p)
        };
        for i in (1..self.max_files).rev() {
            match std::fs::rename(name(i), name(i + 1)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, name(1))?;
        self.file = std::io::BufWriter::with_capacity(64 * 1024, open(&self.path)?);
        self.size = 0;
        Ok(())
    }
}

/// How long the writer waits after a drain for more events to gather.
const BATCH: std::time::Duration = std::time::Duration::from_millis(2);

fn write_loop(rx: &Receiver<Vec<u8>>, mut out: Out) {
    let mut failing = false;
    while let Ok(first) = rx.recv() {
        let mut result = Ok(());
        let mut line = Some(first);
        while let Some(l) = line.take() {
            if result.is_ok() {
                result = match &mut out {
                    Out::Stdout(s) => s.lock().write_all(&l),
                    Out::File(f) => f.write(&l),
                };
            }
            line = rx.try_recv().ok();
        }
        if result.is_ok() {
            result = match &mut out {
                Out::Stdout(s) => s.lock().flush(),
                Out::File(f) => f.file.flush(),
            };
        }
        // Let events gather before the next drain: a sender wakes this thread only when it is
        // blocked in `recv`, so under load one wakeup (and one write) serves many events
        // instead of one each.
        std::thread::sleep(BATCH);
        match result {
            Err(e) if !failing => {
                tracing::error!(
                    "audit sink: writing failed: {e}; events are dropped until it works again"
                );
                failing = true;
            }
            Ok(()) if failing => {
                tracing::info!("audit sink: writing works again");
                failing = false;
            }
            _ => {}
        }
    }
    if let Out::File(f) = &mut out {
        let _ = f.file.flush();
    }
}

/// Seconds since the Unix epoch of the last "queue full" warning.
static WARNED: AtomicU64 = AtomicU64::new(0);

/// Queues one event; a full queue drops it (counted, warned about at most every 10 s).
fn emit(resource: &str, event: &Event<'_>) {
    let sink = SINK.load();
    let Some(sink) = sink.as_ref() else {
        return;
    };
    let mut line = match serde_json::to_vec(event) {
        Ok(line) => line,
        Err(_) => return,
    };
    line.push(b'\n');
    match sink.queue.try_send(line) {
        Ok(()) => {}
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
            crate::metrics::metrics()
                .audit_dropped
                .with_label_values(&[resource])
                .inc();
            let now = unix_seconds(SystemTime::now());
            let last = WARNED.load(Ordering::Relaxed);
            if now >= last + 10
                && WARNED
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(
                    resource,
                    queue = sink.settings.queue,
                    "audit sink is behind: events are being dropped (keyward_audit_dropped_total)"
                );
            }
        }
    }
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What a resource records and who it logs in as (built with the runtime snapshot).
#[derive(Debug, Clone)]
pub struct Policy {
    /// How much.
    pub level: AuditLevel,
    /// SQL literals become `?` in statement events.
    pub mask_literals: bool,
    /// The protocol's name.
    pub protocol: &'static str,
    /// The identity keyward logs in as, when the config names it (database user, Basic
    /// user, OAuth2 client id).
    pub identity: Option<Arc<str>>,
    /// The kind of credential keyward injects (`auth.type`).
    pub credential: &'static str,
    /// Where the resource forwards (as configured).
    pub upstream: Arc<str>,
    /// The last upstream leaf certificate seen and its subject: parsed once, not per
    /// connection.
    pub leaf: LeafCache,
}

/// A resource's last upstream leaf certificate (DER) and its subject.
pub type LeafCache = Arc<Mutex<Option<(Vec<u8>, String)>>>;

impl Policy {
    /// The subject of an upstream leaf certificate, parsed only when it differs from the last
    /// one this resource saw.
    fn subject(&self, leaf: &rustls::pki_types::CertificateDer<'_>) -> Option<String> {
        let mut last = self
            .leaf
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((der, subject)) = last.as_ref() {
            if der.as_slice() == leaf.as_ref() {
                return Some(subject.clone());
            }
        }
        let subject = crate::tls::CertInfo::parse(leaf).ok()?.subject;
        *last = Some((leaf.to_vec(), subject.clone()));
        Some(subject)
    }

    /// A session for one accepted connection, or `None` when the resource records nothing
    /// (no `audit` block, or level `off`).
    pub fn session(
        &self,
        resource: &ResourceName,
        conn: u64,
        client: &str,
    ) -> Option<Arc<Session>> {
        if self.level == AuditLevel::Off || SINK.load().is_none() {
            return None;
        }
        Some(Arc::new(Session {
            resource: resource.clone(),
            conn,
            client: client.to_owned(),
            policy: self.clone(),
            opened: Instant::now(),
            opened_at: SystemTime::now(),
            started: AtomicBool::new(false),
            facts: Mutex::new(Facts::default()),
            http_sent: AtomicU64::new(0),
            http_received: AtomicU64::new(0),
            token_fetched: AtomicBool::new(false),
            retried: AtomicBool::new(false),
        }))
    }
}

/// One audited connection: what is known of it so far.
#[derive(Debug)]
pub struct Session {
    resource: ResourceName,
    conn: u64,
    client: String,
    policy: Policy,
    opened: Instant,
    opened_at: SystemTime,
    started: AtomicBool,
    facts: Mutex<Facts>,
    http_sent: AtomicU64,
    http_received: AtomicU64,
    token_fetched: AtomicBool,
    retried: AtomicBool,
}

#[derive(Debug, Default, Clone)]
struct Facts {
    client_cert: Option<String>,
    upstream_addr: Option<SocketAddr>,
    upstream_cert: Option<String>,
    tls_version: Option<&'static str>,
    tls_cipher: Option<&'static str>,
    identity: Option<String>,
}

tokio::task_local! {
    static SESSION: Arc<Session>;
}

/// Runs `fut` (a connection's task) with `session` as its audit session.
pub async fn scoped<F: std::future::Future>(session: Option<Arc<Session>>, fut: F) -> F::Output {
    match session {
        Some(s) => SESSION.scope(s, fut).await,
        None => fut.await,
    }
}

fn with<R>(f: impl FnOnce(&Session) -> R) -> Option<R> {
    SESSION.try_with(|s| f(s)).ok()
}

/// The audit level of the current connection (`Off` when it is not audited).
pub fn level() -> AuditLevel {
    with(|s| s.policy.level).unwrap_or(AuditLevel::Off)
}

fn facts(s: &Session) -> std::sync::MutexGuard<'_, Facts> {
    s.facts
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The current connection reached its upstream at `tcp`'s peer address.
pub fn upstream_tcp(tcp: &tokio::net::TcpStream) {
    with(|s| facts(s).upstream_addr = tcp.peer_addr().ok());
}

/// The current connection's upstream TLS session: version, cipher suite, the verified
/// certificate's subject.
pub fn upstream_tls(tls: &rustls::ClientConnection) {
    with(|s| {
        let subject = tls
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|leaf| s.policy.subject(leaf));
        let mut f = facts(s);
        f.tls_version = tls.protocol_version().and_then(|v| v.as_str());
        f.tls_cipher = tls
            .negotiated_cipher_suite()
            .and_then(|c| c.suite().as_str());
        f.upstream_cert = subject;
    });
}

/// The identity keyward logged in as, when only the login knows it (the app's own user
/// name where the config names none).
pub fn identity(name: &str) {
    with(|s| facts(s).identity = Some(name.to_owned()));
}

/// The app's TLS session with keyward (`listen_tls`): the verified client certificate's
/// subject (and first SAN), if it presented one.
pub fn client_tls(app_tls: Option<&rustls::ServerConnection>) {
    let Some(tls) = app_tls else {
        return;
    };
    with(|s| {
        let mut f = facts(s);
        if f.client_cert.is_some() {
            return;
        }
        f.client_cert = tls
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|leaf| crate::tls::CertInfo::parse(leaf).ok())
            .map(|info| match info.sans.first() {
                Some(san) if info.subject.is_empty() => san.clone(),
                Some(san) => format!("{} ({san})", info.subject),
                None => info.subject,
            });
    });
}

/// The session is established (upstream reached and logged in; for HTTP, the app's
/// connection admitted): the `session_start` event, once.
pub fn started() {
    with(|s| {
        if s.started.swap(true, Ordering::Relaxed) {
            return;
        }
        let f = facts(s).clone();
        let mut e = s.event("session_start", &f);
        e.time = Some(rfc3339(s.opened_at));
        emit(s.resource.as_str(), &e);
    });
}

/// How a connection ended: the `session_end` event (also for connections refused before
/// any relay, which had no start). `None`: closed by keyward at the end of a drain.
pub fn ended(session: &Session, relayed: Option<(u64, u64)>, error: Option<&ConnError>) {
    let f = facts(session).clone();
    let mut e = session.event("session_end", &f);
    let (sent, received) = relayed.unwrap_or_default();
    e.bytes_sent = Some(sent.max(session.http_sent.load(Ordering::Relaxed)));
    e.bytes_received = Some(received.max(session.http_received.load(Ordering::Relaxed)));
    e.duration_ms = Some(millis(session.opened.elapsed()));
    match error {
        Some(err) => {
            e.outcome = Some("error");
            e.side = Some(err.side.as_str());
            e.reason = Some(err.reason.as_str());
            e.detail = Some(&err.detail);
        }
        None if relayed.is_none() => {
            e.outcome = Some("closed");
            e.side = Some("internal");
            e.reason = Some("shutdown");
        }
        None => e.outcome = Some("closed"),
    }
    emit(session.resource.as_str(), &e);
}

/// One HTTP request and its response (level `requests`).
#[derive(Debug)]
pub struct Request<'a> {
    /// Method.
    pub method: &'a str,
    /// Path and query as the app sent them, the injected parameter taken out.
    pub path: &'a str,
    /// Status sent to the app.
    pub status: u16,
    /// Request body bytes, when the request declared them (`Content-Length`).
    pub request_bytes: Option<u64>,
    /// Response body bytes sent to the app.
    pub response_bytes: u64,
    /// From the request's head to the end of the response body.
    pub took: std::time::Duration,
    /// Why keyward answered it itself, if it did.
    pub error: Option<&'a ConnError>,
}

/// The current connection's audit session, if it has one.
pub fn current() -> Option<Arc<Session>> {
    SESSION.try_with(Arc::clone).ok()
}

/// An OAuth2 token was fetched while serving the current request.
pub fn token_fetched() {
    with(|s| s.token_fetched.store(true, Ordering::Relaxed));
}

/// The upstream answered the current request 401 and keyward retried it with a new token.
pub fn retried() {
    with(|s| s.retried.store(true, Ordering::Relaxed));
}

impl Session {
    /// A new request on this (HTTP/1.1, so sequential) connection.
    pub fn request_begins(&self) {
        self.token_fetched.store(false, Ordering::Relaxed);
        self.retried.store(false, Ordering::Relaxed);
    }

    /// Records one HTTP request (level `requests`); its bytes count into the session's
    /// either way.
    pub fn request(&self, req: &Request<'_>) {
        let sent = req.request_bytes.unwrap_or(0);
        self.http_sent.fetch_add(sent, Ordering::Relaxed);
        self.http_received
            .fetch_add(req.response_bytes, Ordering::Relaxed);
        if self.policy.level < AuditLevel::Requests {
            return;
        }
        let mut e = self.bare("request");
        e.method = Some(req.method);
        e.path = Some(req.path);
        e.status = Some(req.status);
        e.request_bytes = req.request_bytes;
        e.response_bytes = Some(req.response_bytes);
        e.duration_ms = Some(millis(req.took));
        e.credential = Some(self.policy.credential);
        e.token_refreshed = Some(self.token_fetched.load(Ordering::Relaxed));
        e.retried_401 = Some(self.retried.load(Ordering::Relaxed));
        if let Some(err) = req.error {
            e.reason = Some(err.reason.as_str());
            e.detail = Some(&err.detail);
        }
        emit(self.resource.as_str(), &e);
    }

    /// A request or command an `allow` rule (or `read_only`) refused (every level but `off`).
    pub fn denied(&self, what: Denied<'_>) {
        let mut e = self.bare("denied");
        match what {
            Denied::Http { method, path } => {
                e.method = Some(method);
                e.path = Some(path);
                e.rule = Some("no allow rule matched");
            }
            Denied::Command { name, rule } => {
                e.command = Some(name);
                e.rule = Some(rule);
            }
            Denied::Statement { text } => {
                e.statement = Some(text.to_owned());
                e.rule = Some("read_only");
            }
        }
        emit(self.resource.as_str(), &e);
    }
}

/// A request or command an `allow` rule (or `read_only`) refused, on the current connection.
pub fn denied(what: Denied<'_>) {
    with(|s| s.denied(what));
}

/// What was denied.
#[derive(Debug, Clone, Copy)]
pub enum Denied<'a> {
    /// An HTTP request.
    Http {
        /// Method.
        method: &'a str,
        /// Path (query removed).
        path: &'a str,
    },
    /// A Redis command.
    Command {
        /// Its name, upper case.
        name: &'a str,
        /// The rule that refused it.
        rule: &'a str,
    },
    /// A SQL statement (`read_only`).
    Statement {
        /// Its text.
        text: &'a str,
    },
}

/// Whether the current connection records statements.
pub fn statements() -> bool {
    level() >= AuditLevel::Statements
}

/// One statement (level `statements`): SQL text (masked when `mask_literals`), or a Redis
/// command name and key count.
pub fn statement(kind: &'static str, sql: Option<&str>, command: Option<&str>, keys: Option<u64>) {
    with(|s| {
        if s.policy.level < AuditLevel::Statements {
            return;
        }
        let mut e = s.bare("statement");
        e.kind = Some(kind);
        e.statement = sql.map(|q| {
            if s.policy.mask_literals {
                mask_literals(q)
            } else {
                q.to_owned()
            }
        });
        e.command = command;
        e.keys = keys;
        emit(s.resource.as_str(), &e);
    });
}

impl Session {
    fn bare(&self, event: &'static str) -> Event<'_> {
        Event {
            time: Some(rfc3339(SystemTime::now())),
            event,
            resource: self.resource.as_str(),
            protocol: self.policy.protocol,
            session: self.conn,
            client: Some(&self.client),
            ..Event::default()
        }
    }

    fn event<'a>(&'a self, event: &'static str, f: &'a Facts) -> Event<'a> {
        let mut e = self.bare(event);
        e.client_cert = f.client_cert.as_deref();
        e.upstream = Some(&self.policy.upstream);
        e.upstream_addr = f.upstream_addr;
        e.upstream_cert = f.upstream_cert.as_deref();
        e.identity = f.identity.as_deref().or(self.policy.identity.as_deref());
        e.tls_version = f.tls_version;
        e.tls_cipher = f.tls_cipher;
        e
    }
}

/// One audit line. Field names are stable (README "Audit").
#[derive(Debug, Default, Serialize)]
struct Event<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<String>,
    event: &'static str,
    resource: &'a str,
    protocol: &'static str,
    session: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_cert: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_addr: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_cert: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    identity: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_version: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_cipher: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credential: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_refreshed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retried_401: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    statement: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keys: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_sent: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_received: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    side: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

fn millis(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// SQL with its string and number literals replaced by `?` (`'it''s'`, `E'\n'`, `$$...$$`,
/// `42`, `1.5e3`); identifiers (also quoted ones, and digits inside names) and `$1`
/// placeholders are kept.
pub fn mask_literals(sql: &str) -> String {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    let mut last = 0;
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    while i < b.len() {
        let c = b[i];
        let start = i;
        let end = match c {
            b'\'' => {
                // A standard string; `''` inside it; a preceding E/e makes `\` an escape.
                let escapes = i > 0 && matches!(b[i - 1], b'E' | b'e');
                let mut j = i + 1;
                loop {
                    match b.get(j) {
                        None => break j,
                        Some(b'\\') if escapes => j += 2,
                        Some(b'\'') if b.get(j + 1) == Some(&b'\'') => j += 2,
                        Some(b'\'') => break j + 1,
                        Some(_) => j += 1,
                    }
                }
            }
            b'"' | b'`' => {
                // A quoted identifier: kept.
                let mut j = i + 1;
                while j < b.len() && b[j] != c {
                    j += 1;
                }
                i = (j + 1).min(b.len());
                continue;
            }
            b'$' if !(i > 0 && ident(b[i - 1])) => {
                // A dollar-quoted string `$tag$...$tag$`; `$1` is a placeholder.
                let mut j = i + 1;
                while j < b.len() && (b[j].is_ascii_alphabetic() || b[j] == b'_') {
                    j += 1;
                }
                if b.get(j) == Some(&b'$') {
                    let tag = &sql[i..=j];
                    match sql[j + 1..].find(tag) {
                        Some(at) => j + 1 + at + tag.len(),
                        None => b.len(),
                    }
                } else {
                    i = j.max(i + 1);
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                    continue;
                }
            }
            b'0'..=b'9' if !(i > 0 && ident(b[i - 1])) => {
                let mut j = i;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'.') {
                    j += 1;
                }
                j
            }
            b'.' if b.get(i + 1).is_some_and(u8::is_ascii_digit) && !(i > 0 && ident(b[i - 1])) => {
                let mut j = i + 1;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'.') {
                    j += 1;
                }
                j
            }
            _ => {
                i += 1;
                continue;
            }
        };
        // An E/X/B/N prefix belongs to the literal.
        let start = if start > 0
            && c == b'\''
            && matches!(
                b[start - 1],
                b'E' | b'e' | b'X' | b'x' | b'B' | b'b' | b'N' | b'n'
            )
            && !(start > 1 && ident(b[start - 2]))
        {
            start - 1
        } else {
            start
        };
        out.push_str(&sql[last..start]);
        out.push('?');
        last = end;
        i = end;
    }
    out.push_str(&sql[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_masked_and_names_and_placeholders_kept() {
        let cases = [
            (
                "SELECT * FROM t1 WHERE name = 'it''s' AND id = 42",
                "SELECT * FROM t1 WHERE name = ? AND id = ?",
            ),
            ("select 1.5e3, .5, -7", "select ?, ?, -?"),
            (
                "SELECT E'a\\'b', x'ff', $$a'b$$, $q$x$q$",
                "SELECT ?, ?, ?, ?",
            ),
            (
                "UPDATE \"t 1\" SET col2 = $1 WHERE `k9` = 'v'",
                "UPDATE \"t 1\" SET col2 = $1 WHERE `k9` = ?",
            ),
            (
                "INSERT INTO t VALUES ('unterminated",
                "INSERT INTO t VALUES (?",
            ),
            ("select table1.col_2 from s3", "select table1.col_2 from s3"),
        ];
        for (sql, masked) in cases {
            assert_eq!(mask_literals(sql), masked, "{sql}");
        }
    }
}
