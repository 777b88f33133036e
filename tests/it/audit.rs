//! Audit events and allow rules, end to end: the built binary in front of real servers
//! (nginx, Redis), driven by their real clients, its JSON lines parsed.

use std::io::{BufRead, BufReader, Read, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::procs::{have, nginx_available, wait_until, Keyward, Nginx, Redis};
use crate::support::{require, Pki};

type Files = crate::support::TlsFiles;

fn files(pki: &Pki) -> Files {
    Files::new(pki, "keyward-audit")
}

/// A private Redis that requires a client certificate and the password `audit-redis-pw`,
/// with that password written to `pw` in the PKI directory.
fn redis_with_password(pki: &Pki, f: &Files) -> Redis {
    pki.write("pw", "audit-redis-pw");
    Redis::start_with(
        pki.dir.path(),
        &f.ca,
        &f.server_cert,
        &f.server_key,
        &f.client_cert,
        &f.client_key,
        "tls-auth-clients yes\nrequirepass audit-redis-pw\n",
        &["-a", "audit-redis-pw"],
    )
}

/// keyward with an `audit` block (`audit`) and one http resource in front of `nginx` with a
/// bearer token and `extra` resource keys.
fn http_keyward(pki: &Pki, f: &Files, port: u16, audit: &str, extra: &str) -> Keyward {
    pki.write("token", "kw-e2e-token\n");
    let cfg = pki.write(
        "keyward.yaml",
        &format!(
            "admin:\n  listen: 127.0.0.1:0\naudit:\n{audit}resources:\n  - name: api\n    protocol: http\n    listen: 127.0.0.1:0\n    upstream: https://localhost:{port}/v2\n    tls:\n      ca: {}\n      client_cert: {}\n      client_key: {}\n    auth:\n      type: bearer\n      token: ${{file:token}}\n{extra}",
            f.ca.display(),
            f.client_cert.display(),
            f.client_key.display()
        ),
    );
    Keyward::start(&cfg)
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\nstatus=%{http_code}\n"])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn of<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

/// `n` GETs of `/items/<i>` on one keep-alive connection; each must answer 200.
fn get_many(addr: SocketAddr, n: usize) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    for i in 0..n {
        // One write per request (write! would make several small ones: Nagle's algorithm
        // and the server's delayed ACK would hold each request 40 ms).
        s.write_all(format!("GET /items/{i} HTTP/1.1\r\nHost: app\r\n\r\n").as_bytes())
            .unwrap();
        let mut status = String::new();
        r.read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "request {i}: {status}");
        let mut len = 0;
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
    }
}

