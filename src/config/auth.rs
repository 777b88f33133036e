//! `auth`: what keyward injects, per protocol and auth type. The YAML's shape (which keys a
//! type takes, which it needs) is enforced by `raw::Auth`'s deserializer; this checks what
//! needs the protocol or the values: the type against the protocol, empty values, secret
//! references, the OAuth2 token endpoint.

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
        let client_id = self.non_empty(&o.client_id, at, "client_id");
        let client_auth_basic = match &o.client_auth {
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
        let client_secret = self.secret_at(&o.client_secret, at, "client_secret");
        let refresh_token = self.secret_at(&o.refresh_token, at, "refresh_token");
        Some(Auth::OAuth2(Box::new(OAuth2 {
            token_url: token_url?,
            client_id: client_id?,
            client_secret,
            refresh_token,
            scopes: o.scopes.clone(),
            audience: o.audience.clone(),
            params: o.params.clone().into_iter().collect(),
            client_auth_basic,
            tls: tls?,
            plaintext_token_url: o.allow_plaintext_token_url,
        })))
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
        AwsCredentials {
            access_key_id: self.secret_at(&keys.access_key_id, at, "access_key_id"),
            secret_access_key: self.secret_at(&keys.secret_access_key, at, "secret_access_key"),
            session_token: self.secret_at(&keys.session_token, at, "session_token"),
        }
    }
}
