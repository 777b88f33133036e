//! `protocol: mysql` end to end: a real MariaDB 10.11 (TLS, require_secure_transport, native,
//! ed25519 and x509 users), the keyward binary, and the mariadb client / mysqlslap with no
//! password pointed at keyward.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::maria::{self, mariadb, Maria};
use crate::support::procs::{have, Keyward};
use crate::support::{mysql_handshake_response, require, Pki};

fn maria() -> Option<&'static Maria> {
    require("MariaDB server and client", maria::available()).then(maria::shared)
}

fn resource(
    name: &str,
    m: &Maria,
    user: &str,
    password: Option<&str>,
    tls_extra: &str,
    extra: &str,
) -> String {
    let pw = password
        .map(|p| format!("      password: {p}\n"))
        .unwrap_or_default();
    format!(
        "  - name: {name}\n    protocol: mysql\n    listen: 127.0.0.1:0\n    upstream: localhost:{}\n    tls:\n      ca: {}\n{tls_extra}{extra}    auth:\n      type: password\n      username: {user}\n{pw}",
        m.port,
        m.ca_pem.display()
    )
}

fn start(dir: &Path, resources: &[String]) -> Keyward {
    Keyward::with_resources(dir, &resources.concat())
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .trim()
    .to_owned()
}

#[test]
fn mariadb_client_without_a_password_runs_as_each_configured_user_over_tls() {
    let Some(m) = maria() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = m.client_cert(dir.path(), "proxy");
    let mtls = format!(
        "      client_cert: {}\n      client_key: {}\n",
        cert.display(),
        key.display()
    );
    let kw = start(
        dir.path(),
        &[
            resource("native", m, "nativeu", Some("nativepw"), "", ""),
            resource("ed", m, "edu", Some("edpw"), "", ""),
            resource("x509", m, "x509u", Some("x509pw"), &mtls, ""),
        ],
    );
    for (res, user) in [("native", "nativeu"), ("ed", "edu"), ("x509", "x509u")] {
        let out = mariadb(
            kw.addr(res).port(),
            &["--user=whoever", "app"],
            "SELECT CURRENT_USER(), DATABASE(); SHOW SESSION STATUS LIKE 'Ssl_version'",
        );
        assert!(
            out.status.success(),
            "{res}: {}\n{}",
            text(&out),
            kw.log_text()
        );
        let t = text(&out);
        assert!(
            t.starts_with(&format!("{user}@127.0.0.1\tapp")),
            "{res}: {t}"
        );
        assert!(t.contains("Ssl_version\tTLSv1.3"), "{res}: {t}");
    }
    // The app's character set is kept.
    let out = mariadb(
        kw.addr("native").port(),
        &["--default-character-set=latin1"],
        "SELECT @@character_set_client",
    );
    assert_eq!(text(&out), "latin1");
}

#[test]
fn tls_and_login_failures_reach_the_mariadb_client_as_keyward_errors() {
    let Some(m) = maria() else { return };
    let dir = tempfile::tempdir().unwrap();
    let other = Pki::new();
    let other_ca = other.write_ca();
    let wrong_ca = resource("wrongca", m, "nativeu", Some("nativepw"), "", "").replace(
        &m.ca_pem.display().to_string(),
        &other_ca.display().to_string(),
    );
    let wrong_name = resource(
        "wrongname",
        m,
        "nativeu",
        Some("nativepw"),
        "      server_name: db.internal\n",
        "",
    );
    let verify_ca = resource(
        "verifyca",
        m,
        "nativeu",
        Some("nativepw"),
        "      server_name: db.internal\n      mode: verify-ca\n",
        "",
    );
    let kw = start(
        dir.path(),
        &[
            wrong_ca,
            wrong_name,
            verify_ca,
            resource("badpw", m, "nativeu", Some("not-the-password"), "", ""),
            resource(
                "guarded",
                m,
                "nativeu",
                Some("nativepw"),
                "",
                "    client_password: local-secret\n",
            ),
        ],
    );
    let run = |res: &str, args: &[&str]| text(&mariadb(kw.addr(res).port(), args, "SELECT 1"));
    let out = run("wrongca", &[]);
    assert!(
        out.contains("ERROR 1159 (08S01)")
            && out.contains("keyward: upstream \"wrongca\": unknown issuer"),
        "{out}"
    );
    let out = run("wrongname", &[]);
    assert!(
        out.contains(
            "keyward: upstream \"wrongname\": certificate not valid for name \"db.internal\""
        ),
        "{out}"
    );
    assert_eq!(run("verifyca", &[]), "1");
    let out = run("badpw", &[]);
    assert!(
        out.contains("ERROR 1045 (28000)")
            && out.contains("keyward: upstream \"badpw\": Access denied for user 'nativeu'"),
        "{out}"
    );
    assert_eq!(run("guarded", &["--password=local-secret"]), "1");
    let out = run("guarded", &["--password=wrong"]);
    assert!(
        out.contains("ERROR 1045 (28000)") && out.contains("keyward: resource \"guarded\""),
        "{out}"
    );
}

