//! `upstream`: `host:port` for byte and database protocols, a URL for `http`.

use serde_saphyr::Spanned;

use super::load::{site, Ctx};
use super::types::*;

impl Ctx {
    pub(super) fn upstream(
        &mut self,
        protocol: Protocol,
        value: &Spanned<String>,
        path: &str,
    ) -> Option<Upstream> {
        let path = path.to_owned();
        let text = value.value.trim();
        if protocol == Protocol::Http {
            let url: ::http::Uri = match text.parse() {
                Ok(url) => url,
                // The text is not quoted when it may hold userinfo (a password).
                Err(e) if text.contains('@') => {
                    self.problem(site(value, path), format!("not a URL: {e}"));
                    return None;
                }
                Err(e) => {
                    self.problem(site(value, path), format!("\"{text}\" is not a URL: {e}"));
                    return None;
                }
            };
            if url.authority().is_some_and(|a| a.as_str().contains('@')) {
                // It would reach the upstream inside `Host`, the logs and `/resources`.
                self.problem(
                    site(value, path),
                    "the URL holds credentials (user:password@): keyward never sends or shows them; put them in `auth` (e.g. type: basic)",
                );
                return None;
            }
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
}

/// Splits `host:port` / `[v6]:port`.
pub(super) fn split_host_port(text: &str) -> Option<(String, u16)> {
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
