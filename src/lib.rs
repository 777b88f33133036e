//! keyward keeps an application's keys.
//!
//! The application talks plaintext to a local listener; keyward connects to the upstream over
//! TLS it verifies as configured (optionally with a client certificate) and relays. The entry
//! points: [`config::load`] → [`Runtime::build`] → [`Listeners::bind`] → [`run`].

pub mod admin;
pub mod cli;
pub mod config;
pub mod connect;
pub mod db;
pub mod error;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod mysql;
pub mod pki;
pub mod postgres;
pub mod rds;
pub mod redis;
pub mod relay;
pub mod reload;
pub mod runtime;
pub mod secret;
pub mod server;
pub mod tcp;
pub mod tls;
pub mod wire;

use std::future::Future;

pub use config::Config;
pub use listener::Listeners;
pub use runtime::Runtime;
pub use server::{Outcome, Server, State};

/// Serves `runtime` on `listeners` until `shutdown` completes (STYLE.md rule 1: the world is
/// injected; tests bind port 0 and pass their own shutdown future).
pub async fn run(
    runtime: Runtime,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<Outcome, server::MissingListener> {
    Ok(Server::new(runtime, listeners)?.run(shutdown).await)
}
