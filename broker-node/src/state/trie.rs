//! The one topic trie of the node: stored filters keyed level by level, so a topic walks only the branches its
//! own levels (and `+`/`#`) lead to, instead of testing every filter. The local subscriptions
//! ([`super::router::Router`]) and the filters cluster peers advertised (`cluster::routes`) are both a
//! [`TopicTrie`] of their own slot type.
//!
//! Matching is MQTT's (§4.7): `+` matches one level (an empty one too), `#` matches its parent level and
//! everything below, and a wildcard in the first level never matches a topic starting with `$`.
//!
//! Filters and topics come from peers (clients, cluster nodes) and may have tens of thousands of levels: every
//! walk here — insert, match, prune, drop — is a loop, never a recursion, so depth cannot overflow the stack.
//!
//! The ACL (`fleetgate_auth::topic`) keeps its own filter algebra: it compares filters with filters (`covers`,
//! `intersects`), not a topic against many stored filters, which is what this trie is for.

use std::collections::HashMap;

/// What a trie node holds for the filters ending there.
pub(crate) trait Slot: Default {
    /// True when the slot holds nothing (its branch may be pruned).
    fn is_empty(&self) -> bool;
}

impl<T> Slot for Vec<T> {
    fn is_empty(&self) -> bool {
        Vec::is_empty(self)
    }
}

/// Filters stored by level, each with a slot of type `V`.
#[derive(Debug)]
pub(crate) struct TopicTrie<V> {
    root: Node<V>,
}

#[derive(Debug)]
struct Node<V> {
    children: HashMap<Box<str>, Node<V>, foldhash::fast::RandomState>,
    /// The `+` child, apart from `children`: every walk looks it up at every level, without hashing.
    plus: Option<Box<Node<V>>>,
    /// Filters ending at this level.
    here: V,
    /// Filters ending with `/#` after this level (or `#` alone, at the root): this level and everything below.
    hash: V,
}

impl<V: Slot> Default for Node<V> {
    fn default() -> Self {
        Node {
            children: HashMap::default(),
            plus: None,
            here: V::default(),
            hash: V::default(),
        }
    }
}

