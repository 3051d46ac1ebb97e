//! `store-worker steady`: the node's write path in miniature. A fresh store is filled with `queued` messages for
//! each of `sessions` sessions; then `producers` threads (the connection tasks) offer ops at a fixed total rate or
//! as fast as the writer takes them, and one writer thread commits every op waiting (up to `batch_cap`) in one
//! durable transaction — the group commit — and moves a committed-up-to watermark.
//!
//! Each producer owns the sessions `k, k + P, k + 2P, …`, so it knows every queue's head and tail without sharing:
//! an op is 1 % a session-record update, otherwise an append to a random owned session or the delete of the oldest
//! message of one (the client's PUBACK), half and half. Latency is measured from the op's intended send time (open
//! loop: a producer that falls behind does not hide the wait) to the end of the commit that made it durable.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::engine::{self, Kind, Op, Store};
use super::workload::{Rng, message_value, meta_value, msg_key, session_key};
use crate::stats::{self, Latency};
use crate::throughput::Rate;

/// Of 1,000 ops, this many are session-record updates (~1 %).
const META_PER_MILLE: u64 = 10;

/// What one steady run does.
#[derive(Debug, Clone)]
pub struct SteadyConfig {
    /// Store under test.
    pub kind: Kind,
    /// A fresh, empty directory for the store.
    pub dir: PathBuf,
    /// Cache of the store in bytes.
    pub cache_bytes: u64,
    /// Sessions.
    pub sessions: u64,
    /// Messages queued per session by the fill.
    pub queued: u64,
    /// Producer threads.
    pub producers: u64,
    /// Offered total ops/s.
    pub rate: Rate,
    /// Whole run after the fill, warm-up included.
    pub duration: Duration,
    /// Start of the run that is not measured.
    pub warmup: Duration,
    /// Most ops in one commit.
    pub batch_cap: usize,
    /// Payload bytes of each message.
    pub payload: usize,
}

/// An op on its way to the writer.
struct Submitted {
    op: Op,
    /// When it was (meant to be) sent.
    at: Instant,
}

/// The measurement window, shared by every thread of a run.
#[derive(Clone, Copy)]
struct Window {
    from: Instant,
    until: Instant,
}

impl Window {
    fn contains(&self, t: Instant) -> bool {
        t >= self.from && t < self.until
    }
}

/// What the writer thread measured.
#[derive(Default)]
struct WriterReport {
    op_latency: Latency,
    commit_time: Latency,
    batch_sizes: Vec<u32>,
    /// Writer thread CPU seconds inside the window.
    cpu_s: f64,
}

