//! OAuth2 tokens keyward fetches itself: client_credentials (RFC 6749 §4.4) or refresh_token
//! (§6) grant. One cached token per resource, refreshed early, at most one token request in
//! flight (single-flight), retried with exponential backoff and jitter. The token and the
//! client secret never reach a log line.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::error::{ConnError, Reason, Side};
use crate::http::connector::Connector;
use crate::secret::Secret;

/// Attempts per refresh before the error goes to the app.
const ATTEMPTS: u32 = 3;
/// First backoff; doubles per attempt, plus up to the same again of jitter.
const BACKOFF: Duration = Duration::from_millis(100);
/// Used when the endpoint gives no `expires_in`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// A token response larger than this is refused.
const MAX_RESPONSE: usize = 64 * 1024;

/// The resolved settings of an `oauth2` resource.
#[derive(Debug)]
pub struct Settings {
    /// The resource (metric label).
    pub resource: String,
    /// Token endpoint.
    pub token_url: http::Uri,
    /// Client id.
    pub client_id: String,
    /// Client secret (client_credentials, or client auth for refresh).
    pub client_secret: Option<Secret>,
    /// Refresh token: use the refresh_token grant.
    pub refresh_token: Option<Secret>,
    /// Scopes (space-joined in the request).
    pub scopes: Vec<String>,
    /// Audience parameter.
    pub audience: Option<String>,
    /// Extra form fields.
    pub params: Vec<(String, String)>,
    /// HTTP Basic client authentication (RFC 6749 §2.3.1) instead of body fields.
    pub client_auth_basic: bool,
    /// A signed JWT: the jwt_bearer grant's assertion, or the private_key_jwt client assertion.
    pub assertion: Option<Assertion>,
}

/// What a signed assertion needs (RFC 7523).
#[derive(Debug)]
pub struct Assertion {
    /// The signing key (and `kid`).
    pub key: crate::http::jwt::SigningKey,
    /// `grant_type=…jwt-bearer` (§2.1) rather than a client assertion (§2.2).
    pub grant: bool,
    /// `iss` (the client id for a client assertion).
    pub issuer: String,
    /// `sub`.
    pub subject: Option<String>,
    /// `aud`.
    pub audience: String,
    /// `exp - iat`.
    pub lifetime: Duration,
    /// Scopes go in a `scope` claim (Google) instead of the form.
    pub scope_claim: bool,
}

/// RFC 7523's grant type and client assertion type.
const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const JWT_CLIENT_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// A client assertion lives at most this long: it authenticates one request.
const CLIENT_ASSERTION_LIFETIME: Duration = Duration::from_secs(300);

impl Assertion {
    /// The assertion `o` describes, with its key's PEM or the Google service-account file
    /// (already read). `None` when `o` signs nothing.
    pub fn build(
        o: &crate::config::OAuth2,
        key_pem: Option<&Secret>,
        google: Option<&Secret>,
    ) -> Result<Option<Self>, String> {
        use crate::http::jwt::{Algorithm, SigningKey};
        if !o.jwt_bearer && !o.private_key_jwt {
            return Ok(None);
        }
        let a = o.assertion.as_ref();
        let token_url = o.token_url.to_string();
        let lifetime = a.map_or(DEFAULT_LIFETIME, |a| a.lifetime);
        let subject = a.and_then(|a| a.subject.clone());
        let audience = a.and_then(|a| a.audience.clone());
        if let Some(file) = google {
            let sa: serde_json::Value = serde_json::from_str(file.expose()).map_err(|e| {
                format!("google_service_account: not a service-account JSON key file ({e})")
            })?;
            let field = |name: &str| {
                sa[name].as_str().map(str::to_owned).ok_or_else(|| {
                    format!("google_service_account: the key file has no \"{name}\"")
                })
            };
            if sa["type"].as_str().is_some_and(|t| t != "service_account") {
                return Err(format!(
                    "google_service_account: the key file is of type \"{}\", not service_account",
                    sa["type"].as_str().unwrap_or_default()
                ));
            }
            let token_uri = field("token_uri")?;
            if token_uri.trim_end_matches('/') != token_url.trim_end_matches('/') {
                return Err(format!("google_service_account: the key file's token_uri is {token_uri} but the token URL is {token_url}: set token_url: {token_uri}"));
            }
            let key = SigningKey::from_pem(
                field("private_key")?.as_bytes(),
                Algorithm::Rs256,
                Some(field("private_key_id")?),
            )
            .map_err(|e| format!("google_service_account private_key: {e}"))?;
            return Ok(Some(Self {
                key,
                grant: true,
                issuer: field("client_email")?,
                subject,
                audience: audience.unwrap_or(token_uri),
                lifetime,
                scope_claim: true,
            }));
        }
        let (Some(a), Some(pem)) = (a, key_pem) else {
            return Err("the assertion key is missing".to_owned());
        };
        let algorithm = Algorithm::parse(&a.algorithm)
            .ok_or_else(|| format!("\"{}\" is not RS256 or ES256", a.algorithm))?;
        let key = SigningKey::from_pem(pem.expose().as_bytes(), algorithm, a.key_id.clone())
            .map_err(|e| format!("assertion.key: {e}"))?;
        let issuer = if o.private_key_jwt {
            o.client_id.clone()
        } else {
            a.issuer.clone().unwrap_or_default()
        };
        Ok(Some(Self {
            key,
            grant: o.jwt_bearer,
            issuer,
            subject,
            audience: audience.unwrap_or(token_url),
            lifetime,
            scope_claim: false,
        }))
    }