/// A hand-driven client: greeting, HandshakeResponse with no password, then COM_CHANGE_USER
/// (answered with keyward's ERR, not forwarded) and COM_PING (the session still works).
#[test]
fn change_user_is_refused_and_the_session_goes_on() {
    let Some(m) = maria() else { return };
    let dir = tempfile::tempdir().unwrap();
    let kw = start(
        dir.path(),
        &[resource("native", m, "nativeu", Some("nativepw"), "", "")],
    );
    let mut s = std::net::TcpStream::connect(kw.addr("native")).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let read_packet = |s: &mut std::net::TcpStream| {
        let mut h = [0u8; 4];
        s.read_exact(&mut h).unwrap();
        let len = u32::from_le_bytes([h[0], h[1], h[2], 0]) as usize;
        let mut p = vec![0; len];
        s.read_exact(&mut p).unwrap();
        (h[3], p)
    };
    let (_, greeting) = read_packet(&mut s);
    assert_eq!(greeting[0], 10, "HandshakeV10");
    let caps: u32 = 0x0000_0200 | 0x0000_8000 | 0x0008_0000; // PROTOCOL_41 | SECURE_CONNECTION | PLUGIN_AUTH
    let mut resp = caps.to_le_bytes().to_vec();
    resp.extend_from_slice(&(1u32 << 24).to_le_bytes());
    resp.push(33);
    resp.extend_from_slice(&[0; 23]);
    resp.extend_from_slice(b"app\0");
    resp.push(0);
    resp.extend_from_slice(b"mysql_native_password\0");
    let frame = |seq: u8, p: &[u8]| {
        let mut f = (p.len() as u32).to_le_bytes()[..3].to_vec();
        f.push(seq);
        f.extend_from_slice(p);
        f
    };
    s.write_all(&frame(1, &resp)).unwrap();
    let (seq, ok) = read_packet(&mut s);
    assert_eq!((seq, ok[0]), (2, 0x00), "{ok:?}");
    s.write_all(&frame(0, b"\x11root\0\0\0\x21\0mysql_native_password\0"))
        .unwrap();
    let (_, err) = read_packet(&mut s);
    assert_eq!(err[0], 0xff);
    assert!(
        String::from_utf8_lossy(&err).contains("keyward: change user is not supported"),
        "{}",
        String::from_utf8_lossy(&err)
    );
    s.write_all(&frame(0, b"\x0e")).unwrap();
    let (_, pong) = read_packet(&mut s);
    assert_eq!(pong[0], 0x00, "COM_PING answered by the server");
}

#[test]
fn mysqlslap_through_keyward_runs_clean() {
    if !require("mysqlslap (mariadb-client)", have("mysqlslap")) {
        return;
    }
    let Some(m) = maria() else { return };
    let dir = tempfile::tempdir().unwrap();
    let kw = start(
        dir.path(),
        &[resource("slap", m, "slapu", Some("slappw"), "", "")],
    );
    let out = Command::new("mysqlslap")
        .arg("--no-defaults")
        .args(["--protocol=TCP", "--host=127.0.0.1", "--skip-ssl"])
        .arg(format!("--port={}", kw.addr("slap").port()))
        .args([
            "--user=app",
            "--concurrency=4",
            "--iterations=2",
            "--number-of-queries=200",
            "--auto-generate-sql",
        ])
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}\n{}", kw.log_text());
    assert!(
        t.contains("Average number of seconds to run all queries"),
        "{t}"
    );
}