#[test]
fn http_sessions_requests_and_denials_are_audited_and_allow_rules_hold() {
    if !require("nginx and curl", nginx_available() && have("curl")) {
        return;
    }
    let pki = Pki::new();
    let f = files(&pki);
    let nginx = Nginx::start(pki.dir.path(), &f.ca, &f.server_cert, &f.server_key);
    let keyward = http_keyward(
        &pki,
        &f,
        nginx.port,
        "  sink: stdout\n",
        "    audit: requests\n    allow:\n      - methods: [GET, HEAD]\n        paths: [\"/items/**\"]\n      - methods: [POST]\n        paths: [\"/items/*/notes\"]\n",
    );
    let addr = keyward.addr("api");
    let url = |p: &str| format!("http://{addr}{p}");

    let ok = curl(&[&url("/items/7?x=1")]);
    assert!(ok.contains("status=200"), "{ok}\n{}", keyward.log_text());
    assert!(ok.contains("uri=/v2/items/7?x=1\n"), "{ok}");
    let posted = curl(&["-d", "note", &url("/items/7/notes")]);
    assert!(posted.contains("status=200"), "{posted}");
    // Denied: a method no rule names, a path outside every rule, a path that only looks
    // inside (dot segments, an escaped dot), and the root.
    for (args, path) in [
        (vec!["-X", "DELETE"], "/items/7"),
        (vec![], "/admin/users"),
        (vec!["--path-as-is"], "/items/../admin"),
        (vec!["--path-as-is"], "/items/%2e%2e/admin"),
        (vec!["-d", "x"], "/items/7/other"),
        (vec![], "/"),
    ] {
        let u = url(path);
        let mut a: Vec<&str> = args.clone();
        a.extend(["-D", "-", u.as_str()]);
        let denied = curl(&a);
        assert!(denied.contains("status=403"), "{path}: {denied}");
        assert!(
            denied
                .to_ascii_lowercase()
                .contains("x-keyward-error: denied by allow rule"),
            "{path}: {denied}"
        );
        assert!(
            !denied.contains("client_dn="),
            "{path} reached nginx: {denied}"
        );
    }

    let events = keyward.wait_audit("8 session ends", |e| of(e, "session_end").len() >= 8);
    let starts = of(&events, "session_start");
    assert_eq!(starts.len(), 8, "{events:#?}");
    for s in &starts {
        assert_eq!(s["resource"], "api");
        assert_eq!(s["protocol"], "http");
        assert!(
            s["client"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{s}"
        );
        assert_eq!(
            s["upstream"],
            format!("https://localhost:{}/v2", nginx.port),
            "{s}"
        );
        assert!(s["time"].as_str().unwrap().ends_with('Z'), "{s}");
    }
    let requests = of(&events, "request");
    assert_eq!(requests.len(), 8, "{requests:#?}");
    let get = requests
        .iter()
        .find(|r| r["status"] == 200 && r["method"] == "GET")
        .unwrap();
    assert_eq!(get["path"], "/items/7?x=1");
    assert_eq!(get["credential"], "bearer");
    assert_eq!(get["token_refreshed"], false);
    assert!(get["response_bytes"].as_u64().unwrap() > 100, "{get}");
    assert!(get["duration_ms"].as_f64().unwrap() > 0.0, "{get}");
    let post = requests
        .iter()
        .find(|r| r["method"] == "POST" && r["status"] == 200)
        .unwrap();
    assert_eq!(post["request_bytes"], 4);
    let denials = of(&events, "denied");
    assert_eq!(denials.len(), 6, "{denials:#?}");
    for d in &denials {
        assert_eq!(d["rule"], "no allow rule matched", "{d}");
    }
    assert!(denials
        .iter()
        .any(|d| d["method"] == "DELETE" && d["path"] == "/items/7"));
    assert!(denials.iter().any(|d| d["path"] == "/items/%2e%2e/admin"));
    assert_eq!(
        requests.iter().filter(|r| r["status"] == 403).count(),
        6,
        "every denial is a request too"
    );
    // Each session's end: same id as a start, bytes each way, how it ended.
    for end in of(&events, "session_end") {
        assert!(
            starts.iter().any(|s| s["session"] == end["session"]),
            "{end}"
        );
        assert_eq!(end["outcome"], "closed", "{end}");
        assert!(end["bytes_received"].as_u64().unwrap() > 0, "{end}");
        assert!(end["duration_ms"].as_f64().is_some(), "{end}");
    }
    // The denials are counted as client errors with their reason.
    let metrics = curl(&[&format!("http://{}/metrics", keyward.admin_addr())]);
    assert!(
        metrics.contains(
            "keyward_connection_errors_total{reason=\"denied\",resource=\"api\",side=\"client\"} 6"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("keyward_audit_dropped_total{resource=\"api\"} 0"),
        "{metrics}"
    );
}

#[test]
fn a_redis_session_is_audited_with_its_login_and_upstream_tls() {
    if !require(
        "redis-server and redis-cli",
        have("redis-server") && have("redis-cli"),
    ) {
        return;
    }
    let pki = Pki::new();
    let f = files(&pki);
    let redis = redis_with_password(&pki, &f);
    let cfg = pki.write(
        "keyward.yaml",
        &format!(
            "admin: null\naudit:\n  sink: stdout\nresources:\n  - name: cache\n    protocol: redis\n    listen: 127.0.0.1:0\n    upstream: localhost:{}\n    tls:\n      ca: {}\n      client_cert: {}\n      client_key: {}\n    auth:\n      type: password\n      password: ${{file:pw}}\n  - name: quiet\n    protocol: redis\n    listen: 127.0.0.1:0\n    upstream: localhost:{}\n    audit: off\n    tls:\n      ca: {}\n      client_cert: {}\n      client_key: {}\n    auth:\n      type: password\n      password: ${{file:pw}}\n",
            redis.port,
            f.ca.display(),
            f.client_cert.display(),
            f.client_key.display(),
            redis.port,
            f.ca.display(),
            f.client_cert.display(),
            f.client_key.display(),
        ),
    );
    let keyward = Keyward::start(&cfg);
    for resource in ["cache", "quiet"] {
        let out = Command::new("redis-cli")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &keyward.addr(resource).port().to_string(),
            ])
            .args(["SET", "audit:k", "v"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "OK",
            "{}",
            keyward.log_text()
        );
    }
    let events = keyward.wait_audit("the session's end", |e| !of(e, "session_end").is_empty());
    assert!(
        events.iter().all(|e| e["resource"] == "cache"),
        "audit: off records nothing: {events:#?}"
    );
    let start = of(&events, "session_start")[0];
    assert_eq!(start["protocol"], "redis");
    assert_eq!(start["identity"], "default");
    assert_eq!(start["tls_version"], "TLSv1_3", "{start}");
    assert!(
        start["tls_cipher"].as_str().unwrap().starts_with("TLS13_"),
        "{start}"
    );
    assert!(
        start["upstream_cert"].as_str().unwrap().contains("CN="),
        "{start}"
    );
    assert_eq!(
        start["upstream_addr"],
        format!("127.0.0.1:{}", redis.port),
        "{start}"
    );
    let end = of(&events, "session_end")[0];
    assert_eq!(end["session"], start["session"]);
    assert_eq!(end["outcome"], "closed", "{end}");
    assert!(end["bytes_sent"].as_u64().unwrap() > 10, "{end}");
    assert!(end["bytes_received"].as_u64().unwrap() > 0, "{end}");
}

/// Every line of the audit file and its rotated siblings.
fn audit_lines(dir: &Path) -> (Vec<Value>, usize) {
    let mut lines = Vec::new();
    let mut files = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("audit.jsonl") {
            continue;
        }
        // keyward may rotate (rename) the live file between the listing and the read while
        // the test polls; the final read, after the last event, sees every file.
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("{name}: {e}"),
        };
        files += 1;
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{name} ends mid-line"
        );
        for l in text.lines() {
            lines.push(serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}: {l:?}: {e}")));
        }
    }
    (lines, files)
}

