//! Retained messages: the last RETAIN=1 message per topic (an empty payload deletes it), handed to new
//! subscribers whose filter matches.
//!
//! In a cluster every write carries a hybrid logical [`Stamp`] so that the copies on the nodes converge (last
//! writer wins), and a delete is kept as a tombstone so a late older write cannot bring the message back;
//! tombstones are dropped once every live peer has them ([`RetainedStore::collect_tombstones`]) and bounded in
//! number. Every change also takes a local sequence number: a peer that was linked before asks for what
//! changed after the last one it applied ([`RetainedStore::chunk`]).
//!
//! The store is bounded by count and by bytes (`[limits] max_retained_messages`, `max_retained_bytes`), and its
//! bytes count in the node's memory budget: a write that would pass any of them is refused (the message is
//! still delivered, just not retained) and counted; deletes and updates that shrink are always accepted.
//!
//! Topics are kept in order (a sync reads them in chunks after a cursor) and indexed level by level
//! ([`TopicIndex`]), so a SUBSCRIBE's filter visits only the branches it matches, never the whole store.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Instant;

use fleetgate_protocol::mqtt::ByteString;
use parking_lot::{Mutex, RwLock};

use super::budget::MemoryBudget;
use super::message::Message;
use super::topic_index::TopicIndex;
use crate::metrics::RetainedGauges;

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

/// Bytes an entry costs beside its topic and payload (map node, entry, shared message, stamp, its branch of
/// the topic index): an estimate, so that a flood of tiny or empty writes is bounded too.
const ENTRY_OVERHEAD: usize = 256;

/// The store's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetainedLimits {
    /// Retained messages held at most.
    pub(crate) max_messages: usize,
    /// Bytes held at most (topics, payloads, properties, tombstones, with a per-entry overhead).
    pub(crate) max_bytes: usize,
}

/// What became of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Written {
    /// Applied as the topic's newest write, with this stamp and local sequence number.
    Applied(Stamp, u64),
    /// A later write of the topic is already held.
    Stale,
    /// Refused: the store is at its bounds.
    Full,
    /// Refused: the node's memory budget is spent.
    OverBudget,
}

#[derive(Debug)]
struct Entry {
    /// `None`: a tombstone.
    msg: Option<Arc<Message>>,
    stamp: Stamp,
    /// Local sequence number of the change.
    seq: u64,
    /// Bytes it counts for.
    size: usize,
}

#[derive(Debug, Default)]
struct Table {
    map: BTreeMap<ByteString, Entry>,
    /// Entries holding a message.
    live: usize,
    /// Sum of the entries' sizes.
    bytes: usize,
    /// What of `bytes` the memory budget knows.
    reported: usize,
    /// Last local sequence number issued.
    seq: u64,
    /// Tombstones by sequence number, oldest first.
    tombstones: BTreeMap<u64, ByteString>,
    /// The topics of the live entries, by level.
    index: TopicIndex,
    /// Changes at or below this sequence number may be forgotten (their tombstones dropped).
    forgotten: u64,
}

/// The retained-message store.
#[derive(Debug)]
pub(crate) struct RetainedStore {
    table: RwLock<Table>,
    gauges: RetainedGauges,
    limits: RetainedLimits,
    /// The node's budget, which the store's bytes count in.
    budget: Arc<MemoryBudget>,
    /// Keep deletes as tombstones (in a cluster; a single node deletes outright).
    keep_tombstones: bool,
    node: String,
    /// Hybrid logical clock: the last `time` issued or seen.
    clock: Mutex<u64>,
}

/// One retained entry as replicated: topic, message (`None` = deleted), stamp, local sequence number.
pub(crate) type RetainedEntry = (ByteString, Option<Arc<Message>>, Stamp, u64);

fn entry_size(topic: &str, msg: Option<&Arc<Message>>) -> usize {
    ENTRY_OVERHEAD + topic.len() + msg.map_or(0, |m| m.footprint())
}

