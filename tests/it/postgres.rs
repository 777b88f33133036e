//! `protocol: postgres` end to end: a real PostgreSQL 15 with TLS (`hostnossl reject`), the
//! keyward binary, and psql/pgbench with no password pointed at keyward.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::pg::{self, psql, Pg};
use crate::support::procs::{wait_until, Keyward};
use crate::support::{require, Pki};

fn pg() -> Option<&'static Pg> {
    require("PostgreSQL 15 server binaries", pg::available()).then(pg::shared)
}

struct Res<'a> {
    name: &'a str,
    user: &'a str,
    password: Option<&'a str>,
    extra_tls: &'a str,
    extra: &'a str,
}

impl<'a> Res<'a> {
    fn new(name: &'a str, user: &'a str, password: Option<&'a str>) -> Self {
        Self {
            name,
            user,
            password,
            extra_tls: "",
            extra: "",
        }
    }
}

fn config(dir: &Path, pg: &Pg, resources: &[Res<'_>]) -> PathBuf {
    let mut yaml = String::from("admin: null\nresources:\n");
    for r in resources {
        let password = match r.password {
            Some(p) => format!("      password: {p}\n"),
            None => String::new(),
        };
        yaml.push_str(&format!(
            "  - name: {}\n    protocol: postgres\n    listen: 127.0.0.1:0\n    upstream: localhost:{}\n    tls:\n      ca: {}\n{}{}    auth:\n      type: password\n      username: {}\n{password}",
            r.name,
            pg.port,
            pg.ca_pem.display(),
            r.extra_tls,
            r.extra,
            r.user,
        ));
    }
    let path = dir.join("keyward.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn local(port: u16, db: &str) -> String {
    format!("host=127.0.0.1 port={port} dbname={db} sslmode=disable connect_timeout=10")
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_owned()
}

#[test]
fn psql_without_a_password_runs_queries_as_each_configured_user_over_tls() {
    let Some(pg) = pg() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pg.client_cert(dir.path(), "certuser");
    std::fs::write(dir.path().join("scram.pw"), "scrampw\n").unwrap();
    let scram_pw = format!("${{file:{}}}", dir.path().join("scram.pw").display());
    let mtls = format!(
        "      client_cert: {}\n      client_key: {}\n",
        cert.display(),
        key.display()
    );
    let mut cert_res = Res::new("certdb", "certuser", None);
    cert_res.extra_tls = &mtls;
    let app_db = Res::new("scramdb", "scramuser", Some(&scram_pw));
    let conf = config(
        dir.path(),
        pg,
        &[
            app_db,
            Res::new("md5db", "md5user", Some("md5pw")),
            cert_res,
        ],
    );
    let kw = Keyward::start(&conf);
    let query = "SELECT current_user, ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    for (res, user) in [
        ("scramdb", "scramuser"),
        ("md5db", "md5user"),
        ("certdb", "certuser"),
    ] {
        let port = kw.addr(res).port();
        // The app names some other user and no password: keyward logs in as the configured one.
        let out = psql(&format!("{} user=someapp", local(port, "app")), query);
        assert!(
            out.status.success(),
            "{res}: {}\n{}",
            stderr(&out),
            kw.log_text()
        );
        let line = stdout(&out);
        assert!(
            line.starts_with(&format!("{user}|t|TLSv1.")),
            "{res}: {line}"
        );
    }
    // SCRAM over TLS used channel binding, as the server offered it.
    kw.wait_log("a SCRAM-SHA-256-PLUS login", |v| {
        v["message"] == "SCRAM login" && v["mechanism"] == "SCRAM-SHA-256-PLUS"
    });
    // application_name and the database are the app's own.
    let port = kw.addr("scramdb").port();
    let out = psql(
        &format!("{} application_name=billing-worker", local(port, "app")),
        "SELECT current_database(), current_setting('application_name')",
    );
    assert_eq!(stdout(&out), "app|billing-worker", "{}", stderr(&out));
}

#[test]
fn tls_failures_and_refused_logins_reach_psql_as_readable_errors() {
    let Some(pg) = pg() else { return };
    let dir = tempfile::tempdir().unwrap();
    let other = Pki::new();
    let other_ca = other.write_ca();
    // A resource whose CA is another one, one checking a name the certificate lacks, the same
    // with verify-ca (connects), and one with a wrong password.
    let yaml = format!(
        "admin: null\nresources:\n  - name: wrongca\n    protocol: postgres\n    listen: 127.0.0.1:0\n    upstream: localhost:{port}\n    tls:\n      ca: {other}\n    auth:\n      type: password\n      username: scramuser\n      password: scrampw\n  - name: wrongname\n    protocol: postgres\n    listen: 127.0.0.1:0\n    upstream: 127.0.0.1:{port}\n    tls:\n      ca: {ca}\n      server_name: db.internal\n    auth:\n      type: password\n      username: scramuser\n      password: scrampw\n  - name: verifyca\n    protocol: postgres\n    listen: 127.0.0.1:0\n    upstream: 127.0.0.1:{port}\n    tls:\n      mode: verify-ca\n      ca: {ca}\n      server_name: db.internal\n    auth:\n      type: password\n      username: scramuser\n      password: scrampw\n  - name: badpw\n    protocol: postgres\n    listen: 127.0.0.1:0\n    upstream: localhost:{port}\n    tls:\n      ca: {ca}\n    auth:\n      type: password\n      username: scramuser\n      password: not-the-password\n  - name: plain\n    protocol: postgres\n    listen: 127.0.0.1:0\n    upstream: localhost:{port}\n    tls:\n      mode: disable\n    auth:\n      type: password\n      username: scramuser\n      password: scrampw\n  - name: down\n    protocol: postgres\n    listen: 127.0.0.1:0\n    upstream: localhost:1\n    tls:\n      ca: {ca}\n    auth:\n      type: password\n      username: scramuser\n      password: scrampw\n",
        port = pg.port,
        other = other_ca.display(),
        ca = pg.ca_pem.display(),
    );
    let conf = dir.path().join("keyward.yaml");
    std::fs::write(&conf, yaml).unwrap();
    let kw = Keyward::start(&conf);
    let try_res = |res: &str| psql(&local(kw.addr(res).port(), "app"), "SELECT 1");

    let out = try_res("wrongca");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("FATAL:  keyward: upstream \"wrongca\": unknown issuer"),
        "{}",
        stderr(&out)
    );
    let out = try_res("wrongname");
    assert!(
        stderr(&out).contains(
            "keyward: upstream \"wrongname\": certificate not valid for name \"db.internal\""
        ),
        "{}",
        stderr(&out)
    );
    let out = try_res("verifyca");
    assert_eq!(
        stdout(&out),
        "1",
        "verify-ca ignores the name: {}",
        stderr(&out)
    );
    // The server's own error, unchanged.
    let out = try_res("badpw");
    assert!(
        stderr(&out).contains("FATAL:  password authentication failed for user \"scramuser\""),
        "{}",
        stderr(&out)
    );
    // mode: disable against a server that rejects plaintext: the server's pg_hba error.
    let out = try_res("plain");
    assert!(stderr(&out).contains("no encryption"), "{}", stderr(&out));
    let out = try_res("down");
    assert!(
        stderr(&out).contains("keyward: upstream \"down\": connection refused"),
        "{}",
        stderr(&out)
    );
    // An app that insists on TLS to keyward (no listen_tls here) gets its driver's own error
    // at once instead of a hang.
    let started = Instant::now();
    let out = psql(
        &format!(
            "host=127.0.0.1 port={} dbname=app sslmode=require",
            kw.addr("verifyca").port()
        ),
        "SELECT 1",
    );
    assert!(
        stderr(&out).contains("server does not support SSL"),
        "{}",
        stderr(&out)
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // Malformed startup packets: an ErrorResponse, and keyward keeps serving.
    let port = kw.addr("verifyca").port();
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    use std::io::{Read, Write};
    raw.write_all(&[0, 0, 0, 12, 0, 2, 0, 0, b'u', 0, b'x', 0])
        .unwrap();
    let mut reply = Vec::new();
    let _ = raw.read_to_end(&mut reply);
    assert_eq!(reply.first(), Some(&b'E'), "{reply:?}");
    let text = String::from_utf8_lossy(&reply);
    assert!(text.contains("unsupported frontend protocol 2.0"), "{text}");
    // A startup packet over 10 000 bytes is refused the same way.
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.write_all(&20_000u32.to_be_bytes()).unwrap();
    let mut reply = Vec::new();
    let _ = raw.read_to_end(&mut reply);
    let text = String::from_utf8_lossy(&reply);
    assert!(
        reply.first() == Some(&b'E') && text.contains("invalid message length 20000"),
        "{text}"
    );
    let out = try_res("verifyca");
    assert_eq!(stdout(&out), "1");
}

#[test]
fn a_rotated_password_file_is_used_by_the_next_connection_while_open_sessions_go_on() {
    let Some(pg) = pg() else { return };
    pg.admin("ALTER ROLE rotuser PASSWORD 'rot-one'");
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("rot.pw");
    std::fs::write(&pw, "rot-one\n").unwrap();
    let pw_ref = format!("${{file:{}}}", pw.display());
    let conf = config(dir.path(), pg, &[Res::new("rot", "rotuser", Some(&pw_ref))]);
    let kw = Keyward::start(&conf);
    let port = kw.addr("rot").port();
    // An open session: psql reading statements from a pipe.
    let mut session = Command::new(pg::bin("psql"))
        .arg(local(port, "postgres"))
        .args(["-X", "-At"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = session.stdin.take().unwrap();
    use std::io::Write;
    writeln!(stdin, "SELECT 'first', current_user;").unwrap();
    let out = psql(&local(port, "postgres"), "SELECT current_user");
    assert_eq!(stdout(&out), "rotuser", "{}", stderr(&out));

    // Rotate: the server first, then the file.
    pg.admin("ALTER ROLE rotuser PASSWORD 'rot-two'");
    std::fs::write(&pw, "rot-two\n").unwrap();
    let out = psql(&local(port, "postgres"), "SELECT 'new connection'");
    assert_eq!(stdout(&out), "new connection", "{}", stderr(&out));
    writeln!(stdin, "SELECT 'second', current_user;").unwrap();
    drop(stdin);
    let done = session.wait_with_output().unwrap();
    assert_eq!(
        stdout(&done),
        "first|rotuser\nsecond|rotuser",
        "{}",
        stderr(&done)
    );
}

#[test]
fn pgbench_initialises_and_runs_through_keyward_without_errors() {
    let Some(pg) = pg() else { return };
    let dir = tempfile::tempdir().unwrap();
    let conf = config(
        dir.path(),
        pg,
        &[Res::new("bench", "benchuser", Some("benchpw"))],
    );
    let kw = Keyward::start(&conf);
    let conninfo = local(kw.addr("bench").port(), "bench");
    let init = Command::new(pg::bin("pgbench"))
        .args(["-i", "-s", "1", "-q", &conninfo])
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", stderr(&init));
    let run = Command::new(pg::bin("pgbench"))
        .args(["-S", "-c", "4", "-j", "2", "-T", "3", &conninfo])
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    let text = stdout(&run);
    assert!(run.status.success(), "{text}\n{}", stderr(&run));
    assert!(
        text.contains("number of failed transactions: 0 (0.000%)"),
        "{text}"
    );
    let tx: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(tx > 100, "{text}");
    // Reconnecting per transaction (-C) works too.
    let run = Command::new(pg::bin("pgbench"))
        .args(["-S", "-C", "-c", "2", "-t", "20", &conninfo])
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(stdout(&run).contains("number of failed transactions: 0"));
}

#[test]
fn psql_ctrl_c_cancels_a_running_query_through_keyward() {
    let Some(pg) = pg() else { return };
    let dir = tempfile::tempdir().unwrap();
    let conf = config(
        dir.path(),
        pg,
        &[Res::new("cancel", "scramuser", Some("scrampw"))],
    );
    let kw = Keyward::start(&conf);
    let port = kw.addr("cancel").port();
    let child = Command::new(pg::bin("psql"))
        .arg(format!("{} application_name=sleeper", local(port, "app")))
        .args(["-X", "-Atc", "SELECT pg_sleep(30)"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the query to run", || {
        pg.admin("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sleeper' AND state = 'active'") == "1"
    });
    let signalled = Instant::now();
    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let out = child.wait_with_output().unwrap();
    let elapsed = signalled.elapsed();
    assert!(
        stderr(&out).contains("canceling statement due to user request"),
        "{}\n{}",
        stderr(&out),
        kw.log_text()
    );
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    kw.wait_log("the forwarded cancel", |v| {
        v["message"] == "query cancel request forwarded"
    });
    // A CancelRequest with a key keyward never gave out is ignored silently.
    use std::io::{Read, Write};
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.write_all(&[0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1, 0, 0, 0, 2])
        .unwrap();
    let mut reply = Vec::new();
    let _ = raw.read_to_end(&mut reply);
    assert!(reply.is_empty());
}

#[test]
fn client_password_makes_the_app_prove_it_with_scram() {
    let Some(pg) = pg() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut res = Res::new("guarded", "scramuser", Some("scrampw"));
    res.extra = "    client_password: local-secret\n";
    let conf = config(dir.path(), pg, &[res]);
    let kw = Keyward::start(&conf);
    let conninfo = local(kw.addr("guarded").port(), "app");
    let run = |pw: Option<&str>| {
        let mut c = Command::new(pg::bin("psql"));
        c.arg(&conninfo)
            .args(["-X", "-w", "-Atc", "SELECT current_user"]);
        c.env_remove("PGPASSWORD");
        if let Some(pw) = pw {
            c.env("PGPASSWORD", pw);
        }
        c.output().unwrap()
    };
    let out = run(Some("local-secret"));
    assert_eq!(stdout(&out), "scramuser", "{}", stderr(&out));
    let out = run(Some("wrong"));
    assert!(
        stderr(&out).contains("keyward: resource \"guarded\": password authentication failed"),
        "{}",
        stderr(&out)
    );
    let out = run(None);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("password"), "{}", stderr(&out));
}

#[test]
fn direct_tls_negotiation_reaches_postgresql_17_and_is_refused_by_15() {
    let pg17_bin = pg::bin17();
    if !require(
        "PostgreSQL 17 binaries (set KEYWARD_PG17 or run .ci/run)",
        crate::support::procs::have(&format!("{pg17_bin}/postgres")),
    ) {
        return;
    }
    let Some(pg15) = pg() else { return };
    let pg17 = pg::shared17();
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "admin: null\nresources:\n  - name: direct17\n    protocol: postgres\n    listen: 127.0.0.1:0\n    upstream: localhost:{p17}\n    tls:\n      ca: {ca17}\n      negotiation: direct\n    auth:\n      type: password\n      username: scramuser\n      password: scrampw\n  - name: classic17\n    protocol: postgres\n    listen: 127.0.0.1:0\n    upstream: localhost:{p17}\n    tls:\n      ca: {ca17}\n    auth:\n      type: password\n      username: scramuser\n      password: scrampw\n  - name: direct15\n    protocol: postgres\n    listen: 127.0.0.1:0\n    upstream: localhost:{p15}\n    tls:\n      ca: {ca15}\n      negotiation: direct\n    auth:\n      type: password\n      username: scramuser\n      password: scrampw\n",
        p17 = pg17.port,
        ca17 = pg17.ca_pem.display(),
        p15 = pg15.port,
        ca15 = pg15.ca_pem.display(),
    );
    let conf = dir.path().join("keyward.yaml");
    std::fs::write(&conf, yaml).unwrap();
    let kw = Keyward::start(&conf);
    let query =
        "SELECT split_part(version(), ' ', 2), ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    for res in ["direct17", "classic17"] {
        let out = psql(&local(kw.addr(res).port(), "app"), query);
        assert_eq!(stdout(&out), "17.11|t", "{res}: {}", stderr(&out));
    }
    // PostgreSQL 15 does not speak direct TLS: it drops the connection, and psql says so.
    let out = psql(&local(kw.addr("direct15").port(), "app"), "SELECT 1");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("keyward: upstream \"direct15\""),
        "{}",
        stderr(&out)
    );
}

