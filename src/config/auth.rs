//! `auth`: what keyward injects, per protocol and auth type. The YAML's shape (which keys a
//! type takes, which it needs) is enforced by `raw::Auth`'s deserializer; this checks what
//! needs the protocol or the values: the type against the protocol, empty values, secret
//! references, the OAuth2 token endpoint.

use std::time::Duration;

use serde_saphyr::Spanned;

use super::load::{site, Ctx};
use super::raw::{self, AuthType};
use super::types::*;

impl Ctx {
    pub(super) fn auth(
        &mut self,
        protocol: Protocol,
        auth: &Spanned<raw::Auth>,
        at: &str,
    ) -> Option<Auth> {
        use AuthType as T;
        let kind = auth.value.kind();
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
            let names: Vec<&str> = allowed_for_protocol.iter().map(|t| t.name()).collect();
            self.problem(
                site(auth, format!("{at}.type")),
                format!(
                    "auth type \"{}\" does not apply to protocol {}; use one of: {}",
                    kind.name(),
                    protocol_name(protocol),
                    names.join(", ")
                ),
            );
            return None;
        }
        let before = self.problems.len();
        let result = match &auth.value {
            raw::Auth::None => Some(Auth::None),
            raw::Auth::Password(p) => {
                let username = match &p.username {
                    Some(u) => self.non_empty(u, at, "username"),
                    // Redis logs in as `default` without one; the databases need it.
                    None if protocol == Protocol::Redis => None,
                    None => {
                        self.problem(
                            site(auth, format!("{at}.type")),
                            "auth type \"password\" needs \"username\"",
                        );
                        None
                    }
                };
                Some(Auth::Password {
                    username,
                    password: self.secret_at(&p.password, at, "password"),
                    database: p.database.as_ref().map(|v| v.value.clone()),
                })
            }
            raw::Auth::RdsIam(r) => {
                let username = self.non_empty(&r.username, at, "username");
                let region = self.non_empty(&r.region, at, "region");
                let credentials = self.aws(&r.aws, at);
                Some(Auth::RdsIam {
                    username: username?,
                    region: region?,
                    database: r.database.as_ref().map(|v| v.value.clone()),
                    credentials,
                })
            }
            raw::Auth::ApiKey(k) => {
                let place = match &k.place {
                    raw::ApiKeyIn::Header(h) => {
                        self.non_empty(h, at, "header").map(ApiKeyPlace::Header)
                    }
                    raw::ApiKeyIn::Query(q) => {
                        self.non_empty(q, at, "query").map(ApiKeyPlace::Query)
                    }
                };
                let value = self.required_secret(&k.value, at, "value");
                Some(Auth::ApiKey {
                    place: place?,
                    value: value?,
                })
            }
            raw::Auth::Basic(b) => {
                let username = self.non_empty(&b.username, at, "username");
                let password = self.required_secret(&b.password, at, "password");
                Some(Auth::Basic {
                    username: username?,
                    password: password?,
                })
            }
            raw::Auth::Bearer(b) => Some(Auth::Bearer {
                token: self.required_secret(&b.token, at, "token")?,
            }),
            raw::Auth::Oauth2(o) => self.oauth2(o, at),
            raw::Auth::AwsSigv4(s) => {
                let service = self.non_empty(&s.service, at, "service");
                let region = self.non_empty(&s.region, at, "region");
                let credentials = self.aws(&s.aws, at);
                Some(Auth::AwsSigV4 {
                    service: service?,
                    region: region?,
                    credentials,
                    unsigned_payload: s.unsigned_payload,
                })
            }
        };
        if self.problems.len() > before {
            None
        } else {
            result
        }
    }

    fn oauth2(&mut self, o: &raw::OAuth2Auth, at: &str) -> Option<Auth> {
        let url_path = format!("{at}.token_url");
        let (token_url, tls) = match self.upstream(Protocol::Http, &o.token_url, &url_path) {
            Some(up) => {
                let tls = self.tls(
                    Protocol::Http,
                    o.tls.as_ref(),
                    None,
                    Some(&up),
                    &o.token_url,
                    &url_path,
                    &format!("{at}.tls"),
                );
                (up.url, tls)
            }
            None => (None, None),
        };
        if let Some(url) = &token_url {
            if url.scheme_str() == Some("http") && !o.allow_plaintext_token_url {
                self.problem(
                    site(&o.token_url, url_path),
                    "an http:// token endpoint would receive the client secret and refresh token unencrypted: use https://, or set auth.allow_plaintext_token_url: true to accept that",
                );
            }
        }
        let client_id = match &o.client_id {
            Some(id) => self.non_empty(id, at, "client_id"),
            None => Some(String::new()),
        };
        let mut private_key_jwt = false;
        let client_auth_basic = match &o.client_auth {
            None => true,
            Some(v) if v.value == "basic" => true,
            Some(v) if v.value == "body" => false,
            Some(v) if v.value == "private_key_jwt" => {
                private_key_jwt = true;
                false
            }
            Some(v) => {
                self.problem(
                    site(v, format!("{at}.client_auth")),
                    format!("\"{}\" is not basic, body or private_key_jwt", v.value),
                );
                true
            }
        };
        let jwt_bearer = match &o.grant {
            None => o.google_service_account.is_some(),
            Some(g) if g.value == "jwt_bearer" => true,
            Some(g) if g.value == "client_credentials" => false,
            Some(g) => {
                self.problem(
                    site(g, format!("{at}.grant")),
                    format!("\"{}\" is not client_credentials or jwt_bearer (a refresh_token key selects the refresh_token grant)", g.value),
                );
                false
            }
        };
        let google_service_account = o
            .google_service_account
            .as_ref()
            .and_then(|v| self.secret(v, &format!("{at}.google_service_account")));
        let assertion = self.assertion(o, at, jwt_bearer, private_key_jwt);
        let client_secret = self.secret_at(&o.client_secret, at, "client_secret");
        let refresh_token = self.secret_at(&o.refresh_token, at, "refresh_token");
        if private_key_jwt {
            if let Some(s) = &o.client_secret {
                self.problem(
                    site(s, format!("{at}.client_secret")),
                    "client_auth: private_key_jwt authenticates with a signed assertion instead of a client secret: remove client_secret",
                );
            }
            if o.client_id.is_none() {
                self.problem(
                    site(&o.token_url, format!("{at}.client_id")),
                    "client_auth: private_key_jwt needs client_id (the assertion's iss and sub)",
                );
            }
            if jwt_bearer {
                self.problem(
                    site(&o.token_url, format!("{at}.client_auth")),
                    "client_auth: private_key_jwt goes with the client_credentials grant",
                );
            }
        }
        if jwt_bearer && o.refresh_token.is_some() {
            self.problem(
                site(&o.token_url, format!("{at}.refresh_token")),
                "grant: jwt_bearer signs a new assertion for each token: remove refresh_token",
            );
        }
        Some(Auth::OAuth2(Box::new(OAuth2 {
            token_url: token_url?,
            client_id: client_id?,
            client_secret,
            refresh_token,
            scopes: o.scopes.clone(),
            audience: o.audience.clone(),
            params: o.params.clone().into_iter().collect(),
            client_auth_basic,
            jwt_bearer,
            private_key_jwt,
            assertion,
            google_service_account,
            tls: tls?,
            plaintext_token_url: o.allow_plaintext_token_url,
        })))
    }

    /// `assertion`, as the grant and client authentication need it.
    fn assertion(
        &mut self,
        o: &raw::OAuth2Auth,
        at: &str,
        jwt_bearer: bool,
        private_key_jwt: bool,
    ) -> Option<Assertion> {
        let at = format!("{at}.assertion");
        let google = o.google_service_account.is_some();
        let Some(a) = &o.assertion else {
            if (jwt_bearer || private_key_jwt) && !google {
                let what = if jwt_bearer {
                    "grant: jwt_bearer"
                } else {
                    "client_auth: private_key_jwt"
                };
                self.problem(
                    site(&o.token_url, at),
                    format!("{what} needs an assertion block (key, algorithm, issuer) or google_service_account"),
                );
            }
            return None;
        };
        if !jwt_bearer && !private_key_jwt {
            self.problem(
                site(&o.token_url, at),
                "an assertion is signed for grant: jwt_bearer or client_auth: private_key_jwt: set one of them",
            );
            return None;
        }
        if google {
            for (key, v) in [
                ("key", &a.key),
                ("algorithm", &a.algorithm),
                ("issuer", &a.issuer),
                ("key_id", &a.key_id),
            ] {
                if let Some(v) = v {
                    self.problem(
                        site(v, format!("{at}.{key}")),
                        format!("the google_service_account file sets the {key}: remove it here"),
                    );
                }
            }
        }
        let algorithm = match &a.algorithm {
            Some(v) if crate::http::jwt::Algorithm::parse(&v.value).is_none() => {
                self.problem(
                    site(v, format!("{at}.algorithm")),
                    format!("\"{}\" is not RS256 or ES256", v.value),
                );
                String::new()
            }
            Some(v) => v.value.clone(),
            None if google => "RS256".to_owned(),
            None => {
                if a.key.is_some() {
                    self.problem(
                        site(&o.token_url, format!("{at}.algorithm")),
                        "the assertion needs algorithm: RS256 or ES256",
                    );
                }
                String::new()
            }
        };
        let key = match &a.key {
            Some(k) => self.secret(k, &format!("{at}.key")),
            None if google => None,
            None => {
                self.problem(
                    site(&o.token_url, format!("{at}.key")),
                    "the assertion needs key (a PKCS#8 PEM private key)",
                );
                None
            }
        };
        if jwt_bearer && !google && a.issuer.is_none() {
            self.problem(
                site(&o.token_url, format!("{at}.issuer")),
                "grant: jwt_bearer needs assertion.issuer (the iss claim)",
            );
        }
        let lifetime = match &a.lifetime {
            None => Some(Duration::from_secs(3600)),
            Some(v) => {
                let path = format!("{at}.lifetime");
                match self.duration(v, &path, false) {
                    Some(d) if d > Duration::from_secs(3600) => {
                        self.problem(site(v, path), "an assertion lives at most 1h");
                        None
                    }
                    d => d,
                }
            }
        };
        let text = |v: &Option<Spanned<String>>| v.as_ref().map(|v| v.value.clone());
        Some(Assertion {
            key,
            algorithm,
            issuer: text(&a.issuer),
            subject: text(&a.subject),
            audience: text(&a.audience),
            key_id: text(&a.key_id),
            lifetime: lifetime?,
        })
    }

    /// A value that must not be blank.
    fn non_empty(&mut self, value: &Spanned<String>, at: &str, key: &str) -> Option<String> {
        if value.value.trim().is_empty() {
            self.problem(site(value, format!("{at}.{key}")), "must not be empty");
            return None;
        }
        Some(value.value.clone())
    }

    /// A secret reference that must not be blank.
    fn required_secret(
        &mut self,
        value: &Spanned<String>,
        at: &str,
        key: &str,
    ) -> Option<SecretRef> {
        self.non_empty(value, at, key)?;
        self.secret(value, &format!("{at}.{key}"))
    }

    /// An optional secret reference.
    fn secret_at(
        &mut self,
        value: &Option<Spanned<String>>,
        at: &str,
        key: &str,
    ) -> Option<SecretRef> {
        value
            .as_ref()
            .and_then(|v| self.secret(v, &format!("{at}.{key}")))
    }

    fn aws(&mut self, keys: &raw::AwsKeys, at: &str) -> AwsCredentials {
        if let (Some(p), Some(_)) = (&keys.profile, &keys.access_key_id) {
            self.problem(
                site(p, format!("{at}.profile")),
                "a profile picks credentials from the shared config files, but access_key_id is set: keep one of them",
            );
        }
        AwsCredentials {
            access_key_id: self.secret_at(&keys.access_key_id, at, "access_key_id"),
            secret_access_key: self.secret_at(&keys.secret_access_key, at, "secret_access_key"),
            session_token: self.secret_at(&keys.session_token, at, "session_token"),
            profile: keys
                .profile
                .as_ref()
                .and_then(|p| self.non_empty(p, at, "profile")),
            assume_role: keys
                .assume_role
                .as_ref()
                .and_then(|r| self.assume_role(r, &format!("{at}.assume_role"))),
        }
    }

    /// `assume_role`, checked as STS would (ARN shape, session name and external id
    /// characters and lengths, duration at most 12 h).
    fn assume_role(&mut self, r: &raw::AssumeRole, at: &str) -> Option<AssumeRole> {
        let before = self.problems.len();
        let arn = r.role_arn.value.trim();
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        if parts.len() != 6
            || parts[0] != "arn"
            || parts[2] != "iam"
            || !parts[5].starts_with("role/")
            || parts[5].len() <= 5
        {
            self.problem(
                site(&r.role_arn, format!("{at}.role_arn")),
                format!("\"{arn}\" is not an IAM role ARN (arn:aws:iam::123456789012:role/NAME)"),
            );
        }
        let sts_chars = |extra: &str, v: &str| {
            v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) || extra.contains(c))
        };
        if let Some(name) = &r.session_name {
            let v = name.value.as_str();
            if !(2..=64).contains(&v.len()) || !sts_chars("", v) {
                self.problem(
                    site(name, format!("{at}.session_name")),
                    format!("\"{v}\" is not a role session name: 2 to 64 of letters, digits and _+=,.@-"),
                );
            }
        }
        if let Some(id) = &r.external_id {
            let v = id.value.as_str();
            if !(2..=1224).contains(&v.len()) || !sts_chars(":/", v) {
                self.problem(
                    site(id, format!("{at}.external_id")),
                    "an external id is 2 to 1224 of letters, digits and _+=,.@:/-",
                );
            }
        }
        let duration = match &r.duration {
            None => Some(Duration::from_secs(3600)),
            Some(d) => {
                let path = format!("{at}.duration");
                match self.duration(d, &path, false) {
                    Some(v) if v > Duration::from_secs(12 * 3600) => {
                        self.problem(site(d, path), "STS issues role sessions of at most 12h");
                        None
                    }
                    Some(v) if v.subsec_nanos() != 0 => {
                        self.problem(site(d, path), "STS counts role sessions in whole seconds");
                        None
                    }
                    v => v,
                }
            }
        };
        if self.problems.len() > before {
            return None;
        }
        Some(AssumeRole {
            role_arn: arn.to_owned(),
            session_name: r.session_name.as_ref().map(|n| n.value.clone()),
            external_id: r.external_id.as_ref().map(|n| n.value.clone()),
            duration: duration?,
        })
    }
}
