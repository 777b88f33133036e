//! Secrets: values keyward injects and must never show.
//!
//! A [`Secret`] is redacted in `Debug` and `Display` and zeroized on drop. A [`SecretSource`]
//! is where a secret comes from (`${env:NAME}`, `${file:PATH}` or a literal in the config);
//! it is resolved when a runtime is built and, for rotating files, again later.

use std::fmt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// A secret value. Its text is only reachable through [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wraps a value as a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(Zeroizing::new(value.into()))
    }

    /// The secret's text. Callers must not log or format it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why a secret could not be read. Never carries the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// `${env:NAME}` with `NAME` unset.
    #[error("environment variable {0} is not set")]
    EnvUnset(String),
    /// `${file:PATH}` that cannot be read.
    #[error("reading secret file {path:?}: {reason}")]
    FileRead {
        /// The file.
        path: String,
        /// Why (not found, permission denied, ...).
        reason: String,
    },
    /// A secret that resolves to nothing: an empty literal, variable or file (a file caught
    /// mid-rotation reads empty). An empty credential is never used.
    #[error("the secret is empty ({0}); keyward refuses to use an empty credential")]
    Empty(String),
    /// A config value that looks like a reference but is not a valid one.
    #[error("{0}")]
    Syntax(&'static str),
}

/// Where a secret comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// Written in the config itself.
    Literal(Secret),
    /// `${env:NAME}`: an environment variable.
    Env(String),
    /// `${file:PATH}`: a file whose content (one trailing newline trimmed) is the secret.
    File(PathBuf),
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Literal(_) => f.write_str("Literal(<redacted>)"),
            Self::Env(name) => write!(f, "Env({name})"),
            Self::File(path) => write!(f, "File({})", path.display()),
        }
    }
}

/// Looks up environment variables. Injected so tests never mutate the process environment.
pub trait Env: Send + Sync {
    /// The value of `name`, if set.
    fn var(&self, name: &str) -> Option<String>;

    /// The bytes of a file the config names (a secret, certificate, key or CA bundle). A
    /// build reads through a recording env (`config::Recorded`), so each file is read once and
    /// what it fingerprints is what it built.
    fn read(&self, path: &Path) -> std::io::Result<Zeroizing<Vec<u8>>> {
        std::fs::read(path).map(Zeroizing::new)
    }
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<F> Env for F
where
    F: Fn(&str) -> Option<String> + Send + Sync,
{
    fn var(&self, name: &str) -> Option<String> {
        self(name)
    }
}

impl SecretSource {
    /// Parses a config value: a whole-value `${env:NAME}` or `${file:PATH}` is a reference,
    /// anything else is a literal. Relative file paths are taken from `base`.
    pub fn parse(value: &str, base: &Path) -> Result<Self, SecretError> {
        let Some(inner) = value.strip_prefix("${").and_then(|v| v.strip_suffix('}')) else {
            return Ok(Self::Literal(Secret::new(value)));
        };
        match inner.split_once(':') {
            Some(("env", name)) if is_env_name(name) => Ok(Self::Env(name.to_owned())),
            Some(("env", _)) => Err(SecretError::Syntax(
                "`${env:NAME}` needs a variable name of letters, digits and _",
            )),
            Some(("file", path)) if !path.is_empty() => Ok(Self::File(base.join(path))),
            Some(("file", _)) => Err(SecretError::Syntax("`${file:PATH}` needs a path")),
            _ => Err(SecretError::Syntax(
                "a secret reference is `${env:NAME}` or `${file:PATH}`",
            )),
        }
    }