/// `keyward probe` on database resources: the TLS report and a whole login.
#[test]
fn probe_reports_tls_and_whether_the_login_succeeds() {
    let Some(pg) = pg() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut bad = Res::new("bad", "scramuser", Some("not-the-password"));
    bad.extra = "";
    let conf = config(
        dir.path(),
        pg,
        &[Res::new("good", "scramuser", Some("scrampw")), bad],
    );
    let probe = |res: &str| crate::support::procs::probe(&conf, res);
    let (code, text) = probe("good");
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("verify-full  ok"), "{text}");
    assert!(
        text.contains("auth: ok, user \"scramuser\" logged in"),
        "{text}"
    );
    let (code, text) = probe("bad");
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("auth: FAILED: password authentication failed for user \"scramuser\""),
        "{text}"
    );
}

/// `pool_max_idle`: a server connection whose app ended cleanly is reset (`DISCARD ALL`) and
/// given to the next app with the same startup parameters — no connect, TLS or login.
#[test]
fn pooled_server_connections_are_reset_and_reused() {
    let Some(pg) = pg() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut res = Res::new("pooled", "pooluser", Some("poolpw"));
    res.extra = "    pool_max_idle: 2\n";
    let conf = config(dir.path(), pg, &[res]);
    let kw = Keyward::start(&conf);
    let conninfo = local(kw.addr("pooled").port(), "pool");
    let first = psql(
        &conninfo,
        "SET search_path TO pg_catalog; CREATE TEMP TABLE scratch (x int); SELECT pg_backend_pid()",
    );
    assert!(first.status.success(), "{}", stderr(&first));
    let pid = stdout(&first).lines().last().unwrap_or_default().to_owned();
    let second = psql(
        &conninfo,
        "SELECT pg_backend_pid(), current_setting('search_path'), (SELECT count(*) FROM pg_tables WHERE tablename = 'scratch')",
    );
    assert_eq!(
        stdout(&second),
        format!("{pid}|\"$user\", public|0"),
        "the same server session, reset: {}",
        stderr(&second)
    );
    // A pooled session the server ended meanwhile is not handed out.
    let killed = pg.admin(&format!("SELECT pg_terminate_backend({pid})"));
    assert_eq!(killed, "t");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let third = psql(&conninfo, "SELECT pg_backend_pid()");
    assert!(third.status.success(), "{}", stderr(&third));
    assert_ne!(stdout(&third), pid);
    // Reconnecting per transaction: few server sessions, no errors.
    let script = dir.path().join("select1.sql");
    std::fs::write(&script, "SELECT 1;\n").unwrap();
    let run = Command::new(pg::bin("pgbench"))
        .args(["-n", "-C", "-c", "2", "-t", "50", "-f"])
        .arg(&script)
        .arg(&conninfo)
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(stdout(&run).contains("number of failed transactions: 0"));
    // A pipeline that writes far more than the socket buffers hold before reading any result:
    // both directions must flow at once.
    let pipeline = dir.path().join("pipeline.sql");
    let queries = "SELECT repeat('x', 2000);\n".repeat(3000);
    std::fs::write(
        &pipeline,
        format!("\\startpipeline\n{queries}\\endpipeline\n"),
    )
    .unwrap();
    let run = Command::new(pg::bin("pgbench"))
        .args(["-n", "-M", "extended", "-c", "1", "-t", "1", "-f"])
        .arg(&pipeline)
        .arg(&conninfo)
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    let sessions: u32 = pg
        .admin("SELECT count(*) FROM pg_stat_activity WHERE usename = 'pooluser'")
        .parse()
        .unwrap();
    assert!(
        sessions <= 3,
        "{sessions} server sessions for 100 app connections"
    );
}

