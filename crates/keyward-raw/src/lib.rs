//! keyward's config file as users write it (README.md, config/keyward.yaml), before validation.
//! Every struct denies unknown keys; values that need checking later carry their location
//! (`Spanned`). keyward validates what [`parse`] returns (`keyward::config`).

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
    pub audit: Option<Spanned<Audit>>,
    pub resources: Vec<Resource>,
}

/// `audit`: where audit events go.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audit {
    pub sink: Spanned<AuditSink>,
    pub path: Option<Spanned<String>>,
    pub max_size: Option<Spanned<ByteSize>>,
    pub max_files: Option<Spanned<u32>>,
    pub format: Option<Spanned<AuditFormat>>,
    pub queue: Option<Spanned<u32>>,
}

/// `audit.sink`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditSink {
    /// keyward's standard output (its logs go to standard error).
    Stdout,
    /// A file, rotated by size.
    File,
}

/// `audit.format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditFormat {
    /// One JSON object per line.
    #[default]
    Json,
}

/// A size in bytes: a whole number, or one with a unit (`100MiB`, `10MB`, `512KiB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub Option<u64>);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a size such as 100MiB, 10MB or 1048576")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(Some(v)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                Ok(ByteSize(u64::try_from(v).ok()))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                Ok(ByteSize(parse_size(v)))
            }
        }
        de.deserialize_any(V)
    }
}

/// `100MiB` → 104857600 (units B, KB, MB, GB, KiB, MiB, GiB; case-insensitive).
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000 * 1000,
        "gb" => 1000 * 1000 * 1000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// `resources[].audit`: a level (`off`, `sessions`, `requests`, `statements`), or a map
/// with `level` and `mask_literals`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceAudit {
    pub level: AuditLevel,
    pub mask_literals: bool,
}

/// How much a resource records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditLevel {
    /// Nothing.
    Off,
    /// Session start and end.
    #[default]
    Sessions,
    /// And every HTTP request.
    Requests,
    /// And every statement (SQL text, Redis command names).
    Statements,
}

impl AuditLevel {
    /// The spelling in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Sessions => "sessions",
            Self::Requests => "requests",
            Self::Statements => "statements",
        }
    }
}

impl<'de> Deserialize<'de> for ResourceAudit {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            level: AuditLevel,
            #[serde(default)]
            mask_literals: bool,
        }
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ResourceAudit;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "off, sessions, requests, statements, or a map with level and mask_literals",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ResourceAudit, E> {
                let level =
                    AuditLevel::deserialize(serde::de::value::StrDeserializer::<E>::new(v))?;
                Ok(ResourceAudit {
                    level,
                    mask_literals: false,
                })
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<ResourceAudit, E> {
                // YAML 1.1 reads a bare `off` as false.
                if v {
                    Err(E::custom("expected off, sessions, requests or statements"))
                } else {
                    Ok(ResourceAudit {
                        level: AuditLevel::Off,
                        mask_literals: false,
                    })
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<ResourceAudit, A::Error> {
                let full = Full::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(ResourceAudit {
                    level: full.level,
                    mask_literals: full.mask_literals,
                })
            }
        }
        de.deserialize_any(V)
    }
}

/// `resources[].allow[]` and `deny[]`: http rules (`methods`, `paths`) or redis rules
/// (`commands`: names and `@categories`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    pub methods: Option<Vec<String>>,
    pub paths: Option<Vec<String>>,
    pub commands: Option<Vec<String>>,
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
    pub auth: Option<Spanned<Auth>>,
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
    pub audit: Option<Spanned<ResourceAudit>>,
    pub allow: Option<Spanned<Vec<AllowRule>>>,
    pub deny: Option<Spanned<Vec<AllowRule>>>,
    pub read_only: Option<Spanned<bool>>,
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

/// `auth`: tagged by `type`. Each type takes its own keys: serde rejects a key of another
/// type, or a missing one the type cannot do without, naming it (and its line); the values
/// keep their locations for the checks that need the protocol or the file system.
#[derive(Debug)]
pub enum Auth {
    /// `none`.
    None,
    /// `password`.
    Password(PasswordAuth),
    /// `rds_iam`.
    RdsIam(RdsIamAuth),
    /// `api_key`.
    ApiKey(ApiKeyAuth),
    /// `basic`.
    Basic(BasicAuth),
    /// `bearer`.
    Bearer(BearerAuth),
    /// `oauth2`.
    Oauth2(Box<OAuth2Auth>),
    /// `aws_sigv4`.
    AwsSigv4(AwsSigv4Auth),
}

