//! The runtime: everything a config references, resolved and built (TLS configs, secrets),
//! as immutable per-resource snapshots. Reload will build a new one and publish it only if
//! the whole build succeeded (docs/DESIGN.md "Reload").

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::config::{
    BuildProblem, Config, ListenAddr, Problem, Problems, Protocol, ResourceName, TlsMode, Upstream,
};
use crate::connect::Dialer;
use crate::db::DbRuntime;
use crate::driver::{drive, Resource};
use crate::listener::RawStream;
use crate::record::{Failure, Stats};
use crate::relay::Relayed;
use crate::secret::Env;
use crate::tls::{self, TlsClient};

/// Everything keyward needs to serve, built from a [`Config`].
#[derive(Debug, Clone)]
pub struct Runtime {
    /// Per-resource snapshots, in config order.
    pub resources: Vec<Arc<ResourceRuntime>>,
    /// Grace period for live connections at shutdown.
    pub shutdown_grace: Duration,
    /// How long listeners keep accepting after a shutdown signal.
    pub shutdown_delay: Duration,
    /// The audit sink (`None`: no audit events).
    pub audit: Option<crate::config::AuditSettings>,
}

/// One resource, ready to serve. Connections take an `Arc` of it at accept and keep it.
#[derive(Debug)]
pub struct ResourceRuntime {
    /// Its name.
    pub name: ResourceName,
    /// Its protocol.
    pub protocol: Protocol,
    /// Where it listens.
    pub listen: ListenAddr,
    /// Where it forwards.
    pub upstream: Upstream,
    /// Upstream TLS; `None` for `mode: disable`.
    pub tls: Option<TlsClient>,
    /// Connection limit.
    pub max_connections: usize,
    /// What the connection driver hands its handler.
    pub resource: Arc<Resource>,
    /// The protocol's handler.
    pub handler: AnyHandler,
    /// Hash of everything this snapshot was built from (settings, file bytes, secrets).
    pub fingerprint: [u8; 32],
}

/// The handler of each protocol (enum dispatch: [`drive`] is generic over the handler).
#[derive(Debug)]
pub enum AnyHandler {
    /// `tcp`.
    Tcp(crate::tcp::Tcp),
    /// `http`.
    Http(crate::http::Http),
    /// `postgres`.
    Postgres(crate::postgres::Postgres),
    /// `mysql`.
    Mysql(crate::mysql::Mysql),
    /// `redis`.
    Redis(crate::redis::Redis),
}

impl ResourceRuntime {
    /// Serves one accepted connection through the connection driver.
    pub async fn serve(&self, raw: RawStream, stats: &Arc<Stats>) -> Result<Relayed, Failure> {
        let res = &self.resource;
        // Each protocol's future on the heap at its own size: inline, every connection's task
        // would be as large as the largest of them, twice over (19 KB; boxed, a Redis or HTTP
        // connection holds 2–5 KB).
        match &self.handler {
            AnyHandler::Tcp(h) => Box::pin(drive(h, raw, res, stats)).await,
            AnyHandler::Http(h) => Box::pin(drive(h, raw, res, stats)).await,
            AnyHandler::Postgres(h) => Box::pin(drive(h, raw, res, stats)).await,
            AnyHandler::Mysql(h) => Box::pin(drive(h, raw, res, stats)).await,
            AnyHandler::Redis(h) => Box::pin(drive(h, raw, res, stats)).await,
        }
    }

    /// The size of the future that serves a connection until its protocol's handler moves
    /// the session to the heap: what every connection holds while the app has not spoken.
    #[cfg(test)]
    fn waiting_size(&self, raw: RawStream, stats: &Arc<Stats>) -> usize {
        let res = &self.resource;
        match &self.handler {
            AnyHandler::Tcp(h) => std::mem::size_of_val(&drive(h, raw, res, stats)),
            AnyHandler::Http(h) => std::mem::size_of_val(&drive(h, raw, res, stats)),
            AnyHandler::Postgres(h) => std::mem::size_of_val(&drive(h, raw, res, stats)),
            AnyHandler::Mysql(h) => std::mem::size_of_val(&drive(h, raw, res, stats)),
            AnyHandler::Redis(h) => std::mem::size_of_val(&drive(h, raw, res, stats)),
        }
    }