/// `pool_idle_timeout`: a pooled server connection idle longer than that is not handed out
/// again (and is closed); one idle for less is.
#[test]
fn pooled_server_connections_expire_after_pool_idle_timeout() {
    let Some(pg) = pg() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut res = Res::new("expiring", "expiryuser", Some("expirypw"));
    res.extra = "    pool_max_idle: 2\n    pool_idle_timeout: 1s\n";
    let conf = config(dir.path(), pg, &[res]);
    let kw = Keyward::start(&conf);
    let conninfo = local(kw.addr("expiring").port(), "pool");
    let backend = || {
        let out = psql(&conninfo, "SELECT pg_backend_pid()");
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    let first = backend();
    assert_eq!(backend(), first, "reused within pool_idle_timeout");
    std::thread::sleep(Duration::from_millis(1500));
    let after = backend();
    assert_ne!(
        after, first,
        "a connection idle past pool_idle_timeout was reused"
    );
    // The expired server session was closed, not leaked.
    wait_until("the expired server session to end", || {
        pg.admin(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = {first}"
        )) == "0"
    });
}

/// An app that connects and sends no startup packet (or half of one) gets an ErrorResponse
/// after the 10 s startup timeout, and keyward goes on serving.
#[test]
fn a_silent_app_gets_an_error_response_after_the_startup_timeout() {
    use std::io::{Read, Write};
    let Some(pg) = pg() else { return };
    let dir = tempfile::tempdir().unwrap();
    let conf = config(
        dir.path(),
        pg,
        &[Res::new("silent", "scramuser", Some("scrampw"))],
    );
    let kw = Keyward::start(&conf);
    let port = kw.addr("silent").port();
    let started = Instant::now();
    let silent = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut half = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    half.write_all(&[0, 0, 0, 40, 0, 3, 0, 0]).unwrap();
    for mut raw in [silent, half] {
        raw.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut reply = Vec::new();
        let _ = raw.read_to_end(&mut reply);
        let text = String::from_utf8_lossy(&reply);
        assert_eq!(reply.first(), Some(&b'E'), "{text}");
        assert!(
            text.contains("within client_handshake_timeout (10s)"),
            "{text}"
        );
        assert!(text.contains("08P01"), "{text}");
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(15),
        "{waited:?}"
    );
    let out = psql(&local(port, "app"), "SELECT 1");
    assert_eq!(stdout(&out), "1", "{}", stderr(&out));
}

