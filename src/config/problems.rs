//! What is wrong with a configuration, and where: file, line, column, key path.

use std::fmt;
use std::path::PathBuf;

use crate::error::io_reason;

/// Where in the config file a value was written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Site {
    /// 1-based line.
    pub line: u64,
    /// 1-based column.
    pub column: u64,
    /// The key path, e.g. `resources[2].tls.ca`.
    pub path: String,
}

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The config file.
    pub file: PathBuf,
    /// Where in it, when known.
    pub site: Option<Site>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.site {
            Some(site) if site.line > 0 => write!(
                f,
                "{}:{}:{}: {}: {}",
                self.file.display(),
                site.line,
                site.column,
                site.path,
                self.message
            ),
            Some(site) => write!(
                f,
                "{}: {}: {}",
                self.file.display(),
                site.path,
                self.message
            ),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Every problem found in one configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    /// The problems as a JSON array of objects (`file`, `line`, `column`, `key`, `message`;
    /// `line`/`column`/`key` are null where unknown), for CI and editors.
    pub fn to_json(&self) -> String {
        let items: Vec<serde_json::Value> = self
            .0
            .iter()
            .map(|p| {
                let site = p.site.as_ref();
                let known = |n: u64| (n > 0).then_some(n);
                serde_json::json!({
                    "file": p.file.display().to_string(),
                    "line": site.and_then(|s| known(s.line)),
                    "column": site.and_then(|s| known(s.column)),
                    "key": site.map(|s| s.path.as_str()).filter(|k| !k.is_empty()),
                    "message": p.message,
                })
            })
            .collect();
        serde_json::Value::Array(items).to_string()
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// Why a validated resource could not be built into its runtime: a file, certificate, key,
/// secret or credential. Its `Display` is the message `keyward check`, startup and a reload
/// print (no secret value ever reaches it).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A certificate or key file that cannot be read.
    #[error("reading {}: {}", shown(path), io_reason(source))]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A certificate file without a PEM certificate.
    #[error(
        "{}: no PEM certificate found (expected -----BEGIN CERTIFICATE-----)",
        shown(path)
    )]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A certificate file whose PEM does not parse.
    #[error("{}: malformed PEM: {error}", shown(path))]
    MalformedPem {
        /// The file.
        path: PathBuf,
        /// What the PEM reader said.
        error: rustls_pki_types::pem::Error,
    },
    /// A PEM certificate that is not X.509 keyward can read.
    #[error("{}: {reason}", shown(path))]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// A key file without a PEM private key.
    #[error(
        "{}: no PEM private key found (expected PKCS#8, PKCS#1 or SEC1)",
        shown(path)
    )]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// A key file whose PEM does not parse.
    #[error("{}: malformed PEM key: {error}", shown(path))]
    MalformedKey {
        /// The file.
        path: PathBuf,
        /// What the PEM reader said.
        error: rustls_pki_types::pem::Error,
    },
    /// A CA bundle none of whose certificates is a usable trust anchor.
    #[error(
        "{}: none of the {ignored} certificate(s) is a usable CA certificate",
        shown(path)
    )]
    NoUsableCa {
        /// The file.
        path: PathBuf,
        /// How many were skipped.
        ignored: usize,
    },
    /// A `client_ca` certificate that is not a usable trust anchor.
    #[error("{}: not a usable CA certificate: {error}", shown(path))]
    UnusableCa {
        /// The file.
        path: PathBuf,
        /// What rustls said.
        error: rustls::Error,
    },
    /// `system_roots` with no system roots and no `ca`.
    #[error("no system root certificates were found on this machine; set tls.ca to the upstream's CA bundle")]
    NoSystemRoots,
    /// A client certificate past its notAfter.
    #[error("{}: certificate \"{subject}\" expired on {not_after}", shown(path))]
    Expired {
        /// The file.
        path: PathBuf,
        /// Its subject.
        subject: String,
        /// Its notAfter (RFC 3339).
        not_after: String,
    },
    /// A client certificate file whose chain does not verify to its last certificate.
    #[error("{}: {reason}", shown(path))]
    Chain {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// An upstream client key rustls refuses (not the certificate's key, or unsupported).
    #[error("{}: {}", shown(path), client_key_reason(error))]
    ClientKey {
        /// The key file.
        path: PathBuf,
        /// What rustls said.
        error: rustls::Error,
    },
    /// A `listen_tls` key that is not the key of its certificate.
    #[error("{} does not match the certificate in {}: {error}", key.display(), cert.display())]
    ListenKey {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
        /// What rustls said.
        error: rustls::Error,
    },
    /// rustls refused the protocol versions.
    #[error("TLS versions: {0}")]
    TlsVersions(rustls::Error),
    /// The certificate verifier could not be built.
    #[error("building the verifier: {0}")]
    ServerVerifier(rustls::client::VerifierBuilderError),
    /// The client-certificate verifier could not be built.
    #[error("{0}")]
    ClientVerifier(rustls::server::VerifierBuilderError),
    /// A secret reference that does not resolve.
    #[error(transparent)]
    Secret(#[from] crate::secret::SecretError),
    /// AWS credentials that cannot be resolved (`rds_iam`, `aws_sigv4`).
    #[error("auth ({auth}): {reason}")]
    AwsCredentials {
        /// The auth type.
        auth: &'static str,
        /// Why.
        reason: String,
    },
    /// An OAuth2 assertion key or Google service-account file that cannot be used.
    #[error("auth (oauth2): {0}")]
    Assertion(String),
    /// A header value (a resolved secret) that HTTP cannot carry.
    #[error("not a valid HTTP header value")]
    HeaderValue,
    /// A bearer token HTTP cannot carry in a header.
    #[error("the token is not a valid HTTP header value")]
    TokenValue,
    /// An `api_key` header name that is not one.
    #[error("\"{0}\" is not a valid header name")]
    HeaderName(String),
    /// An upstream URL without a host (validation guarantees one).
    #[error("upstream URL without a host")]
    NoHost,
    /// An `http` resource whose upstream has no URL (validation guarantees one).
    #[error("http upstream without a URL")]
    NoUrl,
}

/// A build error at the key that named its cause.
#[derive(Debug)]
pub struct BuildProblem {
    /// Where.
    pub site: Site,
    /// What (boxed: rustls's errors are large and this travels in `Result`s).
    pub error: Box<BuildError>,
}

impl BuildProblem {
    /// `error` at `site`.
    pub fn new(site: &Site, error: impl Into<BuildError>) -> Self {
        Self {
            site: site.clone(),
            error: Box::new(error.into()),
        }
    }
}

fn shown(path: &std::path::Path) -> String {
    format!("\"{}\"", path.display())
}

fn client_key_reason(err: &rustls::Error) -> String {
    match err {
        rustls::Error::InconsistentKeys(_) => {
            "key does not match certificate (client_key is not the key of client_cert)".to_owned()
        }
        other => format!("unusable client key: {other}"),
    }
}
