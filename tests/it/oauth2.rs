//! OAuth2 in-process: a real HTTPS token endpoint that counts its calls, a real HTTPS API that
//! checks the tokens, keyward in between.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::support::httpd::{always_ok, httpd, serve_on, Handler, Httpd, Recorded, Reply};
use crate::support::{Pki, Proxy, DEADLINE};

const BOTH: &[&[u8]] = &[b"h2", b"http/1.1"];

/// A token request as received: the form body and the Authorization header.
type Form = (String, Option<String>);

/// A token endpoint issuing `tok-1`, `tok-2`, … with `expires_in`; remembers when each was issued.
#[derive(Clone, Default)]
struct Issuer {
    calls: Arc<AtomicUsize>,
    issued: Arc<Mutex<HashMap<String, Instant>>>,
    forms: Arc<Mutex<Vec<Form>>>,
}

impl Issuer {
    fn handler(&self, expires_in: u64, delay: Duration) -> Handler {
        let this = self.clone();
        Arc::new(move |r: &Recorded| {
            let n = this.calls.fetch_add(1, Ordering::SeqCst) + 1;
            let token = format!("tok-{n}");
            this.issued
                .lock()
                .unwrap()
                .insert(token.clone(), Instant::now());
            this.forms.lock().unwrap().push((
                String::from_utf8_lossy(&r.body).into_owned(),
                r.header("authorization"),
            ));
            Reply::ok(format!("{{\"access_token\":\"{token}\",\"token_type\":\"Bearer\",\"expires_in\":{expires_in}}}")).after(delay)
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn token_of(r: &Recorded) -> String {
    r.header("authorization")
        .unwrap_or_default()
        .trim_start_matches("Bearer ")
        .to_owned()
}

struct World {
    pki: Pki,
    token_ep: Httpd,
    api: Httpd,
    proxy: Proxy,
}

async fn world(token_handler: Handler, api_handler: Handler, extra_auth: &str) -> World {
    let pki = Pki::new();
    let token_ep = httpd(
        &pki.server(&["localhost"]),
        None,
        &[b"http/1.1"],
        token_handler,
    )
    .await;
    let api = httpd(&pki.server(&["localhost"]), None, BOTH, api_handler).await;
    let proxy = start(&pki, token_ep.port(), api.port(), extra_auth).await;
    World {
        pki,
        token_ep,
        api,
        proxy,
    }
}

async fn start(pki: &Pki, token_port: u16, api_port: u16, extra_auth: &str) -> Proxy {
    let yaml = config(pki, token_port, api_port, extra_auth);
    Proxy::start(pki.dir.path(), &yaml).await
}

fn config(pki: &Pki, token_port: u16, api_port: u16, extra_auth: &str) -> String {
    let ca = pki.write_ca();
    format!(
        "admin: null\nresources:\n  - name: api\n    protocol: http\n    listen: 127.0.0.1:0\n    upstream: https://localhost:{api_port}\n    tls:\n      ca: {ca}\n    auth:\n      type: oauth2\n      token_url: https://localhost:{token_port}/oauth/token\n      client_id: keyward\n      client_secret: \"s3cr:et\"\n      scopes: [orders.read, orders.write]\n      audience: https://api.example\n      tls:\n        ca: {ca}\n{extra_auth}",
        ca = ca.display()
    )
}

async fn call(
    proxy: &Proxy,
    method: &str,
    body: &'static [u8],
) -> (StatusCode, String, Option<String>) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{}/orders", proxy.addr("api")))
        .body(Full::new(Bytes::from_static(body)))
        .unwrap();
    let resp = tokio::time::timeout(DEADLINE, client.request(req))
        .await
        .expect("deadline")
        .expect("request");
    let status = resp.status();
    let reason = resp
        .headers()
        .get("x-keyward-error")
        .map(|v| v.to_str().unwrap().to_owned());
    let body =
        String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned();
    (status, body, reason)
}

#[tokio::test]
async fn two_hundred_concurrent_requests_cause_exactly_one_token_request() {
    let issuer = Issuer::default();
    let w = world(
        issuer.handler(3600, Duration::from_millis(300)),
        always_ok(),
        "",
    )
    .await;
    let proxy = Arc::new(w.proxy);
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let proxy = proxy.clone();
        tasks.push(tokio::spawn(
            async move { call(&proxy, "GET", b"").await.0 },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(
        issuer.calls(),
        1,
        "single-flight: one token request for 200 waiting app requests"
    );
    assert!(w.api.seen().iter().all(|r| token_of(r) == "tok-1"));
    // The token request itself: client_credentials grant, scopes, audience, Basic client auth.
    let (form, auth) = issuer.forms.lock().unwrap()[0].clone();
    assert!(form.contains("grant_type=client_credentials"), "{form}");
    assert!(form.contains("scope=orders.read+orders.write"), "{form}");
    assert!(
        form.contains("audience=https%3A%2F%2Fapi.example"),
        "{form}"
    );
    assert!(
        !form.contains("client_secret"),
        "with Basic client auth the secret is not in the body: {form}"
    );
    // RFC 6749 §2.3.1: "keyward:s3cr%3Aet" in base64.
    assert_eq!(auth.as_deref(), Some("Basic a2V5d2FyZDpzM2NyJTNBZXQ="));
    assert_eq!(w.token_ep.last().uri, "/oauth/token");
    let _ = &w.pki;
}

#[tokio::test]
async fn client_auth_body_sends_the_credentials_in_the_form() {
    let issuer = Issuer::default();
    let w = world(
        issuer.handler(3600, Duration::ZERO),
        always_ok(),
        "      client_auth: body\n",
    )
    .await;
    assert_eq!(call(&w.proxy, "GET", b"").await.0, StatusCode::OK);
    let (form, auth) = issuer.forms.lock().unwrap()[0].clone();
    assert!(
        form.contains("client_id=keyward") && form.contains("client_secret=s3cr%3Aet"),
        "{form}"
    );
    assert_eq!(auth, None);
}

#[tokio::test]
async fn a_short_lived_token_is_refreshed_before_it_expires_while_requests_keep_succeeding() {
    let issuer = Issuer::default();
    let expired_uses = Arc::new(AtomicUsize::new(0));
    let api: Handler = {
        let (issued, expired_uses) = (issuer.issued.clone(), expired_uses.clone());
        Arc::new(move |r: &Recorded| {
            let age = issued
                .lock()
                .unwrap()
                .get(&token_of(r))
                .map(|t| t.elapsed());
            match age {
                Some(age) if age < Duration::from_secs(2) => Reply::ok("ok"),
                _ => {
                    expired_uses.fetch_add(1, Ordering::SeqCst);
                    Reply::status(StatusCode::UNAUTHORIZED, "expired")
                }
            }
        })
    };
    let w = world(issuer.handler(2, Duration::ZERO), api, "").await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(4500) {
        assert_eq!(call(&w.proxy, "GET", b"").await.0, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        issuer.calls() >= 3,
        "a 2 s token must be refreshed during 4.5 s of traffic (got {} token requests)",
        issuer.calls()
    );
    assert_eq!(
        expired_uses.load(Ordering::SeqCst),
        0,
        "no request may reach the API with an expired token"
    );
}

/// Issue 17 item 9: the current token's expiry is a gauge (an alert can see a token endpoint
/// that stopped renewing before requests fail).
#[tokio::test]
async fn the_token_expiry_is_exported() {
    let issuer = Issuer::default();
    let w = world(issuer.handler(7200, Duration::ZERO), always_ok(), "").await;
    let (status, _, _) = call(&w.proxy, "GET", b"").await;
    assert_eq!(status, StatusCode::OK);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let text = keyward::metrics::metrics().render();
    let expiry: f64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("keyward_oauth2_token_expiration_timestamp_seconds{resource=\"api\"} ")
        })
        .unwrap_or_else(|| panic!("no token expiry gauge:\n{text}"))
        .parse()
        .unwrap();
    // Other tests in this process set the same resource's gauge (one issues 2-second tokens):
    // the value is a token expiry from now on, at most this test's 7200 s ahead.
    assert!(
        expiry > now - 5.0 && expiry < now + 7300.0,
        "{expiry} vs {now}"
    );
}

#[tokio::test]
async fn a_401_drops_the_token_and_retries_once_with_a_fresh_one() {
    let issuer = Issuer::default();
    let api: Handler = Arc::new(|r: &Recorded| {
        if token_of(r) == "tok-1" {
            Reply::status(StatusCode::UNAUTHORIZED, "revoked")
        } else {
            Reply::ok(format!("ok with {}", token_of(r)))
        }
    });
    let w = world(issuer.handler(3600, Duration::ZERO), api, "").await;
    let (status, body, _) = call(&w.proxy, "POST", b"{\"order\":1}").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok with tok-2"));
    assert_eq!(issuer.calls(), 2);
    let seen = w.api.seen();
    assert_eq!(seen.len(), 2, "exactly one retry");
    assert_eq!(
        seen[1].body, b"{\"order\":1}",
        "the retry carries the same (buffered) body"
    );
    // A 401 with a fresh token goes to the app as it is: no retry loop.
    let always_401: Handler = Arc::new(|_| Reply::status(StatusCode::UNAUTHORIZED, "no"));
    let issuer = Issuer::default();
    let w = world(issuer.handler(3600, Duration::ZERO), always_401, "").await;
    assert_eq!(call(&w.proxy, "GET", b"").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(w.api.seen().len(), 2);
    assert_eq!(issuer.calls(), 2);
}

#[tokio::test]
async fn token_endpoint_down_is_a_502_with_the_reason_then_recovers() {
    let pki = Pki::new();
    let issuer = Issuer::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let token_addr = listener.local_addr().unwrap();
    drop(listener);
    let api = httpd(&pki.server(&["localhost"]), None, BOTH, always_ok()).await;
    let proxy = start(&pki, token_addr.port(), api.port(), "").await;
    let (status, body, reason) = call(&proxy, "GET", b"").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(reason.as_deref(), Some("token_endpoint"));
    assert!(
        body.starts_with("keyward: upstream \"api\": oauth2 token endpoint: connection refused"),
        "{body}"
    );
    assert!(
        api.seen().is_empty(),
        "no request may reach the API without a token"
    );
    // The endpoint comes back on the same port: the next request succeeds.
    let listener = tokio::net::TcpListener::bind(token_addr).await.unwrap();
    let _token_ep = serve_on(
        listener,
        &pki.server(&["localhost"]),
        None,
        &[b"http/1.1"],
        issuer.handler(3600, Duration::ZERO),
    );
    assert_eq!(call(&proxy, "GET", b"").await.0, StatusCode::OK);
    assert_eq!(token_of(&api.last()), "tok-1");
}

#[tokio::test]
async fn an_error_from_the_token_endpoint_is_reported_with_its_oauth_error() {
    let refusing: Handler = Arc::new(|_| {
        Reply::status(
            StatusCode::UNAUTHORIZED,
            "{\"error\":\"invalid_client\",\"error_description\":\"bad secret\"}",
        )
    });
    let w = world(refusing, always_ok(), "").await;
    let (status, body, _) = call(&w.proxy, "GET", b"").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        body.contains("oauth2 token endpoint: HTTP 401 Unauthorized: invalid_client: bad secret"),
        "{body}"
    );
    assert!(
        !body.contains("s3cr"),
        "the client secret must not appear: {body}"
    );
    assert_eq!(
        w.token_ep.seen().len(),
        3,
        "retried with backoff: 3 attempts"
    );
}

#[tokio::test]
async fn refresh_token_grant_is_used_when_configured() {
    let issuer = Issuer::default();
    let w = world(
        issuer.handler(3600, Duration::ZERO),
        always_ok(),
        "      refresh_token: rt-abc\n",
    )
    .await;
    assert_eq!(call(&w.proxy, "GET", b"").await.0, StatusCode::OK);
    let (form, _) = issuer.forms.lock().unwrap()[0].clone();
    assert!(
        form.contains("grant_type=refresh_token") && form.contains("refresh_token=rt-abc"),
        "{form}"
    );
}

/// Issue 17 item 4: `keyward probe` on an http resource obtains the credential and sends one
/// request with it: a token endpoint that rejects the client secret makes it fail (exit 1,
/// with the endpoint's OAuth2 error) where it used to say the resource works; with a good
/// secret it reports the upstream's answer (exit 0), and the API saw the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_fetches_the_token_and_sends_one_request() {
    let refusing: Handler = Arc::new(|_| {
        Reply::status(
            StatusCode::UNAUTHORIZED,
            "{\"error\":\"invalid_client\",\"error_description\":\"bad secret\"}",
        )
    });
    let pki = Pki::new();
    let cert = pki.server(&["localhost"]);
    let bad_ep = httpd(&cert, None, &[b"http/1.1"], refusing).await;
    let issuer = Issuer::default();
    let good_ep = httpd(
        &cert,
        None,
        &[b"http/1.1"],
        issuer.handler(3600, Duration::ZERO),
    )
    .await;
    let api = httpd(&cert, None, BOTH, always_ok()).await;
    let probe = |token_port: u16, name: &str| {
        let conf = pki.write(name, &config(&pki, token_port, api.port(), ""));
        let conf2 = conf.clone();
        tokio::task::spawn_blocking(move || crate::support::procs::probe(&conf2, "api"))
    };
    let (code, text) = probe(bad_ep.port(), "bad.yaml").await.unwrap();
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("request HEAD /: FAILED: keyward answered 502")
            && text.contains("invalid_client: bad secret"),
        "{text}"
    );
    assert!(
        !text.contains("s3cr"),
        "the client secret must not appear: {text}"
    );
    let (code, text) = probe(good_ep.port(), "good.yaml").await.unwrap();
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("request HEAD /: ok, the upstream answered 200 OK with the credential"),
        "{text}"
    );
    let seen = api.seen();
    assert_eq!(seen.len(), 1, "one request reached the API");
    assert_eq!(seen[0].method, "HEAD");
    assert_eq!(token_of(&seen[0]), "tok-1");
}

/// Request events say when a token was fetched for a request and when a 401 was retried
/// with a fresh one (the sink is this test process's; other in-process resources record
/// nothing without an audit block of their own).
#[tokio::test]
async fn request_events_record_token_fetches_and_401_retries() {
    let issuer = Issuer::default();
    let api: Handler = Arc::new(|r: &Recorded| {
        if token_of(r) == "tok-1" {
            Reply::status(StatusCode::UNAUTHORIZED, "revoked")
        } else {
            Reply::ok(format!("ok with {}", token_of(r)))
        }
    });
    let pki = Pki::new();
    let token_ep = httpd(
        &pki.server(&["localhost"]),
        None,
        &[b"http/1.1"],
        issuer.handler(3600, Duration::ZERO),
    )
    .await;
    let api = httpd(&pki.server(&["localhost"]), None, BOTH, api).await;
    let file = pki.dir.path().join("audit.jsonl");
    let audit = keyward::config::AuditSettings {
        sink: keyward::config::AuditSink::File {
            path: file.clone(),
            max_size: 1 << 20,
            max_files: 1,
        },
        queue: 1024,
    };
    keyward::audit::configure(Some(&audit)).unwrap();
    let yaml = format!(
        "audit:\n  sink: file\n  path: {}\n{}    audit: requests\n",
        file.display(),
        config(&pki, token_ep.port(), api.port(), "")
    );
    let proxy = Proxy::start(pki.dir.path(), &yaml).await;
    let (status, body, _) = call(&proxy, "POST", b"{\"order\":1}").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok with tok-2"));
    let (status, _, _) = call(&proxy, "GET", b"").await;
    assert_eq!(status, StatusCode::OK);
    let mut requests = Vec::new();
    for _ in 0..200 {
        requests = std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|e| e["event"] == "request")
            .collect();
        if requests.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(requests.len(), 2, "{requests:#?}");
    let first = requests.iter().find(|e| e["method"] == "POST").unwrap();
    assert_eq!(first["credential"], "oauth2");
    assert_eq!(first["token_refreshed"], true, "{first}");
    assert_eq!(first["retried_401"], true, "{first}");
    assert_eq!(first["status"], 200);
    let second = requests.iter().find(|e| e["method"] == "GET").unwrap();
    assert_eq!(second["token_refreshed"], false, "cached: {second}");
    assert_eq!(second["retried_401"], false, "{second}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        !text.contains("tok-") && !text.contains("s3cr:et"),
        "{text}"
    );
    let start = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["event"] == "session_start")
        .unwrap();
    assert_eq!(
        start["identity"], "keyward",
        "the OAuth2 client id: {start}"
    );
}

