//! `store`: the embedded session store of issue 15 chosen by measurement — redb and fjall (and a variant of each)
//! under the node's workload on this machine's disk. Every measurement runs in a child process of its own
//! (`store-worker ROLE`, the same binary), so memory figures are per store and a `kill -9` hits a real writer:
//!
//! - `probe`: the disk's own floor, 4 KiB appends each followed by `fdatasync` / `fsync`;
//! - `steady` ([`steady`]): group commit under offered load (per rate: achieved ops/s, op latency submit→durable,
//!   commit time, batch sizes, CPU per 1M ops, RSS, disk);
//! - `recovery` ([`recovery`]): fill 1M queued messages over 100k sessions, close, reopen + rebuild every queue
//!   (timed); delete the older half, disk space after the deletes, after background work, after a compaction;
//!   then the same fill killed with SIGKILL mid-stream and the same reopen;
//! - `torn` ([`torn`]): a heavy writer SIGKILLed at random moments, N times; after each kill the store must open
//!   and hold every batch reported committed, whole, and nothing else.
//!
//! [`engine`] puts both crates behind one interface; [`workload`] derives keys and records from numbers. The
//! parent prints one JSON line with every result and a markdown summary on stderr ([`report`]).

mod engine;
mod recovery;
mod report;
mod steady;
#[cfg(test)]
mod tests;
mod torn;
mod worker;
mod workload;

pub use worker::{WorkerArgs, worker};
use worker::{push_args, rate_arg, run_worker, worker_args};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use fleetgate_config::duration::parse_duration;

use crate::stats::Latency;
use crate::throughput::{Rate, parse_rate};
use engine::Kind;
use workload::Rng;

/// A part of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    /// The disk's fsync floor.
    Probe,
    /// Group commit under offered load.
    Steady,
    /// Fill, reopen, rebuild; disk space; reopen after a kill.
    Recovery,
    /// Kill -9 in a loop, check nothing committed is lost.
    Torn,
}

/// Options of `store`.
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// Stores to compare.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "redb,redb-qr,fjall,fjall-sd"
    )]
    pub stores: Vec<Kind>,
    /// Parts to run (each store in turn within a part, so that they share the machine's load of the moment).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "probe,steady,recovery,torn"
    )]
    pub phases: Vec<Phase>,
    /// Offered total ops/s of the steady runs (`10k`, `unbounded`).
    #[arg(long, value_delimiter = ',', default_value = "10k,50k,unbounded", value_parser = parse_rate)]
    pub rates: Vec<Rate>,
    /// Length of each steady run, warm-up included.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Unmeasured start of each steady run.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Sessions of the steady runs.
    #[arg(long, default_value_t = 10_000)]
    pub sessions: u64,
    /// Messages queued per session before a steady run starts.
    #[arg(long, default_value_t = 10)]
    pub queued: u64,
    /// Producer threads offering ops.
    #[arg(long, default_value_t = 4)]
    pub producers: u64,
    /// Most ops per commit.
    #[arg(long, default_value_t = 1024)]
    pub batch_cap: usize,
    /// Payload bytes per message (the stored record adds ~54 bytes of topic and fields).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Block/page cache of each store, MiB (redb's default is 1 GiB, fjall's 32 MiB: the same for both here).
    #[arg(long, default_value_t = 64)]
    pub cache_mb: u64,
    /// Messages of the recovery fill.
    #[arg(long, default_value_t = 1_000_000)]
    pub recovery_messages: u64,
    /// Sessions of the recovery fill.
    #[arg(long, default_value_t = 100_000)]
    pub recovery_sessions: u64,
    /// In the crash variant of the recovery, how long the writer churns after its fill before the kill.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub churn_before_kill: Duration,
    /// Longest wait for background work (fjall compactions) after deleting half of the queued messages.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub settle: Duration,
    /// Kills of the torn-write loop, per store.
    #[arg(long, default_value_t = 20)]
    pub kills: u32,
    /// A torn-write writer is killed at a uniformly random moment in (0, this] after its first commit (every
    /// fourth kill: after its start, so that some land while the store is still recovering from the last one).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub kill_within: Duration,
    /// Torn writes: batches a message lives before it is deleted.
    #[arg(long, default_value_t = 256)]
    pub torn_lag: u64,
    /// Torn writes: most messages appended per batch (at most 65,535).
    #[arg(long, default_value_t = 1024)]
    pub torn_max_batch: u64,
    /// Where the stores are created (default: the temp dir; refused on tmpfs, which never syncs to a disk).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Measure on tmpfs anyway (figures then say nothing about a disk).
    #[arg(long)]
    pub allow_tmpfs: bool,
    /// Keep the stores' directories.
    #[arg(long)]
    pub keep: bool,
    /// Seed of the kill moments (default: from the clock; reported).
    #[arg(long)]
    pub seed: Option<u64>,
    /// A worker still running after this long is killed and the run fails.
    #[arg(long, default_value = "15m", value_parser = parse_duration)]
    pub worker_timeout: Duration,
}

const MIB: u64 = 1024 * 1024;
/// How long the fsync probe runs per mode.
const PROBE_TIME: Duration = Duration::from_secs(2);
/// Bytes of each fsync probe write: one page, as a small group commit writes.
const PROBE_WRITE: usize = 4096;

