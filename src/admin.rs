//! The admin endpoint (`admin.listen`): `/metrics`, `/healthz`, `/readyz`, `/startupz`,
//! `/resources` and `POST /quitquitquit`. Plain HTTP/1.1 on loopback by default.

use std::convert::Infallible;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{protocol_name, TlsMode};
use crate::metrics::metrics;
use crate::server::State;
use crate::tls::rfc3339;

/// The admin endpoint: a bound listener and what it offers.
#[derive(Debug)]
pub struct Admin {
    /// Bound by the caller (`admin.listen`, or port 0 in tests).
    pub listener: TcpListener,
    /// `admin.shutdown_endpoint`: whether `POST /quitquitquit` stops keyward.
    pub shutdown_endpoint: bool,
}

/// Serves the admin endpoint until `stop` is cancelled.
pub async fn serve(admin: Admin, state: State, stop: CancellationToken) {
    let Admin {
        listener,
        shutdown_endpoint,
    } = admin;
    let local = listener.local_addr().ok();
    if let Some(addr) = local {
        info!(%addr, "admin endpoint listening");
        if !addr.ip().is_loopback() {
            warn!(%addr, "the admin endpoint listens on a non-loopback address (admin.allow_remote: true)");
        }
    }
    loop {
        let (tcp, peer) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    debug!("admin accept failed: {e}");
                    continue;
                }
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                let shutdown = Shutdown {
                    enabled: shutdown_endpoint,
                    local,
                    peer,
                };
                async move { Ok::<_, Infallible>(route(&req, &state, &shutdown)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// What `/quitquitquit` needs to decide.
struct Shutdown {
    enabled: bool,
    local: Option<std::net::SocketAddr>,
    peer: std::net::SocketAddr,
}

impl Shutdown {
    /// Why this request may not stop keyward, if it may not: the endpoint is off, or the
    /// request comes from a browser page (a cross-site POST carries `Origin` or
    /// `Sec-Fetch-Site`), or it was addressed to another name than the listener's address (DNS
    /// rebinding).
    fn refusal(&self, req: &Request<Incoming>) -> Option<(StatusCode, &'static str)> {
        if !self.enabled {
            return Some((
                StatusCode::NOT_FOUND,
                "the shutdown endpoint is off (admin.shutdown_endpoint: true turns it on)\n",
            ));
        }
        let headers = req.headers();
        let cross_site = headers
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes() != b"same-origin" && v.as_bytes() != b"none");
        if headers.contains_key(header::ORIGIN) || cross_site {
            return Some((
                StatusCode::FORBIDDEN,
                "refused: a request from a web page may not stop keyward\n",
            ));
        }
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let own = self.local.map(|a| a.to_string());
        let localhost = self.local.map(|a| format!("localhost:{}", a.port()));
        if host.is_none() || (host != own.as_deref() && host != localhost.as_deref()) {
            return Some((
                StatusCode::FORBIDDEN,
                "refused: the Host header is not this listener's address\n",
            ));
        }
        None
    }
}

fn route(req: &Request<Incoming>, state: &State, shutdown: &Shutdown) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics().render(),
        ),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n".to_owned()),
        (&Method::GET, "/startupz") if state.started() => {
            text(StatusCode::OK, "text/plain", "started\n".to_owned())
        }
        (&Method::GET, "/startupz") => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "starting\n".to_owned(),
        ),
        (&Method::GET, "/readyz") => match state.ready() {
            Ok(()) => json(StatusCode::OK, serde_json::json!({ "ready": true })),
            Err(reasons) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({ "ready": false, "not_ready": reasons }),
            ),
        },
        (&Method::GET, "/resources") => json(StatusCode::OK, resources(state)),
        (&Method::POST, "/quitquitquit") => match shutdown.refusal(req) {
            Some((status, why)) => {
                warn!(peer = %shutdown.peer, status = status.as_u16(), "POST /quitquitquit refused: {}", why.trim_end());
                text(status, "text/plain", why.to_owned())
            }
            None => {
                info!(peer = %shutdown.peer, "shutdown requested through /quitquitquit");
                state.shutdown();
                text(StatusCode::OK, "text/plain", "shutting down\n".to_owned())
            }
        },
        (_, "/quitquitquit") => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use POST\n".to_owned(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics /healthz /readyz /startupz /resources\n".to_owned(),
        ),
    }
}

/// `/resources`: each resource's status (never a secret).
pub fn resources(state: &State) -> serde_json::Value {
    let list: Vec<serde_json::Value> = state
        .resources()
        .iter()
        .map(|r| {
            let rt = r.runtime();
            let mode = rt.tls.as_ref().map_or(TlsMode::Disable, |t| t.mode);
            let client_cert = rt.tls.as_ref().and_then(|t| t.client_cert.as_ref()).map(|c| {
                serde_json::json!({ "subject": c.subject, "serial": c.serial, "not_after": c.not_after_rfc3339() })
            });
            let last_error = r.last_error().map(|e| {
                let at = e.at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
                serde_json::json!({ "at": rfc3339(at), "side": e.error.side.as_str(), "reason": e.error.reason.as_str(), "detail": e.error.detail })
            });
            // HTTP responses sent to apps by status code (`http` resources only).
            let requests = (rt.protocol == crate::config::Protocol::Http).then(|| {
                r.requests()
                    .into_iter()
                    .map(|(code, n)| (code.to_string(), serde_json::Value::from(n)))
                    .collect::<serde_json::Map<_, _>>()
            });
            serde_json::json!({
                "name": r.name.as_str(),
                "protocol": protocol_name(rt.protocol),
                "listen": r.addr.to_string(),
                "upstream": rt.upstream.to_string(),
                "tls_mode": mode.as_str(),
                "client_cert": client_cert,
                "last_error": last_error,
                "connections": { "open": r.open(), "total": r.total(), "errors": r.errors() },
                "requests": requests,
            })
        })
        .collect();
    serde_json::Value::Array(list)
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Full<Bytes>> {
    text(status, "application/json", format!("{value}\n"))
}
