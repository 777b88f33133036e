//! AWS credentials for `aws_sigv4` and `rds_iam`. Static keys from the config are used as
//! they are. Otherwise the base credentials come from the AWS SDK's own default chain
//! (`aws-config`: environment, shared config/credentials files with `profile`, web identity,
//! container credentials, EC2 IMDSv2, in the SDKs' order); `assume_role` then asks STS for a
//! role session on top of either. Temporary credentials are cached per resource and refreshed
//! ahead of expiry in the background, one refresh at a time; a request waits only when nothing
//! valid is held. The SDK's HTTP client runs on rustls with ring, like the rest of keyward.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use aws_config::meta::credentials::CredentialsProviderChain;
use aws_config::meta::region::RegionProviderChain;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use tracing::{info, warn};

use crate::config::{AssumeRole, AwsCredentials};
use crate::error::{ConnError, Reason, Side};
use crate::secret::Env;

/// How far ahead of expiry temporary credentials are replaced (or half their lifetime, for
/// sessions shorter than twice this).
const AHEAD: Duration = Duration::from_secs(300);
/// How often credentials without an expiry that came from the chain are resolved again (a
/// rotated shared credentials file or `credential_process` output takes effect).
const RECHECK: Duration = Duration::from_secs(60);
/// The longest wait between failed background refreshes.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Where a resource's AWS credentials come from, as configured.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The resource (metric label, default session name).
    pub resource: String,
    /// The resource's signing region: STS's region when neither `AWS_REGION` nor the profile
    /// names one.
    pub region: String,
    /// Static keys from the config (resolved).
    pub fixed: Option<Credentials>,
    /// Shared-config profile (else `AWS_PROFILE`, else `default`).
    pub profile: Option<String>,
    /// A role to assume with the base credentials.
    pub assume_role: Option<AssumeRole>,
}

#[derive(Clone)]
struct Held {
    credentials: Credentials,
    source: &'static str,
    refresh_at: SystemTime,
    /// `None`: never expires.
    expires_at: Option<SystemTime>,
}

impl Held {
    fn valid_at(&self, now: SystemTime) -> bool {
        self.expires_at.is_none_or(|e| now < e)
    }
}

#[derive(Default)]
struct Backoff {
    failures: u32,
    not_before: Option<SystemTime>,
    /// The last failure, answered at once while waiting (STS is not asked per request).
    last_error: Option<String>,
}

/// A resource's AWS credentials, cached.
pub struct Source {
    settings: Settings,
    current: Mutex<Option<Held>>,
    in_flight: Arc<tokio::sync::Mutex<()>>,
    backoff: Mutex<Backoff>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("aws::Source")
            .field("resource", &self.settings.resource)
            .field("profile", &self.settings.profile)
            .field("assume_role", &self.settings.assume_role)
            .finish_non_exhaustive()
    }
}

/// What the source answered with: the credentials, and from where.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The credentials.
    pub credentials: Credentials,
    /// `config`, `environment`, `profile`, `web_identity`, `container`, `imds`, or
    /// `assume_role`.
    pub source: &'static str,
}

impl Source {
    /// The source for `config` (static keys resolved through `env` now; the chain and STS
    /// are asked on first use, never here: `keyward check` stays offline).
    pub fn build(
        resource: &str,
        region: &str,
        config: &AwsCredentials,
        env: &dyn Env,
    ) -> Result<Self, String> {
        let fixed = match (&config.access_key_id, &config.secret_access_key) {
            (Some(id), Some(secret)) => {
                let token = match &config.session_token {
                    Some(t) => Some(
                        t.source
                            .resolve(env)
                            .map_err(|e| e.to_string())?
                            .expose()
                            .to_owned(),
                    ),
                    None => None,
                };
                let id = id.source.resolve(env).map_err(|e| e.to_string())?;
                let secret = secret.source.resolve(env).map_err(|e| e.to_string())?;
                Some(Credentials::new(
                    id.expose(),
                    secret.expose(),
                    token,
                    None,
                    "keyward-config",
                ))
            }
            _ => None,
        };
        let settings = Settings {
            resource: resource.to_owned(),
            region: region.to_owned(),
            fixed,
            profile: config.profile.clone(),
            assume_role: config.assume_role.clone(),
        };
        Ok(Self::new(settings))
    }

