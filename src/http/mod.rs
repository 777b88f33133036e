//! `protocol: http`: the app sends plain HTTP/1.1 with no credentials; keyward forwards each
//! request to the resource's upstream URL over its verified TLS (HTTP/1.1 or HTTP/2 by ALPN)
//! with the credentials added, and streams bodies both ways.
//!
//! Per request: strip hop-by-hop headers (RFC 9110 §7.6.1) and the app's own credentials →
//! rewrite the target (base path, `Host`) → add configured headers → inject auth → sign
//! (SigV4, last) → send with a response-header timeout → on failure, a 502/504 the app can read
//! (`x-keyward-error: <reason>`, a body naming the resource and the reason).

mod clock;
pub mod connector;
pub mod jwt;
pub mod lanes;
pub mod oauth2;
pub mod sigv4;

use arc_swap::ArcSwap;
use std::convert::Infallible;
use std::future::Future as _;
use std::sync::Arc;
use std::task::Poll;
use std::time::SystemTime;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body as _, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tracing::{debug, warn};

use tracing::Instrument as _;

use crate::config::{
    ApiKeyPlace, Auth, BuildError, BuildProblem, Http2, HttpOptions, ResourceConfig, ResourceName,
};
use crate::connect::{Admitted, Dialer};
use crate::driver::{App, Handler, Resource, Served, TlsStart};
use crate::error::{ConnError, Reason, Side};
use crate::record::{guarded, Failure, Stats};
use crate::relay::Relayed;
use crate::secret::{Env, Secret};
use connector::Connector;

pub use lanes::{BoxError, ProxyBody};

/// OAuth2: bodies up to this size are buffered so a 401 can be retried with a fresh token.
const RETRY_BUFFER: u64 = 64 * 1024;

/// ALPN offered upstream for an `http2` setting.
pub fn alpn(http2: Http2) -> &'static [&'static [u8]] {
    match http2 {
        Http2::Auto => &[b"h2", b"http/1.1"],
        Http2::Always => &[b"h2"],
        Http2::Never => &[b"http/1.1"],
    }
}

/// What keyward adds to each request.
#[derive(Debug)]
enum Injector {
    None,
    Header(HeaderName, HeaderValue),
    Query(String, Secret),
    OAuth2(Arc<oauth2::TokenSource>),
    SigV4(sigv4::Signer),
}

/// A resource's HTTP upstream: its pools (owned by its TLS config), target and credentials.
#[derive(Debug)]
pub struct HttpUpstream {
    name: ResourceName,
    /// HTTP/1.1 connections driven in the app connections' tasks; HTTP/2 shared.
    pool: Arc<lanes::Pool>,
    upgrade_client: Client<Connector, ProxyBody>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    /// `Host` for `authority` as it goes on the wire (see [`wire_host`]), made once.
    host: HeaderValue,
    base_path: String,
    injector: Injector,
    headers: Vec<(HeaderName, HeaderValue)>,
    opts: HttpOptions,
    /// For upgraded (WebSocket) connections, as for any relayed connection.
    idle_timeout: Option<std::time::Duration>,
    /// `keyward_bytes_total` of this resource, `client_to_upstream` and `upstream_to_client`:
    /// looked up once per build, not per request.
    sent: prometheus::IntCounter,
    received: prometheus::IntCounter,
}