/// `type: password` (postgres, mysql, redis).
#[derive(Debug)]
pub struct PasswordAuth {
    pub username: Option<Spanned<String>>,
    pub password: Option<Spanned<String>>,
    pub database: Option<Spanned<String>>,
    pub allow_cleartext_password: Option<Spanned<bool>>,
    pub allow_rsa_key_exchange: Option<Spanned<bool>>,
}

/// `type: rds_iam`.
#[derive(Debug)]
pub struct RdsIamAuth {
    pub username: Spanned<String>,
    pub region: Spanned<String>,
    pub database: Option<Spanned<String>>,
    pub aws: AwsKeys,
}

/// AWS credentials (`rds_iam`, `aws_sigv4`): static keys (absent, the default chain is
/// used), a shared-config profile, and a role to assume on top of either.
#[derive(Debug)]
pub struct AwsKeys {
    pub access_key_id: Option<Spanned<String>>,
    pub secret_access_key: Option<Spanned<String>>,
    pub session_token: Option<Spanned<String>>,
    pub profile: Option<Spanned<String>>,
    pub assume_role: Option<AssumeRole>,
}

/// `auth.assertion`: the JWT keyward signs (RFC 7523).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assertion {
    pub key: Option<Spanned<String>>,
    pub algorithm: Option<Spanned<String>>,
    pub issuer: Option<Spanned<String>>,
    pub subject: Option<Spanned<String>>,
    pub audience: Option<Spanned<String>>,
    pub key_id: Option<Spanned<String>>,
    pub lifetime: Option<Spanned<String>>,
}

/// Google's token endpoint: the default `token_url` with a service-account key file.
pub const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";

/// `auth.assume_role`: STS `AssumeRole` on top of the base credentials.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssumeRole {
    pub role_arn: Spanned<String>,
    pub session_name: Option<Spanned<String>>,
    pub external_id: Option<Spanned<String>>,
    pub duration: Option<Spanned<String>>,
}

/// `type: api_key`: exactly one of `header` and `query`.
#[derive(Debug)]
pub struct ApiKeyAuth {
    pub place: ApiKeyIn,
    pub value: Spanned<String>,
}

/// Where an API key goes.
#[derive(Debug)]
pub enum ApiKeyIn {
    Header(Spanned<String>),
    Query(Spanned<String>),
}

/// `type: basic`.
#[derive(Debug)]
pub struct BasicAuth {
    pub username: Spanned<String>,
    pub password: Spanned<String>,
}

/// `type: bearer`.
#[derive(Debug)]
pub struct BearerAuth {
    pub token: Spanned<String>,
}

/// `type: oauth2`: `client_secret` (client credentials grant), `refresh_token`, a signed
/// `assertion` (`grant: jwt_bearer` or `client_auth: private_key_jwt`), or a
/// `google_service_account` key file.
#[derive(Debug)]
pub struct OAuth2Auth {
    pub token_url: Spanned<String>,
    pub allow_plaintext_token_url: bool,
    pub client_id: Option<Spanned<String>>,
    pub grant: Option<Spanned<String>>,
    pub assertion: Option<Assertion>,
    pub google_service_account: Option<Spanned<String>>,
    pub client_secret: Option<Spanned<String>>,
    pub refresh_token: Option<Spanned<String>>,
    pub scopes: Vec<String>,
    pub audience: Option<String>,
    pub params: BTreeMap<String, String>,
    pub client_auth: Option<Spanned<String>>,
    pub tls: Option<Tls>,
}

/// `type: aws_sigv4`.
#[derive(Debug)]
pub struct AwsSigv4Auth {
    pub service: Spanned<String>,
    pub region: Spanned<String>,
    pub aws: AwsKeys,
    pub unsigned_payload: bool,
}

impl Auth {
    /// Its `type`.
    pub fn kind(&self) -> AuthType {
        match self {
            Self::None => AuthType::None,
            Self::Password(_) => AuthType::Password,
            Self::RdsIam(_) => AuthType::RdsIam,
            Self::ApiKey(_) => AuthType::ApiKey,
            Self::Basic(_) => AuthType::Basic,
            Self::Bearer(_) => AuthType::Bearer,
            Self::Oauth2(_) => AuthType::Oauth2,
            Self::AwsSigv4(_) => AuthType::AwsSigv4,
        }
    }
}

impl<'de> Deserialize<'de> for Auth {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        // Read with the file's own deserializer (an internally tagged derive would buffer the
        // block and lose every location inside it), then sort the keys by type.
        AuthKeys::deserialize(de)?
            .into_auth()
            .map_err(serde::de::Error::custom)
    }
}