    /// A source for `settings`.
    pub fn new(settings: Settings) -> Self {
        let current = match (&settings.fixed, &settings.assume_role) {
            (Some(fixed), None) => Some(Held {
                credentials: fixed.clone(),
                source: "config",
                refresh_at: SystemTime::UNIX_EPOCH + Duration::from_secs(u32::MAX as u64 * 8),
                expires_at: None,
            }),
            _ => None,
        };
        Self {
            settings,
            current: Mutex::new(current),
            in_flight: Arc::new(tokio::sync::Mutex::new(())),
            backoff: Mutex::new(Backoff::default()),
        }
    }

    /// Credentials to sign with now: the cached ones while valid (refreshed in the background
    /// once due), else fetched now, one fetch at a time for every waiting request.
    pub async fn credentials(self: &Arc<Self>) -> Result<Credentials, ConnError> {
        let now = SystemTime::now();
        if let Some(held) = self.cached() {
            if now < held.refresh_at {
                return Ok(held.credentials);
            }
            if held.valid_at(now) {
                self.refresh_in_background(now);
                return Ok(held.credentials);
            }
        }
        // Boxed: the fetch (the SDK's credential chain) is a large future, and every signed
        // request's future would carry its space although the cached credentials above serve
        // nearly all of them.
        Box::pin(self.refresh_now()).await.map(|r| r.credentials)
    }

    /// Fetches new credentials now (single flight), whatever is cached: `keyward probe`.
    pub async fn resolve(&self) -> Result<Resolved, ConnError> {
        let _guard = self.in_flight.lock().await;
        self.fetch().await.map_err(|e| self.error(e))
    }

    fn cached(&self) -> Option<Held> {
        self.current.lock().ok().and_then(|h| h.clone())
    }

