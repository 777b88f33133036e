//! Upstream TLS: one rustls `ClientConfig` per resource, built from its [`TlsSettings`].
//!
//! Configs are shared by every connection of the resource (so session resumption works) and
//! replaced whole on reload. Verification lives in [`verify`].

pub mod verify;

pub mod inbound;

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, RootCertStore};

use crate::config::{BuildError, BuildProblem, FileRef, TlsMode, TlsSettings, TlsVersion};
use crate::secret::Env;

/// The crypto provider keyward uses everywhere: rustls' ring provider (docs/DESIGN.md).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// A resource's ready-to-use upstream TLS.
#[derive(Debug, Clone)]
pub struct TlsClient {
    /// Shared by all of the resource's connections.
    pub config: Arc<ClientConfig>,
    /// SNI (none for IP addresses) and the name verified.
    pub server_name: ServerName<'static>,
    /// The mode the config implements.
    pub mode: TlsMode,
    /// The client certificate presented, if mTLS.
    pub client_cert: Option<CertInfo>,
    /// The earliest expiry (Unix seconds) among the CA certificates of `tls.ca`.
    pub ca_not_after: Option<i64>,
}

/// What may be logged about a certificate: never key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject DN.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// Serial number, hex.
    pub serial: String,
    /// Subject alternative names.
    pub sans: Vec<String>,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
}

impl CertInfo {
    /// Decodes the fields keyward reports.
    pub fn parse(der: &CertificateDer<'_>) -> Result<Self, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
        let sans = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|ext| ext.value.general_names.iter().map(san_text).collect())
            .unwrap_or_default();
        Ok(Self {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial: cert.raw_serial_as_string(),
            sans,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    /// `not_after` as RFC 3339.
    pub fn not_after_rfc3339(&self) -> String {
        rfc3339(self.not_after)
    }
}

/// A subject alternative name as people write it: `DNS:x`, `IP:10.0.0.7`, `URI:spiffe://…`.
pub fn san_text(name: &x509_parser::extensions::GeneralName<'_>) -> String {
    use x509_parser::extensions::GeneralName as G;
    match name {
        G::DNSName(d) => format!("DNS:{d}"),
        G::URI(u) => format!("URI:{u}"),
        G::RFC822Name(e) => format!("email:{e}"),
        G::IPAddress(b) => match <[u8; 4]>::try_from(*b)
            .map(std::net::IpAddr::from)
            .or_else(|_| <[u8; 16]>::try_from(*b).map(std::net::IpAddr::from))
        {
            Ok(ip) => format!("IP:{ip}"),
            Err(_) => format!("IP:{b:02x?}"),
        },
        other => other.to_string(),
    }
}

/// The negotiated TLS version and cipher suite of a connection, for people.
pub fn session_summary(conn: &rustls::CommonState) -> (String, String) {
    let version = conn
        .protocol_version()
        .map(|v| format!("{v:?}"))
        .unwrap_or_default();
    let cipher = conn
        .negotiated_cipher_suite()
        .map(|c| format!("{:?}", c.suite()))
        .unwrap_or_default();
    (version, cipher)
}

/// The time now in Unix seconds (what certificate validity is compared with).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Formats Unix seconds as RFC 3339 (UTC).
pub fn rfc3339(secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0).unsigned_abs());
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Builds the upstream TLS client for `settings`, offering `alpn` protocols (none for raw TCP);
/// `None` for `mode: disable`. Problems are returned with the site of the key that named the
/// bad file.
pub fn build_client(
    settings: &TlsSettings,
    alpn: &[&[u8]],
    env: &dyn Env,
) -> Result<Option<TlsClient>, Vec<BuildProblem>> {
    if settings.mode == TlsMode::Disable {
        return Ok(None);
    }
    let provider = provider();
    let mut problems = Vec::new();
    // Files are read in the reverse of the safe rotation order (CA bundle, then key, then
    // certificate): a build that reads the new certificate then reads a key and a CA at least
    // as new — never the new certificate with the CA bundle from before it.
    let identity = match &settings.client {
        Some(client) => match client_identity(&client.cert, &client.key, env) {
            Ok(identity) => Some(identity),
            Err(mut p) => {
                problems.append(&mut p);
                None
            }
        },
        None => None,
    };
    let ca_not_after = settings
        .ca
        .as_ref()
        .and_then(|ca| read_certs(ca, env).ok())
        .and_then(|certs| {
            certs
                .iter()
                .filter_map(|c| CertInfo::parse(c).ok())
                .map(|i| i.not_after)
                .min()
        });
    let roots = match trust_anchors(settings, env) {
        Ok(roots) => Arc::new(roots),
        Err(p) => {
            problems.push(p);
            Arc::new(RootCertStore::empty())
        }
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    let versions: &[&rustls::SupportedProtocolVersion] = match settings.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let fail = |e: BuildError| vec![BuildProblem::new(&settings.site, e)];
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| fail(BuildError::TlsVersions(e)))?;
    let builder = verify::with_verifier(builder, settings.mode, roots, provider)
        .map_err(|e| fail(BuildError::ServerVerifier(e)))?;
    let (mut config, client_cert) = match identity {
        Some((chain, key, info, key_file)) => {
            let config = builder.with_client_auth_cert(chain, key).map_err(|error| {
                let path = key_file.path.clone();
                vec![BuildProblem::new(
                    &key_file.site,
                    BuildError::ClientKey { path, error },
                )]
            })?;
            (config, Some(info))
        }
        None => (builder.with_no_client_auth(), None),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Some(TlsClient {
        config: Arc::new(config),
        server_name: settings.server_name.clone(),
        mode: settings.mode,
        client_cert,
        ca_not_after,
    }))
}

/// The trust anchors `settings` name (`ca` and/or the system roots; none for insecure).
pub fn trust_anchors(settings: &TlsSettings, env: &dyn Env) -> Result<RootCertStore, BuildProblem> {
    let mut roots = RootCertStore::empty();
    if settings.mode == TlsMode::Insecure {
        return Ok(roots);
    }
    if let Some(ca) = &settings.ca {
        let certs = read_certs(ca, env)?;
        let (added, ignored) = roots.add_parsable_certificates(certs);
        if added == 0 {
            let path = ca.path.clone();
            return Err(BuildProblem::new(
                &ca.site,
                BuildError::NoUsableCa { path, ignored },
            ));
        }
    }
    if settings.system_roots {
        let system = system_roots();
        if system.is_empty() && settings.ca.is_none() {
            return Err(BuildProblem::new(&settings.site, BuildError::NoSystemRoots));
        }
        roots.extend(system.iter().cloned());
    }
    Ok(roots)
}

/// The OS trust store, read once.
fn system_roots() -> &'static [rustls::pki_types::TrustAnchor<'static>] {
    static ROOTS: OnceLock<Vec<rustls::pki_types::TrustAnchor<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        let mut store = RootCertStore::empty();
        store.add_parsable_certificates(found.certs);
        store.roots
    })
}

