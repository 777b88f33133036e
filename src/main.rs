//! The `keyward` binary: parse the CLI, set up logging, install the crypto provider, run.
//! Exit codes: 0 ok, 64 bad config (every problem printed), 1 runtime failure.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use keyward::config::{LogFormat, Problems};
use keyward::secret::ProcessEnv;
use keyward::{Listeners, Runtime};

/// keyward: keeps your application's keys. Points your app at localhost; keyward injects
/// credentials and originates verified TLS/mTLS upstream.
#[derive(Parser)]
#[command(name = "keyward", version, about)]
struct Cli {
    /// Log format (overrides `log.format` in the config).
    #[arg(long, global = true, value_enum)]
    log_format: Option<Format>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Plain,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the resources of a config file.
    Run {
        /// The config file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate a config file and everything it references, offline.
    Check {
        /// The config file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Connect to a resource's upstream as it would and report what TLS makes of it.
    Probe {
        /// The config file.
        #[arg(short, long)]
        config: PathBuf,
        /// The resource's name.
        resource: String,
    },
    /// Certificate tools.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// One probe of a running keyward (its admin endpoint's /readyz, or /healthz with
    /// --live): exit 0 when it answers 200, 1 otherwise. For exec probes.
    Health {
        /// The running keyward's config (for admin.listen; default 127.0.0.1:9901).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// The admin endpoint's address, instead of reading the config.
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// Liveness (/healthz) instead of readiness (/readyz).
        #[arg(long)]
        live: bool,
    },
    /// Waits until a running keyward is ready: exit 0 once /readyz answers 200, 1 when the
    /// timeout passes first.
    Wait {
        /// The running keyward's config (for admin.listen; default 127.0.0.1:9901).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// The admin endpoint's address, instead of reading the config.
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// How long to wait.
        #[arg(long, default_value = "30s")]
        timeout: humantime::Duration,
    },
    /// Self-contained demo: an in-process mTLS upstream with keyward in front of it.
    Demo {
        /// Where the demo's keyward listener binds.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Exit after the first request instead of waiting for Ctrl-C.
        #[arg(long)]
        once: bool,
    },
}

#[derive(Subcommand)]
enum CertCommand {
    /// Decode PEM files: certificates, chains, keys (never printing key material), and whether
    /// each key matches the certificates given alongside.
    Inspect {
        /// PEM files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    // No core dumps and no ptrace by other processes of the same user: a dump of keyward's
    // memory would hold the credentials it keeps (PR_SET_DUMPABLE, through rustix's safe
    // wrapper; `unsafe_code` stays forbidden).
    let dumpable =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
    let cli = Cli::parse();
    if let Err(e) = dumpable {
        eprintln!("keyward: warning: cannot turn off core dumps (PR_SET_DUMPABLE): {e}");
    }
    // Installed once, before any TLS config exists (ARCHITECTURE.md: ring only).
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Probe { config, resource } => {
            let probed = runtime().and_then(|rt| {
                rt.block_on(keyward::cli::probe::probe(&config, &resource))
                    .map_err(anyhow::Error::msg)
            });
            match probed {
                Ok((report, true)) => {
                    print!("{report}");
                    ExitCode::SUCCESS
                }
                Ok((report, false)) => {
                    print!("{report}");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("keyward probe: {e:#}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
        Command::Cert {
            command: CertCommand::Inspect { files },
        } => {
            let (report, ok) = keyward::cli::inspect::inspect(&files);
            print!("{report}");
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Run { config } => run(&config, cli.log_format),
        Command::Health {
            config,
            admin,
            live,
        } => {
            let path = if live { "/healthz" } else { "/readyz" };
            probe_admin(config.as_deref(), admin, |addr| async move {
                keyward::cli::health::probe(addr, path, std::time::Duration::from_secs(5)).await
            })
        }
        Command::Wait {
            config,
            admin,
            timeout,
        } => probe_admin(config.as_deref(), admin, |addr| async move {
            keyward::cli::health::wait(addr, timeout.into()).await
        }),
        Command::Demo { listen, once } => {
            init_logging(
                None,
                cli.log_format.map(to_format).unwrap_or(LogFormat::Plain),
                "warn",
            );
            finish(runtime().and_then(|rt| rt.block_on(keyward::cli::demo::run(listen, once))))
        }
    }
}

/// `health` and `wait`: exit 0 on success, 1 with the reason on stderr, 64 on a bad config.
fn probe_admin<F, Fut>(
    config: Option<&std::path::Path>,
    admin: Option<SocketAddr>,
    f: F,
) -> ExitCode
where
    F: FnOnce(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let addr = match admin.map_or_else(|| keyward::cli::health::admin_addr(config), Ok) {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("keyward: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(f(addr)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keyward: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match Runtime::load(path, &ProcessEnv) {
        Ok((config, _)) => {
            println!(
                "{}: ok ({} resources)",
                path.display(),
                config.resources.len()
            );
            ExitCode::SUCCESS
        }
        Err(problems) => bad_config(&problems),
    }
}

fn bad_config(problems: &Problems) -> ExitCode {
    eprintln!("{problems}");
    eprintln!("{} problem(s) found", problems.0.len());
    ExitCode::from(EXIT_CONFIG)
}

fn run(path: &std::path::Path, format: Option<Format>) -> ExitCode {
    let (config, runtime) = match Runtime::load(path, &ProcessEnv) {
        Ok(loaded) => loaded,
        Err(problems) => return bad_config(&problems),
    };
    let level = config
        .log
        .level
        .clone()
        .unwrap_or_else(|| "info".to_owned());
    init_logging(
        Some(&level),
        format.map(to_format).unwrap_or(config.log.format),
        "info",
    );
    let path = path.to_path_buf();
    let result = self::runtime().and_then(|rt| {
        rt.block_on(async move {
            runtime.log_summary();
            keyward::reload::count_success();
            let listeners = Listeners::bind(runtime.listens()).await?;
            let admin = match &config.admin {
                Some(admin) => Some(keyward::admin::Admin {
                    listener: tokio::net::TcpListener::bind(admin.listen)
                        .await
                        .with_context(|| {
                            format!("admin endpoint: cannot listen on {}", admin.listen)
                        })?,
                    shutdown_endpoint: admin.shutdown_endpoint,
                }),
                None => None,
            };
            let parts = keyward::Parts {
                admin,
                reload: Some(keyward::Reload {
                    path,
                    config,
                    env: std::sync::Arc::new(ProcessEnv),
                }),
            };
            let outcome = keyward::run(runtime, listeners, parts, shutdown_signal()).await?;
            tracing::info!(cut = outcome.cut, "stopped");
            Ok(outcome.cut)
        })
    });
    match result {
        // Exit 1 when the grace period ran out with connections still open.
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => finish(Err(e)),
    }
}

fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("keyward: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The runtime: one worker per core, or `KEYWARD_WORKER_THREADS` (a sidecar may want 1).
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = std::env::var("KEYWARD_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        builder.worker_threads(n);
    }
    builder
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

fn to_format(f: Format) -> LogFormat {
    match f {
        Format::Plain => LogFormat::Plain,
        Format::Json => LogFormat::Json,
    }
}

/// `KEYWARD_LOG` overrides the configured level; both take an EnvFilter string.
fn init_logging(level: Option<&str>, format: LogFormat, fallback: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("KEYWARD_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| level.and_then(|l| EnvFilter::try_new(l).ok()))
        .unwrap_or_else(|| EnvFilter::new(fallback));
    // Colour only for a person at a terminal, and never with NO_COLOR (no-color.org).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Plain => builder.init(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::error!("cannot listen for SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}