impl HttpUpstream {
    /// Builds pools and credentials for `res`, reaching it with `dialer` (its upstream TLS
    /// offers the ALPN of [`alpn`]).
    pub fn build(
        res: &ResourceConfig,
        dialer: &Arc<Dialer>,
        env: &dyn Env,
    ) -> Result<Self, Vec<BuildProblem>> {
        let url = res
            .upstream
            .url
            .clone()
            .ok_or_else(|| vec![BuildProblem::new(&res.site, BuildError::NoUrl)])?;
        let mut upgrade_dialer = (**dialer).clone();
        if let Some(tls) = &mut upgrade_dialer.tls {
            // Upgrades (WebSocket) exist in HTTP/1.1 only.
            let mut config = (*tls.config).clone();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            tls.config = Arc::new(config);
        }
        let upgrade_connector = Connector {
            dialer: Arc::new(upgrade_dialer),
        };
        let pool = lanes::Pool::new(
            dialer.clone(),
            res.http.http2 == Http2::Always,
            res.http.pool_idle_timeout,
        );
        let upgrade_client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(upgrade_connector);
        let problems = std::cell::RefCell::new(Vec::new());
        let reads = &crate::metrics::metrics().credential_reads;
        let secret = |s: &crate::config::SecretRef| match s.source.resolve(env) {
            Ok(v) => {
                reads
                    .with_label_values(&[res.name.as_str(), "success"])
                    .inc();
                Some(v)
            }
            Err(e) => {
                reads.with_label_values(&[res.name.as_str(), "error"]).inc();
                problems.borrow_mut().push(BuildProblem::new(&s.site, e));
                None
            }
        };
        let mut headers = Vec::new();
        for (name, value) in &res.headers {
            if let (Ok(name), Some(v)) = (HeaderName::try_from(name.as_str()), secret(value)) {
                match sensitive_value(v.expose()) {
                    Some(v) => headers.push((name, v)),
                    None => problems
                        .borrow_mut()
                        .push(BuildProblem::new(&value.site, BuildError::HeaderValue)),
                }
            }
        }
        let injector = match &res.auth {
            Auth::None => Injector::None,
            Auth::ApiKey {
                place: ApiKeyPlace::Header(h),
                value,
            } => match (HeaderName::try_from(h.as_str()), secret(value)) {
                (Ok(name), Some(v)) => match sensitive_value(v.expose()) {
                    Some(v) => Injector::Header(name, v),
                    None => {
                        return Err(vec![BuildProblem::new(
                            &value.site,
                            BuildError::HeaderValue,
                        )])
                    }
                },
                (Err(_), _) => {
                    let error = BuildError::HeaderName(h.clone());
                    return Err(vec![BuildProblem::new(&value.site, error)]);
                }
                _ => Injector::None,
            },
            Auth::ApiKey {
                place: ApiKeyPlace::Query(q),
                value,
            } => match secret(value) {
                Some(v) => Injector::Query(q.clone(), v),
                None => Injector::None,
            },
            Auth::Basic { username, password } => match secret(password) {
                Some(p) => {
                    let creds = zeroize::Zeroizing::new(format!("{username}:{}", p.expose()));
                    let encoded =
                        base64::engine::general_purpose::STANDARD.encode(creds.as_bytes());
                    match sensitive_value(&format!("Basic {encoded}")) {
                        Some(v) => Injector::Header(header::AUTHORIZATION, v),
                        None => Injector::None,
                    }
                }
                None => Injector::None,
            },
            Auth::Bearer { token } => match secret(token) {
                Some(t) => match sensitive_value(&format!("Bearer {}", t.expose())) {
                    Some(v) => Injector::Header(header::AUTHORIZATION, v),
                    None => {
                        return Err(vec![BuildProblem::new(&token.site, BuildError::TokenValue)])
                    }
                },
                None => Injector::None,
            },
            Auth::OAuth2(o) => {
                let client_secret = o.client_secret.as_ref().and_then(secret);
                let refresh_token = o.refresh_token.as_ref().and_then(secret);
                let key_pem = o
                    .assertion
                    .as_ref()
                    .and_then(|a| a.key.as_ref())
                    .and_then(secret);
                let google = o.google_service_account.as_ref().and_then(secret);
                let unread = (o.google_service_account.is_some() && google.is_none())
                    || (o.google_service_account.is_none()
                        && o.assertion.as_ref().is_some_and(|a| a.key.is_some())
                        && key_pem.is_none());
                let assertion = match oauth2::Assertion::build(o, key_pem.as_ref(), google.as_ref())
                {
                    _ if unread => None,
                    Ok(a) => a,
                    Err(reason) => {
                        let site = o
                            .google_service_account
                            .as_ref()
                            .or(o.assertion.as_ref().and_then(|a| a.key.as_ref()))
                            .map_or(&res.site, |s| &s.site);
                        problems
                            .borrow_mut()
                            .push(BuildProblem::new(site, BuildError::Assertion(reason)));
                        None
                    }
                };
                let token_tls = match crate::tls::build_client(&o.tls, &[b"http/1.1"], env) {
                    Ok(tls) => tls,
                    Err(mut p) => {
                        problems.borrow_mut().append(&mut p);
                        None
                    }
                };
                let token_upstream = crate::config::Upstream {
                    host: o
                        .token_url
                        .host()
                        .unwrap_or_default()
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_owned(),
                    port: o.token_url.port_u16().unwrap_or(
                        if o.token_url.scheme_str() == Some("http") {
                            80
                        } else {
                            443
                        },
                    ),
                    url: Some(o.token_url.clone()),
                };
                // The token endpoint's connections are not the resource's upstream: unobserved.
                let connector = Connector {
                    dialer: Arc::new(Dialer {
                        resource: String::new(),
                        upstream: token_upstream,
                        tls: token_tls,
                        connect_timeout: res.connect_timeout,
                        handshake_timeout: res.handshake_timeout,
                    }),
                };
                let settings = oauth2::Settings {
                    resource: res.name.to_string(),
                    token_url: o.token_url.clone(),
                    client_id: o.client_id.clone(),
                    client_secret,
                    refresh_token,
                    scopes: o.scopes.clone(),
                    audience: o.audience.clone(),
                    params: o.params.clone(),
                    client_auth_basic: o.client_auth_basic,
                    assertion,
                };
                Injector::OAuth2(Arc::new(oauth2::TokenSource::new(settings, connector)))
            }
            Auth::AwsSigV4 {
                service,
                region,
                credentials,
                unsigned_payload,
            } => match crate::aws::Source::build(res.name.as_str(), region, credentials, env) {
                Ok(source) => Injector::SigV4(sigv4::Signer::new(
                    service,
                    region,
                    Arc::new(source),
                    *unsigned_payload,
                    res.http.max_signed_body,
                )),
                Err(reason) => {
                    let error = BuildError::AwsCredentials {
                        auth: "aws_sigv4",
                        reason,
                    };
                    problems
                        .borrow_mut()
                        .push(BuildProblem::new(&res.site, error));
                    Injector::None
                }
            },
            Auth::Password { .. } | Auth::RdsIam { .. } => Injector::None,
        };
        let problems = problems.into_inner();
        if !problems.is_empty() {
            return Err(problems);
        }
        let scheme = url.scheme().cloned().unwrap_or(http::uri::Scheme::HTTPS);
        let authority = url
            .authority()
            .cloned()
            .ok_or_else(|| vec![BuildProblem::new(&res.site, BuildError::NoHost)])?;
        let host = HeaderValue::from_str(&wire_host(&scheme, &authority))
            .map_err(|_| vec![BuildProblem::new(&res.site, BuildError::NoHost)])?;
        let base_path = url.path().trim_end_matches('/').to_owned();
        let bytes = &crate::metrics::metrics().bytes;
        Ok(Self {
            sent: bytes.with_label_values(&[res.name.as_str(), "client_to_upstream"]),
            received: bytes.with_label_values(&[res.name.as_str(), "upstream_to_client"]),
            name: res.name.clone(),
            pool,
            upgrade_client,
            scheme,
            authority,
            host,
            base_path,
            injector,
            headers,
            opts: res.http.clone(),
            idle_timeout: res.idle_timeout,
        })
    }
}

impl HttpUpstream {
    /// Whether this resource fetches OAuth2 tokens.
    pub fn uses_oauth2(&self) -> bool {
        matches!(self.injector, Injector::OAuth2(_))
    }

    /// Whether requests need timed credential work (an OAuth2 token, a SigV4 signature).
    pub fn times_auth(&self) -> bool {
        matches!(self.injector, Injector::OAuth2(_) | Injector::SigV4(_))
    }