/// caching_sha2_password (MySQL 8's default): keyward's client side against the in-process
/// server written from the MySQL documentation, which is first proven faithful with the real
/// `mariadb-admin` (libmariadb's caching_sha2_password plugin): full path over TLS, then the
/// fast path from the cache, the RSA path without TLS, and a wrong password denied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caching_sha2_password_fast_full_and_rsa_paths() {
    use crate::support::mysql8::{Mysql8, Path as P};
    if !require("mariadb-admin (mariadb-client)", have("mariadb-admin")) {
        return;
    }
    let pki = Pki::new();
    let ca = pki.write_ca();
    let cert = pki.server(&["localhost", "127.0.0.1"]);
    let tls_cfg = crate::support::server_config(&cert, None, &[&rustls::version::TLS13]);
    let admin = |port: u16, args: Vec<String>, password: &str| {
        let password = password.to_owned();
        async move {
            tokio::task::spawn_blocking(move || {
                let out = Command::new("mariadb-admin")
                    .arg("--no-defaults")
                    .args(["--protocol=TCP", "--host=127.0.0.1", "--connect-timeout=10"])
                    .arg(format!("--port={port}"))
                    .arg("--user=app8")
                    .arg(format!("--password={password}"))
                    .args(&args)
                    .arg("ping")
                    .output()
                    .unwrap();
                text(&out)
            })
            .await
            .unwrap()
        }
    };
    let tls_args = vec![
        "--ssl".to_owned(),
        format!("--ssl-ca={}", ca.display()),
        "--ssl-verify-server-cert".to_owned(),
    ];
    let plain_args = vec!["--skip-ssl".to_owned()];

    // The test server against the real client.
    let real = Mysql8::start("app8", "pw8-secret", Some(tls_cfg.clone())).await;
    assert_eq!(
        admin(real.port, tls_args.clone(), "pw8-secret").await,
        "mysqld is alive"
    );
    assert_eq!(
        admin(real.port, tls_args.clone(), "pw8-secret").await,
        "mysqld is alive"
    );
    let wrong = admin(real.port, tls_args.clone(), "wrong").await;
    assert!(wrong.contains("Access denied"), "{wrong}");
    let rsa_real = Mysql8::start("app8", "pw8-secret", None).await;
    assert_eq!(
        admin(rsa_real.port, plain_args.clone(), "pw8-secret").await,
        "mysqld is alive"
    );
    assert_eq!(
        *real.logins.lock().unwrap(),
        [P::FullTls, P::Fast, P::Denied]
    );
    assert_eq!(*rsa_real.logins.lock().unwrap(), [P::FullRsa]);

    // keyward's client side against fresh servers.
    let over_tls = Mysql8::start("app8", "pw8-secret", Some(tls_cfg)).await;
    let rsa = Mysql8::start("app8", "pw8-secret", None).await;
    // A server whose cache is empty: the full path is needed, and keyward refuses RSA there.
    let uncached = Mysql8::start("app8", "pw8-secret", None).await;
    let dir = tempfile::tempdir().unwrap();
    let res = |name: &str, port: u16, tls: &str, extra: &str| {
        format!("  - name: {name}\n    protocol: mysql\n    listen: 127.0.0.1:0\n    upstream: localhost:{port}\n    tls:\n{tls}    auth:\n      type: password\n      username: app8\n      password: pw8-secret\n{extra}")
    };
    let ca_line = format!("      ca: {}\n", ca.display());
    let kw = start(
        dir.path(),
        &[
            res("tls8", over_tls.port, &ca_line, ""),
            res(
                "rsa8",
                rsa.port,
                "      mode: disable\n",
                "      allow_rsa_key_exchange: true\n",
            ),
            res("norsa8", uncached.port, "      mode: disable\n", ""),
        ],
    );
    let port = |name: &str| kw.addr(name).port();
    let (tls8, rsa8, norsa8) = (port("tls8"), port("rsa8"), port("norsa8"));
    let through = |p: u16| admin(p, plain_args.clone(), "");
    assert_eq!(through(tls8).await, "mysqld is alive", "{}", kw.log_text());
    assert_eq!(through(tls8).await, "mysqld is alive");
    assert_eq!(*over_tls.logins.lock().unwrap(), [P::FullTls, P::Fast]);
    assert_eq!(through(rsa8).await, "mysqld is alive", "{}", kw.log_text());
    assert_eq!(*rsa.logins.lock().unwrap(), [P::FullRsa]);
    let refused = through(norsa8).await;
    assert!(
        refused.contains(
            "keyward: upstream \"norsa8\": caching_sha2_password full authentication without TLS"
        ),
        "{refused}"
    );
}