/// A StartupMessage that names `user` (or any parameter) twice: the server would take the
/// last copy, past keyward's rewrite of the first. keyward refuses the packet (08P01) before
/// any server is contacted.
#[test]
fn a_startup_message_that_repeats_user_is_refused_before_the_server() {
    use std::io::{Read, Write};
    let Some(pg) = pg() else { return };
    let dir = tempfile::tempdir().unwrap();
    let conf = config(
        dir.path(),
        pg,
        &[Res::new("twice", "scramuser", Some("scrampw"))],
    );
    let kw = Keyward::start(&conf);
    let mut body = vec![0, 3, 0, 0];
    for (k, v) in [
        ("user", "app"),
        ("database", "app"),
        ("user", "postgres"),
        ("database", "postgres"),
    ] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend(body);
    let mut app = std::net::TcpStream::connect(kw.addr("twice")).unwrap();
    app.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    app.write_all(&packet).unwrap();
    let mut reply = Vec::new();
    let _ = app.read_to_end(&mut reply);
    let text = String::from_utf8_lossy(&reply);
    assert_eq!(reply.first(), Some(&b'E'), "{text}");
    assert!(
        text.contains("C08P01") && text.contains("repeated startup parameter \"user\""),
        "{text}"
    );
    assert!(
        !kw.log_text().contains("logged in upstream"),
        "a login happened: {}",
        kw.log_text()
    );
}

