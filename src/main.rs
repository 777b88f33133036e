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

/// What `--help` says after the commands: the environment and the exit codes.
const AFTER_HELP: &str = "\
Environment:
  KEYWARD_CONFIG          the config file, for -c/--config
  KEYWARD_LOG             log filter (error, warn, info, debug, trace, or per target), over log.level
  KEYWARD_WORKER_THREADS  connection worker threads (default: one per core)
  NO_COLOR                no colour in plain logs (colour is used only on a terminal anyway)
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_SHARED_CREDENTIALS_FILE,
  AWS_PROFILE             credentials for aws_sigv4 / rds_iam resources without keys of their own

Exit codes:
  0   success (run: drained with every connection finished)
  1   failure (run: connections cut at the end of the grace period, a second signal during
      the drain, or a runtime error; probe/health/wait/cert inspect: the check failed)
  2   bad command line
  64  bad configuration (every problem is printed: FILE:LINE:COL: KEY: MESSAGE)";

/// keyward: keeps your application's keys. Points your app at localhost; keyward injects
/// credentials and originates verified TLS/mTLS upstream.
#[derive(Parser)]
#[command(
    name = "keyward",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("KEYWARD_GIT_COMMIT"), ")"),
    about,
    after_help = AFTER_HELP
)]
struct Cli {
    /// Log format (overrides `log.format` in the config).
    #[arg(long, global = true, value_enum)]
    log_format: Option<Format>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum CheckFormat {
    Text,
    Json,
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
        #[arg(short, long, env = "KEYWARD_CONFIG")]
        config: PathBuf,
    },
    /// Validate a config file and everything it references, offline.
    Check {
        /// The config file.
        #[arg(short, long, env = "KEYWARD_CONFIG")]
        config: PathBuf,
        /// How problems are printed: text (FILE:LINE:COL: KEY: MESSAGE) or json (one object
        /// per problem: file, line, column, key, message) on stdout.
        #[arg(long, value_enum, default_value = "text")]
        format: CheckFormat,
    },
    /// Connect to a resource's upstream as it would and report what TLS makes of it, then
    /// log in (databases) or send one request with the credential (http): exit 0 when that
    /// works, 1 when it does not.
    Probe {
        /// The config file.
        #[arg(short, long, env = "KEYWARD_CONFIG")]
        config: PathBuf,
        /// The resource's name.
        resource: String,
        /// For http resources: the path of the one request sent with the credential.
        #[arg(long, default_value = "/")]
        path: String,
        /// For http resources: that request's method.
        #[arg(long, default_value = "HEAD")]
        method: String,
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
        #[arg(short, long, env = "KEYWARD_CONFIG")]
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
        #[arg(short, long, env = "KEYWARD_CONFIG")]
        config: Option<PathBuf>,
        /// The admin endpoint's address, instead of reading the config.
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// How long to wait.
        #[arg(long, default_value = "30s")]
        timeout: humantime::Duration,
    },
    /// One resource from flags alone, no config file: a TLS tunnel (protocol tcp) or any
    /// protocol without credentials, e.g. `keyward tunnel --listen 127.0.0.1:6432 --upstream
    /// db.internal:5432 --ca ca.pem --client-cert client.pem --client-key client.key`.
    /// Certificates hot-reload as with `run`.
    Tunnel(keyward::cli::tunnel::Tunnel),
    /// Shell completions, on stdout: `keyward completions bash > /etc/bash_completion.d/keyward`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
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

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    // Installed once, before any TLS config exists (docs/DESIGN.md: ring only).
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Check { config, format } => check(&config, format),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "keyward",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Tunnel(tunnel) => match tunnel.config() {
            Ok(file) => {
                let code = run(file.path(), cli.log_format);
                drop(file);
                code
            }
            Err(e) => {
                eprintln!("keyward tunnel: {e}");
                ExitCode::from(2)
            }
        },
        Command::Probe {
            config,
            resource,
            path,
            method,
        } => {
            let request = keyward::cli::probe::Request { method, path };
            let probed = runtime().and_then(|rt| {
                rt.block_on(keyward::cli::probe::probe(&config, &resource, &request))
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

fn check(path: &std::path::Path, format: CheckFormat) -> ExitCode {
    let loaded = Runtime::load(path, &ProcessEnv);
    // What run would warn about at load, check says too (exit 0).
    if let Ok((_, runtime)) = &loaded {
        for soon in runtime.expiring(keyward::tls::unix_now()) {
            eprintln!("{}: warning: {soon}", path.display());
        }
    }
    match (loaded, format) {
        (Ok((config, _)), CheckFormat::Text) => {
            println!(
                "{}: ok ({} resources)",
                path.display(),
                config.resources.len()
            );
            ExitCode::SUCCESS
        }
        (Ok(_), CheckFormat::Json) => {
            println!("[]");
            ExitCode::SUCCESS
        }
        (Err(problems), CheckFormat::Text) => bad_config(&problems),
        (Err(problems), CheckFormat::Json) => {
            println!("{}", problems.to_json());
            ExitCode::from(EXIT_CONFIG)
        }
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
        let result = rt.block_on(async move {
            keyward::audit::configure(runtime.audit.as_ref()).map_err(anyhow::Error::msg)?;
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
                    hook: Some(std::sync::Arc::new(|phase| match phase {
                        keyward::reload::Phase::Started => systemd::reloading(),
                        keyward::reload::Phase::Finished => systemd::ready(),
                    })),
                }),
            };
            // Every listener is bound: a Type=notify unit is started now.
            systemd::ready();
            systemd::spawn_watchdog();
            let (count, signals) = tokio::sync::watch::channel(0u32);
            tokio::spawn(count_signals(count));
            let mut first = signals.clone();
            let mut second = signals;
            let shutdown = async move {
                let _ = first.wait_for(|n| *n >= 1).await;
                systemd::stopping();
            };
            tokio::select! {
                outcome = keyward::run(runtime, listeners, parts, shutdown) => {
                    let outcome = outcome?;
                    tracing::info!(cut = outcome.cut, "stopped");
                    Ok(outcome.cut)
                }
                // A second signal during the drain: whoever sent it does not want to wait.
                _ = second.wait_for(|n| *n >= 2) => {
                    tracing::warn!("second signal during the drain: exiting now, open connections are cut");
                    Ok(usize::MAX)
                }
            }
        });
        // Connection tasks a second signal left behind are dropped, not waited for.
        rt.shutdown_timeout(std::time::Duration::from_millis(500));
        result
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

/// The main runtime: listeners, the admin endpoint, reloads. Connections run on the workers
/// (`keyward::workers`: one thread per core, or `KEYWARD_WORKER_THREADS`).
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
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

/// Counts SIGTERM/SIGINT: the first starts the drain, a second ends it at once.
async fn count_signals(count: tokio::sync::watch::Sender<u32>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => Some(term),
        Err(e) => {
            tracing::error!("cannot listen for SIGTERM: {e}");
            None
        }
    };
    loop {
        let term_recv = async {
            match term.as_mut() {
                Some(t) => t.recv().await,
                None => std::future::pending().await,
            }
        };
        let name = tokio::select! {
            _ = tokio::signal::ctrl_c() => "SIGINT",
            _ = term_recv => "SIGTERM",
        };
        count.send_modify(|n| *n += 1);
        if *count.borrow() == 1 {
            tracing::info!("{name} received");
        }
    }
}

/// systemd's notification protocol (`Type=notify`, `sd_notify(3)`), through the sd-notify
/// crate: each call does nothing unless systemd set `NOTIFY_SOCKET`.
mod systemd {
    use sd_notify::NotifyState;

    fn send(states: &[NotifyState<'_>]) {
        if let Err(e) = sd_notify::notify(states) {
            tracing::warn!("cannot notify systemd: {e}");
        }
    }

    /// Started (every listener bound), or a reload finished.
    pub fn ready() {
        send(&[NotifyState::Ready, NotifyState::Status("serving")]);
    }

    /// A reload starts (with the monotonic time that `Type=notify-reload` requires).
    pub fn reloading() {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => send(&[NotifyState::Reloading, now]),
            Err(_) => send(&[NotifyState::Reloading]),
        }
    }

    /// The drain starts.
    pub fn stopping() {
        send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
    }

    /// With `WatchdogSec=` set, WATCHDOG=1 at half the interval, from the runtime: a keyward
    /// whose runtime stops making progress is restarted.
    pub fn spawn_watchdog() {
        let Some(interval) = sd_notify::watchdog_enabled() else {
            return;
        };
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval / 2);
            loop {
                tick.tick().await;
                send(&[NotifyState::Watchdog]);
            }
        });
    }
}