#[test]
fn probe_logs_in_to_mariadb() {
    let Some(m) = maria() else { return };
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("keyward.yaml");
    std::fs::write(
        &conf,
        format!(
            "admin: null\nresources:\n{}{}",
            resource("ed", m, "edu", Some("edpw"), "", ""),
            resource("badpw", m, "nativeu", Some("not-the-password"), "", "")
        ),
    )
    .unwrap();
    let probe = |res: &str| crate::support::procs::probe(&conf, res);
    let (code, t) = probe("ed");
    assert_eq!(code, Some(0), "{t}");
    assert!(
        t.contains("auth: ok, user \"edu\" logged in to MariaDB"),
        "{t}"
    );
    let (code, t) = probe("badpw");
    assert_eq!(code, Some(1), "{t}");
    assert!(t.contains("auth: FAILED: Access denied"), "{t}");
}

/// One MySQL packet's payload.
fn read_packet(conn: &mut impl Read) -> Result<Vec<u8>, String> {
    let mut head = [0u8; 4];
    conn.read_exact(&mut head).map_err(|e| e.to_string())?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], 0]) as usize;
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).map_err(|e| e.to_string())?;
    Ok(body)
}

/// A MySQL packet with sequence id `seq`.
fn frame(seq: u8, payload: &[u8]) -> Vec<u8> {
    let mut m = (payload.len() as u32).to_le_bytes()[..3].to_vec();
    m.push(seq);
    m.extend_from_slice(payload);
    m
}

/// The login's answer, then COM_QUIT: `Ok` on OK, the ERR text otherwise.
fn finish_login(conn: &mut impl Write, reply: &[u8]) -> Result<(), String> {
    let _ = conn.write_all(&frame(0, &[1]));
    match reply.first() {
        Some(0x00) => Ok(()),
        _ => Err(String::from_utf8_lossy(reply).into_owned()),
    }
}

/// An app's whole login through keyward, as a minimal plaintext client with no password:
/// greeting, HandshakeResponse41, keyward's answer, COM_QUIT.
fn app_login(addr: std::net::SocketAddr) -> Result<(), String> {
    app_login_with(addr, 0)
}

/// [`app_login`] asking for `extra` capabilities too.
fn app_login_with(addr: std::net::SocketAddr, extra: u32) -> Result<(), String> {
    let mut conn = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.set_nodelay(true).unwrap();
    read_packet(&mut conn)?;
    let body = mysql_handshake_response("app", extra);
    conn.write_all(&frame(1, &body))
        .map_err(|e| e.to_string())?;
    let reply = read_packet(&mut conn)?;
    finish_login(&mut conn, &reply)
}

/// MariaDB's ed25519 nonce is 32 raw bytes; one that ends in 0x00 (1 in 256) used to lose its
/// last byte in keyward's AuthSwitchRequest handling (3 failures in 1,024 logins). 2,000 logins
/// through keyward, none may fail.
#[test]
fn two_thousand_ed25519_logins_through_keyward_all_succeed() {
    let Some(m) = maria() else { return };
    let dir = tempfile::tempdir().unwrap();
    let kw = start(
        dir.path(),
        &[resource("ed", m, "edu", Some("edpw"), "", "")],
    );
    let addr = kw.addr("ed");
    let failures: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(move || {
                    (0..500)
                        .filter_map(|_| app_login(addr).err())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} of 2000 ed25519 logins failed, e.g. {:?}",
        failures.len(),
        failures.first()
    );
}