/// With `pool_max_idle`, an app that pipelines slow queries and Terminate must not leave its
/// server connection to the next app while a query runs: the next app's first answer is its
/// own. Failed before the fix (the idle check looked at the last ReadyForQuery only and the
/// reset stopped at the first one it read: the connection was pooled after the first slow
/// query, while the second still ran, and the next app read `secret` as its answer).
#[test]
fn a_pipelined_session_is_not_pooled_before_the_server_answered_everything() {
    use std::io::Write;
    let Some(pg) = pg() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut res = Res::new("piped", "pooluser", Some("poolpw"));
    res.extra = "    pool_max_idle: 2\n";
    let conf = config(dir.path(), pg, &[res]);
    let kw = Keyward::start(&conf);
    let addr = kw.addr("piped");
    let message = pg_message;
    let query = pg_query;
    let read_message = read_pg_message;
    let login = || pg_login(addr);
    let mut first = login();
    let mut pipelined = query("SELECT 1");
    pipelined.extend(query("SELECT pg_sleep(1), 'secret'"));
    pipelined.extend(query("SELECT pg_sleep(2), 'secret'"));
    first.write_all(&pipelined).unwrap();
    // The first query's ReadyForQuery (the server idle for a moment), then Terminate while
    // the slow ones run.
    while read_message(&mut first).0 != b'Z' {}
    first.write_all(&message(b'X', &[])).unwrap();
    drop(first);
    // The next app arrives after the first slow query ended and while the second runs.
    std::thread::sleep(Duration::from_millis(1500));
    let mut second = login();
    second.write_all(&query("SELECT 'mine'")).unwrap();
    let mut answer = Vec::new();
    loop {
        let (tag, body) = read_message(&mut second);
        answer.push((tag, String::from_utf8_lossy(&body).into_owned()));
        if tag == b'Z' {
            break;
        }
    }
    let tags: Vec<u8> = answer.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, b"TDCZ".to_vec(), "{answer:?}");
    assert!(answer[1].1.contains("mine"), "{answer:?}");
    assert!(
        !answer.iter().any(|(_, b)| b.contains("secret")),
        "{answer:?}"
    );
}

