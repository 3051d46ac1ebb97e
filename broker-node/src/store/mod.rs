//! The durable session store (`[storage] mode = "disk"`): every change to a persistent session (record,
//! subscriptions, QoS 1/2 messages queued or in flight) and to the retained messages goes to an embedded
//! store (fjall, chosen by measurement: `docs/design/session-store.md`) through one writer thread that
//! commits whatever is waiting as one durable batch (group commit: one `fsync` for many sessions' writes).
//!
//! Producers ([`Store::submit`]) run under the session's lock, so the store sees a session's changes in the
//! order memory did. Each op gets a ticket (its position in the stream); [`Store::committed`] is the ticket
//! of the last op made durable. A connection sends PUBACK, PUBREC or SUBACK only once the ops its packet
//! caused are committed ([`last_submitted`] says which ticket that is: the connection handles a packet
//! synchronously, on one thread). Nothing here holds a session lock while it waits.
//!
//! - `records`: keys and values.
//! - `writer`: the writer thread (batching, per-key coalescing, commit, disk use).
//! - `recover`: reading everything back at start.

use std::cell::Cell;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::BytesMut;
use fleetgate_protocol::mqtt::ByteString;
use parking_lot::{Condvar, Mutex};
use tokio::sync::Notify;

use crate::broker::{Broker, SessionStore, Stored};
use crate::cluster::frame::SlotKind;
use crate::state::message::{Delivery, Message};
use crate::state::retained::Stamp;
use crate::state::session::{SessionState, SubscriptionEntry};

pub(crate) mod records;
mod recover;
mod writer;

pub(crate) use recover::Recovered;

/// The store could not be opened or read back.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The embedded store reported an error.
    #[error("session store {path}: {source}")]
    Open {
        /// The store's directory.
        path: PathBuf,
        /// What went wrong.
        source: fjall::Error,
    },
    /// The writer thread could not be started.
    #[error("session store writer thread: {0}")]
    Thread(std::io::Error),
}

/// One change for the store, in the order memory made it.
#[derive(Debug)]
pub(crate) enum Op {
    /// A session's record (encoded under its lock: expiry, identity, will, QoS 2 IDs).
    Record {
        /// The client ID.
        client_id: ByteString,
        /// A SessionBegin frame.
        value: BytesMut,
    },
    /// A subscription added or replaced (`Some`: a SessionSub frame) or removed.
    Subscription {
        /// The client ID.
        client_id: ByteString,
        /// The full filter.
        filter: ByteString,
        /// The value, `None` to remove.
        value: Option<BytesMut>,
    },
    /// A QoS 1/2 message for a persistent session, queued or (re)sent; encoded by the writer.
    Message {
        /// The client ID.
        client_id: ByteString,
        /// Its sequence ([`Store::next_seq`]).
        seq: u64,
        /// Queued, in flight or released.
        slot: SlotKind,
        /// The packet ID it went out with (0 while queued).
        packet_id: u16,
        /// The message.
        delivery: Delivery,
    },
    /// A message the client acknowledged, or that was dropped.
    Forget {
        /// The client ID.
        client_id: ByteString,
        /// Its sequence.
        seq: u64,
    },
    /// Every key of a session that ended (or left the node).
    EndSession {
        /// The client ID.
        client_id: ByteString,
    },
    /// A retained message set (a Retain frame) or cleared.
    Retained {
        /// The topic.
        topic: ByteString,
        /// The value, `None` to clear.
        value: Option<BytesMut>,
    },
}

/// Ops waiting for the writer.
#[derive(Debug, Default)]
struct Queue {
    ops: VecDeque<Op>,
    /// Ticket of the last op submitted (the ops in `ops` are the last `ops.len()` tickets).
    submitted: u64,
    /// The node stops: the writer commits what is left and ends.
    closing: bool,
    /// The writer sleeps on the condition variable: only then does a producer need to wake it (a futex call
    /// per op otherwise).
    writer_idle: bool,
}

/// What the connections and the writer share.
#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the writer.
    work: Condvar,
    /// Ticket of the last op committed.
    committed: AtomicU64,
    /// A commit failed: nothing more becomes durable (the node is not ready; connections waiting end).
    failed: AtomicBool,
    /// The store uses `max_bytes` or more of disk: QoS 1/2 publishes are refused.
    full: AtomicBool,
    /// Wakes connections waiting for a commit.
    commits: Notify,
}

