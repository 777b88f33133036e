//! The YAML as users write it (CONFIG.md), before validation. Every struct denies unknown
//! keys; values that need checking later carry their location (`Spanned`).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default = "admin_on")]
    pub admin: Option<Admin>,
    #[serde(default)]
    pub log: Log,
    #[serde(default)]
    pub defaults: Defaults,
    pub shutdown_grace: Option<Spanned<String>>,
    pub shutdown_delay: Option<Spanned<String>>,
    pub resources: Vec<Resource>,
}

fn admin_on() -> Option<Admin> {
    Some(Admin::default())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub listen: Option<Spanned<String>>,
    #[serde(default)]
    pub allow_remote: bool,
    #[serde(default)]
    pub shutdown_endpoint: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    pub level: Option<String>,
    pub format: Option<LogFormat>,
}

/// `log.format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Plain,
    /// One JSON object per line.
    Json,
}

/// `defaults`: resource fields applied where a resource does not set them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    pub connect_timeout: Option<Spanned<String>>,
    pub handshake_timeout: Option<Spanned<String>>,
    pub client_handshake_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<u32>>,
    pub tls: Option<Tls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resource {
    pub name: Spanned<String>,
    pub protocol: Spanned<Protocol>,
    pub listen: Spanned<String>,
    #[serde(default)]
    pub allow_remote: bool,
    pub listen_mode: Option<Spanned<String>>,
    pub upstream: Spanned<String>,
    pub tls: Option<Tls>,
    pub auth: Option<Auth>,
    pub headers: Option<BTreeMap<String, Spanned<String>>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub handshake_timeout: Option<Spanned<String>>,
    pub client_handshake_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<u32>>,
    pub http2: Option<Http2>,
    pub preserve_host: Option<bool>,
    pub pass_client_auth: Option<bool>,
    pub response_timeout: Option<Spanned<String>>,
    pub pool_idle_timeout: Option<Spanned<String>>,
    pub max_signed_body: Option<Spanned<u64>>,
    pub allow_methods: Option<Spanned<Vec<String>>>,
    pub client_password: Option<Spanned<String>>,
    pub listen_tls: Option<ListenTls>,
    pub pool_max_idle: Option<Spanned<u32>>,
}

/// `resources[].listen_tls`: TLS on keyward's own listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenTls {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
    pub client_ca: Option<Spanned<String>>,
    #[serde(default)]
    pub require_client_cert: bool,
    pub allow: Option<Spanned<Allow>>,
}

/// `listen_tls.allow`: who may connect, by the verified client certificate.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Allow {
    #[serde(default)]
    pub cn: Vec<String>,
    #[serde(default)]
    pub dns: Vec<String>,
    #[serde(default)]
    pub uri: Vec<String>,
}

/// `resources[].http2`: whether the upstream connection may or must use HTTP/2.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Http2 {
    /// Offer h2 and http/1.1 by ALPN; use what the upstream picks.
    #[default]
    Auto,
    /// Offer only h2.
    Always,
    /// Offer only http/1.1.
    Never,
}

/// `resources[].protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Bytes relayed as they are.
    Tcp,
    /// HTTP requests with injected credentials.
    Http,
    /// PostgreSQL wire protocol.
    Postgres,
    /// MySQL / MariaDB wire protocol.
    Mysql,
    /// Redis RESP.
    Redis,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub mode: Option<Spanned<TlsMode>>,
    pub ca: Option<Spanned<String>>,
    pub system_roots: Option<bool>,
    pub client_cert: Option<Spanned<String>>,
    pub client_key: Option<Spanned<String>>,
    pub server_name: Option<Spanned<String>>,
    pub min_version: Option<Spanned<TlsVersion>>,
    pub negotiation: Option<Spanned<Negotiation>>,
}

/// `tls.negotiation` (postgres): how TLS starts on the upstream connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Negotiation {
    /// `SSLRequest`, then TLS (every PostgreSQL version).
    #[default]
    Postgres,
    /// TLS from the first byte with ALPN `postgresql` (PostgreSQL 17+).
    Direct,
}

/// `tls.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Chain and host name verified (the default).
    #[default]
    VerifyFull,
    /// Chain verified, host name not (libpq `sslmode=verify-ca`).
    VerifyCa,
    /// Encrypted, nothing verified except handshake signatures.
    Insecure,
    /// Plaintext.
    Disable,
}

impl TlsMode {
    /// The spelling in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::VerifyFull => "verify-full",
            Self::VerifyCa => "verify-ca",
            Self::Insecure => "insecure",
            Self::Disable => "disable",
        }
    }
}

/// `tls.min_version`: `"1.2"` or `"1.3"` (an unquoted YAML float is accepted too).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

impl<'de> Deserialize<'de> for TlsVersion {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = TlsVersion;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"1.2\" or \"1.3\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TlsVersion, E> {
                match v {
                    "1.2" => Ok(TlsVersion::Tls12),
                    "1.3" => Ok(TlsVersion::Tls13),
                    _ => Err(E::custom(format!(
                        "unsupported TLS version \"{v}\": use \"1.2\" or \"1.3\""
                    ))),
                }
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<TlsVersion, E> {
                self.visit_str(&v.to_string())
            }
        }
        de.deserialize_any(V)
    }
}

/// `auth`: one flat block; which keys a `type` allows is checked during validation so the
/// error can name the key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    #[serde(rename = "type")]
    pub kind: Spanned<AuthType>,
    pub username: Option<Spanned<String>>,
    pub password: Option<Spanned<String>>,
    pub database: Option<Spanned<String>>,
    pub token: Option<Spanned<String>>,
    pub header: Option<Spanned<String>>,
    pub query: Option<Spanned<String>>,
    pub value: Option<Spanned<String>>,
    pub token_url: Option<Spanned<String>>,
    pub allow_plaintext_token_url: Option<Spanned<bool>>,
    pub client_id: Option<Spanned<String>>,
    pub client_secret: Option<Spanned<String>>,
    pub refresh_token: Option<Spanned<String>>,
    pub scopes: Option<Spanned<Vec<String>>>,
    pub audience: Option<Spanned<String>>,
    pub params: Option<Spanned<BTreeMap<String, String>>>,
    pub client_auth: Option<Spanned<String>>,
    pub service: Option<Spanned<String>>,
    pub region: Option<Spanned<String>>,
    pub access_key_id: Option<Spanned<String>>,
    pub secret_access_key: Option<Spanned<String>>,
    pub session_token: Option<Spanned<String>>,
    pub unsigned_payload: Option<Spanned<bool>>,
    pub allow_cleartext_password: Option<Spanned<bool>>,
    pub allow_rsa_key_exchange: Option<Spanned<bool>>,
    pub tls: Option<Tls>,
}

/// `auth.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthType {
    /// Inject nothing.
    None,
    /// Database password (postgres, mysql, redis).
    Password,
    /// AWS RDS IAM auth token as the database password.
    RdsIam,
    /// An API key in a header or query parameter.
    ApiKey,
    /// HTTP Basic.
    Basic,
    /// HTTP Bearer token.
    Bearer,
    /// OAuth2 client credentials (or refresh token) grant.
    Oauth2,
    /// AWS Signature Version 4.
    AwsSigv4,
}
