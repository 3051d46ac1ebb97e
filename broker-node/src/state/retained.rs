//! Retained messages: the last RETAIN=1 message per topic (an empty payload deletes it), handed to new
//! subscribers whose filter matches. Every write carries a hybrid logical [`Stamp`] so that the copies on the
//! nodes of a cluster converge (last writer wins); a delete is kept as a tombstone so a late older write cannot
//! bring the message back.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use fleetgate_protocol::mqtt::{ByteString, topic};
use metrics::Gauge;
use parking_lot::{Mutex, RwLock};

use super::message::Message;

/// A hybrid logical timestamp: `(milliseconds << 16 | counter, node name)`; greater wins (last writer wins).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Stamp {
    /// Physical milliseconds in the high 48 bits, logical counter in the low 16.
    pub(crate) time: u64,
    /// Writer node, the tie-break.
    pub(crate) node: String,
}

/// Bits of a stamp's `time` holding the logical counter (below the milliseconds).
const COUNTER_BITS: u32 = 16;

#[derive(Debug)]
struct Entry {
    /// `None`: a tombstone.
    msg: Option<Arc<Message>>,
    stamp: Stamp,
}

/// The retained-message store.
#[derive(Debug)]
pub(crate) struct RetainedStore {
    messages: RwLock<HashMap<ByteString, Entry>>,
    gauge: Gauge,
    /// Entries holding a message (tombstones not counted); changed under the `messages` write lock.
    live: AtomicUsize,
    node: String,
    /// Hybrid logical clock: the last `time` issued or seen.
    clock: Mutex<u64>,
}

/// One retained entry as replicated: topic, message (`None` = deleted) and stamp.
pub(crate) type RetainedEntry = (ByteString, Option<Arc<Message>>, Stamp);

impl RetainedStore {
    /// An empty store whose writes are stamped with `node` (the tie-break between equal clocks).
    pub(crate) fn for_node(gauge: Gauge, node: String) -> RetainedStore {
        RetainedStore {
            messages: RwLock::new(HashMap::new()),
            gauge,
            live: AtomicUsize::new(0),
            node,
            clock: Mutex::new(0),
        }
    }

    /// The next stamp of a local write: wall-clock milliseconds, or one more than anything seen.
    fn tick(&self) -> Stamp {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            << COUNTER_BITS;
        let mut clock = self.clock.lock();
        *clock = wall.max(*clock + 1);
        Stamp {
            time: *clock,
            node: self.node.clone(),
        }
    }

    /// Stores `msg` as the topic's retained message, or deletes it when the payload is empty (a local write);
    /// returns the write's stamp.
    pub(crate) fn store(&self, msg: &Arc<Message>) -> Stamp {
        let stamp = self.tick();
        let value = (!msg.payload.is_empty()).then(|| msg.clone());
        self.apply(msg.topic.clone(), value, stamp.clone());
        stamp
    }

    /// Applies a write (local or from a peer) unless a later one is already held; true when applied.
    pub(crate) fn apply(&self, topic: ByteString, msg: Option<Arc<Message>>, stamp: Stamp) -> bool {
        {
            let mut clock = self.clock.lock();
            *clock = (*clock).max(stamp.time);
        }
        let mut map = self.messages.write();
        if map.get(&topic).is_some_and(|e| e.stamp >= stamp) {
            return false;
        }
        // Kept for long: the topic and a small payload are copied out of the read buffer they were sliced from.
        let msg = msg.map(|m| m.compacted());
        let topic = ByteString::from(&*topic);
        let adds = msg.is_some();
        let removes = map
            .insert(topic, Entry { msg, stamp })
            .is_some_and(|old| old.msg.is_some());
        let live = match (adds, removes) {
            (true, false) => self.live.fetch_add(1, Ordering::Relaxed) + 1,
            (false, true) => self.live.fetch_sub(1, Ordering::Relaxed) - 1,
            _ => self.live.load(Ordering::Relaxed),
        };
        self.gauge.set(live as f64);
        true
    }

    /// Every entry, tombstones included (the full sync to a new peer).
    pub(crate) fn snapshot(&self) -> Vec<RetainedEntry> {
        self.messages
            .read()
            .iter()
            .map(|(t, e)| (t.clone(), e.msg.clone(), e.stamp.clone()))
            .collect()
    }

    /// Retained messages matching `filter` (a plain filter, `$share` prefix stripped), expired ones left out.
    pub(crate) fn matching(&self, filter: &str, now: Instant) -> Vec<Arc<Message>> {
        let map = self.messages.read();
        let live = |m: &&Arc<Message>| !m.is_expired(now);
        if !filter.contains(['+', '#']) {
            return map
                .get(filter)
                .and_then(|e| e.msg.as_ref())
                .filter(live)
                .cloned()
                .into_iter()
                .collect();
        }
        map.iter()
            .filter(|(t, _)| topic::matches(filter, t))
            .filter_map(|(_, e)| e.msg.as_ref())
            .filter(live)
            .cloned()
            .collect()
    }

    /// Number of retained messages.
    pub(crate) fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetgate_protocol::mqtt::{Bytes, QoS};

    fn msg(topic: &str, payload: &'static [u8]) -> Arc<Message> {
        Arc::new(Message {
            topic: topic.into(),
            payload: Bytes::from_static(payload),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: None,
            expires_at: None,
            origin: 0,
        })
    }

    #[test]
    fn set_match_delete() {
        let store = RetainedStore::for_node(Gauge::noop(), String::new());
        store.store(&msg("a/b", b"1"));
        store.store(&msg("a/c", b"2"));
        store.store(&msg("$SYS/x", b"3"));
        let now = Instant::now();
        assert_eq!(store.matching("a/b", now).len(), 1);
        assert_eq!(store.matching("a/+", now).len(), 2);
        assert_eq!(
            store.matching("#", now).len(),
            2,
            "no $ topics for a leading wildcard"
        );
        store.store(&msg("a/b", b""));
        assert_eq!(store.matching("a/#", now).len(), 1);
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn last_writer_wins_and_tombstones_hold() {
        let store = RetainedStore::for_node(Gauge::noop(), "n1".into());
        let at = |time: u64, node: &str| Stamp {
            time,
            node: node.into(),
        };
        assert!(store.apply("t".into(), Some(msg("t", b"1")), at(10, "a")));
        assert!(!store.apply("t".into(), Some(msg("t", b"0")), at(9, "z")));
        assert!(store.apply("t".into(), Some(msg("t", b"2")), at(10, "b")));
        assert!(store.apply("t".into(), None, at(11, "a")));
        assert!(!store.apply("t".into(), Some(msg("t", b"3")), at(10, "c")));
        assert_eq!(store.len(), 0);
        assert_eq!(store.snapshot().len(), 1, "the tombstone is kept");
        // A local write is stamped after everything seen.
        let s = store.store(&msg("t", b"4"));
        assert!(s > at(11, "a") && s.node == "n1");
        assert_eq!(store.len(), 1);
    }
}