    /// Whether the resource fetches OAuth2 tokens.
    pub fn uses_oauth2(&self) -> bool {
        matches!(&self.handler, AnyHandler::Http(h) if h.0.load().uses_oauth2())
    }

    /// Which of its metric series can move (declared at zero when it starts listening).
    pub fn series(&self) -> crate::metrics::Declared {
        crate::metrics::Declared {
            tls: self.tls.is_some(),
            auth: match &self.handler {
                AnyHandler::Tcp(_) => false,
                AnyHandler::Http(h) => h.0.load().times_auth(),
                AnyHandler::Postgres(_) | AnyHandler::Mysql(_) | AnyHandler::Redis(_) => true,
            },
            oauth2: self.uses_oauth2(),
            audit: self.resource.audit.level != crate::config::AuditLevel::Off,
        }
    }

    /// Takes over the live connections of `running` (the snapshot this one replaces): an HTTP
    /// resource's kept-alive app connections use this snapshot's credentials and pools from
    /// their next request. (Byte relays and database sessions keep the login they made.)
    pub fn carry_over(&mut self, running: &ResourceRuntime) {
        if let (AnyHandler::Http(new), AnyHandler::Http(old)) =
            (&mut self.handler, &running.handler)
        {
            new.carry_over(old);
        }
    }

    /// The database login of a `postgres`, `mysql` or `redis` resource.
    pub fn db(&self) -> Option<&DbRuntime> {
        match &self.handler {
            AnyHandler::Postgres(h) => Some(&h.0),
            AnyHandler::Mysql(h) => Some(&h.0),
            AnyHandler::Redis(h) => Some(&h.0),
            AnyHandler::Tcp(_) | AnyHandler::Http(_) => None,
        }
    }
}

/// The identity a resource's config names for its login (audit events).
fn identity(auth: &crate::config::Auth) -> Option<Arc<str>> {
    use crate::config::Auth;
    match auth {
        Auth::Password { username, .. } => username.as_deref().map(Into::into),
        Auth::RdsIam { username, .. } | Auth::Basic { username, .. } => {
            Some(username.as_str().into())
        }
        Auth::OAuth2(o) if !o.client_id.is_empty() => Some(o.client_id.as_str().into()),
        Auth::OAuth2(o) => o
            .assertion
            .as_ref()
            .and_then(|a| a.issuer.as_deref())
            .map(Into::into),
        _ => None,
    }
}

/// The `auth.type` a resource injects (audit events).
fn credential(auth: &crate::config::Auth) -> &'static str {
    use crate::config::Auth;
    match auth {
        Auth::None => "none",
        Auth::Password { .. } => "password",
        Auth::RdsIam { .. } => "rds_iam",
        Auth::ApiKey { .. } => "api_key",
        Auth::Basic { .. } => "basic",
        Auth::Bearer { .. } => "bearer",
        Auth::OAuth2(_) => "oauth2",
        Auth::AwsSigV4 { .. } => "aws_sigv4",
    }
}

impl Runtime {
    /// Each resource's name and listen address (for [`crate::Listeners::bind`]).
    pub fn listens(&self) -> impl Iterator<Item = (&ResourceName, &ListenAddr)> {
        self.resources.iter().map(|r| (&r.name, &r.listen))
    }

    /// The one validation path, shared by `keyward check`, startup and (later) reload: read
    /// the file, validate it, resolve every file and secret, build every TLS config. Every
    /// problem of every resource is returned together.
    pub fn load(file: &std::path::Path, env: &dyn Env) -> Result<(Config, Self), Problems> {
        let text = crate::config::read(file)?;
        let (config, mut problems) = crate::config::parse_partial(&text, file)?;
        match Self::build(&config, env) {
            Ok(runtime) if problems.is_empty() => return Ok((config, runtime)),
            Ok(_) => {}
            Err(Problems(mut more)) => problems.append(&mut more),
        }
        Err(Problems(problems))
    }