    /// The JWT, signed now with a fresh `jti`.
    fn sign(&self, scopes: &[String]) -> Result<zeroize::Zeroizing<String>, String> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_err(|_| "the clock is before 1970".to_owned())?
            .as_secs();
        let lifetime = if self.grant {
            self.lifetime
        } else {
            self.lifetime.min(CLIENT_ASSERTION_LIFETIME)
        };
        let mut claims = serde_json::json!({
            "iss": self.issuer,
            "aud": self.audience,
            "iat": now,
            "exp": now + lifetime.as_secs().max(1),
            "jti": self.key.jti()?,
        });
        match (&self.subject, self.grant) {
            (Some(sub), _) => claims["sub"] = sub.clone().into(),
            (None, false) => claims["sub"] = self.issuer.clone().into(),
            (None, true) => {}
        }
        if self.scope_claim && !scopes.is_empty() {
            claims["scope"] = scopes.join(" ").into();
        }
        self.key
            .sign(&claims)
            .map(zeroize::Zeroizing::new)
            .map_err(|e| format!("signing the assertion: {e}"))
    }
}

#[derive(Clone)]
struct Token {
    value: Secret,
    refresh_at: Instant,
    expires_at: Instant,
}

/// A resource's token cache.
pub struct TokenSource {
    settings: Settings,
    client: Client<Connector, Full<Bytes>>,
    current: Mutex<Option<Token>>,
    refresh_token: Mutex<Option<Secret>>,
    in_flight: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("token_url", &self.settings.token_url)
            .finish_non_exhaustive()
    }
}

/// `at + after`, saturating: an endpoint's `expires_in` near `u64::MAX` must not overflow the
/// clock (it means "practically never"; a year is as long as keyward waits).
pub fn later(at: Instant, after: Duration) -> Instant {
    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
    at.checked_add(after.min(YEAR)).unwrap_or(at)
}

/// When to refresh a token that lives `lifetime`: at 80 % of it, or 60 s before expiry,
/// whichever is earlier, but never before half of it (so a short-lived token is still used).
pub fn refresh_after(lifetime: Duration) -> Duration {
    let eighty = lifetime.mul_f64(0.8);
    let minute_before = lifetime.saturating_sub(Duration::from_secs(60));
    eighty.min(minute_before).max(lifetime / 2)
}

