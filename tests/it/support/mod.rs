//! Test support: a throwaway PKI per test, a real TLS upstream on port 0, keyward run
//! in-process on port 0, and helpers with deadlines instead of sleeps.

pub mod httpd;
pub mod maria;
pub mod mysql8;
pub mod pg;
pub mod procs;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyward::error::ConnError;
use keyward::listener::BoundAddr;
use keyward::pki::{Ca, Issued, Usage};
use keyward::{Listeners, Outcome, Runtime, Server, State};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

pub const DEADLINE: Duration = Duration::from_secs(10);

/// A CA, a server certificate for localhost and 127.0.0.1, and a client certificate, written
/// as PEM files in a [`Pki`]'s directory.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TlsFiles {
    /// The files, the client certificate's CN being `client_cn`.
    pub fn new(pki: &Pki, client_cn: &str) -> Self {
        let server = pki.server(&["localhost", "127.0.0.1"]);
        let (client_cert, client_key) = pki.write_client("client", client_cn);
        Self {
            ca: pki.write_ca(),
            server_cert: pki.write("server.pem", &server.cert_pem),
            server_key: pki.write("server.key", &server.key_pem),
            client_cert,
            client_key,
        }
    }
}

/// A temp dir with a CA; writes PEM files on request.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
}

impl Pki {
    pub fn new() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            dir: tempfile::tempdir().unwrap(),
            ca: Ca::new("keyward test CA").unwrap(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Writes the CA as `ca.pem`.
    pub fn write_ca(&self) -> PathBuf {
        self.write("ca.pem", &self.ca.cert.cert_pem)
    }

    pub fn server(&self, names: &[&str]) -> Issued {
        self.ca.leaf("upstream", names, Usage::Server).unwrap()
    }

    /// Writes a client certificate (CN = `cn`) as `NAME.pem` / `NAME.key`.
    pub fn write_client(&self, name: &str, cn: &str) -> (PathBuf, PathBuf) {
        let c = self.ca.leaf(cn, &[], Usage::Client).unwrap();
        (
            self.write(&format!("{name}.pem"), &c.cert_pem),
            self.write(&format!("{name}.key"), &c.key_pem),
        )
    }
}

/// What the upstream saw of one connection.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub version: String,
    pub sni: Option<String>,
    pub client_cn: Option<String>,
    pub resumed: bool,
    pub received: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
pub enum Behavior {
    /// Echo everything until EOF, then close (close_notify).
    Echo,
    /// Send a greeting, half-close (close_notify), then read to EOF and record it.
    GreetThenHalfClose,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    acceptor: Arc<arc_swap::ArcSwap<TlsAcceptor>>,
}

impl Upstream {
    /// New connections get `config` (e.g. a certificate from another CA); live ones keep theirs.
    pub fn swap(&self, config: ServerConfig) {
        self.acceptor
            .store(Arc::new(TlsAcceptor::from(Arc::new(config))));
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A rustls server config for `cert`; with `client_ca`, client certificates are required.
pub fn server_config(
    cert: &Issued,
    client_ca: Option<&Ca>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> ServerConfig {
    let provider = keyward::tls::provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca.cert.cert_der.clone()).unwrap();
            builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .unwrap(),
            )
        }
        None => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(vec![cert.cert_der.clone()], cert.key_der())
        .unwrap()
}

/// A TLS upstream on 127.0.0.1:0.
pub async fn upstream(config: ServerConfig, behavior: Behavior) -> Upstream {
    let acceptor = Arc::new(arc_swap::ArcSwap::from_pointee(TlsAcceptor::from(
        Arc::new(config),
    )));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let current = acceptor.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = current.load_full();
            let record = record.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let (_, session) = tls.get_ref();
                let mut seen = Seen {
                    version: format!("{:?}", session.protocol_version().unwrap()),
                    sni: session.server_name().map(str::to_owned),
                    client_cn: session
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| keyward::tls::CertInfo::parse(c).unwrap().subject),
                    resumed: session.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
                    received: Vec::new(),
                };
                let index = {
                    let mut all = record.lock().unwrap();
                    all.push(seen.clone());
                    all.len() - 1
                };
                match behavior {
                    Behavior::Echo => {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            match tls.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    seen.received.extend_from_slice(&buf[..n]);
                                    if tls.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = tls.shutdown().await;
                    }
                    Behavior::GreetThenHalfClose => {
                        let _ = tls.write_all(b"hello from upstream").await;
                        let _ = tls.shutdown().await;
                        let _ = tls.read_to_end(&mut seen.received).await;
                    }
                }
                record.lock().unwrap()[index].received = seen.received;
            });
        }
    });
    Upstream {
        addr,
        seen,
        acceptor,
    }
}

/// keyward running in-process.
pub struct Proxy {
    pub state: State,
    pub listeners: Vec<(String, BoundAddr)>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<Outcome>>,
}

