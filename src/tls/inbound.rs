//! TLS on keyward's own listeners (`listen_tls`): keyward's certificate, TLS 1.2+ with
//! rustls's (strong-only) cipher suites, optional client certificates verified against
//! `client_ca`, and an allow-list on the verified identity (CN, DNS and URI SANs; `*` globs
//! as ghostunnel's `--allow-*` flags). Built once per runtime snapshot; reload swaps it.

use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::{AllowList, BuildError, BuildProblem, ListenTls};
use crate::error::{ConnError, Reason, Side};
use crate::secret::Env;

/// A resource's inbound TLS.
#[derive(Clone)]
pub struct InboundTls {
    /// The acceptor.
    pub acceptor: TlsAcceptor,
    allow: AllowList,
    require_client_cert: bool,
}

impl std::fmt::Debug for InboundTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundTls")
            .field("allow", &self.allow)
            .field("require_client_cert", &self.require_client_cert)
            .finish()
    }
}

impl InboundTls {
    /// Reads the files and builds the server config, offering `alpn`.
    pub fn build(
        settings: &ListenTls,
        alpn: &[&[u8]],
        env: &dyn Env,
    ) -> Result<Self, Vec<BuildProblem>> {
        let mut problems = Vec::new();
        let certs = super::read_certs(&settings.cert, env)
            .map_err(|p| problems.push(p))
            .ok();
        let key = super::read_key(&settings.key, env)
            .map_err(|p| problems.push(p))
            .ok();
        let provider = super::provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| {
                vec![BuildProblem::new(
                    &settings.cert.site,
                    BuildError::TlsVersions(e),
                )]
            })?;
        let builder = match &settings.client_ca {
            Some(ca_file) => {
                let mut roots = RootCertStore::empty();
                match super::read_certs(ca_file, env) {
                    Ok(cas) => {
                        for ca in cas {
                            if let Err(error) = roots.add(ca) {
                                let path = ca_file.path.clone();
                                problems.push(BuildProblem::new(
                                    &ca_file.site,
                                    BuildError::UnusableCa { path, error },
                                ));
                            }
                        }
                    }
                    Err(p) => problems.push(p),
                }
                if !problems.is_empty() {
                    return Err(problems);
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if settings.require_client_cert {
                    verifier.build()
                } else {
                    verifier.allow_unauthenticated().build()
                };
                match verifier {
                    Ok(v) => builder.with_client_cert_verifier(v),
                    Err(e) => {
                        return Err(vec![BuildProblem::new(
                            &ca_file.site,
                            BuildError::ClientVerifier(e),
                        )])
                    }
                }
            }
            None => builder.with_no_client_auth(),
        };
        let (Some(certs), Some(key)) = (certs, key) else {
            return Err(problems);
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|error| {
            let key = settings.key.path.clone();
            let cert = settings.cert.path.clone();
            vec![BuildProblem::new(
                &settings.key.site,
                BuildError::ListenKey { key, cert, error },
            )]
        })?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            allow: settings.allow.clone(),
            require_client_cert: settings.require_client_cert,
        })
    }

    /// Whether only apps with a verified (and allowed) client certificate may use the
    /// listener: `require_client_cert`, or an `allow` list.
    pub fn requires_client_cert(&self) -> bool {
        self.require_client_cert || !self.allow.is_empty()
    }

    /// TLS with the app within `timeout`, then the allow-list check.
    pub async fn accept(
        &self,
        stream: crate::listener::RawStream,
        early: bytes::Bytes,
        timeout: std::time::Duration,
    ) -> Result<crate::listener::InboundStream, ConnError> {
        let stream = crate::wire::Prefixed::new(stream, early);
        let tls = match tokio::time::timeout(timeout, self.acceptor.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                let mut err = ConnError::from_io(Side::Client, &e);
                err.reason = Reason::Tls;
                err.detail = format!("TLS handshake with the app failed: {}", err.detail);
                return Err(err);
            }
            Err(_) => {
                return Err(ConnError::new(
                    Side::Client,
                    Reason::ClientHandshakeTimeout,
                    format!(
                        "the app did not complete the TLS handshake within {}",
                        shown(timeout)
                    ),
                ))
            }
        };
        if !self.allow.is_empty() {
            let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
            let allowed = leaf.is_some_and(|leaf| allowed(&self.allow, leaf.as_ref()));
            if !allowed {
                return Err(ConnError::new(
                    Side::Client,
                    Reason::ClientCertRejected,
                    "the app's client certificate is not in listen_tls.allow",
                ));
            }
        }
        Ok(tls)
    }
}

/// Whether a certificate's CN, DNS or URI SANs match the allow-list. CNs and DNS names
/// compare without regard to ASCII case (DNS is case-insensitive); URIs exactly (SPIFFE IDs
/// are case-sensitive).
pub fn allowed(allow: &AllowList, der: &[u8]) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    let cns = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned));
    for cn in cns {
        if allow.cn.iter().any(|p| glob(p, &cn, Names::Dns)) {
            return true;
        }
    }
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        use x509_parser::extensions::GeneralName;
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) if allow.dns.iter().any(|p| glob(p, d, Names::Dns)) => {
                    return true
                }
                GeneralName::URI(u) if allow.uri.iter().any(|p| glob(p, u, Names::Uri)) => {
                    return true
                }
                _ => {}
            }
        }
    }
    false
}

/// Whether `name` matches the allow-list pattern `pattern`: as a URI SAN (`uri`: `*` within
/// one path segment, case-sensitive) or as a DNS name / CN (`*` within one label, ASCII case
/// ignored). `*` stands for one or more characters. (Public for the fuzz target.)
pub fn name_matches(pattern: &str, name: &str, uri: bool) -> bool {
    glob(pattern, name, if uri { Names::Uri } else { Names::Dns })
}

