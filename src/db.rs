//! What the database protocols (`postgres`, `mysql`, `redis`) share: the credential keyward
//! logs in with, read fresh for each new upstream connection, and the local client password.

use std::sync::Mutex;

use tracing::warn;

use crate::config::{Auth, BuildProblem, DbOptions, Negotiation, ResourceConfig, SecretRef};
use crate::error::{ConnError, Reason, Side};
use crate::secret::{Env, Secret, SecretError, SecretSource};

/// A secret that is re-read from its file at each use, so a rotated file takes effect for
/// the next connection. If a read fails (mid-rotation), the last good value is used.
#[derive(Debug)]
pub struct Credential {
    source: SecretSource,
    last: Mutex<Secret>,
}

impl Credential {
    /// Resolves the secret once (the build fails if it cannot be read).
    pub fn new(secret: &SecretRef, env: &dyn Env) -> Result<Self, SecretError> {
        let value = secret.source.resolve(env)?;
        Ok(Self {
            source: secret.source.clone(),
            last: Mutex::new(value),
        })
    }

    /// A fixed value (the fuzz targets' client password).
    #[doc(hidden)]
    pub fn fixed(value: Secret) -> Self {
        Self {
            source: SecretSource::Literal(value.clone()),
            last: Mutex::new(value),
        }
    }

    /// The current value: a `${file:}` secret is read again; others do not change. A file
    /// that cannot be read (mid-rotation) leaves the last value in use; a file that reads
    /// empty refuses the connection: an empty credential is never used.
    pub fn current(&self, resource: &str) -> Result<Secret, ConnError> {
        let mut last = match self.last.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let SecretSource::File(path) = &self.source {
            let result = self.source.resolve(&crate::secret::ProcessEnv);
            count_read(resource, result.is_ok());
            match result {
                Ok(value) => *last = value,
                Err(e @ SecretError::Empty(_)) => {
                    return Err(ConnError::new(
                        Side::Internal,
                        Reason::AuthFailed,
                        format!("{e} (re-read for this connection)"),
                    ))
                }
                Err(message) => {
                    warn!(resource, file = %path.display(), "cannot re-read the password file, using the last value read: {message}")
                }
            }
        }
        Ok(last.clone())
    }
}

/// `keyward_credential_reads_total`.
fn count_read(resource: &str, ok: bool) {
    crate::metrics::metrics()
        .credential_reads
        .with_label_values(&[resource, if ok { "success" } else { "error" }])
        .inc();
}

/// How keyward logs in upstream.
#[derive(Debug)]
pub enum Login {
    /// The app's own user; no password (certificate auth, trust, or the app's choice).
    None,
    /// A configured user and (optionally) password.
    Password {
        /// Upstream user (`None` keeps the app's).
        username: Option<String>,
        /// Its password; `None` for certificate auth.
        password: Option<Credential>,
    },
    /// An RDS IAM auth token as the password.
    RdsIam(crate::rds::RdsIam),
}

/// The database part of a resource's runtime.
#[derive(Debug)]
pub struct DbRuntime {
    /// The upstream login.
    pub login: Login,
    /// Database override.
    pub database: Option<String>,
    /// The password the app must present to keyward, if any.
    pub client_password: Option<Credential>,
    /// See [`DbOptions`].
    pub allow_cleartext_password: bool,
    /// See [`DbOptions`].
    pub allow_rsa_key_exchange: bool,
    /// See [`DbOptions`].
    pub pass_client_auth: bool,
    /// `postgres`: SSLRequest or direct TLS.
    pub negotiation: Negotiation,
    /// `postgres`: logged-in server connections kept for reuse.
    pub pool: crate::postgres::pool::Pool,
    /// `postgres`: sessions are read-only (`read_only: true`).
    pub read_only: bool,
    /// `redis`: the command rules (`allow`/`deny`), if any.
    pub commands: Option<std::sync::Arc<crate::redis::acl::Policy>>,
}