/// A frontend message.
fn pg_message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// A simple-protocol Query.
fn pg_query(sql: &str) -> Vec<u8> {
    pg_message(b'Q', &[sql.as_bytes(), &[0]].concat())
}

/// One backend message: its tag and body.
fn read_pg_message(conn: &mut std::net::TcpStream) -> (u8, Vec<u8>) {
    use std::io::Read;
    let mut head = [0u8; 5];
    conn.read_exact(&mut head).unwrap();
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0u8; len - 4];
    conn.read_exact(&mut body).unwrap();
    (head[0], body)
}

/// A plaintext app session as `pooluser` on database `pool`, logged in (through keyward).
fn pg_login(addr: std::net::SocketAddr) -> std::net::TcpStream {
    pg_login_keyed(addr).0
}

/// [`pg_login`], with the BackendKeyData (the cancel key) the app was given.
fn pg_login_keyed(addr: std::net::SocketAddr) -> (std::net::TcpStream, Vec<u8>) {
    use std::io::Write;
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let body = [&[0u8, 3, 0, 0][..], b"user\0pooluser\0database\0pool\0\0"].concat();
    let mut startup = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    startup.extend(body);
    conn.write_all(&startup).unwrap();
    let mut key = Vec::new();
    loop {
        match read_pg_message(&mut conn) {
            (b'K', body) => key = body,
            (b'Z', _) => break,
            _ => {}
        }
    }
    (conn, key)
}

