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

/// The report, and whether the configured mode works against the upstream.
pub async fn probe(path: &Path, resource: &str) -> Result<(String, bool), String> {
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
        let ok = auth_report(&config, res, &mut out).await;
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
    if matches!(
        res.protocol,
        Protocol::Postgres | Protocol::Mysql | Protocol::Redis
    ) {
        configured_ok &= auth_report(&config, res, &mut out).await;
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

/// For databases: a whole login with the configured credential. Whether it succeeded.
async fn auth_report(
    config: &config::Config,
    res: &config::ResourceConfig,
    out: &mut String,
) -> bool {
    if !matches!(
        res.protocol,
        Protocol::Postgres | Protocol::Mysql | Protocol::Redis
    ) {
        return true;
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
        AnyHandler::Tcp(_) | AnyHandler::Http(_) => return true,
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

fn sni(name: &rustls::pki_types::ServerName<'_>) -> String {
    match name {
        rustls::pki_types::ServerName::DnsName(d) => d.as_ref().to_owned(),
        _ => "none (IP address)".to_owned(),
    }
}
