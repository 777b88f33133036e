//! Options of `http` resources (`http2`, `preserve_host`, `pass_client_auth`, timeouts,
//! `max_signed_body`), refused on other protocols with the key named.

use super::load::{site, Ctx};
use super::raw;
use super::types::*;

impl Ctx {
    pub(super) fn http_options(
        &mut self,
        res: &raw::Resource,
        protocol: Protocol,
        at: &str,
    ) -> HttpOptions {
        let mut opts = HttpOptions::default();
        // Each key, whether it is set, and the protocols it applies to besides http.
        let keys: [(&str, bool, Option<Protocol>); 7] = [
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
            ("allow_methods", res.allow_methods.is_some(), None),
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
        if let Some(v) = &res.allow_methods {
            for m in &v.value {
                match m.to_ascii_uppercase().as_str() {
                    "TRACE" => opts.allow_methods.push(::http::Method::TRACE),
                    "CONNECT" => opts.allow_methods.push(::http::Method::CONNECT),
                    other => self.problem(
                        site(v, format!("{at}.allow_methods")),
                        format!("\"{other}\": only TRACE and CONNECT are refused by default, so only they can be allowed"),
                    ),
                }
            }
        }
        opts
    }
}