    /// The OAuth2 token endpoint, when it is plain `http://` (opted in, warned at each load).
    pub fn plaintext_token_url(&self) -> Option<&http::Uri> {
        match &self.injector {
            Injector::OAuth2(source) => {
                Some(source.token_url()).filter(|u| u.scheme_str() == Some("http"))
            }
            _ => None,
        }
    }
}

fn sensitive_value(text: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(text).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// HTTP/2's connection preface (RFC 9113 §3.4) up to where HTTP/1.1 cannot follow.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// `Some(what to wait for)` while `buf` is a strict prefix of [`H2_PREFACE`].
fn preface_undecided(buf: &[u8]) -> Option<&'static str> {
    (buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(buf)).then_some("a request")
}

/// The `http` handler.
#[derive(Debug)]
pub struct Http(pub Arc<ArcSwap<HttpUpstream>>);

impl Http {
    /// A handler for `upstream`.
    pub fn new(upstream: HttpUpstream) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(upstream)))
    }

    /// Takes over `running`'s live connections: they (and this snapshot's) use this
    /// snapshot's upstream — credentials, pools, TLS — from their next request on. A rotated
    /// API key or token must not wait for an app to reconnect.
    pub fn carry_over(&mut self, running: &Http) {
        running.0.store(self.0.load_full());
        self.0 = running.0.clone();
    }
}

impl Handler for Http {
    const TLS_START: TlsStart = TlsStart::Accept;
    /// What hyper buffers of a request head at most (its default `max_buf_size`, ~400 KiB): the
    /// app's limit before keyward forwards a request.
    const MAX_PRE_AUTH: usize = 408 * 1024;

    /// HTTP/1.1 with keep-alive and upgrades; each request is forwarded with the credentials.
    /// The client deadline covers the first request's head; `idle_timeout` bounds the wait for
    /// each later one (and a client that takes that long to send its headers).
    async fn serve(&self, app: &mut App, res: &Arc<Resource>, stats: &Arc<Stats>) -> Served {
        let conn = Arc::new(AppConn {
            admitted: app.admit().map_err(Failure::Open)?,
            lane: lanes::Lane::default(),
            responses: clock::Coarse::default(),
        });
        crate::audit::client_tls(app.wire.io.tls());
        crate::audit::started();
        let deadline = app.deadline();
        // An app that opens with HTTP/2's preface (prior knowledge) is told keyward serves
        // apps HTTP/1.1 (a 505, and one log line when the end is recorded), instead of a
        // silent close.
        while let Some(more) = preface_undecided(&app.wire.buf) {
            match app.wire.fill(more).await {
                Ok(()) => {}
                // A connection closed before any request: nothing to record.
                Err(e) if e.reason == Reason::Truncated => return Ok(Relayed::default()),
                Err(e) => return Err(Failure::Relay(e)),
            }
        }
        if app.wire.buf.starts_with(H2_PREFACE) {
            let body =
                "keyward serves HTTP/1.1 to apps: use HTTP/1.1 (no HTTP/2 prior knowledge)\n";
            let answer = format!(
                "HTTP/1.1 505 HTTP Version Not Supported\r\nx-keyward-error: protocol\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = app.wire.send(answer.as_bytes()).await;
            stats.count_request(
                StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                std::time::Duration::ZERO,
            );
            return Err(Failure::Answered(ConnError::new(
                Side::Client,
                Reason::Protocol,
                "the app spoke HTTP/2; keyward serves HTTP/1.1 to apps",
            )));
        }
        let early = crate::driver::early(app);
        let (stream, release) = app.take();
        let stream = crate::wire::Prefixed::new(stream, early);
        let first = release.clone();
        let lane = conn.lane.clone();
        let upstream = self.0.clone();
        let stats = stats.clone();
        let service = service_fn(move |req| {
            release.release();
            // The newest snapshot's upstream for every request (see `Http::carry_over`).
            let upstream = upstream.load_full();
            let stats = stats.clone();
            let conn = conn.clone();
            async move { Ok::<_, Infallible>(proxy(req, &upstream, &stats, &conn).await) }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .keep_alive(true)
            // Requests the app sent before shutting down its side are all answered.
            .half_close(true)
            // Each request head's read timeout on one timer per connection (see `clock`).
            .timer(clock::Coarse::default().for_hyper())
            .header_read_timeout(res.idle_timeout);
        let serving = builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        lane.drive(serving)
            .await
            .map_err(|e| Failure::Relay(describe_server_error(&e)))?;
        // hyper ends a connection quietly when the read of a first request head fails:
        // a client that sent no request before the deadline is still the deadline's case.
        if !first.released() && tokio::time::Instant::now() >= deadline {
            let expired = std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                crate::error::Expired(res.client_handshake_timeout),
            );
            return Err(Failure::Relay(ConnError::from_io(Side::Client, &expired)));
        }
        Ok(Relayed::default())
    }
}

/// What an app connection's requests share: its admission and its way upstream.
#[derive(Debug)]
struct AppConn {
    admitted: Admitted,
    lane: lanes::Lane,
    /// The response timeouts' timer (one request waits for its response at a time).
    responses: clock::Coarse,
}

/// Classifies the end of an app's HTTP connection: the I/O error inside (a reset, the client
/// deadline) where there is one.
fn describe_server_error(err: &hyper::Error) -> ConnError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return ConnError::from_io(Side::Client, io);
        }
        source = e.source();
    }
    ConnError::new(
        Side::Client,
        Reason::Protocol,
        format!("client HTTP connection: {err}"),
    )
}