#[test]
fn the_audit_file_rotates_under_load_without_losing_a_line() {
    if !require("nginx", nginx_available()) {
        return;
    }
    let pki = Pki::new();
    let f = files(&pki);
    let nginx = Nginx::start(pki.dir.path(), &f.ca, &f.server_cert, &f.server_key);
    let dir = pki.dir.path().join("audit");
    std::fs::create_dir_all(&dir).unwrap();
    let keyward = http_keyward(
        &pki,
        &f,
        nginx.port,
        &format!(
            "  sink: file\n  path: {}\n  max_size: 8KiB\n  max_files: 1000\n",
            dir.join("audit.jsonl").display()
        ),
        "    audit: requests\n",
    );
    let addr = keyward.addr("api");
    let threads: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(move || get_many(addr, 150)))
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    wait_until("600 request events and 4 session ends", || {
        let (lines, _) = audit_lines(&dir);
        of(&lines, "session_end").len() == 4
    });
    let (lines, files) = audit_lines(&dir);
    assert_eq!(of(&lines, "request").len(), 600);
    assert_eq!(of(&lines, "session_start").len(), 4);
    assert_eq!(lines.len(), 608);
    assert!(files > 10, "rotated into {files} files");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let len = entry.unwrap().metadata().unwrap().len();
        assert!(len <= 8 * 1024, "a file of {len} bytes");
    }
}

#[test]
fn a_blocked_audit_sink_never_stalls_the_relay_and_counts_what_it_drops() {
    if !require("nginx and mkfifo", nginx_available() && have("mkfifo")) {
        return;
    }
    let pki = Pki::new();
    let f = files(&pki);
    let nginx = Nginx::start(pki.dir.path(), &f.ca, &f.server_cert, &f.server_key);
    let fifo = pki.dir.path().join("audit.fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    // A reader that holds the FIFO open and never reads: the pipe fills, the writer blocks.
    let reader = {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(&fifo)
            .unwrap()
    };
    let keyward = http_keyward(
        &pki,
        &f,
        nginx.port,
        &format!("  sink: file\n  path: {}\n  queue: 16\n", fifo.display()),
        "    audit: requests\n",
    );
    let addr = keyward.addr("api");
    // Each answer within get_many's read timeout: the relay never waits for the sink.
    get_many(addr, 1500);
    let metrics = curl(&[&format!("http://{}/metrics", keyward.admin_addr())]);
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("keyward_audit_dropped_total{resource=\"api\"} "))
        .unwrap_or_else(|| panic!("{metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert!(dropped > 500, "dropped {dropped}");
    keyward.wait_log("the drop warning", |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("audit sink is behind"))
    });
    // What did go through is whole lines.
    let mut text = Vec::new();
    let _ = (&reader).read_to_end(&mut text);
    let text = String::from_utf8_lossy(&text);
    let whole = text.rsplit_once('\n').map_or("", |(w, _)| w);
    for l in whole.lines() {
        serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{l:?}: {e}"));
    }
}

