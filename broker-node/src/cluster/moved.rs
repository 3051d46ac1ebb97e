//! Where the sessions this node handed away went, so that a takeover request arriving after the move is pointed
//! at the new holder ("moved to"). Needed only for the moments around a move: entries expire after
//! [`MOVED_TTL`], and at most [`MAX_MOVED`] are kept (a drain of a large node moves many at once).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use fleetgate_protocol::mqtt::ByteString;

use super::routes::PeerName;

/// How long a move is remembered: far beyond a takeover round trip (bounded by the takeover timeout).
pub(super) const MOVED_TTL: Duration = Duration::from_secs(60);
/// Most moves remembered at once.
pub(super) const MAX_MOVED: usize = 100_000;

/// Recent moves by client ID, oldest first in `order` (each insert numbered, so an entry of `order` whose client
/// moved again later does not remove the newer move).
#[derive(Debug, Default)]
pub(super) struct Moved {
    map: HashMap<ByteString, (PeerName, Instant, u64)>,
    order: VecDeque<(Instant, u64, ByteString)>,
    next: u64,
}

impl Moved {
    /// Records that `client_id` went to `to` at `now`, forgetting what is too old or too many.
    pub(super) fn insert(&mut self, client_id: ByteString, to: PeerName, now: Instant) {
        self.expire(now);
        while self.map.len() >= MAX_MOVED {
            let Some((_, n, id)) = self.order.pop_front() else {
                break;
            };
            self.forget(&id, n);
        }
        self.next += 1;
        self.map.insert(client_id.clone(), (to, now, self.next));
        self.order.push_back((now, self.next, client_id));
    }

    /// Where `client_id` went, when that was less than [`MOVED_TTL`] before `now`.
    pub(super) fn get(&self, client_id: &str, now: Instant) -> Option<PeerName> {
        self.map
            .get(client_id)
            .filter(|(_, at, _)| now.duration_since(*at) < MOVED_TTL)
            .map(|(to, _, _)| to.clone())
    }

    /// Drops the entries older than [`MOVED_TTL`].
    fn expire(&mut self, now: Instant) {
        while let Some((at, _, _)) = self.order.front() {
            if now.duration_since(*at) < MOVED_TTL {
                break;
            }
            if let Some((_, n, id)) = self.order.pop_front() {
                self.forget(&id, n);
            }
        }
    }

    /// Forgets `id`'s move number `n`, unless it moved again since.
    fn forget(&mut self, id: &ByteString, n: u64) {
        if self
            .map
            .get(id)
            .is_some_and(|(_, _, current)| *current == n)
        {
            self.map.remove(id);
        }
    }

    /// Entries held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn moves_expire_and_are_bounded() {
        let mut m = Moved::default();
        let t0 = Instant::now();
        let to: PeerName = Arc::from("b");
        m.insert("c1".into(), to.clone(), t0);
        assert_eq!(m.get("c1", t0 + Duration::from_secs(1)), Some(to.clone()));
        assert_eq!(m.get("c1", t0 + MOVED_TTL), None, "too old");
        m.insert("c2".into(), to.clone(), t0 + MOVED_TTL);
        assert_eq!(m.len(), 1, "c1 expired on the next insert");
        for i in 0..MAX_MOVED + 10 {
            m.insert(format!("k{i}").into(), to.clone(), t0 + MOVED_TTL);
        }
        assert_eq!(m.len(), MAX_MOVED);
        assert_eq!(m.get("k0", t0 + MOVED_TTL), None, "the oldest went first");
        assert!(
            m.get(&format!("k{}", MAX_MOVED + 9), t0 + MOVED_TTL)
                .is_some()
        );
        // A client moved again keeps its newer entry when the older one is evicted.
        let mut m = Moved::default();
        m.insert("c".into(), to.clone(), t0);
        m.insert("c".into(), Arc::from("d"), t0 + Duration::from_secs(30));
        m.insert("x".into(), to.clone(), t0 + MOVED_TTL);
        assert_eq!(m.get("c", t0 + MOVED_TTL).as_deref(), Some("d"));
    }
}
