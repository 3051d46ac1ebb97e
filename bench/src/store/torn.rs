//! Torn writes: `store-worker torn-writer` commits numbered batches as fast as it can and writes `c <batch>` to
//! its stdout after each commit returned; the parent SIGKILLs it at a random moment, then opens the store itself
//! and checks it against what was reported — every reported batch is there, in full, and nothing else is.
//!
//! Batch `b` is a pure function of `b`: it appends `len(b)` messages (1..=`max_batch` of them) with keys and
//! values derived from `(b, i)`, deletes every message of batch `b - lag`, and sets the marker record to `b`. So
//! after batch `m` the store holds exactly the messages of batches `m - lag + 1 ..= m`, and the checker can
//! recompute every key and value without a log of what was written.

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::engine::{self, Kind, Op, Table};
use super::workload::{Rng, SessionKey, message_value, mix, msg_key, split_msg_key};
use super::{MIB, worker};
use crate::stats::Latency;

/// Sessions the torn-write messages spread over.
const TORN_SESSIONS: u64 = 10_000;
/// A writer stops by itself after this long if no kill came (the kill comes within `kill_within`).
const TORN_WRITER_LIMIT: Duration = Duration::from_secs(60);

/// The session-record key holding the number of the last committed batch.
pub const MARKER: &SessionKey = b"~torn-last-batch";

/// The torn-write loop for one store: `kills` writers, each killed at a random moment, each followed by a check.
pub fn measure(
    args: &super::StoreArgs,
    kind: Kind,
    root: &Path,
    rng: &mut Rng,
) -> anyhow::Result<serde_json::Value> {
    let dir = super::fresh_dir(root, kind, "torn")?;
    let shape = TornShape {
        lag: args.torn_lag,
        max_batch: args.torn_max_batch,
        sessions: TORN_SESSIONS,
        payload: args.payload,
    };
    let mut previous = None;
    let mut verdicts = Vec::new();
    let mut open_s = Latency::new();
    let within_ms = u64::try_from(args.kill_within.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    for i in 0..args.kills {
        let mut cmd = worker::worker_args("torn-writer", kind, &dir, args.cache_mb);
        worker::push_args(
            &mut cmd,
            &[
                ("--lag", shape.lag.to_string()),
                ("--max-batch", shape.max_batch.to_string()),
                ("--sessions", shape.sessions.to_string()),
                ("--payload", shape.payload.to_string()),
                ("--limit", format!("{}ms", TORN_WRITER_LIMIT.as_millis())),
            ],
        );
        let mut child = worker::spawn_worker(cmd)?;
        let lines = worker::line_channel(&mut child)?;
        let during_open = i % 4 == 3;
        let mut reported = None;
        if !during_open {
            // Wait for the first commit: the store is open and writing.
            let deadline = Instant::now() + args.worker_timeout;
            while reported.is_none() {
                match lines.recv_timeout(Duration::from_millis(50)) {
                    Ok(line) => reported = last_reported(line.as_bytes()).or(reported),
                    Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                    Err(_) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        bail!("{}: torn writer made no commit", kind.name());
                    }
                }
            }
        }
        let delay = Duration::from_millis(1 + rng.below(within_ms));
        std::thread::sleep(delay);
        child.kill()?;
        let status = child.wait()?;
        // Lines already in the pipe were written before the kill: those commits returned.
        for line in lines.iter() {
            reported = last_reported(line.as_bytes()).or(reported);
        }
        let verdict = verify(kind, &dir, args.cache_mb * MIB, shape, reported, previous);
        open_s.record(Duration::from_secs_f64(verdict.open_s));
        eprintln!(
            "store: torn {} kill {delay:?} after {} ({status}): reported {:?} found {:?}, {} messages, open {:.3}s{}",
            kind.name(),
            if during_open { "start" } else { "first commit" },
            verdict.reported,
            verdict.found,
            verdict.messages,
            verdict.open_s,
            if verdict.failures.is_empty() {
                String::new()
            } else {
                format!(", FAILED: {:?}", verdict.failures)
            }
        );
        previous = verdict.found.or(previous);
        verdicts.push(serde_json::json!({
            "kill_after": if during_open { "start" } else { "first commit" },
            "delay_ms": delay.as_millis(),
            "verdict": verdict,
        }));
    }
    let failures = verdicts
        .iter()
        .filter(|v| {
            v["verdict"]["failures"]
                .as_array()
                .is_some_and(|f| !f.is_empty())
        })
        .count();
    let disk = engine::disk_usage(&dir)?;
    super::remove_unless_kept(&dir, args.keep);
    Ok(serde_json::json!({
        "phase": "torn",
        "store": kind.name(),
        "kills": verdicts.len(),
        "failed_kills": failures,
        "batches_committed": previous.map_or(0, |p| p + 1),
        "open_after_kill": open_s.summary(),
        "disk_at_end": disk,
        "kills_detail": verdicts,
    }))
}

