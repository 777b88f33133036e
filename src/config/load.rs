//! Reading and validating: YAML → [`raw`](super::raw) → [`Config`], every problem collected
//! with its site (`Ctx`), resource by resource; defaults, durations, files and secrets.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_saphyr::Spanned;

use super::problems::{Problem, Problems, Site};
use super::raw;
use super::types::*;
use crate::error::io_reason;
use crate::secret::SecretSource;

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
    let raw = match raw::parse(text) {
        Ok(raw) => raw,
        Err((err, key_path)) => {
            return Err(Problems(vec![syntax_problem(file, &key_path, &err, text)]))
        }
    };
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut ctx = Ctx {
        file: file.to_owned(),
        base,
        problems: Vec::new(),
        audited: false,
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

/// The parser's and serde's wording in the words of someone writing YAML (each tested in
/// `config::tests::syntax_messages_speak_the_users_language`).
pub(super) fn humanize(message: &str) -> String {
    let whole = |ty: &str| -> Option<&'static str> {
        Some(match ty {
            "u8" => "a whole number between 0 and 255",
            "u16" => "a whole number between 0 and 65535",
            "u32" => "a whole number between 0 and 4294967295",
            "u64" | "usize" => "a whole number of 0 or more",
            "i32" | "i64" | "isize" => "a whole number",
            "f32" | "f64" => "a number",
            "bool" | "boolean" => "true or false",
            _ => return None,
        })
    };
    if let Some(key) = message.strip_prefix("duplicate mapping key: ") {
        let key = key.split(", set DuplicateKeyPolicy").next().unwrap_or(key);
        return format!("duplicate key `{key}`: a key may appear once in a map");
    }
    if let Some(ty) = message.strip_prefix("invalid ") {
        if let Some(want) = whole(ty) {
            return format!("expected {want}");
        }
    }
    if let Some((_, ty)) = message
        .strip_prefix("invalid type: ")
        .and_then(|m| m.rsplit_once(", expected "))
    {
        if let Some(want) = whole(ty) {
            return format!("expected {want}");
        }
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        if let Some((value, expected)) = rest.split_once("`, expected ") {
            return format!("unknown value \"{value}\": expected {expected}");
        }
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((key, expected)) = rest.split_once("`, expected ") {
            return format!("unknown key `{key}` (a typo?): expected {expected}");
        }
    }
    if message.contains("found a tab") {
        return "a tab character: YAML indents with spaces only".to_owned();
    }
    match message {
        "expected sequence start" => {
            "expected a list (items on lines starting with `- `)".to_owned()
        }
        "expected mapping start" => "expected a map (`key: value` lines)".to_owned(),
        other => other.to_owned(),
    }
}

fn syntax_problem(file: &Path, key_path: &str, err: &serde_saphyr::Error, text: &str) -> Problem {
    let mut message = err.without_snippet().to_string();
    if let Some(at) = message.rfind(" at line ") {
        message.truncate(at);
    }
    let tab = message.contains("found a tab");
    let mut message = humanize(&message);
    if message == "expected string scalar" {
        // YAML reads an unquoted `[::1]:5432` as a list.
        message.push_str(" (quote values that start with '[' or '{', e.g. \"[::1]:5432\")");
    }
    // `Spanned<T>` adds a `.value` segment: drop it (one at the end, and before an index).
    // `auth` is a `Spanned` block too: its own `.value` follows `auth`.
    let path = key_path
        .replace(".value[", "[")
        .replacen(".auth.value", ".auth", 1);
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
    let (mut line, mut column) = err
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    if tab {
        // The parser reports where the scalar it was reading began: point at the tab itself,
        // the first one at or after that line.
        if let Some((l, c)) = text
            .lines()
            .enumerate()
            .skip(line.saturating_sub(1) as usize)
            .find_map(|(i, l)| l.chars().position(|ch| ch == '\t').map(|c| (i + 1, c + 1)))
        {
            (line, column) = (l as u64, c as u64);
        }
    }
    Problem {
        file: file.to_owned(),
        site: Some(Site { line, column, path }),
        message,
    }
}

pub(super) struct Ctx {
    pub(super) file: PathBuf,
    pub(super) base: PathBuf,
    pub(super) problems: Vec<Problem>,
    /// Whether the file has a top-level `audit` block.
    pub(super) audited: bool,
}

pub(super) fn site<T>(value: &Spanned<T>, path: impl Into<String>) -> Site {
    Site {
        line: value.referenced.line(),
        column: value.referenced.column(),
        path: path.into(),
    }
}

/// A field that may come from the resource or from `defaults`, with the path it came from.
pub(super) fn pick<'a, T>(
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
    pub(super) fn problem(&mut self, site: Site, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.clone(),
            site: Some(site),
            message: message.into(),
        });
    }

    pub(super) fn config(&mut self, raw: raw::File) -> Config {
        let admin = raw.admin.map(|admin| Admin {
            listen: match &admin.listen {
                Some(listen) => match self.socket_addr(&listen.value) {
                    Ok(addr) if !addr.ip().is_loopback() && !admin.allow_remote => {
                        self.problem(
                            site(listen, "admin.listen"),
                            format!("{addr} is not a loopback address: any host that reaches it sees the metrics and resource status; set admin.allow_remote: true if that is intended"),
                        );
                        addr
                    }
                    Ok(addr) => addr,
                    Err(msg) => {
                        self.problem(site(listen, "admin.listen"), msg);
                        DEFAULT_ADMIN
                    }
                },
                None => DEFAULT_ADMIN,
            },
            shutdown_endpoint: admin.shutdown_endpoint,
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

        let audit = raw.audit.as_ref().map(|a| self.audit_settings(a));
        self.audited = audit.is_some();
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
                if let (Some(admin), ListenAddr::Tcp(addr)) = (&admin, &resource.listen) {
                    let same_ip = addr.ip() == admin.listen.ip()
                        || addr.ip().is_unspecified()
                        || admin.listen.ip().is_unspecified();
                    if addr.port() != 0 && addr.port() == admin.listen.port() && same_ip {
                        self.problem(
                            site(&res.listen, format!("{at}.listen")),
                            format!(
                                "{addr} is also admin.listen ({}): the admin endpoint and a resource cannot share a port",
                                admin.listen
                            ),
                        );
                    }
                }
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
            audit,
            resources,
        }
    }

    pub(super) fn resource(
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
        let mut http = self.http_options(res, protocol, at);
        http.allow = self.allow_rules(res, protocol, at);
        let audit = self.resource_audit(res, protocol, self.audited, at);
        let mut db = self.db_options(res, protocol, at);
        if protocol == Protocol::Redis {
            db.commands = self.command_rules(res, at);
        }
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
            if ::http::HeaderName::from_bytes(header.as_bytes()).is_err() {
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
            audit,
            site: site(&res.name, at),
        })
    }

    pub(super) fn file_ref(&self, value: &Spanned<String>, path: String) -> FileRef {
        FileRef {
            path: self.base.join(value.value.trim()),
            site: site(value, path),
        }
    }

    pub(super) fn secret(&mut self, value: &Spanned<String>, path: &str) -> Option<SecretRef> {
        match SecretSource::parse(&value.value, &self.base) {
            Ok(source) => Some(SecretRef {
                source,
                site: site(value, path),
            }),
            Err(msg) => {
                self.problem(site(value, path), msg.to_string());
                None
            }
        }
    }

    pub(super) fn duration(
        &mut self,
        value: &Spanned<String>,
        path: &str,
        zero_ok: bool,
    ) -> Option<Duration> {
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
}
