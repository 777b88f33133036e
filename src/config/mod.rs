//! Configuration: YAML (CONFIG.md) → [`raw`] serde types → validated [`Config`].
//!
//! Parse, don't validate (STYLE.md rule 2): downstream code only ever sees a [`Config`] whose
//! every field was checked. Every problem names the file, line, column and key path, and
//! validation keeps going so `keyward check` can list all of them at once.

mod files;
pub mod raw;

pub use crate::error::io_reason;
pub use files::{fingerprint, resource_files};

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::ServerName;
use serde_saphyr::Spanned;

pub use raw::{AuthType, Http2, LogFormat, Negotiation, Protocol, TlsMode, TlsVersion};

use crate::secret::SecretSource;

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

/// A validated resource name: letters, digits, `-`, `_`, `.`; usable as a metric label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceName(String);

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
    /// The resources, in file order.
    pub resources: Vec<ResourceConfig>,
}

/// `admin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    /// Where `/metrics` and the health endpoints listen.
    pub listen: SocketAddr,
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
    pub url: Option<http::Uri>,
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
    pub token_url: http::Uri,
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
    /// TLS to the token endpoint (its own rules; default verify-full).
    pub tls: TlsSettings,
}

const DEFAULT_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9901);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_CLIENT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
const DEFAULT_MAX_CONNECTIONS: usize = 1024;
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
const DEFAULT_MAX_SIGNED_BODY: u64 = 10 * 1024 * 1024;

/// Reads and validates a config file.
pub fn load(file: &Path) -> Result<Config, Problems> {
    parse(&read(file)?, file)
}

/// Reads a config file's text.
pub fn read(file: &Path) -> Result<String, Problems> {
    std::fs::read_to_string(file).map_err(|e| {
        Problems(vec![Problem {
            file: file.to_owned(),
            site: None,
            message: format!("reading the config file: {}", io_reason(&e)),
        }])
    })
}

/// Validates config text as if read from `file` (relative paths are taken from its directory).
pub fn parse(text: &str, file: &Path) -> Result<Config, Problems> {
    match parse_partial(text, file) {
        Ok((config, problems)) if problems.is_empty() => Ok(config),
        Ok((_, problems)) => Err(Problems(problems)),
        Err(problems) => Err(problems),
    }
}

/// Like [`parse`], but when the YAML is well-formed returns the resources that did validate
/// together with the problems of the others, so `check` can go on and build them too.
pub fn parse_partial(text: &str, file: &Path) -> Result<(Config, Vec<Problem>), Problems> {
    let mut key_path = String::new();
    let parsed = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize::<_, raw::File>(de).map_err(|e| {
            key_path = e.path().to_string();
            e.into_inner()
        })
    });
    let raw = match parsed {
        Ok(raw) => raw,
        Err(err) => return Err(Problems(vec![syntax_problem(file, &key_path, &err)])),
    };
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut ctx = Ctx {
        file: file.to_owned(),
        base,
        problems: Vec::new(),
    };
    let config = ctx.config(raw);
    let mut problems: Vec<Problem> = Vec::new();
    for p in ctx.problems {
        // A bad `defaults` value is seen by every resource: report it once.
        if !problems.contains(&p) {
            problems.push(p);
        }
    }
    Ok((config, problems))
}

fn syntax_problem(file: &Path, key_path: &str, err: &serde_saphyr::Error) -> Problem {
    let mut message = err.without_snippet().to_string();
    if let Some(at) = message.rfind(" at line ") {
        message.truncate(at);
    }
    if message == "expected string scalar" {
        // YAML reads an unquoted `[::1]:5432` as a list.
        message.push_str(" (quote values that start with '[' or '{', e.g. \"[::1]:5432\")");
    }
    // `Spanned<T>` adds a `.value` segment: drop it (one at the end, and before an index).
    let path = key_path.replace(".value[", "[");
    let path = path.strip_suffix(".?").unwrap_or(&path);
    let path = path
        .strip_suffix(".value")
        .unwrap_or(path)
        .trim_start_matches('.')
        .to_owned();
    let path = if path.is_empty() || path == "?" {
        "(document)".to_owned()
    } else {
        path
    };
    let (line, column) = err
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    Problem {
        file: file.to_owned(),
        site: Some(Site { line, column, path }),
        message,
    }
}

struct Ctx {
    file: PathBuf,
    base: PathBuf,
    problems: Vec<Problem>,
}

fn site<T>(value: &Spanned<T>, path: impl Into<String>) -> Site {
    Site {
        line: value.referenced.line(),
        column: value.referenced.column(),
        path: path.into(),
    }
}