/// The assertion world: `tests/oauth2_jwt.py`, a TLS token endpoint and API that verify each
/// JWT keyward signs with PyJWT + cryptography (not ours), started once; its keys and Google
/// service-account file are in `pki`'s directory.
struct JwtWorld {
    pki: Pki,
    port: u16,
    _child: std::process::Child,
}

fn jwt_world() -> Option<&'static JwtWorld> {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    static WORLD: std::sync::OnceLock<Option<JwtWorld>> = std::sync::OnceLock::new();
    WORLD
        .get_or_init(|| {
            let available = Command::new("python3")
                .args(["-c", "import jwt, cryptography"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !crate::support::require(
                "python3 with PyJWT and cryptography (pip install PyJWT cryptography)",
                available,
            ) {
                return None;
            }
            let pki = Pki::new();
            let server = pki.server(&["localhost"]);
            let cert = pki.write("jwt-server.pem", &server.cert_pem);
            let key = pki.write("jwt-server.key", &server.key_pem);
            pki.write_ca();
            let mut child = Command::new("python3")
                .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oauth2_jwt.py"))
                .arg(pki.dir.path())
                .arg(&cert)
                .arg(&key)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            // Held open for the life of the test binary: the script exits when it closes.
            std::mem::forget(child.stdin.take());
            let mut line = String::new();
            std::io::BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            let v: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("oauth2_jwt.py did not start ({e}): {line:?}"));
            Some(JwtWorld {
                pki,
                port: v["port"].as_u64().unwrap() as u16,
                _child: child,
            })
        })
        .as_ref()
}