async fn proxy(
    mut req: Request<Incoming>,
    up: &HttpUpstream,
    stats: &Arc<Stats>,
    conn: &AppConn,
) -> Response<ProxyBody> {
    let method = req.method().clone();
    let started = tokio::time::Instant::now();
    // Audited connections: the request's record, written when its response body ends.
    let mut record = crate::audit::current().map(|session| {
        session.request_begins();
        Record {
            session,
            method: method.clone(),
            path: audit_path(req.uri(), up),
            request_bytes: req.body().size_hint().exact(),
            started,
        }
    });
    if !up.opts.allow.is_empty() && !allowed(&up.opts.allow, &method, req.uri().path()) {
        let e = ConnError::new(
            Side::Client,
            Reason::Denied,
            format!(
                "{method} {} is not allowed by this resource's allow rules",
                req.uri().path()
            ),
        );
        if let Some(r) = &record {
            r.session.denied(crate::audit::Denied::Http {
                method: method.as_str(),
                path: &r.path,
            });
        }
        if let Some(left_out) = stats.may_warn() {
            let left_out = (left_out > 0).then_some(left_out);
            warn!(
                side = "client",
                reason = "denied",
                left_out,
                "app: {}",
                e.detail
            );
        }
        stats.count_request(StatusCode::FORBIDDEN, started.elapsed());
        stats.failed(e.clone());
        let response = error_response(&up.name, StatusCode::FORBIDDEN, &e);
        return audited(response, record.take(), Some(e));
    }
    let refused = [Method::TRACE, Method::CONNECT];
    if refused.contains(&method) && !up.opts.allow_methods.contains(&method) {
        // TRACE would echo the injected credential back to the app; CONNECT would tunnel
        // with it (and hang the app's connection).
        let e = ConnError::new(
            Side::Client,
            Reason::MethodNotAllowed,
            format!("{method} is not forwarded (it would expose or tunnel the injected credential); allow_methods: [{method}] forwards it"),
        );
        stats.count_request(StatusCode::METHOD_NOT_ALLOWED, started.elapsed());
        stats.failed(e.clone());
        let response = error_response(&up.name, StatusCode::METHOD_NOT_ALLOWED, &e);
        return audited(response, record.take(), Some(e));
    }
    let upgrade = is_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
    match forward(req, up, upgrade, stats, conn).await {
        Ok(response) => {
            debug!(%method, status = response.status().as_u16(), "forwarded");
            stats.count_request(response.status(), started.elapsed());
            audited(response, record.take(), None)
        }
        Err(e) => {
            let status = match e.reason {
                Reason::ConnectTimeout | Reason::HandshakeTimeout | Reason::ResponseTimeout => {
                    StatusCode::GATEWAY_TIMEOUT
                }
                Reason::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                Reason::PathOutsideBase => StatusCode::BAD_REQUEST,
                _ => StatusCode::BAD_GATEWAY,
            };
            warn!(
                side = e.side.as_str(),
                reason = e.reason.as_str(),
                status = status.as_u16(),
                "upstream {}: {}",
                up.authority,
                e.detail
            );
            stats.count_request(status, started.elapsed());
            stats.failed(e.clone());
            let response = error_response(&up.name, status, &e);
            audited(response, record.take(), Some(e))
        }
    }
}

/// Whether one of `rules` admits `method` on `path` (normalized first, as the upstream will
/// read it: unreserved characters decoded, dot segments removed; a path climbing above the
/// root is refused).
fn allowed(rules: &[crate::config::HttpRule], method: &Method, path: &str) -> bool {
    let decoded = decode_unreserved(path);
    let Some(normalized) = without_dot_segments(&decoded) else {
        return false;
    };
    rules.iter().any(|r| r.admits(method, &normalized))
}

/// `%XX` escapes of unreserved characters (letters, digits, `-._~`) decoded: they mean the
/// same as the characters (RFC 3986 §6.2.2.2); other escapes (`%2F`) are kept.
fn decode_unreserved(path: &str) -> std::borrow::Cow<'_, str> {
    if !path.contains('%') {
        return std::borrow::Cow::Borrowed(path);
    }
    let b = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(c) = hex.filter(|c| c.is_ascii_alphanumeric() || b"-._~".contains(c)) {
                out.push(char::from(c));
                i += 3;
                continue;
            }
        }
        out.push(char::from(b[i]));
        i += 1;
    }
    std::borrow::Cow::Owned(out)
}

/// The path and query of a request as audit events show it: the injected query parameter
/// (an API key) taken out.
fn audit_path(uri: &Uri, up: &HttpUpstream) -> String {
    let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
    match &up.injector {
        Injector::Query(name, _) => without_query_param(pq, name),
        _ => pq.to_owned(),
    }
}

/// A request being audited: written when its response body ends (or is dropped).
struct Record {
    session: Arc<crate::audit::Session>,
    method: Method,
    path: String,
    request_bytes: Option<u64>,
    started: tokio::time::Instant,
}

/// Counts the response body's bytes into `record` and writes the request event when the
/// body is done with (sent, or dropped by a client gone away).
fn audited(
    response: Response<ProxyBody>,
    record: Option<Record>,
    error: Option<ConnError>,
) -> Response<ProxyBody> {
    let Some(record) = record else {
        return response;
    };
    let status = response.status().as_u16();
    let (parts, body) = response.into_parts();
    let mut done = Done {
        record,
        status,
        error,
        bytes: 0,
    };
    let body = body
        .map_frame(move |f| {
            // The whole record moves into the closure (not just its counter): it is written
            // when the body, and so the closure, is dropped.
            let done = &mut done;
            if let Some(d) = f.data_ref() {
                done.bytes += d.len() as u64;
            }
            f
        })
        .boxed();
    Response::from_parts(parts, body)
}

struct Done {
    record: Record,
    status: u16,
    error: Option<ConnError>,
    bytes: u64,
}

impl Drop for Done {
    fn drop(&mut self) {
        let r = &self.record;
        r.session.request(&crate::audit::Request {
            method: r.method.as_str(),
            path: &r.path,
            status: self.status,
            request_bytes: r.request_bytes,
            response_bytes: self.bytes,
            took: r.started.elapsed(),
            error: self.error.as_ref(),
        });
    }
}

