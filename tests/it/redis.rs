//! `protocol: redis` end to end: a real Redis 7 on a TLS-only port with `requirepass` and ACL
//! users, the keyward binary, and redis-cli / redis-benchmark holding no credential.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::procs::{have, Keyward, Redis};
use crate::support::{require, Pki};

const ACL: &str = "tls-auth-clients optional\nrequirepass adminpw\nuser proxyuser on >proxypw ~app:* &* +@all -@dangerous\nuser benchuser on >benchpw2 ~* &* +@all\n";

struct Setup {
    pki: Pki,
    ca: PathBuf,
    client: (PathBuf, PathBuf),
    redis: Redis,
}

fn setup(extra: &str) -> Option<Setup> {
    if !require(
        "redis-server and redis-cli",
        have("redis-server") && have("redis-cli"),
    ) {
        return None;
    }
    let pki = Pki::new();
    let server = pki.server(&["localhost", "127.0.0.1"]);
    let cert = pki.write("server.pem", &server.cert_pem);
    let key = pki.write("server.key", &server.key_pem);
    let ca = pki.write_ca();
    let client = pki.write_client("client", "keyward-redis");
    let redis = Redis::start_with(
        pki.dir.path(),
        &ca,
        &cert,
        &key,
        &client.0,
        &client.1,
        extra,
        &["-a", "adminpw"],
    );
    Some(Setup {
        pki,
        ca,
        client,
        redis,
    })
}

fn resource(name: &str, s: &Setup, auth: &str, extra: &str) -> String {
    format!(
        "  - name: {name}\n    protocol: redis\n    listen: 127.0.0.1:0\n    upstream: localhost:{}\n    tls:\n      ca: {}\n{extra}    auth:\n{auth}",
        s.redis.port,
        s.ca.display()
    )
}

fn start(dir: &Path, resources: &[String]) -> Keyward {
    Keyward::with_resources(dir, &resources.concat())
}

fn cli(kw: &Keyward, res: &str, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &kw.addr(res).port().to_string()])
        .args(["--no-auth-warning"])
        .args(args)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .trim()
    .to_owned()
}

const PROXYUSER: &str =
    "      type: password\n      username: proxyuser\n      password: proxypw\n";

/// keyward with `cache` (logged in as proxyuser) and `legacy` (the default user, whose
/// password is the server's admin password).
fn cache_and_legacy(s: &Setup) -> Keyward {
    start(
        s.pki.dir.path(),
        &[
            resource("cache", s, PROXYUSER, ""),
            resource(
                "legacy",
                s,
                "      type: password\n      password: adminpw\n",
                "",
            ),
        ],
    )
}

#[test]
fn redis_cli_without_credentials_acts_as_the_configured_acl_user() {
    let Some(s) = setup(ACL) else { return };
    let kw = cache_and_legacy(&s);
    assert_eq!(
        cli(&kw, "cache", &["ACL", "WHOAMI"]),
        "proxyuser",
        "{}",
        kw.log_text()
    );
    assert_eq!(cli(&kw, "cache", &["SET", "app:k", "v"]), "OK");
    assert_eq!(cli(&kw, "cache", &["GET", "app:k"]), "v");
    assert!(cli(&kw, "cache", &["SET", "other:k", "v"]).starts_with("NOPERM"));
    // The app's own AUTH (any password) is answered in place with keyward's credentials.
    assert_eq!(
        cli(&kw, "cache", &["-a", "app-side-pw", "ACL", "WHOAMI"]),
        "proxyuser"
    );
    assert_eq!(
        cli(
            &kw,
            "cache",
            &[
                "-3",
                "--user",
                "someone",
                "--pass",
                "app-side-pw",
                "ACL",
                "WHOAMI"
            ]
        ),
        "proxyuser"
    );
    // A pipeline with an AUTH in the middle keeps its replies in order.
    let out = Command::new("redis-cli")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &kw.addr("cache").port().to_string(),
        ])
        .arg("--pipe")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(b"SET app:a 1\r\nAUTH x y\r\nINCR app:a\r\n")?;
            c.wait_with_output()
        })
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("errors: 0, replies: 3"), "{text}");
    assert_eq!(cli(&kw, "cache", &["GET", "app:a"]), "2");
    // Password-only AUTH for the default user.
    assert_eq!(cli(&kw, "legacy", &["ACL", "WHOAMI"]), "default");
}

