//! The validated configuration: the domain types every other layer is handed (docs/DESIGN.md
//! rule 9), at the bottom of the module graph.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use rustls::pki_types::ServerName;

use super::problems::Site;
pub use super::raw::{
    AuditLevel, AuthType, Http2, LogFormat, Negotiation, Protocol, ResourceAudit, TlsMode,
    TlsVersion,
};
use crate::secret::SecretSource;

/// A validated resource name: letters, digits, `-`, `_`, `.`; usable as a metric label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceName(pub(super) String);

impl ResourceName {
    /// A name for keyward's own (non-resource) errors.
    pub(crate) fn internal() -> Self {
        Self("keyward".to_owned())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ResourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub file: PathBuf,
    /// The admin endpoint, `None` when `admin: null`.
    pub admin: Option<Admin>,
    /// Logging.
    pub log: LogSettings,
    /// How long live connections may finish after a shutdown signal.
    pub shutdown_grace: Duration,
    /// How long listeners keep accepting (not ready) after a shutdown signal.
    pub shutdown_delay: Duration,
    /// Where audit events go; `None`: no audit events at all.
    pub audit: Option<AuditSettings>,
    /// The resources, in file order.
    pub resources: Vec<ResourceConfig>,
}

/// `audit`: the sink every resource's audit events go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    /// Where the JSON lines are written.
    pub sink: AuditSink,
    /// Events held for a slow sink; beyond this many they are dropped and counted.
    pub queue: usize,
}

/// `audit.sink`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSink {
    /// keyward's standard output.
    Stdout,
    /// A file, renamed to `<path>.1` (and older ones shifted, at most `max_files` kept) when
    /// the next line would take it over `max_size` bytes.
    File {
        /// The file.
        path: PathBuf,
        /// Rotation threshold.
        max_size: u64,
        /// Rotated files kept.
        max_files: u32,
    },
}

/// `admin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    /// Where `/metrics` and the health endpoints listen (loopback unless `allow_remote`).
    pub listen: SocketAddr,
    /// `POST /quitquitquit` answers (off by default: anyone who can reach the listener could
    /// stop the sidecar).
    pub shutdown_endpoint: bool,
}

/// `log`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogSettings {
    /// A level or an EnvFilter string; `KEYWARD_LOG` overrides it.
    pub level: Option<String>,
    /// Plain or JSON lines.
    pub format: LogFormat,
}

/// One resource: a local listener in front of one upstream.
#[derive(Debug, Clone)]
pub struct ResourceConfig {
    /// Unique name, the `resource` label.
    pub name: ResourceName,
    /// What keyward speaks on this listener.
    pub protocol: Protocol,
    /// Where the app connects.
    pub listen: ListenAddr,
    /// The upstream.
    pub upstream: Upstream,
    /// Upstream TLS.
    pub tls: TlsSettings,
    /// What keyward injects.
    pub auth: Auth,
    /// Extra HTTP headers (name, value).
    pub headers: Vec<(String, SecretRef)>,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// TLS handshake timeout.
    pub handshake_timeout: Duration,
    /// How long the app has for everything it must send before keyward relays (startup
    /// packets, TLS with keyward, the MySQL handshake response, `client_password` exchanges,
    /// the first HTTP request's headers).
    pub client_handshake_timeout: Duration,
    /// Close a connection after this long without a byte either way; `None` = never.
    pub idle_timeout: Option<Duration>,
    /// Connections beyond this many are closed at once.
    pub max_connections: usize,
    /// HTTP options (used by `protocol: http`).
    pub http: HttpOptions,
    /// Database options (used by `postgres`, `mysql`, `redis`).
    pub db: DbOptions,
    /// TLS on keyward's own listener.
    pub listen_tls: Option<ListenTls>,
    /// What this resource records (`Off` without a top-level `audit` block).
    pub audit: ResourceAudit,
    /// Where the resource starts in the file.
    pub site: Site,
}

/// Options of `protocol: http` resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpOptions {
    /// HTTP/2 upstream: auto (ALPN), always, never.
    pub http2: Http2,
    /// Send the app's `Host` instead of the upstream's.
    pub preserve_host: bool,
    /// Keep the app's own `Authorization` (or API-key header/parameter) instead of replacing it.
    pub pass_client_auth: bool,
    /// How long to wait for the upstream's response headers.
    pub response_timeout: Duration,
    /// How long an idle pooled upstream connection is kept.
    pub pool_idle_timeout: Duration,
    /// Largest body buffered to compute a SigV4 payload hash.
    pub max_signed_body: u64,
    /// Methods refused by default that this resource forwards anyway (`TRACE` echoes the
    /// injected credential back to the app; `CONNECT` would tunnel with it).
    pub allow_methods: Vec<::http::Method>,
    /// `allow`: a request is forwarded only when one rule matches it (empty: every request).
    pub allow: Vec<HttpRule>,
}