    fn refresh_in_background(self: &Arc<Self>, now: SystemTime) {
        let waiting = self
            .backoff
            .lock()
            .map(|b| b.not_before.is_some_and(|t| now < t))
            .unwrap_or(false);
        if waiting {
            return;
        }
        let Ok(guard) = self.in_flight.clone().try_lock_owned() else {
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            let _guard = guard;
            if let Err(e) = this.fetch().await {
                warn!(
                    resource = %this.settings.resource,
                    "AWS credential refresh failed, keeping the current credentials while they are valid: {e}"
                );
            }
        });
    }

    async fn refresh_now(&self) -> Result<Resolved, ConnError> {
        let _guard = self.in_flight.lock().await;
        let now = SystemTime::now();
        if let Some(held) = self.cached() {
            if held.valid_at(now) {
                return Ok(Resolved {
                    credentials: held.credentials,
                    source: held.source,
                });
            }
        }
        // After a failure, requests get that failure until the backoff has passed.
        if let Ok(b) = self.backoff.lock() {
            if let (Some(until), Some(last)) = (b.not_before, &b.last_error) {
                if let Ok(left) = until.duration_since(now) {
                    return Err(
                        self.error(format!("{last} (next attempt in {} s)", left.as_secs() + 1))
                    );
                }
            }
        }
        self.fetch().await.map_err(|e| self.error(e))
    }

    fn error(&self, detail: String) -> ConnError {
        ConnError::new(
            Side::Upstream,
            Reason::Credentials,
            format!("AWS credentials: {detail}"),
        )
    }

    /// One fetch (the caller holds `in_flight`): counted, and on success held.
    async fn fetch(&self) -> Result<Resolved, String> {
        let result = self.ask().await;
        let metrics = crate::metrics::metrics();
        let resource = self.settings.resource.as_str();
        match result {
            Ok(resolved) => {
                metrics
                    .credential_refreshes
                    .with_label_values(&[resource, resolved.source, "success"])
                    .inc();
                let now = SystemTime::now();
                let expires_at = resolved.credentials.expiry();
                let refresh_at = match expires_at {
                    Some(expiry) => {
                        let left = expiry.duration_since(now).unwrap_or_default();
                        expiry - AHEAD.min(left / 2)
                    }
                    None => now + RECHECK,
                };
                if let Some(expiry) = expires_at {
                    let unix = expiry
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap_or_default();
                    metrics
                        .credential_expiration
                        .with_label_values(&[resource])
                        .set(unix.as_secs_f64());
                    info!(
                        resource,
                        source = resolved.source,
                        expires_in_s = expiry.duration_since(now).unwrap_or_default().as_secs(),
                        "AWS credentials obtained"
                    );
                }
                if let Ok(mut current) = self.current.lock() {
                    *current = Some(Held {
                        credentials: resolved.credentials.clone(),
                        source: resolved.source,
                        refresh_at,
                        expires_at,
                    });
                }
                if let Ok(mut b) = self.backoff.lock() {
                    *b = Backoff::default();
                }
                Ok(resolved)
            }
            Err((source, detail)) => {
                metrics
                    .credential_refreshes
                    .with_label_values(&[resource, source, "error"])
                    .inc();
                let message = format!("{source}: {detail}");
                if let Ok(mut b) = self.backoff.lock() {
                    // 1 s, 2 s, 4 s, … 60 s.
                    let wait = Duration::from_secs(1u64 << b.failures.min(6)).min(MAX_BACKOFF);
                    b.failures = b.failures.saturating_add(1);
                    let jitter = wait.mul_f64(fastrand::f64() * 0.2);
                    b.not_before = Some(SystemTime::now() + wait + jitter);
                    b.last_error = Some(message.clone());
                }
                Err(message)
            }
        }
    }

    /// Asks the chain (and STS) once. The error names the source that failed.
    async fn ask(&self) -> Result<Resolved, (&'static str, String)> {
        let s = &self.settings;
        let config = sdk_config(s).await;
        let base: SharedCredentialsProvider = match &s.fixed {
            Some(fixed) => SharedCredentialsProvider::new(fixed.clone()),
            None => SharedCredentialsProvider::new(default_chain(s, config.region().cloned())),
        };
        let Some(role) = &s.assume_role else {
            let credentials = base
                .provide_credentials()
                .await
                .map_err(|e| ("default chain", describe(&e)))?;
            let source = credentials
                .get_property::<SourceTag>()
                .map_or("default chain", |t| t.0);
            return Ok(Resolved {
                credentials,
                source,
            });
        };
        let session_name = role.session_name.clone().unwrap_or_else(|| {
            let mut name = format!("keyward-{}", s.resource);
            name.truncate(64);
            name
        });
        let mut builder = aws_config::sts::AssumeRoleProvider::builder(role.role_arn.clone())
            .session_name(session_name)
            .session_length(role.duration)
            .configure(&config);
        if let Some(id) = &role.external_id {
            builder = builder.external_id(id.clone());
        }
        let provider = builder.build_from_provider(base).await;
        let credentials = provider
            .provide_credentials()
            .await
            .map_err(|e| ("assume_role", describe(&e)))?;
        Ok(Resolved {
            credentials,
            source: "assume_role",
        })
    }
}

/// Who the resource's credentials are: STS `GetCallerIdentity` signed with them (`keyward
/// probe`). The source that answered and the caller's ARN.
pub async fn caller_identity(source: &Source) -> Result<(&'static str, String), String> {
    let resolved = source.resolve().await.map_err(|e| e.detail)?;
    let config = sdk_config(&source.settings).await;
    let sts = aws_sdk_sts::config::Builder::from(&config)
        .credentials_provider(SharedCredentialsProvider::new(resolved.credentials))
        .build();
    let who = aws_sdk_sts::Client::from_conf(sts)
        .get_caller_identity()
        .send()
        .await
        .map_err(|e| format!("STS GetCallerIdentity: {}", describe(&e)))?;
    Ok((resolved.source, who.arn().unwrap_or("(no ARN)").to_owned()))
}

