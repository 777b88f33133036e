//! `auth`: what keyward injects, per protocol and auth type. Each type takes its own keys;
//! a key of another type is an error naming it (with its line), as is a missing one.

use serde_saphyr::Spanned;

use super::load::{site, Ctx};
use super::problems::Site;
use super::raw;
use super::types::*;

impl Ctx {
    pub(super) fn auth(&mut self, protocol: Protocol, auth: &raw::Auth, at: &str) -> Option<Auth> {
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
        let fields: [(&str, Option<Site>); 24] = [
            ("username", auth.username.as_ref().map(|v| site(v, ""))),
            ("password", auth.password.as_ref().map(|v| site(v, ""))),
            ("database", auth.database.as_ref().map(|v| site(v, ""))),
            ("token", auth.token.as_ref().map(|v| site(v, ""))),
            ("header", auth.header.as_ref().map(|v| site(v, ""))),
            ("query", auth.query.as_ref().map(|v| site(v, ""))),
            ("value", auth.value.as_ref().map(|v| site(v, ""))),
            ("token_url", auth.token_url.as_ref().map(|v| site(v, ""))),
            (
                "allow_plaintext_token_url",
                auth.allow_plaintext_token_url.as_ref().map(|v| site(v, "")),
            ),
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
                "allow_plaintext_token_url",
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
                let plaintext_token_url = auth
                    .allow_plaintext_token_url
                    .as_ref()
                    .is_some_and(|v| v.value);
                if let (Some(v), Some(url)) = (&auth.token_url, &token_url) {
                    if url.scheme_str() == Some("http") && !plaintext_token_url {
                        self.problem(
                            site(v, format!("{at}.token_url")),
                            "an http:// token endpoint would receive the client secret and refresh token unencrypted: use https://, or set auth.allow_plaintext_token_url: true to accept that",
                        );
                    }
                }
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
                    plaintext_token_url,
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

pub(super) fn auth_type_name(kind: AuthType) -> &'static str {
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