    /// Resolves every file and secret the config references and builds every TLS config.
    /// All problems are returned together.
    pub fn build(config: &Config, env: &dyn Env) -> Result<Self, Problems> {
        let mut problems = Vec::new();
        let mut push = |found: BuildProblem| {
            problems.push(Problem {
                file: config.file.clone(),
                site: Some(found.site),
                message: found.error.to_string(),
            })
        };
        let mut resources = Vec::new();
        for res in &config.resources {
            // Every file and variable this resource is built from is read once, through here.
            let env = &crate::config::Recorded::new(env);
            let alpn = match res.protocol {
                Protocol::Http => crate::http::alpn(res.http.http2),
                Protocol::Postgres => &[b"postgresql".as_slice()][..],
                _ => &[],
            };
            let tls = match tls::build_client(&res.tls, alpn, env) {
                Ok(tls) => tls,
                Err(found) => {
                    found.into_iter().for_each(&mut push);
                    None
                }
            };
            let mut inbound = None;
            if let Some(listen_tls) = &res.listen_tls {
                let alpn: &[&[u8]] = match res.protocol {
                    // keyward serves HTTP/1.1 to apps.
                    Protocol::Http => &[b"http/1.1"],
                    Protocol::Postgres => &[b"postgresql"],
                    _ => &[],
                };
                match crate::tls::inbound::InboundTls::build(listen_tls, alpn, env) {
                    Ok(built) => inbound = Some(built),
                    Err(found) => {
                        found.into_iter().for_each(&mut push);
                    }
                }
            }
            let dialer = Arc::new(Dialer {
                resource: res.name.to_string(),
                upstream: res.upstream.clone(),
                tls: tls.clone(),
                connect_timeout: res.connect_timeout,
                handshake_timeout: res.handshake_timeout,
            });
            let db = || DbRuntime::build(res, env);
            let handler = match res.protocol {
                Protocol::Tcp => Ok(AnyHandler::Tcp(crate::tcp::Tcp)),
                Protocol::Http => crate::http::HttpUpstream::build(res, &dialer, env)
                    .map(|up| AnyHandler::Http(crate::http::Http::new(up))),
                Protocol::Postgres => {
                    db().map(|db| AnyHandler::Postgres(crate::postgres::Postgres(db)))
                }
                Protocol::Mysql => db().map(|db| AnyHandler::Mysql(crate::mysql::Mysql(db))),
                Protocol::Redis => db().map(|db| AnyHandler::Redis(crate::redis::Redis(db))),
            };
            let handler = match handler {
                Ok(handler) => handler,
                Err(found) => {
                    found.into_iter().for_each(&mut push);
                    continue;
                }
            };
            let resource = Arc::new(Resource {
                name: res.name.clone(),
                dialer,
                idle_timeout: res.idle_timeout,
                client_handshake_timeout: res.client_handshake_timeout,
                inbound,
                audit: crate::audit::Policy {
                    level: res.audit.level,
                    mask_literals: res.audit.mask_literals,
                    protocol: crate::config::protocol_name(res.protocol),
                    identity: identity(&res.auth),
                    credential: credential(&res.auth),
                    upstream: res.upstream.to_string().into(),
                    leaf: Default::default(),
                },
            });
            resources.push(Arc::new(ResourceRuntime {
                name: res.name.clone(),
                protocol: res.protocol,
                listen: res.listen.clone(),
                upstream: res.upstream.clone(),
                tls,
                max_connections: res.max_connections,
                resource,
                handler,
                fingerprint: env.fingerprint(res),
            }));
        }
        if problems.is_empty() {
            Ok(Self {
                resources,
                shutdown_grace: config.shutdown_grace,
                shutdown_delay: config.shutdown_delay,
                audit: config.audit.clone(),
            })
        } else {
            Err(Problems(problems))
        }
    }