/// The response for a request keyward could not forward.
pub fn error_response(
    name: &ResourceName,
    status: StatusCode,
    e: &ConnError,
) -> Response<ProxyBody> {
    let body = format!("keyward: upstream \"{name}\": {}\n", e.detail);
    let mut response = Response::new(full(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    let reason = match e.reason {
        Reason::Denied => "denied by allow rule",
        other => other.as_str(),
    };
    headers.insert(
        HeaderName::from_static("x-keyward-error"),
        HeaderValue::from_static(reason),
    );
    response
}

fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// Whether the request asks for a protocol upgrade keyward relays (WebSocket and the like).
/// `Upgrade: h2c` is not one: keyward serves HTTP/1.1 to apps, so the request is served as
/// plain HTTP/1.1 through the pool and its upgrade headers dropped as hop-by-hop (Java's
/// HttpClient sends it on every plain-http request by default; RFC 9113 §3.1 removed h2c).
fn is_upgrade(headers: &http::HeaderMap) -> bool {
    let h2c_only = headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .all(|p| p.trim().eq_ignore_ascii_case("h2c"));
    headers.contains_key(header::UPGRADE)
        && !h2c_only
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// The hop-by-hop headers removed whether or not `Connection` names them.
static HOP_BY_HOP: [HeaderName; 6] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("http2-settings"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): the fixed list and every header the
/// `Connection` header names. For an upgrade, `Connection: upgrade` and `Upgrade` are kept.
pub fn strip_hop_by_hop(headers: &mut http::HeaderMap, keep_upgrade: bool) {
    // `Connection` goes, and the names it lists with it: one lookup takes all its values. Then
    // one pass over the names present (a handful) for the fixed list, instead of a lookup for
    // each name that could be: most messages carry none of them but `Connection: keep-alive`.
    // `keep-alive` and `upgrade` are dealt with by that pass whether `Connection` lists them
    // or not.
    let mut listed: Vec<HeaderName> = Vec::new();
    if let header::Entry::Occupied(connection) = headers.entry(header::CONNECTION) {
        let (_, values) = connection.remove_entry_mult();
        for value in values {
            let Ok(value) = value.to_str() else { continue };
            let tokens = value.split(',').map(str::trim);
            listed.extend(
                tokens
                    .filter(|t| {
                        !t.eq_ignore_ascii_case("keep-alive") && !t.eq_ignore_ascii_case("upgrade")
                    })
                    // Header names are lowercase; `from_bytes` lowercases the token. One that
                    // is no valid name names no header.
                    .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok()),
            );
        }
    }
    for name in &listed {
        headers.remove(name);
    }
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|&name| {
            if name == header::UPGRADE {
                return !keep_upgrade;
            }
            HOP_BY_HOP.contains(name)
        })
        .cloned()
        .collect();
    for name in &doomed {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// The app's path with its dot segments removed (RFC 3986 §5.2.4), `%2e` counting as a dot,
/// other bytes kept as sent. `None` when a `..` would climb above the path's root: joined to
/// the upstream's base path, it would leave it (`/v1` + `/../admin` = `/admin`).
pub fn without_dot_segments(path: &str) -> Option<String> {
    // Most paths have no dot at all: no segment can be a dot segment, and the path is its own
    // normal form.
    let dotted = path.contains('.')
        || path
            .as_bytes()
            .windows(3)
            .any(|w| w.eq_ignore_ascii_case(b"%2e"));
    if path.starts_with('/') && !dotted {
        return Some(path.to_owned());
    }
    resolve_dot_segments(path)
}

/// [`without_dot_segments`] segment by segment, for any path.
fn resolve_dot_segments(path: &str) -> Option<String> {
    fn is_dots(segment: &str, n: usize) -> bool {
        let mut rest = segment.as_bytes();
        let mut count = 0;
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix(b".") {
                rest = r;
            } else if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case(b"%2e") {
                rest = &rest[3..];
            } else {
                return false;
            }
            count += 1;
        }
        count == n
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        if is_dots(segment, 1) {
            if i == last {
                out.push("");
            }
        } else if is_dots(segment, 2) {
            out.pop()?;
            if i == last {
                out.push("");
            }
        } else {
            out.push(segment);
        }
    }
    Some(format!("/{}", out.join("/")))
}

/// The path and query sent upstream for the app's `path` and `query`: dot segments resolved
/// (refused when they would climb above the root, and so out of `base`), `base` joined, the
/// app's own `drop_param` taken out and `add` appended (the injected API key replaces any the
/// app sent).
pub fn upstream_path(
    base: &str,
    path: &str,
    query: Option<&str>,
    drop_param: Option<&str>,
    add: Option<(&str, &str)>,
) -> Result<String, ConnError> {
    let clean = without_dot_segments(path).ok_or_else(|| {
        ConnError::new(
            Side::Client,
            Reason::PathOutsideBase,
            "the request path climbs out of the upstream's base path with '..' segments",
        )
    })?;
    Ok(target_path(base, &clean, query, drop_param, add))
}

/// `base` + the app's path; the query is kept (minus `drop_param`, plus `add`).
pub fn target_path(
    base: &str,
    path: &str,
    query: Option<&str>,
    drop_param: Option<&str>,
    add: Option<(&str, &str)>,
) -> String {
    let mut out =
        String::with_capacity(base.len() + 1 + path.len() + query.map_or(0, |q| q.len() + 1));
    out.push_str(base);
    if !path.starts_with('/') {
        out.push('/');
    }
    out.push_str(path);
    let mut separator = '?';
    let kept = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|pair| !pair.is_empty())
        .filter(|pair| {
            drop_param.is_none_or(|d| pair.split('=').next().map(decode).as_deref() != Some(d))
        });
    for pair in kept {
        out.push(separator);
        out.push_str(pair);
        separator = '&';
    }
    if let Some((k, v)) = add {
        out.push(separator);
        out.push_str(
            &form_urlencoded::Serializer::new(String::new())
                .append_pair(k, v)
                .finish(),
        );
    }
    out
}

/// The `Host` value hyper-util derives from a URI for HTTP/1.1: the host, and the port unless
/// it is the scheme's default.
fn wire_host(scheme: &http::uri::Scheme, authority: &http::uri::Authority) -> String {
    let host = authority.host();
    let default = match scheme.as_str() {
        "https" => Some(443),
        "http" => Some(80),
        _ => None,
    };
    match authority.port_u16() {
        Some(port) if Some(port) != default => format!("{host}:{port}"),
        _ => host.to_owned(),
    }
}

/// `uri` (absolute or relative) without the query parameter `name` (every occurrence,
/// compared after form-decoding, as `target_path` compares it); the rest is kept as sent.
fn without_query_param(uri: &str, name: &str) -> String {
    let (before_fragment, fragment) = match uri.split_once('#') {
        Some((a, f)) => (a, Some(f)),
        None => (uri, None),
    };
    let Some((path, query)) = before_fragment.split_once('?') else {
        return uri.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter(|pair| pair.split('=').next().map(decode).as_deref() != Some(name))
        .collect();
    let mut out = path.to_owned();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

fn decode(s: &str) -> String {
    form_urlencoded::parse(s.as_bytes())
        .next()
        .map(|(k, _)| k.into_owned())
        .unwrap_or_default()
}

async fn forward(
    req: Request<Incoming>,
    up: &HttpUpstream,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    stats: &Arc<Stats>,
    conn: &AppConn,
) -> Result<Response<ProxyBody>, ConnError> {
    let (mut parts, body) = req.into_parts();
    let upgrading = client_upgrade.is_some();
    strip_hop_by_hop(&mut parts.headers, upgrading);
    // keyward answers `Expect: 100-continue` itself (hyper does, when the body is first read).
    parts.headers.remove(header::EXPECT);
    let (drop_param, add_param) = match &up.injector {
        Injector::Query(name, value) => (
            if up.opts.pass_client_auth {
                None
            } else {
                Some(name.as_str())
            },
            Some((name.as_str(), value.expose())),
        ),
        _ => (None, None),
    };
    // keyward replaces, never appends: the app's Authorization (and the configured API-key
    // header) go; an API key in the query is swapped in `target_path`.
    if !up.opts.pass_client_auth && !matches!(up.injector, Injector::None | Injector::Query(..)) {
        parts.headers.remove(header::AUTHORIZATION);
        if let Injector::Header(name, _) = &up.injector {
            parts.headers.remove(name);
        }
    }
    let path = upstream_path(
        &up.base_path,
        parts.uri.path(),
        parts.uri.query(),
        drop_param,
        add_param,
    )?;
    // The name the upstream is addressed by travels in the URI's authority: hyper-util writes
    // it as `Host` on HTTP/1.1 and as `:authority` on HTTP/2, where a `Host` header of
    // keyward's own would be a second, possibly different, copy that servers reject (RFC 9113
    // §8.3.1; nginx: "client sent duplicate host header"). With preserve_host it is the app's.
    // `Host` as hyper-util will write it on HTTP/1.1 (so a SigV4 signature covers the value
    // sent); `send` takes the header out again and lets the URI carry it.
    let apps = match parts.headers.get(header::HOST) {
        Some(h) if up.opts.preserve_host => h
            .to_str()
            .ok()
            .and_then(|h| h.parse::<http::uri::Authority>().ok()),
        _ => None,
    };
    let (authority, host) = match apps {
        Some(authority) => {
            let host = HeaderValue::from_str(&wire_host(&up.scheme, &authority)).map_err(|_| {
                ConnError::new(Side::Internal, Reason::Protocol, "bad upstream authority")
            })?;
            (authority, host)
        }
        None => (up.authority.clone(), up.host.clone()),
    };
    parts.uri = Uri::builder()
        .scheme(up.scheme.clone())
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|e| {
            ConnError::new(
                Side::Client,
                Reason::Protocol,
                format!("cannot build the upstream URI: {e}"),
            )
        })?;
    parts.version = Version::HTTP_11;
    parts.headers.insert(header::HOST, host);
    for (name, value) in &up.headers {
        parts.headers.insert(name.clone(), value.clone());
    }
    if let Injector::Header(name, value) = &up.injector {
        if !(up.opts.pass_client_auth && parts.headers.contains_key(name)) {
            parts.headers.insert(name.clone(), value.clone());
        }
    }

    // Bodies stream unless signing needs the bytes or an OAuth2 401 may need a retry.
    let declared = body
        .size_hint()
        .exact()
        .or_else(|| body.is_end_stream().then_some(0));
    let buffered: Option<Bytes> = match &up.injector {
        Injector::SigV4(signer) if !signer.unsigned_payload => {
            if declared.is_some_and(|n| n > signer.max_body) {
                return Err(too_large(signer.max_body));
            }
            let limited =
                Limited::new(body, usize::try_from(signer.max_body).unwrap_or(usize::MAX));
            let collected = limited.collect().await.map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    too_large(signer.max_body)
                } else {
                    body_error(e)
                }
            })?;
            Some(collected.to_bytes())
        }
        Injector::OAuth2(_) if declared.is_some_and(|n| n <= RETRY_BUFFER) => {
            let collected = body.collect().await.map_err(body_error)?;
            Some(collected.to_bytes())
        }
        _ => {
            let sent = up.sent.clone();
            let streamed: ProxyBody = body
                .map_frame(move |f| {
                    if let Some(d) = f.data_ref() {
                        sent.inc_by(d.len() as u64);
                    }
                    f
                })
                .map_err(|e| -> BoxError { Box::new(e) })
                .boxed();
            let request = finish(Request::from_parts(parts, streamed), up, None).await?;
            return send(request, up, client_upgrade, stats, conn).await;
        }
    };
    let bytes = buffered.unwrap_or_default();
    up.sent.inc_by(bytes.len() as u64);
    let make = |parts: &http::request::Parts| {
        let mut r = Request::new(full(bytes.clone()));
        *r.method_mut() = parts.method.clone();
        *r.uri_mut() = parts.uri.clone();
        *r.version_mut() = parts.version;
        *r.headers_mut() = parts.headers.clone();
        r
    };
    let request = finish(make(&parts), up, Some(&bytes)).await?;
    let used_token = request.headers().get(header::AUTHORIZATION).cloned();
    let response = send(request, up, None, stats, conn).await?;
    if let (Injector::OAuth2(source), StatusCode::UNAUTHORIZED) = (&up.injector, response.status())
    {
        if let Some(stale) = used_token
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        {
            debug!("upstream answered 401: refreshing the token and retrying once");
            crate::audit::retried();
            let fresh = source.replace(&Secret::new(stale)).await?;
            let mut retry = make(&parts);
            retry
                .headers_mut()
                .insert(header::AUTHORIZATION, bearer(&fresh)?);
            return send(retry, up, None, stats, conn).await;
        }
    }
    Ok(response)
}

