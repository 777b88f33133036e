//! `listen_tls`: keyward terminating TLS from the app (its own certificate, optional client
//! certificates and an allow-list), in front of PostgreSQL, MariaDB and HTTP, and scanned
//! with testssl.sh.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::pg::{self, psql};
use crate::support::procs::{have, Keyward, Nginx};
use crate::support::{maria, require, Pki};

/// keyward's own listener certificate (for localhost), from a CA of its own.
struct Listener {
    pki: Pki,
    ca: PathBuf,
    block: String,
}

fn listener(client_ca: bool, allow_cn: &[&str]) -> Listener {
    let pki = Pki::new();
    let ca = pki.write_ca();
    let cert = pki.server(&["localhost", "127.0.0.1"]);
    let cert_path = pki.write("listen.pem", &cert.cert_pem);
    let key_path = pki.write("listen.key", &cert.key_pem);
    let mut block = format!(
        "    listen_tls:\n      cert: {}\n      key: {}\n",
        cert_path.display(),
        key_path.display()
    );
    if client_ca {
        block.push_str(&format!(
            "      client_ca: {}\n      require_client_cert: true\n",
            ca.display()
        ));
    }
    if !allow_cn.is_empty() {
        block.push_str(&format!(
            "      allow:\n        cn: [{}]\n",
            allow_cn.join(", ")
        ));
    }
    Listener { pki, ca, block }
}

/// A `postgres` resource "pgtls" behind listener `l`, logging in to the shared PostgreSQL.
fn pg_resource(l: &Listener, pg: &pg::Pg) -> String {
    format!(
        "  - name: pgtls\n    protocol: postgres\n    listen: 127.0.0.1:0\n{}    upstream: localhost:{}\n    tls:\n      ca: {}\n    auth:\n      type: password\n      username: scramuser\n      password: scrampw\n",
        l.block,
        pg.port,
        pg.ca_pem.display()
    )
}