/// How names of a kind compare: the separator a `*` does not cross, and case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Names {
    /// DNS names and CNs: `*` is within one label; ASCII case is ignored.
    Dns,
    /// URIs: `*` is within one path segment; case matters.
    Uri,
}

impl Names {
    fn sep(self) -> char {
        match self {
            Self::Dns => '.',
            Self::Uri => '/',
        }
    }

    fn eq(self, a: &str, b: &str) -> bool {
        match self {
            Self::Dns => a.eq_ignore_ascii_case(b),
            Self::Uri => a == b,
        }
    }
}

/// `*` matches one or more characters other than the separator (within one DNS label, one
/// URI path segment): `*.svc` never matches `.svc` itself.
fn glob(pattern: &str, text: &str, names: Names) -> bool {
    match pattern.split_once('*') {
        None => names.eq(pattern, text),
        Some((head, tail)) => {
            // `get` and `char_indices` keep every cut on a char boundary: a name with
            // multi-byte characters cannot panic the matcher.
            let Some(start) = text.get(..head.len()) else {
                return false;
            };
            if !names.eq(start, head) {
                return false;
            }
            let rest = &text[head.len()..];
            for (i, c) in rest.char_indices() {
                if c == names.sep() {
                    return false;
                }
                if glob(tail, &rest[i + c.len_utf8()..], names) {
                    return true;
                }
            }
            false
        }
    }
}

/// A time limit as a person reads it: the time left until the client deadline is a few
/// nanoseconds short of what was configured, so it is rounded up to whole milliseconds
/// (`10s`, not `9s 999ms 999us 820ns`).
fn shown(limit: std::time::Duration) -> String {
    let ms = limit.as_nanos().div_ceil(1_000_000);
    humantime::format_duration(std::time::Duration::from_millis(
        u64::try_from(ms).unwrap_or(u64::MAX),
    ))
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_one_label_or_segment() {
        assert!(glob(
            "*.svc.cluster.local",
            "api.svc.cluster.local",
            Names::Dns
        ));
        assert!(!glob(
            "*.svc.cluster.local",
            "a.b.svc.cluster.local",
            Names::Dns
        ));
        assert!(glob(
            "spiffe://prod/ns/*/sa/web",
            "spiffe://prod/ns/shop/sa/web",
            Names::Uri
        ));
        assert!(!glob(
            "spiffe://prod/ns/*/sa/web",
            "spiffe://prod/ns/a/b/sa/web",
            Names::Uri
        ));
        assert!(glob("App", "app", Names::Dns));
        assert!(!glob("app", "app2", Names::Dns));
        assert!(glob("*", "anything", Names::Uri));
    }

    #[test]
    fn a_star_matches_at_least_one_character_and_uris_keep_their_case() {
        assert!(!glob("*.svc", ".svc", Names::Dns));
        assert!(!glob("app-*", "app-", Names::Dns));
        assert!(glob("app-*", "app-1", Names::Dns));
        assert!(!glob("*", "", Names::Uri));
        assert!(glob(
            "spiffe://prod/ns/*/sa/web",
            "spiffe://prod/ns/a/sa/web",
            Names::Uri
        ));
        assert!(!glob(
            "spiffe://prod/ns/*/sa/web",
            "spiffe://prod/ns//sa/web",
            Names::Uri
        ));
        assert!(!glob(
            "spiffe://prod/sa/Web",
            "spiffe://prod/sa/web",
            Names::Uri
        ));
        assert!(!glob("spiffe://Prod/*", "spiffe://prod/x", Names::Uri));
        assert!(glob("API.svc", "api.SVC", Names::Dns));
    }

    #[test]
    fn globs_never_cut_a_multibyte_character() {
        // The pattern's literal head ends inside the 'é' of the name: no match, no panic.
        assert!(!glob("ab*", "aé-worker", Names::Dns));
        assert!(!glob("a\u{e9}x*", "aé", Names::Dns));
        assert!(glob("é*", "é-worker", Names::Dns));
        assert!(!glob("x*", "", Names::Dns));
    }

    #[test]
    fn allow_list_checks_cn_dns_and_uri() {
        let ca = crate::pki::Ca::new("allow test CA").unwrap();
        let leaf = ca
            .leaf(
                "billing-worker",
                &["worker.billing.svc"],
                crate::pki::Usage::Client,
            )
            .unwrap();
        let der = leaf.cert_der.as_ref();
        let list = |cn: &[&str], dns: &[&str], uri: &[&str]| AllowList {
            cn: cn.iter().map(|s| s.to_string()).collect(),
            dns: dns.iter().map(|s| s.to_string()).collect(),
            uri: uri.iter().map(|s| s.to_string()).collect(),
        };
        assert!(allowed(&list(&["billing-*"], &[], &[]), der));
        assert!(allowed(&list(&[], &["*.billing.svc"], &[]), der));
        assert!(!allowed(
            &list(&["other"], &["*.other.svc"], &["spiffe://x/*"]),
            der
        ));
    }

    /// Seen in `bench/hostile.sh`'s log: "within 9s 999ms 999us 820ns".
    #[test]
    fn a_time_limit_is_shown_in_whole_milliseconds() {
        use std::time::Duration;
        assert_eq!(shown(Duration::from_nanos(9_999_999_820)), "10s");
        assert_eq!(shown(Duration::from_secs(10)), "10s");
        assert_eq!(shown(Duration::from_micros(2_500_100)), "2s 501ms");
    }
}
