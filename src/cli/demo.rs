//! `keyward demo`: everything in one process, nothing to install.
//!
//! A throwaway CA issues a server certificate for an in-process HTTPS upstream that *requires*
//! a client certificate, and a client certificate for keyward. keyward runs in front of it as
//! an `http` resource loaded from a real config file (verify-full + mTLS + a bearer token read
//! from a secret file). One request goes through keyward in plain HTTP without credentials; the
//! upstream answers with what it saw: TLS version, client certificate, and whether the request
//! carried the token keyward holds.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::config;
use crate::pki::{Ca, Usage};
use crate::secret::ProcessEnv;
use crate::tls::{provider, CertInfo};
use crate::{Listeners, Runtime, Server};

/// Runs the demo; with `once`, exits after the first request.
pub async fn run(listen: SocketAddr, once: bool) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("keyward-demo-")
        .tempdir()
        .context("creating a temp dir")?;
    let ca = Ca::new("keyward demo CA")?;
    let server = ca.leaf("demo-upstream", &["localhost", "127.0.0.1"], Usage::Server)?;
    let client = ca.leaf("keyward-demo-client", &[], Usage::Client)?;

    let token = format!("demo-{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    let upstream = start_upstream(&ca, &server, token.clone()).await?;
    let token_file = format!("{token}\n");
    for (name, text) in [
        ("ca.pem", &ca.cert.cert_pem),
        ("client.pem", &client.cert_pem),
        ("client.key", &client.key_pem),
        ("token", &token_file),
    ] {
        std::fs::write(dir.path().join(name), text).with_context(|| format!("writing {name}"))?;
    }
    let yaml = format!(
        "# written by `keyward demo`\nadmin: null\nresources:\n  - name: demo\n    protocol: http\n    listen: {listen}\n    upstream: https://localhost:{port}/api\n    tls:\n      mode: verify-full\n      ca: ca.pem\n      client_cert: client.pem\n      client_key: client.key\n    auth:\n      type: bearer\n      token: ${{file:token}}\n",
        port = upstream.port()
    );
    let config_path = dir.path().join("keyward.yaml");
    std::fs::write(&config_path, &yaml).context("writing the demo config")?;

    let config = config::load(&config_path).map_err(|p| anyhow::anyhow!("{p}"))?;
    let runtime = Runtime::build(&config, &ProcessEnv).map_err(|p| anyhow::anyhow!("{p}"))?;
    let listeners = Listeners::bind(runtime.listens()).await?;
    let addr = match listeners.addr("demo") {
        Some(crate::listener::BoundAddr::Tcp(addr)) => *addr,
        other => anyhow::bail!("demo listener bound unexpectedly: {other:?}"),
    };
    let server = Server::new(runtime, listeners)?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async {
        let _ = stop_rx.await;
    }));

    println!("keyward demo");
    println!("  upstream  https://localhost:{} (in-process; requires a client certificate from the demo CA)", upstream.port());
    println!(
        "  keyward   http://{addr} → verify-full TLS + mTLS + bearer token → https://localhost:{}/api",
        upstream.port()
    );
    println!("  config    {}", config_path.display());
    println!();
    println!("One plain-HTTP request to keyward, with no credentials; what the upstream saw:");
    let body = get(addr).await.context("request through keyward")?;
    drop(token);
    for line in body.lines() {
        println!("  {line}");
    }
    println!();
    println!("Try it yourself (plain HTTP to keyward; keyward holds the client certificate and the token):");
    println!("  curl -s http://{addr}/hello");
    if once {
        let _ = stop_tx.send(());
        serving.await.context("keyward task")?;
        return Ok(());
    }
    println!();
    println!("Press Ctrl-C to stop.");
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    let _ = stop_tx.send(());
    serving.await.context("keyward task")?;
    Ok(())
}

async fn start_upstream(
    ca: &Ca,
    server: &crate::pki::Issued,
    token: String,
) -> anyhow::Result<SocketAddr> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert.cert_der.clone())?;
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build()?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![server.cert_der.clone()], server.key_der())?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let expected = format!("Bearer {token}");
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let (_, session) = tls.get_ref();
                let (version, cipher) = crate::tls::session_summary(session);
                let subject = session
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .and_then(|c| CertInfo::parse(c).ok())
                    .map(|c| c.subject)
                    .unwrap_or_else(|| "(none)".to_owned());
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let auth = match req.headers().get(hyper::header::AUTHORIZATION) {
                        Some(v) if v.as_bytes() == expected.as_bytes() => {
                            "Bearer <the demo token keyward holds> (your request had none)"
                        }
                        Some(_) => "present, but NOT the demo token",
                        None => "(none)",
                    };
                    let text = format!(
                        "hello from the demo upstream\nrequest: {} {}\nauthorization: {auth}\ntls_version: {version}\ncipher: {cipher}\nclient_cert_subject: {subject}\nclient_cert_verified: yes, by the demo CA\n",
                        req.method(),
                        req.uri()
                    );
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(text),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn get(addr: SocketAddr) -> anyhow::Result<String> {
    let tcp = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::get("/hello")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(format!("HTTP {status}\n{}", String::from_utf8_lossy(&body)))
}
