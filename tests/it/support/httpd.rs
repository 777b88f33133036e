//! A real HTTPS server for HTTP tests: hyper over rustls (h2 and/or http/1.1 by ALPN), recording
//! every request it receives, answering through a handler, echoing on upgraded connections.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use keyward::pki::{Ca, Issued};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::server_config;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub uri: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body_len: usize,
    /// The first MiB of the body.
    pub body: Vec<u8>,
    pub client_cn: Option<String>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    pub fn header_count(&self, name: &str) -> usize {
        self.headers.get_all(name).iter().count()
    }
}

/// What the handler answers.
pub struct Reply {
    pub status: StatusCode,
    pub body: String,
    pub delay: Duration,
    pub headers: Vec<(String, String)>,
}

impl Reply {
    pub fn ok(body: impl Into<String>) -> Self {
        Self {
            status: StatusCode::OK,
            body: body.into(),
            delay: Duration::ZERO,
            headers: Vec::new(),
        }
    }

    pub fn status(status: StatusCode, body: impl Into<String>) -> Self {
        Self {
            status,
            body: body.into(),
            delay: Duration::ZERO,
            headers: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

pub type Handler = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

pub fn always_ok() -> Handler {
    Arc::new(|_| Reply::ok("ok"))
}

pub struct Httpd {
    pub addr: std::net::SocketAddr,
    pub seen: Arc<Mutex<Vec<Recorded>>>,
    pub conns: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Httpd {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn seen(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Recorded {
        self.seen()
            .last()
            .cloned()
            .expect("the upstream saw no request")
    }
}

impl Drop for Httpd {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts an HTTPS server for `cert`; `alpn` e.g. `[b"h2", b"http/1.1"]`.
pub async fn httpd(
    cert: &Issued,
    client_ca: Option<&Ca>,
    alpn: &[&[u8]],
    handler: Handler,
) -> Httpd {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve_on(listener, cert, client_ca, alpn, handler)
}

pub fn serve_on(
    listener: TcpListener,
    cert: &Issued,
    client_ca: Option<&Ca>,
    alpn: &[&[u8]],
    handler: Handler,
) -> Httpd {
    let mut config = server_config(
        cert,
        client_ca,
        &[&rustls::version::TLS13, &rustls::version::TLS12],
    );
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let conns = Arc::new(AtomicUsize::new(0));
    let (seen2, conns2) = (seen.clone(), conns.clone());
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, seen, handler) = (acceptor.clone(), seen2.clone(), handler.clone());
            conns2.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let client_cn = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| keyward::tls::CertInfo::parse(c).unwrap().subject);
                let service = service_fn(move |req: Request<Incoming>| {
                    let (seen, handler, client_cn) =
                        (seen.clone(), handler.clone(), client_cn.clone());
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            handle(req, client_cn, &seen, &handler).await,
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Httpd {
        addr,
        seen,
        conns,
        task,
    }
}

async fn handle(
    mut req: Request<Incoming>,
    client_cn: Option<String>,
    seen: &Mutex<Vec<Recorded>>,
    handler: &Handler,
) -> Response<Full<Bytes>> {
    let upgrade = req
        .headers()
        .contains_key(http::header::UPGRADE)
        .then(|| hyper::upgrade::on(&mut req));
    let (parts, mut body) = req.into_parts();
    let mut kept = Vec::new();
    let mut len = 0;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Ok(data) = frame.into_data() {
            len += data.len();
            if kept.len() < 1 << 20 {
                kept.extend_from_slice(&data[..data.len().min((1 << 20) - kept.len())]);
            }
        }
    }
    let recorded = Recorded {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        version: parts.version,
        headers: parts.headers.clone(),
        body_len: len,
        body: kept,
        client_cn,
    };
    seen.lock().unwrap().push(recorded.clone());
    if let Some(on_upgrade) = upgrade {
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", parts.headers.get("upgrade").cloned().unwrap())
            .body(Full::new(Bytes::new()))
            .unwrap();
    }
    let reply = handler(&recorded);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut builder = Response::builder().status(reply.status);
    for (name, value) in &reply.headers {
        builder = builder.header(name, value);
    }
    builder.body(Full::new(Bytes::from(reply.body))).unwrap()
}