/// Runs the comparison and returns its JSON line.
pub fn run(args: StoreArgs) -> anyhow::Result<serde_json::Value> {
    if args.torn_max_batch == 0 || args.torn_max_batch > 65_535 {
        bail!("--torn-max-batch must be 1..=65535");
    }
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base).with_context(|| format!("create {}", base.display()))?;
    let fs = fs_type(&base).unwrap_or_else(|| "unknown".into());
    if fs == "tmpfs" && !args.allow_tmpfs {
        bail!(
            "{} is on tmpfs (no disk behind fsync); pass --dir on a real disk or --allow-tmpfs",
            base.display()
        );
    }
    let mut run_dir = tempfile::Builder::new()
        .prefix("fleetgate-store-")
        .tempdir_in(&base)?;
    if args.keep {
        run_dir.disable_cleanup(true);
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let mut rng = Rng::new(seed);
    eprintln!(
        "store: stores in {} ({fs}), seed {seed}",
        run_dir.path().display()
    );
    let mut results = Vec::new();
    for &phase in &args.phases {
        match phase {
            Phase::Probe => results.push(with_load(probe(run_dir.path())?)),
            Phase::Steady => {
                for &rate in &args.rates {
                    for &kind in &args.stores {
                        let dir = fresh_dir(run_dir.path(), kind, &format!("steady-{rate:?}"))?;
                        let mut cmd = worker_args("steady", kind, &dir, args.cache_mb);
                        push_args(
                            &mut cmd,
                            &[
                                ("--rate", rate_arg(rate)),
                                ("--duration", format!("{}ms", args.duration.as_millis())),
                                ("--warmup", format!("{}ms", args.warmup.as_millis())),
                                ("--sessions", args.sessions.to_string()),
                                ("--queued", args.queued.to_string()),
                                ("--producers", args.producers.to_string()),
                                ("--batch-cap", args.batch_cap.to_string()),
                                ("--payload", args.payload.to_string()),
                            ],
                        );
                        let r = run_worker(cmd, args.worker_timeout)?;
                        eprintln!("store: {}", report::steady_line(&r));
                        results.push(with_load(r));
                        remove_unless_kept(&dir, args.keep);
                    }
                }
            }
            Phase::Recovery => {
                for &kind in &args.stores {
                    results.extend(recovery::measure(&args, kind, run_dir.path())?);
                }
            }
            Phase::Torn => {
                for &kind in &args.stores {
                    let r = torn::measure(&args, kind, run_dir.path(), &mut rng)?;
                    eprintln!("store: {}", report::torn_line(&r));
                    results.push(with_load(r));
                }
            }
        }
    }
    let out = serde_json::json!({
        "bench": "store",
        "fs": fs,
        "seed": seed,
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "results": results,
    });
    eprintln!("{}", report::markdown(&out));
    Ok(out)
}

/// The disk's floor: 4 KiB appends, each followed by `fdatasync`, then by `fsync`.
fn probe(dir: &Path) -> anyhow::Result<serde_json::Value> {
    use std::io::Write as _;
    let mut out = serde_json::json!({ "phase": "probe" });
    for (name, data_only) in [("fdatasync", true), ("fsync", false)] {
        let path = dir.join(format!("probe-{name}"));
        let mut file = std::fs::File::create(&path)?;
        let block = vec![0x5au8; PROBE_WRITE];
        let mut lat = Latency::new();
        let start = Instant::now();
        while start.elapsed() < PROBE_TIME {
            let t = Instant::now();
            file.write_all(&block)?;
            if data_only {
                file.sync_data()?;
            } else {
                file.sync_all()?;
            }
            lat.record(t.elapsed());
        }
        drop(file);
        std::fs::remove_file(&path)?;
        let mut s = lat.summary();
        crate::stats::extend(
            &mut s,
            serde_json::json!({ "per_s": lat.count() as f64 / PROBE_TIME.as_secs_f64() }),
        );
        crate::stats::extend(&mut out, serde_json::json!({ name: s }));
    }
    eprintln!("store: probe {out}");
    Ok(out)
}

fn stats_tag(v: &mut serde_json::Value, phase: &str, kind: Kind) {
    crate::stats::extend(
        v,
        serde_json::json!({ "phase": phase, "store": kind.name() }),
    );
}

/// Adds the 1/5/15-minute load averages at the end of a measurement.
fn with_load(mut v: serde_json::Value) -> serde_json::Value {
    let load: Vec<f64> = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .filter_map(|f| f.parse().ok())
        .collect();
    crate::stats::extend(&mut v, serde_json::json!({ "loadavg": load }));
    v
}

fn fresh_dir(root: &Path, kind: Kind, what: &str) -> anyhow::Result<PathBuf> {
    let dir = root.join(format!("{}-{what}", kind.name()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn remove_unless_kept(dir: &Path, keep: bool) {
    if !keep {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The file system type of the mount holding `path` (longest mount-point prefix in /proc/mounts).
fn fs_type(path: &Path) -> Option<String> {
    let path = path.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, mount, fs) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(mount)
                .then(|| (mount.len(), fs.to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, fs)| fs)
}