/// Every key any auth type takes; [`AuthKeys::into_auth`] keeps those of the block's type.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthKeys {
    #[serde(rename = "type")]
    kind: AuthType,
    username: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
    database: Option<Spanned<String>>,
    token: Option<Spanned<String>>,
    header: Option<Spanned<String>>,
    query: Option<Spanned<String>>,
    value: Option<Spanned<String>>,
    token_url: Option<Spanned<String>>,
    allow_plaintext_token_url: Option<Spanned<bool>>,
    client_id: Option<Spanned<String>>,
    client_secret: Option<Spanned<String>>,
    refresh_token: Option<Spanned<String>>,
    scopes: Option<Spanned<Vec<String>>>,
    audience: Option<Spanned<String>>,
    params: Option<Spanned<BTreeMap<String, String>>>,
    client_auth: Option<Spanned<String>>,
    service: Option<Spanned<String>>,
    region: Option<Spanned<String>>,
    access_key_id: Option<Spanned<String>>,
    secret_access_key: Option<Spanned<String>>,
    session_token: Option<Spanned<String>>,
    unsigned_payload: Option<Spanned<bool>>,
    allow_cleartext_password: Option<Spanned<bool>>,
    allow_rsa_key_exchange: Option<Spanned<bool>>,
    profile: Option<Spanned<String>>,
    assume_role: Option<AssumeRole>,
    grant: Option<Spanned<String>>,
    assertion: Option<Assertion>,
    google_service_account: Option<Spanned<String>>,
    tls: Option<Tls>,
}

