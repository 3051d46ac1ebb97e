//! The child side of `store` and how the parent drives it: `store-worker ROLE` runs one measurement in a process of
//! its own and prints `result <json>` last (progress lines before it); the parent starts workers with the same
//! binary, reads their lines, kills them on a deadline or on purpose (the `kill -9` of the crash tests).

use std::ffi::OsString;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use fleetgate_config::duration::parse_duration;

use super::engine::Kind;
use super::{MIB, recovery, steady, torn};
use crate::throughput::{Rate, parse_rate};

/// Options of `store-worker`.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    #[command(subcommand)]
    role: Role,
}

/// Store, directory and cache of a worker.
#[derive(Debug, Clone, clap::Args)]
struct Target {
    #[arg(long, value_enum)]
    store: Kind,
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value_t = 64)]
    cache_mb: u64,
}

/// What a worker runs (arguments as `store` passes them; see each module).
#[derive(Debug, clap::Subcommand)]
enum Role {
    /// One steady run.
    Steady {
        #[command(flatten)]
        target: Target,
        #[arg(long, value_parser = parse_rate)]
        rate: Rate,
        #[arg(long, value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, value_parser = parse_duration)]
        warmup: Duration,
        #[arg(long)]
        sessions: u64,
        #[arg(long)]
        queued: u64,
        #[arg(long)]
        producers: u64,
        #[arg(long)]
        batch_cap: usize,
        #[arg(long)]
        payload: usize,
    },
    /// Fill (then optionally churn until killed).
    Fill {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        sessions: u64,
        #[arg(long)]
        messages: u64,
        #[arg(long)]
        batch_cap: usize,
        #[arg(long)]
        payload: usize,
        #[arg(long, value_parser = parse_duration)]
        churn: Option<Duration>,
    },
    /// Open + rebuild (then optionally delete half).
    Scan {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        delete_half: bool,
        #[arg(long)]
        batch_cap: usize,
        #[arg(long, value_parser = parse_duration)]
        settle: Duration,
    },
    /// Numbered batches until killed.
    TornWriter {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        lag: u64,
        #[arg(long)]
        max_batch: u64,
        #[arg(long)]
        sessions: u64,
        #[arg(long)]
        payload: usize,
        /// Stop by itself after this long.
        #[arg(long, value_parser = parse_duration)]
        limit: Duration,
    },
}

/// Runs a worker role (in the child process) and prints its result line.
pub fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let result = match args.role {
        Role::Steady {
            target,
            rate,
            duration,
            warmup,
            sessions,
            queued,
            producers,
            batch_cap,
            payload,
        } => steady::run(&steady::SteadyConfig {
            kind: target.store,
            dir: target.dir,
            cache_bytes: target.cache_mb * MIB,
            sessions: sessions.max(1),
            queued,
            producers,
            rate,
            duration,
            warmup,
            batch_cap: batch_cap.max(1),
            payload,
        })?,
        Role::Fill {
            target,
            sessions,
            messages,
            batch_cap,
            payload,
            churn,
        } => recovery::fill(
            &recovery::FillConfig {
                kind: target.store,
                dir: target.dir,
                cache_bytes: target.cache_mb * MIB,
                sessions,
                messages,
                payload,
                batch_cap: batch_cap.max(1),
                churn,
            },
            &mut stdout.lock(),
        )?,
        Role::Scan {
            target,
            delete_half,
            batch_cap,
            settle,
        } => recovery::scan(&recovery::ScanConfig {
            kind: target.store,
            dir: target.dir,
            cache_bytes: target.cache_mb * MIB,
            delete_half,
            batch_cap: batch_cap.max(1),
            settle,
        })?,
        Role::TornWriter {
            target,
            lag,
            max_batch,
            sessions,
            payload,
            limit,
        } => {
            let shape = torn::TornShape {
                lag,
                max_batch,
                sessions,
                payload,
            };
            let last = torn::write(
                target.store,
                &target.dir,
                target.cache_mb * MIB,
                shape,
                limit,
                None,
                &mut stdout.lock(),
            )?;
            serde_json::json!({ "last_batch": last })
        }
    };
    println!("result {result}");
    Ok(())
}

/// `--rate` as a worker argument.
pub(super) fn rate_arg(rate: Rate) -> String {
    match rate {
        Rate::PerSecond(r) => format!("{r}"),
        Rate::Unbounded => "unbounded".into(),
    }
}

/// The arguments every worker role starts with.
pub(super) fn worker_args(role: &str, kind: Kind, dir: &Path, cache_mb: u64) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec!["store-worker".into(), role.into()];
    push_args(
        &mut v,
        &[
            ("--store", kind.name().into()),
            ("--cache-mb", cache_mb.to_string()),
        ],
    );
    v.push("--dir".into());
    v.push(dir.into());
    v
}

/// Appends `--flag value` pairs.
pub(super) fn push_args(v: &mut Vec<OsString>, pairs: &[(&str, String)]) {
    for (k, val) in pairs {
        v.push((*k).into());
        v.push(val.into());
    }
}

/// Starts a worker with its stdout piped to us and its stderr on ours.
pub(super) fn spawn_worker(args: Vec<OsString>) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("own executable")?;
    Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("spawn store-worker")
}

/// Forwards a child's stdout lines to a channel (closed at EOF).
pub(super) fn line_channel(child: &mut Child) -> anyhow::Result<mpsc::Receiver<String>> {
    let stdout = child.stdout.take().context("worker stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

/// Runs a worker to its end (killing it after `timeout`) and returns its `result` JSON.
pub(super) fn run_worker(
    args: Vec<OsString>,
    timeout: Duration,
) -> anyhow::Result<serde_json::Value> {
    let what = args
        .get(1)
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut child = spawn_worker(args)?;
    let lines = line_channel(&mut child)?;
    let deadline = Instant::now() + timeout;
    let mut result = None;
    loop {
        match lines.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => {
                if let Some(json) = line.strip_prefix("result ") {
                    result = Some(serde_json::from_str(json)?);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("store-worker {what} still running after {timeout:?}: killed");
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("store-worker {what} failed: {status}");
    }
    result.with_context(|| format!("store-worker {what} printed no result"))
}
