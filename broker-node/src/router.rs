//! The subscription index: a trie keyed by topic level, so a PUBLISH walks only the branches its own levels (and
//! `+`/`#`) lead to, instead of testing every filter. Shared subscriptions (`$share/{group}/{filter}`) sit in
//! the same trie as groups whose members take turns (round robin, preferring connected members).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use fleetgate_protocol::mqtt::{ByteString, SubscriptionOptions};

use crate::message::SessionId;
use crate::session::Session;

/// One subscription of one session.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// The subscribing session.
    pub session: Arc<Session>,
    /// Options from SUBSCRIBE.
    pub options: SubscriptionOptions,
    /// Subscription identifier (v5).
    pub id: Option<NonZeroU32>,
}

#[derive(Debug)]
struct SharedGroup {
    name: Box<str>,
    /// `$share/{name}/{filter}`: the group's identity across a cluster.
    full: ByteString,
    members: Vec<Subscriber>,
    next: AtomicUsize,
}

impl SharedGroup {
    /// Next member in turn; a connected one when there is any.
    fn pick(&self) -> Option<&Subscriber> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.members[(start + i) % n])
            .find(|m| m.session.is_connected())
            .or_else(|| self.members.get(start % n))
    }
}

#[derive(Debug, Default)]
struct Entries {
    direct: Vec<Subscriber>,
    groups: Vec<SharedGroup>,
}

impl Entries {
    fn is_empty(&self) -> bool {
        self.direct.is_empty() && self.groups.is_empty()
    }

    /// Adds or replaces `session`'s subscription; true when it replaced one. `filter` is the plain filter.
    fn insert(&mut self, filter: &str, group: Option<&str>, sub: Subscriber) -> bool {
        let list = match group {
            None => &mut self.direct,
            Some(name) => {
                let idx = match self.groups.iter().position(|g| &*g.name == name) {
                    Some(i) => i,
                    None => {
                        self.groups.push(SharedGroup {
                            name: name.into(),
                            full: format!("$share/{name}/{filter}").into(),
                            members: Vec::new(),
                            next: AtomicUsize::new(0),
                        });
                        self.groups.len() - 1
                    }
                };
                &mut self.groups[idx].members
            }
        };
        match list.iter_mut().find(|s| s.session.id == sub.session.id) {
            Some(existing) => {
                *existing = sub;
                true
            }
            None => {
                list.push(sub);
                false
            }
        }
    }

    fn remove(&mut self, group: Option<&str>, session: SessionId) -> bool {
        match group {
            None => remove_session(&mut self.direct, session),
            Some(name) => {
                let Some(idx) = self.groups.iter().position(|g| &*g.name == name) else {
                    return false;
                };
                let removed = remove_session(&mut self.groups[idx].members, session);
                if self.groups[idx].members.is_empty() {
                    self.groups.swap_remove(idx);
                }
                removed
            }
        }
    }

    fn collect<'a>(&'a self, scope: &mut Scope<'_>, out: &mut Vec<&'a Subscriber>) {
        match scope {
            Scope::All { served } => {
                out.extend(self.direct.iter());
                for g in &self.groups {
                    if let Some(m) = g.pick() {
                        out.push(m);
                        served.push(g.full.clone());
                    }
                }
            }
            Scope::Chosen { direct, groups } => {
                if *direct {
                    out.extend(self.direct.iter());
                }
                out.extend(
                    self.groups
                        .iter()
                        .filter(|g| groups.contains(&g.full))
                        .filter_map(SharedGroup::pick),
                );
            }
        }
    }
}

fn remove_session(list: &mut Vec<Subscriber>, session: SessionId) -> bool {
    let before = list.len();
    list.retain(|s| s.session.id != session);
    list.len() != before
}