impl TokenSource {
    /// A token source using `connector` to reach the token endpoint.
    pub fn new(settings: Settings, connector: Connector) -> Self {
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let refresh_token = Mutex::new(settings.refresh_token.clone());
        Self {
            settings,
            client,
            current: Mutex::new(None),
            refresh_token,
            in_flight: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// The token endpoint.
    pub fn token_url(&self) -> &http::Uri {
        &self.settings.token_url
    }

    /// A usable token: the cached one, or a fresh one. When the cached one is due for refresh
    /// but still valid, it is returned at once and refreshed in the background.
    pub async fn token(self: &Arc<Self>) -> Result<Secret, ConnError> {
        let now = Instant::now();
        if let Some(token) = self.cached() {
            if now < token.refresh_at {
                return Ok(token.value);
            }
            if now < token.expires_at {
                if let Ok(guard) = self.in_flight.clone().try_lock_owned() {
                    let this = self.clone();
                    tokio::spawn(async move {
                        let _guard = guard;
                        if let Err(e) = this.fetch_with_retries().await {
                            warn!(
                                reason = e.reason.as_str(),
                                "background token refresh failed: {}", e.detail
                            );
                        }
                    });
                }
                return Ok(token.value);
            }
        }
        // Boxed: the fetch (an HTTPS request) is a large future, and every request's future
        // would carry its space although the cached token above serves nearly all of them.
        Box::pin(self.refresh(None)).await
    }

    /// Forgets `stale` (the upstream answered 401 to it) and gets a new token.
    pub async fn replace(self: &Arc<Self>, stale: &Secret) -> Result<Secret, ConnError> {
        Box::pin(self.refresh(Some(stale))).await
    }

    fn cached(&self) -> Option<Token> {
        self.current.lock().ok().and_then(|t| t.clone())
    }

    /// Single-flight: whoever holds `in_flight` fetches; the others wait and reuse the result.
    async fn refresh(&self, stale: Option<&Secret>) -> Result<Secret, ConnError> {
        let _guard = self.in_flight.lock().await;
        if let Some(token) = self.cached() {
            let fresh =
                Instant::now() < token.expires_at && stale.is_none_or(|s| *s != token.value);
            if fresh {
                return Ok(token.value);
            }
        }
        crate::audit::token_fetched();
        self.fetch_with_retries().await
    }

    async fn fetch_with_retries(&self) -> Result<Secret, ConnError> {
        let mut last = None;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                let base = BACKOFF * 2u32.pow(attempt - 1);
                let jitter = base.mul_f64(fastrand::f64());
                tokio::time::sleep(base + jitter).await;
            }
            let result = self.fetch().await;
            let outcome = if result.is_ok() { "success" } else { "error" };
            crate::metrics::metrics()
                .oauth2_refreshes
                .with_label_values(&[self.settings.resource.as_str(), outcome])
                .inc();
            match result {
                Ok(token) => {
                    let value = token.value.clone();
                    if let Ok(mut current) = self.current.lock() {
                        *current = Some(token);
                    }
                    return Ok(value);
                }
                Err(e) => {
                    debug!(attempt, "token request failed: {e}");
                    last = Some(e);
                }
            }
        }
        let detail = last.unwrap_or_else(|| "no attempt made".to_owned());
        Err(ConnError::new(
            Side::Upstream,
            Reason::TokenEndpoint,
            format!("oauth2 token endpoint: {detail}"),
        ))
    }

    async fn fetch(&self) -> Result<Token, String> {
        let s = &self.settings;
        let refresh = self.refresh_token.lock().ok().and_then(|r| r.clone());
        let (body, basic) = token_request_body(s, refresh.as_ref())?;
        let mut request = http::Request::post(s.token_url.clone())
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json");
        if let Some(value) = basic {
            request = request.header(http::header::AUTHORIZATION, value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.as_bytes().to_vec())))
            .map_err(|e| format!("building the request: {e}"))?;
        let sent = Instant::now();
        let response = tokio::time::timeout(Duration::from_secs(30), self.client.request(request))
            .await
            .map_err(|_| "no response within 30s".to_owned())?
            .map_err(|e| crate::http::connector::describe_client_error(&e).detail)?;
        let status = response.status();
        let bytes = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| format!("reading the response: {e}"))?
            .to_bytes();
        // The raw token response (it holds the token) is wiped once parsed.
        let bytes = zeroize::Zeroizing::new(bytes.to_vec());
        let json: serde_json::Value =
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        if !status.is_success() {
            let error = json["error"].as_str().unwrap_or("");
            let description = json["error_description"].as_str().unwrap_or("");
            let what = [error, description]
                .iter()
                .filter(|s| !s.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(": ");
            return Err(if what.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {what}")
            });
        }
        let Some(access) = json["access_token"].as_str() else {
            return Err(format!(
                "HTTP {status} without access_token in the JSON response"
            ));
        };
        if let Some(new_refresh) = json["refresh_token"].as_str() {
            if let Ok(mut r) = self.refresh_token.lock() {
                if r.is_some() {
                    *r = Some(Secret::new(new_refresh));
                }
            }
        }
        let lifetime = json["expires_in"]
            .as_u64()
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_LIFETIME);
        debug!(expires_in = lifetime.as_secs(), "oauth2 token obtained");
        let expires = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| (d + lifetime).as_secs_f64())
            .unwrap_or_default();
        crate::metrics::metrics()
            .oauth2_token_expiration
            .with_label_values(&[s.resource.as_str()])
            .set(expires);
        Ok(Token {
            value: Secret::new(access),
            refresh_at: later(sent, refresh_after(lifetime)),
            expires_at: later(sent, lifetime),
        })
    }
}