fn pg() -> Option<&'static crate::support::pg::Pg> {
    require(
        "PostgreSQL 15 server binaries",
        crate::support::pg::available(),
    )
    .then(crate::support::pg::shared)
}

fn psycopg() -> bool {
    require(
        "psycopg 3 (pip install 'psycopg[binary]')",
        Command::new("python3")
            .args(["-c", "import psycopg"])
            .output()
            .is_ok_and(|o| o.status.success()),
    )
}

/// keyward with `sink: stdout` and postgres resources (name, extra keys) logging in as
/// md5user.
fn pg_keyward(dir: &Path, pg: &crate::support::pg::Pg, resources: &[(&str, &str)]) -> Keyward {
    let mut yaml = String::from("admin: null\naudit:\n  sink: stdout\nresources:\n");
    for (name, extra) in resources {
        yaml.push_str(&format!(
            "  - name: {name}\n    protocol: postgres\n    listen: 127.0.0.1:0\n    upstream: localhost:{}\n    tls:\n      ca: {}\n    auth:\n      type: password\n      username: md5user\n      password: md5pw\n{extra}",
            pg.port,
            pg.ca_pem.display(),
        ));
    }
    let path = dir.join("keyward.yaml");
    std::fs::write(&path, yaml).unwrap();
    Keyward::start(&path)
}

fn conninfo(kw: &Keyward, resource: &str) -> String {
    format!(
        "host=127.0.0.1 port={} dbname=app user=someapp sslmode=disable connect_timeout=10",
        kw.addr(resource).port()
    )
}

/// psql with verbose errors (`ERROR:  25006: ...`); (success, stdout, stderr).
fn psql(conninfo: &str, sql: &str) -> (bool, String, String) {
    let out = Command::new(crate::support::pg::bin("psql"))
        .arg(conninfo)
        .args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            "VERBOSITY=verbose",
            "-Atc",
            sql,
        ])
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