impl JwtWorld {
    /// keyward with an `api` resource in front of the script's API and `auth` (after `type`).
    async fn proxy(&self, dir: &std::path::Path, auth: &str) -> Proxy {
        let yaml = format!(
            "admin: null\nresources:\n  - name: api\n    protocol: http\n    listen: 127.0.0.1:0\n    upstream: https://localhost:{port}/api\n    tls:\n      ca: {ca}\n    auth:\n      type: oauth2\n      tls:\n        ca: {ca}\n{auth}",
            port = self.port,
            ca = self.pki.path("ca.pem").display(),
        )
        .replace("{dir}", &self.pki.dir.path().display().to_string())
        .replace("{token_url}", &format!("https://localhost:{}/token", self.port));
        Proxy::start(dir, &yaml).await
    }

    fn log(&self) -> Vec<serde_json::Value> {
        let out = std::process::Command::new("curl")
            .args(["-sf", "--cacert"])
            .arg(self.pki.path("ca.pem"))
            .arg(format!("https://localhost:{}/log", self.port))
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The log entry whose assertion (or client assertion) has `iss`.
    fn entry(&self, iss: &str) -> serde_json::Value {
        self.log()
            .into_iter()
            .rev()
            .find(|e| e["claims"]["iss"] == iss)
            .unwrap_or_else(|| panic!("no verified assertion from {iss}"))
    }
}

/// Two requests through keyward: both reach the API with a token the endpoint issued for
/// `via`; one token request.
async fn assert_served(proxy: &Proxy, via: &str) {
    for _ in 0..2 {
        let (status, body, reason) = call(proxy, "GET", b"").await;
        assert_eq!((status, reason), (StatusCode::OK, None), "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["via"], via, "{body}");
    }
}

#[tokio::test]
async fn jwt_bearer_rs256_assertions_are_verified_by_pyjwt() {
    let Some(w) = jwt_world() else { return };
    let dir = tempfile::tempdir().unwrap();
    let proxy = w
        .proxy(
            dir.path(),
            "      token_url: \"{token_url}\"\n      grant: jwt_bearer\n      assertion:\n        key: ${file:{dir}/rsa.pem}\n        algorithm: RS256\n        issuer: rs-issuer\n        subject: user@example.com\n        key_id: rs-k1\n        lifetime: 1h\n      scopes: [read, write]\n",
        )
        .await;
    assert_served(&proxy, "RS256").await;
    let e = w.entry("rs-issuer");
    assert_eq!(
        e["header"],
        serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "rs-k1"})
    );
    assert_eq!(e["claims"]["sub"], "user@example.com");
    assert_eq!(e["scope"], "read write");
    let life = e["claims"]["exp"].as_u64().unwrap() - e["claims"]["iat"].as_u64().unwrap();
    assert_eq!(life, 3600);
    assert_eq!(
        e["form_keys"],
        serde_json::json!(["assertion", "grant_type", "scope"])
    );
}

