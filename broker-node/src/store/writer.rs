//! The store's writer thread: once writes wait, lets them gather for `commit_delay` (`[storage]`, 1 ms), takes
//! every op waiting (up to [`MAX_BATCH`]), coalesces them per key (the last
//! write of a key in a batch wins; a message queued and acknowledged within one batch never reaches the disk),
//! commits them as one fjall write batch with `PersistMode::SyncAll` (journal written and `fsync`ed before
//! `commit` returns), then advances the committed ticket and wakes the connections waiting for it.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use metrics::{counter, gauge, histogram};

use super::records::{self, client_prefix, message_key, record_key, subscription_key};
use super::{Op, Shared};
use crate::cluster::frame::SlotKind;
use crate::metrics::{
    STORE_COMMIT_SECONDS, STORE_COMMITS, STORE_DISK_BYTES, STORE_FAILED, STORE_OPS,
    STORE_PENDING_OPS, STORE_WRITES,
};

/// The batch maps' hasher: fast, and seeded per map (keys hold client IDs, which clients choose).
type Hasher = foldhash::fast::RandomState;

/// Ops taken into one commit at most: a batch's memory stays bounded while the disk is slow.
const MAX_BATCH: usize = 4096;
/// How often the disk the store uses is measured (for `max_bytes`).
const DISK_CHECK_EVERY: Duration = Duration::from_secs(1);
/// Once full, the store takes writes again below this share of `max_bytes` (percent).
const FULL_CLEARS_BELOW_PERCENT: u64 = 95;

/// The store's two keyspaces.
#[derive(Clone)]
pub(super) struct Tables {
    /// Session records, subscriptions and messages (see `records`).
    pub(super) sessions: Keyspace,
    /// Retained messages by topic.
    pub(super) retained: Keyspace,
}

impl Tables {
    /// Opens (creating when missing) both keyspaces.
    pub(super) fn open(db: &Database) -> Result<Tables, fjall::Error> {
        Ok(Tables {
            sessions: db.keyspace("sessions", KeyspaceCreateOptions::default)?,
            retained: db.keyspace("retained", KeyspaceCreateOptions::default)?,
        })
    }
}

/// What one key becomes at the end of a batch.
struct Pending {
    /// The value, `None` to delete.
    value: Option<BytesMut>,
    /// The key was first written in this batch as a new message: never committed, so a delete needs no
    /// tombstone.
    fresh: bool,
}

/// The writer thread's state.
pub(super) struct Writer {
    db: Database,
    tables: Tables,
    shared: Arc<Shared>,
    max_bytes: u64,
    commit_delay: Duration,
    last_disk_check: Option<Instant>,
}

impl Writer {
    /// A writer committing to `tables` of `db`, gathering writes for `commit_delay` before each commit.
    pub(super) fn new(
        db: Database,
        tables: Tables,
        shared: Arc<Shared>,
        max_bytes: u64,
        commit_delay: Duration,
    ) -> Writer {
        Writer {
            db,
            tables,
            shared,
            max_bytes,
            commit_delay,
            last_disk_check: None,
        }
    }