    /// Reads the secret now. An empty value is an error, wherever it comes from.
    pub fn resolve(&self, env: &dyn Env) -> Result<Secret, SecretError> {
        let secret = match self {
            Self::Literal(secret) => secret.clone(),
            Self::Env(name) => env
                .var(name)
                .map(Secret::new)
                .ok_or_else(|| SecretError::EnvUnset(name.clone()))?,
            Self::File(path) => {
                let unreadable = |reason: String| SecretError::FileRead {
                    path: path.display().to_string(),
                    reason,
                };
                let bytes = env
                    .read(path)
                    .map_err(|e| unreadable(crate::error::io_reason(&e)))?;
                let text = std::str::from_utf8(&bytes)
                    .map_err(|_| unreadable("not UTF-8 text".to_owned()))?;
                let trimmed = text.strip_suffix('\n').unwrap_or(text);
                let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
                Secret::new(trimmed)
            }
        };
        if secret.expose().is_empty() {
            return Err(SecretError::Empty(match self {
                Self::Literal(_) => "written empty in the config".to_owned(),
                Self::Env(name) => format!("environment variable {name} is empty"),
                Self::File(path) => format!("file {:?} is empty", path.display().to_string()),
            }));
        }
        Ok(secret)
    }

    /// The file this secret is read from, if any (for watching).
    pub fn file(&self) -> Option<&Path> {
        match self {
            Self::File(path) => Some(path),
            _ => None,
        }
    }
}

fn is_env_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let secret = Secret::new("hunter2");
        assert!(!format!("{secret:?}").contains("hunter2"));
        assert!(!format!("{secret}").contains("hunter2"));
        let source = SecretSource::parse("hunter2", Path::new("/")).unwrap();
        assert!(!format!("{source:?}").contains("hunter2"));
    }

    #[test]
    fn parses_references_and_literals() {
        let base = Path::new("/etc/keyward");
        assert_eq!(
            SecretSource::parse("${env:TOKEN_1}", base).unwrap(),
            SecretSource::Env("TOKEN_1".into())
        );
        assert_eq!(
            SecretSource::parse("${file:pw}", base).unwrap(),
            SecretSource::File(PathBuf::from("/etc/keyward/pw"))
        );
        assert_eq!(
            SecretSource::parse("${file:/run/pw}", base).unwrap(),
            SecretSource::File(PathBuf::from("/run/pw"))
        );
        assert!(matches!(
            SecretSource::parse("plain ${env:X}", base).unwrap(),
            SecretSource::Literal(_)
        ));
        assert!(SecretSource::parse("${vault:x}", base).is_err());
        assert!(SecretSource::parse("${env:}", base).is_err());
        assert!(SecretSource::parse("${env:A-B}", base).is_err());
    }

    #[test]
    fn resolves_env_through_the_injected_lookup() {
        let env = |name: &str| (name == "TOKEN").then(|| "abc".to_owned());
        let source = SecretSource::Env("TOKEN".into());
        assert_eq!(source.resolve(&env).unwrap().expose(), "abc");
        let missing = SecretSource::Env("NOPE".into()).resolve(&env).unwrap_err();
        assert_eq!(missing.to_string(), "environment variable NOPE is not set");
    }

    #[test]
    fn file_secret_loses_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").unwrap();
        let secret = SecretSource::File(path.clone())
            .resolve(&ProcessEnv)
            .unwrap();
        assert_eq!(secret.expose(), "s3cret");
        std::fs::write(&path, "two\n\n").unwrap();
        assert_eq!(
            SecretSource::File(path)
                .resolve(&ProcessEnv)
                .unwrap()
                .expose(),
            "two\n"
        );
        let err = SecretSource::File(dir.path().join("none"))
            .resolve(&ProcessEnv)
            .unwrap_err();
        assert!(err.to_string().contains("not found"), "{err}");
    }

    #[test]
    fn an_empty_secret_is_an_error_wherever_it_comes_from() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "\n").unwrap();
        let env = |name: &str| (name == "BLANK").then(String::new);
        for source in [
            SecretSource::Literal(Secret::new("")),
            SecretSource::Env("BLANK".into()),
            SecretSource::File(path.clone()),
        ] {
            assert!(
                matches!(source.resolve(&env), Err(SecretError::Empty(_))),
                "{source:?}"
            );
        }
    }
}
