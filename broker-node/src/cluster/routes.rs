//! Remote routes: which peer has a subscription on which filter, as the peers advertised them (RouteAdd /
//! RouteRemove, full sync on link up). A trie keyed by topic level like the local [`crate::state::router::Router`], so a
//! publish walks only the branches its levels lead to; each filter is held once per peer (peers de-duplicate
//! their own sessions' filters before advertising).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use fleetgate_protocol::mqtt::ByteString;
use fleetgate_protocol::mqtt::topic::split_shared;

use crate::state::trie::TopicTrie;

/// A peer's name, shared by every route it advertised.
pub(crate) type PeerName = Arc<str>;

#[derive(Debug, Clone)]
struct Route {
    peer: PeerName,
    /// The full filter, `$share/{group}/..` included: the shared group's identity across the cluster.
    full: ByteString,
    shared: bool,
}

/// Which peers a topic must be forwarded to.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct RemoteMatches {
    /// Peers with a plain subscription matching the topic (sorted, unique).
    pub(crate) direct: Vec<PeerName>,
    /// Shared subscriptions matching the topic (full filter) and the peers with members of each.
    pub(crate) groups: Vec<(ByteString, Vec<PeerName>)>,
}

impl RemoteMatches {
    /// True when no peer wants the topic.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.direct.is_empty() && self.groups.is_empty()
    }
}

/// Filters advertised by peers.
#[derive(Debug, Default)]
pub(crate) struct RouteTable {
    trie: TopicTrie<Vec<Route>>,
    by_peer: HashMap<PeerName, HashSet<ByteString>>,
}

impl RouteTable {
    /// An empty table.
    pub(crate) fn new() -> RouteTable {
        RouteTable::default()
    }

    /// Records that `peer` subscribes to `full`; false when it already was.
    pub(crate) fn add(&mut self, peer: &PeerName, full: &ByteString) -> bool {
        if !self
            .by_peer
            .entry(peer.clone())
            .or_default()
            .insert(full.clone())
        {
            return false;
        }
        let (group, plain) = split_shared(full);
        self.trie.slot_mut(plain).push(Route {
            peer: peer.clone(),
            full: full.clone(),
            shared: group.is_some(),
        });
        true
    }

    /// Forgets `peer`'s subscription to `full`; false when it had none.
    pub(crate) fn remove(&mut self, peer: &str, full: &str) -> bool {
        let Some(set) = self.by_peer.get_mut(peer) else {
            return false;
        };
        if !set.remove(full) {
            return false;
        }
        if set.is_empty() {
            self.by_peer.remove(peer);
        }
        let (_, plain) = split_shared(full);
        self.trie.update(plain, |routes| {
            routes.retain(|r| !(&*r.peer == peer && r.full == full));
        });
        true
    }

    /// Forgets every route of `peer`; returns how many there were.
    pub(crate) fn remove_peer(&mut self, peer: &str) -> usize {
        self.take_peer(peer).len()
    }

    /// Takes every route of `peer` out of the table and returns their filters (kept aside for a resume).
    pub(crate) fn take_peer(&mut self, peer: &str) -> HashSet<ByteString> {
        let Some(set) = self.by_peer.remove(peer) else {
            return HashSet::new();
        };
        for full in &set {
            let (_, plain) = split_shared(full);
            self.trie.update(plain, |routes| {
                routes.retain(|r| !(&*r.peer == peer && r.full == *full));
            });
        }
        set
    }

    /// Puts routes taken by [`take_peer`](Self::take_peer) back.
    pub(crate) fn restore_peer(&mut self, peer: &PeerName, filters: HashSet<ByteString>) {
        for f in filters {
            self.add(peer, &f);
        }
    }

    /// The filters `peer` advertised.
    pub(crate) fn peer_filters(&self, peer: &str) -> HashSet<ByteString> {
        self.by_peer.get(peer).cloned().unwrap_or_default()
    }

    /// Number of routes of `peer`.
    pub(crate) fn peer_len(&self, peer: &str) -> usize {
        self.by_peer.get(peer).map_or(0, HashSet::len)
    }

    /// Number of (peer, filter) routes.
    pub(crate) fn len(&self) -> usize {
        self.by_peer.values().map(HashSet::len).sum()
    }