    /// Logs what was loaded: one line per resource at info (cert subject, serial, expiry),
    /// and a warning for every `insecure` resource, at every load.
    pub fn log_summary(&self) {
        self.warn_expiring();
        for res in &self.resources {
            let mode = res.tls.as_ref().map_or(TlsMode::Disable, |t| t.mode);
            match res.tls.as_ref().and_then(|t| t.client_cert.as_ref()) {
                Some(cert) => info!(
                    resource = %res.name, upstream = %res.upstream, tls = mode.as_str(),
                    client_cert = %cert.subject, serial = %cert.serial, not_after = %cert.not_after_rfc3339(),
                    "resource loaded"
                ),
                None => {
                    info!(resource = %res.name, upstream = %res.upstream, tls = mode.as_str(), "resource loaded")
                }
            }
            if let ListenAddr::Tcp(addr) = &res.listen {
                if !addr.ip().is_loopback() {
                    warn!(resource = %res.name, listen = %addr, "listening on a non-loopback address (allow_remote: true): any host that can reach it can use this resource's credentials");
                }
            }
            if mode == TlsMode::Insecure {
                warn!(resource = %res.name, "tls.mode is insecure: the upstream certificate is NOT verified; anyone on the path can impersonate {}", res.upstream);
            }
            if mode == TlsMode::Disable {
                warn!(resource = %res.name, "tls.mode is disable: traffic to {} is plaintext", res.upstream);
            }
            if let AnyHandler::Http(h) = &res.handler {
                if let Some(url) = h.0.load().plaintext_token_url() {
                    warn!(resource = %res.name, "auth.allow_plaintext_token_url: the client secret and refresh token go to {url} unencrypted");
                }
            }
        }
    }
}

/// A certificate in use that expires soon (within [`EXPIRY_WARNING`]).
#[derive(Debug, Clone)]
pub struct Expiring {
    /// The resource that uses it.
    pub resource: ResourceName,
    /// `client_cert` or `ca`.
    pub role: &'static str,
    /// What it is (the client certificate's subject, or `tls.ca`).
    pub what: String,
    /// Its notAfter (Unix seconds).
    pub not_after: i64,
}

impl std::fmt::Display for Expiring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "resource {:?}: certificate {} ({}) expires within 7 days, on {}",
            self.resource.as_str(),
            self.what,
            self.role,
            tls::rfc3339(self.not_after)
        )
    }
}

/// How close to its expiry a certificate in use is warned about (`run` at each load and once
/// a day, `check`).
pub const EXPIRY_WARNING: i64 = 7 * 24 * 3600;

impl Runtime {
    /// Sets the certificate expiry gauges; returns the certificates in use that expire within
    /// 7 days of `now` (Unix seconds).
    pub fn expiring(&self, now: i64) -> Vec<Expiring> {
        let mut soon = Vec::new();
        for res in &self.resources {
            let Some(tls) = &res.tls else { continue };
            let mut certs = Vec::new();
            if let Some(c) = &tls.client_cert {
                certs.push(("client_cert", c.not_after, c.subject.clone()));
            }
            if let Some(not_after) = tls.ca_not_after {
                certs.push(("ca", not_after, "tls.ca".to_owned()));
            }
            for (role, not_after, what) in certs {
                crate::metrics::metrics()
                    .cert_expiration
                    .with_label_values(&[res.name.as_str(), role])
                    .set(not_after as f64);
                if not_after - now < EXPIRY_WARNING {
                    soon.push(Expiring {
                        resource: res.name.clone(),
                        role,
                        what,
                        not_after,
                    });
                }
            }
        }
        soon
    }