/// A direct login over verified TLS, as a client does it: greeting, SSLRequest, TLS,
/// HandshakeResponse with the mysql_native_password scramble, OK, COM_QUIT.
fn direct_tls_login(m: &Maria, user: &str, password: &str) -> Result<(), String> {
    direct_tls_login_at(m.port, &m.ca.cert.cert_der, user, password, false)
}

/// [`direct_tls_login`] to any server on `port` whose certificate `ca` issued; with `sha2`,
/// caching_sha2_password (the fast path: AuthMoreData 0x03, then OK; the full path on a first
/// login).
fn direct_tls_login_at(
    port: u16,
    ca: &rustls::pki_types::CertificateDer<'static>,
    user: &str,
    password: &str,
    sha2: bool,
) -> Result<(), String> {
    use mysql_common::auth::plugins::caching_sha2_password::scramble_sha256;
    use mysql_common::auth::plugins::mysql_native_password::scramble_native;
    use mysql_common::constants::CapabilityFlags as C;
    use mysql_common::io::ParseBuf;
    use mysql_common::packets::{AuthPlugin, HandshakePacket, HandshakeResponse, SslRequest};
    use mysql_common::proto::{MyDeserialize, MySerialize};
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let greeting = read_packet(&mut tcp)?;
    let hello =
        HandshakePacket::deserialize((), &mut ParseBuf(&greeting)).map_err(|e| e.to_string())?;
    let caps =
        C::CLIENT_PROTOCOL_41 | C::CLIENT_SECURE_CONNECTION | C::CLIENT_PLUGIN_AUTH | C::CLIENT_SSL;
    let mut payload = Vec::new();
    SslRequest::new(caps, 16 << 20, 45).serialize(&mut payload);
    tcp.write_all(&frame(1, &payload))
        .map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let nonce = hello.nonce();
    let (scramble, plugin) = if sha2 {
        let nonce: &[u8; 20] = nonce[..20].try_into().map_err(|_| "short nonce")?;
        let s = scramble_sha256(nonce, password.as_bytes()).ok_or("no scramble")?;
        (s.to_vec(), AuthPlugin::CachingSha2Password)
    } else {
        let s = scramble_native(&nonce, password.as_bytes()).ok_or("no scramble")?;
        (s.to_vec(), AuthPlugin::MysqlNativePassword)
    };
    let response = HandshakeResponse::new(
        Some(std::borrow::Cow::Owned(scramble)),
        (10, 11, 0),
        Some(std::borrow::Cow::Owned(user.as_bytes().to_vec())),
        None::<std::borrow::Cow<'_, [u8]>>,
        Some(plugin),
        caps,
        None,
        16 << 20,
    );
    let mut payload = Vec::new();
    response.serialize(&mut payload);
    tls.write_all(&frame(2, &payload))
        .map_err(|e| e.to_string())?;
    let mut reply = read_packet(&mut tls)?;
    if sha2 && reply.as_slice() == [0x01, 0x03] {
        reply = read_packet(&mut tls)?;
    } else if sha2 && reply.as_slice() == [0x01, 0x04] {
        // The full path (not cached yet): the password, over TLS.
        tls.write_all(&frame(4, &[password.as_bytes(), &[0]].concat()))
            .map_err(|e| e.to_string())?;
        reply = read_packet(&mut tls)?;
    }
    finish_login(&mut tls, &reply)
}

/// The median of 20 interleaved timings of each.
fn median_logins(
    mut direct: impl FnMut() -> Result<(), String>,
    mut through: impl FnMut() -> Result<(), String>,
) -> (Duration, Duration) {
    direct().unwrap();
    through().unwrap();
    let (mut d, mut k) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let t = std::time::Instant::now();
        direct().unwrap();
        d.push(t.elapsed());
        let t = std::time::Instant::now();
        through().unwrap();
        k.push(t.elapsed());
    }
    d.sort();
    k.sort();
    (d[10], k[10])
}