/// Which subscriptions a [`Router::collect_scoped`] walk takes.
#[derive(Debug)]
pub enum Scope<'s> {
    /// Everything (a message published on this node); the shared groups that got a member are appended to
    /// `served` (so the cluster does not give them the message again on another node).
    All {
        /// Full `$share/..` filters served here.
        served: &'s mut Vec<ByteString>,
    },
    /// What a peer forwarded the message for: plain subscriptions when `direct`, and the listed shared groups.
    Chosen {
        /// Plain subscriptions too.
        direct: bool,
        /// Full `$share/..` filters to serve.
        groups: &'s [ByteString],
    },
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node, foldhash::fast::RandomState>,
    /// `children` holds a `+` child: spares every publish a hash lookup of `+` at every level without one.
    has_plus: bool,
    /// Filters ending at this level.
    here: Entries,
    /// Filters ending with `/#` after this level (or `#` at the root): match this level and everything below.
    hash: Entries,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.here.is_empty() && self.hash.is_empty()
    }

    /// Nothing here but the one child on a removal path: empty once that child goes.
    fn only_holds(&self, child: &str) -> bool {
        self.here.is_empty()
            && self.hash.is_empty()
            && self.children.len() == 1
            && self.children.contains_key(child)
    }
}

impl Drop for Node {
    /// Iterative, so that a deep branch cannot overflow the stack as the default recursive drop would.
    fn drop(&mut self) {
        if self.children.is_empty() {
            return;
        }
        let mut stack: Vec<Node> = self.children.drain().map(|(_, n)| n).collect();
        while let Some(mut node) = stack.pop() {
            stack.extend(node.children.drain().map(|(_, n)| n));
        }
    }
}

/// The subscription trie.
#[derive(Debug, Default)]
pub struct Router {
    root: Node,
    subscriptions: usize,
}

impl Router {
    /// An empty index.
    pub fn new() -> Router {
        Router::default()
    }

    /// Number of subscriptions held.
    pub fn len(&self) -> usize {
        self.subscriptions
    }

    /// True when nothing is subscribed.
    pub fn is_empty(&self) -> bool {
        self.subscriptions == 0
    }

    /// Adds (or replaces) the subscription of `sub.session` to `filter` (a plain filter; `group` for
    /// `$share/{group}/{filter}`). Returns true when it replaced an existing one.
    pub fn subscribe(&mut self, filter: &str, group: Option<&str>, sub: Subscriber) -> bool {
        let (path, hash) = split_hash(filter);
        let mut node = &mut self.root;
        for level in path {
            node.has_plus |= level == "+";
            node = node.children.entry(level.into()).or_default();
        }
        let entries = if hash { &mut node.hash } else { &mut node.here };
        let replaced = entries.insert(filter, group, sub);
        if !replaced {
            self.subscriptions += 1;
        }
        replaced
    }

    /// Removes `session`'s subscription to `filter`; true when there was one.
    pub fn unsubscribe(&mut self, filter: &str, group: Option<&str>, session: SessionId) -> bool {
        let (path, hash) = split_hash(filter);
        let levels: Vec<&str> = path.collect();
        let mut node = &mut self.root;
        for level in &levels {
            match node.children.get_mut(*level) {
                Some(child) => node = child,
                None => return false,
            }
        }
        let entries = if hash { &mut node.hash } else { &mut node.here };
        if !entries.remove(group, session) {
            return false;
        }
        self.subscriptions -= 1;
        if node.is_empty() {
            self.prune(&levels);
        }
        true
    }

    /// Cuts the branch ending at `levels` (whose last node is empty) as high up as it holds nothing else.
    fn prune(&mut self, levels: &[&str]) {
        let Some(last) = levels.len().checked_sub(1) else {
            return;
        };
        // `cut`: the depth of the node that loses its child `levels[cut]`; every node below it becomes empty.
        let mut cut = last;
        let mut node = &self.root;
        for (depth, level) in levels.iter().enumerate().take(last) {
            let Some(child) = node.children.get(*level) else {
                return;
            };
            if !child.only_holds(levels[depth + 1]) {
                cut = last;
            } else if cut == last {
                cut = depth;
            }
            node = child;
        }
        let mut node = &mut self.root;
        for level in &levels[..cut] {
            match node.children.get_mut(*level) {
                Some(child) => node = child,
                None => return,
            }
        }
        node.children.remove(levels[cut]);
        if levels[cut] == "+" {
            node.has_plus = false;
        }
    }