    /// Sets the certificate expiry gauges and warns for every certificate in use that expires
    /// within 7 days. Called at each load and once a day.
    pub fn warn_expiring(&self) {
        for e in self.expiring(tls::unix_now()) {
            warn!(resource = %e.resource, role = e.role, not_after = %tls::rfc3339(e.not_after), "certificate {} expires within 7 days", e.what);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    use zeroize::Zeroizing;

    use super::*;
    use crate::pki::{Ca, Usage};
    use crate::secret::ProcessEnv;

    /// Reads the real files, counts the reads, and rotates one file right after its first
    /// read (as a secret-rotation tool would, between a build and anything after it).
    struct Watching {
        rotate: PathBuf,
        reads: Mutex<BTreeMap<PathBuf, usize>>,
    }

    impl Env for Watching {
        fn var(&self, _: &str) -> Option<String> {
            None
        }

        fn read(&self, path: &Path) -> std::io::Result<Zeroizing<Vec<u8>>> {
            let bytes = std::fs::read(path)?;
            *self
                .reads
                .lock()
                .unwrap()
                .entry(path.to_owned())
                .or_default() += 1;
            if path == self.rotate {
                std::fs::write(path, "rotated-token\n")?;
            }
            Ok(Zeroizing::new(bytes))
        }
    }

    /// A connection that has not spoken yet (a pool's spare, an idle flood) holds the
    /// connection driver's future. Those that wait for the app before any upstream work
    /// (PostgreSQL's startup packet, Redis's first command) keep the session's much larger
    /// future on the heap until then: inline it was 23 KB (PostgreSQL) and 17 KB (Redis),
    /// and 10,000 idle connections held 270 MB (`bench/hostile.sh`).
    #[tokio::test]
    async fn a_connection_waiting_for_the_app_holds_a_small_future() {
        let yaml = "admin: null\nresources:\n  - name: pg\n    protocol: postgres\n    listen: 127.0.0.1:0\n    upstream: localhost:9\n    tls: { mode: disable }\n    auth: { type: password, username: u, password: p }\n  - name: redis\n    protocol: redis\n    listen: 127.0.0.1:0\n    upstream: localhost:9\n    tls: { mode: disable }\n    auth: { type: password, password: p }\n  - name: tcp\n    protocol: tcp\n    listen: 127.0.0.1:0\n    upstream: localhost:9\n    tls: { mode: disable }\n  - name: api\n    protocol: http\n    listen: 127.0.0.1:0\n    upstream: http://localhost:9\n    tls: { mode: disable }\n";
        let config = crate::config::parse(yaml, Path::new("keyward.yaml")).unwrap();
        let runtime = Runtime::build(&config, &ProcessEnv).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        for res in &runtime.resources {
            let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (raw, _) = listener.accept().await.unwrap();
            let stats = Arc::new(Stats::new(res.name.clone()));
            let size = res.waiting_size(tokio_util::either::Either::Left(raw), &stats);
            assert!(size <= 4096, "{}: {size} bytes", res.name);
        }
    }

    /// Issue 13 item 13: a resource's fingerprint is of the bytes its runtime was built from,
    /// each file read once. (Before, the build read the CA twice and the fingerprint read every
    /// file again: a token rotated right after the build gave the old runtime the new token's
    /// fingerprint, and the reload that followed the rotation kept the stale token.)
    #[test]
    fn the_fingerprint_is_of_the_bytes_that_were_built_each_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("fp-ca").unwrap();
        let client = ca.leaf("fp-client", &[], Usage::Client).unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        write("ca.pem", &ca.cert.cert_pem);
        write("client.pem", &client.cert_pem);
        write("client.key", &client.key_pem);
        let token = write("token", "first-token\n");
        let yaml = "admin: null\nresources:\n  - name: api\n    protocol: http\n    listen: 127.0.0.1:0\n    upstream: https://localhost:9\n    tls:\n      ca: ca.pem\n      client_cert: client.pem\n      client_key: client.key\n    auth:\n      type: bearer\n      token: ${file:token}\n";
        let config = crate::config::parse(yaml, &dir.path().join("keyward.yaml")).unwrap();
        let watching = Watching {
            rotate: token.clone(),
            reads: Mutex::new(BTreeMap::new()),
        };
        let built = Runtime::build(&config, &watching).unwrap();
        let reads = watching.reads.into_inner().unwrap();
        assert_eq!(reads.len(), 4, "{reads:?}");
        assert!(reads.values().all(|&n| n == 1), "{reads:?}");
        // The file holds the rotated token now: what a reload builds differs from what runs.
        let reloaded = Runtime::build(&config, &ProcessEnv).unwrap();
        assert_ne!(
            built.resources[0].fingerprint,
            reloaded.resources[0].fingerprint
        );
        // Unchanged material, equal fingerprints: a reload keeps the running snapshot.
        let again = Runtime::build(&config, &ProcessEnv).unwrap();
        assert_eq!(
            reloaded.resources[0].fingerprint,
            again.resources[0].fingerprint
        );
    }
}
