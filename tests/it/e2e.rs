//! End to end: the built binary in front of real servers (Redis, nginx) that the test starts,
//! driven by their real clients (redis-cli, curl). Missing binaries skip, or fail with
//! KEYWARD_E2E=require.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use keyward::pki::Ca;

use crate::support::procs::{have, nginx_available, wait_until, Keyward, Nginx, Redis};
use crate::support::{require, Pki};

type Files = crate::support::TlsFiles;

fn files(pki: &Pki) -> Files {
    Files::new(pki, "keyward-e2e")
}

fn config(pki: &Pki, name: &str, port: u16, ca: &Path, f: &Files) -> PathBuf {
    pki.write(
        "keyward.yaml",
        &format!(
            "admin: null\nresources:\n  - name: {name}\n    protocol: tcp\n    listen: 127.0.0.1:0\n    upstream: localhost:{port}\n    tls:\n      ca: {}\n      client_cert: {}\n      client_key: {}\n",
            ca.display(),
            f.client_cert.display(),
            f.client_key.display()
        ),
    )
}

fn curl(url: &str) -> (i32, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", url])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn plaintext_redis_cli_reaches_a_tls_only_redis_that_requires_a_client_cert() {
    if !require(
        "redis-server and redis-cli",
        have("redis-server") && have("redis-cli"),
    ) {
        return;
    }
    let pki = Pki::new();
    let f = files(&pki);
    let redis = Redis::start(
        pki.dir.path(),
        &f.ca,
        &f.server_cert,
        &f.server_key,
        &f.client_cert,
        &f.client_key,
    );
    // Without keyward, a plaintext client gets nowhere.
    let direct = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &redis.port.to_string(), "PING"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&direct.stdout).contains("PONG"));

    let keyward = Keyward::start(&config(&pki, "cache", redis.port, &f.ca, &f));
    let addr = keyward.addr("cache");
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(cli(&["PING"]), "PONG", "{}", keyward.log_text());
    assert_eq!(cli(&["SET", "app:k", "through keyward"]), "OK");
    assert_eq!(cli(&["GET", "app:k"]), "through keyward");
}

#[test]
fn plaintext_curl_reaches_an_mtls_nginx_which_saw_keywards_client_cert() {
    if !require("nginx and curl", nginx_available() && have("curl")) {
        return;
    }
    let pki = Pki::new();
    let f = files(&pki);
    let nginx = Nginx::start(pki.dir.path(), &f.ca, &f.server_cert, &f.server_key);
    let keyward = Keyward::start(&config(&pki, "api", nginx.port, &f.ca, &f));
    let addr = keyward.addr("api");
    let (code, body) = curl(&format!("http://{addr}/hello?x=1"));
    assert_eq!(code, 0, "{body}\n{}", keyward.log_text());
    assert!(body.contains("client_dn=CN=keyward-e2e\n"), "{body}");
    assert!(body.contains("client_verify=SUCCESS\n"), "{body}");
    assert!(body.contains("tls=TLSv1.3\n"), "{body}");
    assert!(body.contains("sni=localhost\n"), "{body}");
    assert!(body.contains("uri=/hello?x=1\n"), "{body}");
}

#[test]
fn a_wrong_ca_closes_the_client_connection_and_the_log_names_the_reason() {
    if !require("nginx and curl", nginx_available() && have("curl")) {
        return;
    }
    let pki = Pki::new();
    let f = files(&pki);
    let nginx = Nginx::start(pki.dir.path(), &f.ca, &f.server_cert, &f.server_key);
    let wrong = Ca::new("some other CA").unwrap();
    let wrong_ca = pki.write("wrong-ca.pem", &wrong.cert.cert_pem);
    let keyward = Keyward::start(&config(&pki, "api", nginx.port, &wrong_ca, &f));
    let addr = keyward.addr("api");
    let (code, out) = curl(&format!("http://{addr}/"));
    // 52: closed with no reply; 56: reset (the request was unread when keyward closed).
    assert!(
        code == 52 || code == 56,
        "curl must see the connection closed with no reply: {code} {out}"
    );
    let line = keyward.wait_log("the failure's warn line", |v| {
        v["level"] == "WARN" && v["reason"] == "unknown_issuer"
    });
    assert_eq!(line["side"], "upstream");
    assert!(
        line["message"].as_str().unwrap().contains("unknown issuer"),
        "{line}"
    );
    assert_eq!(line["span"]["resource"], "api", "{line}");
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let pki = Pki::new();
    let cfg = pki.write("keyward.yaml", "admin: null\nshutdown_grace: 5s\nresources:\n  - name: t\n    protocol: tcp\n    listen: 127.0.0.1:0\n    upstream: localhost:1\n    tls:\n      mode: insecure\n");
    let mut keyward = Keyward::start(&cfg);
    keyward.addr("t");
    keyward.wait_log("the insecure warning", |v| {
        v["level"] == "WARN"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.contains("insecure"))
    });
    assert!(Command::new("kill")
        .args(["-TERM", &keyward.pid().to_string()])
        .status()
        .unwrap()
        .success());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = keyward.proc.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "keyward did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{}", keyward.log_text());
    wait_until("the shutdown log line", || {
        keyward.log_text().contains("SIGTERM received")
    });
}