/// A Python (psycopg 3: extended protocol, server-side parameters) script's output.
fn python(script: &str, conninfo: &str) -> String {
    let out = Command::new("python3")
        .args(["-c", script, conninfo])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn postgres_statements_are_audited_without_bind_values_and_with_masked_literals() {
    let Some(pg) = pg() else { return };
    if !psycopg() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kw = pg_keyward(
        dir.path(),
        pg,
        &[
            (
                "masked",
                "    audit: {level: statements, mask_literals: true}\n",
            ),
            ("plain", "    audit: statements\n"),
            ("quiet", "    audit: sessions\n"),
        ],
    );
    let (ok, out, err) = psql(
        &conninfo(&kw, "masked"),
        "SELECT 'lit-secret-1' AS a, 42 AS b",
    );
    assert!(ok, "{err}\n{}", kw.log_text());
    assert_eq!(out, "lit-secret-1|42");
    let script = "import sys, psycopg\nwith psycopg.connect(sys.argv[1], autocommit=True) as c:\n    print(c.execute('SELECT %s::text AS v, %s::int AS n', ('bind-value-xyz', 7)).fetchone())\n    print(c.execute('SELECT 1 AS one', prepare=True).fetchone())\n";
    let printed = python(script, &conninfo(&kw, "plain"));
    assert!(printed.contains("('bind-value-xyz', 7)"), "{printed}");
    let (ok, _, err) = psql(&conninfo(&kw, "quiet"), "SELECT 'quiet-literal'");
    assert!(ok, "{err}");
    // pgbench, extended protocol: one Parse per transaction, two clients.
    let script = dir.path().join("one.sql");
    std::fs::write(&script, "SELECT 'bench-literal' AS x;\n").unwrap();
    let bench = Command::new(crate::support::pg::bin("pgbench"))
        .args(["-n", "-M", "extended", "-c", "2", "-t", "20", "-f"])
        .arg(&script)
        .arg(conninfo(&kw, "masked"))
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    assert!(
        bench.status.success(),
        "{}",
        String::from_utf8_lossy(&bench.stderr)
    );
    let parses = |e: &[Value]| {
        of(e, "statement")
            .iter()
            .filter(|e| e["resource"] == "masked" && e["kind"] == "parse")
            .filter(|e| e["statement"] == "SELECT ? AS x;")
            .count()
    };
    // Every session has ended (the sink writes in batches: wait for what is counted).
    let events = kw.wait_audit("one parse event per pgbench transaction", |e| {
        parses(e) >= 40 && of(e, "session_end").len() >= 5
    });
    assert_eq!(parses(&events), 40, "one Parse per pgbench transaction");
    let statements = of(&events, "statement");
    let masked: Vec<_> = statements
        .iter()
        .filter(|e| e["resource"] == "masked" && e["kind"] == "query")
        .collect();
    assert_eq!(masked.len(), 1, "{statements:#?}");
    assert_eq!(masked[0]["statement"], "SELECT ? AS a, ? AS b");
    let plain: Vec<_> = statements
        .iter()
        .filter(|e| e["resource"] == "plain")
        .collect();
    assert!(
        plain
            .iter()
            .any(|e| e["kind"] == "parse" && e["statement"] == "SELECT $1::text AS v, $2::int AS n"),
        "{plain:#?}"
    );
    assert!(
        plain.iter().any(|e| e["statement"] == "SELECT 1 AS one"),
        "{plain:#?}"
    );
    assert!(
        statements.iter().all(|e| e["resource"] != "quiet"),
        "level sessions records no statement"
    );
    let all = kw.stdout.lock().unwrap().join("\n");
    for never in [
        "lit-secret-1",
        "bind-value-xyz",
        "quiet-literal",
        "bench-literal",
        "md5pw",
    ] {
        assert!(!all.contains(never), "{never} in the audit trail:\n{all}");
    }
    let start = of(&events, "session_start")
        .into_iter()
        .find(|e| e["resource"] == "masked")
        .unwrap();
    assert_eq!(start["identity"], "md5user", "{start}");
    assert!(
        start["tls_version"].as_str().unwrap().starts_with("TLSv1_"),
        "{start}"
    );
    assert!(
        start["upstream_cert"].as_str().unwrap().contains("CN="),
        "{start}"
    );
}

#[test]
fn read_only_refuses_what_would_turn_it_off_in_simple_and_extended_queries() {
    let Some(pg) = pg() else { return };
    if !psycopg() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kw = pg_keyward(
        dir.path(),
        pg,
        &[("ro", "    read_only: true\n    pool_max_idle: 1\n")],
    );
    let ci = conninfo(&kw, "ro");
    let (ok, out, err) = psql(&ci, "SHOW default_transaction_read_only");
    assert!(ok, "{err}\n{}", kw.log_text());
    assert_eq!(out, "on");
    // The server's own refusal of a write.
    let (ok, _, err) = psql(&ci, "CREATE TABLE ro_probe (x int)");
    assert!(!ok);
    assert!(
        err.contains("25006") && err.contains("read-only transaction"),
        "{err}"
    );
    // keyward's, for what would turn read-only off (each also in a multi-statement query).
    for sql in [
        "SET default_transaction_read_only = off",
        "SELECT 1; SET SESSION transaction_read_only TO off",
        "BEGIN READ WRITE",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
        "SELECT set_config('default_transaction_' || 'read_only', 'off', false)",
        "DO $$BEGIN EXECUTE 'SET default_transaction_read_only = off'; END$$",
    ] {
        let (ok, _, err) = psql(&ci, sql);
        assert!(!ok, "{sql} ran");
        assert!(
            err.contains("25006") && err.contains("keyward: this resource is read_only"),
            "{sql}: {err}"
        );
    }
    let (ok, out, err) = psql(
        &ci,
        "BEGIN; SHOW transaction_read_only; COMMIT; RESET ALL; SHOW default_transaction_read_only",
    );
    assert!(ok, "{err}");
    assert_eq!(out, "BEGIN\non\nCOMMIT\nRESET\non");
    // Extended protocol (psycopg 3 sends every statement with Parse/Bind/Execute).
    let script = r#"import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as c:
    for sql, params in [("SET transaction_read_only = %s", ("off",)),
                        ("BEGIN READ WRITE", None),
                        ("SELECT set_config(%s, 'off', false)", ("default_transaction_read_only",))]:
        try:
            c.execute(sql, params)
            print("ran", sql)
        except psycopg.Error as e:
            print(e.sqlstate, str(e).splitlines()[0])
    print(c.execute("SELECT %s::int + 1", (41,)).fetchone()[0])
    print(c.execute("SHOW default_transaction_read_only").fetchone()[0])
"#;
    let printed = python(script, &ci);
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 5, "{printed}");
    for l in &lines[..3] {
        assert!(
            l.starts_with("25006 keyward: this resource is read_only"),
            "{printed}"
        );
    }
    assert_eq!(&lines[3..], ["42", "on"], "{printed}");
    // Startup options may not set it either.
    let (ok, _, err) = psql(
        &format!("{ci} options='-c default_transaction_read_only=off'"),
        "SELECT 1",
    );
    assert!(!ok);
    assert!(err.contains("read_only"), "{err}");
    let events = kw.wait_audit("the denials", |e| of(e, "denied").len() >= 9);
    let denied = of(&events, "denied");
    assert!(
        denied.iter().all(|d| d["rule"] == "read_only"),
        "{denied:#?}"
    );
    assert!(denied.iter().any(|d| d["statement"] == "BEGIN READ WRITE"));
}

