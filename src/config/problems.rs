//! What is wrong with a configuration, and where: file, line, column, key path.

use std::fmt;
use std::path::PathBuf;

/// Where in the config file a value was written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Site {
    /// 1-based line.
    pub line: u64,
    /// 1-based column.
    pub column: u64,
    /// The key path, e.g. `resources[2].tls.ca`.
    pub path: String,
}

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The config file.
    pub file: PathBuf,
    /// Where in it, when known.
    pub site: Option<Site>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.site {
            Some(site) if site.line > 0 => write!(
                f,
                "{}:{}:{}: {}: {}",
                self.file.display(),
                site.line,
                site.column,
                site.path,
                self.message
            ),
            Some(site) => write!(
                f,
                "{}: {}: {}",
                self.file.display(),
                site.path,
                self.message
            ),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Every problem found in one configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}