/// The shape of the batches.
#[derive(Debug, Clone, Copy)]
pub struct TornShape {
    /// Batches a message lives before its batch deletes it.
    pub lag: u64,
    /// Most messages one batch appends.
    pub max_batch: u64,
    /// Sessions the messages spread over.
    pub sessions: u64,
    /// Payload bytes of each message.
    pub payload: usize,
}

impl TornShape {
    /// Messages batch `b` appends.
    pub fn len(&self, b: u64) -> u64 {
        1 + mix(b ^ 0x7042) % self.max_batch.max(1)
    }

    /// Session and sequence of message `i` of batch `b` (a batch never appends more than 2^16 messages).
    fn slot(&self, b: u64, i: u64) -> (u64, u64) {
        (
            mix(b.wrapping_mul(65_537) + i) % self.sessions.max(1),
            (b << 16) | i,
        )
    }

    /// The ops of batch `b`.
    pub fn ops(&self, b: u64) -> Vec<Op> {
        let mut ops = Vec::new();
        for i in 0..self.len(b) {
            let (session, seq) = self.slot(b, i);
            ops.push(Op::Append {
                key: msg_key(session, seq),
                value: message_value(session, seq, self.payload),
            });
        }
        if let Some(old) = b.checked_sub(self.lag) {
            for i in 0..self.len(old) {
                let (session, seq) = self.slot(old, i);
                ops.push(Op::Delete {
                    key: msg_key(session, seq),
                });
            }
        }
        ops.push(Op::Meta {
            session: *MARKER,
            value: b.to_be_bytes().to_vec(),
        });
        ops
    }
}

/// Continues the batch sequence in `dir` (after the marker's batch) until `limit` runs out or `batches` were
/// committed, writing `c <batch>` to `progress` after each commit. Returns the last batch committed.
pub fn write(
    kind: Kind,
    dir: &Path,
    cache_bytes: u64,
    shape: TornShape,
    limit: Duration,
    batches: Option<u64>,
    progress: &mut dyn Write,
) -> anyhow::Result<Option<u64>> {
    let until = Instant::now() + limit;
    let mut store = engine::open(kind, dir, cache_bytes)?;
    let mut next = marker(store.as_ref())?.map_or(0, |m| m + 1);
    let mut last = None;
    let mut done = 0u64;
    while Instant::now() < until && batches.is_none_or(|n| done < n) {
        store.commit(&shape.ops(next))?;
        writeln!(progress, "c {next}")?;
        progress.flush()?;
        last = Some(next);
        next += 1;
        done += 1;
    }
    store.close()?;
    Ok(last)
}

fn marker(store: &dyn engine::Store) -> anyhow::Result<Option<u64>> {
    Ok(match store.get(Table::Meta, MARKER)? {
        Some(v) => {
            Some(u64::from_be_bytes(v.as_slice().try_into().map_err(
                |_| anyhow::anyhow!("marker record of {} bytes", v.len()),
            )?))
        }
        None => None,
    })
}