type Identity = (
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
    CertInfo,
    FileRef,
);

fn client_identity(
    cert: &FileRef,
    key: &FileRef,
    env: &dyn Env,
) -> Result<Identity, Vec<BuildProblem>> {
    let chain = read_certs(cert, env).map_err(|p| vec![p])?;
    let key_der = read_key(key, env).map_err(|p| vec![p])?;
    let at_cert = |error| vec![BuildProblem::new(&cert.site, error)];
    let path = || cert.path.clone();
    let info = CertInfo::parse(&chain[0]).map_err(|reason| {
        at_cert(BuildError::BadCertificate {
            path: path(),
            reason,
        })
    })?;
    if info.not_after < unix_now() {
        return Err(at_cert(BuildError::Expired {
            path: path(),
            subject: info.subject.clone(),
            not_after: info.not_after_rfc3339(),
        }));
    }
    if let Err(reason) = check_chain(&chain) {
        return Err(at_cert(BuildError::Chain {
            path: path(),
            reason,
        }));
    }
    // rustls checks the pair when the config is built; do it here too so `check` reports it
    // against the key's own site.
    if let Err(error) =
        rustls::sign::CertifiedKey::from_der(chain.clone(), key_der.clone_key(), &provider())
    {
        let path = key.path.clone();
        return Err(vec![BuildProblem::new(
            &key.site,
            BuildError::ClientKey { path, error },
        )]);
    }
    Ok((chain, key_der, info, key.clone()))
}