/// A field that may come from the resource or from `defaults`, with the path it came from.
fn pick<'a, T>(
    own: &'a Option<Spanned<T>>,
    own_path: String,
    default: Option<&'a Spanned<T>>,
    default_path: &str,
) -> Option<(&'a Spanned<T>, String)> {
    match (own, default) {
        (Some(v), _) => Some((v, own_path)),
        (None, Some(v)) => Some((v, default_path.to_owned())),
        (None, None) => None,
    }
}

impl Ctx {
    fn problem(&mut self, site: Site, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.clone(),
            site: Some(site),
            message: message.into(),
        });
    }

    fn config(&mut self, raw: raw::File) -> Config {
        let admin = raw.admin.map(|admin| Admin {
            listen: match &admin.listen {
                Some(listen) => match self.socket_addr(&listen.value) {
                    Ok(addr) => addr,
                    Err(msg) => {
                        self.problem(site(listen, "admin.listen"), msg);
                        DEFAULT_ADMIN
                    }
                },
                None => DEFAULT_ADMIN,
            },
        });
        let log = LogSettings {
            level: raw.log.level,
            format: raw.log.format.unwrap_or_default(),
        };
        let shutdown_grace = raw
            .shutdown_grace
            .as_ref()
            .map(|v| {
                self.duration(v, "shutdown_grace", true)
                    .unwrap_or(DEFAULT_SHUTDOWN_GRACE)
            })
            .unwrap_or(DEFAULT_SHUTDOWN_GRACE);
        let shutdown_delay = raw
            .shutdown_delay
            .as_ref()
            .and_then(|v| self.duration(v, "shutdown_delay", true))
            .unwrap_or_default();

        let mut resources = Vec::new();
        let mut names = HashSet::new();
        let mut addrs: HashMap<String, String> = HashMap::new();
        for (i, res) in raw.resources.iter().enumerate() {
            let at = format!("resources[{i}]");
            if !names.insert(res.name.value.clone()) {
                self.problem(
                    site(&res.name, format!("{at}.name")),
                    format!("duplicate resource name \"{}\"", res.name.value),
                );
            }
            if let Some(resource) = self.resource(res, &raw.defaults, &at) {
                let key = resource.listen.to_string();
                let ephemeral = matches!(resource.listen, ListenAddr::Tcp(a) if a.port() == 0);
                if !ephemeral {
                    if let Some(other) = addrs.insert(key.clone(), resource.name.to_string()) {
                        self.problem(
                            site(&res.listen, format!("{at}.listen")),
                            format!("{key} is already the listen address of resource \"{other}\""),
                        );
                    }
                }
                resources.push(resource);
            }
        }
        Config {
            file: self.file.clone(),
            admin,
            log,
            shutdown_grace,
            shutdown_delay,
            resources,
        }
    }

    fn resource(
        &mut self,
        res: &raw::Resource,
        defaults: &raw::Defaults,
        at: &str,
    ) -> Option<ResourceConfig> {
        let before = self.problems.len();
        let name = res.name.value.as_str();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            self.problem(
                site(&res.name, format!("{at}.name")),
                format!("\"{name}\" is not a valid name: use letters, digits, '-', '_' and '.'"),
            );
        }
        let protocol = res.protocol.value;
        let listen = self.listen(res, at);
        let upstream = self.upstream(protocol, &res.upstream, &format!("{at}.upstream"));
        let timeout = |ctx: &mut Self,
                       own: &Option<Spanned<String>>,
                       key: &str,
                       dflt: Option<&Spanned<String>>,
                       fallback: Duration,
                       zero_ok: bool| {
            match pick(own, format!("{at}.{key}"), dflt, &format!("defaults.{key}")) {
                Some((v, path)) => ctx.duration(v, &path, zero_ok).unwrap_or(fallback),
                None => fallback,
            }
        };
        let connect_timeout = timeout(
            self,
            &res.connect_timeout,
            "connect_timeout",
            defaults.connect_timeout.as_ref(),
            DEFAULT_CONNECT_TIMEOUT,
            false,
        );
        let handshake_timeout = timeout(
            self,
            &res.handshake_timeout,
            "handshake_timeout",
            defaults.handshake_timeout.as_ref(),
            DEFAULT_HANDSHAKE_TIMEOUT,
            false,
        );
        let client_handshake_timeout = timeout(
            self,
            &res.client_handshake_timeout,
            "client_handshake_timeout",
            defaults.client_handshake_timeout.as_ref(),
            DEFAULT_CLIENT_HANDSHAKE_TIMEOUT,
            false,
        );
        let idle = timeout(
            self,
            &res.idle_timeout,
            "idle_timeout",
            defaults.idle_timeout.as_ref(),
            DEFAULT_IDLE_TIMEOUT,
            true,
        );
        let idle_timeout = (!idle.is_zero()).then_some(idle);
        let max_connections = match pick(
            &res.max_connections,
            format!("{at}.max_connections"),
            defaults.max_connections.as_ref(),
            "defaults.max_connections",
        ) {
            Some((v, _)) if v.value > 0 => v.value as usize,
            Some((v, path)) => {
                self.problem(site(v, path), "must be at least 1");
                DEFAULT_MAX_CONNECTIONS
            }
            None => DEFAULT_MAX_CONNECTIONS,
        };
        let tls = self.tls(
            protocol,
            res.tls.as_ref(),
            defaults.tls.as_ref(),
            upstream.as_ref(),
            &res.upstream,
            at,
            &format!("{at}.tls"),
        );
        let http = self.http_options(res, protocol, at);
        let db = self.db_options(res, protocol, at);
        let listen_tls = res
            .listen_tls
            .as_ref()
            .and_then(|t| self.listen_tls(t, &format!("{at}.listen_tls")));
        let auth = match &res.auth {
            Some(auth) => self.auth(protocol, auth, &format!("{at}.auth")),
            None => Some(Auth::None),
        };
        if let (Some(Auth::RdsIam { .. }), Some(t)) = (&auth, &tls) {
            if matches!(t.mode, TlsMode::Disable | TlsMode::Insecure) {
                self.problem(
                    t.site.clone(),
                    format!("auth type \"rds_iam\" sends its token as a password: it needs a verified TLS connection, not tls.mode {}", t.mode.as_str()),
                );
            }
        }
        let mut headers = Vec::new();
        for (header, value) in res.headers.iter().flatten() {
            let path = format!("{at}.headers.{header}");
            if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                self.problem(
                    site(value, &path),
                    format!("\"{header}\" is not a valid HTTP header name"),
                );
            }
            if protocol != Protocol::Http {
                self.problem(site(value, &path), "headers apply to protocol http only");
            }
            if let Some(secret) = self.secret(value, &path) {
                headers.push((header.clone(), secret));
            }
        }
        // Problems of `defaults` are reported (once) but do not stop this resource from being
        // built further, so `check` can still find problems in its files.
        let own = format!("{at}.");
        if self.problems[before..]
            .iter()
            .any(|p| p.site.as_ref().is_some_and(|s| s.path.starts_with(&own)))
        {
            return None;
        }
        Some(ResourceConfig {
            name: ResourceName(name.to_owned()),
            protocol,
            listen: listen?,
            upstream: upstream?,
            tls: tls?,
            auth: auth?,
            headers,
            connect_timeout,
            handshake_timeout,
            client_handshake_timeout,
            idle_timeout,
            max_connections,
            http,
            db,
            listen_tls,
            site: site(&res.name, at),
        })
    }

    fn listen_tls(&mut self, t: &raw::ListenTls, at: &str) -> Option<ListenTls> {
        let cert = self.file_ref(&t.cert, format!("{at}.cert"));
        let key = self.file_ref(&t.key, format!("{at}.key"));
        let client_ca = t
            .client_ca
            .as_ref()
            .map(|v| self.file_ref(v, format!("{at}.client_ca")));
        let allow = t
            .allow
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        let allow = AllowList {
            cn: allow.cn,
            dns: allow.dns,
            uri: allow.uri,
        };
        if client_ca.is_none() && (t.require_client_cert || !allow.is_empty()) {
            let s = match &t.allow {
                Some(a) if !allow.is_empty() => site(a, format!("{at}.allow")),
                _ => site(&t.cert, format!("{at}.require_client_cert")),
            };
            self.problem(
                s,
                "client certificates need listen_tls.client_ca, the CA that issues them",
            );
            return None;
        }
        if !allow.is_empty() && !t.require_client_cert {
            if let Some(a) = &t.allow {
                self.problem(
                    site(a, format!("{at}.allow")),
                    "an allow-list needs require_client_cert: true (a client without a certificate would pass it)",
                );
                return None;
            }
        }
        Some(ListenTls {
            cert,
            key,
            client_ca,
            require_client_cert: t.require_client_cert,
            allow,
        })
    }

    fn db_options(&mut self, res: &raw::Resource, protocol: Protocol, at: &str) -> DbOptions {
        let mut opts = DbOptions::default();
        let is_db = matches!(
            protocol,
            Protocol::Postgres | Protocol::Mysql | Protocol::Redis
        );
        if let Some(v) = &res.client_password {
            let path = format!("{at}.client_password");
            if is_db {
                opts.client_password = self.secret(v, &path);
            } else {
                self.problem(
                    site(v, path),
                    "client_password applies to protocols postgres, mysql and redis",
                );
            }
        }
        if let Some(v) = &res.pool_max_idle {
            if protocol == Protocol::Postgres {
                opts.pool_max_idle = v.value as usize;
            } else {
                self.problem(
                    site(v, format!("{at}.pool_max_idle")),
                    "pool_max_idle applies to protocol postgres only",
                );
            }
        }
        if protocol == Protocol::Postgres {
            if let Some(v) = &res.pool_idle_timeout {
                opts.pool_idle_timeout = self
                    .duration(v, &format!("{at}.pool_idle_timeout"), false)
                    .unwrap_or(DEFAULT_POOL_IDLE_TIMEOUT);
            }
        }
        if protocol == Protocol::Redis {
            opts.pass_client_auth = res.pass_client_auth.unwrap_or(false);
            if opts.pass_client_auth && opts.client_password.is_some() {
                self.problem(
                    site(&res.protocol, format!("{at}.pass_client_auth")),
                    "pass_client_auth forwards the app's AUTH, client_password checks it: use one of them",
                );
            }
        }
        if let Some(auth) = &res.auth {
            let flags = [
                (
                    "allow_cleartext_password",
                    &auth.allow_cleartext_password,
                    Protocol::Postgres,
                ),
                (
                    "allow_rsa_key_exchange",
                    &auth.allow_rsa_key_exchange,
                    Protocol::Mysql,
                ),
            ];
            for (key, value, only) in flags {
                let Some(v) = value else { continue };
                if protocol != only {
                    self.problem(
                        site(v, format!("{at}.auth.{key}")),
                        format!("{key} applies to protocol {} only", protocol_name(only)),
                    );
                } else if key == "allow_cleartext_password" {
                    opts.allow_cleartext_password = v.value;
                } else {
                    opts.allow_rsa_key_exchange = v.value;
                }
            }
        }
        opts
    }

    fn http_options(&mut self, res: &raw::Resource, protocol: Protocol, at: &str) -> HttpOptions {
        let mut opts = HttpOptions::default();
        // Each key, whether it is set, and the protocols it applies to besides http.
        let keys: [(&str, bool, Option<Protocol>); 6] = [
            ("http2", res.http2.is_some(), None),
            ("preserve_host", res.preserve_host.is_some(), None),
            (
                "pass_client_auth",
                res.pass_client_auth.is_some(),
                Some(Protocol::Redis),
            ),
            ("response_timeout", res.response_timeout.is_some(), None),
            (
                "pool_idle_timeout",
                res.pool_idle_timeout.is_some(),
                Some(Protocol::Postgres),
            ),
            ("max_signed_body", res.max_signed_body.is_some(), None),
        ];
        if protocol != Protocol::Http {
            for (key, set, also) in keys {
                if !set || also == Some(protocol) {
                    continue;
                }
                let applies = match also {
                    Some(other) => format!("protocols http and {}", protocol_name(other)),
                    None => "protocol http only".to_owned(),
                };
                self.problem(
                    site(&res.protocol, format!("{at}.{key}")),
                    format!("{key} applies to {applies}"),
                );
            }
            return opts;
        }
        opts.http2 = res.http2.unwrap_or_default();
        opts.preserve_host = res.preserve_host.unwrap_or(false);
        opts.pass_client_auth = res.pass_client_auth.unwrap_or(false);
        if let Some(v) = &res.response_timeout {
            opts.response_timeout = self
                .duration(v, &format!("{at}.response_timeout"), false)
                .unwrap_or(DEFAULT_RESPONSE_TIMEOUT);
        }
        if let Some(v) = &res.pool_idle_timeout {
            opts.pool_idle_timeout = self
                .duration(v, &format!("{at}.pool_idle_timeout"), true)
                .unwrap_or(DEFAULT_POOL_IDLE_TIMEOUT);
        }
        if let Some(v) = &res.max_signed_body {
            opts.max_signed_body = v.value;
        }
        opts
    }

    fn listen(&mut self, res: &raw::Resource, at: &str) -> Option<ListenAddr> {
        let value = res.listen.value.trim();
        let path = format!("{at}.listen");
        if let Some(sock) = value.strip_prefix("unix:") {
            if sock.is_empty() {
                self.problem(site(&res.listen, path), "unix: needs a socket path");
                return None;
            }
            let mode = match &res.listen_mode {
                Some(mode) => match u32::from_str_radix(mode.value.trim_start_matches("0o"), 8) {
                    Ok(bits) if bits <= 0o777 => bits,
                    _ => {
                        self.problem(
                            site(mode, format!("{at}.listen_mode")),
                            format!("\"{}\" is not an octal file mode like \"0660\"", mode.value),
                        );
                        return None;
                    }
                },
                None => 0o600,
            };
            return Some(ListenAddr::Unix {
                path: self.base.join(sock),
                mode,
            });
        }
        if let Some(mode) = &res.listen_mode {
            self.problem(
                site(mode, format!("{at}.listen_mode")),
                "listen_mode applies to unix: listeners only",
            );
        }
        match self.socket_addr(value) {
            Ok(addr) if !addr.ip().is_loopback() && !res.allow_remote => {
                self.problem(
                    site(&res.listen, path),
                    format!("{addr} is not a loopback address: apps on other hosts could use this resource's credentials; set allow_remote: true if that is intended"),
                );
                None
            }
            Ok(addr) => Some(ListenAddr::Tcp(addr)),
            Err(msg) => {
                self.problem(site(&res.listen, path), msg);
                None
            }
        }
    }

    fn socket_addr(&self, value: &str) -> Result<SocketAddr, String> {
        if let Ok(addr) = value.parse::<SocketAddr>() {
            return Ok(addr);
        }
        if let Some(port) = value.strip_prefix("localhost:") {
            if let Ok(port) = port.parse::<u16>() {
                return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
            }
        }
        Err(format!("\"{value}\" is not an address: use IP:PORT (e.g. 127.0.0.1:6432, [::1]:6432) or unix:PATH"))
    }

    fn upstream(
        &mut self,
        protocol: Protocol,
        value: &Spanned<String>,
        path: &str,
    ) -> Option<Upstream> {
        let path = path.to_owned();
        let text = value.value.trim();
        if protocol == Protocol::Http {
            let url: http::Uri = match text.parse() {
                Ok(url) => url,
                Err(e) => {
                    self.problem(site(value, path), format!("\"{text}\" is not a URL: {e}"));
                    return None;
                }
            };
            let port = match url.scheme_str() {
                Some("https") => 443,
                Some("http") => 80,
                _ => {
                    self.problem(
                        site(value, path),
                        format!("\"{text}\" needs an https:// (or http://) scheme"),
                    );
                    return None;
                }
            };
            let Some(host) = url
                .host()
                .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned())
            else {
                self.problem(site(value, path), format!("\"{text}\" has no host"));
                return None;
            };
            let port = url.port_u16().unwrap_or(port);
            return Some(Upstream {
                host,
                port,
                url: Some(url),
            });
        }
        match split_host_port(text) {
            Some((host, port)) => Some(Upstream {
                host,
                port,
                url: None,
            }),
            None => {
                self.problem(
                    site(value, path),
                    format!(
                        "\"{text}\" is not HOST:PORT (e.g. db.internal:5432 or [2001:db8::1]:5432)"
                    ),
                );
                None
            }
        }
    }

    /// `upstream_at` is the key path of the upstream value (for errors about the name);
    /// `tls_at` the path of the tls block.
    #[allow(clippy::too_many_arguments)]
    fn tls(
        &mut self,
        protocol: Protocol,
        own: Option<&raw::Tls>,
        defaults: Option<&raw::Tls>,
        upstream: Option<&Upstream>,
        upstream_value: &Spanned<String>,
        upstream_at: &str,
        tls_at: &str,
    ) -> Option<TlsSettings> {
        let empty = raw::Tls::default();
        let own = own.unwrap_or(&empty);
        let dflt = defaults.unwrap_or(&empty);
        let p = |key: &str| format!("{tls_at}.{key}");
        let d = |key: &str| format!("defaults.tls.{key}");
        let mode_pick = pick(&own.mode, p("mode"), dflt.mode.as_ref(), &d("mode"));
        let mut mode = mode_pick.as_ref().map(|(m, _)| m.value).unwrap_or_default();
        let explicit_mode = mode_pick.is_some();
        let mode_site = mode_pick
            .map(|(m, path)| site(m, path))
            .unwrap_or_else(|| site(upstream_value, upstream_at));
        let plain_http = upstream
            .and_then(|u| u.url.as_ref())
            .is_some_and(|u| u.scheme_str() == Some("http"));
        if plain_http {
            if explicit_mode && mode != TlsMode::Disable {
                self.problem(mode_site.clone(), format!("the upstream is plain http://, so TLS mode \"{}\" cannot apply; use an https:// upstream or mode: disable", mode.as_str()));
                return None;
            }
            mode = TlsMode::Disable;
        }
        let ca = pick(&own.ca, p("ca"), dflt.ca.as_ref(), &d("ca"))
            .map(|(v, path)| self.file_ref(v, path));
        let system_roots = own
            .system_roots
            .or(dflt.system_roots)
            .unwrap_or(ca.is_none());
        let cert = pick(
            &own.client_cert,
            p("client_cert"),
            dflt.client_cert.as_ref(),
            &d("client_cert"),
        );
        let key = pick(
            &own.client_key,
            p("client_key"),
            dflt.client_key.as_ref(),
            &d("client_key"),
        );
        let client = match (cert, key) {
            (Some((c, cp)), Some((k, kp))) => Some(ClientIdentity {
                cert: self.file_ref(c, cp),
                key: self.file_ref(k, kp),
            }),
            (Some((v, path)), None) | (None, Some((v, path))) => {
                self.problem(
                    site(v, path),
                    "client_cert and client_key must be set together",
                );
                return None;
            }
            (None, None) => None,
        };
        let min_version = pick(
            &own.min_version,
            p("min_version"),
            dflt.min_version.as_ref(),
            &d("min_version"),
        )
        .map(|(v, _)| v.value)
        .unwrap_or_default();
        let negotiation = match pick(
            &own.negotiation,
            p("negotiation"),
            dflt.negotiation.as_ref(),
            &d("negotiation"),
        ) {
            Some((v, path)) => {
                if protocol != Protocol::Postgres {
                    self.problem(
                        site(v, path),
                        "tls.negotiation applies to protocol postgres only",
                    );
                } else if v.value == Negotiation::Direct && mode == TlsMode::Disable {
                    self.problem(site(v, path), "negotiation: direct is TLS from the first byte; it cannot be combined with mode: disable");
                }
                v.value
            }
            None => Negotiation::Postgres,
        };
        let server_name = match (
            pick(
                &own.server_name,
                p("server_name"),
                dflt.server_name.as_ref(),
                &d("server_name"),
            ),
            upstream,
        ) {
            (Some((v, path)), _) => {
                let name = v.value.trim();
                if name.is_empty() {
                    self.problem(site(v, path), "server_name is empty: name the host the upstream certificate is issued for");
                    return None;
                }
                match ServerName::try_from(name.to_owned()) {
                    Ok(name) => name,
                    Err(_) => {
                        self.problem(
                            site(v, path),
                            format!("\"{name}\" is not a valid DNS name or IP address"),
                        );
                        return None;
                    }
                }
            }
            (None, Some(up)) => match ServerName::try_from(up.host.clone()) {
                Ok(name) => name,
                Err(_) if mode == TlsMode::Disable => {
                    ServerName::IpAddress(Ipv4Addr::LOCALHOST.into())
                }
                Err(_) => {
                    self.problem(site(upstream_value, upstream_at), format!("upstream host \"{}\" is not a valid TLS server name; set tls.server_name", up.host));
                    return None;
                }
            },
            (None, None) => return None,
        };
        Some(TlsSettings {
            mode,
            ca,
            system_roots,
            client,
            server_name,
            min_version,
            negotiation,
            site: mode_site,
        })
    }

    fn file_ref(&self, value: &Spanned<String>, path: String) -> FileRef {
        FileRef {
            path: self.base.join(value.value.trim()),
            site: site(value, path),
        }
    }

    fn secret(&mut self, value: &Spanned<String>, path: &str) -> Option<SecretRef> {
        match SecretSource::parse(&value.value, &self.base) {
            Ok(source) => Some(SecretRef {
                source,
                site: site(value, path),
            }),
            Err(msg) => {
                self.problem(site(value, path), msg);
                None
            }
        }
    }

    fn duration(&mut self, value: &Spanned<String>, path: &str, zero_ok: bool) -> Option<Duration> {
        match humantime::parse_duration(value.value.trim()) {
            Ok(d) if d.is_zero() && !zero_ok => {
                self.problem(site(value, path), "must be greater than zero");
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(
                    site(value, path),
                    format!(
                        "\"{}\" is not a duration ({e}); write e.g. 500ms, 5s, 10m, 1h",
                        value.value
                    ),
                );
                None
            }
        }
    }

    fn auth(&mut self, protocol: Protocol, auth: &raw::Auth, at: &str) -> Option<Auth> {
        use AuthType as T;
        let kind = auth.kind.value;
        let allowed_for_protocol: &[AuthType] = match protocol {
            Protocol::Tcp => &[T::None],
            Protocol::Http => &[
                T::None,
                T::ApiKey,
                T::Basic,
                T::Bearer,
                T::Oauth2,
                T::AwsSigv4,
            ],
            Protocol::Postgres | Protocol::Mysql => &[T::None, T::Password, T::RdsIam],
            Protocol::Redis => &[T::None, T::Password],
        };
        if !allowed_for_protocol.contains(&kind) {
            let names: Vec<&str> = allowed_for_protocol
                .iter()
                .map(|t| auth_type_name(*t))
                .collect();
            self.problem(
                site(&auth.kind, format!("{at}.type")),
                format!(
                    "auth type \"{}\" does not apply to protocol {}; use one of: {}",
                    auth_type_name(kind),
                    protocol_name(protocol),
                    names.join(", ")
                ),
            );
            return None;
        }
        let fields: [(&str, Option<Site>); 23] = [
            ("username", auth.username.as_ref().map(|v| site(v, ""))),
            ("password", auth.password.as_ref().map(|v| site(v, ""))),
            ("database", auth.database.as_ref().map(|v| site(v, ""))),
            ("token", auth.token.as_ref().map(|v| site(v, ""))),
            ("header", auth.header.as_ref().map(|v| site(v, ""))),
            ("query", auth.query.as_ref().map(|v| site(v, ""))),
            ("value", auth.value.as_ref().map(|v| site(v, ""))),
            ("token_url", auth.token_url.as_ref().map(|v| site(v, ""))),
            ("client_id", auth.client_id.as_ref().map(|v| site(v, ""))),
            (
                "client_secret",
                auth.client_secret.as_ref().map(|v| site(v, "")),
            ),
            (
                "refresh_token",
                auth.refresh_token.as_ref().map(|v| site(v, "")),
            ),
            ("scopes", auth.scopes.as_ref().map(|v| site(v, ""))),
            ("audience", auth.audience.as_ref().map(|v| site(v, ""))),
            ("params", auth.params.as_ref().map(|v| site(v, ""))),
            (
                "client_auth",
                auth.client_auth.as_ref().map(|v| site(v, "")),
            ),
            ("service", auth.service.as_ref().map(|v| site(v, ""))),
            ("region", auth.region.as_ref().map(|v| site(v, ""))),
            (
                "access_key_id",
                auth.access_key_id.as_ref().map(|v| site(v, "")),
            ),
            (
                "secret_access_key",
                auth.secret_access_key.as_ref().map(|v| site(v, "")),
            ),
            (
                "session_token",
                auth.session_token.as_ref().map(|v| site(v, "")),
            ),
            (
                "unsigned_payload",
                auth.unsigned_payload.as_ref().map(|v| site(v, "")),
            ),
            (
                "allow_cleartext_password",
                auth.allow_cleartext_password.as_ref().map(|v| site(v, "")),
            ),
            (
                "allow_rsa_key_exchange",
                auth.allow_rsa_key_exchange.as_ref().map(|v| site(v, "")),
            ),
        ];
        const AWS: [&str; 3] = ["access_key_id", "secret_access_key", "session_token"];
        let allowed: Vec<&str> = match kind {
            T::None => vec![],
            T::Password => vec![
                "username",
                "password",
                "database",
                "allow_cleartext_password",
                "allow_rsa_key_exchange",
            ],
            T::RdsIam => [&["username", "region", "database"][..], &AWS].concat(),
            T::ApiKey => vec!["header", "query", "value"],
            T::Basic => vec!["username", "password"],
            T::Bearer => vec!["token"],
            T::Oauth2 => vec![
                "token_url",
                "client_id",
                "client_secret",
                "refresh_token",
                "scopes",
                "audience",
                "params",
                "client_auth",
            ],
            T::AwsSigv4 => [&["service", "region", "unsigned_payload"][..], &AWS].concat(),
        };
        let before = self.problems.len();
        for (key, at_key) in &fields {
            if let Some(s) = at_key {
                if !allowed.contains(key) {
                    let mut s = s.clone();
                    s.path = format!("{at}.{key}");
                    self.problem(
                        s,
                        format!(
                            "\"{key}\" does not apply to auth type \"{}\"",
                            auth_type_name(kind)
                        ),
                    );
                }
            }
        }
        let type_site = site(&auth.kind, format!("{at}.type"));
        if auth.tls.is_some() && kind != T::Oauth2 {
            self.problem(type_site.clone(), format!("\"tls\" in auth applies to the oauth2 token endpoint only, not to auth type \"{}\"", auth_type_name(kind)));
        }
        let require =
            |ctx: &mut Self, value: &Option<Spanned<String>>, key: &str| -> Option<String> {
                match value {
                    Some(v) if !v.value.trim().is_empty() => Some(v.value.clone()),
                    Some(v) => {
                        ctx.problem(site(v, format!("{at}.{key}")), "must not be empty");
                        None
                    }
                    None => {
                        ctx.problem(
                            type_site.clone(),
                            format!("auth type \"{}\" needs \"{key}\"", auth_type_name(kind)),
                        );
                        None
                    }
                }
            };
        let secret_of = |ctx: &mut Self, value: &Option<Spanned<String>>, key: &str| {
            value
                .as_ref()
                .and_then(|v| ctx.secret(v, &format!("{at}.{key}")))
        };
        let aws = |ctx: &mut Self| AwsCredentials {
            access_key_id: secret_of(ctx, &auth.access_key_id, "access_key_id"),
            secret_access_key: secret_of(ctx, &auth.secret_access_key, "secret_access_key"),
            session_token: secret_of(ctx, &auth.session_token, "session_token"),
        };
        let result = match kind {
            T::None => Some(Auth::None),
            T::Password => {
                let username = if protocol == Protocol::Redis {
                    auth.username.as_ref().map(|v| v.value.clone())
                } else {
                    require(self, &auth.username, "username")
                };
                Some(Auth::Password {
                    username,
                    password: secret_of(self, &auth.password, "password"),
                    database: auth.database.as_ref().map(|v| v.value.clone()),
                })
            }
            T::RdsIam => {
                let username = require(self, &auth.username, "username");
                let region = require(self, &auth.region, "region");
                let credentials = aws(self);
                Some(Auth::RdsIam {
                    username: username?,
                    region: region?,
                    database: auth.database.as_ref().map(|v| v.value.clone()),
                    credentials,
                })
            }
            T::ApiKey => {
                let place = match (&auth.header, &auth.query) {
                    (Some(h), None) => Some(ApiKeyPlace::Header(h.value.clone())),
                    (None, Some(q)) => Some(ApiKeyPlace::Query(q.value.clone())),
                    _ => {
                        self.problem(
                            type_site.clone(),
                            "auth type \"api_key\" needs exactly one of \"header\" or \"query\"",
                        );
                        None
                    }
                };
                require(self, &auth.value, "value");
                let value = secret_of(self, &auth.value, "value");
                Some(Auth::ApiKey {
                    place: place?,
                    value: value?,
                })
            }
            T::Basic => {
                let username = require(self, &auth.username, "username");
                require(self, &auth.password, "password");
                let password = secret_of(self, &auth.password, "password");
                Some(Auth::Basic {
                    username: username?,
                    password: password?,
                })
            }
            T::Bearer => {
                require(self, &auth.token, "token");
                Some(Auth::Bearer {
                    token: secret_of(self, &auth.token, "token")?,
                })
            }
            T::Oauth2 => {
                require(self, &auth.token_url, "token_url");
                let (token_url, tls) = match &auth.token_url {
                    Some(v) => match self.upstream(Protocol::Http, v, &format!("{at}.token_url")) {
                        Some(up) => {
                            let path = format!("{at}.token_url");
                            let tls = self.tls(
                                Protocol::Http,
                                auth.tls.as_ref(),
                                None,
                                Some(&up),
                                v,
                                &path,
                                &format!("{at}.tls"),
                            );
                            (up.url, tls)
                        }
                        None => (None, None),
                    },
                    None => (None, None),
                };
                let client_id = require(self, &auth.client_id, "client_id");
                if auth.client_secret.is_none() && auth.refresh_token.is_none() {
                    self.problem(type_site.clone(), "auth type \"oauth2\" needs \"client_secret\" (client_credentials grant) or \"refresh_token\"");
                }
                let client_auth_basic = match &auth.client_auth {
                    None => true,
                    Some(v) if v.value == "basic" => true,
                    Some(v) if v.value == "body" => false,
                    Some(v) => {
                        self.problem(
                            site(v, format!("{at}.client_auth")),
                            format!("\"{}\" is not basic or body", v.value),
                        );
                        true
                    }
                };
                let client_secret = secret_of(self, &auth.client_secret, "client_secret");
                let refresh_token = secret_of(self, &auth.refresh_token, "refresh_token");
                Some(Auth::OAuth2(Box::new(OAuth2 {
                    token_url: token_url?,
                    client_id: client_id?,
                    client_secret,
                    refresh_token,
                    scopes: auth
                        .scopes
                        .as_ref()
                        .map(|s| s.value.clone())
                        .unwrap_or_default(),
                    audience: auth.audience.as_ref().map(|v| v.value.clone()),
                    params: auth
                        .params
                        .as_ref()
                        .map(|p| p.value.clone().into_iter().collect())
                        .unwrap_or_default(),
                    client_auth_basic,
                    tls: tls?,
                })))
            }
            T::AwsSigv4 => {
                let service = require(self, &auth.service, "service");
                let region = require(self, &auth.region, "region");
                let credentials = aws(self);
                if credentials.access_key_id.is_some() != credentials.secret_access_key.is_some() {
                    self.problem(
                        type_site.clone(),
                        "access_key_id and secret_access_key must be set together",
                    );
                }
                Some(Auth::AwsSigV4 {
                    service: service?,
                    region: region?,
                    credentials,
                    unsigned_payload: auth.unsigned_payload.as_ref().is_some_and(|v| v.value),
                })
            }
        };
        if self.problems.len() > before {
            None
        } else {
            result
        }
    }
}

/// Splits `host:port` / `[v6]:port`.
fn split_host_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, port) = rest.split_once("]:")?;
        host.parse::<std::net::Ipv6Addr>().ok()?;
        (host, port)
    } else {
        let (host, port) = text.rsplit_once(':')?;
        if host.contains(':') {
            return None;
        }
        (host, port)
    };
    let port: u16 = port.parse().ok()?;
    let valid_host = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':'));
    (valid_host && port > 0).then(|| (host.to_owned(), port))
}

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

fn auth_type_name(kind: AuthType) -> &'static str {
    match kind {
        AuthType::None => "none",
        AuthType::Password => "password",
        AuthType::RdsIam => "rds_iam",
        AuthType::ApiKey => "api_key",
        AuthType::Basic => "basic",
        AuthType::Bearer => "bearer",
        AuthType::Oauth2 => "oauth2",
        AuthType::AwsSigv4 => "aws_sigv4",
    }
}

#[cfg(test)]
mod tests;
