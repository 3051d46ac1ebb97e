//! Remote routes: which peer has a subscription on which filter, as the peers advertised them (RouteAdd /
//! RouteRemove, full sync on link up). A trie keyed by topic level like the local [`crate::router::Router`], so a
//! publish walks only the branches its levels lead to; each filter is held once per peer (peers de-duplicate
//! their own sessions' filters before advertising).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use fleetgate_protocol::mqtt::ByteString;
use fleetgate_protocol::mqtt::topic::SharedSubscription;

/// A peer's name, shared by every route it advertised.
pub type PeerName = Arc<str>;

#[derive(Debug, Clone)]
struct Route {
    peer: PeerName,
    /// The full filter, `$share/{group}/..` included: the shared group's identity across the cluster.
    full: ByteString,
    shared: bool,
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node, foldhash::fast::RandomState>,
    /// The `+` child, apart from `children`: every publish looks it up at every level, without hashing.
    plus: Option<Box<Node>>,
    here: Vec<Route>,
    hash: Vec<Route>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.here.is_empty()
            && self.hash.is_empty()
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Node> {
        if level == "+" {
            self.plus.as_deref_mut()
        } else {
            self.children.get_mut(level)
        }
    }

    fn child_or_new(&mut self, level: &str) -> &mut Node {
        if level == "+" {
            self.plus.get_or_insert_with(Box::default)
        } else {
            self.children.entry(level.into()).or_default()
        }
    }

    fn remove_child(&mut self, level: &str) {
        if level == "+" {
            self.plus = None;
        } else {
            self.children.remove(level);
        }
    }
}

/// Which peers a topic must be forwarded to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RemoteMatches {
    /// Peers with a plain subscription matching the topic (sorted, unique).
    pub direct: Vec<PeerName>,
    /// Shared subscriptions matching the topic (full filter) and the peers with members of each.
    pub groups: Vec<(ByteString, Vec<PeerName>)>,
}

impl RemoteMatches {
    /// True when no peer wants the topic.
    pub fn is_empty(&self) -> bool {
        self.direct.is_empty() && self.groups.is_empty()
    }
}

/// Filters advertised by peers.
#[derive(Debug, Default)]
pub struct RouteTable {
    root: Node,
    by_peer: HashMap<PeerName, HashSet<ByteString>>,
}

impl RouteTable {
    /// An empty table.
    pub fn new() -> RouteTable {
        RouteTable::default()
    }

    /// Records that `peer` subscribes to `full`; false when it already was.
    pub fn add(&mut self, peer: &PeerName, full: &ByteString) -> bool {
        if !self
            .by_peer
            .entry(peer.clone())
            .or_default()
            .insert(full.clone())
        {
            return false;
        }
        let (shared, plain) = split(full);
        let (levels, hash) = levels(plain);
        let mut node = &mut self.root;
        for level in levels {
            node = node.child_or_new(level);
        }
        let list = if hash { &mut node.hash } else { &mut node.here };
        list.push(Route {
            peer: peer.clone(),
            full: full.clone(),
            shared,
        });
        true
    }

    /// Forgets `peer`'s subscription to `full`; false when it had none.
    pub fn remove(&mut self, peer: &str, full: &str) -> bool {
        let Some(set) = self.by_peer.get_mut(peer) else {
            return false;
        };
        if !set.remove(full) {
            return false;
        }
        if set.is_empty() {
            self.by_peer.remove(peer);
        }
        let (_, plain) = split(full);
        let (levels, hash) = levels(plain);
        let levels: Vec<&str> = levels.collect();
        remove_at(&mut self.root, &levels, hash, peer, full);
        true
    }

    /// Forgets every route of `peer` (link down); returns how many there were.
    pub fn remove_peer(&mut self, peer: &str) -> usize {
        let Some(set) = self.by_peer.get(peer).cloned() else {
            return 0;
        };
        for f in &set {
            self.remove(peer, f);
        }
        set.len()
    }

    /// Number of (peer, filter) routes.
    pub fn len(&self) -> usize {
        self.by_peer.values().map(HashSet::len).sum()
    }

    /// True when no peer advertised anything.
    pub fn is_empty(&self) -> bool {
        self.by_peer.is_empty()
    }

    /// True when `peer` advertised `full`.
    pub fn has(&self, peer: &str, full: &str) -> bool {
        self.by_peer.get(peer).is_some_and(|s| s.contains(full))
    }

    /// Number of routes of one peer.
    pub fn peer_len(&self, peer: &str) -> usize {
        self.by_peer.get(peer).map_or(0, HashSet::len)
    }

    /// The peers (and shared groups) `topic` must go to.
    pub fn matches(&self, topic: &str) -> RemoteMatches {
        let mut hits: Vec<&Route> = Vec::new();
        walk(
            &self.root,
            Some(topic),
            true,
            topic.starts_with('$'),
            &mut hits,
        );
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

/// `$share/{g}/{f}` → (true, f); anything else → (false, filter).
fn split(full: &str) -> (bool, &str) {
    match SharedSubscription::parse(full) {
        Ok(Some(s)) => (true, s.filter),
        _ => (false, full),
    }
}

fn levels(filter: &str) -> (std::str::Split<'_, char>, bool) {
    if filter == "#" {
        let mut it = "".split('/');
        it.next();
        return (it, true);
    }
    match filter.strip_suffix("/#") {
        Some(prefix) => (prefix.split('/'), true),
        None => (filter.split('/'), false),
    }
}

fn remove_at(node: &mut Node, levels: &[&str], hash: bool, peer: &str, full: &str) {
    match levels.split_first() {
        None => {
            let list = if hash { &mut node.hash } else { &mut node.here };
            list.retain(|r| !(&*r.peer == peer && r.full == full));
        }
        Some((first, rest)) => {
            if let Some(child) = node.child_mut(first) {
                remove_at(child, rest, hash, peer, full);
                if child.is_empty() {
                    node.remove_child(first);
                }
            }
        }
    }
}

/// Collects the routes matching `rest`, the topic levels below `node` (`None` once every level was consumed;
/// `top` at the root), without splitting the topic into a list first (this runs for every publish).
fn walk<'a>(node: &'a Node, rest: Option<&str>, top: bool, dollar: bool, out: &mut Vec<&'a Route>) {
    // A leading wildcard never matches a `$` topic [MQTT-4.7.2-1].
    let wildcard_ok = !(top && dollar);
    if wildcard_ok {
        out.extend(node.hash.iter());
    }
    let Some(rest) = rest else {
        out.extend(node.here.iter());
        return;
    };
    let (level, below) = match rest.split_once('/') {
        Some((level, below)) => (level, Some(below)),
        None => (rest, None),
    };
    if !node.children.is_empty()
        && let Some(child) = node.children.get(level)
    {
        walk(child, below, false, dollar, out);
    }
    if wildcard_ok && let Some(child) = &node.plus {
        walk(child, below, false, dollar, out);
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
        assert!(t.is_empty() && t.root.is_empty());
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
