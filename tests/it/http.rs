//! HTTP resources in-process: keyward in front of a real HTTPS upstream that records what it
//! received, driven by a real HTTP client in plain HTTP.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use keyward::pki::{Ca, Usage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::httpd::{always_ok, httpd, Handler, Httpd, Recorded, Reply};
use crate::support::{Pki, Proxy, DEADLINE};

const BOTH: &[&[u8]] = &[b"h2", b"http/1.1"];
const H1: &[&[u8]] = &[b"http/1.1"];

struct Setup {
    pki: Pki,
    up: Httpd,
    proxy: Proxy,
}

/// An upstream for localhost with `alpn` and `handler`, and keyward in front of it: resource
/// "api", upstream `https://localhost:PORT{base}`, plus `extra` YAML lines for the resource.
async fn setup(alpn: &[&[u8]], handler: Handler, base: &str, extra: &str) -> Setup {
    let pki = Pki::new();
    let up = httpd(&pki.server(&["localhost"]), None, alpn, handler).await;
    let ca = pki.write_ca();
    let yaml = format!(
        "admin: null\nresources:\n  - name: api\n    protocol: http\n    listen: 127.0.0.1:0\n    upstream: https://localhost:{}{base}\n    tls:\n      ca: {}\n{extra}",
        up.port(),
        ca.display()
    );
    let proxy = Proxy::start(pki.dir.path(), &yaml).await;
    Setup { pki, up, proxy }
}

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

fn get(proxy: &Proxy, path: &str) -> http::request::Builder {
    Request::get(format!("http://{}{path}", proxy.addr("api")))
}

async fn fetch(_proxy: &Proxy, req: http::request::Builder) -> Answer {
    let req = req.body(Full::new(Bytes::new())).unwrap();
    fetch_req(req).await
}

async fn fetch_req(req: Request<Full<Bytes>>) -> Answer {
    let resp = tokio::time::timeout(DEADLINE, client().request(req))
        .await
        .expect("deadline")
        .expect("request");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body =
        String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned();
    Answer {
        status,
        headers,
        body,
    }
}

