//! The local subscription index: a [`TopicTrie`] whose slots hold the subscribers of each filter, so a PUBLISH
//! walks only the branches its own levels (and `+`/`#`) lead to. Shared subscriptions (`$share/{group}/{filter}`)
//! sit in the same slots as groups whose members take turns (round robin, preferring connected members).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use fleetgate_protocol::mqtt::{ByteString, SubscriptionOptions};

use super::message::SessionId;
use super::session::Session;
use super::trie::{Slot, TopicTrie};

/// One subscription of one session.
#[derive(Debug, Clone)]
pub(crate) struct Subscriber {
    /// The subscribing session.
    pub(crate) session: Arc<Session>,
    /// Options from SUBSCRIBE.
    pub(crate) options: SubscriptionOptions,
    /// Subscription identifier (v5).
    pub(crate) id: Option<NonZeroU32>,
}

/// Lists this long and longer are indexed by session: a filter thousands of sessions subscribe to (a fleet's
/// broadcast topic) takes a subscribe or unsubscribe in constant time, not a scan of every subscriber.
const INDEX_FROM: usize = 16;

/// The subscribers of one filter (or shared group): a list that publishes walk, and, once long, an index of
/// positions by session for subscribe and unsubscribe.
#[derive(Debug, Default)]
struct Members {
    list: Vec<Subscriber>,
    index: Option<HashMap<SessionId, usize, foldhash::fast::RandomState>>,
}

impl Members {
    fn len(&self) -> usize {
        self.list.len()
    }

    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    fn iter(&self) -> std::slice::Iter<'_, Subscriber> {
        self.list.iter()
    }

    fn get(&self, i: usize) -> Option<&Subscriber> {
        self.list.get(i)
    }

    fn position(&self, session: SessionId) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(&session).copied(),
            None => self.list.iter().position(|s| s.session.id == session),
        }
    }

    /// Adds or replaces `sub`'s session's entry; true when it replaced one.
    fn insert(&mut self, sub: Subscriber) -> bool {
        if let Some(i) = self.position(sub.session.id) {
            self.list[i] = sub;
            return true;
        }
        if let Some(index) = &mut self.index {
            index.insert(sub.session.id, self.list.len());
        }
        self.list.push(sub);
        if self.index.is_none() && self.list.len() >= INDEX_FROM {
            self.index = Some(
                self.list
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (s.session.id, i))
                    .collect(),
            );
        }
        false
    }

    /// Removes `session`'s entry (the last one takes its place); false when it had none.
    fn remove(&mut self, session: SessionId) -> bool {
        let Some(i) = self.position(session) else {
            return false;
        };
        self.list.swap_remove(i);
        if let Some(index) = &mut self.index {
            index.remove(&session);
            if let Some(moved) = self.list.get(i) {
                index.insert(moved.session.id, i);
            }
            if self.list.len() < INDEX_FROM / 2 {
                self.index = None;
            }
        }
        true
    }
}

#[derive(Debug)]
struct SharedGroup {
    name: Box<str>,
    /// `$share/{name}/{filter}`: the group's identity across a cluster.
    full: ByteString,
    members: Members,
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
            .filter_map(|i| self.members.get((start + i) % n))
            .find(|m| m.session.is_connected())
            .or_else(|| self.members.get(start % n))
    }
}

#[derive(Debug, Default)]
struct Entries {
    direct: Members,
    groups: Vec<SharedGroup>,
}

impl Slot for Entries {
    fn is_empty(&self) -> bool {
        self.direct.is_empty() && self.groups.is_empty()
    }
}

impl Entries {
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
                            members: Members::default(),
                            next: AtomicUsize::new(0),
                        });
                        self.groups.len() - 1
                    }
                };
                &mut self.groups[idx].members
            }
        };
        list.insert(sub)
    }

    fn remove(&mut self, group: Option<&str>, session: SessionId) -> bool {
        match group {
            None => self.direct.remove(session),
            Some(name) => {
                let Some(idx) = self.groups.iter().position(|g| &*g.name == name) else {
                    return false;
                };
                let removed = self.groups[idx].members.remove(session);
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

/// Which subscriptions a [`Router::collect_scoped`] walk takes.
#[derive(Debug)]
pub(crate) enum Scope<'s> {
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

/// The subscription index.
#[derive(Debug, Default)]
pub(crate) struct Router {
    trie: TopicTrie<Entries>,
    subscriptions: usize,
}

impl Router {
    /// An empty index.
    pub(crate) fn new() -> Router {
        Router::default()
    }

    /// Number of subscriptions held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.subscriptions
    }

    /// True when nothing is subscribed.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.subscriptions == 0
    }

    /// Adds (or replaces) the subscription of `sub.session` to `filter` (a plain filter; `group` for
    /// `$share/{group}/{filter}`). Returns true when it replaced an existing one.
    pub(crate) fn subscribe(&mut self, filter: &str, group: Option<&str>, sub: Subscriber) -> bool {
        let replaced = self.trie.slot_mut(filter).insert(filter, group, sub);
        if !replaced {
            self.subscriptions += 1;
        }
        replaced
    }

    /// Removes `session`'s subscription to `filter`; true when there was one.
    pub(crate) fn unsubscribe(
        &mut self,
        filter: &str,
        group: Option<&str>,
        session: SessionId,
    ) -> bool {
        let removed = self
            .trie
            .update(filter, |entries| entries.remove(group, session))
            .unwrap_or(false);
        if removed {
            self.subscriptions -= 1;
        }
        removed
    }

    /// Every subscription matching `topic` (several per session when filters overlap; the caller merges).
    #[cfg(test)]
    pub(crate) fn collect<'a>(&'a self, topic: &str, out: &mut Vec<&'a Subscriber>) {
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
    pub(crate) fn collect_scoped<'a>(
        &'a self,
        topic: &str,
        scope: &mut Scope<'_>,
        out: &mut Vec<&'a Subscriber>,
    ) {
        self.trie
            .for_each_match(topic, |entries| entries.collect(scope, out));
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

    /// Many sessions on one filter, past the index threshold and back below it: subscribes, resubscribes and
    /// unsubscribes in a mixed order keep exactly the subscribed set (the index follows every swap).
    #[test]
    fn a_crowded_filter_keeps_its_subscribers_through_the_index() {
        let mut r = Router::new();
        let mut want: std::collections::BTreeSet<SessionId> = Default::default();
        let mut seed = 7u64;
        for step in 0..5_000u64 {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let id = (seed >> 33) % 200;
            // Mostly subscribes early, mostly unsubscribes late: the list grows past INDEX_FROM and shrinks.
            let subscribe = (seed >> 20) % 100 < if step < 2_500 { 70 } else { 25 };
            if subscribe {
                let replaced = r.subscribe("fleet/all", None, sub(id));
                assert_eq!(replaced, !want.insert(id), "step {step}: subscribe {id}");
            } else {
                let removed = r.unsubscribe("fleet/all", None, id);
                assert_eq!(removed, want.remove(&id), "step {step}: unsubscribe {id}");
            }
            if step % 97 == 0 {
                assert_eq!(
                    hits(&r, "fleet/all"),
                    want.iter().copied().collect::<Vec<_>>()
                );
            }
        }
        assert_eq!(
            hits(&r, "fleet/all"),
            want.iter().copied().collect::<Vec<_>>()
        );
        assert_eq!(r.len(), want.len());
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
        assert!(router.trie.is_empty());
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