/// One simple query's rows (each row's first column as text) and the error it ended in.
fn pg_rows(conn: &mut std::net::TcpStream, sql: &str) -> (Vec<String>, Option<String>) {
    use std::io::Write;
    conn.write_all(&pg_query(sql)).unwrap();
    let (mut rows, mut error) = (Vec::new(), None);
    loop {
        match read_pg_message(conn) {
            // DataRow: column count (2 bytes), the first column's length (4), its text.
            (b'D', body) => rows.push(String::from_utf8_lossy(&body[6..]).into_owned()),
            (b'E', body) => error = Some(String::from_utf8_lossy(&body).into_owned()),
            (b'Z', _) => return (rows, error),
            _ => {}
        }
    }
}

/// A TCP relay in front of the test PostgreSQL that passes the first connection on at once
/// and holds every later one for `hold` before connecting it: a slow network for keyward's
/// second dial (here: the one that carries a CancelRequest).
fn slow_after_first(to: u16, hold: Duration) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for (n, app) in listener.incoming().enumerate() {
            let Ok(app) = app else { return };
            std::thread::spawn(move || {
                if n > 0 {
                    std::thread::sleep(hold);
                }
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", to)) else {
                    return;
                };
                let (mut a, mut b) = (app.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut a, &mut b);
                    let _ = b.shutdown(std::net::Shutdown::Write);
                });
                let (mut a, mut b) = (server, app);
                let _ = std::io::copy(&mut a, &mut b);
                let _ = b.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}

/// Issue 13 item 3: a CancelRequest that is still on its way when its session ends (keyward
/// was still connecting to send it on) must not cancel the next app's query on the same
/// pooled server connection. Failed before the fix: the late cancel was sent with the server
/// key looked up before the dial, and the next app's query was cancelled (57014).
#[test]
fn a_late_cancel_never_reaches_the_next_app_on_a_pooled_connection() {
    use std::io::Write;
    let Some(pg) = pg() else { return };
    let dir = tempfile::tempdir().unwrap();
    let relay = slow_after_first(pg.port, Duration::from_millis(1500));
    let conf = dir.path().join("keyward.yaml");
    std::fs::write(
        &conf,
        format!(
            "admin: null\nresources:\n  - name: late\n    protocol: postgres\n    listen: 127.0.0.1:0\n    upstream: localhost:{relay}\n    pool_max_idle: 2\n    tls:\n      ca: {}\n    auth:\n      type: password\n      username: pooluser\n      password: poolpw\n",
            pg.ca_pem.display()
        ),
    )
    .unwrap();
    let kw = Keyward::start(&conf);
    let addr = kw.addr("late");
    let (mut first, key) = pg_login_keyed(addr);
    assert_eq!(key.len(), 8, "BackendKeyData: pid and key");
    let (server_pid, _) = pg_rows(&mut first, "SELECT pg_backend_pid()");
    // The app cancels (nothing runs; keyward's dial for it is held 1.5 s) and leaves.
    let mut cancel = std::net::TcpStream::connect(addr).unwrap();
    let mut request = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
    request.extend_from_slice(&key);
    cancel.write_all(&request).unwrap();
    // keyward has looked the key up (the session is live) and is dialing when the app leaves.
    std::thread::sleep(Duration::from_millis(300));
    first.write_all(&pg_message(b'X', &[])).unwrap();
    drop(first);
    std::thread::sleep(Duration::from_millis(300));
    // The next app gets the same server connection from the pool and runs a query through
    // the moment the cancel's dial completes.
    let mut second = pg_login(addr);
    let (rows, error) = pg_rows(
        &mut second,
        "SELECT pg_backend_pid() || '/' || pg_sleep(2.5)::text",
    );
    assert_eq!(
        error,
        None,
        "the next app's query was cancelled:\n{}",
        kw.log_text()
    );
    assert_eq!(rows.len(), 1);
    assert!(
        rows[0].starts_with(&format!("{}/", server_pid[0])),
        "not the pooled connection: {rows:?} vs {server_pid:?}"
    );
    let log = kw.log_text();
    assert!(
        log.contains("CancelRequest for a session that ended meanwhile: dropped"),
        "{log}"
    );
}