/// The last `c <batch>` line of a writer's stdout (read to its end).
pub fn last_reported(out: impl BufRead) -> Option<u64> {
    out.lines()
        .map_while(Result::ok)
        .filter_map(|l| l.strip_prefix("c ").and_then(|n| n.trim().parse().ok()))
        .last()
}

/// What the checker found after one kill.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verdict {
    /// Last batch the writer reported committed before it died.
    pub reported: Option<u64>,
    /// Batch the store's marker says was committed last.
    pub found: Option<u64>,
    /// Seconds the open took (crash recovery included).
    pub open_s: f64,
    /// Messages in the store.
    pub messages: u64,
    /// Everything wrong, empty when the store is exactly what it must be.
    pub failures: Vec<String>,
}

/// Opens the store after a writer died and checks it: it opens; the marker batch is the reported one or the one
/// after it (killed between commit and report); the messages are exactly those of the live batches, with their
/// values.
pub fn verify(
    kind: Kind,
    dir: &Path,
    cache_bytes: u64,
    shape: TornShape,
    reported: Option<u64>,
    previous: Option<u64>,
) -> Verdict {
    let mut verdict = Verdict {
        reported,
        found: None,
        open_s: 0.0,
        messages: 0,
        failures: Vec::new(),
    };
    let start = Instant::now();
    let store = match engine::open(kind, dir, cache_bytes) {
        Ok(s) => s,
        Err(e) => {
            verdict.failures.push(format!("open failed: {e}"));
            return verdict;
        }
    };
    verdict.open_s = start.elapsed().as_secs_f64();
    match marker(store.as_ref()) {
        Ok(m) => verdict.found = m,
        Err(e) => verdict.failures.push(format!("marker unreadable: {e}")),
    }
    // Committed and reported, or committed before an earlier kill: must be there.
    let floor = reported.or(previous);
    let ceiling = floor.map_or(0, |f| f + 1);
    match (verdict.found, floor) {
        (None, Some(f)) => verdict
            .failures
            .push(format!("no batch found, batch {f} was committed")),
        (Some(m), Some(f)) if m < f => verdict
            .failures
            .push(format!("batch {m} found, batch {f} was committed (lost)")),
        (Some(m), _) if m > ceiling => verdict
            .failures
            .push(format!("batch {m} found beyond {ceiling}, never started")),
        _ => {}
    }
    let Some(m) = verdict.found else {
        let _ = store.close();
        return verdict;
    };
    let first_live = (m + 1).saturating_sub(shape.lag);
    let expected: u64 = (first_live..=m).map(|b| shape.len(b)).sum();
    let mut wrong = 0u64;
    let mut first_wrong = None;
    let scanned = store.scan(Table::Messages, &mut |k, v| {
        let ok = split_msg_key(k).is_some_and(|(_, seq)| {
            let (b, i) = (seq >> 16, seq & 0xffff);
            let session = shape.slot(b, i).0;
            (first_live..=m).contains(&b)
                && i < shape.len(b)
                && msg_key(session, seq)[..] == *k
                && message_value(session, seq, shape.payload) == v
        });
        if !ok {
            wrong += 1;
            first_wrong.get_or_insert_with(|| format!("{k:?}"));
        }
    });
    match scanned {
        Ok(n) => {
            verdict.messages = n;
            if wrong > 0 {
                verdict.failures.push(format!(
                    "{wrong} messages not of batches {first_live}..={m} or with a wrong value (first {})",
                    first_wrong.unwrap_or_default()
                ));
            }
            if n != expected {
                verdict.failures.push(format!(
                    "{n} messages, batches {first_live}..={m} hold {expected}"
                ));
            }
        }
        Err(e) => verdict.failures.push(format!("scan failed: {e}")),
    }
    if let Err(e) = store.close() {
        verdict.failures.push(format!("close failed: {e}"));
    }
    verdict
}