    /// True when no peer advertised anything.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.by_peer.is_empty()
    }

    /// The peers (and shared groups) `topic` must go to.
    pub(crate) fn matches(&self, topic: &str) -> RemoteMatches {
        let mut hits: Vec<&Route> = Vec::new();
        self.trie
            .for_each_match(topic, |routes| hits.extend(routes.iter()));
        let mut out = RemoteMatches::default();
        for r in hits {
            if r.shared {
                match out.groups.iter_mut().find(|(f, _)| *f == r.full) {
                    Some((_, peers)) => peers.push(r.peer.clone()),
                    None => out.groups.push((r.full.clone(), vec![r.peer.clone()])),
                }
            } else {
                out.direct.push(r.peer.clone());
            }
        }
        out.direct.sort_unstable();
        out.direct.dedup();
        for (_, peers) in &mut out.groups {
            peers.sort_unstable();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetgate_protocol::mqtt::topic;

    fn peer(n: &str) -> PeerName {
        Arc::from(n)
    }

    #[test]
    fn agrees_with_the_reference_matcher() {
        let filters = [
            "#", "+", "a", "a/b", "a/+", "a/#", "+/b", "+/+", "a/b/c", "a/+/c", "$SYS/#", "+/#",
            "a//b", "/+",
        ];
        let topics = [
            "a", "a/b", "a/c", "b/b", "a/b/c", "a/x/c", "$SYS/x", "a//b", "/a", "b",
        ];
        let mut t = RouteTable::new();
        for (i, f) in filters.iter().enumerate() {
            assert!(t.add(&peer(&format!("p{i:02}")), &(*f).into()));
        }
        for topic_name in topics {
            let expected: Vec<String> = filters
                .iter()
                .enumerate()
                .filter(|(_, f)| topic::matches(f, topic_name))
                .map(|(i, _)| format!("p{i:02}"))
                .collect();
            let got: Vec<String> = t
                .matches(topic_name)
                .direct
                .iter()
                .map(|p| p.to_string())
                .collect();
            assert_eq!(got, expected, "topic {topic_name}");
        }
    }

    #[test]
    fn one_entry_per_peer_and_filter_and_removal() {
        let mut t = RouteTable::new();
        let (a, b) = (peer("a"), peer("b"));
        assert!(t.add(&a, &"x/#".into()));
        assert!(!t.add(&a, &"x/#".into()));
        assert!(t.add(&a, &"x/+".into()));
        assert!(t.add(&b, &"x/y".into()));
        assert_eq!(t.matches("x/y").direct, vec![a.clone(), b.clone()]);
        assert_eq!(t.len(), 3);
        assert!(t.remove("a", "x/#"));
        assert!(!t.remove("a", "x/#"));
        assert_eq!(t.matches("x/y").direct, vec![a.clone(), b.clone()]);
        assert_eq!(t.remove_peer("a"), 1);
        assert_eq!(t.matches("x/y").direct, vec![b]);
        assert_eq!(t.remove_peer("b"), 1);
        assert!(t.is_empty() && t.trie.is_empty());
    }

    #[test]
    fn a_deep_filter_is_matched_and_dropped_without_recursion() {
        // A peer's RouteAdd may carry a filter of 65,536 levels; dropping the peer's routes once overflowed the
        // stack (a recursive removal) and aborted the node.
        let mut t = RouteTable::new();
        let deep = vec!["x"; 65_536].join("/");
        t.add(&peer("a"), &deep.as_str().into());
        t.add(&peer("a"), &format!("{deep}/#").into());
        assert_eq!(t.matches(&deep).direct, vec![peer("a")]);
        assert_eq!(t.remove_peer("a"), 2);
        assert!(t.is_empty() && t.trie.is_empty());
    }

    #[test]
    fn shared_groups_are_listed_with_their_peers() {
        let mut t = RouteTable::new();
        let (a, b) = (peer("a"), peer("b"));
        t.add(&b, &"$share/g/job/#".into());
        t.add(&a, &"$share/g/job/#".into());
        t.add(&a, &"$share/h/job/+".into());
        t.add(&b, &"job/1".into());
        let m = t.matches("job/1");
        assert_eq!(m.direct, vec![b.clone()]);
        assert_eq!(m.groups.len(), 2);
        let g = m
            .groups
            .iter()
            .find(|(f, _)| f == "$share/g/job/#")
            .unwrap();
        assert_eq!(g.1, vec![a.clone(), b.clone()]);
        assert!(t.matches("other").is_empty());
    }
}
