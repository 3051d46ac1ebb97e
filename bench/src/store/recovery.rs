//! `store-worker fill` and `store-worker scan`: what a node's restart costs. `fill` queues `messages` messages over
//! `sessions` sessions (interleaved across sessions, as traffic arrives) in durable batches, reporting each commit
//! on stdout; then closes cleanly, or keeps writing a 1:1 append/delete churn until the parent kills it (`kill -9`
//! mid-stream) or `churn` runs out. `scan` opens the store and rebuilds every session's queue in memory, timed;
//! optionally it then deletes the older half of every queue and reports the disk space after the deletes, after
//! the store's own background work settled, and after an explicit compaction. [`measure`] is the parent's side:
//! fill → clean reopen with deletes, then fill → churn → `kill -9` → reopen.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::engine::{self, Kind, Op, Store, Table};
use super::worker;
use super::workload::{
    Rng, SessionKey, message_value, meta_value, msg_key, session_key, split_msg_key,
};
use crate::stats;

/// How often `scan` looks whether the store's background work is done.
const SETTLE_POLL: Duration = Duration::from_millis(100);
/// Background work must stay idle this long to count as settled (fjall may start a compaction right after a flush).
const SETTLE_QUIET: Duration = Duration::from_secs(1);

/// Every session's queue rebuilt in memory: (sequence, stored record), oldest first.
type Queues = HashMap<SessionKey, VecDeque<(u64, Box<[u8]>)>>;