impl Proxy {
    /// Loads `yaml` from `dir/keyward.yaml` and serves it.
    pub async fn start(dir: &Path, yaml: &str) -> Self {
        let path = dir.join("keyward.yaml");
        std::fs::write(&path, yaml).unwrap();
        let config = keyward::config::load(&path).unwrap_or_else(|p| panic!("config: {p}"));
        let runtime = Runtime::build(&config, &keyward::secret::ProcessEnv)
            .unwrap_or_else(|p| panic!("runtime: {p}"));
        let listeners = Listeners::bind(runtime.listens()).await.unwrap();
        let bound = listeners
            .addrs()
            .map(|(n, a)| (n.to_string(), a.clone()))
            .collect();
        let server = Server::new(runtime, listeners).unwrap();
        let state = server.state();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        Self {
            state,
            listeners: bound,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// The TCP address of resource `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        match self.listeners.iter().find(|(n, _)| n == name) {
            Some((_, BoundAddr::Tcp(addr))) => *addr,
            other => panic!("no TCP listener for {name}: {other:?}"),
        }
    }

    /// Waits until resource `name` has recorded an error.
    pub async fn error(&self, name: &str) -> ConnError {
        let res = self.state.resource(name).unwrap().clone();
        tokio::time::timeout(DEADLINE, async {
            loop {
                if let Some(last) = res.last_error() {
                    return last.error;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("no error recorded within the deadline")
    }

    /// Signals shutdown and returns how it ended.
    pub async fn stop(mut self) -> Outcome {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(60), self.task.take().unwrap())
            .await
            .unwrap()
            .unwrap()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A config with one tcp resource on 127.0.0.1:0; `tls` is the indented tls block (or "").
pub fn tcp_config(name: &str, upstream: &str, tls: &str) -> String {
    format!("admin: null\nshutdown_grace: 5s\nresources:\n  - name: {name}\n    protocol: tcp\n    listen: 127.0.0.1:0\n    upstream: {upstream}\n    handshake_timeout: 5s\n{tls}")
}

/// Writes `data`, half-closes, reads to EOF. An upstream failure shows as an empty answer.
pub async fn roundtrip(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    try_roundtrip(addr, data)
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"))
}

/// [`roundtrip`] for load loops: a failed connect is returned, not a panic, so the loop can
/// count it (and tell the client's own ephemeral-port exhaustion from keyward refusing).
pub async fn try_roundtrip(addr: SocketAddr, data: &[u8]) -> std::io::Result<Vec<u8>> {
    tokio::time::timeout(DEADLINE, async {
        let mut conn = TcpStream::connect(addr).await?;
        let _ = conn.write_all(data).await;
        let _ = conn.shutdown().await;
        let mut got = Vec::new();
        let _ = conn.read_to_end(&mut got).await;
        Ok(got)
    })
    .await
    .expect("roundtrip deadline")
}

/// Whether the end-to-end tier must run (CI) rather than skip.
pub fn e2e_required() -> bool {
    std::env::var("KEYWARD_E2E").is_ok_and(|v| v == "require")
}

/// Skips (returns false, printing why) or, when required, fails.
pub fn require(what: &str, available: bool) -> bool {
    if available {
        return true;
    }
    if e2e_required() {
        panic!("{what} is missing and KEYWARD_E2E=require");
    }
    eprintln!("SKIPPED: {what} is not available (set KEYWARD_E2E=require to fail instead)");
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    let mut skipped = SKIPPED.lock().unwrap_or_else(|e| e.into_inner());
    if skipped.is_empty() {
        // libtest shows a test's output only when it fails: the list is printed once the
        // whole run has ended, so that an `ok` that ran nothing does not go unnoticed.
        shutdown_hooks::add_shutdown_hook(print_skipped);
    }
    skipped.push(format!("{test}: {what}"));
    false
}

/// What `require` skipped in this run.
static SKIPPED: Mutex<Vec<String>> = Mutex::new(Vec::new());

extern "C" fn print_skipped() {
    let skipped = SKIPPED.lock().unwrap_or_else(|e| e.into_inner());
    eprintln!(
        "\n{} end-to-end check(s) SKIPPED their work (they say `ok` above); install what they need (.ci/run does) or set KEYWARD_E2E=require to make them fail:",
        skipped.len()
    );
    for s in skipped.iter() {
        eprintln!("  - {s}");
    }
}

/// A MySQL HandshakeResponse41 body as a plaintext client sends it: `user`, an empty
/// `mysql_native_password` answer, and the capability flags CLIENT_PROTOCOL_41,
/// CLIENT_SECURE_CONNECTION and CLIENT_PLUGIN_AUTH plus `extra`.
pub fn mysql_handshake_response(user: &str, extra: u32) -> Vec<u8> {
    let caps: u32 = 0x0000_0200 | 0x0000_8000 | 0x0008_0000 | extra;
    let mut body = caps.to_le_bytes().to_vec();
    body.extend_from_slice(&(16u32 << 20).to_le_bytes());
    body.push(45);
    body.extend_from_slice(&[0u8; 23]);
    body.extend_from_slice(user.as_bytes());
    body.push(0);
    body.push(0);
    body.extend_from_slice(b"mysql_native_password\0");
    body
}
