//! keyward keeps an application's keys.
//!
//! The application talks plaintext to a local listener; keyward connects to the upstream over
//! TLS it verifies as configured (optionally with a client certificate) and relays. The entry
//! points: [`config::load`] → [`Runtime::build`] → [`Listeners::bind`] → [`run`]. How one
//! connection flows: [`driver`].

pub mod admin;
pub mod audit;
pub mod aws;
pub mod cli;
pub mod config;
pub mod connect;
pub mod db;
pub mod driver;
pub mod error;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod mysql;
pub mod pki;
pub mod postgres;
pub mod rds;
pub mod record;
pub mod redis;
pub mod relay;
pub mod reload;
pub mod resolve;
pub mod runtime;
pub mod secret;
pub mod server;
pub mod tcp;
pub mod tls;
pub mod wire;
pub mod workers;

use std::future::Future;

pub use config::Config;
pub use listener::Listeners;
pub use runtime::Runtime;
pub use server::{Outcome, Server, State};

/// What `keyward run` composes beside the resources' server, each part injected so a test
/// can run the whole product in-process on port-0 listeners.
#[derive(Default)]
pub struct Parts {
    /// The admin endpoint (`admin`); `None`: no admin endpoint.
    pub admin: Option<admin::Admin>,
    /// Hot reload: the config file, the config loaded from it (the files to watch), and where
    /// secrets come from; `None`: no reload.
    pub reload: Option<Reload>,
}

/// The reload part of [`Parts`].
pub struct Reload {
    /// The config file.
    pub path: std::path::PathBuf,
    /// The config the running runtime was built from.
    pub config: Config,
    /// Where `${env:}` secrets come from.
    pub env: std::sync::Arc<dyn secret::Env>,
    /// Told when each reload starts and ends (the binary tells systemd: RELOADING=1, READY=1).
    pub hook: Option<reload::Hook>,
}

/// Serves `runtime` on `listeners`, with the admin endpoint and hot reload of `parts`, until
/// `shutdown` completes (or the admin endpoint asks); then drains (docs/DESIGN.md rule 1: the world
/// is injected; tests bind port 0 and pass their own shutdown future).
pub async fn run(
    runtime: Runtime,
    listeners: Listeners,
    parts: Parts,
    shutdown: impl Future<Output = ()>,
) -> Result<Outcome, server::MissingListener> {
    let server = Server::new(runtime, listeners)?;
    let state = server.state();
    let stop = tokio_util::sync::CancellationToken::new();
    if let Some(admin) = parts.admin {
        tokio::spawn(admin::serve(admin, state.clone(), stop.clone()));
    }
    if let Some(r) = parts.reload {
        let mut reloader = reload::Reloader::new(r.path, r.env, state.clone(), &r.config);
        reloader.hook = r.hook;
        tokio::spawn(reloader.watch(r.config, stop.clone()));
    }
    let outcome = server.run(shutdown).await;
    stop.cancel();
    Ok(outcome)
}
