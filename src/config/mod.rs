//! Configuration: YAML (README.md, config/keyward.yaml) → [`raw`] serde types → validated [`Config`].
//!
//! Parse, don't validate (docs/DESIGN.md rule 2): downstream code only ever sees a [`Config`] whose
//! every field was checked. Every problem names the file, line, column and key path, and
//! validation keeps going so `keyward check` can list all of them at once.
//!
//! Layers, bottom up: `raw` (serde) and `problems`, `types` (the validated domain types),
//! `load` (the validation context, durations, files, secrets) with one file per concern that
//! adds its part to it (`listen`, `upstream`, `tls`, `auth`, `http`, `db`), and `files` (what
//! a resource reads, and its fingerprint). This file only names and re-exports them.

mod audit;
mod auth;
mod db;
mod files;
mod http;
mod listen;
mod load;
mod problems;
pub mod raw;
mod tls;
mod types;
mod upstream;

pub use crate::error::io_reason;
pub use files::{resource_files, Recorded};
pub use load::{load, parse, parse_partial, read};
pub use problems::{BuildError, BuildProblem, Problem, Problems, Site};
pub use types::*;

#[cfg(test)]
mod tests;