#[test]
fn the_demo_runs_with_nothing_else_installed() {
    let out = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["demo", "--once"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("HTTP 200 OK"), "{stdout}");
    assert!(
        stdout.contains("client_cert_subject: CN=keyward-demo-client"),
        "{stdout}"
    );
    assert!(stdout.contains("tls_version: TLSv1_3"), "{stdout}");
    assert!(stdout.contains("request: GET /api/hello"), "{stdout}");
    assert!(
        stdout.contains("authorization: Bearer <the demo token keyward holds>"),
        "{stdout}"
    );
    assert!(stdout.contains("curl -s http://127.0.0.1:"), "{stdout}");
}

/// Issue 17 item 7: plain logs to a pipe or file carry no ANSI colour codes.
#[test]
fn plain_logs_to_a_pipe_have_no_colour_codes() {
    use std::io::{BufRead, BufReader};
    let pki = Pki::new();
    let cfg = pki.write("keyward.yaml", "admin: null\nresources:\n  - name: plain\n    protocol: tcp\n    listen: 127.0.0.1:0\n    upstream: localhost:1\n    tls:\n      mode: disable\n");
    let mut child = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["--log-format", "plain", "run", "-c"])
        .arg(&cfg)
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let done = line.contains("listening");
        seen.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.iter().any(|l| l.contains("listening")), "{seen:?}");
    assert!(
        seen.iter().all(|l| !l.contains('\u{1b}')),
        "colour codes in a piped log: {seen:?}"
    );
}

#[test]
fn allow_remote_listener_is_bound_with_a_warning() {
    let pki = Pki::new();
    let cfg = pki.write("keyward.yaml", "admin: null\nresources:\n  - name: wide\n    protocol: tcp\n    listen: 0.0.0.0:0\n    allow_remote: true\n    upstream: localhost:1\n");
    let keyward = Keyward::start(&cfg);
    assert!(keyward.addr("wide").ip().is_unspecified());
    let line = keyward.wait_log("the allow_remote warning", |v| {
        v["level"] == "WARN" && v["resource"] == "wide"
    });
    assert!(
        line["message"].as_str().unwrap().contains("non-loopback"),
        "{line}"
    );
}

/// `keyward_worker_connections{worker="N"}` from the admin endpoint's /metrics.
fn worker_connections(admin: std::net::SocketAddr) -> Vec<i64> {
    let (code, body) = curl(&format!("http://{admin}/metrics"));
    assert_eq!(code, 0, "{body}");
    let mut loads = body
        .lines()
        .filter_map(|l| l.strip_prefix("keyward_worker_connections{worker=\""))
        .map(|l| {
            let (worker, value) = l.split_once("\"} ").unwrap();
            (
                worker.parse::<usize>().unwrap(),
                value.parse::<i64>().unwrap(),
            )
        })
        .collect::<Vec<_>>();
    loads.sort();
    loads.into_iter().map(|(_, v)| v).collect()
}

/// A config with an admin endpoint and one `tcp` resource `t` (no TLS) in front of an
/// upstream at `host` that holds every connection until its app closes (a `tcp` resource
/// without TLS connects to it at accept).
fn sink_config(pki: &Pki, host: &str) -> PathBuf {
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = upstream.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in upstream.incoming().map_while(Result::ok) {
            std::thread::spawn(move || std::io::copy(&mut s, &mut std::io::sink()));
        }
    });
    pki.write(
        "keyward.yaml",
        &format!("admin: {{ listen: 127.0.0.1:0 }}\nresources:\n  - name: t\n    protocol: tcp\n    listen: 127.0.0.1:0\n    upstream: {host}:{port}\n    tls: {{ mode: disable }}\n"),
    )
}