impl RetainedStore {
    /// An empty store whose writes are stamped with `node` (the tie-break between equal clocks); deletes are
    /// kept as tombstones when `keep_tombstones` (a cluster node).
    pub(crate) fn new(
        node: String,
        limits: RetainedLimits,
        gauges: RetainedGauges,
        budget: Arc<MemoryBudget>,
        keep_tombstones: bool,
    ) -> RetainedStore {
        RetainedStore {
            table: RwLock::new(Table::default()),
            gauges,
            limits,
            budget,
            keep_tombstones,
            node,
            clock: Mutex::new(0),
        }
    }

    /// The next stamp of a local write: wall-clock milliseconds, or one more than anything seen.
    fn tick(&self) -> Stamp {
        let wall = wall_clock() << COUNTER_BITS;
        let mut clock = self.clock.lock();
        *clock = wall.max(*clock + 1);
        Stamp {
            time: *clock,
            node: self.node.clone(),
        }
    }

    /// Stores `msg` as the topic's retained message, or deletes it when the payload is empty (a local write).
    /// `written` runs with the new stamp and sequence number while the store is still locked, so whatever it
    /// queues for peers is ordered with any concurrent sync stream of the store.
    pub(crate) fn store(&self, msg: &Arc<Message>, written: impl FnOnce(&Stamp, u64)) -> Written {
        let stamp = self.tick();
        let value = (!msg.payload.is_empty()).then(|| msg.clone());
        self.write(msg.topic.clone(), value, stamp, written)
    }

    /// Applies a write replicated by a peer unless a later one is already held; `written` runs as for
    /// [`store`](Self::store) when it is applied.
    pub(crate) fn apply(
        &self,
        topic: ByteString,
        msg: Option<Arc<Message>>,
        stamp: Stamp,
        written: impl FnOnce(&Stamp, u64),
    ) -> Written {
        {
            let mut clock = self.clock.lock();
            *clock = (*clock).max(stamp.time);
        }
        self.write(topic, msg, stamp, written)
    }

    fn write(
        &self,
        topic: ByteString,
        msg: Option<Arc<Message>>,
        stamp: Stamp,
        written: impl FnOnce(&Stamp, u64),
    ) -> Written {
        let mut t = self.table.write();
        let old = t.map.get(&topic);
        if old.is_some_and(|e| e.stamp >= stamp) {
            return Written::Stale;
        }
        let old_size = old.map_or(0, |e| e.size);
        let old_live = old.is_some_and(|e| e.msg.is_some());
        let tombstone = msg.is_none();
        if tombstone && !self.keep_tombstones {
            // A single node deletes outright: nothing can bring an older write back.
            if let Some(old) = t.map.remove(&topic) {
                t.bytes -= old.size;
                t.live -= usize::from(old_live);
                remove_tombstone(&mut t, &old);
                if old_live {
                    t.index.remove(&topic);
                }
            }
            t.seq += 1;
            let seq = t.seq;
            written(&stamp, seq);
            self.publish_gauges(&mut t);
            return Written::Applied(stamp, seq);
        }
        let size = entry_size(&topic, msg.as_ref());
        let grows = !tombstone && (!old_live || size > old_size);
        let over_count = !old_live && !tombstone && t.live >= self.limits.max_messages;
        let over_bytes = t.bytes - old_size + size > self.limits.max_bytes;
        if grows && (over_count || over_bytes) {
            return Written::Full;
        }
        if grows && self.budget.would_exceed(size.saturating_sub(old_size)) {
            return Written::OverBudget;
        }
        // Kept for long: the topic and a small payload are copied out of the read buffer they were sliced from.
        let msg = msg.map(|m| m.compacted());
        let topic = ByteString::from(&*topic);
        t.seq += 1;
        let seq = t.seq;
        if tombstone {
            t.tombstones.insert(seq, topic.clone());
        }
        let entry = Entry {
            msg,
            stamp: stamp.clone(),
            seq,
            size,
        };
        match (old_live, tombstone) {
            (false, false) => t.index.insert(&topic),
            (true, true) => t.index.remove(&topic),
            _ => {}
        }
        if let Some(old) = t.map.insert(topic, entry) {
            remove_tombstone(&mut t, &old);
        }
        t.bytes = t.bytes - old_size + size;
        t.live = t.live - usize::from(old_live) + usize::from(!tombstone);
        self.bound_tombstones(&mut t);
        written(&stamp, seq);
        self.publish_gauges(&mut t);
        Written::Applied(stamp, seq)
    }