#[test]
fn a_wrong_configured_password_or_missing_client_cert_reaches_redis_cli_as_a_keyward_error() {
    let extra = ACL.replace("tls-auth-clients optional", "tls-auth-clients yes");
    let Some(s) = setup(&extra) else { return };
    let mtls = format!(
        "      client_cert: {}\n      client_key: {}\n",
        s.client.0.display(),
        s.client.1.display()
    );
    let with_cert = |name: &str, auth: &str| {
        resource(name, &s, auth, "").replace(
            &format!("      ca: {}\n", s.ca.display()),
            &format!("      ca: {}\n{mtls}", s.ca.display()),
        )
    };
    let kw = start(
        s.pki.dir.path(),
        &[
            with_cert("mtls", PROXYUSER),
            with_cert(
                "badpw",
                "      type: password\n      username: proxyuser\n      password: not-the-password\n",
            ),
            resource("nocert", &s, PROXYUSER, ""),
        ],
    );
    assert_eq!(
        cli(&kw, "mtls", &["ACL", "WHOAMI"]),
        "proxyuser",
        "{}",
        kw.log_text()
    );
    let out = cli(&kw, "badpw", &["PING"]);
    assert!(
        out.contains("ERR keyward: upstream \"badpw\": WRONGPASS"),
        "{out}"
    );
    let out = cli(&kw, "nocert", &["PING"]);
    assert!(
        out.contains("ERR keyward: upstream \"nocert\":") && out.contains("client certificate"),
        "{out}"
    );
}

#[test]
fn pass_client_auth_forwards_and_client_password_guards_the_listener() {
    let Some(s) = setup(ACL) else { return };
    let kw = start(
        s.pki.dir.path(),
        &[
            resource("passthrough", &s, PROXYUSER, "    pass_client_auth: true\n"),
            resource(
                "guarded",
                &s,
                PROXYUSER,
                "    client_password: app-side-pw\n",
            ),
        ],
    );
    // Forwarded: the server judges the app's AUTH.
    assert!(cli(&kw, "passthrough", &["-a", "wrong", "PING"]).contains("WRONGPASS"));
    assert_eq!(
        cli(
            &kw,
            "passthrough",
            &["--user", "benchuser", "--pass", "benchpw2", "ACL", "WHOAMI"]
        ),
        "benchuser"
    );
    // Guarded: no AUTH, a wrong one, the right one.
    assert!(cli(&kw, "guarded", &["PING"]).contains("NOAUTH"));
    assert!(cli(&kw, "guarded", &["-a", "wrong", "PING"]).contains("WRONGPASS"));
    assert_eq!(
        cli(&kw, "guarded", &["-a", "app-side-pw", "ACL", "WHOAMI"]),
        "proxyuser"
    );
    assert_eq!(
        cli(
            &kw,
            "guarded",
            &[
                "-3",
                "--user",
                "x",
                "--pass",
                "app-side-pw",
                "ACL",
                "WHOAMI"
            ]
        ),
        "proxyuser"
    );
}

#[test]
fn redis_benchmark_through_keyward_runs_without_errors() {
    if !require("redis-benchmark", have("redis-benchmark")) {
        return;
    }
    let Some(s) = setup(ACL) else { return };
    let kw = start(
        s.pki.dir.path(),
        &[resource(
            "bench",
            &s,
            "      type: password\n      username: benchuser\n      password: benchpw2\n",
            "",
        )],
    );
    let out = Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &kw.addr("bench").port().to_string(),
        ])
        .args(["-t", "set,get", "-n", "20000", "-c", "8", "-q"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SET:") && text.contains("GET:"), "{text}");
    assert!(!text.to_lowercase().contains("error"), "{text}");
    // Every key the benchmark wrote is there: the commands reached Redis as benchuser.
    let keys = Command::new("redis-cli")
        .args(["--tls", "--cacert"])
        .arg(&s.ca)
        .args(["-h", "127.0.0.1", "-p", &s.redis.port.to_string()])
        .args([
            "--no-auth-warning",
            "--user",
            "benchuser",
            "--pass",
            "benchpw2",
        ])
        .args(["EXISTS", "key:__rand_int__"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&keys.stdout).trim(), "1");
}

#[test]
fn probe_authenticates_to_redis() {
    let Some(s) = setup(ACL) else { return };
    let conf = s.pki.dir.path().join("probe.yaml");
    std::fs::write(
        &conf,
        format!(
            "admin: null\nresources:\n{}{}",
            resource("cache", &s, PROXYUSER, ""),
            resource(
                "badpw",
                &s,
                "      type: password\n      username: proxyuser\n      password: not-the-password\n",
                ""
            )
        ),
    )
    .unwrap();
    let probe = |res: &str| crate::support::procs::probe(&conf, res);
    let (code, t) = probe("cache");
    assert_eq!(code, Some(0), "{t}");
    assert!(
        t.contains("auth: ok, AUTH accepted for user \"proxyuser\""),
        "{t}"
    );
    let (code, t) = probe("badpw");
    assert_eq!(code, Some(1), "{t}");
    assert!(t.contains("auth: FAILED: WRONGPASS"), "{t}");
}

/// `listen_tls` on a redis resource: TLS from the first byte, then the same AUTH injection.
#[test]
fn redis_cli_over_tls_to_keyward() {
    let Some(s) = setup(ACL) else { return };
    let listen = s.pki.server(&["localhost", "127.0.0.1"]);
    let cert = s.pki.write("listen.pem", &listen.cert_pem);
    let key = s.pki.write("listen.key", &listen.key_pem);
    let tls = format!(
        "    listen_tls:\n      cert: {}\n      key: {}\n",
        cert.display(),
        key.display()
    );
    let kw = start(
        s.pki.dir.path(),
        &[resource("tlscache", &s, PROXYUSER, &tls)],
    );
    let out = Command::new("redis-cli")
        .args(["--tls", "--cacert"])
        .arg(&s.ca)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &kw.addr("tlscache").port().to_string(),
        ])
        .args(["ACL", "WHOAMI"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "proxyuser",
        "{}",
        kw.log_text()
    );
    // A plaintext client gets nothing from a TLS listener.
    let plain = cli(&kw, "tlscache", &["PING"]);
    assert!(!plain.contains("PONG"), "{plain}");
}