#[tokio::test]
async fn jwt_bearer_es256_assertions_are_verified_by_pyjwt() {
    let Some(w) = jwt_world() else { return };
    let dir = tempfile::tempdir().unwrap();
    let proxy = w
        .proxy(
            dir.path(),
            "      token_url: \"{token_url}\"\n      grant: jwt_bearer\n      assertion:\n        key: ${file:{dir}/ec.pem}\n        algorithm: ES256\n        issuer: es-issuer\n        lifetime: 10m\n",
        )
        .await;
    assert_served(&proxy, "ES256").await;
    let e = w.entry("es-issuer");
    assert_eq!(
        e["header"],
        serde_json::json!({"alg": "ES256", "typ": "JWT"})
    );
    assert!(e["claims"].get("sub").is_none(), "{e}");
    let life = e["claims"]["exp"].as_u64().unwrap() - e["claims"]["iat"].as_u64().unwrap();
    assert_eq!(life, 600);
}

#[tokio::test]
async fn a_google_service_account_key_file_sets_key_kid_issuer_and_scope_claim() {
    let Some(w) = jwt_world() else { return };
    let dir = tempfile::tempdir().unwrap();
    let proxy = w
        .proxy(
            dir.path(),
            "      token_url: \"{token_url}\"\n      google_service_account: ${file:{dir}/sa.json}\n      scopes: [https://www.googleapis.com/auth/cloud-platform, https://www.googleapis.com/auth/devstorage.read_only]\n",
        )
        .await;
    assert_served(&proxy, "google").await;
    let e = w.entry("svc@proj.iam.gserviceaccount.com");
    assert_eq!(e["header"]["kid"], "sa-kid-1");
    assert_eq!(
        e["form_keys"],
        serde_json::json!(["assertion", "grant_type"]),
        "Google takes the scopes in the claim"
    );
}