#[test]
fn mysql_statements_are_audited_with_masked_literals() {
    let Some(m) = require(
        "MariaDB server and client",
        crate::support::maria::available(),
    )
    .then(crate::support::maria::shared) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "admin: null\naudit:\n  sink: stdout\nresources:\n  - name: maria\n    protocol: mysql\n    listen: 127.0.0.1:0\n    upstream: localhost:{}\n    audit: {{level: statements, mask_literals: true}}\n    tls:\n      ca: {}\n    auth:\n      type: password\n      username: nativeu\n      password: nativepw\n",
        m.port,
        m.ca_pem.display()
    );
    let path = dir.path().join("keyward.yaml");
    std::fs::write(&path, yaml).unwrap();
    let kw = Keyward::start(&path);
    let out = crate::support::maria::mariadb(
        kw.addr("maria").port(),
        &["app"],
        "SELECT 'maria-literal', 7; PREPARE s FROM 'SELECT ?'; EXECUTE s USING 'maria-param'",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = kw.wait_audit("the session's end", |e| !of(e, "session_end").is_empty());
    let statements: Vec<&str> = of(&events, "statement")
        .iter()
        .filter(|e| e["kind"] == "query")
        .map(|e| e["statement"].as_str().unwrap())
        .collect();
    // The mariadb client sends each statement of its -e text on its own.
    assert_eq!(
        statements,
        ["SELECT ?, ?", "PREPARE s FROM ?", "EXECUTE s USING ?"],
        "{events:#?}"
    );
    let start = of(&events, "session_start")[0];
    assert_eq!(start["identity"], "nativeu", "{start}");
    assert_eq!(start["protocol"], "mysql");
    let all = kw.stdout.lock().unwrap().join("\n");
    for never in ["maria-literal", "maria-param", "nativepw"] {
        assert!(!all.contains(never), "{never} in the audit trail:\n{all}");
    }
}

/// One RESP reply, as text: `+OK`, `-ERR ...`, `:1`, or a bulk string's content.
fn resp_reply(r: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let line = line.trim_end().to_owned();
    match line.strip_prefix('$') {
        Some("-1") => "(nil)".to_owned(),
        Some(n) => {
            let mut body = vec![0; n.parse::<usize>().unwrap() + 2];
            r.read_exact(&mut body).unwrap();
            String::from_utf8_lossy(&body[..body.len() - 2]).into_owned()
        }
        None if line.starts_with('*') => {
            let n: usize = line[1..].parse().unwrap();
            (0..n).map(|_| resp_reply(r)).collect::<Vec<_>>().join(",")
        }
        None => line,
    }
}

fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

