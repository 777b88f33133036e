//! Hot reload, admin endpoint, metrics and drain: the built binary, real TLS upstreams
//! in-process, files rotated underneath it the ways editors and Kubernetes do.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use keyward::pki::Usage;
use rustls::version::{TLS12, TLS13};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::httpd::{always_ok, httpd, Httpd};
use crate::support::procs::{have, Keyward};
use crate::support::{require, roundtrip, server_config, try_roundtrip, upstream, Behavior, Pki};

const BOTH: &[&rustls::SupportedProtocolVersion] = &[&TLS13, &TLS12];

/// Polls `check` every 20 ms until true, for at most `secs` seconds.
async fn eventually(what: &str, secs: u64, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: not within {secs} s");
}

/// Writes `text` to `path` atomically: a temp file in the same directory, then rename.
fn write_renamed(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Kubernetes' atomic update: a new timestamped dir, then `..data` swapped; the visible names
/// are symlinks through `..data`.
fn k8s_update(dir: &Path, version: usize, files: &[(&str, &str)]) {
    let stamp = dir.join(format!("..2026_11_23_{version:04}"));
    std::fs::create_dir_all(&stamp).unwrap();
    for (name, text) in files {
        std::fs::write(stamp.join(name), text).unwrap();
        let visible = dir.join(name);
        if std::fs::symlink_metadata(&visible).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &visible).unwrap();
        }
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(stamp.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

fn get(url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5", "-w", "\n%{http_code}", url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.parse().unwrap_or(0), body.to_owned())
}

fn post(url: &str) -> u16 {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "--max-time",
            "5",
            "-X",
            "POST",
            "-w",
            "%{http_code}",
            url,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0)
}

fn metric(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

fn tcp_resource(name: &str, port: u16, listen: &str, tls: &str) -> String {
    format!("  - name: {name}\n    protocol: tcp\n    listen: {listen}\n    upstream: localhost:{port}\n    tls:\n{tls}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_the_admin_endpoints_answer() {
    if !require("curl and promtool", have("curl") && have("promtool")) {
        return;
    }
    let pki = Pki::new();
    let up = upstream(
        server_config(&pki.server(&["localhost"]), Some(&pki.ca), BOTH),
        Behavior::Echo,
    )
    .await;
    let api = httpd(
        &pki.server(&["localhost"]),
        None,
        &[b"h2", b"http/1.1"],
        always_ok(),
    )
    .await;
    pki.write_ca();
    pki.write_client("client", "kw-metrics");
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let yaml = format!(
        "admin:\n  listen: 127.0.0.1:0\n  shutdown_endpoint: true\nresources:\n{}{}  - name: tokens\n    protocol: http\n    listen: 127.0.0.1:0\n    upstream: https://localhost:{}\n    tls:\n      ca: ca.pem\n    auth:\n      type: oauth2\n      token_url: https://localhost:{down}/token\n      client_id: kw\n      client_secret: metrics-client-secret\n      tls:\n        ca: ca.pem\n  - name: api\n    protocol: http\n    listen: 127.0.0.1:0\n    upstream: https://localhost:{}\n    tls:\n      ca: ca.pem\n    auth:\n      type: bearer\n      token: metrics-test-token\n",
        tcp_resource("echo", up.port(), "127.0.0.1:0", "      ca: ca.pem\n      client_cert: client.pem\n      client_key: client.key\n"),
        tcp_resource("down", down, "127.0.0.1:0", "      ca: ca.pem\n"),
        api.port(),
        api.port()
    );
    let kw = Keyward::start(&pki.write("keyward.yaml", &yaml));
    let echo = kw.addr("echo");
    let api_addr = kw.addr("api");
    let base = format!("http://{}", kw.admin_addr());
    assert_eq!(get(&format!("{base}/healthz")).0, 200);
    assert_eq!(get(&format!("{base}/startupz")).0, 200);
    let (code, ready) = get(&format!("{base}/readyz"));
    assert_eq!((code, ready.trim()), (200, "{\"ready\":true}"));
    // Traffic: a relayed connection, HTTP requests, a failure.
    assert_eq!(roundtrip(echo, b"ping").await, b"ping");
    assert_eq!(get(&format!("http://{api_addr}/x")).0, 200);
    assert_eq!(roundtrip(kw.addr("down"), b"ping").await, b"");
    let (code, resources) = get(&format!("{base}/resources"));
    assert_eq!(code, 200);
    let json: serde_json::Value = serde_json::from_str(&resources).unwrap();
    assert_eq!(json[0]["name"], "api");
    assert_eq!(json[0]["requests"]["200"], 1, "{resources}");
    assert!(json[1]["requests"].is_null(), "{resources}");
    assert_eq!(json[1]["name"], "down");
    assert_eq!(json[1]["last_error"]["reason"], "connect_refused");
    assert_eq!(json[2]["name"], "echo");
    assert_eq!(json[2]["client_cert"]["subject"], "CN=kw-metrics");
    assert_eq!(json[2]["tls_mode"], "verify-full");
    assert!(!resources.contains("metrics-client-secret"));
    assert!(!resources.contains("metrics-test-token"));
    assert!(
        !body_contains_secret(&kw.log_text()),
        "a secret reached the log"
    );
    let (_, body) = get(&format!("{base}/metrics"));
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), body.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "promtool warnings: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // promtool does not catch duplicate series or a missing +Inf bucket: check here.
    let mut series = std::collections::HashSet::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let key = line.rsplit_once(' ').unwrap().0;
        assert!(series.insert(key.to_owned()), "duplicate series {key}");
    }
    for h in [
        "keyward_upstream_connect_seconds",
        "keyward_tls_handshake_seconds",
    ] {
        assert!(
            body.contains(&format!("{h}_bucket{{resource=\"echo\",le=\"+Inf\"}}")),
            "{h} +Inf bucket"
        );
    }
    for name in [
        "keyward_connections_total{protocol=\"tcp\",resource=\"echo\"} 1",
        "keyward_connections_open{resource=\"echo\"}",
        "keyward_bytes_total{direction=\"client_to_upstream\",resource=\"echo\"} 4",
        "keyward_bytes_total{direction=\"upstream_to_client\",resource=\"echo\"} 4",
        "keyward_http_requests_total{code=\"200\",resource=\"api\"} 1",
        "keyward_bytes_total{direction=\"upstream_to_client\",resource=\"api\"} 2",
        "keyward_config_reloads_total{result=\"success\"} 1",
        "keyward_config_last_reload_success_timestamp_seconds",
        "keyward_cert_expiration_timestamp_seconds{resource=\"echo\",role=\"client_cert\"}",
        "keyward_cert_expiration_timestamp_seconds{resource=\"echo\",role=\"ca\"}",
        "keyward_cert_expiration_timestamp_seconds{resource=\"echo\",role=\"upstream_leaf\"}",
        "keyward_credential_reads_total{resource=\"api\",result=\"success\"}",
        "keyward_build_info{version=",
        "keyward_upstream_auth_seconds_count{resource=\"tokens\"} 0",
        "keyward_oauth2_token_refreshes_total{resource=\"tokens\",result=\"success\"} 0",
        "keyward_http_request_duration_seconds_count{class=\"2xx\",resource=\"api\"} 1",
        "keyward_http_request_duration_seconds_bucket{class=\"2xx\",resource=\"api\",le=\"+Inf\"} 1",
        "keyward_config_last_reload_success 1",
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "keyward_connection_errors_total{reason=\"connect_refused\",resource=\"down\",side=\"upstream\"} 1",
    ] {
        assert!(body.contains(name), "{name} missing from /metrics:\n{body}");
    }
    // No series that can never move (issue 17 item 9): a tcp resource and an http resource
    // with a static header do no timed credential work; a tcp resource without TLS has no
    // handshake.
    for never in [
        "keyward_upstream_auth_seconds_count{resource=\"echo\"}",
        "keyward_upstream_auth_seconds_count{resource=\"api\"}",
        "keyward_upstream_auth_seconds_count{resource=\"down\"}",
    ] {
        assert!(!body.contains(never), "{never} can never move:\n{body}");
    }
    assert_eq!(post(&format!("{base}/quitquitquit")), 200);
    let mut kw = kw;
    let start = Instant::now();
    while kw.proc.child.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "/quitquitquit did not stop keyward"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A running keyward with one tcp resource "r" in front of an mTLS echo upstream, admin on.
struct Running {
    pki: Pki,
    kw: Keyward,
    admin: std::net::SocketAddr,
    config: PathBuf,
    up: crate::support::Upstream,
}

async fn running(extra: &str) -> Running {
    let pki = Pki::new();
    let up = upstream(
        server_config(&pki.server(&["localhost"]), Some(&pki.ca), BOTH),
        Behavior::Echo,
    )
    .await;
    pki.write_ca();
    pki.write_client("client", "kw-reload");
    let yaml = format!(
        "admin:\n  listen: 127.0.0.1:0\nshutdown_grace: 5s\n{extra}resources:\n{}",
        tcp_resource(
            "r",
            up.port(),
            "127.0.0.1:0",
            "      ca: ca.pem\n      client_cert: client.pem\n      client_key: client.key\n"
        )
    );
    let config = pki.write("keyward.yaml", &yaml);
    let kw = Keyward::start(&config);
    kw.addr("r");
    let admin = kw.admin_addr();
    Running {
        pki,
        kw,
        admin,
        config,
        up,
    }
}

impl Running {
    fn metrics(&self) -> String {
        get(&format!("http://{}/metrics", self.admin)).1
    }

    fn reload_errors(&self) -> f64 {
        metric(
            &self.metrics(),
            "keyward_config_reloads_total{result=\"error\"}",
        )
    }

    fn reload_successes(&self) -> f64 {
        metric(
            &self.metrics(),
            "keyward_config_reloads_total{result=\"success\"}",
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_material_keeps_the_old_config_and_fixing_it_recovers() {
    let r = running("").await;
    let addr = r.kw.addr("r");
    let good_ca = std::fs::read_to_string(r.pki.path("ca.pem")).unwrap();
    let good_yaml = std::fs::read_to_string(&r.config).unwrap();
    // A certificate whose key is not client.key.
    let c2 = r.pki.ca.leaf("other", &[], Usage::Client).unwrap();
    type Breakage<'a> = (&'a str, Box<dyn Fn() + 'a>, &'a str);
    let cases: Vec<Breakage> = vec![
        (
            "truncated PEM",
            Box::new(|| write_renamed(&r.pki.path("ca.pem"), &good_ca[..good_ca.len() / 2])),
            "ca.pem",
        ),
        (
            "mismatched key",
            Box::new(|| write_renamed(&r.pki.path("client.pem"), &c2.cert_pem)),
            "key does not match certificate",
        ),
        (
            "YAML syntax error",
            Box::new(|| write_renamed(&r.config, &format!("{good_yaml}  - name: [\n"))),
            "keyward.yaml:",
        ),
        (
            "unknown key",
            Box::new(|| {
                write_renamed(
                    &r.config,
                    &good_yaml.replace(
                        "shutdown_grace: 5s",
                        "shutdown_grace: 5s\nshutdown_gracee: 1s",
                    ),
                )
            }),
            "shutdown_gracee",
        ),
    ];
    let client_pem = std::fs::read_to_string(r.pki.path("client.pem")).unwrap();
    for (what, breaks, expect_in_log) in cases {
        let errors = r.reload_errors();
        breaks();
        eventually(
            &format!("{what}: the reload error is counted"),
            10,
            async || r.reload_errors() > errors,
        )
        .await;
        let log = r.kw.log_text();
        assert!(
            log.lines().any(
                |l| l.contains("reload failed, keeping the running configuration")
                    && l.contains(expect_in_log)
            ),
            "{what}: no log line naming {expect_in_log}:\n{log}"
        );
        assert_eq!(
            roundtrip(addr, b"still served").await,
            b"still served",
            "{what}: the old configuration must keep serving"
        );
        // Fix it: the next event reloads successfully.
        let ok = r.reload_successes();
        write_renamed(&r.pki.path("ca.pem"), &good_ca);
        write_renamed(&r.pki.path("client.pem"), &client_pem);
        write_renamed(&r.config, &good_yaml);
        eventually(&format!("{what}: recovery"), 10, async || {
            r.reload_successes() > ok
        })
        .await;
        assert_eq!(roundtrip(addr, b"after fix").await, b"after fix");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_are_added_moved_and_removed_at_runtime_without_touching_live_connections() {
    let r = running("").await;
    let addr = r.kw.addr("r");
    let mut live = TcpStream::connect(addr).await.unwrap();
    live.write_all(b"1").await.unwrap();
    let mut b = [0u8; 1];
    live.read_exact(&mut b).await.unwrap();
    let base = std::fs::read_to_string(&r.config).unwrap();
    let tls = "      ca: ca.pem\n      client_cert: client.pem\n      client_key: client.key\n";
    // Added (on port 0: the address comes from keyward's log, no port race).
    let added_res = tcp_resource("added", r.up.port(), "127.0.0.1:0", tls);
    write_renamed(&r.config, &format!("{base}{added_res}"));
    let added = r.kw.addr("added");
    assert_eq!(roundtrip(added, b"new").await, b"new");
    live.write_all(b"2").await.unwrap();
    live.read_exact(&mut b).await.unwrap();
    assert_eq!(
        &b, b"2",
        "a live connection of another resource is untouched"
    );
    // Moved: r to another loopback address.
    let moved = base.replace(
        &format!(
            "listen: 127.0.0.1:0\n    upstream: localhost:{}",
            r.up.port()
        ),
        &format!(
            "listen: 127.0.0.2:0\n    upstream: localhost:{}",
            r.up.port()
        ),
    );
    write_renamed(&r.config, &format!("{moved}{added_res}"));
    let moved_addr = r.kw.addr_other_than("r", addr);
    assert_eq!(moved_addr.ip().to_string(), "127.0.0.2");
    eventually("old address closed", 10, async || {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    live.write_all(b"3").await.unwrap();
    live.read_exact(&mut b).await.unwrap();
    assert_eq!(
        &b, b"3",
        "the moved resource's live connection drains, it is not cut"
    );
    // Removed.
    write_renamed(&r.config, &moved);
    eventually("resource removed", 10, async || {
        TcpStream::connect(added).await.is_err()
    })
    .await;
    assert_eq!(roundtrip(moved_addr, b"r").await, b"r");
}

/// An HTTPS API and keyward in front of it (resource "api") injecting a bearer token read from
/// `secrets/token` (Kubernetes-style symlinked directory), which holds `first-token`.
async fn bearer_from_a_file() -> (Pki, Httpd, PathBuf, Keyward) {
    let pki = Pki::new();
    let api = httpd(
        &pki.server(&["localhost"]),
        None,
        &[b"http/1.1"],
        always_ok(),
    )
    .await;
    pki.write_ca();
    let secrets = pki.path("secrets");
    k8s_update(&secrets, 0, &[("token", "first-token\n")]);
    let yaml = format!("admin: null\nresources:\n  - name: api\n    protocol: http\n    listen: 127.0.0.1:0\n    upstream: https://localhost:{}\n    tls:\n      ca: ca.pem\n    auth:\n      type: bearer\n      token: ${{file:secrets/token}}\n", api.port());
    let kw = Keyward::start(&pki.write("keyward.yaml", &yaml));
    (pki, api, secrets, kw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_file_is_used_by_the_next_request() {
    if !require("curl", have("curl")) {
        return;
    }
    let (_pki, api, secrets, kw) = bearer_from_a_file().await;
    let url = format!("http://{}/", kw.addr("api"));
    assert_eq!(get(&url).0, 200, "{}", kw.log_text());
    assert_eq!(
        api.last().header("authorization").unwrap(),
        "Bearer first-token"
    );
    k8s_update(&secrets, 1, &[("token", "second-token\n")]);
    eventually("the rotated token is used", 10, async || {
        get(&url);
        api.last().header("authorization").unwrap() == "Bearer second-token"
    })
    .await;
    let log = kw.log_text();
    for secret in ["first-token", "second-token"] {
        assert!(!log.contains(secret), "a secret reached the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cert_and_ca_rotate_fifty_times_each_way_under_load_without_a_failed_request() {
    let pki = Pki::new();
    // The upstream's server certificate starts under the test CA; each round rolls it to a
    // certificate from a brand-new CA. Client certificates always come from the test CA.
    let up = upstream(
        server_config(&pki.server(&["localhost"]), Some(&pki.ca), BOTH),
        Behavior::Echo,
    )
    .await;
    // Resource "rn" reads files replaced by rename; resource "k8s" reads a Kubernetes-style
    // directory updated by swapping `..data`.
    let rn = pki.path("rn");
    let k8s = pki.path("k8s");
    std::fs::create_dir_all(&rn).unwrap();
    let client = |i: usize| {
        pki.ca
            .leaf(&format!("client-{i}"), &[], Usage::Client)
            .unwrap()
    };
    let c0 = client(0);
    let mut current_ca_pem = pki.ca.cert.cert_pem.clone();
    write_renamed(&rn.join("ca.pem"), &current_ca_pem);
    write_renamed(&rn.join("client.pem"), &c0.cert_pem);
    write_renamed(&rn.join("client.key"), &c0.key_pem);
    k8s_update(
        &k8s,
        0,
        &[
            ("ca.pem", &current_ca_pem),
            ("client.pem", &c0.cert_pem),
            ("client.key", &c0.key_pem),
        ],
    );
    let tls = |d: &str| {
        format!("      ca: {d}/ca.pem\n      client_cert: {d}/client.pem\n      client_key: {d}/client.key\n")
    };
    let yaml = format!(
        "admin: null\nresources:\n{}{}",
        tcp_resource("rn", up.port(), "127.0.0.1:0", &tls("rn")),
        tcp_resource("k8s", up.port(), "127.0.0.1:0", &tls("k8s"))
    );
    let kw = Keyward::start(&pki.write("keyward.yaml", &yaml));
    let addrs = [kw.addr("rn"), kw.addr("k8s")];
    // The load: bounded in count and time, counting failures. A connect this test process
    // could not make for want of a local port (tens of thousands of loopback connections in
    // TIME_WAIT while other tests run) is not keyward's failure: it is retried after a pause.
    // Any other connect error (keyward refusing, resetting) counts as a failure.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed, mut no_port) = (0u32, Vec::new(), 0u32);
            let start = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && ok + (failed.len() as u32) < 200_000
                && start.elapsed() < Duration::from_secs(150)
            {
                for addr in addrs {
                    match try_roundtrip(addr, b"load").await {
                        Ok(got) if got == b"load" => ok += 1,
                        Ok(got) => failed.push(format!("{addr}: answered {got:?}")),
                        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {
                            no_port += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) => failed.push(format!("{addr}: connect: {e}")),
                    }
                }
            }
            (ok, failed, no_port)
        })
    };
    const ROTATIONS: usize = 50;
    for i in 1..=ROTATIONS {
        // CA rollover, step 1: keyward trusts the old and the new CA (the one before the old
        // is dropped), and gets a new client certificate.
        let new_ca = keyward::pki::Ca::new(&format!("upstream-ca-{i}")).unwrap();
        let bundle = format!("{current_ca_pem}{}", new_ca.cert.cert_pem);
        let c = client(i);
        // Bundle, key, then cert: the cert arriving last means a reload that sees it sees the rest.
        write_renamed(&rn.join("ca.pem"), &bundle);
        write_renamed(&rn.join("client.key"), &c.key_pem);
        write_renamed(&rn.join("client.pem"), &c.cert_pem);
        k8s_update(
            &k8s,
            i,
            &[
                ("ca.pem", &bundle),
                ("client.pem", &c.cert_pem),
                ("client.key", &c.key_pem),
            ],
        );
        let cn = format!("CN=client-{i}");
        for addr in addrs {
            eventually(
                &format!("rotation {i}: new connections present {cn}"),
                10,
                async || {
                    let before = up.seen().len();
                    roundtrip(addr, b"probe").await;
                    up.seen()[before..]
                        .iter()
                        .any(|s| s.client_cn.as_deref() == Some(cn.as_str()))
                },
            )
            .await;
        }
        // Step 2: the upstream switches to a certificate from the new CA.
        up.swap(server_config(
            &new_ca
                .leaf("upstream", &["localhost"], Usage::Server)
                .unwrap(),
            Some(&pki.ca),
            BOTH,
        ));
        for addr in addrs {
            assert_eq!(
                roundtrip(addr, b"after rollover").await,
                b"after rollover",
                "rotation {i}: the new CA must be trusted"
            );
        }
        current_ca_pem = new_ca.cert.cert_pem.clone();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed, no_port) = load.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during {} rotations (first: {:?})",
        failed.len(),
        ok as usize + failed.len(),
        2 * ROTATIONS,
        &failed[..failed.len().min(5)]
    );
    assert!(
        ok > 100,
        "the load loop ran ({ok} requests; {no_port} connects found no local port)"
    );
    let log = kw.log_text();
    assert!(
        !log.contains("reload failed"),
        "no reload may fail during clean rotations:\n{log}"
    );
    assert!(!log.contains("PRIVATE KEY"), "key material reached the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_keeps_accepting_for_the_delay_then_drains_the_live_connection() {
    let r = running("shutdown_delay: 1s\n").await;
    let addr = r.kw.addr("r");
    let mut live = TcpStream::connect(addr).await.unwrap();
    live.write_all(b"1").await.unwrap();
    let mut b = [0u8; 1];
    live.read_exact(&mut b).await.unwrap();
    assert!(Command::new("kill")
        .args(["-TERM", &r.kw.pid().to_string()])
        .status()
        .unwrap()
        .success());
    eventually("readyz turns 503 at once", 2, async || {
        get(&format!("http://{}/readyz", r.admin)).0 == 503
    })
    .await;
    assert_eq!(
        roundtrip(addr, b"during delay").await,
        b"during delay",
        "still accepting during shutdown_delay"
    );
    eventually("new connections refused after the delay", 5, async || {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    live.write_all(b"2").await.unwrap();
    live.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"2", "the live connection still works while draining");
    live.shutdown().await.unwrap();
    let mut rest = Vec::new();
    live.read_to_end(&mut rest).await.unwrap();
    let mut kw = r.kw;
    let start = Instant::now();
    let status = loop {
        if let Some(s) = kw.proc.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "keyward did not exit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0), "all connections drained: exit 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_still_open_when_the_grace_ends_makes_the_exit_code_1() {
    let r = running("").await;
    std::fs::write(
        &r.config,
        std::fs::read_to_string(&r.config)
            .unwrap()
            .replace("shutdown_grace: 5s", "shutdown_grace: 300ms"),
    )
    .unwrap();
    eventually("grace reloaded", 10, async || r.reload_successes() >= 2.0).await;
    let mut live = TcpStream::connect(r.kw.addr("r")).await.unwrap();
    live.write_all(b"1").await.unwrap();
    let mut b = [0u8; 1];
    live.read_exact(&mut b).await.unwrap();
    assert!(Command::new("kill")
        .args(["-TERM", &r.kw.pid().to_string()])
        .status()
        .unwrap()
        .success());
    let mut kw = r.kw;
    let start = Instant::now();
    let status = loop {
        if let Some(s) = kw.proc.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "keyward did not exit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(1));
}

/// Issue 17 item 8: a second SIGTERM/SIGINT during the drain exits at once with 1 (the grace
/// here is 5 s and a connection stays open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_during_the_drain_exits_at_once_with_1() {
    let r = running("").await;
    let mut live = TcpStream::connect(r.kw.addr("r")).await.unwrap();
    live.write_all(b"1").await.unwrap();
    let mut b = [0u8; 1];
    live.read_exact(&mut b).await.unwrap();
    let signal = |name: &str| {
        assert!(Command::new("kill")
            .args([name, &r.kw.pid().to_string()])
            .status()
            .unwrap()
            .success());
    };
    signal("-TERM");
    r.kw.wait_log("the first signal", |v| v["message"] == "SIGTERM received");
    let start = Instant::now();
    signal("-INT");
    let mut kw = r.kw;
    let status = loop {
        if let Some(s) = kw.proc.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "keyward did not exit at the second signal"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(1));
    kw.wait_log("the reason", |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("second signal during the drain"))
    });
}

/// Issue 17 item 2: under systemd (`Type=notify`) keyward says READY=1 once its listeners
/// are bound, RELOADING=1 (with MONOTONIC_USEC, for `Type=notify-reload`) then READY=1 around
/// each reload, WATCHDOG=1 within the interval systemd set, and STOPPING=1 when the drain
/// starts. The test is systemd: it owns the notification socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_reloading_watchdog_and_stopping() {
    let pki = Pki::new();
    let up = upstream(
        server_config(&pki.server(&["localhost"]), None, BOTH),
        Behavior::Echo,
    )
    .await;
    pki.write_ca();
    let config = pki.write(
        "keyward.yaml",
        &format!(
            "admin: null\nshutdown_grace: 1s\nresources:\n{}",
            tcp_resource("r", up.port(), "127.0.0.1:0", "      ca: ca.pem\n")
        ),
    );
    let socket_path = pki.path("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let kw = Keyward::start_with_env(
        &["run".as_ref(), "-c".as_ref(), config.as_os_str()],
        &[
            ("NOTIFY_SOCKET", socket_path.as_os_str()),
            ("WATCHDOG_USEC", "300000".as_ref()),
        ],
    );
    let next = |socket: &std::os::unix::net::UnixDatagram| {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("a notification within 10 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    // Ready: the listener accepts.
    let first = next(&socket);
    assert!(first.lines().any(|l| l == "READY=1"), "{first:?}");
    let addr = kw.addr("r");
    assert_eq!(roundtrip(addr, b"ready").await, b"ready");
    // The watchdog, at half its 300 ms interval.
    let started = Instant::now();
    let mut watchdogs = 0;
    while watchdogs < 2 {
        assert!(started.elapsed() < Duration::from_secs(2), "no watchdog");
        let m = next(&socket);
        watchdogs += usize::from(m.lines().any(|l| l == "WATCHDOG=1"));
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    // A reload.
    assert!(Command::new("kill")
        .args(["-HUP", &kw.pid().to_string()])
        .status()
        .unwrap()
        .success());
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|m: &String| m.lines().any(|l| l == "READY=1"))
    {
        let m = next(&socket);
        if !m.contains("WATCHDOG=1") {
            seen.push(m);
        }
    }
    assert!(
        seen[0].lines().any(|l| l == "RELOADING=1")
            && seen[0].lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{seen:?}"
    );
    // The drain.
    assert!(Command::new("kill")
        .args(["-TERM", &kw.pid().to_string()])
        .status()
        .unwrap()
        .success());
    let stopping = Instant::now();
    loop {
        assert!(
            stopping.elapsed() < Duration::from_secs(10),
            "no STOPPING=1 after SIGTERM"
        );
        let m = next(&socket);
        if m.lines().any(|l| l == "STOPPING=1") {
            break;
        }
    }
}

fn body_contains_secret(text: &str) -> bool {
    ["metrics-test-token", "metrics-client-secret"]
        .iter()
        .any(|s| text.contains(s))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_appears_after_a_failed_reload_is_picked_up() {
    let r = running("").await;
    let late_dir = r.pki.path("late");
    std::fs::create_dir_all(&late_dir).unwrap();
    let base = std::fs::read_to_string(&r.config).unwrap();
    let errors = r.reload_errors();
    write_renamed(&r.config, &format!("{base}{}", tcp_resource("late", r.up.port(), "127.0.0.1:0", "      ca: late/ca.pem\n      client_cert: client.pem\n      client_key: client.key\n")));
    eventually(
        "the reload fails while late/ca.pem is missing",
        10,
        async || r.reload_errors() > errors,
    )
    .await;
    assert!(
        !r.kw.log_text().contains("\"resource\":\"late\""),
        "late was added from a broken config"
    );
    // The last reload failed: an alert on the gauge fires.
    assert_eq!(
        metric(&r.metrics(), "keyward_config_last_reload_success "),
        0.0
    );
    std::fs::write(late_dir.join("ca.pem"), &r.pki.ca.cert.cert_pem).unwrap();
    // The new file triggers a successful reload.
    let late = r.kw.addr("late");
    assert_eq!(roundtrip(late, b"late").await, b"late");
    eventually("the gauge says the last reload succeeded", 5, async || {
        metric(&r.metrics(), "keyward_config_last_reload_success ") == 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_to_one_resource_leaves_the_others_snapshot_alone() {
    let r = running("").await;
    let base = std::fs::read_to_string(&r.config).unwrap();
    write_renamed(
        &r.config,
        &format!(
            "{base}{}",
            tcp_resource("other", r.up.port(), "127.0.0.1:0", "      ca: ca.pem\n")
        ),
    );
    r.kw.addr("other");
    let log = r.kw.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("unchanged: keeps its running snapshot")
                && l.contains("\"resource\":\"r\"")),
        "{log}"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("resource updated") && l.contains("\"resource\":\"r\"")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads() {
    let r = running("").await;
    let before = r.reload_successes();
    assert!(Command::new("kill")
        .args(["-HUP", &r.kw.pid().to_string()])
        .status()
        .unwrap()
        .success());
    eventually("SIGHUP reload counted", 10, async || {
        r.reload_successes() > before
    })
    .await;
    assert!(r.kw.log_text().contains("SIGHUP received: reloading"));
    assert_eq!(roundtrip(r.kw.addr("r"), b"after hup").await, b"after hup");
}

/// `keyward health` and `keyward wait`: exec probes for images without curl (exit 0 when
/// ready, 1 otherwise, the reason on stderr).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_wait_probe_a_running_keyward() {
    let r = running("").await;
    let kw_bin = env!("CARGO_BIN_EXE_keyward");
    let run = |args: &[&str]| {
        let out = Command::new(kw_bin).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let admin = r.admin.to_string();
    assert_eq!(run(&["health", "--admin", &admin]).0, Some(0));
    assert_eq!(run(&["health", "--live", "--admin", &admin]).0, Some(0));
    assert_eq!(
        run(&["wait", "--admin", &admin, "--timeout", "5s"]).0,
        Some(0)
    );
    // Nothing listens on port 1: not ready, said so, within the timeout.
    let started = Instant::now();
    let (code, stderr) = run(&["wait", "--admin", "127.0.0.1:1", "--timeout", "1s"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("not ready within"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let (code, stderr) = run(&["health", "--admin", "127.0.0.1:1"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot reach the admin endpoint"),
        "{stderr}"
    );
}

/// One HTTP/1.1 exchange on a kept-alive connection: the response's status line.
async fn keep_alive_get(conn: &mut TcpStream) -> String {
    conn.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
            .await
            .expect("response")
            .unwrap();
        assert!(n > 0, "keyward closed the kept-alive connection");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                return head.lines().next().unwrap_or_default().to_owned();
            }
        }
    }
}

/// Issue 17 item 1: a rotated credential reaches the app connections that were already open.
/// An app keeps one connection alive (as curl's keep-alive and every pooled client do); after
/// the token file is rotated and the reload applied, its next request on that same connection
/// carries the new token (before, it sent the revoked one until the app reconnected).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_reaches_kept_alive_app_connections() {
    let (_pki, api, secrets, kw) = bearer_from_a_file().await;
    let mut kept = TcpStream::connect(kw.addr("api")).await.unwrap();
    assert!(keep_alive_get(&mut kept).await.contains("200"));
    let bearer = || api.last().header("authorization").unwrap().to_owned();
    assert_eq!(bearer(), "Bearer first-token");
    k8s_update(&secrets, 1, &[("token", "second-token\n")]);
    // The reload is applied once a new connection gets the new token.
    let url = format!("http://{}/", kw.addr("api"));
    eventually("the reload", 10, async || {
        get(&url);
        bearer() == "Bearer second-token"
    })
    .await;
    assert!(keep_alive_get(&mut kept).await.contains("200"));
    assert_eq!(bearer(), "Bearer second-token", "the kept-alive connection");
}

/// Issue 17 item 3: a reload that changes `log.*` or `admin.*` (which the process sets up once)
/// says so, naming the keys and that a restart applies them, instead of a bare "configuration
/// reloaded"; the rest of the reload is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_names_the_log_and_admin_keys_it_cannot_apply() {
    let r = running("").await;
    let yaml = std::fs::read_to_string(&r.config).unwrap();
    let changed = yaml.replacen(
        "admin:\n  listen: 127.0.0.1:0\n",
        "admin:\n  listen: 127.0.0.1:0\n  shutdown_endpoint: true\nlog:\n  level: warn\n",
        1,
    );
    assert_ne!(changed, yaml);
    // Written until a reload sees it (the watcher starts in its own task).
    eventually("the reload", 10, async || {
        write_renamed(&r.config, &changed);
        tokio::time::sleep(Duration::from_millis(300)).await;
        r.kw.log_text().contains("restart keyward to apply")
    })
    .await;
    let line = r.kw.wait_log("the restart warning", |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("restart keyward to apply"))
    });
    assert_eq!(line["keys"], "log.level, admin.shutdown_endpoint", "{line}");
    assert_eq!(roundtrip(r.kw.addr("r"), b"still").await, b"still");
}