fn body_error(e: impl std::fmt::Display) -> ConnError {
    ConnError::new(
        Side::Client,
        Reason::Protocol,
        format!("reading the request body: {e}"),
    )
}

fn too_large(limit: u64) -> ConnError {
    ConnError::new(
        Side::Client,
        Reason::BodyTooLarge,
        format!("request body larger than max_signed_body ({limit} bytes) cannot be hashed for SigV4; set auth.unsigned_payload: true for streaming uploads (or raise max_signed_body)"),
    )
}

fn bearer(token: &Secret) -> Result<HeaderValue, ConnError> {
    sensitive_value(&format!("Bearer {}", token.expose())).ok_or_else(|| {
        ConnError::new(
            Side::Upstream,
            Reason::TokenEndpoint,
            "oauth2 token endpoint: the token is not a valid header value",
        )
    })
}

/// Adds what needs the final request: an OAuth2 token, then the SigV4 signature (last).
/// The credential work is timed into `keyward_upstream_auth_seconds`.
async fn finish(
    mut request: Request<ProxyBody>,
    up: &HttpUpstream,
    body: Option<&Bytes>,
) -> Result<Request<ProxyBody>, ConnError> {
    let keep_apps =
        up.opts.pass_client_auth && request.headers().contains_key(header::AUTHORIZATION);
    let timed = matches!(up.injector, Injector::OAuth2(_) | Injector::SigV4(_));
    let started = timed.then(tokio::time::Instant::now);
    match &up.injector {
        Injector::OAuth2(source) if !keep_apps => {
            let token = source.token().await?;
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, bearer(&token)?);
        }
        Injector::SigV4(signer) => {
            let payload = if signer.unsigned_payload {
                None
            } else {
                Some(body.map(|b| b.as_ref()).unwrap_or_default())
            };
            let credentials = signer.credentials.credentials().await?;
            signer.sign(&credentials, &mut request, payload, SystemTime::now())?;
        }
        _ => {}
    }
    if let Some(started) = started {
        crate::metrics::metrics()
            .auth_seconds
            .with_label_values(&[up.name.as_str()])
            .observe(started.elapsed().as_secs_f64());
    }
    Ok(request)
}