    /// Every subscription matching `topic` (several per session when filters overlap; the caller merges).
    pub fn collect<'a>(&'a self, topic: &str, out: &mut Vec<&'a Subscriber>) {
        let mut served = Vec::new();
        self.collect_scoped(
            topic,
            &mut Scope::All {
                served: &mut served,
            },
            out,
        );
    }

    /// Like [`Router::collect`], limited to `scope`.
    pub fn collect_scoped<'a>(
        &'a self,
        topic: &str,
        scope: &mut Scope<'_>,
        out: &mut Vec<&'a Subscriber>,
    ) {
        walk(&self.root, topic, scope, out);
    }
}

/// Splits a filter into its levels without a trailing `#`, and whether it ended in `#`.
fn split_hash(filter: &str) -> (std::str::Split<'_, char>, bool) {
    if filter == "#" {
        // An empty iterator: `"".split('/')` would yield one empty level.
        let mut it = "".split('/');
        it.next();
        return (it, true);
    }
    match filter.strip_suffix("/#") {
        Some(prefix) => (prefix.split('/'), true),
        None => (filter.split('/'), false),
    }
}

/// Collects what matches `topic`, iteratively (no recursion, however deep the trie): one path is followed at a
/// time, and a second one is kept aside only where both a level's own child and a `+` child match.
fn walk<'a>(root: &'a Node, topic: &str, scope: &mut Scope<'_>, out: &mut Vec<&'a Subscriber>) {
    // A leading wildcard never matches a `$` topic [MQTT-4.7.2-1].
    let dollar = topic.starts_with('$');
    // (node, the levels still to match — `None` once all are — and whether the node is the root)
    let mut next = Some((root, Some(topic), true));
    let mut aside: Vec<(&'a Node, Option<&str>, bool)> = Vec::new();
    while let Some((node, rest, at_root)) = next.take().or_else(|| aside.pop()) {
        let wildcard_ok = !(at_root && dollar);
        if wildcard_ok {
            node.hash.collect(scope, out);
        }
        let Some(rest) = rest else {
            node.here.collect(scope, out);
            continue;
        };
        let (level, after) = match rest.split_once('/') {
            Some((level, after)) => (level, Some(after)),
            None => (rest, None),
        };
        let exact = node.children.get(level);
        let plus = if wildcard_ok && node.has_plus && level != "+" {
            node.children.get("+")
        } else {
            None
        };
        match (exact, plus) {
            (Some(exact), Some(plus)) => {
                next = Some((exact, after, false));
                aside.push((plus, after, false));
            }
            (Some(child), None) | (None, Some(child)) => next = Some((child, after, false)),
            (None, None) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetgate_protocol::mqtt::topic;

    fn sub(id: SessionId) -> Subscriber {
        Subscriber {
            session: Session::new_for_test(id),
            options: SubscriptionOptions::default(),
            id: None,
        }
    }

    fn hits(router: &Router, topic: &str) -> Vec<SessionId> {
        let mut out = Vec::new();
        router.collect(topic, &mut out);
        let mut ids: Vec<SessionId> = out.iter().map(|s| s.session.id).collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn agrees_with_the_reference_matcher() {
        let filters = [
            "#", "+", "a", "a/b", "a/+", "a/#", "+/b", "+/+", "a/b/c", "a/+/c", "$SYS/#", "$SYS/+",
            "+/#", "a//b", "/a", "/+",
        ];
        let topics = [
            "a", "a/b", "a/c", "b/b", "a/b/c", "a/x/c", "$SYS/x", "$SYS", "a//b", "/a", "/", "b",
        ];
        let mut router = Router::new();
        for (i, f) in filters.iter().enumerate() {
            router.subscribe(f, None, sub(i as SessionId + 1));
        }
        assert_eq!(router.len(), filters.len());
        for t in topics {
            let expected: Vec<SessionId> = filters
                .iter()
                .enumerate()
                .filter(|(_, f)| topic::matches(f, t))
                .map(|(i, _)| i as SessionId + 1)
                .collect();
            assert_eq!(hits(&router, t), expected, "topic {t}");
        }
    }

    #[test]
    fn unsubscribe_prunes() {
        let mut router = Router::new();
        router.subscribe("a/b/c", None, sub(1));
        router.subscribe("a/#", None, sub(1));
        assert!(router.unsubscribe("a/b/c", None, 1));
        assert!(!router.unsubscribe("a/b/c", None, 1));
        assert_eq!(hits(&router, "a/b/c"), vec![1]);
        assert!(router.unsubscribe("a/#", None, 1));
        assert!(router.root.is_empty());
        assert!(router.is_empty());
    }

    #[test]
    fn plus_child_is_found_after_prune_and_resubscribe() {
        let mut router = Router::new();
        router.subscribe("a/+", None, sub(1));
        router.subscribe("a/b", None, sub(2));
        assert_eq!(hits(&router, "a/b"), vec![1, 2]);
        assert!(router.unsubscribe("a/+", None, 1));
        assert_eq!(hits(&router, "a/b"), vec![2]);
        router.subscribe("a/+", None, sub(3));
        assert_eq!(hits(&router, "a/b"), vec![2, 3]);
        assert_eq!(hits(&router, "a/c"), vec![3]);
    }

    #[test]
    fn deep_filters_do_not_recurse() {
        // Far deeper than any stack would take recursively (walk, prune and drop are iterative).
        let deep = vec!["x"; 200_000].join("/");
        let mut router = Router::new();
        router.subscribe(&deep, None, sub(1));
        router.subscribe(&format!("{deep}/#"), None, sub(2));
        router.subscribe("x/x/y", None, sub(3));
        assert_eq!(hits(&router, &deep), vec![1, 2]);
        assert!(router.unsubscribe(&deep, None, 1));
        assert_eq!(hits(&router, &deep), vec![2]);
        assert!(router.unsubscribe(&format!("{deep}/#"), None, 2));
        assert_eq!(hits(&router, "x/x/y"), vec![3]);
        assert_eq!(router.root.children["x"].children["x"].children.len(), 1);
        router.subscribe(&deep, None, sub(4));
        drop(router);
    }

    #[test]
    fn resubscribe_replaces() {
        let mut router = Router::new();
        assert!(!router.subscribe("a", None, sub(1)));
        assert!(router.subscribe("a", None, sub(1)));
        assert_eq!(router.len(), 1);
    }

    #[test]
    fn shared_groups_take_turns() {
        let mut router = Router::new();
        router.subscribe("job/#", Some("g"), sub(1));
        router.subscribe("job/#", Some("g"), sub(2));
        router.subscribe("job/#", Some("h"), sub(3));
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(hits(&router, "job/1"));
        }
        let mut served = Vec::new();
        let mut out = Vec::new();
        router.collect_scoped(
            "job/1",
            &mut Scope::All {
                served: &mut served,
            },
            &mut out,
        );
        served.sort();
        assert_eq!(served, vec!["$share/g/job/#", "$share/h/job/#"]);
        let chosen = [ByteString::from("$share/h/job/#")];
        let mut out = Vec::new();
        let mut scope = Scope::Chosen {
            direct: false,
            groups: &chosen,
        };
        router.collect_scoped("job/1", &mut scope, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].session.id, 3);
        // Group h's only member gets every message; g alternates.
        let ones = seen.iter().filter(|h| h.contains(&1)).count();
        let twos = seen.iter().filter(|h| h.contains(&2)).count();
        assert_eq!((ones, twos), (2, 2), "{seen:?}");
        assert!(seen.iter().all(|h| h.contains(&3) && h.len() == 2));
    }
}