/// With `client_password` and no upstream password, an app's `HELLO 3 AUTH default <pw>` is
/// checked by keyward and then forwarded — without its AUTH part: keyward's local secret never
/// reaches the server (it did before: the HELLO went on verbatim).
#[tokio::test]
async fn a_hello_auth_with_the_client_password_never_reaches_the_server() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = upstream.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        let (mut tcp, _) = upstream.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        while let Ok(n) = tcp.read(&mut buf).await {
            if n == 0 {
                break;
            }
            record.lock().unwrap().extend_from_slice(&buf[..n]);
            let _ = tcp
                .write_all(b"%1\r\n$6\r\nserver\r\n$5\r\nredis\r\n")
                .await;
        }
    });
    let yaml = format!("admin: null\nresources:\n  - name: guarded\n    protocol: redis\n    listen: 127.0.0.1:0\n    upstream: {up_addr}\n    tls:\n      mode: disable\n    client_password: local-secret\n");
    let proxy = crate::support::Proxy::start(pki.dir.path(), &yaml).await;
    let mut app = tokio::net::TcpStream::connect(proxy.addr("guarded"))
        .await
        .unwrap();
    app.write_all(
        b"*5\r\n$5\r\nHELLO\r\n$1\r\n3\r\n$4\r\nAUTH\r\n$7\r\ndefault\r\n$12\r\nlocal-secret\r\n",
    )
    .await
    .unwrap();
    let mut reply = [0u8; 64];
    let n = tokio::time::timeout(crate::support::DEADLINE, app.read(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert!(
        reply[..n].starts_with(b"%1"),
        "{:?}",
        String::from_utf8_lossy(&reply[..n])
    );
    let seen = seen.lock().unwrap().clone();
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("HELLO"), "{text}");
    assert!(
        !text.contains("local-secret"),
        "the server saw keyward's client_password: {text}"
    );
}

/// `INFO commandstats` of `admin`: how many AUTH and HELLO commands Redis ran or rejected.
fn auth_and_hello_seen(admin: &mut std::net::TcpStream) -> u64 {
    use std::io::{Read, Write};
    admin
        .write_all(&keyward::redis::scan::command(&[b"INFO", b"commandstats"]))
        .unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 8192];
    // A bulk string: `$<len>\r\n<text>\r\n`.
    loop {
        let n = admin.read(&mut buf).unwrap();
        assert!(n > 0, "Redis closed the admin connection");
        reply.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&reply);
        if let Some((head, body)) = text.split_once("\r\n") {
            let len: usize = head.trim_start_matches('$').parse().unwrap();
            if body.len() >= len + 2 {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&reply).into_owned();
    let mut seen = 0;
    for line in text.lines() {
        let Some(stats) = line
            .strip_prefix("cmdstat_auth:")
            .or_else(|| line.strip_prefix("cmdstat_hello:"))
        else {
            continue;
        };
        for field in stats.split(',') {
            if let Some(v) = field
                .strip_prefix("calls=")
                .or_else(|| field.strip_prefix("rejected_calls="))
            {
                seen += v.parse::<u64>().unwrap();
            }
        }
    }
    seen
}

