//! `keyward probe -c FILE RESOURCE`: connect to a resource's upstream as the resource would and
//! say what happened — the chain the server presented, what each TLS mode makes of it (with the
//! precise reason for a failure), the negotiated version, cipher and ALPN, and whether the
//! server accepted the session (client certificate). What a user runs when "SSL doesn't work".

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use rustls::pki_types::UnixTime;
use sha2::Digest;
use tokio::io::AsyncReadExt;

use crate::config::{self, Protocol, TlsMode};
use crate::connect;
use crate::error::{ConnError, Side};
use crate::tls::{self, verify, CertInfo};

/// The request `probe` sends through an `http` resource.
#[derive(Debug, Clone)]
pub struct Request {
    /// The method (default HEAD).
    pub method: String,
    /// The path, relative to the upstream URL's base (default `/`).
    pub path: String,
}

impl Default for Request {
    fn default() -> Self {
        Self {
            method: "HEAD".to_owned(),
            path: "/".to_owned(),
        }
    }
}

/// The report, and whether the configured mode works against the upstream (and, for database
/// resources, the login; for `http`, one request with the resource's credentials).
pub async fn probe(
    path: &Path,
    resource: &str,
    request: &Request,
) -> Result<(String, bool), String> {
    let config = config::load(path).map_err(|p| p.to_string())?;
    let Some(res) = config
        .resources
        .iter()
        .find(|r| r.name.as_str() == resource)
    else {
        let names: Vec<&str> = config.resources.iter().map(|r| r.name.as_str()).collect();
        return Err(format!(
            "no resource named \"{resource}\" in {} (resources: {})",
            path.display(),
            names.join(", ")
        ));
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "resource {} ({}) → {}",
        res.name,
        config::protocol_name(res.protocol),
        res.upstream
    );
    let _ = writeln!(out, "configured tls.mode: {}", res.tls.mode.as_str());
    let mut tcp = match connect::connect(&res.upstream, res.connect_timeout).await {
        Ok(tcp) => {
            let _ = writeln!(
                out,
                "connect: ok ({})",
                tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default()
            );
            tcp
        }
        Err(e) => {
            let _ = writeln!(out, "connect: FAILED: {e}");
            return Ok((out, false));
        }
    };
    if res.tls.mode == TlsMode::Disable {
        let _ = writeln!(out, "tls: disabled (plaintext)");
        let ok = auth_report(&config, res, request, &mut out).await;
        return Ok((out, ok));
    }
    // Databases negotiate TLS in their own protocol first.
    let negotiated = match res.protocol {
        Protocol::Postgres => crate::postgres::probe_ssl_request(&mut tcp, res).await,
        Protocol::Mysql => crate::mysql::probe_ssl_request(&mut tcp, res.handshake_timeout).await,
        _ => Ok(()),
    };
    if let Err(e) = negotiated {
        let _ = writeln!(out, "tls negotiation: FAILED: {e}");
        return Ok((out, false));
    }
    // Handshake verifying nothing, to see what the server presents; then judge it per mode.
    let mut look = res.tls.clone();
    look.mode = TlsMode::Insecure;
    let alpn = match res.protocol {
        Protocol::Http => crate::http::alpn(res.http.http2),
        Protocol::Postgres => &[b"postgresql".as_slice()][..],
        _ => &[],
    };
    let client = match tls::build_client(&look, alpn, &crate::secret::ProcessEnv) {
        Ok(Some(client)) => client,
        Ok(None) => return Err("internal: no TLS client for a TLS mode".to_owned()),
        Err(problems) => {
            let lines: Vec<String> = problems
                .into_iter()
                .map(|p| format!("{}: {}", p.site.path, p.error))
                .collect();
            return Err(lines.join("\n"));
        }
    };
    let mut stream = match connect::secure(tcp, &client, res.handshake_timeout).await {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(out, "tls handshake: FAILED: {e}");
            return Ok((out, false));
        }
    };
    let (_, session) = stream.get_ref();
    let (version, cipher) = crate::tls::session_summary(session);
    let alpn = session
        .alpn_protocol()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .unwrap_or_else(|| "none".to_owned());
    let _ = writeln!(
        out,
        "tls: {version}, cipher {cipher}, ALPN {alpn}, SNI {}",
        sni(&res.tls.server_name)
    );
    let chain: Vec<_> = session
        .peer_certificates()
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "chain presented by the server ({} certificate(s)):",
        chain.len()
    );
    for (i, der) in chain.iter().enumerate() {
        match CertInfo::parse(der) {
            Ok(c) => {
                let _ = writeln!(out, "  [{i}] subject {}\n      issuer  {}\n      SANs    {}\n      valid   {} .. {}\n      sha256  {}", c.subject, c.issuer, if c.sans.is_empty() { "none".to_owned() } else { c.sans.join(", ") }, tls::rfc3339(c.not_before), tls::rfc3339(c.not_after), hex::encode(sha2::Sha256::digest(der.as_ref())));
            }
            Err(e) => {
                let _ = writeln!(out, "  [{i}] {e}");
            }
        }
    }
    let client_cert = match &client.client_cert {
        Some(c) => format!("presented {}", c.subject),
        None => "none configured".to_owned(),
    };
    // TLS 1.3 servers reject a client certificate after the handshake: listen briefly.
    let mut buf = [0u8; 1];
    let accepted = match tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf))
        .await
    {
        Ok(Err(e)) => {
            let e = ConnError::from_io(Side::Upstream, &e);
            let _ = writeln!(
                out,
                "session: REJECTED by the server: {e} (client certificate: {client_cert})"
            );
            false
        }
        Ok(Ok(0)) => {
            let _ = writeln!(out, "session: the server closed the connection right after the handshake (client certificate: {client_cert})");
            false
        }
        _ => {
            let _ = writeln!(out, "session: accepted (client certificate: {client_cert})");
            true
        }
    };
    let mut configured_ok = accepted;
    match tls::trust_anchors(&res.tls, &crate::secret::ProcessEnv) {
        Err(p) => {
            let _ = writeln!(out, "trust anchors: {}", p.error);
            configured_ok = false;
        }
        Ok(roots) => {
            let roots = std::sync::Arc::new(roots);
            for mode in [TlsMode::VerifyFull, TlsMode::VerifyCa, TlsMode::Insecure] {
                let verdict = match (
                    verify::server_verifier(mode, roots.clone(), tls::provider()),
                    chain.split_first(),
                ) {
                    (Ok(verifier), Some((leaf, rest))) => match verifier.verify_server_cert(
                        leaf,
                        rest,
                        &res.tls.server_name,
                        &[],
                        UnixTime::now(),
                    ) {
                        Ok(_) => Ok(()),
                        Err(e) => Err(ConnError::from_tls(Side::Upstream, &e).detail),
                    },
                    (Err(e), _) => Err(format!("no usable trust anchors ({e})")),
                    (_, None) => Err("the server presented no certificate".to_owned()),
                };
                let mark = if mode == res.tls.mode {
                    "  ← configured"
                } else {
                    ""
                };
                match &verdict {
                    Ok(()) => {
                        let _ = writeln!(out, "{:<12} ok{mark}", mode.as_str());
                    }
                    Err(why) => {
                        let _ = writeln!(out, "{:<12} FAILED: {why}{mark}", mode.as_str());
                    }
                }
                if mode == res.tls.mode {
                    configured_ok &= verdict.is_ok();
                }
            }
        }
    }
    if res.protocol != Protocol::Tcp {
        configured_ok &= auth_report(&config, res, request, &mut out).await;
    }
    let _ = writeln!(
        out,
        "result: {}",
        if configured_ok {
            "the configured resource works"
        } else {
            "the configured resource FAILS against this upstream (see above)"
        }
    );
    Ok((out, configured_ok))
}