    /// Drops the oldest tombstones past the bounds (as many as messages may be held, and while the store is past
    /// its bytes — a flood of deletes is bounded like a flood of writes): a peer that comes back after those
    /// deletes gets a full sync.
    fn bound_tombstones(&self, t: &mut Table) {
        while t.tombstones.len() > self.limits.max_messages.max(1)
            || (t.bytes > self.limits.max_bytes && !t.tombstones.is_empty())
        {
            let Some((seq, topic)) = t.tombstones.pop_first() else {
                break;
            };
            drop_tombstone(t, seq, &topic);
        }
    }

    /// Brings the gauges and the memory budget up to date with the table.
    fn publish_gauges(&self, t: &mut Table) {
        if t.bytes > t.reported {
            self.budget.add(t.bytes - t.reported);
        } else if t.bytes < t.reported {
            self.budget.sub(t.reported - t.bytes);
        }
        t.reported = t.bytes;
        self.gauges.messages.set(t.live as f64);
        self.gauges.bytes.set(t.bytes as f64);
        self.gauges.tombstones.set(t.tombstones.len() as f64);
    }

    /// Drops the tombstones every live peer has applied (local sequence number at most `applied_by_all`) and
    /// that are older than `min_age_ms` on the hybrid clock; returns how many went.
    pub(crate) fn collect_tombstones(&self, applied_by_all: u64, min_age_ms: u64) -> usize {
        // Milliseconds on the hybrid clock: a stamp's time without its logical counter.
        let horizon = wall_clock().saturating_sub(min_age_ms);
        let mut t = self.table.write();
        let due: Vec<(u64, ByteString)> = t
            .tombstones
            .range(..=applied_by_all)
            .filter(|(_, topic)| {
                t.map
                    .get(*topic)
                    .is_some_and(|e| e.stamp.time >> COUNTER_BITS <= horizon)
            })
            .map(|(seq, topic)| (*seq, topic.clone()))
            .collect();
        for (seq, topic) in &due {
            t.tombstones.remove(seq);
            drop_tombstone(&mut t, *seq, topic);
        }
        self.publish_gauges(&mut t);
        due.len()
    }

    /// Last local sequence number issued.
    pub(crate) fn seq(&self) -> u64 {
        self.table.read().seq
    }

    /// True when every change after `since` is still known (a resume from `since` is possible).
    pub(crate) fn can_resume_from(&self, since: u64) -> bool {
        since >= self.table.read().forgotten
    }

    /// Reads the entries after topic `after` in topic order, up to `max` of them, and calls `each` with those
    /// changed after sequence number `since`, tombstones included (a peer back from a long partition may still
    /// hold the message a tombstone deleted), under the store's read lock. Returns the topic to continue after,
    /// `None` at the end.
    pub(crate) fn chunk(
        &self,
        after: Option<&ByteString>,
        since: u64,
        max: usize,
        mut each: impl FnMut(RetainedEntry),
    ) -> Option<ByteString> {
        let t = self.table.read();
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut last = None;
        for (n, (topic, e)) in t
            .map
            .range::<ByteString, _>((lower, Bound::Unbounded))
            .enumerate()
        {
            if n == max {
                return last;
            }
            last = Some(topic.clone());
            if e.seq > since {
                each((topic.clone(), e.msg.clone(), e.stamp.clone(), e.seq));
            }
        }
        None
    }

    /// Retained messages matching `filter` (a plain filter, `$share` prefix stripped), expired ones left out.
    pub(crate) fn matching(&self, filter: &str, now: Instant) -> Vec<Arc<Message>> {
        let t = self.table.read();
        let live = |m: &&Arc<Message>| !m.is_expired(now);
        if !filter.contains(['+', '#']) {
            return t
                .map
                .get(filter)
                .and_then(|e| e.msg.as_ref())
                .filter(live)
                .cloned()
                .into_iter()
                .collect();
        }
        let mut out = Vec::new();
        t.index.for_each_match(filter, |topic| {
            if let Some(m) = t.map.get(topic).and_then(|e| e.msg.as_ref()).filter(live) {
                out.push(m.clone());
            }
        });
        out
    }