/// The keys present in an auth block, with their lines (0 where unknown).
macro_rules! present {
    ($keys:expr, $($field:ident),*) => {{
        let mut found: Vec<(&'static str, u64)> = Vec::new();
        $(if let Some(v) = &$keys.$field {
            found.push((stringify!($field), v.referenced.line()));
        })*
        for (key, set) in [
            ("tls", $keys.tls.is_some()),
            ("assume_role", $keys.assume_role.is_some()),
            ("assertion", $keys.assertion.is_some()),
        ] {
            if set {
                found.push((key, 0));
            }
        }
        found
    }};
}

impl AuthKeys {
    fn into_auth(self) -> Result<Auth, String> {
        let kind = self.kind;
        let name = kind.name();
        let takes = kind.keys();
        let present = present!(
            self,
            username,
            password,
            database,
            token,
            header,
            query,
            value,
            token_url,
            allow_plaintext_token_url,
            client_id,
            client_secret,
            refresh_token,
            scopes,
            audience,
            params,
            client_auth,
            service,
            region,
            access_key_id,
            secret_access_key,
            session_token,
            unsigned_payload,
            allow_cleartext_password,
            allow_rsa_key_exchange,
            profile,
            grant,
            google_service_account
        );
        for (key, line) in present {
            if !takes.contains(&key) {
                let at = if line > 0 {
                    format!(" (line {line})")
                } else {
                    String::new()
                };
                let listed = if takes.is_empty() {
                    "no other key".to_owned()
                } else {
                    takes.join(", ")
                };
                return Err(format!(
                    "\"{key}\"{at} does not apply to auth type \"{name}\", which takes: {listed}"
                ));
            }
        }
        let need = |value: Option<Spanned<String>>, key: &str| {
            value.ok_or_else(|| format!("auth type \"{name}\" needs \"{key}\""))
        };
        let aws = AwsKeys {
            access_key_id: self.access_key_id,
            secret_access_key: self.secret_access_key,
            session_token: self.session_token,
            profile: self.profile,
            assume_role: self.assume_role,
        };
        if aws.access_key_id.is_some() != aws.secret_access_key.is_some() {
            return Err(format!(
                "auth type \"{name}\": access_key_id and secret_access_key must be set together"
            ));
        }
        Ok(match kind {
            AuthType::None => Auth::None,
            AuthType::Password => Auth::Password(PasswordAuth {
                username: self.username,
                password: self.password,
                database: self.database,
                allow_cleartext_password: self.allow_cleartext_password,
                allow_rsa_key_exchange: self.allow_rsa_key_exchange,
            }),
            AuthType::RdsIam => Auth::RdsIam(RdsIamAuth {
                username: need(self.username, "username")?,
                region: need(self.region, "region")?,
                database: self.database,
                aws,
            }),
            AuthType::ApiKey => {
                Auth::ApiKey(ApiKeyAuth {
                    place: match (self.header, self.query) {
                        (Some(h), None) => ApiKeyIn::Header(h),
                        (None, Some(q)) => ApiKeyIn::Query(q),
                        _ => return Err(
                            "auth type \"api_key\" needs exactly one of \"header\" or \"query\""
                                .to_owned(),
                        ),
                    },
                    value: need(self.value, "value")?,
                })
            }
            AuthType::Basic => Auth::Basic(BasicAuth {
                username: need(self.username, "username")?,
                password: need(self.password, "password")?,
            }),
            AuthType::Bearer => Auth::Bearer(BearerAuth {
                token: need(self.token, "token")?,
            }),
            AuthType::Oauth2 => {
                let signed = self.assertion.is_some()
                    || self.google_service_account.is_some()
                    || self.grant.is_some();
                if self.client_secret.is_none() && self.refresh_token.is_none() && !signed {
                    return Err("auth type \"oauth2\" needs \"client_secret\" (client credentials grant), \"refresh_token\", \"assertion\" (grant: jwt_bearer or client_auth: private_key_jwt) or \"google_service_account\"".to_owned());
                }
                let token_url = match (self.token_url, &self.google_service_account) {
                    (Some(url), _) => url,
                    (None, Some(sa)) => {
                        Spanned::new(GOOGLE_TOKEN_URL.to_owned(), sa.referenced, sa.defined)
                    }
                    (None, None) => {
                        return Err(format!("auth type \"{name}\" needs \"token_url\""))
                    }
                };
                let jwt_bearer = self.grant.as_ref().is_some_and(|g| g.value == "jwt_bearer");
                let client_id = match self.client_id {
                    Some(id) => Some(id),
                    None if self.google_service_account.is_some() || jwt_bearer => None,
                    None => return Err(format!("auth type \"{name}\" needs \"client_id\"")),
                };
                Auth::Oauth2(Box::new(OAuth2Auth {
                    token_url,
                    allow_plaintext_token_url: self
                        .allow_plaintext_token_url
                        .is_some_and(|v| v.value),
                    client_id,
                    grant: self.grant,
                    assertion: self.assertion,
                    google_service_account: self.google_service_account,
                    client_secret: self.client_secret,
                    refresh_token: self.refresh_token,
                    scopes: self.scopes.map(|s| s.value).unwrap_or_default(),
                    audience: self.audience.map(|a| a.value),
                    params: self.params.map(|p| p.value).unwrap_or_default(),
                    client_auth: self.client_auth,
                    tls: self.tls,
                }))
            }
            AuthType::AwsSigv4 => Auth::AwsSigv4(AwsSigv4Auth {
                service: need(self.service, "service")?,
                region: need(self.region, "region")?,
                aws,
                unsigned_payload: self.unsigned_payload.is_some_and(|v| v.value),
            }),
        })
    }
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

impl AuthType {
    /// Its name in the config.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Password => "password",
            Self::RdsIam => "rds_iam",
            Self::ApiKey => "api_key",
            Self::Basic => "basic",
            Self::Bearer => "bearer",
            Self::Oauth2 => "oauth2",
            Self::AwsSigv4 => "aws_sigv4",
        }
    }

    /// The keys it takes besides `type`.
    fn keys(self) -> &'static [&'static str] {
        const AWS: [&str; 5] = [
            "access_key_id",
            "secret_access_key",
            "session_token",
            "profile",
            "assume_role",
        ];
        match self {
            Self::None => &[],
            Self::Password => &[
                "username",
                "password",
                "database",
                "allow_cleartext_password",
                "allow_rsa_key_exchange",
            ],
            Self::RdsIam => &[
                "username", "region", "database", AWS[0], AWS[1], AWS[2], AWS[3], AWS[4],
            ],
            Self::ApiKey => &["header", "query", "value"],
            Self::Basic => &["username", "password"],
            Self::Bearer => &["token"],
            Self::Oauth2 => &[
                "grant",
                "assertion",
                "google_service_account",
                "token_url",
                "allow_plaintext_token_url",
                "client_id",
                "client_secret",
                "refresh_token",
                "scopes",
                "audience",
                "params",
                "client_auth",
                "tls",
            ],
            Self::AwsSigv4 => &[
                "service",
                "region",
                "unsigned_payload",
                AWS[0],
                AWS[1],
                AWS[2],
                AWS[3],
                AWS[4],
            ],
        }
    }
}

/// Parses a config file's text. On a syntax or shape error: the error and the key path where
/// it happened (`resources[0].auth.type`).
pub fn parse(text: &str) -> Result<File, (serde_saphyr::Error, String)> {
    let mut key_path = String::new();
    serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize::<_, File>(de).map_err(|e| {
            key_path = e.path().to_string();
            e.into_inner()
        })
    })
    .map_err(|e| (e, key_path))
}