#[test]
fn redis_command_rules_answer_noperm_in_order_and_commands_are_audited() {
    if !require(
        "redis-server and redis-cli",
        have("redis-server") && have("redis-cli"),
    ) {
        return;
    }
    let pki = Pki::new();
    let f = files(&pki);
    let redis = redis_with_password(&pki, &f);
    let cfg = pki.write(
        "keyward.yaml",
        &format!(
            "admin: null\naudit:\n  sink: stdout\nresources:\n  - name: cache\n    protocol: redis\n    listen: 127.0.0.1:0\n    upstream: localhost:{}\n    audit: statements\n    allow:\n      - commands: [\"@read\", \"@connection\", SET, MSET, FLUSHALL]\n    deny:\n      - commands: [\"@dangerous\"]\n    tls:\n      ca: {}\n      client_cert: {}\n      client_key: {}\n    auth:\n      type: password\n      password: ${{file:pw}}\n",
            redis.port,
            f.ca.display(),
            f.client_cert.display(),
            f.client_key.display(),
        ),
    );
    let keyward = Keyward::start(&cfg);
    let addr = keyward.addr("cache");
    // One pipelined write: each reply in the order of its command.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let pipeline = [
        resp(&["SET", "audit:k", "audit-secret-value"]),
        resp(&["FLUSHALL"]),
        resp(&["GET", "audit:k"]),
        resp(&["DEL", "audit:k"]),
        resp(&["CONFIG", "GET", "maxmemory"]),
        b"keys *\r\n".to_vec(),
        resp(&["MSET", "audit:a", "1", "audit:b", "2"]),
        resp(&["PING"]),
    ]
    .concat();
    s.write_all(&pipeline).unwrap();
    let replies: Vec<String> = (0..8).map(|_| resp_reply(&mut r)).collect();
    assert_eq!(
        replies,
        [
            "+OK",
            "-NOPERM keyward: command \"FLUSHALL\" is not allowed",
            "audit-secret-value",
            "-NOPERM keyward: command \"DEL\" is not allowed",
            "-NOPERM keyward: command \"CONFIG\" is not allowed",
            "-NOPERM keyward: command \"KEYS\" is not allowed",
            "+OK",
            "+PONG",
        ],
        "{}",
        keyward.log_text()
    );
    // redis-cli shows the refusal as Redis's own error.
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string(), "FLUSHDB"])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("NOPERM keyward: command \"FLUSHDB\" is not allowed"),
        "{shown}"
    );
    drop(r);
    drop(s);
    let events = keyward.wait_audit("two session ends", |e| of(e, "session_end").len() >= 2);
    let commands: Vec<(String, Value)> = of(&events, "statement")
        .iter()
        .map(|e| (e["command"].as_str().unwrap().to_owned(), e["keys"].clone()))
        .collect();
    assert!(commands.contains(&("SET".into(), 1.into())), "{commands:?}");
    assert!(commands.contains(&("GET".into(), 1.into())), "{commands:?}");
    assert!(
        commands.contains(&("MSET".into(), 2.into())),
        "{commands:?}"
    );
    assert!(
        commands.contains(&("PING".into(), 0.into())),
        "{commands:?}"
    );
    let denied: Vec<(String, String)> = of(&events, "denied")
        .iter()
        .map(|e| {
            (
                e["command"].as_str().unwrap().to_owned(),
                e["rule"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for want in [
        ("FLUSHALL", "deny @dangerous"),
        ("DEL", "no allow rule matched"),
        ("CONFIG", "deny @dangerous"),
        ("KEYS", "deny @dangerous"),
        ("FLUSHDB", "deny @dangerous"),
    ] {
        assert!(
            denied.contains(&(want.0.to_owned(), want.1.to_owned())),
            "{want:?} not in {denied:?}"
        );
    }
    let all = keyward.stdout.lock().unwrap().join("\n");
    assert!(
        !all.contains("audit-secret-value"),
        "an argument in the trail:\n{all}"
    );
}

/// A `tcp` resource behind `listen_tls` with required client certificates: the session
/// names the app's certificate; a connection without one ends refused, with no start.
#[test]
fn a_tcp_session_under_listen_tls_names_the_apps_certificate() {
    if !require("nginx and curl", nginx_available() && have("curl")) {
        return;
    }
    let pki = Pki::new();
    let f = files(&pki);
    let nginx = Nginx::start(pki.dir.path(), &f.ca, &f.server_cert, &f.server_key);
    let listen = pki.server(&["localhost"]);
    let lcert = pki.write("listen.pem", &listen.cert_pem);
    let lkey = pki.write("listen.key", &listen.key_pem);
    let cfg = pki.write(
        "keyward.yaml",
        &format!(
            "admin: null\naudit:\n  sink: stdout\nresources:\n  - name: tunnel\n    protocol: tcp\n    listen: 127.0.0.1:0\n    listen_tls:\n      cert: {}\n      key: {}\n      client_ca: {}\n      require_client_cert: true\n    upstream: localhost:{}\n    tls:\n      ca: {}\n      client_cert: {}\n      client_key: {}\n",
            lcert.display(),
            lkey.display(),
            f.ca.display(),
            nginx.port,
            f.ca.display(),
            f.client_cert.display(),
            f.client_key.display()
        ),
    );
    let keyward = Keyward::start(&cfg);
    let url = format!("https://localhost:{}/t", keyward.addr("tunnel").port());
    let (app_cert, app_key) = pki.write_client("app", "billing-app");
    let cacert = f.ca.display().to_string();
    let (ac, ak) = (
        app_cert.display().to_string(),
        app_key.display().to_string(),
    );
    let ok = curl(&["--cacert", &cacert, "--cert", &ac, "--key", &ak, &url]);
    assert!(
        ok.contains("status=200") && ok.contains("client_dn=CN=keyward-audit"),
        "{ok}"
    );
    let refused = curl(&["--cacert", &cacert, &url]);
    assert!(!refused.contains("status=200"), "{refused}");
    let events = keyward.wait_audit("two session ends", |e| of(e, "session_end").len() >= 2);
    let starts = of(&events, "session_start");
    assert_eq!(starts.len(), 1, "{events:#?}");
    let start = starts[0];
    assert_eq!(start["protocol"], "tcp");
    assert!(
        start["client_cert"]
            .as_str()
            .unwrap()
            .contains("CN=billing-app"),
        "{start}"
    );
    let ends = of(&events, "session_end");
    let ok_end = ends
        .iter()
        .find(|e| e["session"] == start["session"])
        .unwrap();
    assert_eq!(ok_end["outcome"], "closed", "{ok_end}");
    assert_eq!(ok_end["client_cert"], start["client_cert"]);
    let refused_end = ends
        .iter()
        .find(|e| e["session"] != start["session"])
        .unwrap();
    assert_eq!(refused_end["outcome"], "error", "{refused_end}");
    assert_eq!(refused_end["side"], "client", "{refused_end}");
}

/// The audit block reloads: a sink that cannot be opened is refused with its key named and
/// the running one kept; a good one replaces it.
#[test]
fn the_audit_sink_reloads_and_a_bad_one_is_refused_keeping_the_old() {
    if !require("nginx and curl", nginx_available() && have("curl")) {
        return;
    }
    let pki = Pki::new();
    let f = files(&pki);
    let nginx = Nginx::start(pki.dir.path(), &f.ca, &f.server_cert, &f.server_key);
    let write = |audit: &str| {
        pki.write("token", "kw-e2e-token\n");
        pki.write(
            "keyward.yaml",
            &format!(
                "admin: null\naudit:\n{audit}resources:\n  - name: api\n    protocol: http\n    listen: 127.0.0.1:0\n    upstream: https://localhost:{}\n    tls:\n      ca: {}\n      client_cert: {}\n      client_key: {}\n    auth:\n      type: bearer\n      token: ${{file:token}}\n",
                nginx.port,
                f.ca.display(),
                f.client_cert.display(),
                f.client_key.display()
            ),
        )
    };
    let cfg = write("  sink: stdout\n");
    let keyward = Keyward::start(&cfg);
    let url = format!("http://{}/r", keyward.addr("api"));
    assert!(curl(&[&url]).contains("status=200"));
    keyward.wait_audit("a session end on stdout", |e| {
        of(e, "session_end").len() == 1
    });
    let missing = pki.dir.path().join("no-such-dir").join("audit.jsonl");
    write(&format!("  sink: file\n  path: {}\n", missing.display()));
    let refused = keyward.wait_log("the refused reload", |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("reload failed") && m.contains("audit.path"))
    });
    assert!(
        refused["message"].as_str().unwrap().contains("no-such-dir"),
        "{refused}"
    );
    assert!(curl(&[&url]).contains("status=200"));
    keyward.wait_audit("the old sink still writes", |e| {
        of(e, "session_end").len() == 2
    });
    let file = pki.dir.path().join("audit.jsonl");
    write(&format!("  sink: file\n  path: {}\n", file.display()));
    keyward.wait_log("the reload", |v| v["message"] == "configuration reloaded");
    assert!(curl(&[&url]).contains("status=200"));
    wait_until("a session end in the file", || {
        std::fs::read_to_string(&file).is_ok_and(|t| t.contains("\"event\":\"session_end\""))
    });
    assert_eq!(
        of(&keyward.audit_events(), "session_end").len(),
        2,
        "stdout gets nothing after the switch"
    );
}