impl DbRuntime {
    /// Builds from a resource's config, resolving every secret once.
    pub fn build(res: &ResourceConfig, env: &dyn Env) -> Result<Self, Vec<BuildProblem>> {
        let mut problems = Vec::new();
        let mut credential = |secret: &SecretRef| {
            let read = Credential::new(secret, env);
            count_read(res.name.as_str(), read.is_ok());
            match read {
                Ok(c) => Some(c),
                Err(error) => {
                    problems.push(BuildProblem::new(&secret.site, error));
                    None
                }
            }
        };
        let DbOptions {
            client_password,
            allow_cleartext_password,
            allow_rsa_key_exchange,
            pass_client_auth,
            pool_max_idle,
            pool_idle_timeout,
            read_only,
            commands,
        } = &res.db;
        let client_password = client_password.as_ref().and_then(&mut credential);
        let (login, database) = match &res.auth {
            Auth::Password {
                username,
                password,
                database,
            } => (
                Login::Password {
                    username: username.clone(),
                    password: password.as_ref().and_then(&mut credential),
                },
                database.clone(),
            ),
            Auth::RdsIam {
                username,
                region,
                database,
                credentials,
            } => match crate::rds::RdsIam::build(
                res.name.as_str(),
                username,
                region,
                &res.upstream,
                credentials,
                env,
                &crate::config::Site {
                    path: format!("{}.auth", res.site.path),
                    ..res.site.clone()
                },
            ) {
                Ok(rds) => (Login::RdsIam(rds), database.clone()),
                Err(found) => {
                    problems.extend(found);
                    (Login::None, None)
                }
            },
            _ => (Login::None, None),
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            login,
            database,
            client_password,
            allow_cleartext_password: *allow_cleartext_password,
            allow_rsa_key_exchange: *allow_rsa_key_exchange,
            pass_client_auth: *pass_client_auth,
            negotiation: res.tls.negotiation,
            pool: crate::postgres::pool::Pool::new(*pool_max_idle, *pool_idle_timeout),
            read_only: *read_only,
            commands: crate::redis::acl::Policy::build(commands).map(std::sync::Arc::new),
        })
    }

    /// The upstream user, if keyward sets it.
    pub fn username(&self) -> Option<&str> {
        match &self.login {
            Login::None => None,
            Login::Password { username, .. } => username.as_deref(),
            Login::RdsIam(rds) => Some(rds.username()),
        }
    }

    /// The password for a new upstream connection: read now (a rotated file takes effect),
    /// or a fresh RDS token. `None` when keyward has no password to give.
    pub async fn password(
        &self,
        resource: &str,
        _admitted: &crate::connect::Admitted,
    ) -> Result<Option<Secret>, ConnError> {
        match &self.login {
            Login::None => Ok(None),
            Login::Password { password, .. } => {
                password.as_ref().map(|c| c.current(resource)).transpose()
            }
            Login::RdsIam(rds) => rds.token().await.map(Some),
        }
    }

    /// Whether keyward's password is an RDS token (sent in clear over TLS).
    pub fn is_rds_iam(&self) -> bool {
        matches!(self.login, Login::RdsIam(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_file_that_reads_empty_refuses_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").unwrap();
        let secret = SecretRef {
            source: SecretSource::File(path.clone()),
            site: crate::config::Site::default(),
        };
        let credential = Credential::new(&secret, &crate::secret::ProcessEnv).unwrap();
        assert_eq!(credential.current("r").unwrap().expose(), "s3cret");
        // Mid-rotation, truncated: refused, not used empty.
        std::fs::write(&path, "").unwrap();
        let refused = credential.current("r").unwrap_err();
        assert_eq!(refused.reason, Reason::AuthFailed);
        // Gone for a moment: the last value stays in use.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(credential.current("r").unwrap().expose(), "s3cret");
    }
}