    /// Commits batches until the store closes and nothing is left.
    pub(super) fn run(mut self) {
        self.check_disk();
        loop {
            let (ops, last_ticket) = {
                let mut q = self.shared.queue.lock();
                if q.ops.is_empty() && !q.closing {
                    // Idle: the disk is still measured (compactions free space while nothing is written).
                    q.writer_idle = true;
                    self.shared.work.wait_for(&mut q, DISK_CHECK_EVERY);
                    q.writer_idle = false;
                }
                if q.ops.is_empty() {
                    if q.closing {
                        break;
                    }
                    drop(q);
                    self.check_disk();
                    continue;
                }
                if !self.commit_delay.is_zero() && !q.closing {
                    // Writes gather: a message acknowledged meanwhile cancels its own write in the batch.
                    drop(q);
                    std::thread::sleep(self.commit_delay);
                    q = self.shared.queue.lock();
                }
                let n = q.ops.len().min(MAX_BATCH);
                let first = q.submitted - q.ops.len() as u64 + 1;
                let ops: Vec<Op> = q.ops.drain(..n).collect();
                gauge!(STORE_PENDING_OPS).set(q.ops.len() as f64);
                (ops, first + n as u64 - 1)
            };
            if self.shared.failed.load(Ordering::Acquire) {
                // Nothing becomes durable any more; what producers still submit is dropped, not kept.
                continue;
            }
            let started = Instant::now();
            let n = ops.len();
            match self.commit(ops) {
                Ok(writes) => {
                    histogram!(STORE_COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
                    counter!(STORE_COMMITS).increment(1);
                    counter!(STORE_OPS).increment(n as u64);
                    counter!(STORE_WRITES).increment(writes as u64);
                    self.shared.committed.store(last_ticket, Ordering::Release);
                }
                Err(e) => {
                    tracing::error!(event = "store_failed", error = %e, "the session store failed to commit; no QoS 1/2 publish is acknowledged any more");
                    gauge!(STORE_FAILED).set(1.0);
                    self.shared.failed.store(true, Ordering::Release);
                }
            }
            self.shared.commits.notify_waiters();
            self.check_disk();
        }
        if let Err(e) = self.db.persist(PersistMode::SyncAll) {
            tracing::warn!(event = "store_close_failed", error = %e, "the session store did not close cleanly");
        }
    }

    /// Coalesces `ops` per key and commits them as one durable batch; returns how many keys it wrote or deleted.
    fn commit(&self, ops: Vec<Op>) -> Result<usize, fjall::Error> {
        let mut sessions: HashMap<Vec<u8>, Pending, Hasher> =
            HashMap::with_capacity_and_hasher(ops.len(), Hasher::default());
        let mut retained: HashMap<Vec<u8>, Option<BytesMut>, Hasher> = HashMap::default();
        for op in ops {
            match op {
                Op::Record { client_id, value } => {
                    put(&mut sessions, record_key(&client_id), Some(value), false);
                }
                Op::Subscription {
                    client_id,
                    filter,
                    value,
                } => put(
                    &mut sessions,
                    subscription_key(&client_id, &filter),
                    value,
                    false,
                ),
                Op::Message {
                    client_id,
                    seq,
                    slot,
                    packet_id,
                    delivery,
                } => put(
                    &mut sessions,
                    message_key(&client_id, seq),
                    Some(records::encode_message(&delivery, slot, packet_id)),
                    slot == SlotKind::Queued,
                ),
                Op::Forget { client_id, seq } => {
                    put(&mut sessions, message_key(&client_id, seq), None, false);
                }
                Op::EndSession { client_id } => {
                    let prefix = client_prefix(&client_id);
                    // What this batch wrote for the session so far, and what earlier batches committed.
                    for (key, pending) in sessions.iter_mut() {
                        if key.starts_with(&prefix) {
                            pending.value = None;
                        }
                    }
                    for guard in self.tables.sessions.prefix(&prefix) {
                        let key = guard.key()?;
                        put(&mut sessions, key.to_vec(), None, false);
                    }
                }
                Op::Retained { topic, value } => {
                    retained.insert(topic.as_bytes().to_vec(), value);
                }
            }
        }
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
        for (key, pending) in sessions {
            match pending.value {
                Some(value) => batch.insert(&self.tables.sessions, key, value.to_vec()),
                None if pending.fresh => {}
                None => batch.remove(&self.tables.sessions, key),
            }
        }
        for (key, value) in retained {
            match value {
                Some(value) => batch.insert(&self.tables.retained, key, value.to_vec()),
                None => batch.remove(&self.tables.retained, key),
            }
        }
        let writes = batch.len();
        batch.commit()?;
        Ok(writes)
    }

    /// Measures the disk the store uses (at most every [`DISK_CHECK_EVERY`]) and sets or clears `full`.
    fn check_disk(&mut self) {
        if self
            .last_disk_check
            .is_some_and(|t| t.elapsed() < DISK_CHECK_EVERY)
        {
            return;
        }
        self.last_disk_check = Some(Instant::now());
        let Ok(used) = self.db.disk_space() else {
            return;
        };
        gauge!(STORE_DISK_BYTES).set(used as f64);
        let was_full = self.shared.full.load(Ordering::Relaxed);
        let full = if was_full {
            used * 100 >= self.max_bytes * FULL_CLEARS_BELOW_PERCENT
        } else {
            used >= self.max_bytes
        };
        if full != was_full {
            if full {
                tracing::warn!(
                    event = "store_full",
                    used_bytes = used,
                    max_bytes = self.max_bytes,
                    "the session store reached [storage] max_bytes: QoS 1/2 publishes are refused"
                );
            } else {
                tracing::info!(
                    event = "store_not_full",
                    used_bytes = used,
                    "the session store is below [storage] max_bytes again"
                );
            }
            self.shared.full.store(full, Ordering::Relaxed);
        }
    }
}

/// Records that `key` becomes `value` at the end of the batch; `fresh` when this op creates the key.
fn put(
    map: &mut HashMap<Vec<u8>, Pending, Hasher>,
    key: Vec<u8>,
    value: Option<BytesMut>,
    fresh: bool,
) {
    match map.entry(key) {
        Entry::Occupied(mut e) => e.get_mut().value = value,
        Entry::Vacant(e) => {
            e.insert(Pending { value, fresh });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64};

    use bytes::Bytes;
    use fleetgate_protocol::mqtt::QoS;
    use parking_lot::{Condvar, Mutex};
    use tokio::sync::Notify;

    use super::*;
    use crate::state::message::{Delivery, Message};
    use crate::store::Queue;

    fn writer(dir: &std::path::Path) -> Writer {
        let db = Database::builder(dir).open().unwrap();
        let tables = Tables::open(&db).unwrap();
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
            committed: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            full: AtomicBool::new(false),
            commits: Notify::new(),
        });
        Writer::new(db, tables, shared, u64::MAX, Duration::ZERO)
    }

    fn queued(seq: u64) -> Op {
        let msg = Message {
            topic: "t".into(),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: None,
            expires_at: None,
            origin: 0,
        };
        Op::Message {
            client_id: "c".into(),
            seq,
            slot: SlotKind::Queued,
            packet_id: 0,
            delivery: Delivery {
                msg: Arc::new(msg),
                qos: QoS::AtLeastOnce,
                retain: false,
                sub_ids: Vec::new(),
                seq,
            },
        }
    }

    fn forget(seq: u64) -> Op {
        Op::Forget {
            client_id: "c".into(),
            seq,
        }
    }

    #[test]
    fn a_message_queued_and_acknowledged_in_one_batch_is_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let w = writer(dir.path());
        // Queued and acknowledged within one batch (what commit_delay gathers): nothing written.
        assert_eq!(w.commit(vec![queued(1), forget(1)]).unwrap(), 0);
        // In two batches: written, then deleted.
        assert_eq!(w.commit(vec![queued(2)]).unwrap(), 1);
        assert_eq!(w.commit(vec![forget(2)]).unwrap(), 1);
        // A session's end removes what this batch wrote for it and what earlier ones committed.
        assert_eq!(w.commit(vec![queued(3)]).unwrap(), 1);
        let end = Op::EndSession {
            client_id: "c".into(),
        };
        assert_eq!(
            w.commit(vec![queued(4), end]).unwrap(),
            1,
            "only the committed key 3 is deleted"
        );
        assert_eq!(w.tables.sessions.iter().count(), 0);
    }
}