/// When a client certificate file carries its chain (leaf, intermediates…, CA), the leaf must
/// verify up to the last certificate for client authentication.
fn check_chain(chain: &[CertificateDer<'static>]) -> Result<(), String> {
    let [leaf, middle @ .., top] = chain else {
        return Ok(());
    };
    let anchor = webpki::anchor_from_trusted_cert(top)
        .map_err(|e| format!("last certificate of the chain is not a CA: {e:?}"))?;
    let ee =
        webpki::EndEntityCert::try_from(leaf).map_err(|e| format!("leaf certificate: {e:?}"))?;
    ee.verify_for_usage(
        provider().signature_verification_algorithms.all,
        &[anchor],
        middle,
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| format!("the client certificate does not chain to the CA in the same file: {e:?}"))
}

/// Reads every certificate in a PEM file (through `env`).
pub fn read_certs(
    file: &FileRef,
    env: &dyn Env,
) -> Result<Vec<CertificateDer<'static>>, BuildProblem> {
    let path = || file.path.clone();
    let fail = |error| BuildProblem::new(&file.site, error);
    let bytes = env.read(&file.path).map_err(|source| {
        fail(BuildError::Read {
            path: path(),
            source,
        })
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| {
            fail(BuildError::MalformedPem {
                path: path(),
                error,
            })
        })?;
    if certs.is_empty() {
        return Err(fail(BuildError::NoCertificate { path: path() }));
    }
    for cert in &certs {
        CertInfo::parse(cert).map_err(|reason| {
            fail(BuildError::BadCertificate {
                path: path(),
                reason,
            })
        })?;
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file (through `env`).
pub fn read_key(file: &FileRef, env: &dyn Env) -> Result<PrivateKeyDer<'static>, BuildProblem> {
    let path = file.path.clone();
    let bytes = env.read(&file.path).map_err(|source| {
        BuildProblem::new(
            &file.site,
            BuildError::Read {
                path: path.clone(),
                source,
            },
        )
    })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|error| {
        let error = match error {
            rustls::pki_types::pem::Error::NoItemsFound => BuildError::NoKey { path },
            error => BuildError::MalformedKey { path, error },
        };
        BuildProblem::new(&file.site, error)
    })
}

/// The `tls-server-end-point` channel binding data of a server certificate (RFC 5929 §4.1):
/// its hash with the hash function of its signature algorithm, SHA-256 for MD5 and SHA-1.
/// `None` for algorithms without one hash function (Ed25519, RSASSA-PSS), as libpq does.
pub fn tls_server_end_point(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    use sha2::Digest;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let oid = parsed.signature_algorithm.algorithm.to_id_string();
    let der = cert.as_ref();
    match oid.as_str() {
        // md5/sha1/sha256 with RSA; ecdsa-with-SHA1/SHA256
        "1.2.840.113549.1.1.4"
        | "1.2.840.113549.1.1.5"
        | "1.2.840.113549.1.1.11"
        | "1.2.840.10045.4.1"
        | "1.2.840.10045.4.3.2" => Some(sha2::Sha256::digest(der).to_vec()),
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => Some(sha2::Sha384::digest(der).to_vec()),
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => Some(sha2::Sha512::digest(der).to_vec()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Site;

    fn file(dir: &std::path::Path, name: &str, text: Option<&str>) -> FileRef {
        let path = dir.join(name);
        if let Some(text) = text {
            std::fs::write(&path, text).unwrap();
        }
        FileRef {
            path,
            site: Site {
                line: 3,
                column: 9,
                path: "resources[0].tls.ca".to_owned(),
            },
        }
    }

    /// The build path says what is wrong as a typed error at the key that named the file.
    #[test]
    fn unreadable_pem_files_are_typed_build_errors_at_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let missing = file(dir.path(), "missing.pem", None);
        let env = crate::secret::ProcessEnv;
        let err = read_certs(&missing, &env).unwrap_err();
        assert!(matches!(*err.error, BuildError::Read { .. }), "{err:?}");
        assert_eq!(err.site, missing.site);
        let text = file(dir.path(), "text.pem", Some("not pem\n"));
        let err = read_certs(&text, &env).unwrap_err();
        assert!(
            matches!(*err.error, BuildError::NoCertificate { .. }),
            "{err:?}"
        );
        let err = read_key(&text, &env).unwrap_err();
        assert!(matches!(*err.error, BuildError::NoKey { .. }), "{err:?}");
        assert_eq!(
            err.error.to_string(),
            format!(
                "\"{}\": no PEM private key found (expected PKCS#8, PKCS#1 or SEC1)",
                text.path.display()
            )
        );
    }

    /// A reload that reads the new client certificate must also get the CA bundle written
    /// before it (the safe rotation order: bundle, key, certificate): the build reads the
    /// certificate first, then the key, then the CA. (Failed before: the CA was read first,
    /// and a reload racing a rotation could apply the new certificate with the old bundle.)
    #[test]
    fn a_client_build_reads_the_certificate_then_the_key_then_the_ca() {
        struct Order(std::sync::Mutex<Vec<std::path::PathBuf>>);
        impl Env for Order {
            fn var(&self, _: &str) -> Option<String> {
                None
            }
            fn read(&self, path: &std::path::Path) -> std::io::Result<zeroize::Zeroizing<Vec<u8>>> {
                self.0.lock().unwrap().push(path.to_owned());
                std::fs::read(path).map(zeroize::Zeroizing::new)
            }
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::pki::Ca::new("order CA").unwrap();
        let leaf = ca.leaf("client", &[], crate::pki::Usage::Client).unwrap();
        let ca_file = file(dir.path(), "ca.pem", Some(&ca.cert.cert_pem));
        let cert = file(dir.path(), "client.pem", Some(&leaf.cert_pem));
        let key = file(dir.path(), "client.key", Some(&leaf.key_pem));
        let settings = TlsSettings {
            mode: TlsMode::VerifyFull,
            ca: Some(ca_file.clone()),
            system_roots: false,
            client: Some(crate::config::ClientIdentity {
                cert: cert.clone(),
                key: key.clone(),
            }),
            server_name: ServerName::try_from("localhost").unwrap(),
            min_version: TlsVersion::Tls12,
            negotiation: Default::default(),
            site: ca_file.site.clone(),
        };
        let env = Order(Default::default());
        assert!(build_client(&settings, &[], &env).unwrap().is_some());
        let read = env.0.into_inner().unwrap();
        let first = |p: &std::path::Path| read.iter().position(|r| r == p).unwrap();
        assert!(first(&cert.path) < first(&key.path), "{read:?}");
        assert!(first(&key.path) < first(&ca_file.path), "{read:?}");
    }
}
