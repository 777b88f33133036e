//! One private MariaDB 10.11 per test binary (docs/TESTING.md): TLS with the suite's CA,
//! `require_secure_transport=ON`, users with mysql_native_password, ed25519 and x509
//! (`REQUIRE SUBJECT`). Stopped by a shell when the test process exits (stdin pipe closes).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use keyward::pki::{Ca, Usage};

use super::procs::{free_port, guarded, have, is_root, start_retried, wait_while_running};

pub struct Maria {
    pub port: u16,
    pub dir: PathBuf,
    pub ca: Ca,
    pub ca_pem: PathBuf,
    _guard: Mutex<Child>,
    _tmp: tempfile::TempDir,
}

pub fn available() -> bool {
    have("/usr/sbin/mariadbd") && have("mariadb-install-db") && have("mariadb")
}

pub fn shared() -> &'static Maria {
    static M: OnceLock<Maria> = OnceLock::new();
    M.get_or_init(start)
}

fn start() -> Maria {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    };
    let tmp = tempfile::Builder::new()
        .prefix("kw-maria")
        .tempdir_in(base)
        .unwrap();
    let dir = tmp.path().to_path_buf();
    let ca = Ca::new("keyward maria test CA").unwrap();
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
    write("server.key", &server.key_pem);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let user: &[&str] = if is_root() {
        let ok = Command::new("chown")
            .args(["-R", "mysql:mysql"])
            .arg(&dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "chown mysql");
        &["--user=mysql"]
    } else {
        &[]
    };
    let data = dir.join("data");
    let out = Command::new("mariadb-install-db")
        .arg("--no-defaults")
        .args(user)
        .arg(format!("--datadir={}", data.display()))
        .args([
            "--auth-root-authentication-method=socket",
            "--skip-test-db",
            "--innodb-buffer-pool-size=16M",
            "--innodb-log-file-size=8M",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mariadb-install-db: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let d = dir.display();
    let sock = dir.join("mysqld.sock");
    // A server that exits while starting (its port taken meanwhile) is started again on
    // another one.
    let (port, guard) = start_retried("mariadb", || {
        let port = free_port();
        let script = format!(
            "/usr/sbin/mariadbd --no-defaults {user} --datadir={data} --socket={d}/mysqld.sock --pid-file={d}/mysqld.pid --log-error={d}/error.log --bind-address=127.0.0.1 --port={port} --skip-name-resolve --ssl-ca={d}/ca.pem --ssl-cert={d}/server.pem --ssl-key={d}/server.key --tls-version=TLSv1.2,TLSv1.3 --require-secure-transport=ON --plugin-load-add=auth_ed25519 --innodb-buffer-pool-size=16M --innodb-log-file-size=8M --innodb-flush-log-at-trx-commit=0 --skip-log-bin --max-connections=200 {guard}",
            user = user.join(" "),
            data = data.display(),
            guard = guarded("TERM"),
        );
        let mut guard = Command::new("/bin/sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let up = wait_while_running("mariadb", &mut guard, &dir.join("error.log"), || {
            Command::new("mariadb-admin")
                .arg("--no-defaults")
                .arg(format!("--socket={}", sock.display()))
                .args(["-uroot", "ping"])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        up.then_some((port, guard))
    });
    let m = Maria {
        port,
        dir,
        ca,
        ca_pem,
        _guard: Mutex::new(guard),
        _tmp: tmp,
    };
    m.admin(
        "CREATE USER 'nativeu'@'127.0.0.1' IDENTIFIED WITH mysql_native_password USING PASSWORD('nativepw');
         CREATE USER 'edu'@'127.0.0.1' IDENTIFIED WITH ed25519 USING PASSWORD('edpw');
         CREATE USER 'x509u'@'127.0.0.1' IDENTIFIED WITH mysql_native_password USING PASSWORD('x509pw') REQUIRE SUBJECT '/CN=proxy';
         CREATE USER 'slapu'@'127.0.0.1' IDENTIFIED BY 'slappw';
         CREATE DATABASE app;
         GRANT ALL ON app.* TO 'nativeu'@'127.0.0.1', 'edu'@'127.0.0.1', 'x509u'@'127.0.0.1';
         GRANT ALL ON *.* TO 'slapu'@'127.0.0.1';",
    );
    m
}

impl Maria {
    /// SQL as root over the Unix socket.
    pub fn admin(&self, sql: &str) -> String {
        let mut child = Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!(
                "--socket={}",
                self.dir.join("mysqld.sock").display()
            ))
            .args(["-uroot", "-N", "-B"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(sql.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "admin SQL failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A client certificate from the server's CA.
    pub fn client_cert(&self, into: &std::path::Path, cn: &str) -> (PathBuf, PathBuf) {
        let c = self.ca.leaf(cn, &[], Usage::Client).unwrap();
        let cert = into.join(format!("{cn}.pem"));
        let key = into.join(format!("{cn}.key"));
        std::fs::write(&cert, &c.cert_pem).unwrap();
        std::fs::write(&key, &c.key_pem).unwrap();
        (cert, key)
    }
}

/// The mariadb client against keyward (plain TCP, no password), running `sql`.
pub fn mariadb(port: u16, args: &[&str], sql: &str) -> std::process::Output {
    Command::new("mariadb")
        .arg("--no-defaults")
        .args(["--protocol=TCP", "--host=127.0.0.1", "--skip-ssl"])
        .arg(format!("--port={port}"))
        .args(["-N", "-B", "--connect-timeout=10"])
        .args(args)
        .args(["-e", sql])
        .output()
        .unwrap()
}