    /// Number of retained messages.
    pub(crate) fn len(&self) -> usize {
        self.table.read().live
    }
}

impl Drop for RetainedStore {
    fn drop(&mut self) {
        let reported = self.table.get_mut().reported;
        if reported > 0 {
            self.budget.sub(reported);
        }
    }
}

/// Removes the tombstone index entry of `old` when it was one.
fn remove_tombstone(t: &mut Table, old: &Entry) {
    if old.msg.is_none() {
        t.tombstones.remove(&old.seq);
    }
}

/// Drops the tombstone of `topic` (sequence number `seq`) from the map; changes up to `seq` may now be missing.
fn drop_tombstone(t: &mut Table, seq: u64, topic: &ByteString) {
    if t.map
        .get(topic)
        .is_some_and(|e| e.msg.is_none() && e.seq == seq)
        && let Some(e) = t.map.remove(topic)
    {
        t.bytes -= e.size;
    }
    t.forgotten = t.forgotten.max(seq);
}

/// Wall-clock milliseconds since the Unix epoch.
fn wall_clock() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetgate_protocol::mqtt::{Bytes, QoS};

    const ROOMY: RetainedLimits = RetainedLimits {
        max_messages: 1000,
        max_bytes: 1 << 20,
    };

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

    fn store(node: &str, limits: RetainedLimits, cluster: bool) -> RetainedStore {
        RetainedStore::new(
            node.into(),
            limits,
            RetainedGauges::noop(),
            MemoryBudget::unbounded(),
            cluster,
        )
    }

    fn entries(s: &RetainedStore, since: u64) -> Vec<(String, Option<String>)> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            after = s.chunk(after.as_ref(), since, 2, |(t, m, _, _)| {
                out.push((
                    t.to_string(),
                    m.map(|m| String::from_utf8_lossy(&m.payload).into_owned()),
                ))
            });
            if after.is_none() {
                return out;
            }
        }
    }

    #[test]
    fn set_match_delete() {
        let store = store("", ROOMY, false);
        store.store(&msg("a/b", b"1"), |_, _| {});
        store.store(&msg("a/c", b"2"), |_, _| {});
        store.store(&msg("$SYS/x", b"3"), |_, _| {});
        store.store(&msg("b/c", b"4"), |_, _| {});
        let now = Instant::now();
        assert_eq!(store.matching("a/b", now).len(), 1);
        assert_eq!(store.matching("a/+", now).len(), 2);
        assert_eq!(store.matching("+/c", now).len(), 2);
        assert_eq!(
            store.matching("#", now).len(),
            3,
            "no $ topics for a leading wildcard"
        );
        store.store(&msg("a/b", b""), |_, _| {});
        assert_eq!(store.matching("a/#", now).len(), 1);
        assert_eq!(store.len(), 3);
        assert_eq!(
            entries(&store, 1).len(),
            3,
            "a single node keeps no tombstone"
        );
    }

    #[test]
    fn last_writer_wins_and_tombstones_hold() {
        let store = store("n1", ROOMY, true);
        let at = |time: u64, node: &str| Stamp {
            time,
            node: node.into(),
        };
        let applied = |w: Written| matches!(w, Written::Applied(..));
        assert!(applied(store.apply(
            "t".into(),
            Some(msg("t", b"1")),
            at(10, "a"),
            |_, _| {}
        )));
        assert_eq!(
            store.apply("t".into(), Some(msg("t", b"0")), at(9, "z"), |_, _| {}),
            Written::Stale
        );
        assert!(applied(store.apply(
            "t".into(),
            Some(msg("t", b"2")),
            at(10, "b"),
            |_, _| {}
        )));
        assert!(applied(store.apply(
            "t".into(),
            None,
            at(11, "a"),
            |_, _| {}
        )));
        assert_eq!(
            store.apply("t".into(), Some(msg("t", b"3")), at(10, "c"), |_, _| {}),
            Written::Stale
        );
        assert_eq!(store.len(), 0);
        assert_eq!(
            entries(&store, 1),
            [("t".to_string(), None)],
            "the tombstone is kept"
        );
        assert_eq!(
            entries(&store, 0),
            [("t".to_string(), None)],
            "a full sync sends the tombstone too: the peer may hold what it deleted"
        );
        // A local write is stamped after everything seen.
        let Written::Applied(s, _) = store.store(&msg("t", b"4"), |_, _| {}) else {
            panic!("not applied");
        };
        assert!(s > at(11, "a") && s.node == "n1");
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn changes_since_a_sequence_number_and_resume_after_collection() {
        let store = store("n", ROOMY, true);
        store.store(&msg("a", b"1"), |_, _| {});
        store.store(&msg("b", b"1"), |_, _| {});
        let mark = store.seq();
        store.store(&msg("c", b"1"), |_, _| {});
        store.store(&msg("a", b""), |_, _| {});
        assert_eq!(
            entries(&store, mark),
            [
                ("a".to_string(), None),
                ("c".to_string(), Some("1".to_string()))
            ]
        );
        assert!(store.can_resume_from(mark));
        // Applied by every peer, but younger than the minimum age: kept.
        assert_eq!(store.collect_tombstones(store.seq(), 60_000), 0);
        assert_eq!(
            store.collect_tombstones(mark, 0),
            0,
            "not applied by every peer yet"
        );
        assert_eq!(store.collect_tombstones(store.seq(), 0), 1);
        assert!(
            !store.can_resume_from(mark),
            "the delete of `a` is forgotten"
        );
        assert!(store.can_resume_from(store.seq()));
    }

    #[test]
    fn bounded_by_count_and_bytes_and_tombstones() {
        let store = store(
            "n",
            RetainedLimits {
                max_messages: 2,
                max_bytes: 1 << 20,
            },
            true,
        );
        let stored = |w: Written| matches!(w, Written::Applied(..));
        assert!(stored(store.store(&msg("a", b"1"), |_, _| {})));
        assert!(stored(store.store(&msg("b", b"1"), |_, _| {})));
        assert_eq!(store.store(&msg("c", b"1"), |_, _| {}), Written::Full);
        assert!(
            stored(store.store(&msg("a", b"2"), |_, _| {})),
            "an update is not a new message"
        );
        assert!(
            stored(store.store(&msg("a", b""), |_, _| {})),
            "a delete always"
        );
        assert!(stored(store.store(&msg("c", b"1"), |_, _| {})));
        // Tombstones are bounded too (as many as messages): the oldest are forgotten.
        for t in ["x", "y", "z"] {
            store.store(&msg(t, b""), |_, _| {});
        }
        assert_eq!(
            entries(&store, 1)
                .iter()
                .filter(|(_, m)| m.is_none())
                .count(),
            2
        );
        assert!(!store.can_resume_from(1));

        let one = entry_size("a", Some(&msg("a", b"1")));
        let small = store_with_bytes(2 * one + one / 2);
        assert!(stored(small.store(&msg("a", b"1"), |_, _| {})));
        assert!(stored(small.store(&msg("b", b"1"), |_, _| {})));
        let big: &'static [u8] = &[b'x'; 1000];
        assert_eq!(small.store(&msg("c", big), |_, _| {}), Written::Full);
        assert_eq!(
            small.store(&msg("a", big), |_, _| {}),
            Written::Full,
            "grows past the bytes"
        );
    }

    #[test]
    fn a_flood_of_deletes_is_bounded_in_bytes() {
        let one = entry_size("t/00000", None);
        let store = store(
            "n",
            RetainedLimits {
                max_messages: 1_000_000,
                max_bytes: 100 * one,
            },
            true,
        );
        for i in 0..10_000 {
            let topic = format!("t/{i:05}");
            store.store(&msg(&topic, b""), |_, _| {});
        }
        let t = store.table.read();
        assert!(t.bytes <= 100 * one, "{} bytes", t.bytes);
        assert_eq!(t.tombstones.len(), 100, "the newest deletes are kept");
        assert!(t.map.contains_key("t/09999") && !t.map.contains_key("t/00000"));
    }

    fn store_with_bytes(max_bytes: usize) -> RetainedStore {
        store(
            "n",
            RetainedLimits {
                max_messages: 100,
                max_bytes,
            },
            false,
        )
    }
}