#[tokio::test]
async fn private_key_jwt_authenticates_the_client_credentials_grant() {
    let Some(w) = jwt_world() else { return };
    let dir = tempfile::tempdir().unwrap();
    let proxy = w
        .proxy(
            dir.path(),
            "      token_url: \"{token_url}\"\n      client_id: kw-client\n      client_auth: private_key_jwt\n      assertion:\n        key: ${file:{dir}/client.pem}\n        algorithm: RS256\n      scopes: [read]\n",
        )
        .await;
    assert_served(&proxy, "private_key_jwt").await;
    let e = w.entry("kw-client");
    assert_eq!(e["claims"]["sub"], "kw-client");
    let life = e["claims"]["exp"].as_u64().unwrap() - e["claims"]["iat"].as_u64().unwrap();
    assert!(life <= 300, "a client assertion is short-lived: {life} s");
    assert_eq!(
        e["form_keys"],
        serde_json::json!([
            "client_assertion",
            "client_assertion_type",
            "client_id",
            "grant_type",
            "scope"
        ])
    );
}

#[tokio::test]
async fn a_key_the_endpoint_does_not_know_is_a_502_naming_invalid_grant() {
    let Some(w) = jwt_world() else { return };
    let dir = tempfile::tempdir().unwrap();
    let proxy = w
        .proxy(
            dir.path(),
            "      token_url: \"{token_url}\"\n      grant: jwt_bearer\n      assertion:\n        key: ${file:{dir}/unknown.pem}\n        algorithm: RS256\n        issuer: rs-issuer\n        subject: user@example.com\n        key_id: rs-k1\n",
        )
        .await;
    let (status, body, reason) = call(&proxy, "GET", b"").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(reason.as_deref(), Some("token_endpoint"));
    assert!(
        body.contains("HTTP 400 Bad Request: invalid_grant: Signature verification failed"),
        "{body}"
    );
    assert!(!body.contains("PRIVATE KEY"), "{body}");
}
