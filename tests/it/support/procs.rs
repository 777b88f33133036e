//! Real processes for the end-to-end tier: the built keyward binary, Redis and nginx, each a
//! direct child on a free loopback port, stopped in `Drop`.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const DEADLINE: Duration = Duration::from_secs(15);

/// A free loopback port (bind 0, read, close), never one handed out before in this process:
/// the port is not reserved until a server binds it (`Redis::start_with` starts a Redis that
/// exits while starting again on new ports).
pub fn free_port() -> u16 {
    // Tests run in parallel: a port handed out and released may come back from the kernel to
    // a second caller before the first one's server has bound it. Never the same one twice.
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Whether `program` is on PATH (or an absolute path that exists).
pub fn have(program: &str) -> bool {
    if program.starts_with('/') {
        return Path::new(program).exists();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// Whether the suite runs as root (servers then drop to their own users).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `keyward probe -c CONFIG RESOURCE`: its exit code and everything it printed.
pub fn probe(config: &Path, resource: &str) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["probe", "-c"])
        .arg(config)
        .arg(resource)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// How polling for a server ended.
enum Waited {
    Ready,
    Exited(std::process::ExitStatus),
    TimedOut,
}

/// Polls `ready` until it is true, `exited` reports the server gone, or the deadline passes.
fn poll(
    mut ready: impl FnMut() -> bool,
    mut exited: impl FnMut() -> Option<std::process::ExitStatus>,
) -> Waited {
    let start = Instant::now();
    while start.elapsed() < DEADLINE {
        if ready() {
            return Waited::Ready;
        }
        if let Some(status) = exited() {
            return Waited::Exited(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Waited::TimedOut
}

/// A server's log file, for a failure message.
fn show_log(log: &Path) -> String {
    format!(
        "its log ({}):\n{}",
        log.display(),
        std::fs::read_to_string(log).unwrap_or_default()
    )
}

/// Polls `ready` until it is true or the deadline passes.
pub fn wait_until(what: &str, ready: impl FnMut() -> bool) {
    if !matches!(poll(ready, || None), Waited::Ready) {
        panic!("{what} not ready within {DEADLINE:?}");
    }
}

/// How many times a server that exits while starting (its port taken meanwhile) is started
/// again on another port.
const ATTEMPTS: usize = 3;

/// Starts a server with `attempt` (on ports it chooses with [`free_port`], waiting with
/// [`wait_while_running`]: `None` when the server exited while starting) until one runs. A
/// port is free when chosen but not reserved: another test's server or an outgoing connection
/// may take it before the server binds it, and the server then exits.
pub fn start_retried<T>(what: &str, attempt: impl FnMut() -> Option<T>) -> T {
    std::iter::repeat_with(attempt)
        .take(ATTEMPTS)
        .find_map(|started| started)
        .unwrap_or_else(|| panic!("{what} exited while starting, {ATTEMPTS} times (logs above)"))
}

/// The end of a `sh -c` line that starts a server in the background (`server ... {guarded}`):
/// the shell exits when the server does (so a server that exits while starting is seen and
/// started again), and sends the server `signal` when this process's end of the shell's
/// stdin closes (the test process ended). The stdin is kept as fd 3 because a background
/// job's own stdin is /dev/null.
pub fn guarded(signal: &str) -> String {
    format!(
        "& pid=$!; exec 3<&0; (cat <&3 >/dev/null; kill -{signal} $pid 2>/dev/null) & wait $pid"
    )
}

/// Polls `ready` until it is true (`true`), `child` exits (`false`: the caller may start it
/// again) or the deadline passes (a panic showing `log`).
pub fn wait_while_running(
    what: &str,
    child: &mut Child,
    log: &Path,
    ready: impl FnMut() -> bool,
) -> bool {
    match poll(ready, || child.try_wait().ok().flatten()) {
        Waited::Ready => true,
        Waited::Exited(status) => {
            eprintln!("{what} exited while starting ({status}); {}", show_log(log));
            false
        }
        Waited::TimedOut => panic!("{what} not ready within {DEADLINE:?}; {}", show_log(log)),
    }
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The built keyward binary running `run -c CONFIG` with JSON logs captured.
pub struct Keyward {
    pub proc: Proc,
    pub log: Arc<Mutex<Vec<String>>>,
    /// Standard output's lines (audit events with `sink: stdout`).
    pub stdout: Arc<Mutex<Vec<String>>>,
}

impl Keyward {
    pub fn start(config: &Path) -> Self {
        Self::start_with_args(&["run".as_ref(), "-c".as_ref(), config.as_os_str()])
    }

    /// The binary with JSON logs and these arguments (a command that serves: run, tunnel).
    pub fn start_with_args(args: &[&std::ffi::OsStr]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// [`Keyward::start_with_args`] with these environment variables too.
    pub fn start_with_env(args: &[&std::ffi::OsStr], env: &[(&str, &std::ffi::OsStr)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_keyward"))
            .args(["--log-format", "json"])
            .args(args)
            .envs(env.iter().copied())
            .env("KEYWARD_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let collect = |from: Box<dyn std::io::Read + Send>| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(from).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
            lines
        };
        let log = collect(Box::new(child.stderr.take().unwrap()));
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        Self {
            proc: Proc { child },
            log,
            stdout,
        }
    }

    /// The first log line (JSON) matching `pred`, waiting for it.
    pub fn wait_log(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let mut found = None;
        wait_until(what, || {
            found = self
                .log
                .lock()
                .unwrap()
                .iter()
                .filter_map(|l| serde_json::from_str(l).ok())
                .find(|v| pred(v));
            found.is_some()
        });
        found.unwrap()
    }

    /// The bound address of `resource`, from its "listening" log line.
    pub fn addr(&self, resource: &str) -> SocketAddr {
        let line = self.wait_log(&format!("keyward listening for {resource}"), |v| {
            v["message"] == "listening" && v["resource"] == resource
        });
        line["addr"].as_str().unwrap().parse().unwrap()
    }

    /// Where resource `name` listens now: its newest `listening` line other than at `not`
    /// (after a move), waiting for it.
    pub fn addr_other_than(&self, resource: &str, not: SocketAddr) -> SocketAddr {
        let line = self.wait_log(
            &format!("keyward listening for {resource} elsewhere"),
            |v| {
                v["message"] == "listening"
                    && v["resource"] == resource
                    && v["addr"].as_str() != Some(not.to_string().as_str())
            },
        );
        line["addr"].as_str().unwrap().parse().unwrap()
    }

    /// Where the admin endpoint listens (bound on port 0 by the config: no port race).
    pub fn admin_addr(&self) -> SocketAddr {
        let line = self.wait_log("the admin endpoint", |v| {
            v["message"] == "admin endpoint listening"
        });
        line["addr"].as_str().unwrap().parse().unwrap()
    }

    /// The audit events written to standard output so far (`sink: stdout`).
    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}")))
            .collect()
    }

    /// Waits until the audit events on standard output satisfy `pred`; returns them.
    pub fn wait_audit(
        &self,
        what: &str,
        pred: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let mut events = Vec::new();
        wait_until(what, || {
            events = self.audit_events();
            pred(&events)
        });
        events
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits until `n` connections have ended and asserts every end was clean: "closed", no
    /// "relay ended: ..." (an end counted in `keyward_connection_errors_total`).
    pub fn assert_clean_ends(&self, n: usize) {
        let ends = || -> Vec<serde_json::Value> {
            self.log
                .lock()
                .unwrap()
                .iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| {
                    v["message"] == "closed"
                        || v["message"]
                            .as_str()
                            .is_some_and(|m| m.starts_with("relay ended"))
                })
                .collect()
        };
        let start = Instant::now();
        while ends().len() < n {
            if start.elapsed() > DEADLINE {
                let tail = {
                    let log = self.log.lock().unwrap();
                    log[log.len().saturating_sub(20)..].join("\n")
                };
                panic!("{n} connection ends not logged within {DEADLINE:?}; the log ends:\n{tail}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let errors: Vec<_> = ends()
            .into_iter()
            .filter(|v| v["message"] != "closed")
            .collect();
        assert!(errors.is_empty(), "ends counted as errors: {errors:?}");
    }

    /// Writes `resources` (YAML list items) into DIR/keyward.yaml, without the admin
    /// listener, and starts keyward on it.
    pub fn with_resources(dir: &Path, resources: &str) -> Self {
        let path = dir.join("keyward.yaml");
        std::fs::write(&path, format!("admin: null\nresources:\n{resources}")).unwrap();
        Self::start(&path)
    }

    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }
}

/// Every secret value the suite gives to a keyward process. Each process's whole log (debug
/// level) is searched for all of them when it stops: none may appear.
pub const TEST_SECRETS: &[&str] = &[
    "kw-e2e-token",
    "k-live-123",
    "first-token",
    "second-token",
    "metrics-test-token",
    "metrics-client-secret",
    "PRIVATE KEY",
    "scrampw",
    "md5pw",
    "rot-one",
    "rot-two",
    "benchpw",
    "local-secret",
    "not-the-password",
    "proxypw",
    "adminpw",
    "benchpw2",
    "app-side-pw",
    "nativepw",
    "edpw",
    "x509pw",
    "slappw",
    "pw8-secret",
    "poolpw",
    "mem-pw-one",
    "mem-pw-two",
    "pg-mem-one",
    "pg-mem-two",
    "maria-mem-one",
    "maria-mem-two",
    "audit-redis-pw",
];

impl Drop for Keyward {
    fn drop(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        // Let the reader thread drain what was written before the kill.
        std::thread::sleep(Duration::from_millis(20));
        let log = self.log_text();
        let out = self.stdout.lock().unwrap().join("\n");
        if let Some(found) = TEST_SECRETS.iter().find(|s| log.contains(*s)) {
            if !std::thread::panicking() {
                panic!("a test secret ({found}) reached keyward's log:\n{log}");
            }
        }
        if let Some(found) = TEST_SECRETS.iter().find(|s| out.contains(*s)) {
            if !std::thread::panicking() {
                panic!("a test secret ({found}) reached keyward's standard output (audit events):\n{out}");
            }
        }
    }
}

/// A private Redis with a TLS-only port that requires a client certificate from `ca`.
pub struct Redis {
    pub port: u16,
    /// The plaintext port, where `extra` asked for one (`PLAIN_PORT`).
    pub plain: Option<u16>,
    _proc: Proc,
}

impl Redis {
    pub fn start(
        dir: &Path,
        ca: &Path,
        cert: &Path,
        key: &Path,
        client_cert: &Path,
        client_key: &Path,
    ) -> Self {
        Self::start_with(
            dir,
            ca,
            cert,
            key,
            client_cert,
            client_key,
            "tls-auth-clients yes\n",
            &[],
        )
    }

    /// A Redis with `extra` config lines; `auth` is what redis-cli needs to PING it. The word
    /// `PLAIN_PORT` in `extra` becomes a free port (e.g. `port PLAIN_PORT`: a plaintext port
    /// as well), chosen again with the TLS port when a start is retried.
    #[allow(clippy::too_many_arguments)]
    pub fn start_with(
        dir: &Path,
        ca: &Path,
        cert: &Path,
        key: &Path,
        client_cert: &Path,
        client_key: &Path,
        extra: &str,
        auth: &[&str],
    ) -> Self {
        // A Redis that exits while starting is started again on other ports; one that runs
        // but never answers fails in `wait_while_running`.
        start_retried("redis", || {
            let port = free_port();
            let plain = extra.contains("PLAIN_PORT").then(free_port);
            let extra = match plain {
                Some(p) => extra.replace("PLAIN_PORT", &p.to_string()),
                None => extra.to_owned(),
            };
            let conf = dir.join(format!("redis-{port}.conf"));
            let log = dir.join(format!("redis-{port}.log"));
            std::fs::write(
                &conf,
                format!(
                    "bind 127.0.0.1\nport 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\ntls-protocols \"TLSv1.2 TLSv1.3\"\ndir {}\nsave \"\"\nappendonly no\ndaemonize no\nlogfile {}\n{extra}",
                    cert.display(),
                    key.display(),
                    ca.display(),
                    dir.display(),
                    log.display()
                ),
            )
            .unwrap();
            let child = Command::new("redis-server")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut proc = Proc { child };
            let up = wait_while_running("redis", &mut proc.child, &log, || {
                Command::new("redis-cli")
                    .args(["--tls", "--cacert"])
                    .arg(ca)
                    .arg("--cert")
                    .arg(client_cert)
                    .arg("--key")
                    .arg(client_key)
                    .args([
                        "-h",
                        "127.0.0.1",
                        "-p",
                        &port.to_string(),
                        "--no-auth-warning",
                    ])
                    .args(auth)
                    .arg("PING")
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"))
            });
            up.then_some(Self {
                port,
                plain,
                _proc: proc,
            })
        })
    }
}

/// A private nginx: HTTPS requiring a client certificate from `ca`, echoing what it saw.
pub struct Nginx {
    pub port: u16,
    /// The same server with HTTP/2 (ALPN h2) on.
    pub h2_port: u16,
    _proc: Proc,
}

impl Nginx {
    pub fn start(dir: &Path, ca: &Path, cert: &Path, key: &Path) -> Self {
        let port = free_port();
        let h2_port = free_port();
        let root: PathBuf = dir.join("nginx");
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        let t = root.display();
        let conf = format!(
            r#"daemon off;
worker_processes 1;
pid {t}/nginx.pid;
error_log stderr notice;
events {{ worker_connections 64; }}
http {{
  access_log {t}/access.log;
  client_body_temp_path {t}/tmp/body; proxy_temp_path {t}/tmp/proxy; fastcgi_temp_path {t}/tmp/fastcgi;
  uwsgi_temp_path {t}/tmp/uwsgi; scgi_temp_path {t}/tmp/scgi;
  server {{
    listen 127.0.0.1:{port} ssl;
    listen 127.0.0.1:{h2_port} ssl http2;
    server_name localhost;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_client_certificate {ca};
    ssl_verify_client on;
    ssl_protocols TLSv1.2 TLSv1.3;
    default_type text/plain;
    location / {{
      return 200 "client_dn=$ssl_client_s_dn\nclient_verify=$ssl_client_verify\ntls=$ssl_protocol\nsni=$ssl_server_name\nuri=$request_uri\nauthorization=$http_authorization\nx-api-key=$http_x_api_key\nx-tenant=$http_x_tenant\nhost=$http_host\nprotocol=$server_protocol\n";
    }}
  }}
}}
"#,
            cert = cert.display(),
            key = key.display(),
            ca = ca.display()
        );
        let conf_path = root.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(nginx_bin())
            .args(["-e", "stderr", "-p"])
            .arg(&root)
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let proc = Proc { child };
        wait_until("nginx", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Self {
            port,
            h2_port,
            _proc: proc,
        }
    }
}

impl Drop for Nginx {
    /// SIGTERM, not SIGKILL: a killed master would leave its workers running.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self._proc.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self._proc.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// nginx lives in /usr/sbin, which may not be on a test's PATH.
pub fn nginx_bin() -> &'static str {
    if have("/usr/sbin/nginx") {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}

/// Whether nginx can be run.
pub fn nginx_available() -> bool {
    have(nginx_bin())
}

/// How many times `needle` occurs in the readable memory of process `pid` (its heap, stacks
/// and mappings, read through `/proc/PID/mem`: needs root for a process that is not
/// dumpable, as keyward is).
pub fn memory_count(pid: u32, needle: &[u8]) -> usize {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut count = 0;
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !perms.starts_with('r') || line.ends_with("[vvar]") || line.ends_with("[vsyscall]") {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        count += region_count(&mem, start, end, needle);
    }
    count
}

/// Occurrences of `needle` in `[start, end)` of a process's memory, read in chunks that
/// overlap by `needle.len() - 1` bytes (so a copy across a chunk boundary is still seen). A chunk
/// that cannot be read (a page unmapped or remapped by the allocator since `maps` was read) is
/// read again page by page, so one bad page never hides the rest of its region.
fn region_count(mem: &std::fs::File, start: u64, end: u64, needle: &[u8]) -> usize {
    use std::os::unix::fs::FileExt;
    const CHUNK: u64 = 1 << 20;
    const PAGE: u64 = 4096;
    let overlap = needle.len().saturating_sub(1) as u64;
    let mut buf = Vec::new();
    let mut count = 0;
    let mut at = start;
    while at < end {
        let len = CHUNK.min(end - at);
        let upto = (at + len + overlap).min(end);
        buf.resize((upto - at) as usize, 0);
        if mem.read_exact_at(&mut buf, at).is_err() {
            // Page by page: each page with the overlap into the next, where readable.
            buf.clear();
            let mut page = at;
            let mut piece = vec![0u8; PAGE as usize];
            while page < upto {
                let n = PAGE.min(upto - page) as usize;
                if mem.read_exact_at(&mut piece[..n], page).is_ok() {
                    buf.extend_from_slice(&piece[..n]);
                } else {
                    count += occurrences(&buf, needle);
                    buf.clear();
                }
                page += n as u64;
            }
        }
        count += occurrences(&buf, needle);
        at += len;
    }
    count
}

fn occurrences(haystack: &[u8], needle: &[u8]) -> usize {
    if needle.is_empty() {
        return 0;
    }
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

/// Whether this process may read keyward's memory (root: keyward is not dumpable); the reason
/// is printed (or, under `KEYWARD_E2E=require`, a failure raised) when it may not.
pub fn can_read_memory() -> bool {
    crate::support::require(
        "root (reading keyward's memory through /proc/PID/mem)",
        is_root(),
    )
}

/// After a rotation from `old` to `new`: keyward's memory holds the new secret (so the scan can
/// see a secret at all) and no copy of the old one.
pub fn assert_only_the_new_secret_in_memory(pid: u32, old: &[u8], new: &[u8]) {
    assert!(
        memory_count(pid, new) >= 1,
        "the scan finds the current secret"
    );
    assert_eq!(
        memory_count(pid, old),
        0,
        "copies of the rotated secret are left in keyward's memory"
    );
}