/// `redis` command rules: a command runs when an `allow` entry names it (or a category all of
/// it is in), or there is no `allow`; and no `deny` entry names it (or a category any of it is
/// in). Names upper case; categories `@lower`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandRules {
    /// `None`: every command not denied.
    pub allow: Option<Vec<String>>,
    /// Refused whatever `allow` says.
    pub deny: Vec<String>,
}

impl CommandRules {
    /// Whether any rule is set.
    pub fn is_empty(&self) -> bool {
        self.allow.is_none() && self.deny.is_empty()
    }
}

/// Redis's ACL categories (`ACL CAT`, Redis 7), in its order.
pub const REDIS_CATEGORIES: [&str; 21] = [
    "keyspace",
    "read",
    "write",
    "set",
    "sortedset",
    "list",
    "hash",
    "string",
    "bitmap",
    "hyperloglog",
    "geo",
    "stream",
    "pubsub",
    "admin",
    "fast",
    "slow",
    "blocking",
    "dangerous",
    "connection",
    "transaction",
    "scripting",
];

/// One `allow` rule of an http resource: its methods (empty: any) and path globs (empty: any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRule {
    /// Methods, upper case.
    pub methods: Vec<::http::Method>,
    /// Path globs: `*` is any run of characters within one segment, `**` any number of whole
    /// segments (`/v1/reports/**` is `/v1/reports` and everything under it).
    pub paths: Vec<String>,
}

impl HttpRule {
    /// Whether the rule admits `method` on `path` (a path already normalized: no dot
    /// segments, unreserved characters decoded).
    pub fn admits(&self, method: &::http::Method, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.contains(method))
            && (self.paths.is_empty() || self.paths.iter().any(|g| glob_path(g, path)))
    }
}

/// Matches `path` against a path glob (see [`HttpRule::paths`]): dynamic programming over
/// segments, linear wildcard matching within one, so no pattern/path pair backtracks
/// exponentially.
pub fn glob_path(glob: &str, path: &str) -> bool {
    let globs: Vec<&str> = glob.split('/').collect();
    let parts: Vec<&str> = path.split('/').collect();
    // ok[j]: the globs matched so far match parts[..j].
    let mut ok = vec![false; parts.len() + 1];
    ok[0] = true;
    for g in &globs {
        let mut next = vec![false; parts.len() + 1];
        if *g == "**" {
            // Zero or more whole segments.
            let mut any = false;
            for j in 0..=parts.len() {
                any |= ok[j];
                next[j] = any;
            }
        } else {
            for j in 0..parts.len() {
                if ok[j] && glob_segment(g.as_bytes(), parts[j].as_bytes()) {
                    next[j + 1] = true;
                }
            }
        }
        ok = next;
    }
    ok[parts.len()]
}

/// `*` (any run of bytes) within one segment, in O(glob × text).
fn glob_segment(glob: &[u8], text: &[u8]) -> bool {
    let (mut g, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if glob.get(g) == Some(&b'*') {
            star = Some((g, t));
            g += 1;
        } else if glob.get(g) == Some(&text[t]) {
            g += 1;
            t += 1;
        } else if let Some((sg, st)) = star {
            g = sg + 1;
            t = st + 1;
            star = Some((sg, st + 1));
        } else {
            return false;
        }
    }
    glob[g..].iter().all(|&c| c == b'*')
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            http2: Http2::Auto,
            preserve_host: false,
            pass_client_auth: false,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            max_signed_body: DEFAULT_MAX_SIGNED_BODY,
            allow_methods: Vec::new(),
            allow: Vec::new(),
        }
    }
}

/// `listen_tls`: keyward terminates TLS from the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenTls {
    /// keyward's certificate chain (PEM).
    pub cert: FileRef,
    /// Its key.
    pub key: FileRef,
    /// CA bundle for client certificates.
    pub client_ca: Option<FileRef>,
    /// Refuse clients without a verified certificate.
    pub require_client_cert: bool,
    /// Allowed client identities (empty lists: any verified client).
    pub allow: AllowList,
}

/// Client identities allowed on an inbound TLS listener (glob `*`, as ghostunnel).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    /// Subject common names.
    pub cn: Vec<String>,
    /// DNS SANs.
    pub dns: Vec<String>,
    /// URI SANs (SPIFFE IDs).
    pub uri: Vec<String>,
}