/// A new connection through keyward must not cost many times a direct TLS login (apps that
/// connect per request pay it every time). 20 logins each way, interleaved in one run; the
/// bound is generous (3x the median) so it does not flake on a loaded machine.
#[test]
fn a_login_through_keyward_costs_at_most_three_direct_tls_logins() {
    let Some(m) = maria() else { return };
    let dir = tempfile::tempdir().unwrap();
    let kw = start(
        dir.path(),
        &[resource("fast", m, "nativeu", Some("nativepw"), "", "")],
    );
    let addr = kw.addr("fast");
    let (d, k) = median_logins(
        || direct_tls_login(m, "nativeu", "nativepw"),
        || app_login(addr),
    );
    eprintln!("login median: direct TLS {d:?}, through keyward {k:?}");
    assert!(
        k <= d * 3,
        "a login through keyward takes {k:?}, a direct TLS login {d:?}"
    );
}

/// The same bound for caching_sha2_password's fast path (MySQL 8's default), against the
/// in-process server (no MySQL 8 server can be installed here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caching_sha2_login_through_keyward_costs_at_most_three_direct_tls_logins() {
    use crate::support::mysql8::{Mysql8, Path as P};
    let pki = Pki::new();
    let ca = pki.write_ca();
    let cert = pki.server(&["localhost", "127.0.0.1"]);
    let tls_cfg = crate::support::server_config(&cert, None, &[&rustls::version::TLS13]);
    let server = Mysql8::start("app8", "pw8-secret", Some(tls_cfg)).await;
    let dir = tempfile::tempdir().unwrap();
    let kw = start(
        dir.path(),
        &[format!("  - name: sha2\n    protocol: mysql\n    listen: 127.0.0.1:0\n    upstream: localhost:{}\n    tls:\n      ca: {}\n    auth:\n      type: password\n      username: app8\n      password: pw8-secret\n", server.port, ca.display())],
    );
    let addr = kw.addr("sha2");
    let port = server.port;
    let ca_der = pki.ca.cert.cert_der.clone();
    let (d, k) = tokio::task::spawn_blocking(move || {
        median_logins(
            || direct_tls_login_at(port, &ca_der, "app8", "pw8-secret", true),
            || app_login(addr),
        )
    })
    .await
    .unwrap();
    eprintln!("caching_sha2 login median: direct TLS {d:?}, through keyward {k:?}");
    let logins = server.logins.lock().unwrap().clone();
    assert_eq!(logins.len(), 42);
    assert!(
        logins.iter().filter(|p| **p == P::Fast).count() >= 40,
        "{logins:?}"
    );
    assert!(
        k <= d * 3,
        "a caching_sha2 login through keyward takes {k:?}, a direct TLS login {d:?}"
    );
}

/// A client that turns on compression keyward never offered (mysql-connector-python with
/// `compress=True`) gets an ERR naming it instead of a session where both sides wait forever.
#[test]
fn a_client_asking_for_compression_gets_an_error_naming_it() {
    let Some(m) = maria() else { return };
    let dir = tempfile::tempdir().unwrap();
    let kw = start(
        dir.path(),
        &[resource("nocomp", m, "nativeu", Some("nativepw"), "", "")],
    );
    const CLIENT_COMPRESS: u32 = 0x20;
    let err = app_login_with(kw.addr("nocomp"), CLIENT_COMPRESS).unwrap_err();
    assert!(
        err.contains("CLIENT_COMPRESS") && err.contains("did not offer"),
        "{err}"
    );
    app_login(kw.addr("nocomp")).unwrap();
}

/// Issue 19 item 8: mariadb client sessions (a query, COM_QUIT, close) end clean, not as
/// `reason="reset"` errors.
#[test]
fn mariadb_sessions_end_clean() {
    let Some(m) = maria() else { return };
    let dir = tempfile::tempdir().unwrap();
    let kw = start(
        dir.path(),
        &[resource("native", m, "nativeu", Some("nativepw"), "", "")],
    );
    for _ in 0..3 {
        let out = mariadb(kw.addr("native").port(), &[], "SELECT 1");
        assert!(text(&out).contains('1'), "{}", text(&out));
    }
    kw.assert_clean_ends(3);
}