#[tokio::test]
async fn bearer_token_replaces_the_apps_authorization() {
    let s = setup(
        BOTH,
        always_ok(),
        "",
        "    auth:\n      type: bearer\n      token: kw-bearer-secret\n",
    )
    .await;
    let a = fetch(
        &s.proxy,
        get(&s.proxy, "/x").header("authorization", "Bearer app-made-this-up"),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let seen = s.up.last();
    assert_eq!(seen.header_count("authorization"), 1);
    assert_eq!(
        seen.header("authorization").unwrap(),
        "Bearer kw-bearer-secret"
    );
}

#[tokio::test]
async fn pass_client_auth_keeps_the_apps_authorization() {
    let s = setup(
        BOTH,
        always_ok(),
        "",
        "    pass_client_auth: true\n    auth:\n      type: bearer\n      token: kw\n",
    )
    .await;
    fetch(
        &s.proxy,
        get(&s.proxy, "/").header("authorization", "Bearer app"),
    )
    .await;
    assert_eq!(s.up.last().header("authorization").unwrap(), "Bearer app");
}

#[tokio::test]
async fn api_key_goes_in_the_configured_header() {
    let s = setup(
        BOTH,
        always_ok(),
        "",
        "    auth:\n      type: api_key\n      header: X-API-Key\n      value: k-123\n",
    )
    .await;
    fetch(&s.proxy, get(&s.proxy, "/").header("x-api-key", "app-key")).await;
    let seen = s.up.last();
    assert_eq!(seen.header_count("x-api-key"), 1);
    assert_eq!(seen.header("x-api-key").unwrap(), "k-123");
}

#[tokio::test]
async fn api_key_goes_in_the_query_and_replaces_the_apps() {
    let s = setup(
        BOTH,
        always_ok(),
        "",
        "    auth:\n      type: api_key\n      query: api_key\n      value: \"k 1&2\"\n",
    )
    .await;
    fetch(&s.proxy, get(&s.proxy, "/search?q=rust&api_key=app")).await;
    let uri = s.up.last().uri;
    assert!(uri.ends_with("/search?q=rust&api_key=k+1%262"), "{uri}");
}

#[tokio::test]
async fn basic_auth_is_base64_of_user_and_password() {
    let s = setup(
        BOTH,
        always_ok(),
        "",
        "    auth:\n      type: basic\n      username: svc\n      password: p@ss:w0rd\n",
    )
    .await;
    fetch(&s.proxy, get(&s.proxy, "/")).await;
    assert_eq!(
        s.up.last().header("authorization").unwrap(),
        "Basic c3ZjOnBAc3M6dzByZA=="
    );
}

#[tokio::test]
async fn resource_headers_are_set_and_may_be_secrets() {
    let pki_dir_secret = "    headers:\n      X-Tenant: acme\n      X-Signature: ${file:sig}\n";
    let pki = Pki::new();
    pki.write("sig", "from-a-file\n");
    let up = httpd(&pki.server(&["localhost"]), None, BOTH, always_ok()).await;
    let yaml = format!(
        "admin: null\nresources:\n  - name: api\n    protocol: http\n    listen: 127.0.0.1:0\n    upstream: https://localhost:{}\n    tls:\n      ca: {}\n{pki_dir_secret}",
        up.port(),
        pki.write_ca().display()
    );
    let proxy = Proxy::start(pki.dir.path(), &yaml).await;
    fetch(&proxy, get(&proxy, "/").header("x-tenant", "app-chosen")).await;
    let seen = up.last();
    assert_eq!(seen.header("x-tenant").unwrap(), "acme");
    assert_eq!(seen.header("x-signature").unwrap(), "from-a-file");
}

#[tokio::test]
async fn base_path_joins_and_the_query_is_kept_and_host_is_the_upstreams() {
    let s = setup(H1, always_ok(), "/v1", "").await;
    fetch(
        &s.proxy,
        get(&s.proxy, "/items/7?expand=a&x=%2F").header("host", "app.local"),
    )
    .await;
    let seen = s.up.last();
    assert_eq!(seen.uri, "/v1/items/7?expand=a&x=%2F");
    assert_eq!(
        seen.header("host").unwrap(),
        format!("localhost:{}", s.up.port())
    );
}

#[tokio::test]
async fn preserve_host_keeps_the_apps_host() {
    let s = setup(H1, always_ok(), "", "    preserve_host: true\n").await;
    fetch(&s.proxy, get(&s.proxy, "/").header("host", "app.local")).await;
    assert_eq!(s.up.last().header("host").unwrap(), "app.local");
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed() {
    let s = setup(H1, always_ok(), "", "").await;
    let req = get(&s.proxy, "/")
        .header("connection", "x-private-hop")
        .header("x-private-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("x-end-to-end", "kept");
    fetch(&s.proxy, req).await;
    let seen = s.up.last();
    for gone in ["x-private-hop", "keep-alive", "proxy-connection"] {
        assert!(seen.header(gone).is_none(), "{gone} reached the upstream");
    }
    assert_eq!(seen.header("x-end-to-end").unwrap(), "kept");
}

#[tokio::test]
async fn h2_upstream_carries_many_concurrent_requests_on_one_connection() {
    let s = setup(&[b"h2"], always_ok(), "", "    http2: always\n").await;
    let mut tasks = Vec::new();
    for i in 0..64 {
        let req = Request::get(format!("http://{}/r/{i}", s.proxy.addr("api")))
            .body(Full::new(Bytes::new()))
            .unwrap();
        tasks.push(tokio::spawn(fetch_req(req)));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().status, StatusCode::OK);
    }
    let seen = s.up.seen();
    assert_eq!(seen.len(), 64);
    assert!(seen.iter().all(|r| r.version == http::Version::HTTP_2));
    assert_eq!(
        s.up.conns.load(Ordering::SeqCst),
        1,
        "all requests must share one h2 connection"
    );
}

#[tokio::test]
async fn auto_mode_uses_h2_when_the_upstream_offers_it() {
    let s = setup(BOTH, always_ok(), "", "").await;
    fetch(&s.proxy, get(&s.proxy, "/")).await;
    assert_eq!(s.up.last().version, http::Version::HTTP_2);
    let s = setup(H1, always_ok(), "", "").await;
    fetch(&s.proxy, get(&s.proxy, "/")).await;
    assert_eq!(s.up.last().version, http::Version::HTTP_11);
}

#[tokio::test]
async fn a_100_mib_upload_streams_with_bounded_memory() {
    let s = setup(BOTH, always_ok(), "", "").await;
    const TOTAL: usize = 100 << 20;
    const CHUNK: usize = 64 << 10;
    let chunks = futures_stream(TOTAL / CHUNK, CHUNK);
    let body = StreamBody::new(chunks);
    let req = Request::post(format!("http://{}/upload", s.proxy.addr("api")))
        .body(body)
        .unwrap();
    let baseline = rss_kib();
    let peak = Arc::new(AtomicUsize::new(baseline));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let c: Client<_, StreamBody<_>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = tokio::time::timeout(Duration::from_secs(60), c.request(req))
        .await
        .unwrap()
        .unwrap();
    sampler.abort();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(s.up.last().body_len, TOTAL);
    let grew_mib = (peak.load(Ordering::Relaxed).saturating_sub(baseline)) / 1024;
    assert!(
        grew_mib < 48,
        "memory grew by {grew_mib} MiB while streaming 100 MiB"
    );
}

fn futures_stream(
    n: usize,
    size: usize,
) -> impl futures_core::Stream<Item = Result<hyper::body::Frame<Bytes>, std::convert::Infallible>> {
    let chunk = Bytes::from(vec![7u8; size]);
    tokio_stream_iter((0..n).map(move |_| Ok(hyper::body::Frame::data(chunk.clone()))))
}

/// A stream over an iterator (no extra crates).
fn tokio_stream_iter<I: Iterator + Unpin>(iter: I) -> IterStream<I> {
    IterStream(iter)
}

struct IterStream<I>(I);

impl<I: Iterator + Unpin> futures_core::Stream for IterStream<I> {
    type Item = I::Item;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<I::Item>> {
        std::task::Poll::Ready(self.0.next())
    }
}

fn rss_kib() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn wrong_ca_is_a_502_naming_the_reason() {
    let pki = Pki::new();
    let other = Ca::new("other").unwrap();
    let up = httpd(
        &other.leaf("u", &["localhost"], Usage::Server).unwrap(),
        None,
        BOTH,
        always_ok(),
    )
    .await;
    let yaml = format!("admin: null\nresources:\n  - name: api\n    protocol: http\n    listen: 127.0.0.1:0\n    upstream: https://localhost:{}\n    tls:\n      ca: {}\n", up.port(), pki.write_ca().display());
    let proxy = Proxy::start(pki.dir.path(), &yaml).await;
    let a = fetch(&proxy, get(&proxy, "/")).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    assert_eq!(a.headers["x-keyward-error"], "unknown_issuer");
    assert!(
        a.body
            .starts_with("keyward: upstream \"api\": unknown issuer"),
        "{}",
        a.body
    );
}

#[tokio::test]
async fn wrong_name_is_a_502_naming_the_name() {
    let pki = Pki::new();
    let up = httpd(&pki.server(&["api.internal"]), None, BOTH, always_ok()).await;
    let yaml = format!("admin: null\nresources:\n  - name: api\n    protocol: http\n    listen: 127.0.0.1:0\n    upstream: https://localhost:{}\n    tls:\n      ca: {}\n", up.port(), pki.write_ca().display());
    let proxy = Proxy::start(pki.dir.path(), &yaml).await;
    let a = fetch(&proxy, get(&proxy, "/")).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    assert_eq!(a.headers["x-keyward-error"], "name_mismatch");
    assert!(
        a.body
            .contains("certificate not valid for name \"localhost\""),
        "{}",
        a.body
    );
}

#[tokio::test]
async fn refused_is_a_502() {
    let pki = Pki::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let yaml = format!("admin: null\nresources:\n  - name: api\n    protocol: http\n    listen: 127.0.0.1:0\n    upstream: https://localhost:{port}\n    tls:\n      ca: {}\n", pki.write_ca().display());
    let proxy = Proxy::start(pki.dir.path(), &yaml).await;
    let a = fetch(&proxy, get(&proxy, "/")).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    assert_eq!(a.headers["x-keyward-error"], "connect_refused");
    assert!(a.body.contains("connection refused"), "{}", a.body);
}

#[tokio::test]
async fn a_slow_upstream_is_a_504() {
    let slow: Handler = Arc::new(|_| Reply::ok("late").after(Duration::from_secs(5)));
    let s = setup(BOTH, slow, "", "    response_timeout: 200ms\n").await;
    let started = Instant::now();
    let a = fetch(&s.proxy, get(&s.proxy, "/")).await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(a.headers["x-keyward-error"], "response_timeout");
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// The response timeout is kept per connection on one timer, armed for an earlier request's
/// deadline: a later request on the same connection still gets its whole timeout, and its 504
/// when that passes.
#[tokio::test]
async fn a_later_request_on_a_kept_alive_connection_gets_its_whole_response_timeout() {
    let handler: Handler = Arc::new(|r: &Recorded| {
        if r.uri.ends_with("/fast") {
            Reply::ok("fast")
        } else {
            Reply::ok("late").after(Duration::from_secs(5))
        }
    });
    let s = setup(BOTH, handler, "", "    response_timeout: 600ms\n").await;
    let tcp = TcpStream::connect(s.proxy.addr("api")).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = |path: &str| {
        Request::get(path)
            .header("host", "api")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let fast = tokio::time::timeout(DEADLINE, sender.send_request(request("/fast")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fast.status(), StatusCode::OK);
    fast.into_body().collect().await.unwrap();
    // The timer is armed for the first request's deadline, 600 ms after it started.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let started = Instant::now();
    let slow = tokio::time::timeout(DEADLINE, sender.send_request(request("/slow")))
        .await
        .unwrap()
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(slow.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(slow.headers()["x-keyward-error"], "response_timeout");
    assert!(
        waited >= Duration::from_millis(580),
        "the 504 came after {waited:?}: at the first request's deadline, not this one's"
    );
    assert!(waited < Duration::from_secs(3), "no 504 until {waited:?}");
}

#[tokio::test]
async fn mtls_client_cert_is_presented_to_the_http_upstream() {
    let pki = Pki::new();
    let up = httpd(
        &pki.server(&["localhost"]),
        Some(&pki.ca),
        BOTH,
        always_ok(),
    )
    .await;
    let (c, k) = pki.write_client("client", "kw-http-client");
    let yaml = format!("admin: null\nresources:\n  - name: api\n    protocol: http\n    listen: 127.0.0.1:0\n    upstream: https://localhost:{}\n    tls:\n      ca: {}\n      client_cert: {}\n      client_key: {}\n", up.port(), pki.write_ca().display(), c.display(), k.display());
    let proxy = Proxy::start(pki.dir.path(), &yaml).await;
    assert_eq!(fetch(&proxy, get(&proxy, "/")).await.status, StatusCode::OK);
    assert_eq!(up.last().client_cn.as_deref(), Some("CN=kw-http-client"));
}

#[tokio::test]
async fn upgrade_is_passed_through_on_http_1_1() {
    let s = setup(BOTH, always_ok(), "", "    idle_timeout: 1s\n").await;
    let mut conn = TcpStream::connect(s.proxy.addr("api")).await.unwrap();
    conn.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(DEADLINE, conn.read_exact(&mut b))
            .await
            .unwrap()
            .unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    conn.write_all(b"frames both ways").await.unwrap();
    let mut echo = [0u8; 16];
    tokio::time::timeout(DEADLINE, conn.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"frames both ways");
    assert_eq!(s.up.last().version, http::Version::HTTP_11);
    // An upgraded connection obeys idle_timeout like any relayed connection.
    let quiet = std::time::Instant::now();
    let mut more = [0u8; 1];
    let n = tokio::time::timeout(DEADLINE, conn.read(&mut more))
        .await
        .expect("an idle upgraded connection must be closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let waited = quiet.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(900),
        "{waited:?}"
    );
    // The upgraded relay's end is recorded once, like any connection's.
    let res = s.proxy.state.resource("api").unwrap();
    let start = std::time::Instant::now();
    while res.last_error().is_none() && start.elapsed() < DEADLINE {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        res.last_error().map(|e| e.error.reason),
        Some(keyward::error::Reason::IdleTimeout)
    );
}

#[tokio::test]
async fn expect_100_continue_works() {
    let s = setup(BOTH, always_ok(), "", "").await;
    let mut conn = TcpStream::connect(s.proxy.addr("api")).await.unwrap();
    conn.write_all(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut first = [0u8; 25];
    tokio::time::timeout(DEADLINE, conn.read_exact(&mut first))
        .await
        .unwrap()
        .unwrap();
    assert!(
        first.starts_with(b"HTTP/1.1 100 Continue"),
        "{}",
        String::from_utf8_lossy(&first)
    );
    conn.write_all(b"hello").await.unwrap();
    let mut rest = vec![0u8; 12];
    tokio::time::timeout(DEADLINE, conn.read_exact(&mut rest))
        .await
        .unwrap()
        .unwrap();
    let mut text = String::from_utf8_lossy(&first).into_owned();
    text.push_str(&String::from_utf8_lossy(&rest));
    assert!(text.contains("HTTP/1.1 200"), "{text}");
    assert_eq!(s.up.last().body, b"hello");
}

#[tokio::test]
async fn keep_alive_serves_many_requests_on_one_app_connection() {
    let s = setup(H1, always_ok(), "", "").await;
    let c = client();
    for i in 0..5 {
        let req = Request::get(format!("http://{}/k/{i}", s.proxy.addr("api")))
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(c.request(req).await.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(
        s.proxy.state.resource("api").unwrap().total(),
        1,
        "one app connection for five requests"
    );
    assert_eq!(
        s.up.conns.load(Ordering::SeqCst),
        1,
        "one pooled upstream connection"
    );
    let _ = &s.pki;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_idle_timeout() {
    let s = setup(H1, always_ok(), "", "    idle_timeout: 300ms\n").await;
    let mut conn = TcpStream::connect(s.proxy.addr("api")).await.unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(DEADLINE, conn.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    let n = tokio::time::timeout(DEADLINE, conn.read(&mut buf))
        .await
        .expect("closed within the deadline")
        .unwrap_or(0);
    assert_eq!(n, 0, "the idle connection is closed");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "not before the idle timeout"
    );
}

/// TRACE would echo the injected credential back to the app and CONNECT would tunnel with
/// it: both get a 405 naming the reason, and reach the upstream only when a resource opts in.
#[tokio::test]
async fn trace_and_connect_are_refused_unless_allowed() {
    let s = setup(
        H1,
        always_ok(),
        "",
        "    auth:\n      type: bearer\n      token: trace-secret\n",
    )
    .await;
    for method in ["TRACE", "CONNECT"] {
        let uri = if method == "CONNECT" {
            format!("{}", s.proxy.addr("api"))
        } else {
            format!("http://{}/x", s.proxy.addr("api"))
        };
        let a = fetch(&s.proxy, Request::builder().method(method).uri(uri)).await;
        assert_eq!(
            a.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method}: {}",
            a.body
        );
        assert_eq!(a.headers["x-keyward-error"], "method_not_allowed");
        assert!(!a.body.contains("trace-secret"));
    }
    assert!(s.up.seen().is_empty(), "the upstream saw a refused method");
    let allowed = setup(H1, always_ok(), "", "    allow_methods: [TRACE]\n").await;
    let a = fetch(
        &allowed.proxy,
        Request::builder()
            .method("TRACE")
            .uri(format!("http://{}/x", allowed.proxy.addr("api"))),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(allowed.up.last().method, "TRACE");
}

/// An API key injected as a query parameter must not come back to the app in a redirect
/// that repeats the request's query.
#[tokio::test]
async fn the_injected_api_key_is_removed_from_redirects() {
    let echo_query: Handler = Arc::new(|r: &Recorded| {
        let query = r.uri.split_once('?').map(|(_, q)| q).unwrap_or_default();
        Reply::status(StatusCode::FOUND, "")
            .header("location", format!("https://localhost/next?{query}#frag"))
            .header("content-location", format!("/here?{query}"))
    });
    let s = setup(
        H1,
        echo_query,
        "",
        "    auth:\n      type: api_key\n      query: api_key\n      value: redirect-secret\n",
    )
    .await;
    let a = fetch(&s.proxy, get(&s.proxy, "/x?page=2")).await;
    assert_eq!(a.status, StatusCode::FOUND);
    assert!(s.up.last().uri.contains("api_key=redirect-secret"));
    assert_eq!(a.headers["location"], "https://localhost/next?page=2#frag");
    assert_eq!(a.headers["content-location"], "/here?page=2");
}

/// Dot segments are removed (RFC 3986 §5.2.4, `%2e` included) before the base path is joined;
/// a path that would climb out of the base path is a 400 and never reaches the upstream.
#[tokio::test]
async fn dot_segments_cannot_leave_the_upstreams_base_path() {
    let s = setup(H1, always_ok(), "/v1", "").await;
    let a = fetch(&s.proxy, get(&s.proxy, "/items/./x/../y")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(s.up.last().uri, "/v1/items/y");
    let before = s.up.seen().len();
    for path in ["/../../admin", "/a/%2e%2e/%2E%2E/admin/x", "/%2e%2e/admin"] {
        let mut conn = TcpStream::connect(s.proxy.addr("api")).await.unwrap();
        conn.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut reply = String::new();
        tokio::time::timeout(DEADLINE, conn.read_to_string(&mut reply))
            .await
            .unwrap()
            .unwrap();
        assert!(reply.starts_with("HTTP/1.1 400"), "{path}: {reply}");
        assert!(reply.contains("path_outside_base"), "{path}: {reply}");
    }
    assert_eq!(
        s.up.seen().len(),
        before,
        "a climbing path reached the upstream"
    );
}

/// `Upgrade: h2c` (Java's HttpClient sends it on every plain-http request) is not an upgrade
/// keyward relays: the request is served as HTTP/1.1 through the pool, its h2c headers dropped
/// (before: each such request opened its own unpooled upstream connection, `upgrade: h2c` sent
/// along).
#[tokio::test]
async fn an_h2c_upgrade_request_is_served_as_plain_http_through_the_pool() {
    let s = setup(H1, always_ok(), "", "").await;
    let mut conn = TcpStream::connect(s.proxy.addr("api")).await.unwrap();
    for _ in 0..5 {
        conn.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n")
            .await
            .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\nok") {
            tokio::time::timeout(DEADLINE, conn.read_exact(&mut b))
                .await
                .unwrap()
                .unwrap();
            head.push(b[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&head)
        );
    }
    let last = s.up.last();
    assert!(last.header("upgrade").is_none(), "upgrade: h2c forwarded");
    assert!(last.header("http2-settings").is_none());
    assert_eq!(
        s.up.conns.load(Ordering::SeqCst),
        1,
        "one pooled upstream connection"
    );
}

/// Issue 19 item 9: requests pipelined before the app half-closes are all answered (before,
/// two pipelined GETs then `shutdown(SHUT_WR)` got one response; directly, two).
#[tokio::test]
async fn pipelined_requests_before_a_half_close_are_all_answered() {
    let s = setup(H1, always_ok(), "", "").await;
    let mut app = TcpStream::connect(s.proxy.addr("api")).await.unwrap();
    let two = "GET /one HTTP/1.1\r\nhost: x\r\n\r\nGET /two HTTP/1.1\r\nhost: x\r\n\r\n";
    app.write_all(two.as_bytes()).await.unwrap();
    app.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(DEADLINE, app.read_to_end(&mut got))
        .await
        .expect("keyward kept the half-closed connection open")
        .unwrap();
    let text = String::from_utf8_lossy(&got);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    assert_eq!(s.up.seen().len(), 2);
}

/// Issue 19 item 10: an app that speaks HTTP/2 with prior knowledge gets an HTTP/1.1 505
/// saying keyward serves HTTP/1.1 to apps, and the end is recorded as the app's protocol
/// error (before: closed with no word, nothing recorded).
#[tokio::test]
async fn an_http2_prior_knowledge_app_is_told_to_use_http1() {
    let s = setup(H1, always_ok(), "", "").await;
    // The preface, then an empty SETTINGS frame, as an h2 client sends them in one write.
    let text = exchange(
        &s.proxy,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 505"), "{text}");
    assert!(text.contains("keyward serves HTTP/1.1 to apps"), "{text}");
    let e = s.proxy.error("api").await;
    assert_eq!(
        (e.side, e.reason),
        (
            keyward::error::Side::Client,
            keyward::error::Reason::Protocol
        )
    );
    assert!(s.up.seen().is_empty(), "nothing reached the upstream");
    // HTTP/1.1 still works, in one read or byte by byte.
    let mut slow = TcpStream::connect(s.proxy.addr("api")).await.unwrap();
    for b in b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n" {
        slow.write_all(&[*b]).await.unwrap();
    }
    let mut got = Vec::new();
    tokio::time::timeout(DEADLINE, slow.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
}

/// A raw HTTPS upstream counting connections opened and closed by keyward: it answers each
/// request `200 ok` and, with `close_idle_after`, closes a connection idle that long (as
/// upstreams with a keep-alive timeout do, unannounced).
struct Counting {
    port: u16,
    opened: Arc<AtomicUsize>,
    closed_by_proxy: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Counting {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn counting_upstream(pki: &Pki, close_idle_after: Option<Duration>) -> Counting {
    let mut config = crate::support::server_config(
        &pki.server(&["localhost"]),
        None,
        &[&rustls::version::TLS13],
    );
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let opened = Arc::new(AtomicUsize::new(0));
    let closed_by_proxy = Arc::new(AtomicUsize::new(0));
    let (o, c) = (opened.clone(), closed_by_proxy.clone());
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            o.fetch_add(1, Ordering::SeqCst);
            let (acceptor, c) = (acceptor.clone(), c.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let read = match close_idle_after {
                        Some(idle) if buf.is_empty() => {
                            match tokio::time::timeout(idle, tls.read(&mut chunk)).await {
                                Ok(r) => r,
                                Err(_) => {
                                    // Idle too long: close (close_notify + FIN).
                                    let _ = tls.shutdown().await;
                                    return;
                                }
                            }
                        }
                        _ => tls.read(&mut chunk).await,
                    };
                    match read {
                        Ok(0) | Err(_) => {
                            c.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if tls.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    Counting {
        port,
        opened,
        closed_by_proxy,
        task,
    }
}

async fn counting_setup(close_idle_after: Option<Duration>, extra: &str) -> (Pki, Counting, Proxy) {
    let pki = Pki::new();
    let up = counting_upstream(&pki, close_idle_after).await;
    let ca = pki.write_ca();
    let yaml = format!(
        "admin: null\nresources:\n  - name: api\n    protocol: http\n    listen: 127.0.0.1:0\n    upstream: https://localhost:{}\n    tls:\n      ca: {}\n{extra}",
        up.port,
        ca.display()
    );
    let proxy = Proxy::start(pki.dir.path(), &yaml).await;
    (pki, up, proxy)
}

/// Sends `bytes` on a fresh app connection to resource "api" and reads until keyward closes it.
async fn exchange(proxy: &Proxy, bytes: &[u8]) -> String {
    let mut conn = TcpStream::connect(proxy.addr("api")).await.unwrap();
    conn.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, conn.read_to_end(&mut answer))
        .await
        .expect("keyward kept the connection open")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// One request on a fresh app connection that closes after it (`Connection: close`).
async fn one_shot(proxy: &Proxy) -> String {
    exchange(
        proxy,
        b"GET /one HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
}

/// Upstream connections outlive the app connections that used them: sequential app
/// connections, each closing right after its response, share the pooled upstream connections
/// (at most one per worker thread: each worker keeps the connections it reads).
#[tokio::test]
async fn app_connections_that_come_and_go_share_pooled_upstream_connections() {
    let (_pki, up, proxy) = counting_setup(None, "").await;
    for _ in 0..10 {
        let answer = one_shot(&proxy).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("ok"), "{answer}");
    }
    let opened = up.opened.load(Ordering::SeqCst);
    assert!(
        (1..=keyward::workers::count()).contains(&opened),
        "{opened} upstream connections for 10 app connections: at most one per worker"
    );
    assert_eq!(up.closed_by_proxy.load(Ordering::SeqCst), 0);
}

/// An upstream that closes an idle pooled connection (its keep-alive timeout) costs the next
/// request nothing: keyward sees the close when it takes the connection and dials anew.
#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_while_idle_is_not_used() {
    let (_pki, up, proxy) = counting_setup(Some(Duration::from_millis(200)), "").await;
    for round in 1..=3 {
        let answer = one_shot(&proxy).await;
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "round {round}: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        up.opened.load(Ordering::SeqCst),
        3,
        "a new connection each round"
    );
    let stats = proxy.state.resource("api").unwrap().clone();
    assert!(stats.last_error().is_none(), "{:?}", stats.last_error());
}

/// `pool_idle_timeout` closes upstream connections nobody used for that long.
#[tokio::test]
async fn idle_pooled_connections_are_closed_after_pool_idle_timeout() {
    let (_pki, up, proxy) = counting_setup(None, "    pool_idle_timeout: 300ms\n").await;
    assert!(one_shot(&proxy).await.starts_with("HTTP/1.1 200"));
    assert_eq!(up.opened.load(Ordering::SeqCst), 1);
    tokio::time::timeout(DEADLINE, async {
        while up.closed_by_proxy.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the idle upstream connection is closed");
    assert!(one_shot(&proxy).await.starts_with("HTTP/1.1 200"));
    assert_eq!(up.opened.load(Ordering::SeqCst), 2);
}

/// Pipelined requests on one app connection reuse its upstream connection: each is sent once
/// the previous response has been read, on the same connection.
#[tokio::test]
async fn pipelined_requests_reuse_one_upstream_connection() {
    let (_pki, up, proxy) = counting_setup(None, "").await;
    let one = "GET /p HTTP/1.1\r\nHost: x\r\n\r\n";
    let last = "GET /p HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let answer = exchange(&proxy, format!("{}{last}", one.repeat(7)).as_bytes()).await;
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 8, "{answer}");
    assert_eq!(
        up.opened.load(Ordering::SeqCst),
        1,
        "one upstream connection"
    );
    assert_eq!(up.closed_by_proxy.load(Ordering::SeqCst), 0);
}