impl<V: Slot> Node<V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.here.is_empty()
            && self.hash.is_empty()
    }

    fn child(&self, level: &str) -> Option<&Node<V>> {
        if level == "+" {
            self.plus.as_deref()
        } else {
            self.children.get(level)
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Node<V>> {
        if level == "+" {
            self.plus.as_deref_mut()
        } else {
            self.children.get_mut(level)
        }
    }

    fn child_or_new(&mut self, level: &str) -> &mut Node<V> {
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

    /// Nothing here but the one child `level` (on a removal path): empty once that child goes.
    fn only_holds(&self, level: &str) -> bool {
        self.here.is_empty()
            && self.hash.is_empty()
            && if level == "+" {
                self.children.is_empty() && self.plus.is_some()
            } else {
                self.plus.is_none() && self.children.len() == 1 && self.children.contains_key(level)
            }
    }

    fn slot_mut(&mut self, hash: bool) -> &mut V {
        if hash { &mut self.hash } else { &mut self.here }
    }
}

impl<V> Drop for Node<V> {
    /// Iterative, so that a deep branch cannot overflow the stack as the default recursive drop would.
    fn drop(&mut self) {
        if self.children.is_empty() && self.plus.is_none() {
            return;
        }
        let mut stack: Vec<Node<V>> = self.children.drain().map(|(_, n)| n).collect();
        stack.extend(self.plus.take().map(|n| *n));
        while let Some(mut node) = stack.pop() {
            stack.extend(node.children.drain().map(|(_, n)| n));
            stack.extend(node.plus.take().map(|n| *n));
        }
    }
}

impl<V: Slot> Default for TopicTrie<V> {
    fn default() -> Self {
        TopicTrie {
            root: Node::default(),
        }
    }
}

impl<V: Slot> TopicTrie<V> {
    /// An empty trie.
    #[cfg(test)]
    pub(crate) fn new() -> TopicTrie<V> {
        TopicTrie::default()
    }

    /// True when no slot holds anything.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.root.is_empty()
    }

    /// The slot of `filter` (a plain filter: no `$share/` prefix), created empty when new.
    pub(crate) fn slot_mut(&mut self, filter: &str) -> &mut V {
        let (levels, hash) = split_hash(filter);
        let mut node = &mut self.root;
        for level in levels {
            node = node.child_or_new(level);
        }
        node.slot_mut(hash)
    }

    /// Applies `change` to the slot of `filter` when the trie has one, then cuts the branch it left empty;
    /// `None` when there is no such slot.
    pub(crate) fn update<R>(
        &mut self,
        filter: &str,
        change: impl FnOnce(&mut V) -> R,
    ) -> Option<R> {
        let (levels, hash) = split_hash(filter);
        let levels: Vec<&str> = levels.collect();
        let mut node = &mut self.root;
        for level in &levels {
            node = node.child_mut(level)?;
        }
        let result = change(node.slot_mut(hash));
        if node.is_empty() {
            self.prune(&levels);
        }
        Some(result)
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
            let Some(child) = node.child(level) else {
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
            match node.child_mut(level) {
                Some(child) => node = child,
                None => return,
            }
        }
        node.remove_child(levels[cut]);
    }

    /// Calls `found` with every slot whose filter matches `topic` (the `here` or `#` slot of each matching
    /// branch; a slot may be empty). Iterative: one path is followed at a time, and a second one is kept aside
    /// only where both a level's own child and the `+` child match.
    pub(crate) fn for_each_match<'a>(&'a self, topic: &str, mut found: impl FnMut(&'a V)) {
        // A leading wildcard never matches a `$` topic [MQTT-4.7.2-1].
        let dollar = topic.starts_with('$');
        // (node, the levels still to match — `None` once all are — and whether the node is the root)
        let mut next = Some((&self.root, Some(topic), true));
        let mut aside: Vec<(&'a Node<V>, Option<&str>, bool)> = Vec::new();
        while let Some((node, rest, at_root)) = next.take().or_else(|| aside.pop()) {
            let wildcard_ok = !(at_root && dollar);
            if wildcard_ok {
                found(&node.hash);
            }
            let Some(rest) = rest else {
                found(&node.here);
                continue;
            };
            let (level, after) = match rest.split_once('/') {
                Some((level, after)) => (level, Some(after)),
                None => (rest, None),
            };
            let exact = if node.children.is_empty() {
                None
            } else {
                node.children.get(level)
            };
            let plus = node.plus.as_deref().filter(|_| wildcard_ok);
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

#[cfg(test)]
mod tests {
    use super::*;
    use fleetgate_protocol::mqtt::topic;

    fn matches(trie: &TopicTrie<Vec<usize>>, topic: &str) -> Vec<usize> {
        let mut out = Vec::new();
        trie.for_each_match(topic, |slot| out.extend(slot.iter().copied()));
        out.sort_unstable();
        out
    }

    #[test]
    fn agrees_with_the_reference_matcher() {
        let filters = [
            "#", "+", "a", "a/b", "a/+", "a/#", "+/b", "+/+", "a/b/c", "a/+/c", "$SYS/#", "$SYS/+",
            "+/#", "a//b", "/a", "/+", "+/+/+", "a/+/#",
        ];
        let topics = [
            "a", "a/b", "a/c", "b/b", "a/b/c", "a/x/c", "$SYS/x", "$SYS", "a//b", "/a", "/", "b",
            "+", "a/+", "//",
        ];
        let mut trie: TopicTrie<Vec<usize>> = TopicTrie::new();
        for (i, f) in filters.iter().enumerate() {
            trie.slot_mut(f).push(i);
        }
        for t in topics {
            let expected: Vec<usize> = (0..filters.len())
                .filter(|&i| topic::matches(filters[i], t))
                .collect();
            assert_eq!(matches(&trie, t), expected, "topic {t}");
        }
    }

    #[test]
    fn update_prunes_what_it_empties_and_nothing_else() {
        let mut trie: TopicTrie<Vec<usize>> = TopicTrie::new();
        trie.slot_mut("a/b/c").push(1);
        trie.slot_mut("a/#").push(2);
        trie.slot_mut("a/+/c").push(3);
        assert_eq!(trie.update("a/b/c", |s| s.retain(|&x| x != 1)), Some(()));
        assert_eq!(trie.update("a/b/c", |s| s.len()), None, "pruned");
        assert_eq!(trie.update("x/y", |s| s.len()), None);
        assert_eq!(matches(&trie, "a/b/c"), vec![2, 3]);
        trie.update("a/+/c", Vec::clear);
        assert_eq!(matches(&trie, "a/b/c"), vec![2]);
        trie.update("a/#", Vec::clear);
        assert!(trie.is_empty());
        // A `+` branch found again after it was pruned and re-added.
        trie.slot_mut("a/+").push(4);
        trie.slot_mut("a/b").push(5);
        trie.update("a/+", Vec::clear);
        assert_eq!(matches(&trie, "a/b"), vec![5]);
        trie.slot_mut("a/+").push(6);
        assert_eq!(matches(&trie, "a/b"), vec![5, 6]);
        assert_eq!(matches(&trie, "a/c"), vec![6]);
    }

    #[test]
    fn deep_filters_do_not_recurse() {
        // Far deeper than any stack would take recursively: insert, match, prune and drop are all loops.
        let deep = vec!["x"; 200_000].join("/");
        let plus = vec!["+"; 200_000].join("/");
        let mut trie: TopicTrie<Vec<usize>> = TopicTrie::new();
        trie.slot_mut(&deep).push(1);
        trie.slot_mut(&format!("{deep}/#")).push(2);
        trie.slot_mut(&plus).push(3);
        trie.slot_mut("x/x/y").push(4);
        assert_eq!(matches(&trie, &deep), vec![1, 2, 3]);
        trie.update(&deep, Vec::clear);
        assert_eq!(matches(&trie, &deep), vec![2, 3]);
        trie.update(&format!("{deep}/#"), Vec::clear);
        trie.update(&plus, Vec::clear);
        assert_eq!(matches(&trie, "x/x/y"), vec![4]);
        assert_eq!(trie.root.children["x"].children["x"].children.len(), 1);
        trie.slot_mut(&deep).push(5);
        trie.slot_mut(&plus).push(6);
        drop(trie);
    }
}
