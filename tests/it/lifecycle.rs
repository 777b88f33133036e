//! The guarantees the connection driver gives every protocol (README "How a connection
//! flows"), each checked by one table-driven test over `tcp`, `http`, `postgres`, `mysql` and
//! `redis`: the inbound client-certificate policy, the client deadline, the bound on what is
//! buffered before authentication, and release of the slot however a connection ends.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward::error::Reason;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::mysql8::Mysql8;
use crate::support::procs::Keyward;
use crate::support::{mysql_handshake_response, Pki, Proxy, DEADLINE};

const PROTOCOLS: [&str; 5] = ["tcp", "http", "postgres", "mysql", "redis"];

/// A plaintext upstream that counts the connections it accepted and never answers: any
/// count above zero means keyward went upstream.
struct Counter {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

async fn counter() -> Counter {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut sink = vec![0u8; 4096];
                while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    Counter { addr, accepted }
}

/// One resource of `protocol` in front of `upstream` (plaintext upstream: these tests are
/// about the app side), with `extra` lines (indented 4) added.
fn resource(protocol: &str, upstream: SocketAddr, extra: &str) -> String {
    let target = match protocol {
        "http" => format!("http://{upstream}"),
        _ => upstream.to_string(),
    };
    let auth = match protocol {
        "postgres" | "mysql" | "redis" => {
            "    auth:\n      type: password\n      username: u\n      password: upstream-pw\n"
        }
        _ => "",
    };
    format!(
        "  - name: {protocol}\n    protocol: {protocol}\n    listen: 127.0.0.1:0\n    upstream: {target}\n    tls:\n      mode: disable\n{auth}{extra}"
    )
}

fn config(resources: &str) -> String {
    format!("admin: null\nshutdown_grace: 1s\nresources:\n{resources}")
}

/// The upstream of each protocol: MySQL needs a server that greets (keyward reads the greeting
/// before the app answers); the others get a counter.
async fn upstreams() -> (Counter, Mysql8) {
    (
        counter().await,
        Mysql8::start("u", "upstream-pw", None).await,
    )
}

fn upstream_of(protocol: &str, counter: &Counter, mysql: &Mysql8) -> SocketAddr {
    match protocol {
        "mysql" => SocketAddr::from(([127, 0, 0, 1], mysql.port)),
        _ => counter.addr,
    }
}

/// Reads whatever the app gets until keyward closes (or the deadline).
async fn read_until_closed(conn: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let closed = tokio::time::timeout(DEADLINE, async {
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (got, closed)
}

/// Waits until the resource has no open connection and returns its last error's reason.
async fn settled(proxy: &Proxy, name: &str) -> Option<Reason> {
    let res = proxy.state.resource(name).unwrap();
    let start = Instant::now();
    while res.open() > 0 && start.elapsed() < DEADLINE {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        res.open(),
        0,
        "{name}: the connection's slot was not released"
    );
    res.last_error().map(|e| e.error.reason)
}

/// What a plaintext client of each protocol sends first: `psql sslmode=disable` sends a
/// StartupMessage; `mariadb --skip-ssl` reads the greeting and answers it without CLIENT_SSL.
async fn first_message(protocol: &str, app: &mut TcpStream) -> Vec<u8> {
    match protocol {
        "postgres" => {
            let mut body = vec![0, 3, 0, 0];
            body.extend_from_slice(b"user\0u\0database\0d\0\0");
            let mut m = ((body.len() + 4) as u32).to_be_bytes().to_vec();
            m.extend(body);
            m
        }
        "mysql" => {
            let mut greeting = [0u8; 4];
            app.read_exact(&mut greeting).await.unwrap();
            let len = u32::from_le_bytes([greeting[0], greeting[1], greeting[2], 0]);
            let mut rest = vec![0u8; len as usize];
            app.read_exact(&mut rest).await.unwrap();
            let body = mysql_handshake_response("u", 0);
            let mut m = (body.len() as u32).to_le_bytes()[..3].to_vec();
            m.push(1);
            m.extend(body);
            m
        }
        "redis" => b"*1\r\n$4\r\nPING\r\n".to_vec(),
        "http" => b"GET / HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(),
        _ => b"hello".to_vec(),
    }
}

/// What each protocol's own error looks like on the wire.
fn protocol_error(protocol: &str, reply: &[u8]) -> bool {
    match protocol {
        "postgres" => reply.first() == Some(&b'E'),
        // An ERR packet (payload starting 0xff) among the packets keyward sent.
        "mysql" => {
            let mut at = 0;
            while at + 4 < reply.len() {
                if reply[at + 4] == 0xff {
                    return true;
                }
                at += 4 + u32::from_le_bytes([reply[at], reply[at + 1], reply[at + 2], 0]) as usize;
            }
            false
        }
        "redis" => reply.starts_with(b"-ERR keyward:"),
        "http" => reply.starts_with(b"HTTP/1.1 4"),
        _ => true,
    }
}

#[tokio::test]
async fn a_listener_that_requires_client_certificates_never_logs_a_plaintext_app_in() {
    let pki = Pki::new();
    let ca = pki.write_ca();
    let cert = pki.server(&["localhost", "127.0.0.1"]);
    let block = format!(
        "    listen_tls:\n      cert: {}\n      key: {}\n      client_ca: {}\n      require_client_cert: true\n",
        pki.write("listen.pem", &cert.cert_pem).display(),
        pki.write("listen.key", &cert.key_pem).display(),
        ca.display()
    );
    let (count, mysql) = upstreams().await;
    let yaml: String = PROTOCOLS
        .iter()
        .map(|p| resource(p, upstream_of(p, &count, &mysql), &block))
        .collect();
    let proxy = Proxy::start(pki.dir.path(), &config(&yaml)).await;
    for protocol in PROTOCOLS {
        let mut app = TcpStream::connect(proxy.addr(protocol)).await.unwrap();
        let hello = first_message(protocol, &mut app).await;
        let _ = app.write_all(&hello).await;
        let (reply, closed) = read_until_closed(&mut app).await;
        assert!(closed, "{protocol}: keyward kept the connection open");
        let text = String::from_utf8_lossy(&reply);
        match protocol {
            "postgres" | "mysql" => assert!(
                protocol_error(protocol, &reply)
                    && text.contains("this listener requires TLS with a client certificate"),
                "{protocol}: {text:?}"
            ),
            // The TLS handshake is the refusal: plaintext is not a ClientHello.
            _ => assert!(
                !text.contains("PONG") && !text.contains("200"),
                "{protocol}: {text:?}"
            ),
        }
        let reason = settled(&proxy, protocol).await;
        assert!(
            matches!(reason, Some(Reason::ClientCertRequired | Reason::Tls)),
            "{protocol}: {reason:?}"
        );
    }
    assert_eq!(
        count.accepted.load(Ordering::SeqCst),
        0,
        "an upstream was reached"
    );
    assert!(mysql.logins.lock().unwrap().is_empty(), "MySQL saw a login");
}

#[tokio::test]
async fn a_silent_app_is_closed_at_the_client_deadline_with_the_protocols_error() {
    let pki = Pki::new();
    let cert = pki.server(&["localhost", "127.0.0.1"]);
    let (count, mysql) = upstreams().await;
    let tls_block = format!(
        "    listen_tls:\n      cert: {}\n      key: {}\n",
        pki.write("listen.pem", &cert.cert_pem).display(),
        pki.write("listen.key", &cert.key_pem).display(),
    );
    let yaml: String = PROTOCOLS
        .iter()
        .map(|p| {
            // What the app must send before keyward relays: tcp has nothing but TLS with
            // keyward; redis has nothing without client_password.
            let extra = match *p {
                "tcp" => tls_block.clone(),
                "redis" => "    client_password: app-pw\n".to_owned(),
                _ => String::new(),
            };
            resource(
                p,
                upstream_of(p, &count, &mysql),
                &format!("    client_handshake_timeout: 1s\n{extra}"),
            )
        })
        .collect();
    let proxy = Proxy::start(pki.dir.path(), &config(&yaml)).await;
    for protocol in PROTOCOLS {
        let started = Instant::now();
        let mut app = TcpStream::connect(proxy.addr(protocol)).await.unwrap();
        let (reply, closed) = read_until_closed(&mut app).await;
        let waited = started.elapsed();
        assert!(closed, "{protocol}: still open after {waited:?}");
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
            "{protocol}: closed after {waited:?}"
        );
        let text = String::from_utf8_lossy(&reply);
        if matches!(protocol, "postgres" | "mysql" | "redis") {
            assert!(
                protocol_error(protocol, &reply) && text.contains("client_handshake_timeout (1s)"),
                "{protocol}: {text:?}"
            );
        }
        assert_eq!(
            settled(&proxy, protocol).await,
            Some(Reason::ClientHandshakeTimeout),
            "{protocol}"
        );
    }
    assert_eq!(
        count.accepted.load(Ordering::SeqCst),
        0,
        "an upstream was reached"
    );
}

/// Over-long messages before authentication, one per protocol: each gets the protocol's
/// error and a close, not buffering.
#[tokio::test]
async fn a_message_over_the_pre_auth_limit_gets_the_protocols_error_and_a_close() {
    let pki = Pki::new();
    let cert = pki.server(&["localhost", "127.0.0.1"]);
    let tls_block = format!(
        "    listen_tls:\n      cert: {}\n      key: {}\n",
        pki.write("listen.pem", &cert.cert_pem).display(),
        pki.write("listen.key", &cert.key_pem).display(),
    );
    let (count, mysql) = upstreams().await;
    let yaml: String = PROTOCOLS
        .iter()
        .map(|p| {
            // tcp reads nothing of the app's before relaying but its TLS ClientHello.
            let extra = match *p {
                "redis" => "    client_password: app-pw\n".to_owned(),
                "tcp" => tls_block.clone(),
                _ => String::new(),
            };
            resource(p, upstream_of(p, &count, &mysql), &extra)
        })
        .collect();
    let proxy = Proxy::start(pki.dir.path(), &config(&yaml)).await;
    for protocol in PROTOCOLS {
        let mut app = TcpStream::connect(proxy.addr(protocol)).await.unwrap();
        let head: Vec<u8> = match protocol {
            // A StartupMessage that claims 1 GB.
            "postgres" => [&0x4000_0000u32.to_be_bytes()[..], &[0, 3, 0, 0]].concat(),
            // A HandshakeResponse of 16 MB - 1 (the largest a packet header can say).
            "mysql" => {
                let mut greeting = [0u8; 4];
                app.read_exact(&mut greeting).await.unwrap();
                let len = u32::from_le_bytes([greeting[0], greeting[1], greeting[2], 0]);
                let mut rest = vec![0u8; len as usize];
                app.read_exact(&mut rest).await.unwrap();
                vec![0xff, 0xff, 0xff, 1]
            }
            // A bulk string that claims 1 GB, before AUTH.
            "redis" => b"*1\r\n$1000000000\r\n".to_vec(),
            // A request head that never ends.
            "http" => b"GET / HTTP/1.1\r\nx-long: ".to_vec(),
            // A TLS record header that claims the largest handshake record, then garbage.
            _ => vec![0x16, 0x03, 0x01, 0xff, 0xff],
        };
        let _ = app.write_all(&head).await;
        // Somewhat over every limit, in pieces, while keyward is still reading.
        let filler = vec![b'a'; 64 * 1024];
        for _ in 0..8 {
            if app.write_all(&filler).await.is_err() {
                break;
            }
        }
        let (reply, closed) = read_until_closed(&mut app).await;
        assert!(closed, "{protocol}: keyward kept the connection open");
        assert!(
            protocol_error(protocol, &reply),
            "{protocol}: {:?}",
            String::from_utf8_lossy(&reply)
        );
        let reason = settled(&proxy, protocol).await;
        // HTTP: hyper's own 431; tcp: the TLS handshake fails on the oversized record.
        let expected = match protocol {
            "http" => true,
            "tcp" => reason == Some(Reason::Tls),
            _ => matches!(reason, Some(Reason::MessageTooLarge | Reason::Protocol)),
        };
        assert!(expected, "{protocol}: {reason:?}");
    }
    assert_eq!(
        count.accepted.load(Ordering::SeqCst),
        0,
        "an upstream was reached"
    );
}

/// The 1 GB bulk header of the security review, through the real binary: keyward refuses
/// after its limit instead of buffering, and its memory stays where it was.
#[test]
fn an_unauthenticated_redis_client_cannot_grow_keywards_memory() {
    let pki = Pki::new();
    let yaml = config(&resource(
        "redis",
        "127.0.0.1:9".parse().unwrap(),
        "    client_password: app-pw\n",
    ));
    let path = pki.write("keyward.yaml", &yaml);
    let kw = Keyward::start(&path);
    let addr = kw.addr("redis");
    let rss = || {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", kw.proc.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    };
    let before = rss();
    let mut sent = 0usize;
    {
        use std::io::Write;
        let mut app = std::net::TcpStream::connect(addr).unwrap();
        app.set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        app.write_all(b"*1\r\n$1000000000\r\n").unwrap();
        let chunk = vec![b'a'; 1 << 20];
        while sent < 128 << 20 {
            match app.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
    }
    kw.wait_log("the refusal", |l| l["reason"] == "message_too_large");
    let after = rss();
    // (What keyward read after its refusal it discarded, for at most 200 ms, to close
    // without a reset: `sent` may well be all of it.)
    eprintln!("sent {sent} bytes; RSS {before} -> {after}");
    assert!(
        after < before + (8 << 20),
        "RSS grew from {before} to {after} bytes"
    );
}

/// A client certificate whose CN has a multi-byte character where an `allow` glob cuts it
/// used to panic the connection task (and leak its slot): now it is refused cleanly.
/// A connection task that panics gives back its slot and its gauge and is recorded once, as
/// side=internal, reason=panic. The panic is injected at the `admit` fail point, which every
/// protocol passes inside its own serve step (after reading what the app sends first: the
/// startup packet, the MySQL handshake response, the HTTP connection). With
/// `max_connections: 1`, the second connection reaching the same point proves the slot came
/// back (a leaked slot refuses it with max_connections instead).
#[tokio::test]
async fn a_connection_task_that_panics_releases_its_slot_and_is_recorded_once() {
    let pki = Pki::new();
    let (count, mysql) = upstreams().await;
    let yaml: String = PROTOCOLS
        .iter()
        .map(|p| {
            resource(
                p,
                upstream_of(p, &count, &mysql),
                "    max_connections: 1\n",
            )
            .replacen(&format!("name: {p}"), &format!("name: failpoint-{p}"), 1)
        })
        .collect();
    // Only resources named `failpoint-*` reach the point (other tests run beside this one).
    fail::cfg("admit", "panic").unwrap();
    let proxy = Proxy::start(pki.dir.path(), &config(&yaml)).await;
    let metrics = keyward::metrics::metrics();
    for protocol in PROTOCOLS {
        let name = format!("failpoint-{protocol}");
        for round in 1..=2u64 {
            let mut app = TcpStream::connect(proxy.addr(&name)).await.unwrap();
            let hello = first_message(protocol, &mut app).await;
            let _ = app.write_all(&hello).await;
            let (_, closed) = read_until_closed(&mut app).await;
            assert!(closed, "{protocol}: the panicked connection stayed open");
            assert_eq!(
                settled(&proxy, &name).await,
                Some(Reason::Panic),
                "{protocol} round {round}"
            );
            let stats = proxy.state.resource(&name).unwrap();
            assert_eq!(stats.errors(), round, "{protocol}: one record per end");
            assert_eq!(
                metrics.open.with_label_values(&[name.as_str()]).get(),
                0,
                "{protocol}: keyward_connections_open stayed raised"
            );
            assert_eq!(
                metrics
                    .errors
                    .with_label_values(&[name.as_str(), "internal", "panic"])
                    .get(),
                round,
                "{protocol}"
            );
        }
    }
    fail::remove("admit");
    assert_eq!(
        count.accepted.load(Ordering::SeqCst),
        0,
        "an upstream was reached"
    );
}

#[tokio::test]
async fn a_multibyte_client_cn_at_the_globs_cut_is_refused_without_a_panic() {
    let pki = Pki::new();
    let ca = pki.write_ca();
    let cert = pki.server(&["localhost"]);
    let (client_pem, client_key) = pki.write_client("app", "aé-worker");
    let up = counter().await;
    let yaml = config(&resource(
        "tcp",
        up.addr,
        &format!(
            "    listen_tls:\n      cert: {}\n      key: {}\n      client_ca: {}\n      require_client_cert: true\n      allow:\n        cn: [\"ab*\"]\n",
            pki.write("listen.pem", &cert.cert_pem).display(),
            pki.write("listen.key", &cert.key_pem).display(),
            ca.display()
        ),
    ));
    let proxy = Proxy::start(pki.dir.path(), &yaml).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.cert.cert_der.clone()).unwrap();
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(&client_pem)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&client_key).unwrap();
    let client = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .unwrap();
    let tcp = TcpStream::connect(proxy.addr("tcp")).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    if let Ok(mut tls) = connector.connect(name, tcp).await {
        let _ = tls.write_all(b"hello").await;
        let mut got = Vec::new();
        let _ = tokio::time::timeout(DEADLINE, tls.read_to_end(&mut got)).await;
        assert!(got.is_empty());
    }
    assert_eq!(
        settled(&proxy, "tcp").await,
        Some(Reason::ClientCertRejected)
    );
    assert_eq!(up.accepted.load(Ordering::SeqCst), 0);
}

/// `keyward::run` is the whole product: admin endpoint and hot reload composed from injected
/// listeners and a shutdown future, in-process on port 0 (no port picked and released).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyward_run_serves_admin_and_reload_in_process() {
    let pki = Pki::new();
    let up = counter().await;
    let path = pki.write("keyward.yaml", &config(&resource("tcp", up.addr, "")));
    let loaded = keyward::config::load(&path).unwrap();
    let runtime = keyward::Runtime::build(&loaded, &keyward::secret::ProcessEnv).unwrap();
    let listeners = keyward::Listeners::bind(runtime.listens()).await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let parts = keyward::Parts {
        admin: Some(keyward::admin::Admin {
            listener: admin,
            shutdown_endpoint: false,
        }),
        reload: Some(keyward::Reload {
            path: path.clone(),
            config: loaded,
            env: Arc::new(keyward::secret::ProcessEnv),
            hook: None,
        }),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let product = tokio::spawn(keyward::run(runtime, listeners, parts, async {
        let _ = stopped.await;
    }));
    let get = |path: &'static str| async move {
        let mut conn = TcpStream::connect(admin_addr).await.unwrap();
        conn.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut body = String::new();
        tokio::time::timeout(DEADLINE, conn.read_to_string(&mut body))
            .await
            .unwrap()
            .unwrap();
        body
    };
    assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
    // A second resource written into the config is picked up by the reload part. (Written
    // again until it is: the watcher starts in its own task and may not watch yet.)
    let two = config(&format!(
        "{}{}",
        resource("tcp", up.addr, ""),
        resource("redis", up.addr, "")
    ));
    let start = Instant::now();
    loop {
        std::fs::write(&path, &two).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        if get("/resources").await.contains("\"name\":\"redis\"") {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the reload did not add the resource"
        );
    }
    let _ = stop.send(());
    let outcome = tokio::time::timeout(DEADLINE, product)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome.cut, 0);
}