/// Runs one steady measurement and returns its JSON report.
pub fn run(cfg: &SteadyConfig) -> anyhow::Result<serde_json::Value> {
    let mut store = engine::open(cfg.kind, &cfg.dir, cfg.cache_bytes)
        .with_context(|| format!("open {} in {}", cfg.kind.name(), cfg.dir.display()))?;
    let fill = fill(store.as_mut(), cfg)?;

    let producers = cfg.producers.clamp(1, cfg.sessions.max(1));
    let (tx, rx) = sync_channel::<Submitted>(cfg.batch_cap.max(1) * 2);
    let committed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let window = Window {
        from: start + cfg.warmup,
        until: start + cfg.duration.max(cfg.warmup + Duration::from_millis(100)),
    };
    let writer = {
        let committed = Arc::clone(&committed);
        let cap = cfg.batch_cap.max(1);
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(store, &rx, cap, window, &committed))?
    };
    let mut handles = Vec::new();
    for k in 0..producers {
        let tx = tx.clone();
        let owned = (cfg.sessions.saturating_sub(k)).div_ceil(producers);
        let producer = Producer {
            first: k,
            stride: producers,
            queues: vec![(0, cfg.queued); usize::try_from(owned)?],
            rng: Rng::new(0x5eed ^ k),
            payload: cfg.payload,
        };
        let per_producer = match cfg.rate {
            Rate::PerSecond(r) => Some(r / producers as f64),
            Rate::Unbounded => None,
        };
        handles.push(
            std::thread::Builder::new()
                .name(format!("producer-{k}"))
                .spawn(move || producer.run(&tx, per_producer, start, window))?,
        );
    }
    drop(tx);

    // The process CPU and the committed count at both ends of the window.
    std::thread::sleep(window.from.saturating_duration_since(Instant::now()));
    let (cpu_from, ops_from) = (stats::own_cpu_seconds(), committed.load(Ordering::Acquire));
    std::thread::sleep(window.until.saturating_duration_since(Instant::now()));
    let (cpu_until, ops_until) = (stats::own_cpu_seconds(), committed.load(Ordering::Acquire));
    let window_s = (window.until - window.from).as_secs_f64();

    let mut producers_cpu_s = 0.0;
    let mut offered_sent = 0u64;
    for h in handles {
        let (cpu, sent) = h
            .join()
            .map_err(|_| anyhow::anyhow!("producer panicked"))??;
        producers_cpu_s += cpu;
        offered_sent += sent;
    }
    let (store, report) = writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    let (rss, _) = stats::own_memory().unwrap_or_default();
    store.close()?;
    let disk = engine::disk_usage(&cfg.dir)?;
    let (_, peak_rss) = stats::own_memory().unwrap_or_default();

    let ops = ops_until.saturating_sub(ops_from);
    let per_m = |cpu_s: f64| {
        if ops == 0 {
            0.0
        } else {
            cpu_s * 1e6 / ops as f64
        }
    };
    let process_cpu_s = match (cpu_from, cpu_until) {
        (Some(a), Some(b)) => b - a,
        _ => 0.0,
    };
    let mut sizes = report.batch_sizes;
    sizes.sort_unstable();
    let commits = sizes.len();
    let at = |q: f64| {
        sizes
            .get(((commits as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    Ok(serde_json::json!({
        "phase": "steady",
        "store": cfg.kind.name(),
        "offered_ops_per_s": match cfg.rate { Rate::PerSecond(r) => serde_json::json!(r), Rate::Unbounded => serde_json::json!("unbounded") },
        "sessions": cfg.sessions,
        "queued_per_session": cfg.queued,
        "producers": producers,
        "batch_cap": cfg.batch_cap,
        "fill": fill,
        "window_s": window_s,
        "sent_in_run": offered_sent,
        "achieved_ops_per_s": ops as f64 / window_s,
        "commits_per_s": commits as f64 / window_s,
        "batch": {
            "mean": if commits == 0 { 0.0 } else { sizes.iter().map(|&s| f64::from(s)).sum::<f64>() / commits as f64 },
            "p50": at(0.5), "p99": at(0.99), "max": sizes.last().copied().unwrap_or(0),
        },
        "op_latency": report.op_latency.summary(),
        "commit_time": report.commit_time.summary(),
        "cpu_s_per_1m_ops": {
            "process": per_m(process_cpu_s),
            "store": per_m(process_cpu_s - producers_cpu_s),
            "writer_thread": per_m(report.cpu_s),
        },
        "rss_bytes": rss,
        "peak_rss_bytes": peak_rss,
        "disk_after": disk,
    }))
}

/// Queues `queued` messages for every session and writes every session record, `batch_cap` ops per commit.
fn fill(store: &mut dyn Store, cfg: &SteadyConfig) -> anyhow::Result<serde_json::Value> {
    let start = Instant::now();
    let mut batch = Vec::with_capacity(cfg.batch_cap);
    let mut ops = 0u64;
    for s in 0..cfg.sessions {
        batch.push(Op::Meta {
            session: session_key(s),
            value: meta_value(s, cfg.queued),
        });
        for q in 0..cfg.queued {
            batch.push(Op::Append {
                key: msg_key(s, q),
                value: message_value(s, q, cfg.payload),
            });
        }
        if batch.len() >= cfg.batch_cap {
            ops += batch.len() as u64;
            store.commit(&batch)?;
            batch.clear();
        }
    }
    ops += batch.len() as u64;
    store.commit(&batch)?;
    let secs = start.elapsed().as_secs_f64();
    Ok(serde_json::json!({ "ops": ops, "secs": secs, "ops_per_s": ops as f64 / secs }))
}

/// The group-commit writer: blocks for one op, takes every other op already waiting (up to `cap`), commits them
/// in one durable transaction, then publishes the new watermark. Returns when every producer has hung up.
fn writer_loop(
    mut store: Box<dyn Store>,
    rx: &Receiver<Submitted>,
    cap: usize,
    window: Window,
    committed: &AtomicU64,
) -> anyhow::Result<(Box<dyn Store>, WriterReport)> {
    let mut report = WriterReport::default();
    let mut ops = Vec::with_capacity(cap);
    let mut sent_at = Vec::with_capacity(cap);
    let mut cpu_from = None;
    let mut total = 0u64;
    while let Ok(first) = rx.recv() {
        ops.push(first.op);
        sent_at.push(first.at);
        while ops.len() < cap {
            match rx.try_recv() {
                Ok(s) => {
                    ops.push(s.op);
                    sent_at.push(s.at);
                }
                Err(_) => break,
            }
        }
        let began = Instant::now();
        if cpu_from.is_none() && began >= window.from {
            cpu_from = stats::thread_cpu_seconds();
        }
        store.commit(&ops)?;
        let done = Instant::now();
        total += ops.len() as u64;
        // The watermark: connection tasks waiting on op numbers ≤ this one may now send their PUBACKs.
        committed.store(total, Ordering::Release);
        if window.contains(began) {
            report.commit_time.record(done - began);
            report
                .batch_sizes
                .push(u32::try_from(ops.len()).unwrap_or(u32::MAX));
            if done >= window.until
                && let (Some(a), Some(b)) = (cpu_from, stats::thread_cpu_seconds())
            {
                report.cpu_s = b - a;
                cpu_from = None;
            }
        }
        for &at in &sent_at {
            if window.contains(at) {
                report.op_latency.record(done - at);
            }
        }
        ops.clear();
        sent_at.clear();
    }
    if let (Some(a), Some(b)) = (cpu_from, stats::thread_cpu_seconds())
        && report.cpu_s == 0.0
    {
        report.cpu_s = b - a;
    }
    Ok((store, report))
}

/// One connection-task stand-in: owns some sessions' queues and offers ops for them.
struct Producer {
    /// First owned session; the others follow every `stride`.
    first: u64,
    stride: u64,
    /// (head, tail) sequence of each owned session's queue.
    queues: Vec<(u64, u64)>,
    rng: Rng,
    payload: usize,
}

impl Producer {
    /// Sends ops until the window ends, paced at `per_second` or as fast as the channel takes them. Returns its
    /// thread's CPU seconds inside the window and the ops it sent.
    fn run(
        mut self,
        tx: &SyncSender<Submitted>,
        per_second: Option<f64>,
        start: Instant,
        window: Window,
    ) -> anyhow::Result<(f64, u64)> {
        let mut sent = 0u64;
        let mut cpu_from = None;
        loop {
            let now = Instant::now();
            if cpu_from.is_none() && now >= window.from {
                cpu_from = stats::thread_cpu_seconds();
            }
            if now >= window.until {
                break;
            }
            match per_second {
                Some(rate) => {
                    // Sleep until the next op is due, then send every op that is due by now (a late wake-up
                    // sends a burst; each op's latency still counts from when it was due).
                    let next = start + Duration::from_secs_f64(sent as f64 / rate);
                    if next > now {
                        std::thread::sleep(next - now);
                        continue;
                    }
                    let due = ((now - start).as_secs_f64() * rate) as u64 + 1;
                    while sent < due {
                        let at = start + Duration::from_secs_f64(sent as f64 / rate);
                        self.send(tx, at)?;
                        sent += 1;
                    }
                }
                None => {
                    self.send(tx, now)?;
                    sent += 1;
                }
            }
        }
        let cpu = match (cpu_from, stats::thread_cpu_seconds()) {
            (Some(a), Some(b)) => b - a,
            _ => 0.0,
        };
        Ok((cpu, sent))
    }

    fn send(&mut self, tx: &SyncSender<Submitted>, at: Instant) -> anyhow::Result<()> {
        let op = self.next_op();
        let submitted = Submitted { op, at };
        // A full channel is the writer's backpressure: wait for it (the wait shows in the op's latency).
        match tx.try_send(submitted) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(s)) => tx.send(s).map_err(|_| anyhow::anyhow!("writer gone")),
            Err(TrySendError::Disconnected(_)) => Err(anyhow::anyhow!("writer gone")),
        }
    }

    fn next_op(&mut self) -> Op {
        let n = self.queues.len() as u64;
        let i = self.rng.below(n);
        let session = self.first + i * self.stride;
        let r = self.rng.below(1000);
        let Some(queue) = self
            .queues
            .get_mut(usize::try_from(i).unwrap_or(usize::MAX))
        else {
            // Only when this producer owns no session (more producers than sessions): touch a record.
            return Op::Meta {
                session: session_key(self.first),
                value: meta_value(self.first, 0),
            };
        };
        if r < META_PER_MILLE {
            return Op::Meta {
                session: session_key(session),
                value: meta_value(session, queue.1),
            };
        }
        if r % 2 == 1 && queue.0 < queue.1 {
            let key = msg_key(session, queue.0);
            queue.0 += 1;
            return Op::Delete { key };
        }
        let seq = queue.1;
        queue.1 += 1;
        Op::Append {
            key: msg_key(session, seq),
            value: message_value(session, seq, self.payload),
        }
    }
}