async fn send(
    request: Request<ProxyBody>,
    up: &HttpUpstream,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    stats: &Arc<Stats>,
    conn: &AppConn,
) -> Result<Response<ProxyBody>, ConnError> {
    let timeout = up.opts.response_timeout;
    let mut request = request;
    let sent = async {
        if client_upgrade.is_some() {
            // Upgrades (HTTP/1.1 only) take a connection of their own, relayed once upgraded.
            request.headers_mut().remove(header::HOST);
            let sent = up.upgrade_client.request(request).await;
            sent.map_err(|e| connector::describe_client_error(&e))
        } else {
            conn.lane.send(&up.pool, request, &conn.admitted).await
        }
    };
    // The connection's coarse timer (see `clock`): no timer-wheel entry per request.
    let deadline = tokio::time::Instant::now() + timeout;
    let outcome = {
        let mut sent = std::pin::pin!(sent);
        std::future::poll_fn(|cx| match sent.as_mut().poll(cx) {
            Poll::Ready(r) => Poll::Ready(Some(r)),
            Poll::Pending => conn.responses.poll_expired(deadline, cx).map(|()| None),
        })
        .await
    };
    let mut response = match outcome {
        Some(Ok(response)) => response,
        Some(Err(e)) => return Err(e),
        None => {
            return Err(ConnError::new(
                Side::Upstream,
                Reason::ResponseTimeout,
                format!(
                    "response timeout: no response headers within {}",
                    humantime::format_duration(timeout)
                ),
            ))
        }
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_side) = client_upgrade {
            let upstream_side = hyper::upgrade::on(&mut response);
            let idle = up.idle_timeout;
            let stats = stats.clone();
            let authority = up.authority.clone();
            // An upgraded connection is a relay of its own: one record when it ends, and
            // counted open meanwhile; a panic in it is recorded too.
            tokio::spawn(
                async move {
                    let relayed = async {
                        match tokio::try_join!(client_side, upstream_side) {
                            Ok((c, u)) => {
                                let (c, u) = (TokioIo::new(c), TokioIo::new(u));
                                crate::relay::relay(c, u, idle)
                                    .await
                                    .map_err(Failure::Relay)
                            }
                            Err(e) => Err(Failure::Relay(ConnError::new(
                                Side::Upstream,
                                Reason::Protocol,
                                format!("upgrade failed: {e}"),
                            ))),
                        }
                    };
                    guarded(&stats, &authority, relayed, std::future::pending(), None).await;
                }
                .in_current_span(),
            );
        }
    } else {
        strip_hop_by_hop(response.headers_mut(), false);
    }
    if let Injector::Query(name, _) = &up.injector {
        // A redirect that echoes the request's query would hand the injected key to the app.
        for h in [header::LOCATION, header::CONTENT_LOCATION] {
            let cleaned = response
                .headers()
                .get(&h)
                .and_then(|v| v.to_str().ok())
                .map(|v| without_query_param(v, name));
            if let Some(v) = cleaned.and_then(|v| HeaderValue::from_str(&v).ok()) {
                response.headers_mut().insert(h, v);
            }
        }
    }
    let received = up.received.clone();
    Ok(response.map(|b| {
        b.map_frame(move |f| {
            if let Some(d) = f.data_ref() {
                received.inc_by(d.len() as u64);
            }
            f
        })
        .map_err(|e| -> BoxError { Box::new(e) })
        .boxed()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_removed() {
        let mut h = http::HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "5"),
            ("x-secret-hop", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-connection", "x"),
            ("x-kept", "yes"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
        // Names listed in any case and in several Connection headers; the fixed list goes
        // whether or not it is listed; a message without any keeps all it has.
        let mut h = http::HeaderMap::new();
        for (k, v) in [
            ("connection", " X-One ,close"),
            ("connection", "x-TWO"),
            ("x-one", "1"),
            ("x-two", "2"),
            ("http2-settings", "AAA"),
            ("trailer", "x-t"),
            ("x-kept", "yes"),
            ("content-length", "3"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h, false);
        let mut kept: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        kept.sort();
        assert_eq!(kept, ["content-length", "x-kept"]);
        let before = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, before);
    }

    #[test]
    fn an_upgrade_keeps_upgrade_and_connection() {
        let mut h = http::HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        let mut h2c = h.clone();
        h2c.insert("upgrade", HeaderValue::from_static("h2c"));
        assert!(!is_upgrade(&h2c), "h2c is served as HTTP/1.1");
        let mut plain = h.clone();
        plain.remove("upgrade");
        assert!(!is_upgrade(&plain), "Connection: upgrade without Upgrade");
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
    }

    #[test]
    fn the_injected_query_parameter_is_taken_out_of_redirects() {
        assert_eq!(
            without_query_param(
                "https://api.example/v1/next?page=2&api_key=s3cret#top",
                "api_key"
            ),
            "https://api.example/v1/next?page=2#top"
        );
        assert_eq!(without_query_param("/x?api%5Fkey=s3cret", "api_key"), "/x");
        assert_eq!(without_query_param("/x?keep=1", "api_key"), "/x?keep=1");
        assert_eq!(without_query_param("/plain", "api_key"), "/plain");
    }

    #[test]
    fn dot_segments_are_removed_and_may_not_climb_above_the_root() {
        assert_eq!(without_dot_segments("/a/./b/../c").as_deref(), Some("/a/c"));
        assert_eq!(without_dot_segments("/a/%2e%2E/b").as_deref(), Some("/b"));
        assert_eq!(without_dot_segments("/a/b/..").as_deref(), Some("/a/"));
        assert_eq!(without_dot_segments("/a/.").as_deref(), Some("/a/"));
        assert_eq!(without_dot_segments("/").as_deref(), Some("/"));
        assert_eq!(
            without_dot_segments("/x/..%2e/y").as_deref(),
            Some("/x/..%2e/y")
        );
        assert_eq!(without_dot_segments("/../admin"), None);
        assert_eq!(without_dot_segments("/a/../../admin"), None);
        assert_eq!(without_dot_segments("/%2e%2e/admin"), None);
        // Kept as sent: no dot segment (the fast path and the general one alike).
        for path in [
            "/a//b/",
            "/v1/x%20y",
            "/a.b/c.",
            "/%2e%2ex/y",
            "/.well-known/a",
        ] {
            assert_eq!(without_dot_segments(path).as_deref(), Some(path));
        }
        // A path without a dot is returned as it is, without resolving its segments: the
        // general resolver gives the same for every one of them.
        for path in [
            "/",
            "//",
            "/a",
            "/a/",
            "/a//b//",
            "/v1/x%20y%2Fz",
            "/%2",
            "/a%2",
            "/%2f%2E",
            "/e/2e/%2",
            "/~_-/%41?",
        ] {
            assert_eq!(
                without_dot_segments(path),
                resolve_dot_segments(path),
                "{path}"
            );
        }
        // Upper- and lower-case `%2e` both count as a dot.
        assert_eq!(without_dot_segments("/a/%2E/b").as_deref(), Some("/a/b"));
        assert_eq!(without_dot_segments("/a/%2E%2e"), Some("/".to_owned()));
    }

    #[test]
    fn the_upstream_target_joins_the_base_drops_the_apps_key_and_adds_keywards() {
        let up = |path, query| {
            upstream_path(
                "/v1",
                path,
                query,
                Some("api_key"),
                Some(("api_key", "k y")),
            )
            .unwrap()
        };
        assert_eq!(up("/r", None), "/v1/r?api_key=k+y");
        assert_eq!(
            up("/r", Some("a=1&&api%5Fkey=app&b")),
            "/v1/r?a=1&b&api_key=k+y"
        );
        assert_eq!(up("/r", Some("api_key=app")), "/v1/r?api_key=k+y");
        assert_eq!(
            upstream_path("", "/r", Some("a=1&"), None, None).unwrap(),
            "/r?a=1"
        );
        assert_eq!(upstream_path("", "/r", Some(""), None, None).unwrap(), "/r");
    }

    #[test]
    fn paths_join_the_base_and_keep_the_query() {
        assert_eq!(
            target_path("/v1", "/items", Some("a=1&b=2"), None, None),
            "/v1/items?a=1&b=2"
        );
        assert_eq!(target_path("", "/", None, None, None), "/");
        assert_eq!(target_path("/v1", "/", None, None, None), "/v1/");
        assert_eq!(
            target_path(
                "",
                "/x",
                Some("api_key=app&z=1"),
                Some("api_key"),
                Some(("api_key", "s e"))
            ),
            "/x?z=1&api_key=s+e"
        );
    }
}