/// The handle producers and waiters use.
#[derive(Debug)]
pub(crate) struct Store {
    shared: Arc<Shared>,
    next_seq: AtomicU64,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// The largest frame a stored value may be: a message of `max_packet_size` plus the frame's own fields.
pub(crate) fn max_value_len(max_packet_size: u32) -> usize {
    usize::try_from(max_packet_size).unwrap_or(usize::MAX) + crate::cluster::frame::FRAME_OVERHEAD
}

thread_local! {
    /// The ticket of the last op submitted on this thread.
    static LAST_SUBMITTED: Cell<u64> = const { Cell::new(0) };
}

/// Forgets which op this thread submitted last (a connection calls it before handling a packet).
pub(crate) fn reset_last_submitted() {
    LAST_SUBMITTED.with(|c| c.set(0));
}

/// The ticket of the last op submitted on this thread since [`reset_last_submitted`]; 0 when none.
pub(crate) fn last_submitted() -> u64 {
    LAST_SUBMITTED.with(Cell::get)
}

impl Store {
    /// Opens (creating when missing) the store in `path`, reads everything back, and starts the writer;
    /// values longer than `max_value_len` are refused on the way back.
    pub(crate) fn open(
        path: &Path,
        max_bytes: u64,
        max_value_len: usize,
    ) -> Result<(Arc<Store>, Recovered), StoreError> {
        let open_error = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let db = fjall::Database::builder(path).open().map_err(open_error)?;
        let tables = writer::Tables::open(&db).map_err(open_error)?;
        let recovered = recover::read_all(&tables, max_value_len).map_err(open_error)?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
            committed: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            full: AtomicBool::new(false),
            commits: Notify::new(),
        });
        let writer = writer::Writer::new(db, tables, shared.clone(), max_bytes);
        let handle = std::thread::Builder::new()
            .name("fleetgate-store".into())
            .spawn(move || writer.run())
            .map_err(StoreError::Thread)?;
        let store = Arc::new(Store {
            shared,
            next_seq: AtomicU64::new(recovered.max_seq + 1),
            writer: Mutex::new(Some(handle)),
        });
        Ok((store, recovered))
    }

    /// Queues `op` for the writer; returns its ticket (also kept as this thread's [`last_submitted`]).
    fn submit(&self, op: Op) -> u64 {
        let (ticket, wake) = {
            let mut q = self.shared.queue.lock();
            q.submitted += 1;
            q.ops.push_back(op);
            (q.submitted, std::mem::take(&mut q.writer_idle))
        };
        if wake {
            self.shared.work.notify_one();
        }
        LAST_SUBMITTED.with(|c| c.set(ticket));
        ticket
    }

    /// Commits what is waiting and stops the writer (at shutdown, after the connections closed).
    pub(crate) fn close(&self) {
        self.shared.queue.lock().closing = true;
        self.shared.work.notify_one();
        if let Some(handle) = self.writer.lock().take() {
            let _ = handle.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

impl SessionStore for Store {
    fn next_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    fn refuses_writes(&self) -> bool {
        self.shared.full.load(Ordering::Relaxed) || self.has_failed()
    }

    fn has_failed(&self) -> bool {
        self.shared.failed.load(Ordering::Acquire)
    }

    fn committed(&self) -> u64 {
        self.shared.committed.load(Ordering::Acquire)
    }

    fn commits(&self) -> &Notify {
        &self.shared.commits
    }

    fn record(&self, client_id: &ByteString, st: &SessionState) -> u64 {
        self.submit(Op::Record {
            client_id: client_id.clone(),
            value: records::encode_record(client_id, st),
        })
    }

    fn subscription(
        &self,
        client_id: &ByteString,
        filter: &ByteString,
        entry: Option<SubscriptionEntry>,
    ) -> u64 {
        self.submit(Op::Subscription {
            client_id: client_id.clone(),
            filter: filter.clone(),
            value: entry.map(|e| records::encode_subscription(filter, e)),
        })
    }

    fn message(&self, client_id: &ByteString, delivery: &Delivery, stored: Stored) -> u64 {
        let (slot, packet_id) = match stored {
            Stored::Queued => (SlotKind::Queued, 0),
            Stored::Sent(id) => (SlotKind::Inflight, id.get()),
            Stored::Released(id) => (SlotKind::Released, id.get()),
        };
        self.submit(Op::Message {
            client_id: client_id.clone(),
            seq: delivery.seq,
            slot,
            packet_id,
            delivery: delivery.clone(),
        })
    }

    fn forget(&self, client_id: &ByteString, seq: u64) -> u64 {
        self.submit(Op::Forget {
            client_id: client_id.clone(),
            seq,
        })
    }

    fn end_session(&self, client_id: &ByteString) -> u64 {
        self.submit(Op::EndSession {
            client_id: client_id.clone(),
        })
    }

    fn retained(&self, topic: &ByteString, stamp: &Stamp, msg: Option<&Message>, seq: u64) -> u64 {
        let value = msg.map(|m| {
            let mut out = BytesMut::new();
            crate::cluster::frame::encode_retain(&mut out, stamp, topic, Some(m), seq);
            out
        });
        self.submit(Op::Retained {
            topic: topic.clone(),
            value,
        })
    }
}

/// Puts back what the store held at start into `broker`: the retained messages, then every persistent session,
/// detached (its expiry counts from now; a will is due after its delay unless its client returns first); keys
/// of sessions without a record are deleted.
pub(crate) fn restore(broker: &Arc<Broker>, store: &Store, recovered: Recovered) {
    for (topic, msg, stamp) in recovered.retained {
        broker.apply_retained_unstored(topic, Some(msg), stamp);
    }
    for client_id in &recovered.orphans {
        store.end_session(client_id);
    }
    for snap in recovered.sessions {
        broker.install_restored(snap, std::time::Duration::ZERO);
    }
}
