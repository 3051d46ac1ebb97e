//! A versioned table of keys this node advertises to its peers (its subscription filters, its claims: see
//! [`super::advertised`]): every change takes the table's next change number, a removal stays as a tombstone for
//! a while, and the entries are kept in key order. A sync reads the table in chunks after a key cursor
//! ([`Versioned::chunk`]): everything (a full sync) or only what changed after a peer's watermark (a resumed
//! link).
//!
//! Tombstones are bounded: past [`MAX_TOMBSTONES`] the oldest are forgotten, and a peer whose watermark is below
//! what was forgotten gets a full sync.

use std::collections::BTreeMap;
use std::ops::Bound;

use fleetgate_protocol::mqtt::ByteString;

/// Removals remembered per table for resumed links; beyond this the oldest are forgotten.
pub(crate) const MAX_TOMBSTONES: usize = 100_000;

#[derive(Debug, Clone)]
struct Entry<V> {
    /// `None`: removed (a tombstone).
    value: Option<V>,
    /// Change number of the last change.
    seq: u64,
}

/// A table of keys this node advertises, versioned by change numbers.
#[derive(Debug)]
pub(crate) struct Versioned<V> {
    entries: BTreeMap<ByteString, Entry<V>>,
    /// Tombstones by change number, oldest first.
    tombstones: BTreeMap<u64, ByteString>,
    /// Last change number issued.
    seq: u64,
    /// Changes at or below this number may have been forgotten.
    forgotten: u64,
    /// Live entries.
    live: usize,
}

impl<V> Default for Versioned<V> {
    fn default() -> Self {
        Versioned {
            entries: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            seq: 0,
            forgotten: 0,
            live: 0,
        }
    }
}

/// One entry as a sync sends it: key, value (`None` = removed) and change number.
pub(crate) type Change<'a, V> = (&'a ByteString, Option<&'a V>, u64);

impl<V> Versioned<V> {
    /// The live value of `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&V> {
        self.entries.get(key).and_then(|e| e.value.as_ref())
    }

    /// The live value of `key`, to change in place without a new change number (a filter's session count).
    pub(crate) fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        self.entries.get_mut(key).and_then(|e| e.value.as_mut())
    }

    /// Sets `key` to `value`; returns the change number.
    pub(crate) fn set(&mut self, key: ByteString, value: V) -> u64 {
        self.seq += 1;
        let seq = self.seq;
        let old = self.entries.insert(
            key,
            Entry {
                value: Some(value),
                seq,
            },
        );
        match old {
            Some(Entry { value: None, seq }) => {
                self.tombstones.remove(&seq);
                self.live += 1;
            }
            Some(Entry { value: Some(_), .. }) => {}
            None => self.live += 1,
        }
        seq
    }

    /// Removes `key`, leaving a tombstone; returns the change number, `None` when it was not live.
    pub(crate) fn remove(&mut self, key: &str) -> Option<u64> {
        let entry = self.entries.get_mut(key)?;
        entry.value.as_ref()?;
        self.seq += 1;
        let seq = self.seq;
        entry.value = None;
        entry.seq = seq;
        self.live -= 1;
        self.tombstones.insert(seq, ByteString::from(key));
        while self.tombstones.len() > MAX_TOMBSTONES {
            self.forget_oldest();
        }
        Some(seq)
    }

    fn forget_oldest(&mut self) {
        if let Some((seq, key)) = self.tombstones.pop_first() {
            if self
                .entries
                .get(&key)
                .is_some_and(|e| e.value.is_none() && e.seq == seq)
            {
                self.entries.remove(&key);
            }
            self.forgotten = self.forgotten.max(seq);
        }
    }

    /// Last change number issued.
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// True when the changes after `since` are all still known.
    pub(crate) fn can_resume_from(&self, since: u64) -> bool {
        since >= self.forgotten
    }

    /// Live entries.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// The live keys.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &ByteString> {
        self.entries
            .iter()
            .filter(|(_, e)| e.value.is_some())
            .map(|(k, _)| k)
    }

    /// Reads up to `max` entries after key `after` and calls `each` with those changed after `since` (removals
    /// only when `since` > 0: a full sync has no use for them). Returns the key to continue after, `None` at
    /// the end.
    pub(crate) fn chunk(
        &self,
        after: Option<&ByteString>,
        since: u64,
        max: usize,
        mut each: impl FnMut(Change<'_, V>),
    ) -> Option<ByteString> {
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut last = None;
        for (n, (key, e)) in self
            .entries
            .range::<ByteString, _>((lower, Bound::Unbounded))
            .enumerate()
        {
            if n == max {
                return last;
            }
            last = Some(key.clone());
            if e.seq > since && (e.value.is_some() || since > 0) {
                each((key, e.value.as_ref(), e.seq));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(t: &Versioned<u32>, since: u64) -> Vec<(String, Option<u32>)> {
        let mut out = Vec::new();
        let mut after: Option<ByteString> = None;
        loop {
            after = t.chunk(after.as_ref(), since, 2, |(k, v, _)| {
                out.push((k.to_string(), v.copied()))
            });
            if after.is_none() {
                return out;
            }
        }
    }

    #[test]
    fn full_and_incremental_reads() {
        let mut t = Versioned::default();
        t.set("a".into(), 1);
        t.set("b".into(), 2);
        t.set("c".into(), 3);
        let mark = t.seq();
        assert_eq!(t.remove("b"), Some(4));
        assert_eq!(t.remove("b"), None, "not live");
        t.set("d".into(), 4);
        t.set("a".into(), 5);
        assert_eq!(
            changes(&t, 0),
            [
                ("a".into(), Some(5)),
                ("c".into(), Some(3)),
                ("d".into(), Some(4))
            ]
        );
        assert_eq!(
            changes(&t, mark),
            [
                ("a".into(), Some(5)),
                ("b".into(), None),
                ("d".into(), Some(4))
            ]
        );
        assert_eq!(t.len(), 3);
        assert_eq!(
            t.keys().map(|k| k.to_string()).collect::<Vec<_>>(),
            ["a", "c", "d"]
        );
    }

    #[test]
    fn forgotten_tombstones_force_a_full_sync() {
        let mut t = Versioned::default();
        t.set("a".into(), 1);
        let mark = t.seq();
        t.remove("a");
        assert!(t.can_resume_from(mark));
        // The tombstone bound: the oldest are forgotten.
        for i in 0..MAX_TOMBSTONES + 2 {
            let k = ByteString::from(format!("k{i}"));
            t.set(k.clone(), 0);
            t.remove(&k);
        }
        assert_eq!(t.tombstones.len(), MAX_TOMBSTONES);
        assert!(!t.can_resume_from(mark), "the delete of `a` is forgotten");
        assert!(t.can_resume_from(t.seq() - 2));
        // A key set again after its removal is live, not a tombstone.
        t.set("a".into(), 2);
        assert_eq!(t.get("a"), Some(&2));
    }
}