/// The SDK configuration the chain and STS use: keyward's HTTP client, the region from
/// `AWS_REGION` or the profile, else the resource's; `AWS_ENDPOINT_URL_STS` and the rest of
/// the SDKs' environment as they read it.
pub async fn sdk_config(s: &Settings) -> SdkConfig {
    let region = RegionProviderChain::first_try(
        aws_config::environment::region::EnvironmentVariableRegionProvider::new(),
    )
    .or_else(region_from_profile(s.profile.as_deref()))
    .or_else(Region::new(s.region.clone()));
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http_client())
        .timeout_config(timeouts())
        .region(region);
    if let Some(profile) = &s.profile {
        loader = loader.profile_name(profile);
    }
    loader.load().await
}

fn region_from_profile(profile: Option<&str>) -> aws_config::profile::ProfileFileRegionProvider {
    let mut builder = aws_config::profile::ProfileFileRegionProvider::builder();
    if let Some(p) = profile {
        builder = builder.profile_name(p);
    }
    builder.build()
}

/// One HTTP client for every AWS call keyward makes: hyper on rustls with ring, the system's
/// roots.
fn http_client() -> SharedHttpClient {
    static CLIENT: OnceLock<SharedHttpClient> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            use aws_smithy_http_client::tls;
            aws_smithy_http_client::Builder::new()
                .tls_provider(tls::Provider::Rustls(
                    tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https()
        })
        .clone()
}

/// The AWS SDKs' default credential chain, built from aws-config's own providers in the SDKs'
/// order (as `DefaultCredentialsChain` builds it), each named: credentials carry the name of
/// the provider that gave them, and an error the name of the one that failed.
fn default_chain(s: &Settings, region: Option<Region>) -> CredentialsProviderChain {
    use aws_config::provider_config::ProviderConfig;
    let conf = ProviderConfig::default()
        .with_http_client(http_client())
        .with_region(region)
        .with_timeout_config(timeouts());
    let mut profile =
        aws_config::profile::ProfileFileCredentialsProvider::builder().configure(&conf);
    if let Some(name) = &s.profile {
        profile = profile.profile_name(name);
    }
    let env = aws_config::environment::EnvironmentVariableCredentialsProvider::new();
    let web = aws_config::web_identity_token::WebIdentityTokenCredentialsProvider::builder()
        .configure(&conf)
        .build();
    let container = aws_config::ecs::EcsCredentialsProvider::builder()
        .configure(&conf)
        .build();
    let imds = aws_config::imds::credentials::ImdsCredentialsProvider::builder()
        .configure(&conf)
        .build();
    CredentialsProviderChain::first_try("Environment", Named("environment", env))
        .or_else("Profile", Named("profile", profile.build()))
        .or_else("WebIdentityToken", Named("web_identity", web))
        .or_else("EcsContainer", Named("container", container))
        .or_else("Ec2InstanceMetadata", Named("imds", imds))
}

/// The name of the chain's provider that gave a set of credentials.
#[derive(Debug, Clone)]
struct SourceTag(&'static str);

/// A provider of the chain, named.
#[derive(Debug)]
struct Named<P>(&'static str, P);

impl<P: ProvideCredentials> ProvideCredentials for Named<P> {
    fn provide_credentials<'a>(
        &'a self,
    ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        aws_credential_types::provider::future::ProvideCredentials::new(async move {
            match self.1.provide_credentials().await {
                Ok(mut credentials) => {
                    credentials.set_property(SourceTag(self.0));
                    Ok(credentials)
                }
                // Not configured: the chain goes on to the next source.
                Err(e @ CredentialsError::CredentialsNotLoaded(_)) => Err(e),
                Err(e) => Err(CredentialsError::provider_error(format!(
                    "{}: {}",
                    self.0.replace('_', " "),
                    describe(&e)
                ))),
            }
        })
    }
}

/// An error and its sources, each said once: `service error: InvalidIdentityToken…`.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(e);
    while let Some(err) = current {
        let text = err.to_string();
        let text = text
            .strip_prefix("an error occurred while loading credentials")
            .map(|rest| rest.trim_start_matches(": ").to_owned())
            .unwrap_or(text);
        // An unmodeled service error: `unhandled error (Code)`, then its metadata
        // `Error { code: "Code", message: "…" }`: said as `Code: …`.
        let text = match (quoted(&text, "code: \""), quoted(&text, "message: \"")) {
            (Some(code), Some(message)) if text.starts_with("Error {") => {
                format!("{code}: {message}")
            }
            _ => text,
        };
        let generic = text.is_empty()
            || text == "service error"
            || (text.starts_with("unhandled error (") && err.source().is_some());
        if !generic && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = err.source();
    }
    parts.join(": ")
}