/// A whole login with the configured credential (databases), or one request with it (http).
/// Whether it succeeded.
async fn auth_report(
    config: &config::Config,
    res: &config::ResourceConfig,
    request: &Request,
    out: &mut String,
) -> bool {
    if res.protocol == Protocol::Tcp {
        return true;
    }
    if let config::Auth::AwsSigV4 {
        region,
        credentials,
        ..
    }
    | config::Auth::RdsIam {
        region,
        credentials,
        ..
    } = &res.auth
    {
        if !aws_report(res.name.as_str(), region, credentials, out).await {
            return false;
        }
    }
    let one = config::Config {
        resources: vec![res.clone()],
        ..config.clone()
    };
    let runtime = match crate::runtime::Runtime::build(&one, &crate::secret::ProcessEnv) {
        Ok(rt) => rt,
        Err(problems) => {
            let _ = writeln!(out, "auth: cannot build the resource: {problems}");
            return false;
        }
    };
    let Some(rt) = runtime.resources.first() else {
        return false;
    };
    use crate::runtime::AnyHandler;
    let result = match &rt.handler {
        AnyHandler::Postgres(h) => crate::postgres::probe_login(&rt.resource, &h.0).await,
        AnyHandler::Mysql(h) => crate::mysql::probe_login(&rt.resource, &h.0).await,
        AnyHandler::Redis(h) => crate::redis::probe_login(&rt.resource, &h.0).await,
        AnyHandler::Http(_) => return http_report(rt, request, out).await,
        AnyHandler::Tcp(_) => return true,
    };
    match result {
        Ok(what) => {
            let _ = writeln!(out, "auth: ok, {what}");
            true
        }
        Err(e) => {
            let _ = writeln!(out, "auth: FAILED: {e}");
            false
        }
    }
}

