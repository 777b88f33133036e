//! Upstream `tls` (and an OAuth2 token endpoint's): mode, CA bundle, client identity, name,
//! versions, PostgreSQL negotiation; resource values over `defaults.tls`.

use std::net::Ipv4Addr;

use rustls::pki_types::ServerName;
use serde_saphyr::Spanned;

use super::load::{pick, site, Ctx};
use super::raw;
use super::types::*;

impl Ctx {
    /// `upstream_at` is the key path of the upstream value (for errors about the name);
    /// `tls_at` the path of the tls block.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn tls(
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
}
