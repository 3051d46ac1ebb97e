//! The topics the retained store holds, level by level, so that a SUBSCRIBE's filter walks only the branches its
//! levels lead to (`fleet/+/status` visits each device once and looks `status` up, instead of reading every
//! topic under `fleet/`). The reverse of [`super::trie::TopicTrie`], which stores filters and matches a topic.
//!
//! Most branches of a fleet's topic tree have one child (`fleet/<device>/status`), so a node keeps a single
//! child inline in one small allocation and switches to a hash map from the second. Topics come from clients and
//! peers and may have tens of thousands of levels: insert, remove, match and drop are loops, never recursions.

use std::collections::HashMap;

use fleetgate_protocol::mqtt::ByteString;

type Map = HashMap<Box<str>, IndexNode, foldhash::fast::RandomState>;

/// The set of topics, by level.
#[derive(Debug, Default)]
pub(crate) struct TopicIndex {
    root: IndexNode,
}

#[derive(Debug, Default)]
struct IndexNode {
    children: Children,
    /// The topic ending at this level, when the store holds it.
    topic: Option<ByteString>,
}

#[derive(Debug, Default)]
enum Children {
    #[default]
    None,
    One(Box<(Box<str>, IndexNode)>),
    Many(Box<Map>),
}

impl IndexNode {
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.topic.is_none() && matches!(self.children, Children::None)
    }

    fn child(&self, level: &str) -> Option<&IndexNode> {
        match &self.children {
            Children::None => None,
            Children::One(one) => (&*one.0 == level).then_some(&one.1),
            Children::Many(map) => map.get(level),
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut IndexNode> {
        match &mut self.children {
            Children::None => None,
            Children::One(one) => (&*one.0 == level).then_some(&mut one.1),
            Children::Many(map) => map.get_mut(level),
        }
    }

    fn child_or_new(&mut self, level: &str) -> &mut IndexNode {
        let children = std::mem::take(&mut self.children);
        self.children = match children {
            Children::None => Children::One(Box::new((level.into(), IndexNode::default()))),
            Children::One(one) if &*one.0 == level => Children::One(one),
            Children::One(one) => {
                let (key, node) = *one;
                let mut map = Map::default();
                map.insert(key, node);
                map.insert(level.into(), IndexNode::default());
                Children::Many(Box::new(map))
            }
            many @ Children::Many(_) => many,
        };
        match &mut self.children {
            Children::One(one) => &mut one.1,
            Children::Many(map) => map.entry(level.into()).or_default(),
            Children::None => unreachable!("a child was just put in place"),
        }
    }

    fn remove_child(&mut self, level: &str) {
        match &mut self.children {
            Children::None => {}
            Children::One(one) => {
                if &*one.0 == level {
                    self.children = Children::None;
                }
            }
            Children::Many(map) => {
                map.remove(level);
                if map.is_empty() {
                    self.children = Children::None;
                }
            }
        }
    }

    /// Holds nothing but the one child `level`: empty once that child goes.
    fn only_holds(&self, level: &str) -> bool {
        self.topic.is_none()
            && match &self.children {
                Children::One(one) => &*one.0 == level,
                Children::Many(map) => map.len() == 1 && map.contains_key(level),
                Children::None => false,
            }
    }

    fn for_each_child<'a>(&'a self, mut each: impl FnMut(&'a str, &'a IndexNode)) {
        match &self.children {
            Children::None => {}
            Children::One(one) => each(&one.0, &one.1),
            Children::Many(map) => map.iter().for_each(|(k, n)| each(k, n)),
        }
    }
}

impl Drop for IndexNode {
    /// Iterative, so that a deep branch cannot overflow the stack as the default recursive drop would.
    fn drop(&mut self) {
        let mut stack: Vec<IndexNode> = Vec::new();
        take_children(self, &mut stack);
        while let Some(mut node) = stack.pop() {
            take_children(&mut node, &mut stack);
        }
    }
}

/// Moves `node`'s children onto `stack`, leaving it childless.
fn take_children(node: &mut IndexNode, stack: &mut Vec<IndexNode>) {
    match std::mem::take(&mut node.children) {
        Children::None => {}
        Children::One(one) => stack.push(one.1),
        Children::Many(mut map) => stack.extend(map.drain().map(|(_, n)| n)),
    }
}