/// The form body of a token request (RFC 6749 §4.4.2 / §6) and, with Basic client
/// authentication, the `Authorization` value (§2.3.1: id and secret form-urlencoded first).
fn token_request_body(
    s: &Settings,
    refresh: Option<&Secret>,
) -> Result<(zeroize::Zeroizing<String>, Option<http::HeaderValue>), String> {
    let mut form = form_urlencoded::Serializer::new(String::new());
    let grant = s.assertion.as_ref().filter(|a| a.grant);
    match (refresh, grant) {
        (Some(token), _) => {
            form.append_pair("grant_type", "refresh_token");
            form.append_pair("refresh_token", token.expose());
        }
        (None, Some(assertion)) => {
            form.append_pair("grant_type", JWT_BEARER_GRANT);
            form.append_pair("assertion", &assertion.sign(&s.scopes)?);
        }
        (None, None) => {
            form.append_pair("grant_type", "client_credentials");
        }
    }
    let scope_claim = grant.is_some_and(|a| a.scope_claim);
    if !s.scopes.is_empty() && !scope_claim {
        form.append_pair("scope", &s.scopes.join(" "));
    }
    if let Some(audience) = &s.audience {
        form.append_pair("audience", audience);
    }
    for (k, v) in &s.params {
        form.append_pair(k, v);
    }
    if let Some(client) = s.assertion.as_ref().filter(|a| !a.grant) {
        // private_key_jwt (RFC 7523 §2.2): the client authenticates with a signed JWT.
        form.append_pair("client_id", &s.client_id);
        form.append_pair("client_assertion_type", JWT_CLIENT_ASSERTION);
        form.append_pair("client_assertion", &client.sign(&s.scopes)?);
        return Ok((zeroize::Zeroizing::new(form.finish()), None));
    }
    if grant.is_some() && s.client_secret.is_none() {
        // jwt_bearer without a client secret: the assertion is the whole authentication.
        if !s.client_id.is_empty() {
            form.append_pair("client_id", &s.client_id);
        }
        return Ok((zeroize::Zeroizing::new(form.finish()), None));
    }
    let mut basic = None;
    if s.client_auth_basic {
        let enc = |v: &str| form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
        let secret = zeroize::Zeroizing::new(
            s.client_secret
                .as_ref()
                .map(|x| enc(x.expose()))
                .unwrap_or_default(),
        );
        let creds = zeroize::Zeroizing::new(format!("{}:{}", enc(&s.client_id), secret.as_str()));
        let encoded = base64::engine::general_purpose::STANDARD.encode(creds.as_bytes());
        let mut value = http::HeaderValue::try_from(format!("Basic {encoded}"))
            .map_err(|_| "client credentials are not a valid header value".to_owned())?;
        value.set_sensitive(true);
        basic = Some(value);
    } else {
        form.append_pair("client_id", &s.client_id);
        if let Some(secret) = &s.client_secret {
            form.append_pair("client_secret", secret.expose());
        }
    }
    Ok((zeroize::Zeroizing::new(form.finish()), basic))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expires_in_near_u64_max_does_not_overflow_the_clock() {
        let now = Instant::now();
        let lifetime = Duration::from_secs(u64::MAX);
        let refresh = later(now, refresh_after(lifetime));
        let expiry = later(now, lifetime);
        assert!(refresh > now && expiry >= refresh);
    }

    #[test]
    fn refreshes_at_eighty_percent_or_a_minute_early_but_not_before_half() {
        assert_eq!(
            refresh_after(Duration::from_secs(3600)),
            Duration::from_secs(2880)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(200)),
            Duration::from_secs(140)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(2)),
            Duration::from_secs(1)
        );
    }
}