#[test]
fn connections_opened_at_once_are_shared_evenly_by_the_workers() {
    let pki = Pki::new();
    let cfg = sink_config(&pki, "127.0.0.1");
    let keyward = Keyward::start_with_env(
        &["run".as_ref(), "-c".as_ref(), cfg.as_os_str()],
        &[("KEYWARD_WORKER_THREADS", "3".as_ref())],
    );
    let (addr, admin) = (keyward.addr("t"), keyward.admin_addr());
    assert_eq!(worker_connections(admin), [0, 0, 0]);
    // A burst, as a pool or a load generator opens them: whichever worker wakes first accepts
    // each one, and the others would idle if connections stayed where they landed.
    let apps = (0..24)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect::<Vec<_>>();
    let mut loads = Vec::new();
    wait_until("24 connections counted", || {
        loads = worker_connections(admin);
        loads.iter().sum::<i64>() == 24
    });
    // At most two apart when each one is placed (three if two workers place at once).
    assert!(
        loads.iter().max().unwrap() - loads.iter().min().unwrap() <= 3,
        "{loads:?}"
    );
    drop(apps);
    wait_until("the closed connections uncounted", || {
        worker_connections(admin) == [0, 0, 0]
    });
    // Moved or not, every connection was relayed: all 24 reached the upstream and ended.
    let m = curl(&format!("http://{admin}/metrics")).1;
    assert!(
        m.contains("keyward_connections_total{protocol=\"tcp\",resource=\"t\"} 24"),
        "{m}"
    );
}

/// Issue 14's thread bound: with 200 connections open keyward runs its workers (one per core),
/// jemalloc's purging threads (one per CPU: `percpu_arena`, from `.cargo/config.toml`), the
/// main thread, the main runtime's one worker and the file watcher, and no thread per
/// connection or per upstream name lookup (the upstream is `localhost`, a name).
#[test]
fn threads_stay_bounded_by_the_cores_with_connections_open() {
    let pki = Pki::new();
    let cfg = sink_config(&pki, "localhost");
    let keyward = Keyward::start(&cfg);
    let (addr, admin) = (keyward.addr("t"), keyward.admin_addr());
    let apps = (0..200)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect::<Vec<_>>();
    wait_until("200 connections counted", || {
        worker_connections(admin).iter().sum::<i64>() == 200
    });
    let workers = worker_connections(admin).len();
    let cpus = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let tasks = format!("/proc/{}/task", keyward.proc.child.id());
    let names: Vec<String> = std::fs::read_dir(&tasks)
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    let purging = names
        .iter()
        .filter(|n| n.starts_with("jemalloc_bg"))
        .count();
    assert!(
        purging <= cpus,
        "{purging} purging threads on {cpus} CPUs: {names:?}"
    );
    assert!(
        names.len() <= workers + cpus + 3,
        "{} threads with {workers} workers on {cpus} CPUs: {names:?}",
        names.len()
    );
    drop(apps);
}

fn http_config(pki: &Pki, port: u16, f: &Files, auth: &str) -> PathBuf {
    pki.write(
        "keyward.yaml",
        &format!(
            "admin: null\nresources:\n  - name: api\n    protocol: http\n    listen: 127.0.0.1:0\n    upstream: https://localhost:{port}/v2\n    tls:\n      ca: {}\n      client_cert: {}\n      client_key: {}\n{auth}",
            f.ca.display(),
            f.client_cert.display(),
            f.client_key.display()
        ),
    )
}