impl TopicIndex {
    /// Adds `topic`.
    pub(crate) fn insert(&mut self, topic: &ByteString) {
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.child_or_new(level);
        }
        node.topic = Some(topic.clone());
    }

    /// Removes `topic` and the branch only it kept.
    pub(crate) fn remove(&mut self, topic: &str) {
        let levels: Vec<&str> = topic.split('/').collect();
        // `cut`: the depth of the node that loses its child `levels[cut]`; every node below it becomes empty.
        let mut cut = 0;
        let mut node = &self.root;
        for (depth, level) in levels.iter().enumerate() {
            let Some(child) = node.child(level) else {
                return;
            };
            if depth > 0 && !node.only_holds(level) {
                cut = depth;
            }
            node = child;
        }
        if node.topic.is_none() {
            return;
        }
        if !matches!(node.children, Children::None) {
            // Other topics continue below it: only the mark goes.
            let mut node = &mut self.root;
            for level in &levels {
                let Some(child) = node.child_mut(level) else {
                    return;
                };
                node = child;
            }
            node.topic = None;
            return;
        }
        let mut node = &mut self.root;
        for level in &levels[..cut] {
            let Some(child) = node.child_mut(level) else {
                return;
            };
            node = child;
        }
        node.remove_child(levels[cut]);
    }

    /// Calls `each` with every topic `filter` matches (MQTT §4.7: `+` one level, `#` its parent and everything
    /// below, no wildcard in the first level matching a `$` topic); returns how many nodes it visited.
    pub(crate) fn for_each_match(&self, filter: &str, mut each: impl FnMut(&ByteString)) -> usize {
        let levels: Vec<&str> = filter.split('/').collect();
        let mut stack: Vec<(&IndexNode, usize)> = vec![(&self.root, 0)];
        let mut visited = 0;
        while let Some((node, depth)) = stack.pop() {
            visited += 1;
            let Some(level) = levels.get(depth) else {
                if let Some(t) = &node.topic {
                    each(t);
                }
                continue;
            };
            match *level {
                "#" => {
                    // `a/#` matches `a` too; `#` alone matches no `$` topic.
                    if let Some(t) = &node.topic {
                        each(t);
                    }
                    let mut below: Vec<&IndexNode> = Vec::new();
                    node.for_each_child(|key, child| {
                        if depth > 0 || !key.starts_with('$') {
                            below.push(child);
                        }
                    });
                    while let Some(n) = below.pop() {
                        visited += 1;
                        if let Some(t) = &n.topic {
                            each(t);
                        }
                        n.for_each_child(|_, child| below.push(child));
                    }
                }
                "+" => node.for_each_child(|key, child| {
                    if depth > 0 || !key.starts_with('$') {
                        stack.push((child, depth + 1));
                    }
                }),
                literal => {
                    if let Some(child) = node.child(literal) {
                        stack.push((child, depth + 1));
                    }
                }
            }
        }
        visited
    }

    /// True when nothing is indexed.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.root.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetgate_protocol::mqtt::topic;

    fn matches(index: &TopicIndex, filter: &str) -> Vec<String> {
        let mut out = Vec::new();
        index.for_each_match(filter, |t| out.push(t.to_string()));
        out.sort();
        out
    }

    const TOPICS: &[&str] = &[
        "a", "a/b", "a/b/c", "a/c", "a//b", "/", "/a", "b/b/c", "$SYS/x", "$SYS", "a/b/c/d", "",
    ];
    const FILTERS: &[&str] = &[
        "#", "+", "+/+", "a/#", "a/+", "a/+/c", "+/b/#", "/+", "+/", "$SYS/#", "$SYS", "a//+",
        "a/b/c/d", "+/+/+/+", "a/b/#", "#/x", "",
    ];

    #[test]
    fn matches_what_mqtt_matching_says() {
        let mut index = TopicIndex::default();
        for t in TOPICS {
            index.insert(&ByteString::from(*t));
        }
        for f in FILTERS {
            if topic::validate_topic_filter(f).is_err() {
                continue;
            }
            let mut want: Vec<String> = TOPICS
                .iter()
                .filter(|t| topic::matches(f, t))
                .map(|t| t.to_string())
                .collect();
            want.sort();
            assert_eq!(matches(&index, f), want, "filter {f:?}");
        }
    }

    #[test]
    fn removal_prunes_and_keeps_the_rest() {
        let mut index = TopicIndex::default();
        for t in TOPICS {
            index.insert(&ByteString::from(*t));
        }
        index.remove("a/b");
        assert_eq!(matches(&index, "a/b/#"), ["a/b/c", "a/b/c/d"]);
        index.remove("a/b/c/d");
        index.remove("a/b/c");
        assert!(matches(&index, "a/b/#").is_empty());
        index.remove("not/there");
        for t in TOPICS {
            index.remove(t);
        }
        assert!(index.is_empty(), "{index:?}");
    }

    #[test]
    fn a_filter_visits_its_branches_not_the_whole_tree() {
        let mut index = TopicIndex::default();
        for d in 0..10_000 {
            for leaf in ["status", "telemetry", "config"] {
                index.insert(&ByteString::from(format!("fleet/dev{d}/{leaf}")));
            }
        }
        let mut found = 0;
        let visited = index.for_each_match("fleet/+/status", |_| found += 1);
        assert_eq!(found, 10_000);
        // root, fleet, each device, each device's status: 20,002 — not the 30,000 topics (or 40,001 nodes).
        assert_eq!(visited, 2 + 2 * 10_000);
        let visited = index.for_each_match("fleet/dev17/#", |_| {});
        assert_eq!(visited, 3 + 3, "root, fleet, dev17 and its three topics");
    }

    #[test]
    fn a_topic_of_a_hundred_thousand_levels_is_no_recursion() {
        let deep = ByteString::from(vec!["x"; 100_000].join("/"));
        let mut index = TopicIndex::default();
        index.insert(&deep);
        index.insert(&ByteString::from("x"));
        assert_eq!(matches(&index, "#").len(), 2);
        index.remove(&deep);
        assert_eq!(matches(&index, "#"), ["x"]);
        index.insert(&deep);
        drop(index);
    }
}
