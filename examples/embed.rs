//! Embedding keyward as a library: load a config, bind its listeners, serve until Ctrl-C.
//!
//! ```sh
//! cargo run --example embed -- config/keyward.yaml
//! ```
//! The same steps `keyward run` takes; useful to see the seams (docs/DESIGN.md rule 1): the caller
//! owns the runtime, the listeners and the shutdown future.

use keyward::secret::ProcessEnv;
use keyward::{Listeners, Runtime};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "config/keyward.yaml".to_owned());
    // One validation path for check, start and reload: every problem at once.
    let (_config, runtime) =
        Runtime::load(path.as_ref(), &ProcessEnv).map_err(|p| anyhow::anyhow!("{p}"))?;
    let listeners = Listeners::bind(runtime.listens()).await?;
    for (name, addr) in listeners.addrs() {
        println!("{name}: listening on {addr}");
    }
    let parts = keyward::Parts::default();
    let outcome = keyward::run(runtime, listeners, parts, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    println!(
        "stopped; {} connection(s) cut at the end of the grace period",
        outcome.cut
    );
    Ok(())
}
