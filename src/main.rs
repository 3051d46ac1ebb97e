//! The `fleetgate` binary: parses the command line, sets up what every process needs (TLS provider, logging,
//! metrics, signals) and hands off to the libraries.
//!
//! - `node --config FILE [--name NAME] [--advertise-host IP]`: a broker node ([`fleetgate_broker::Node`]).
//! - `lb --config FILE`: the load balancer ([`fleetgate_lb::run`]).
//! - `check FILE`: validate a config file (node, LB or ACL), `nginx -t` style.
//! - `up`: a complete local system for development ([`up`]).
//! - `passwd FILE USER`: add or change a password in the node's argon2id password file ([`passwd`]).

mod children;
mod passwd;
mod pki;
mod up;

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use fleetgate_config::node::{NodeConfig, NodeOverrides};
use fleetgate_ops::logging::{self, LogFormat};
use tokio_util::sync::CancellationToken;

/// Exit code of `fleetgate check` when the file has problems (`EX_DATAERR` would be 65; 64, `EX_USAGE`, is what
/// the operator-facing contract says).
const EXIT_CONFIG_INVALID: u8 = 64;

/// Gauge: the async runtime's worker threads (`--worker-threads`, or one per usable CPU).
const WORKER_THREADS: &str = "fleetgate_worker_threads";

/// MQTT edge ingress: an MQTT-aware L4 load balancer and a clustered MQTT broker node.
#[derive(Debug, Parser)]
#[command(name = "fleetgate", version, about)]
struct Cli {
    /// Log format on stderr: `json` (one object per line) or `text`.
    #[arg(long, global = true, default_value = "json", value_parser = parse_log_format)]
    log_format: LogFormat,
    /// Threads that run connections (the async runtime's workers); default: one per CPU this process may use
    /// (a container's CPU limit included). Fewer threads than cores cost less CPU per message under moderate
    /// load (fewer wake-ups across threads) and cap the process at that many cores: e.g. 1 for a node that
    /// shares a small machine with others.
    #[arg(long, global = true, value_name = "N")]
    worker_threads: Option<NonZeroUsize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a broker node.
    Node {
        /// Node config file (TOML with a `[node]` table).
        #[arg(long, short)]
        config: PathBuf,
        /// Node name, instead of `[node] name` (e.g. the pod name from the downward API: one config file for
        /// every pod of a StatefulSet).
        #[arg(long)]
        name: Option<String>,
        /// Host (IP address) peers dial this node's cluster port at, instead of `[cluster] advertise`'s (e.g. the
        /// pod IP); the port stays the configured one.
        #[arg(long)]
        advertise_host: Option<IpAddr>,
    },
    /// Run the load balancer.
    Lb {
        /// LB config file (TOML with an `[lb]` table).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file (node, lb or ACL) and print every problem as `file:line:column: message`.
    Check {
        /// The config file.
        file: PathBuf,
    },
    /// Run a complete local system: dev PKI, broker nodes and the load balancer.
    Up(up::UpArgs),
    /// Add or change USER's password in the password file FILE (created with mode 0600 if missing). Reads the
    /// password without echo from the terminal, or one line from stdin when it is not a terminal.
    Passwd {
        /// The password file (`[auth] password_file` of the node config).
        file: PathBuf,
        /// The username.
        user: String,
    },
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    s.parse()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Err means a provider is already installed, which is what we want anyway.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    logging::init(cli.log_format);

    if let Command::Check { file } = &cli.command {
        return check(file);
    }
    if let Command::Passwd { file, user } = &cli.command {
        return match passwd::run(file, user) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("fleetgate passwd: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = cli.worker_threads {
        builder.worker_threads(n.get());
    }
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("fleetgate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(event = "exit", error = format!("{e:#}"), "fatal error");
            eprintln!("fleetgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a long-lived subcommand with metrics and signal handling installed.
async fn serve(command: Command) -> Result<()> {
    let _metrics = fleetgate_ops::telemetry::install();
    metrics::gauge!(WORKER_THREADS)
        .set(tokio::runtime::Handle::current().metrics().num_workers() as f64);
    let shutdown = CancellationToken::new();
    // The reload channel: SIGHUP. The node re-reads its auth files on it (and watches them itself).
    let reload = fleetgate_ops::signals::spawn(shutdown.clone());
    match command {
        Command::Node {
            config,
            name,
            advertise_host,
        } => {
            let overrides = NodeOverrides {
                name,
                advertise_host,
            };
            run_node(&config, &overrides, shutdown, reload)
                .await
                .with_context(|| format!("fleetgate node --config {}", config.display()))
        }
        Command::Lb { config } => run_lb(&config, shutdown, reload).await,
        Command::Up(args) => up::run(args, shutdown).await,
        Command::Check { file } => {
            anyhow::bail!("internal: check {} reached the runtime", file.display())
        }
        Command::Passwd { file, .. } => {
            anyhow::bail!("internal: passwd {} reached the runtime", file.display())
        }
    }
}

/// `fleetgate_broker::run` with the command-line overrides applied: load, override, then start, serve until
/// `shutdown` and drain. `reload` (SIGHUP) re-reads the auth files.
async fn run_node(
    config_path: &Path,
    overrides: &NodeOverrides,
    shutdown: CancellationToken,
    reload: tokio::sync::mpsc::Receiver<()>,
) -> Result<()> {
    let config = NodeConfig::load(config_path)?.with_overrides(config_path, overrides)?;
    fleetgate_broker::run(config_path, config, shutdown, Some(reload)).await?;
    Ok(())
}

async fn run_lb(
    config: &Path,
    shutdown: CancellationToken,
    reload: tokio::sync::mpsc::Receiver<()>,
) -> Result<()> {
    fleetgate_lb::run(config, shutdown, Some(reload))
        .await
        .with_context(|| format!("fleetgate lb --config {}", config.display()))
}

/// `fleetgate check FILE`: `FILE: ok (node config)` on stdout, or every problem on stderr and exit code 64. The
/// config crate validates the file, whatever its kind (a file with neither a `[node]` nor an `[lb]` table is tried
/// as an ACL file); for a node config with `[auth]`, the auth crate then reads the password and ACL files it names,
/// as the node would at start-up. A valid node config's warnings (`file: warning: ...`) go to stderr; they do not
/// change the exit code.
fn check(file: &Path) -> ExitCode {
    let checked = fleetgate_config::check::check(file).and_then(|config| {
        let mut warnings = Vec::new();
        if let fleetgate_config::check::AnyConfig::Node(node) = &config
            && let Some(auth) = &node.auth
        {
            let snapshot = fleetgate_auth::AuthSnapshot::load(auth)?;
            let users = snapshot.password_users();
            warnings = fleetgate_config::check::node_warnings(file, node, &users)?;
        }
        Ok((config.kind().describe(), warnings))
    });
    match checked {
        Ok((kind, warnings)) => {
            for warning in &warnings {
                eprintln!("{warning}");
            }
            println!("{}: ok ({kind})", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            for problem in &e.problems {
                eprintln!("{problem}");
            }
            ExitCode::from(EXIT_CONFIG_INVALID)
        }
    }
}