/// Fill + clean reopen + delete half, then fill + kill + reopen, for one store.
pub fn measure(
    args: &super::StoreArgs,
    kind: Kind,
    root: &Path,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    let fill_args = |dir: &Path, churn: Option<Duration>| {
        let mut cmd = worker::worker_args("fill", kind, dir, args.cache_mb);
        worker::push_args(
            &mut cmd,
            &[
                ("--sessions", args.recovery_sessions.to_string()),
                ("--messages", args.recovery_messages.to_string()),
                ("--batch-cap", args.batch_cap.to_string()),
                ("--payload", args.payload.to_string()),
            ],
        );
        if let Some(c) = churn {
            worker::push_args(&mut cmd, &[("--churn", format!("{}ms", c.as_millis()))]);
        }
        cmd
    };
    let scan_args = |dir: &Path, delete_half: bool| {
        let mut cmd = worker::worker_args("scan", kind, dir, args.cache_mb);
        worker::push_args(
            &mut cmd,
            &[
                ("--batch-cap", args.batch_cap.to_string()),
                ("--settle", format!("{}ms", args.settle.as_millis())),
            ],
        );
        if delete_half {
            cmd.push("--delete-half".into());
        }
        cmd
    };

    // Clean: fill, close, reopen and rebuild, then delete half.
    let dir = super::fresh_dir(root, kind, "recovery-clean")?;
    let mut fill = worker::run_worker(fill_args(&dir, None), args.worker_timeout)?;
    super::stats_tag(&mut fill, "fill", kind);
    eprintln!("store: {}", super::report::fill_line(&fill));
    out.push(super::with_load(fill));
    let mut scan = worker::run_worker(scan_args(&dir, true), args.worker_timeout)?;
    super::stats_tag(&mut scan, "reopen-clean", kind);
    eprintln!("store: {}", super::report::scan_line(&scan));
    out.push(super::with_load(scan));
    super::remove_unless_kept(&dir, args.keep);

    // Crash: fill, churn, SIGKILL, reopen and rebuild.
    let dir = super::fresh_dir(root, kind, "recovery-kill")?;
    let churn_limit = args.churn_before_kill + args.worker_timeout;
    let mut child = worker::spawn_worker(fill_args(&dir, Some(churn_limit)))?;
    let lines = worker::line_channel(&mut child)?;
    let deadline = Instant::now() + args.worker_timeout;
    let mut kill_at = None;
    let mut last_progress = None;
    loop {
        let now = Instant::now();
        if kill_at.is_some_and(|k| now >= k) {
            break;
        }
        if now >= deadline {
            let _ = child.kill();
            bail!(
                "{}: fill did not finish within the worker timeout",
                kind.name()
            );
        }
        match lines.recv_timeout(Duration::from_millis(20)) {
            Ok(line) if line.starts_with("filled ") => {
                kill_at = Some(Instant::now() + args.churn_before_kill);
            }
            Ok(line) if line.starts_with("c ") => last_progress = Some(line),
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("{}: fill worker ended before the kill", kind.name())
            }
        }
    }
    child.kill()?;
    child.wait()?;
    // Lines already in the pipe were written before the kill: those commits returned.
    while let Ok(line) = lines.recv() {
        if line.starts_with("c ") {
            last_progress = Some(line);
        }
    }
    let (committed_ops, live) = last_progress
        .as_deref()
        .and_then(|l| {
            let mut it = l.split_whitespace().skip(1).map(|n| n.parse::<u64>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or_default();
    let mut scan = worker::run_worker(scan_args(&dir, false), args.worker_timeout)?;
    super::stats_tag(&mut scan, "reopen-after-kill", kind);
    crate::stats::extend(
        &mut scan,
        serde_json::json!({ "killed_after_committed_ops": committed_ops, "live_at_last_report": live }),
    );
    eprintln!("store: {}", super::report::scan_line(&scan));
    out.push(super::with_load(scan));
    super::remove_unless_kept(&dir, args.keep);
    Ok(out)
}

/// What `fill` does.
#[derive(Debug, Clone)]
pub struct FillConfig {
    /// Store under test.
    pub kind: Kind,
    /// A fresh directory for the store.
    pub dir: PathBuf,
    /// Cache of the store in bytes.
    pub cache_bytes: u64,
    /// Sessions.
    pub sessions: u64,
    /// Messages to queue, spread evenly over the sessions.
    pub messages: u64,
    /// Payload bytes of each message.
    pub payload: usize,
    /// Ops per commit.
    pub batch_cap: usize,
    /// After the fill, keep writing append/delete pairs this long (until killed, in the crash variant).
    pub churn: Option<Duration>,
}

/// Fills the store, writing `c <ops committed> <messages live>` after every commit and `filled <json>` once the
/// fill is durable to `progress`; returns the report.
pub fn fill(cfg: &FillConfig, progress: &mut dyn Write) -> anyhow::Result<serde_json::Value> {
    let sessions = cfg.sessions.max(1);
    let mut store = engine::open(cfg.kind, &cfg.dir, cfg.cache_bytes)
        .with_context(|| format!("open {} in {}", cfg.kind.name(), cfg.dir.display()))?;
    let start = Instant::now();
    let mut queues = vec![(0u64, 0u64); usize::try_from(sessions)?];
    let mut batch = Vec::with_capacity(cfg.batch_cap);
    let (mut committed, mut live) = (0u64, 0u64);
    for i in 0..cfg.messages {
        let s = i % sessions;
        if i < sessions {
            batch.push(Op::Meta {
                session: session_key(s),
                value: meta_value(s, cfg.messages / sessions),
            });
        }
        let q = &mut queues[usize::try_from(s)?];
        batch.push(Op::Append {
            key: msg_key(s, q.1),
            value: message_value(s, q.1, cfg.payload),
        });
        q.1 += 1;
        live += 1;
        if batch.len() >= cfg.batch_cap {
            commit(store.as_mut(), &mut batch, &mut committed, live, progress)?;
        }
    }
    commit(store.as_mut(), &mut batch, &mut committed, live, progress)?;
    let fill_s = start.elapsed().as_secs_f64();
    let disk = engine::disk_usage(&cfg.dir)?;
    let (rss, _) = stats::own_memory().unwrap_or_default();
    let filled = serde_json::json!({
        "messages": cfg.messages, "sessions": sessions, "secs": fill_s,
        "messages_per_s": cfg.messages as f64 / fill_s, "disk_after_fill": disk, "rss_bytes": rss,
    });
    writeln!(progress, "filled {filled}")?;
    progress.flush()?;

    if let Some(churn) = cfg.churn {
        let until = Instant::now() + churn;
        let mut rng = Rng::new(0xc4u64 << 56);
        while Instant::now() < until {
            for _ in 0..cfg.batch_cap {
                let s = rng.below(sessions);
                let q = &mut queues[usize::try_from(s)?];
                if batch.len() % 2 == 1 && q.0 < q.1 {
                    batch.push(Op::Delete {
                        key: msg_key(s, q.0),
                    });
                    q.0 += 1;
                    live -= 1;
                } else {
                    batch.push(Op::Append {
                        key: msg_key(s, q.1),
                        value: message_value(s, q.1, cfg.payload),
                    });
                    q.1 += 1;
                    live += 1;
                }
            }
            commit(store.as_mut(), &mut batch, &mut committed, live, progress)?;
        }
    }
    store.close()?;
    Ok(filled)
}

/// Commits `batch` and reports the running totals on `progress`.
fn commit(
    store: &mut dyn Store,
    batch: &mut Vec<Op>,
    committed: &mut u64,
    live: u64,
    progress: &mut dyn Write,
) -> anyhow::Result<()> {
    store.commit(batch)?;
    *committed += batch.len() as u64;
    batch.clear();
    writeln!(progress, "c {committed} {live}")?;
    progress.flush()?;
    Ok(())
}

/// What `scan` does.
#[derive(Debug, Clone)]
pub struct ScanConfig {
    /// Store under test.
    pub kind: Kind,
    /// The store's directory (filled by `fill`).
    pub dir: PathBuf,
    /// Cache of the store in bytes.
    pub cache_bytes: u64,
    /// Then delete the older half of every queue and follow the disk space.
    pub delete_half: bool,
    /// Ops per commit of the deletes.
    pub batch_cap: usize,
    /// Longest wait for the store's background work after the deletes.
    pub settle: Duration,
}

/// Opens the store and rebuilds every queue and session record in memory; returns the report.
pub fn scan(cfg: &ScanConfig) -> anyhow::Result<serde_json::Value> {
    let disk_before = engine::disk_usage(&cfg.dir)?;
    let start = Instant::now();
    let mut store = engine::open(cfg.kind, &cfg.dir, cfg.cache_bytes)
        .with_context(|| format!("open {} in {}", cfg.kind.name(), cfg.dir.display()))?;
    let open_s = start.elapsed().as_secs_f64();
    let (rss_open, _) = stats::own_memory().unwrap_or_default();
    let mut queues = Queues::new();
    let mut malformed = 0u64;
    let messages = store.scan(Table::Messages, &mut |k, v| match split_msg_key(k) {
        Some((session, seq)) => queues
            .entry(session)
            .or_default()
            .push_back((seq, v.into())),
        None => malformed += 1,
    })?;
    let mut records: HashMap<SessionKey, Box<[u8]>> = HashMap::new();
    let meta = store.scan(Table::Meta, &mut |k, v| {
        if let Ok(session) = SessionKey::try_from(k) {
            records.insert(session, v.into());
        }
    })?;
    let total_s = start.elapsed().as_secs_f64();
    let (rss_scan, _) = stats::own_memory().unwrap_or_default();
    let mut out = serde_json::json!({
        "phase": "scan",
        "store": cfg.kind.name(),
        "open_s": open_s,
        "scan_s": total_s - open_s,
        "open_and_scan_s": total_s,
        "messages": messages,
        "malformed_keys": malformed,
        "sessions_with_messages": queues.len(),
        "session_records": meta,
        "rss_after_open_bytes": rss_open,
        "rss_after_scan_bytes": rss_scan,
        "disk_before_open": disk_before,
        "disk_after_open": engine::disk_usage(&cfg.dir)?,
    });
    if cfg.delete_half {
        let halves = delete_half(store.as_mut(), cfg, &queues)?;
        stats::extend(&mut out, halves);
    }
    drop(queues);
    store.close()?;
    stats::extend(
        &mut out,
        serde_json::json!({ "disk_after_close": engine::disk_usage(&cfg.dir)? }),
    );
    Ok(out)
}

/// Deletes the older half of every queue, then follows the disk space: at once, once background work settled,
/// after an explicit compaction.
fn delete_half(
    store: &mut dyn Store,
    cfg: &ScanConfig,
    queues: &Queues,
) -> anyhow::Result<serde_json::Value> {
    let start = Instant::now();
    let mut batch = Vec::with_capacity(cfg.batch_cap);
    let mut deleted = 0u64;
    for (session, queue) in queues {
        for (seq, _) in queue.iter().take(queue.len() / 2) {
            let mut key = [0u8; super::workload::MSG_KEY_LEN];
            key[..session.len()].copy_from_slice(session);
            key[session.len()..].copy_from_slice(&seq.to_be_bytes());
            batch.push(Op::Delete { key });
            if batch.len() >= cfg.batch_cap {
                store.commit(&batch)?;
                deleted += batch.len() as u64;
                batch.clear();
            }
        }
    }
    store.commit(&batch)?;
    deleted += batch.len() as u64;
    let delete_s = start.elapsed().as_secs_f64();
    let after_delete = engine::disk_usage(&cfg.dir)?;

    let settle_start = Instant::now();
    let mut quiet_since = Instant::now();
    while settle_start.elapsed() < cfg.settle {
        if store.background_busy() {
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= SETTLE_QUIET {
            break;
        }
        std::thread::sleep(SETTLE_POLL);
    }
    let settled_s = settle_start.elapsed().as_secs_f64();
    let after_settle = engine::disk_usage(&cfg.dir)?;

    let compact_start = Instant::now();
    store.compact()?;
    let compact_s = compact_start.elapsed().as_secs_f64();
    Ok(serde_json::json!({
        "deleted": deleted,
        "delete_s": delete_s,
        "disk_after_delete": after_delete,
        "settle_waited_s": settled_s,
        "disk_after_settle": after_settle,
        "compact_s": compact_s,
        "disk_after_compact": engine::disk_usage(&cfg.dir)?,
    }))
}