/// Which source of the AWS chain answered (and, with `assume_role`, on top of what), and who
/// the credentials are: STS `GetCallerIdentity`.
async fn aws_report(
    resource: &str,
    region: &str,
    credentials: &config::AwsCredentials,
    out: &mut String,
) -> bool {
    let source = match crate::aws::Source::build(
        resource,
        region,
        credentials,
        &crate::secret::ProcessEnv,
    ) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(out, "aws credentials: FAILED: {e}");
            return false;
        }
    };
    match tokio::time::timeout(
        Duration::from_secs(60),
        crate::aws::caller_identity(&source),
    )
    .await
    {
        Err(_) => {
            let _ = writeln!(out, "aws credentials: FAILED: no answer within 60 s");
            false
        }
        Ok(Err(e)) => {
            let _ = writeln!(out, "aws credentials: FAILED: {e}");
            false
        }
        Ok(Ok((from, arn))) => {
            let _ = writeln!(out, "aws credentials: ok, source {from}, caller {arn}");
            true
        }
    }
}

/// One request through the resource, served by keyward's own HTTP handler on a private
/// loopback port: the credential is obtained as for an app (OAuth2 token fetched, SigV4
/// signed, headers set) and the upstream's answer reported. Fails on an error keyward answered
/// with (`x-keyward-error`), on 401/403/407 (the upstream refused the credential) and on 5xx.
async fn http_report(
    rt: &crate::runtime::ResourceRuntime,
    request: &Request,
    out: &mut String,
) -> bool {
    let line = format!("{} {}", request.method, request.path);
    match tokio::time::timeout(Duration::from_secs(60), http_request(rt, request)).await {
        Err(_) => {
            let _ = writeln!(out, "request {line}: FAILED: no answer within 60 s");
            false
        }
        Ok(Err(e)) => {
            let _ = writeln!(out, "request {line}: FAILED: {e}");
            false
        }
        Ok(Ok((status, keyward_error, last_error))) => {
            let code = status
                .split_whitespace()
                .next()
                .and_then(|c| c.parse::<u16>().ok())
                .unwrap_or(0);
            if let Some(reason) = keyward_error {
                let detail = last_error.unwrap_or_else(|| reason.clone());
                let _ = writeln!(
                    out,
                    "request {line}: FAILED: keyward answered {status} ({reason}): {detail}"
                );
                false
            } else if matches!(code, 401 | 403 | 407) {
                let _ = writeln!(
                    out,
                    "request {line}: FAILED: the upstream answered {status}: it refused the credential"
                );
                false
            } else if code >= 500 || code == 0 {
                let _ = writeln!(
                    out,
                    "request {line}: FAILED: the upstream answered {status}"
                );
                false
            } else {
                let _ = writeln!(
                    out,
                    "request {line}: ok, the upstream answered {status} with the credential"
                );
                true
            }
        }
    }
}

/// Sends `request` through the resource's handler; the status line's code and reason, and the
/// `x-keyward-error` header if keyward answered itself, with the failure keyward recorded.
async fn http_request(
    rt: &crate::runtime::ResourceRuntime,
    request: &Request,
) -> Result<(String, Option<String>, Option<String>), String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot bind a loopback port: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let stats = std::sync::Arc::new(crate::record::Stats::new(rt.name.clone()));
    let serve = async {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let _ = rt
            .serve(tokio_util::either::Either::Left(tcp), &stats)
            .await;
        Ok::<(), String>(())
    };
    let client = async {
        let method = http::Method::from_bytes(request.method.as_bytes())
            .map_err(|_| format!("{:?} is not an HTTP method", request.method))?;
        let req = http::Request::builder()
            .method(method)
            .uri(&request.path)
            .header(http::header::HOST, "keyward-probe")
            .header(http::header::USER_AGENT, "keyward-probe")
            .header(http::header::CONNECTION, "close")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| format!("the request {} {}: {e}", request.method, request.path))?;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .map_err(|e| e.to_string())?;
        // The connection ends when the request and its answer are dropped.
        tokio::spawn(conn);
        let response = sender
            .send_request(req)
            .await
            .map_err(|e| format!("no answer from keyward: {e}"))?;
        let status = response.status();
        let status = format!(
            "{} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or_default()
        );
        let error = response
            .headers()
            .get("x-keyward-error")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok::<_, String>((status, error))
    };
    let (served, answered) = tokio::join!(serve, client);
    served?;
    let (status, error) = answered?;
    let last = stats.last_error().map(|l| l.error.detail);
    Ok((status, error, last))
}

fn sni(name: &rustls::pki_types::ServerName<'_>) -> String {
    match name {
        rustls::pki_types::ServerName::DnsName(d) => d.as_ref().to_owned(),
        _ => "none (IP address)".to_owned(),
    }
}