impl AllowList {
    /// Whether any pattern is set.
    pub fn is_empty(&self) -> bool {
        self.cn.is_empty() && self.dns.is_empty() && self.uri.is_empty()
    }
}

/// Options of the database protocols (`postgres`, `mysql`, `redis`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbOptions {
    /// A password the app must present to keyward (`postgres`: SCRAM-SHA-256 on keyward's
    /// side; `mysql`: mysql_native_password; `redis`: `AUTH`). `None`: any local client.
    pub client_password: Option<SecretRef>,
    /// `postgres`: send the password in clear text when the server asks for it over plaintext.
    pub allow_cleartext_password: bool,
    /// `mysql`: caching_sha2_password full auth over plaintext with the server's RSA key.
    pub allow_rsa_key_exchange: bool,
    /// `redis`: forward the app's own `AUTH`/`HELLO AUTH` instead of answering it.
    pub pass_client_auth: bool,
    /// `postgres`: how many logged-in server connections to keep for reuse after their app
    /// session ends (reset with `DISCARD ALL`); 0 = none, each app connection logs in anew.
    pub pool_max_idle: usize,
    /// `postgres`: how long an idle server connection is kept.
    pub pool_idle_timeout: Duration,
    /// `redis`: the commands an app may send (`allow`/`deny`).
    pub commands: CommandRules,
    /// `postgres`: every session starts with `default_transaction_read_only=on`, and
    /// statements that would change it are refused (defence in depth: the database's own
    /// grants remain the real control).
    pub read_only: bool,
}

impl Default for DbOptions {
    fn default() -> Self {
        Self {
            client_password: None,
            allow_cleartext_password: false,
            allow_rsa_key_exchange: false,
            pass_client_auth: false,
            pool_max_idle: 0,
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            read_only: false,
            commands: CommandRules::default(),
        }
    }
}

/// A listening address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// `host:port`; port 0 picks a free port.
    Tcp(SocketAddr),
    /// `unix:PATH`, created with `mode`.
    Unix {
        /// Socket file.
        path: PathBuf,
        /// Permission bits (default 0600).
        mode: u32,
    },
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix { path, .. } => write!(f, "unix:{}", path.display()),
        }
    }
}

/// The upstream a resource forwards to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Host name or IP literal (no brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// For `http`: the full URL (scheme, base path).
    pub url: Option<::http::Uri>,
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.url {
            Some(url) => write!(f, "{url}"),
            None if self.host.contains(':') => write!(f, "[{}]:{}", self.host, self.port),
            None => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// A file named in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    /// Absolute, or relative to the working directory.
    pub path: PathBuf,
    /// Where it was named.
    pub site: Site,
}

/// A secret named in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    /// Where the value comes from.
    pub source: SecretSource,
    /// Where it was named.
    pub site: Site,
}

/// Upstream TLS settings of one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The verification mode.
    pub mode: TlsMode,
    /// Extra (or, with `system_roots: false`, the only) trust anchors.
    pub ca: Option<FileRef>,
    /// Whether the OS trust store is used.
    pub system_roots: bool,
    /// mTLS identity.
    pub client: Option<ClientIdentity>,
    /// SNI and the name verified.
    pub server_name: ServerName<'static>,
    /// Lowest TLS version offered.
    pub min_version: TlsVersion,
    /// `postgres`: SSLRequest first, or direct TLS (PostgreSQL 17+).
    pub negotiation: Negotiation,
    /// Where the mode was decided (for errors about the whole block).
    pub site: Site,
}

/// A client certificate chain and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// PEM chain, leaf first.
    pub cert: FileRef,
    /// PEM key: PKCS#8, PKCS#1 or SEC1.
    pub key: FileRef,
}

/// Where an API key goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiKeyPlace {
    /// A request header.
    Header(String),
    /// A query parameter.
    Query(String),
}

/// AWS credentials: from the config, or (all `None`) from the standard environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsCredentials {
    /// Access key id.
    pub access_key_id: Option<SecretRef>,
    /// Secret access key.
    pub secret_access_key: Option<SecretRef>,
    /// Session token.
    pub session_token: Option<SecretRef>,
    /// Shared-config profile for the default chain (else `AWS_PROFILE`, else `default`).
    pub profile: Option<String>,
    /// A role assumed with the base credentials.
    pub assume_role: Option<AssumeRole>,
}