/// Issue 13 item 2, the second scenario: an app that leaves inside a transaction, holding an
/// advisory lock and a prepared statement, with every answer read, does not hand its session
/// to the next app (`DISCARD ALL` cannot run in a transaction block: such a session is never
/// pooled). The next app, through the same pool, sees neither.
#[test]
fn a_session_left_inside_a_transaction_is_not_handed_to_the_next_app() {
    use std::io::Write;
    let Some(pg) = pg() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut res = Res::new("intx", "pooluser", Some("poolpw"));
    res.extra = "    pool_max_idle: 2\n";
    let conf = config(dir.path(), pg, &[res]);
    let kw = Keyward::start(&conf);
    let addr = kw.addr("intx");
    let mut first = pg_login(addr);
    for sql in [
        "BEGIN",
        "SELECT pg_advisory_lock(4242)",
        "PREPARE leftover AS SELECT 1",
    ] {
        first.write_all(&pg_query(sql)).unwrap();
        let mut last = (0, Vec::new());
        while last.0 != b'Z' {
            last = read_pg_message(&mut first);
            assert_ne!(
                last.0,
                b'E',
                "{sql}: {:?}",
                String::from_utf8_lossy(&last.1)
            );
        }
        assert_eq!(last.1, b"T", "{sql}: in a transaction");
    }
    first.write_all(&pg_message(b'X', &[])).unwrap();
    drop(first);
    std::thread::sleep(Duration::from_millis(200));
    let mut second = pg_login(addr);
    second
        .write_all(&pg_query(
            "SELECT (SELECT count(*) FROM pg_prepared_statements) || '/' || \
             (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid())",
        ))
        .unwrap();
    let mut rows = Vec::new();
    loop {
        let (tag, body) = read_pg_message(&mut second);
        if tag == b'D' {
            rows.push(String::from_utf8_lossy(&body).into_owned());
        }
        if tag == b'Z' {
            assert_eq!(body, b"I");
            break;
        }
    }
    assert_eq!(rows.len(), 1);
    assert!(rows[0].ends_with("0/0"), "the next app inherited: {rows:?}");
}

/// Issue 19 item 8: psql sessions (a query, Terminate, close) end clean.
#[test]
fn psql_sessions_end_clean() {
    let Some(pg) = pg() else { return };
    let dir = tempfile::tempdir().unwrap();
    let conf = config(
        dir.path(),
        pg,
        &[Res::new("clean", "scramuser", Some("scrampw"))],
    );
    let kw = Keyward::start(&conf);
    for _ in 0..3 {
        let out = psql(&local(kw.addr("clean").port(), "app"), "SELECT 1");
        assert_eq!(stdout(&out), "1", "{}", stderr(&out));
    }
    kw.assert_clean_ends(3);
}

/// Issue 13 item 15: no copy of keyward's password outlives its use. A role logs in 20 times
/// through keyward (SCRAM-SHA-256) with its password in a file; then the password is rotated
/// (server and file) and one more login uses the new one: keyward's whole memory holds no copy
/// of the first password.
#[test]
fn no_copy_of_a_rotated_postgres_password_is_left_in_keyward_memory() {
    let Some(pg) = pg() else { return };
    if !crate::support::procs::can_read_memory() {
        return;
    }
    pg.admin("CREATE ROLE memrole LOGIN PASSWORD 'pg-mem-one'");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "pg-mem-one\n").unwrap();
    let source = format!("${{file:{}}}", file.display());
    let conf = config(
        dir.path(),
        pg,
        &[Res::new("mem", "memrole", Some(source.as_str()))],
    );
    let kw = Keyward::start(&conf);
    let port = kw.addr("mem").port();
    for _ in 0..20 {
        let out = psql(&local(port, "postgres"), "SELECT current_user");
        assert_eq!(stdout(&out), "memrole", "{}", stderr(&out));
    }
    pg.admin("ALTER ROLE memrole PASSWORD 'pg-mem-two'");
    std::fs::write(&file, "pg-mem-two\n").unwrap();
    // The rotation reloads the resource (its snapshot then holds the new secret): scanned
    // before that, the current secret may be nowhere but the file.
    kw.wait_log("the reload of the rotated password", |v| {
        v["resource"] == "mem"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("resource updated"))
    });
    let out = psql(&local(port, "postgres"), "SELECT current_user");
    assert_eq!(stdout(&out), "memrole", "{}", stderr(&out));
    kw.assert_clean_ends(21);
    crate::support::procs::assert_only_the_new_secret_in_memory(
        kw.pid(),
        b"pg-mem-one",
        b"pg-mem-two",
    );
}