/// The text after `key` up to the next unescaped `"`.
fn quoted<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let start = text.find(key)? + key.len();
    let rest = &text[start..];
    let mut end = None;
    let mut escaped = false;
    for (i, c) in rest.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => {
                end = Some(i);
                break;
            }
            _ => escaped = false,
        }
    }
    end.map(|e| &rest[..e])
}

fn timeouts() -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .operation_timeout(Duration::from_secs(30))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            resource: "r".into(),
            region: "eu-west-1".into(),
            fixed: Some(Credentials::new("AKID", "secret", None, None, "test")),
            profile: None,
            assume_role: None,
        }
    }

    #[tokio::test]
    async fn static_keys_are_used_without_asking_anyone() {
        let source = Arc::new(Source::new(settings()));
        let c = source.credentials().await.unwrap();
        assert_eq!(c.access_key_id(), "AKID");
        let debug = format!("{source:?}");
        assert!(!debug.contains("secret"), "{debug}");
    }

    #[tokio::test]
    async fn held_credentials_are_served_until_they_expire_then_fetched_again() {
        let source = Arc::new(Source::new(Settings {
            fixed: None,
            ..settings()
        }));
        let now = SystemTime::now();
        let held = |refresh_in: i64, expires_in: i64| {
            let at = |s: i64| {
                if s >= 0 {
                    now + Duration::from_secs(s as u64)
                } else {
                    now - Duration::from_secs((-s) as u64)
                }
            };
            Held {
                credentials: Credentials::new("AKIDHELD", "s", Some("t".into()), None, "test"),
                source: "assume_role",
                refresh_at: at(refresh_in),
                expires_at: Some(at(expires_in)),
            }
        };
        *source.current.lock().unwrap() = Some(held(60, 120));
        assert_eq!(
            source.credentials().await.unwrap().access_key_id(),
            "AKIDHELD"
        );
        // Due for refresh but valid: still served at once (the refresh runs on its own).
        *source.current.lock().unwrap() = Some(held(-1, 120));
        *source.backoff.lock().unwrap() = Backoff {
            failures: 1,
            not_before: Some(now + Duration::from_secs(60)),
            last_error: Some("earlier failure".into()),
        };
        assert_eq!(
            source.credentials().await.unwrap().access_key_id(),
            "AKIDHELD"
        );
    }

    #[tokio::test]
    async fn errors_name_the_source_and_say_each_cause_once() {
        #[derive(Debug)]
        struct Failing;
        impl ProvideCredentials for Failing {
            fn provide_credentials<'a>(
                &'a self,
            ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
            where
                Self: 'a,
            {
                aws_credential_types::provider::future::ProvideCredentials::ready(Err(
                    CredentialsError::provider_error("AccessDenied: not allowed"),
                ))
            }
        }
        let e = Named("web_identity", Failing)
            .provide_credentials()
            .await
            .unwrap_err();
        assert_eq!(describe(&e), "web identity: AccessDenied: not allowed");
        let ok = Named("container", Credentials::new("a", "b", None, None, "t"))
            .provide_credentials()
            .await
            .unwrap();
        assert_eq!(
            ok.get_property::<SourceTag>().map(|t| t.0),
            Some("container")
        );
    }
}