fn curl_with(args: &[&str]) -> (i32, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn curl_through_an_http_resource_gets_the_bearer_token_injected_into_mtls_nginx() {
    if !require("nginx and curl", nginx_available() && have("curl")) {
        return;
    }
    let pki = Pki::new();
    let f = files(&pki);
    let nginx = Nginx::start(pki.dir.path(), &f.ca, &f.server_cert, &f.server_key);
    pki.write("token", "kw-e2e-token\n");
    let cfg = http_config(&pki, nginx.port, &f, "    auth:\n      type: bearer\n      token: ${file:token}\n    headers:\n      X-Tenant: acme\n");
    let keyward = Keyward::start(&cfg);
    let addr = keyward.addr("api");
    // The app sends its own Authorization: two Authorization headers would make nginx answer
    // 400, so a 200 proves keyward replaced it.
    let (code, body) = curl_with(&[
        "-H",
        "Authorization: Bearer app-token",
        "-w",
        "\nstatus=%{http_code}\n",
        &format!("http://{addr}/items?x=1"),
    ]);
    assert_eq!(code, 0, "{body}");
    assert!(
        body.contains("status=200"),
        "{body}\n{}",
        keyward.log_text()
    );
    assert!(
        body.contains("authorization=Bearer kw-e2e-token\n"),
        "{body}"
    );
    assert!(body.contains("client_dn=CN=keyward-e2e\n"), "{body}");
    assert!(body.contains("uri=/v2/items?x=1\n"), "{body}");
    assert!(body.contains("x-tenant=acme\n"), "{body}");
    assert!(
        body.contains(&format!("host=localhost:{}\n", nginx.port)),
        "{body}"
    );
    assert!(body.contains("tls=TLSv1.3\n"), "{body}");
}

#[test]
fn curl_through_an_http_resource_gets_the_api_key_injected() {
    if !require("nginx and curl", nginx_available() && have("curl")) {
        return;
    }
    let pki = Pki::new();
    let f = files(&pki);
    let nginx = Nginx::start(pki.dir.path(), &f.ca, &f.server_cert, &f.server_key);
    let cfg = http_config(
        &pki,
        nginx.port,
        &f,
        "    auth:\n      type: api_key\n      header: X-API-Key\n      value: ${file:key}\n",
    );
    pki.write("key", "k-live-123");
    let keyward = Keyward::start(&cfg);
    let (code, body) = curl_with(&[
        "-H",
        "X-API-Key: app-key",
        &format!("http://{}/", keyward.addr("api")),
    ]);
    assert_eq!(code, 0, "{body}");
    assert!(body.contains("x-api-key=k-live-123\n"), "{body}");
    assert!(body.contains("authorization=\n"), "{body}");
}

#[test]
fn curl_sees_a_502_with_the_reason_when_the_http_upstream_has_the_wrong_ca() {
    if !require("nginx and curl", nginx_available() && have("curl")) {
        return;
    }
    let pki = Pki::new();
    let f = files(&pki);
    let nginx = Nginx::start(pki.dir.path(), &f.ca, &f.server_cert, &f.server_key);
    let wrong = Ca::new("some other CA").unwrap();
    let mut f2 = files(&pki);
    f2.ca = pki.write("wrong-ca.pem", &wrong.cert.cert_pem);
    let _ = &f;
    let keyward = Keyward::start(&http_config(&pki, nginx.port, &f2, ""));
    let (code, out) = curl_with(&["-i", &format!("http://{}/", keyward.addr("api"))]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("x-keyward-error: unknown_issuer"),
        "{out}"
    );
    assert!(
        out.contains("keyward: upstream \"api\": unknown issuer"),
        "{out}"
    );
}

/// An HTTP/2 upstream (nginx with `http2`, ALPN h2): GET and POST through keyward get 200,
/// with and without `preserve_host`. keyward used to send a `Host` header beside hyper's
/// `:authority`, which nginx answers with 400 "client sent duplicate host header".
#[test]
fn an_http2_nginx_upstream_accepts_get_and_post_with_and_without_preserve_host() {
    if !require("nginx and curl", nginx_available() && have("curl")) {
        return;
    }
    let pki = Pki::new();
    let f = files(&pki);
    let nginx = Nginx::start(pki.dir.path(), &f.ca, &f.server_cert, &f.server_key);
    for (preserve, expected_host) in [
        (false, format!("localhost:{}", nginx.h2_port)),
        (true, "app.internal".to_owned()),
    ] {
        let extra = if preserve {
            "    preserve_host: true\n"
        } else {
            ""
        };
        let cfg = http_config(&pki, nginx.h2_port, &f, extra);
        let keyward = Keyward::start(&cfg);
        let addr = keyward.addr("api");
        for post in [false, true] {
            let mut args = vec![
                "-H".to_owned(),
                "Host: app.internal".to_owned(),
                "-w".to_owned(),
                "\nstatus=%{http_code}\n".to_owned(),
            ];
            if post {
                args.extend(["--data".to_owned(), "x=1".to_owned()]);
            }
            args.push(format!("http://{addr}/items"));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (code, body) = curl_with(&args);
            assert_eq!(code, 0, "{body}");
            assert!(
                body.contains("status=200") && body.contains("protocol=HTTP/2.0"),
                "preserve_host={preserve} post={post}: {body}\n{}",
                keyward.log_text()
            );
            assert!(
                body.contains(&format!("host={expected_host}\n")),
                "preserve_host={preserve}: {body}"
            );
        }
    }
}
