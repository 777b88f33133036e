//! `listen`, `listen_mode`, `allow_remote` and `listen_tls`: where and how apps connect.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::load::{site, Ctx};
use super::raw;
use super::types::*;

impl Ctx {
    pub(super) fn listen(&mut self, res: &raw::Resource, at: &str) -> Option<ListenAddr> {
        let value = res.listen.value.trim();
        let path = format!("{at}.listen");
        if let Some(sock) = value.strip_prefix("unix:") {
            if sock.is_empty() {
                self.problem(site(&res.listen, path), "unix: needs a socket path");
                return None;
            }
            let mode = match &res.listen_mode {
                Some(mode) => match u32::from_str_radix(mode.value.trim_start_matches("0o"), 8) {
                    Ok(bits) if bits <= 0o777 => bits,
                    _ => {
                        self.problem(
                            site(mode, format!("{at}.listen_mode")),
                            format!("\"{}\" is not an octal file mode like \"0660\"", mode.value),
                        );
                        return None;
                    }
                },
                None => 0o600,
            };
            return Some(ListenAddr::Unix {
                path: self.base.join(sock),
                mode,
            });
        }
        if let Some(mode) = &res.listen_mode {
            self.problem(
                site(mode, format!("{at}.listen_mode")),
                "listen_mode applies to unix: listeners only",
            );
        }
        match self.socket_addr(value) {
            Ok(addr) if !addr.ip().is_loopback() && !res.allow_remote => {
                self.problem(
                    site(&res.listen, path),
                    format!("{addr} is not a loopback address: apps on other hosts could use this resource's credentials; set allow_remote: true if that is intended"),
                );
                None
            }
            Ok(addr) => Some(ListenAddr::Tcp(addr)),
            Err(msg) => {
                self.problem(site(&res.listen, path), msg);
                None
            }
        }
    }

    pub(super) fn socket_addr(&self, value: &str) -> Result<SocketAddr, String> {
        if let Ok(addr) = value.parse::<SocketAddr>() {
            return Ok(addr);
        }
        if let Some(port) = value.strip_prefix("localhost:") {
            if let Ok(port) = port.parse::<u16>() {
                return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
            }
        }
        Err(format!("\"{value}\" is not an address: use IP:PORT (e.g. 127.0.0.1:6432, [::1]:6432) or unix:PATH"))
    }

    pub(super) fn listen_tls(&mut self, t: &raw::ListenTls, at: &str) -> Option<ListenTls> {
        let cert = self.file_ref(&t.cert, format!("{at}.cert"));
        let key = self.file_ref(&t.key, format!("{at}.key"));
        let client_ca = t
            .client_ca
            .as_ref()
            .map(|v| self.file_ref(v, format!("{at}.client_ca")));
        let allow = t
            .allow
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        let allow = AllowList {
            cn: allow.cn,
            dns: allow.dns,
            uri: allow.uri,
        };
        if client_ca.is_none() && (t.require_client_cert || !allow.is_empty()) {
            let s = match &t.allow {
                Some(a) if !allow.is_empty() => site(a, format!("{at}.allow")),
                _ => site(&t.cert, format!("{at}.require_client_cert")),
            };
            self.problem(
                s,
                "client certificates need listen_tls.client_ca, the CA that issues them",
            );
            return None;
        }
        if !allow.is_empty() && !t.require_client_cert {
            if let Some(a) = &t.allow {
                self.problem(
                    site(a, format!("{at}.allow")),
                    "an allow-list needs require_client_cert: true (a client without a certificate would pass it)",
                );
                return None;
            }
        }
        Some(ListenTls {
            cert,
            key,
            client_ca,
            require_client_cert: t.require_client_cert,
            allow,
        })
    }
}