/// Sends `bytes` on a new connection, half-closes and waits for Redis to close; returns how many
/// AUTH/HELLO commands Redis ran or rejected for it.
fn redis_runs(port: u16, admin: &mut std::net::TcpStream, bytes: &[u8]) -> u64 {
    use std::io::{Read, Write};
    admin
        .write_all(&keyward::redis::scan::command(&[b"CONFIG", b"RESETSTAT"]))
        .unwrap();
    let mut ok = [0u8; 5];
    admin.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"+OK\r\n");
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let _ = conn.write_all(bytes);
    let _ = conn.shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 4096];
    while matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
    auth_and_hello_seen(admin)
}

/// Issue 13 item 4: the AUTH scanner reads the stream as a real Redis does. Over a corpus of
/// mutated command streams (RESP and inline, with the bytes that matter to the parser: CR, LF,
/// quotes, backslashes, NUL, signs, digits), against a private Redis 7:
/// 1. the reference model `redis_commands` finds as many AUTH/HELLO commands as Redis runs;
/// 2. of what the scanner sends upstream, Redis runs exactly the AUTH/HELLO commands the
///    scanner rewrote: an app's own AUTH never reaches the server.
///
/// (Before, `$4\r\nAUTHxx` and `AU"TH" pw` were AUTH to Redis and passed unrewritten.)
#[test]
fn the_auth_scanner_agrees_with_a_real_redis_on_mutated_streams() {
    use keyward::redis::scan::{command, redis_commands, Scanner};
    let Some(s) = setup("port PLAIN_PORT\n") else {
        return;
    };
    let plain = s.redis.plain.unwrap();
    let mut admin = std::net::TcpStream::connect(("127.0.0.1", plain)).unwrap();
    let intercepted =
        |n: &[u8]| n.eq_ignore_ascii_case(b"auth") || n.eq_ignore_ascii_case(b"hello");
    let seeds: Vec<Vec<u8>> = vec![
        [
            command(&[b"SET", b"k", b"v"]),
            command(&[b"AUTH", b"u", b"p"]),
            command(&[b"GET", b"k"]),
            command(&[b"HELLO", b"3", b"AUTH", b"a", b"b"]),
        ]
        .concat(),
        b"SET k v\r\nAUTH \"p w\"\r\nGET k\r\nauth 'x' \"\\x41\"\nHELLO 2\r\n".to_vec(),
        b"*2\r\n$4\r\nAUTHxx$1\r\np\r\n*1\r\n$3\r\nGET\r\n".to_vec(),
    ];
    let special = b"\r\n\"'\\ \0$*-+0x4AUTHauth";
    let mut rng = fastrand::Rng::with_seed(4);
    let mut disagreements = Vec::new();
    let mut rewritten_total = 0;
    for round in 0..1200 {
        let mut m = seeds[round % seeds.len()].clone();
        for _ in 0..rng.usize(0..4) {
            let i = rng.usize(..m.len());
            let byte = if rng.bool() {
                special[rng.usize(..special.len())]
            } else {
                rng.u8(..)
            };
            match rng.u8(..3) {
                0 => m[i] = byte,
                1 => {
                    m.remove(i);
                }
                _ => m.insert(i, byte),
            }
            if m.is_empty() {
                m.push(b'*');
            }
        }
        // 1. The model against the server.
        let (theirs, _) = redis_commands(&m);
        let model = theirs.iter().filter(|c| intercepted(&c[0])).count() as u64;
        let server = redis_runs(plain, &mut admin, &m);
        if model != server {
            disagreements.push(format!(
                "model {model}, Redis {server}: {:?}",
                String::from_utf8_lossy(&m)
            ));
        }
        // 2. What keyward would send.
        let mut out = Vec::new();
        let mut rewrites = 0u64;
        let _ = Scanner::new().feed(&m, &mut out, &mut |args| {
            rewrites += 1;
            command(&[&args[0], b"KEYWARD-REWRITTEN"])
        });
        rewritten_total += rewrites;
        let ran = redis_runs(plain, &mut admin, &out);
        if ran != rewrites {
            disagreements.push(format!(
                "scanner rewrote {rewrites}, Redis ran {ran} of its output for {:?}",
                String::from_utf8_lossy(&m)
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} disagreement(s):\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
    // The corpus did exercise the rewrite.
    assert!(rewritten_total > 500, "{rewritten_total}");
}

/// Issue 19 item 8: redis-cli sessions (PING, then the client closes; Redis then closes TLS
/// without close_notify) end clean, not as `reason="truncated"` errors.
#[test]
fn redis_cli_sessions_end_clean() {
    let Some(s) = setup(ACL) else { return };
    let kw = start(s.pki.dir.path(), &[resource("cache", &s, PROXYUSER, "")]);
    for _ in 0..3 {
        assert_eq!(cli(&kw, "cache", &["PING"]), "PONG");
    }
    kw.assert_clean_ends(3);
}

/// Issue 13 item 15: the plain copies keyward makes of a password (the AUTH it sends on
/// login, the app's AUTH rewritten to keyward's, the file it re-reads per connection) are
/// wiped after use. After 40 sessions on one password and a rotation to another, keyward's
/// whole memory (heap, stacks, mappings) holds no copy of the first one. Failed before the
/// fix: copies were left in freed buffers (the AUTH command's vector reallocated while it
/// was built; the rewritten AUTH in the relay's buffers).
#[test]
fn no_copy_of_a_rotated_password_is_left_in_keyward_memory() {
    let Some(s) = setup(&format!(
        "{ACL}user memuser on >mem-pw-one >mem-pw-two ~* &* +@all\n"
    )) else {
        return;
    };
    if !crate::support::procs::can_read_memory() {
        return;
    }
    let file = s.pki.write("mem-pw", "mem-pw-one\n");
    let auth = format!(
        "      type: password\n      username: memuser\n      password: ${{file:{}}}\n",
        file.display()
    );
    let kw = start(s.pki.dir.path(), &[resource("mem", &s, &auth, "")]);
    for n in 0..40 {
        // Every fourth app sends an AUTH of its own, which keyward rewrites to its password.
        let args: &[&str] = if n % 4 == 0 {
            &["-a", "app-side-pw", "ACL", "WHOAMI"]
        } else {
            &["ACL", "WHOAMI"]
        };
        assert_eq!(cli(&kw, "mem", args), "memuser");
    }
    s.pki.write("mem-pw", "mem-pw-two\n");
    // The rotation reloads the resource (its snapshot then holds the new secret): scanned
    // before that, the current secret may be nowhere but the file.
    kw.wait_log("the reload of the rotated password", |v| {
        v["resource"] == "mem"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("resource updated"))
    });
    assert_eq!(cli(&kw, "mem", &["ACL", "WHOAMI"]), "memuser");
    kw.assert_clean_ends(41);
    crate::support::procs::assert_only_the_new_secret_in_memory(
        kw.pid(),
        b"mem-pw-one",
        b"mem-pw-two",
    );
}

fn connected_clients(kw: &Keyward) -> u64 {
    let info = cli(kw, "legacy", &["INFO", "clients"]);
    info.lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no connected_clients in {info}"))
}

/// Issue 18 (hostile traffic): an app connection that has not sent a command holds no
/// upstream session; its first command logs in as before. Failed before: keyward logged in
/// upstream at accept, so 20 silent connections held 20 TLS sessions on the server (and a
/// connect-and-reset storm on the listener was a TLS handshake storm on the server).
#[test]
fn a_silent_app_connection_opens_no_upstream_session_until_its_first_command() {
    use std::io::{Read, Write};
    let Some(s) = setup(ACL) else { return };
    let kw = cache_and_legacy(&s);
    // The INFO caller itself is the one client.
    assert_eq!(connected_clients(&kw), 1);
    let mut silent: Vec<std::net::TcpStream> = (0..20)
        .map(|_| std::net::TcpStream::connect(kw.addr("cache")).unwrap())
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(connected_clients(&kw), 1, "{}", kw.log_text());
    // The first command: logged in as the configured user, answered in order.
    let first = &mut silent[0];
    first.write_all(b"ACL WHOAMI\r\n").unwrap();
    first
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while !got.ends_with(b"\r\nproxyuser\r\n") {
        let n = first.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"$9\r\nproxyuser\r\n");
    assert_eq!(connected_clients(&kw), 2);
    drop(silent);
    // Silent connections that close end clean (20, plus the 3 INFO sessions).
    kw.assert_clean_ends(23);
    // A first command Redis would refuse (a bulk of 2^31-1 bytes) is answered as Redis would,
    // without an upstream session.
    let mut bad = std::net::TcpStream::connect(kw.addr("cache")).unwrap();
    bad.write_all(b"*1\r\n$2147483647\r\nxxxx").unwrap();
    bad.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut reply = String::new();
    bad.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "-ERR Protocol error: invalid bulk length\r\n");
    assert_eq!(connected_clients(&kw), 1, "{}", kw.log_text());
}