#[test]
fn psql_verify_full_to_keyward_and_keyward_verify_full_to_postgresql() {
    if !require("PostgreSQL 15 server binaries", pg::available()) {
        return;
    }
    let pg = pg::shared();
    let l = listener(false, &[]);
    let kw = Keyward::with_resources(l.pki.dir.path(), &pg_resource(&l, pg));
    let port = kw.addr("pgtls").port();
    // An app that sends nothing at all (keyward is still waiting to see TLS or plaintext)
    // gets the startup-timeout ErrorResponse too; checked at the end.
    let silent = std::thread::spawn(move || {
        use std::io::Read;
        let mut raw = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        raw.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        let mut reply = Vec::new();
        let _ = raw.read_to_end(&mut reply);
        String::from_utf8_lossy(&reply).into_owned()
    });
    let conninfo = format!(
        "host=localhost port={port} dbname=app sslmode=verify-full sslrootcert={}",
        l.ca.display()
    );
    let out = psql(
        &conninfo,
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "t",
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        kw.log_text()
    );
    // The app really checked keyward's certificate: another root fails.
    let other_pki = Pki::new();
    let other = other_pki.write_ca();
    let out = psql(
        &format!(
            "host=localhost port={port} dbname=app sslmode=verify-full sslrootcert={}",
            other.display()
        ),
        "SELECT 1",
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // (Both test CAs share a subject, so OpenSSL may fail on the signature instead.)
    assert!(
        err.contains("certificate verify failed") || err.contains("SSL error"),
        "{err}"
    );
    // Plaintext apps still work on the same listener.
    let out = psql(
        &format!("host=127.0.0.1 port={port} dbname=app sslmode=disable"),
        "SELECT 1",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    // PostgreSQL 17's direct TLS (ALPN postgresql) to keyward.
    let psql17 = format!("{}/psql", pg::bin17());
    if have(&psql17) {
        let out = Command::new(&psql17)
            .arg(format!(
                "host=localhost port={port} dbname=app sslmode=verify-full sslnegotiation=direct sslrootcert={}",
                l.ca.display()
            ))
            .args(["-X", "-Atc", "SELECT 42"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "42",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        require("PostgreSQL 17 psql (direct TLS client)", false);
    }
    let reply = silent.join().unwrap();
    assert!(
        reply.starts_with('E') && reply.contains("within client_handshake_timeout (10s)"),
        "{reply:?}"
    );
}

#[test]
fn mariadb_ssl_verify_server_cert_to_keyward() {
    if !require("MariaDB server and client", maria::available()) {
        return;
    }
    let m = maria::shared();
    let l = listener(false, &[]);
    let yaml = format!(
        "  - name: mytls\n    protocol: mysql\n    listen: 127.0.0.1:0\n{}    upstream: localhost:{}\n    tls:\n      ca: {}\n    auth:\n      type: password\n      username: nativeu\n      password: nativepw\n",
        l.block,
        m.port,
        m.ca_pem.display()
    );
    let kw = Keyward::with_resources(l.pki.dir.path(), &yaml);
    let port = kw.addr("mytls").port();
    let run = |ca: &Path| {
        let out = Command::new("mariadb")
            .arg("--no-defaults")
            .args(["--protocol=TCP", "--host=localhost", "-N", "-B"])
            .arg(format!("--port={port}"))
            .arg("--ssl")
            .arg(format!("--ssl-ca={}", ca.display()))
            .arg("--ssl-verify-server-cert")
            .args(["-e", "SELECT CURRENT_USER()"])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    assert_eq!(run(&l.ca).trim(), "nativeu@127.0.0.1", "{}", kw.log_text());
    let other_pki = Pki::new();
    let other = other_pki.write_ca();
    let out = run(&other);
    assert!(out.contains("ERROR 2026"), "{out}");
}

#[test]
fn client_certificates_outside_the_allow_list_are_refused() {
    if !require(
        "nginx and curl",
        crate::support::procs::nginx_available() && have("curl"),
    ) {
        return;
    }
    let l = listener(true, &["allowed-app", "\"spiffe-*\""]);
    // An upstream: mTLS nginx trusting the same test CA.
    let server = l.pki.server(&["localhost"]);
    let scert = l.pki.write("up.pem", &server.cert_pem);
    let skey = l.pki.write("up.key", &server.key_pem);
    let nginx = Nginx::start(l.pki.dir.path(), &l.ca, &scert, &skey);
    let (kc, kk) = l.pki.write_client("keyward", "keyward");
    let yaml = format!(
        "  - name: api\n    protocol: http\n    listen: 127.0.0.1:0\n{}    upstream: https://localhost:{}\n    tls:\n      ca: {}\n      client_cert: {}\n      client_key: {}\n",
        l.block,
        nginx.port,
        l.ca.display(),
        kc.display(),
        kk.display()
    );
    let kw = Keyward::with_resources(l.pki.dir.path(), &yaml);
    let port = kw.addr("api").port();
    let curl = |cert: Option<(&Path, &Path)>| {
        let mut c = Command::new("curl");
        c.args(["-sS", "--max-time", "10", "--cacert"]).arg(&l.ca);
        if let Some((cert, key)) = cert {
            c.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        c.arg(format!("https://localhost:{port}/x"));
        let out = c.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ac, ak) = l.pki.write_client("allowed", "allowed-app");
    let (ok, body) = curl(Some((&ac, &ak)));
    assert!(
        ok && body.contains("client_dn=CN=keyward"),
        "{body}\n{}",
        kw.log_text()
    );
    let (sc, sk) = l.pki.write_client("spiffe", "spiffe-worker");
    assert!(curl(Some((&sc, &sk))).0, "glob pattern");
    let (oc, ok_) = l.pki.write_client("other", "other-app");
    let (ok, body) = curl(Some((&oc, &ok_)));
    assert!(!ok, "{body}");
    assert!(!curl(None).0, "no client certificate");
    kw.wait_log("the allow-list refusal", |v| {
        v["reason"] == "client_cert_rejected"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.contains("not in listen_tls.allow"))
    });
}

/// testssl.sh against an inbound TLS listener: no SSLv3/TLS 1.0/TLS 1.1, no weak ciphers, and
/// no HIGH/CRITICAL finding except those listed (with why) below.
#[test]
fn testssl_finds_nothing_serious_on_an_inbound_listener() {
    let testssl = ["testssl", "testssl.sh"].into_iter().find(|t| have(t));
    if !require("testssl.sh", testssl.is_some()) {
        return;
    }
    let l = listener(false, &[]);
    let yaml = format!(
        "  - name: tcptls\n    protocol: tcp\n    listen: 127.0.0.1:0\n{}    upstream: localhost:1\n    tls:\n      mode: disable\n",
        l.block
    );
    let kw = Keyward::with_resources(l.pki.dir.path(), &yaml);
    let port = kw.addr("tcptls").port();
    let json = l.pki.path("testssl.json");
    let out = Command::new(testssl.unwrap())
        .args([
            "--quiet",
            "--color",
            "0",
            "--warnings",
            "off",
            "--fast",
            "-p",
            "-s",
            "-f",
            "-U",
        ])
        .arg("--jsonfile")
        .arg(&json)
        .arg(format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    let findings: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&json).unwrap_or_default()).unwrap_or_else(|e| {
            panic!(
                "testssl JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
    let by_id = |id: &str| {
        findings
            .iter()
            .find(|f| f["id"] == id)
            .and_then(|f| f["finding"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    for old in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"] {
        assert!(by_id(old).contains("not offered"), "{old}: {}", by_id(old));
    }
    assert!(
        by_id("TLS1_2").starts_with("offered"),
        "{}",
        by_id("TLS1_2")
    );
    assert!(
        by_id("TLS1_3").starts_with("offered"),
        "{}",
        by_id("TLS1_3")
    );
    // Accepted findings, each with its reason:
    let accepted: &[(&str, &str)] = &[
        // The test CA is made by the test and trusted by nobody.
        ("cert_chain_of_trust", "self-made test CA"),
        (
            "cert_trust",
            "the certificate is for localhost/127.0.0.1, scanned by IP",
        ),
        // rcgen test leaves have no CRL/OCSP URIs.
        ("cert_revocation", "test leaf without CRL or OCSP"),
        ("cert_crlDistributionPoints", "test leaf without CRL"),
        ("cert_ocspURL", "test leaf without OCSP"),
        (
            "cert_validityPeriod",
            "test certificates are valid until 2099",
        ),
        (
            "cert_expirationStatus",
            "test certificates are valid until 2099",
        ),
    ];
    let serious: Vec<String> = findings
        .iter()
        .filter(|f| matches!(f["severity"].as_str(), Some("HIGH") | Some("CRITICAL")))
        .filter(|f| {
            !accepted
                .iter()
                .any(|(id, _)| f["id"].as_str().is_some_and(|i| i.starts_with(id)))
        })
        .map(|f| format!("{} {}: {}", f["severity"], f["id"], f["finding"]))
        .collect();
    assert!(serious.is_empty(), "testssl findings: {serious:#?}");
    // Weak cipher categories are all absent.
    for weak in [
        "cipherlist_NULL",
        "cipherlist_aNULL",
        "cipherlist_EXPORT",
        "cipherlist_LOW",
        "cipherlist_3DES_IDEA",
        "cipherlist_OBSOLETED",
    ] {
        let f = by_id(weak);
        assert!(f.is_empty() || f.contains("not offered"), "{weak}: {f}");
    }
}

/// listen_tls material hot-reloads: after the certificate and key files are replaced, new
/// connections get the new certificate while an open TLS session goes on.
#[test]
fn a_rotated_listener_certificate_is_served_to_new_connections() {
    if !require("openssl", have("openssl")) {
        return;
    }
    let l = listener(false, &[]);
    // An echo-less upstream is enough: the TLS handshake with keyward is what is checked.
    let yaml = format!(
        "  - name: rot\n    protocol: tcp\n    listen: 127.0.0.1:0\n{}    upstream: localhost:1\n    tls:\n      mode: disable\n",
        l.block
    );
    let kw = Keyward::with_resources(l.pki.dir.path(), &yaml);
    let port = kw.addr("rot").port();
    let subject = || {
        let out = Command::new("openssl")
            .args(["s_client", "-connect"])
            .arg(format!("127.0.0.1:{port}"))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find(|l| l.starts_with("subject="))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(subject().contains("upstream"), "{}", subject());
    let next = l
        .pki
        .ca
        .leaf(
            "rotated-listener",
            &["localhost"],
            keyward::pki::Usage::Server,
        )
        .unwrap();
    // Key first, then the certificate (each written whole by rename).
    for (name, text) in [
        ("listen.key", &next.key_pem),
        ("listen.pem", &next.cert_pem),
    ] {
        let tmp = l.pki.path(&format!("{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, l.pki.path(name)).unwrap();
    }
    crate::support::procs::wait_until("the rotated listener certificate", || {
        subject().contains("rotated-listener")
    });
}

/// A listener that requires client certificates: `psql sslmode=disable` and `mariadb
/// --skip-ssl` get the protocol's own error and never reach the server's login; the same
/// clients with a certificate from the listener's client CA get in.
#[test]
fn psql_and_mariadb_without_a_client_certificate_are_refused_before_any_login() {
    if !require("PostgreSQL 15 server binaries", pg::available())
        || !require("MariaDB server and client", maria::available())
    {
        return;
    }
    let (pg, m) = (pg::shared(), maria::shared());
    let l = listener(true, &[]);
    let yaml = format!(
        "  - name: pgreq\n    protocol: postgres\n    listen: 127.0.0.1:0\n{block}    upstream: localhost:{}\n    tls:\n      ca: {}\n    auth:\n      type: password\n      username: scramuser\n      password: scrampw\n  - name: myreq\n    protocol: mysql\n    listen: 127.0.0.1:0\n{block}    upstream: localhost:{}\n    tls:\n      ca: {}\n    auth:\n      type: password\n      username: nativeu\n      password: nativepw\n",
        pg.port,
        pg.ca_pem.display(),
        m.port,
        m.ca_pem.display(),
        block = l.block,
    );
    let kw = Keyward::with_resources(l.pki.dir.path(), &yaml);
    let (cert, key) = l.pki.write_client("app", "app");
    // libpq refuses a key file others can read.
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let pg_port = kw.addr("pgreq").port();
    let out = psql(
        &format!("host=127.0.0.1 port={pg_port} dbname=app sslmode=disable"),
        "SELECT 1",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("this listener requires TLS with a client certificate"),
        "{err}"
    );
    let out = psql(
        &format!(
            "host=localhost port={pg_port} dbname=app sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
            l.ca.display(),
            cert.display(),
            key.display()
        ),
        "SELECT 1",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let my_port = kw.addr("myreq").port();
    let mariadb = |tls: &[String]| {
        let out = Command::new("mariadb")
            .arg("--no-defaults")
            .args(["--protocol=TCP", "--host=localhost", "-N", "-B"])
            .arg(format!("--port={my_port}"))
            .args(tls)
            .args(["-e", "SELECT CURRENT_USER()"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let out = mariadb(&["--skip-ssl".to_owned()]);
    assert!(
        out.contains("this listener requires TLS with a client certificate"),
        "{out}"
    );
    let out = mariadb(&[
        "--ssl".to_owned(),
        format!("--ssl-ca={}", l.ca.display()),
        "--ssl-verify-server-cert".to_owned(),
        format!("--ssl-cert={}", cert.display()),
        format!("--ssl-key={}", key.display()),
    ]);
    assert_eq!(out.trim(), "nativeu@127.0.0.1", "{}", kw.log_text());
    // keyward recorded both refusals as such.
    let refusals = kw
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("\"reason\":\"client_cert_required\""))
        .count();
    assert_eq!(refusals, 2, "{}", kw.log_text());
}

/// Issue 19 item 4: libpq's cancel API (17+; psycopg's `cancel_safe()`) sends its
/// CancelRequest inside TLS to a `listen_tls` resource. keyward forwards it and must end that
/// TLS session with close_notify: psycopg with libpq 18 reported `SSL error: unexpected eof
/// while reading` although the query was canceled (libpq 17.11 let the bare EOF pass).
#[test]
fn an_encrypted_cancel_from_libpq_17_and_18_is_forwarded_and_closed_cleanly() {
    let libpq = format!("{}/../lib/libpq.so.5", pg::bin17());
    if !require(
        "PostgreSQL 17 libpq (set KEYWARD_PG17 or run .ci/run) and python3",
        have(&libpq) && have("python3"),
    ) {
        return;
    }
    if !require("PostgreSQL 15 server binaries", pg::available()) {
        return;
    }
    let pg = pg::shared();
    let l = listener(false, &[]);
    let kw = Keyward::with_resources(l.pki.dir.path(), &pg_resource(&l, pg));
    let conninfo = format!(
        "host=localhost port={} dbname=app sslmode=verify-full sslrootcert={}",
        kw.addr("pgtls").port(),
        l.ca.display()
    );
    let cancel = |client: &str| {
        let out = Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pg_cancel.py"))
            .args([client, &conninfo])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("cancel: ok"),
            "{client}: {text}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            kw.log_text()
        );
    };
    cancel(&libpq);
    let psycopg = Command::new("python3")
        .args(["-c", "import psycopg"])
        .status()
        .is_ok_and(|s| s.success());
    if require("psycopg 3 (pip install 'psycopg[binary]')", psycopg) {
        cancel("psycopg");
    }
    kw.wait_log("the forwarded cancel", |v| {
        v["message"] == "query cancel request forwarded"
    });
}