/// Issue 19 item 5: LOAD DATA LOCAL INFILE with the mariadb client. The file (3 MB of lines
/// of 0x11 bytes) goes up in hundreds of packets, so the sequence id wraps past 255 to 0 on
/// data packets that start with 0x11 (COM_CHANGE_USER's code): they used to be taken for
/// commands, dropped and answered with an ERR, which broke the upload. Then a 20 MB query,
/// two physical packets, whose second starts with 0x11 too. Both arrive whole.
#[test]
fn large_uploads_and_multi_packet_queries_pass_whole() {
    let Some(m) = maria() else { return };
    let dir = tempfile::tempdir().unwrap();
    m.admin(
        "CREATE TABLE app.upload (b LONGBLOB);
         SET GLOBAL max_allowed_packet = 64 * 1024 * 1024;",
    );
    let kw = start(
        dir.path(),
        &[resource("native", m, "nativeu", Some("nativepw"), "", "")],
    );
    let port = kw.addr("native").port();
    let lines = 3000;
    let line = [vec![0x11u8; 1000], vec![b'\n']].concat();
    let file = dir.path().join("upload.dat");
    std::fs::write(&file, line.repeat(lines)).unwrap();
    let out = mariadb(
        port,
        &["--local-infile=1"],
        &format!(
            "LOAD DATA LOCAL INFILE '{}' INTO TABLE app.upload; SELECT COUNT(*), SUM(LENGTH(b)) FROM app.upload",
            file.display()
        ),
    );
    assert_eq!(
        text(&out),
        format!("{lines}\t{}", lines * 1000),
        "{}",
        kw.log_text()
    );
    // A query longer than one physical packet (16 MiB - 1): the second packet's first byte,
    // at sequence id 1, is 0x11 (the literal is all 0x11 bytes).
    let literal = vec![0x11u8; 20 << 20];
    let mut sql = b"INSERT INTO app.upload VALUES ('".to_vec();
    sql.extend_from_slice(&literal);
    sql.extend_from_slice(b"'); SELECT COUNT(*), MAX(LENGTH(b)) FROM app.upload;");
    let mut child = Command::new("mariadb")
        .arg("--no-defaults")
        .args(["--protocol=TCP", "--host=127.0.0.1", "--skip-ssl"])
        .arg(format!("--port={port}"))
        .args([
            "-N",
            "-B",
            "--connect-timeout=10",
            "--max-allowed-packet=64M",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&sql));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert_eq!(
        text(&out),
        format!("{}\t{}", lines + 1, 20 << 20),
        "{}",
        kw.log_text()
    );
    m.admin("DROP TABLE app.upload;");
}

/// Issue 13 item 15: no copy of keyward's password outlives its use (the scramble input is
/// wiped). A user logs in 20 times through keyward (mysql_native_password) with its password
/// in a file; then the password is rotated (server and file) and one more login uses the new
/// one: keyward's whole memory holds no copy of the first password.
#[test]
fn no_copy_of_a_rotated_mysql_password_is_left_in_keyward_memory() {
    let Some(m) = maria() else { return };
    if !crate::support::procs::can_read_memory() {
        return;
    }
    m.admin(
        "CREATE USER 'memu'@'127.0.0.1' IDENTIFIED WITH mysql_native_password USING PASSWORD('maria-mem-one');",
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "maria-mem-one\n").unwrap();
    let source = format!("${{file:{}}}", file.display());
    let kw = start(
        dir.path(),
        &[resource("mem", m, "memu", Some(&source), "", "")],
    );
    let port = kw.addr("mem").port();
    let whoami = || {
        let out = mariadb(port, &["--user=whoever"], "SELECT CURRENT_USER()");
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(text(&out), "memu@127.0.0.1");
    };
    for _ in 0..20 {
        whoami();
    }
    m.admin("ALTER USER 'memu'@'127.0.0.1' IDENTIFIED WITH mysql_native_password USING PASSWORD('maria-mem-two');");
    std::fs::write(&file, "maria-mem-two\n").unwrap();
    // The rotation reloads the resource (its snapshot then holds the new secret): scanned
    // before that, the current secret may be nowhere but the file.
    kw.wait_log("the reload of the rotated password", |v| {
        v["resource"] == "mem"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("resource updated"))
    });
    whoami();
    kw.assert_clean_ends(21);
    crate::support::procs::assert_only_the_new_secret_in_memory(
        kw.pid(),
        b"maria-mem-one",
        b"maria-mem-two",
    );
}
