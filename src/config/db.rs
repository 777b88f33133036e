//! Options of database resources (`client_password`, pooling, cleartext/RSA opt-ins,
//! `pass_client_auth`), refused on other protocols with the key named.

use super::load::{site, Ctx};
use super::raw;
use super::types::*;

impl Ctx {
    pub(super) fn db_options(
        &mut self,
        res: &raw::Resource,
        protocol: Protocol,
        at: &str,
    ) -> DbOptions {
        let mut opts = DbOptions::default();
        let is_db = matches!(
            protocol,
            Protocol::Postgres | Protocol::Mysql | Protocol::Redis
        );
        if let Some(v) = &res.client_password {
            let path = format!("{at}.client_password");
            if is_db {
                opts.client_password = self.secret(v, &path);
            } else {
                self.problem(
                    site(v, path),
                    "client_password applies to protocols postgres, mysql and redis",
                );
            }
        }
        if let Some(v) = &res.pool_max_idle {
            if protocol == Protocol::Postgres {
                opts.pool_max_idle = v.value as usize;
            } else {
                self.problem(
                    site(v, format!("{at}.pool_max_idle")),
                    "pool_max_idle applies to protocol postgres only",
                );
            }
        }
        if let Some(v) = &res.read_only {
            if protocol == Protocol::Postgres {
                opts.read_only = v.value;
            } else {
                self.problem(
                    site(v, format!("{at}.read_only")),
                    "read_only applies to protocol postgres only",
                );
            }
        }
        if protocol == Protocol::Postgres {
            if let Some(v) = &res.pool_idle_timeout {
                opts.pool_idle_timeout = self
                    .duration(v, &format!("{at}.pool_idle_timeout"), false)
                    .unwrap_or(DEFAULT_POOL_IDLE_TIMEOUT);
            }
        }
        if protocol == Protocol::Redis {
            opts.pass_client_auth = res.pass_client_auth.unwrap_or(false);
            if opts.pass_client_auth && opts.client_password.is_some() {
                self.problem(
                    site(&res.protocol, format!("{at}.pass_client_auth")),
                    "pass_client_auth forwards the app's AUTH, client_password checks it: use one of them",
                );
            }
        }
        if let Some(raw::Auth::Password(auth)) = res.auth.as_ref().map(|a| &a.value) {
            let flags = [
                (
                    "allow_cleartext_password",
                    &auth.allow_cleartext_password,
                    Protocol::Postgres,
                ),
                (
                    "allow_rsa_key_exchange",
                    &auth.allow_rsa_key_exchange,
                    Protocol::Mysql,
                ),
            ];
            for (key, value, only) in flags {
                let Some(v) = value else { continue };
                if protocol != only {
                    self.problem(
                        site(v, format!("{at}.auth.{key}")),
                        format!("{key} applies to protocol {} only", protocol_name(only)),
                    );
                } else if key == "allow_cleartext_password" {
                    opts.allow_cleartext_password = v.value;
                } else {
                    opts.allow_rsa_key_exchange = v.value;
                }
            }
        }
        opts
    }
}