/// `auth.assertion`: a JWT signed with `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assertion {
    /// PKCS#8 PEM private key (absent with a Google service-account file).
    pub key: Option<SecretRef>,
    /// `RS256` or `ES256`.
    pub algorithm: String,
    /// `iss` (jwt_bearer; private_key_jwt uses the client id).
    pub issuer: Option<String>,
    /// `sub`.
    pub subject: Option<String>,
    /// `aud` (default: the token URL).
    pub audience: Option<String>,
    /// JWT header `kid`.
    pub key_id: Option<String>,
    /// `exp - iat`, at most 1 h.
    pub lifetime: Duration,
}

/// `auth.assume_role`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssumeRole {
    /// The role's ARN.
    pub role_arn: String,
    /// `RoleSessionName` (`None`: `keyward-<resource>`).
    pub session_name: Option<String>,
    /// `ExternalId`, when the role's trust policy asks for one.
    pub external_id: Option<String>,
    /// `DurationSeconds` (default 1 h).
    pub duration: Duration,
}

/// `auth`: what keyward injects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// Nothing.
    None,
    /// A database login.
    Password {
        /// Upstream user.
        username: Option<String>,
        /// Its password (absent for certificate auth).
        password: Option<SecretRef>,
        /// Database override.
        database: Option<String>,
    },
    /// An RDS IAM token as the password.
    RdsIam {
        /// Upstream user.
        username: String,
        /// AWS region.
        region: String,
        /// Database override.
        database: Option<String>,
        /// Signing credentials.
        credentials: AwsCredentials,
    },
    /// An API key.
    ApiKey {
        /// Header or query parameter.
        place: ApiKeyPlace,
        /// The key.
        value: SecretRef,
    },
    /// HTTP Basic.
    Basic {
        /// User.
        username: String,
        /// Password.
        password: SecretRef,
    },
    /// HTTP Bearer.
    Bearer {
        /// Token.
        token: SecretRef,
    },
    /// OAuth2 token fetched by keyward.
    OAuth2(Box<OAuth2>),
    /// AWS SigV4 request signing.
    AwsSigV4 {
        /// AWS service name.
        service: String,
        /// AWS region.
        region: String,
        /// Signing credentials.
        credentials: AwsCredentials,
        /// Sign `UNSIGNED-PAYLOAD` instead of hashing bodies.
        unsigned_payload: bool,
    },
}

/// `auth.type: oauth2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuth2 {
    /// Token endpoint.
    pub token_url: ::http::Uri,
    /// Client id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: Option<SecretRef>,
    /// Refresh token (refresh_token grant).
    pub refresh_token: Option<SecretRef>,
    /// Requested scopes.
    pub scopes: Vec<String>,
    /// Audience.
    pub audience: Option<String>,
    /// Extra form fields.
    pub params: Vec<(String, String)>,
    /// Client authentication: HTTP Basic (true) or in the body.
    pub client_auth_basic: bool,
    /// `grant: jwt_bearer` (RFC 7523 §2.1) instead of client_credentials.
    pub jwt_bearer: bool,
    /// `client_auth: private_key_jwt` (RFC 7523 §2.2): a signed client assertion.
    pub private_key_jwt: bool,
    /// The JWT keyward signs (jwt_bearer, private_key_jwt).
    pub assertion: Option<Assertion>,
    /// A Google service-account JSON key file: key, `kid`, issuer (its values win).
    pub google_service_account: Option<SecretRef>,
    /// TLS to the token endpoint (its own rules; default verify-full).
    pub tls: TlsSettings,
    /// `allow_plaintext_token_url: true`: an `http://` token endpoint is accepted (warned at
    /// every load): the client secret and refresh token then cross the network in clear.
    pub plaintext_token_url: bool,
}

pub(super) const DEFAULT_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9901);
pub(super) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub(super) const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub(super) const DEFAULT_CLIENT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub(super) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
pub(super) const DEFAULT_MAX_CONNECTIONS: usize = 1024;
pub(super) const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
pub(super) const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
pub(super) const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
pub(super) const DEFAULT_MAX_SIGNED_BODY: u64 = 10 * 1024 * 1024;
pub(super) const DEFAULT_AUDIT_MAX_SIZE: u64 = 100 * 1024 * 1024;
pub(super) const DEFAULT_AUDIT_MAX_FILES: u32 = 5;
pub(super) const DEFAULT_AUDIT_QUEUE: usize = 16 * 1024;

/// The config spelling of a protocol.
pub fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Http => "http",
        Protocol::Postgres => "postgres",
        Protocol::Mysql => "mysql",
        Protocol::Redis => "redis",
    }
}
