//! Rendezvous (highest-random-weight) hashing of client IDs onto named nodes: the LB uses it to pick a backend for
//! a CONNECT, the broker cluster to decide which node owns a client ID. Both must agree, so the hash is pinned by a
//! golden test.
//!
//! Score of a node for a key: `h = xxh3_64_with_seed(RING_SEED, node_name ‖ 0xFF ‖ key)`, mapped to `u ∈ (0, 1)`,
//! then `score = weight / -ln(u)` (weighted rendezvous, "logarithmic method": a node wins a share of keys
//! proportional to its weight). With equal weights this orders nodes exactly like `h` itself. Ties (equal score)
//! are broken by `h`, then by name, so the ranking never depends on insertion order. Never `DefaultHasher` or
//! `RandomState`: they differ between processes and the LB and the brokers must agree.

use std::cmp::Ordering;

use xxhash_rust::xxh3::Xxh3;

/// Fixed seed of the ring hash. Changing it moves (almost) every client to another node: don't.
pub const RING_SEED: u64 = 0x666c_6565_7467_6174; // "fleetgat"

/// Separates the node name from the key so that ("ab", "c") and ("a", "bc") hash differently (0xFF never occurs
/// in UTF-8 node names).
const SEPARATOR: u8 = 0xFF;

/// One member of a [`Ring`]: a stable name and a relative weight (0 = drained: ranked last, never preferred).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingNode {
    /// Stable node name (e.g. `broker-0`); the hash input, so renaming a node moves its clients.
    pub name: String,
    /// Relative weight; a node receives about `weight / Σweights` of the keys.
    pub weight: u32,
}

impl RingNode {
    /// A node with weight 1.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            weight: 1,
        }
    }
}

/// An immutable set of nodes to rank keys against. Build a new one when membership changes.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    /// Sorted by name, unique names.
    nodes: Vec<RingNode>,
}

/// A node's score for one key; greater is better.
#[derive(Clone, Copy)]
struct Score {
    weighted: f64,
    hash: u64,
}

impl Score {
    fn cmp(&self, other: &Score) -> Ordering {
        self.weighted
            .total_cmp(&other.weighted)
            .then(self.hash.cmp(&other.hash))
    }
}

impl Ring {
    /// Builds a ring; the order of `nodes` does not matter. A duplicated name keeps its first occurrence.
    pub fn new(nodes: impl IntoIterator<Item = RingNode>) -> Self {
        let mut nodes: Vec<RingNode> = nodes.into_iter().collect();
        // Stable sort, then dedup keeps the first occurrence of each name.
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        nodes.dedup_by(|later, earlier| later.name == earlier.name);
        Self { nodes }
    }

    /// The nodes, sorted by name.
    pub fn nodes(&self) -> &[RingNode] {
        &self.nodes
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when the ring has no node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// All node names for `key`, best first.
    pub fn ranked(&self, key: &[u8]) -> Vec<&str> {
        let mut scored: Vec<(Score, &RingNode)> =
            self.nodes.iter().map(|n| (score(n, key), n)).collect();
        // Best first; names are unique, so the order is total.
        scored.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.name.cmp(&b.1.name)));
        scored.into_iter().map(|(_, n)| n.name.as_str()).collect()
    }

    /// The best-ranked node for `key` among those `eligible` accepts (e.g. healthy ones); no allocation.
    pub fn select(&self, key: &[u8], mut eligible: impl FnMut(&str) -> bool) -> Option<&str> {
        let mut best: Option<(Score, &RingNode)> = None;
        for node in self.nodes.iter().filter(|n| eligible(&n.name)) {
            let s = score(node, key);
            // Nodes are visited in name order, so on a full tie the smaller name wins, as in `ranked`.
            if best.is_none_or(|(b, _)| s.cmp(&b) == Ordering::Greater) {
                best = Some((s, node));
            }
        }
        best.map(|(_, n)| n.name.as_str())
    }

    /// Like [`Ring::select`] with bounded load: walks the ranking and skips an eligible node whose load would
    /// exceed `ceil(factor × (total + 1) / n_eligible)` after taking this key (`total` = current load summed over
    /// the eligible nodes, `factor` ≥ 1, e.g. 1.25). If every eligible node is full (only possible when `load_of`
    /// and `total` disagree), falls back to the best eligible node rather than refusing the client.
    pub fn select_bounded(
        &self,
        key: &[u8],
        mut load_of: impl FnMut(&str) -> u64,
        total: u64,
        factor: f64,
        mut eligible: impl FnMut(&str) -> bool,
    ) -> Option<&str> {
        let ranked: Vec<&str> = self
            .ranked(key)
            .into_iter()
            .filter(|n| eligible(n))
            .collect();
        let first = *ranked.first()?;
        let cap = (factor * (total as f64 + 1.0) / ranked.len() as f64).ceil();
        ranked
            .into_iter()
            .find(|n| load_of(n).saturating_add(1) as f64 <= cap)
            .or(Some(first))
    }
}

fn score(node: &RingNode, key: &[u8]) -> Score {
    let hash = node_hash(&node.name, key);
    // Top 53 bits → u ∈ (0, 1), never 0 or 1, so ln(u) is finite and negative.
    let u = ((hash >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    Score {
        weighted: f64::from(node.weight) / -u.ln(),
        hash,
    }
}

/// `xxh3_64_with_seed(RING_SEED, name ‖ 0xFF ‖ key)`, streamed to avoid building the concatenation.
fn node_hash(name: &str, key: &[u8]) -> u64 {
    let mut h = Xxh3::with_seed(RING_SEED);
    h.update(name.as_bytes());
    h.update(&[SEPARATOR]);
    h.update(key);
    h.digest()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING)
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<RingNode> {
        (0..n)
            .map(|i| RingNode::new(format!("broker-{i}")))
            .collect()
    }

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("client-{i}")).collect()
    }

    fn owner(ring: &Ring, key: &str) -> String {
        ring.select(key.as_bytes(), |_| true).unwrap().to_owned()
    }

    /// Pins the hash: if this fails, every LB and broker of a rolling upgrade would disagree on owners.
    #[test]
    fn golden_owners() {
        let ring = Ring::new(nodes(3));
        for (key, expected) in GOLDEN {
            assert_eq!(owner(&ring, key), *expected, "owner of {key:?}");
        }
        let expected_ranking: Vec<&str> = GOLDEN_RANKING.to_vec();
        assert_eq!(ring.ranked(b"sensor-42"), expected_ranking);
    }

    /// Computed once from this implementation and hard-coded; never regenerate to make a failure go away.
    const GOLDEN: &[(&str, &str)] = &[
        ("", "broker-2"),
        ("a", "broker-2"),
        ("client-0", "broker-1"),
        ("client-1", "broker-0"),
        ("client-2", "broker-1"),
        ("sensor-42", "broker-0"),
        ("device/7", "broker-0"),
        ("mosquitto_pub_1234", "broker-1"),
        ("rumqttc-9", "broker-0"),
        ("ünïcødé", "broker-0"),
        ("x", "broker-2"),
        ("00000000-0000-0000-0000-000000000000", "broker-0"),
    ];
    const GOLDEN_RANKING: &[&str] = &["broker-0", "broker-1", "broker-2"];

    #[test]
    fn golden_hash_value() {
        assert_eq!(node_hash("broker-0", b"client-1"), 0xc99d_bff8_2409_a0bc);
    }

    #[test]
    fn streamed_hash_equals_one_shot() {
        for (name, key) in [
            ("broker-0", &b"client-1"[..]),
            ("", b""),
            ("n", &[0xFF; 300][..]),
        ] {
            let mut concat = name.as_bytes().to_vec();
            concat.push(SEPARATOR);
            concat.extend_from_slice(key);
            let one_shot = xxhash_rust::xxh3::xxh3_64_with_seed(&concat, RING_SEED);
            assert_eq!(node_hash(name, key), one_shot);
        }
    }

    #[test]
    fn removing_a_node_moves_only_its_keys() {
        for n in [3, 5, 8] {
            let full = Ring::new(nodes(n));
            let removed = "broker-1";
            let smaller = Ring::new(nodes(n).into_iter().filter(|x| x.name != removed));
            for key in keys(10_000) {
                let before = owner(&full, &key);
                let after = owner(&smaller, &key);
                if before != removed {
                    assert_eq!(
                        before, after,
                        "{key} moved although its node stayed (n={n})"
                    );
                }
                // Same as skipping the removed node as ineligible.
                let skipped = full.select(key.as_bytes(), |x| x != removed).unwrap();
                assert_eq!(skipped, after);
            }
        }
    }

    #[test]
    fn adding_a_node_moves_about_its_share() {
        for n in [3, 5, 8] {
            let before = Ring::new(nodes(n));
            let after = Ring::new(nodes(n + 1));
            let keys = keys(10_000);
            let mut moved = 0;
            for key in &keys {
                let (b, a) = (owner(&before, key), owner(&after, key));
                if b != a {
                    assert_eq!(a, format!("broker-{n}"), "{key} moved between old nodes");
                    moved += 1;
                }
            }
            let share = moved as f64 / keys.len() as f64;
            assert!(
                share <= 1.0 / (n as f64 + 1.0) + 0.02,
                "n={n}: {share} moved"
            );
        }
    }

    #[test]
    fn weights_are_roughly_proportional() {
        let weighted = [("a", 1u32), ("b", 2), ("c", 3), ("d", 4)];
        let ring = Ring::new(weighted.iter().map(|(n, w)| RingNode {
            name: (*n).into(),
            weight: *w,
        }));
        let total_keys = 100_000;
        let mut counts = std::collections::HashMap::new();
        for key in keys(total_keys) {
            *counts.entry(owner(&ring, &key)).or_insert(0usize) += 1;
        }
        for (name, w) in weighted {
            let expected = total_keys as f64 * f64::from(w) / 10.0;
            let got = counts[name] as f64;
            assert!(
                (got - expected).abs() <= 0.05 * expected,
                "{name}: {got} vs {expected}"
            );
        }
    }

    #[test]
    fn equal_weights_rank_like_the_raw_hash() {
        let ring = Ring::new(nodes(5).into_iter().map(|n| RingNode { weight: 7, ..n }));
        for key in keys(1_000) {
            let mut by_hash: Vec<(u64, &str)> = ring
                .nodes()
                .iter()
                .map(|n| (node_hash(&n.name, key.as_bytes()), n.name.as_str()))
                .collect();
            by_hash.sort_by(|a, b| b.cmp(a));
            let expected: Vec<&str> = by_hash.into_iter().map(|(_, n)| n).collect();
            assert_eq!(ring.ranked(key.as_bytes()), expected);
        }
    }

    #[test]
    fn zero_weight_is_ranked_last() {
        let mut ns = nodes(3);
        ns[0].weight = 0;
        let ring = Ring::new(ns);
        for key in keys(1_000) {
            assert_eq!(*ring.ranked(key.as_bytes()).last().unwrap(), "broker-0");
        }
    }

    #[test]
    fn deterministic_across_instances_and_insertion_order() {
        let a = Ring::new(nodes(5));
        let mut reversed = nodes(5);
        reversed.reverse();
        let b = Ring::new(reversed);
        // Duplicates keep the first occurrence and change nothing else.
        let c = Ring::new(
            nodes(5)
                .into_iter()
                .chain(nodes(5).into_iter().map(|n| RingNode { weight: 9, ..n })),
        );
        assert_eq!(c.nodes(), a.nodes());
        for key in keys(2_000) {
            assert_eq!(a.ranked(key.as_bytes()), b.ranked(key.as_bytes()));
            assert_eq!(a.ranked(key.as_bytes()), c.ranked(key.as_bytes()));
        }
    }

    #[test]
    fn select_agrees_with_ranked() {
        let ring = Ring::new(nodes(8));
        for key in keys(2_000) {
            let ranked = ring.ranked(key.as_bytes());
            assert_eq!(ring.select(key.as_bytes(), |_| true), Some(ranked[0]));
            let skip = [ranked[0], ranked[1]];
            assert_eq!(
                ring.select(key.as_bytes(), |n| !skip.contains(&n)),
                Some(ranked[2])
            );
        }
        assert_eq!(ring.select(b"k", |_| false), None);
        assert_eq!(Ring::new([]).select(b"k", |_| true), None);
        assert!(Ring::new([]).ranked(b"k").is_empty());
    }

    #[test]
    fn bounded_load_skips_full_nodes() {
        let ring = Ring::new(nodes(4));
        let key = b"client-7";
        let ranked = ring.ranked(key);
        let (first, second) = (ranked[0], ranked[1]);
        // 7 connections, 4 nodes, factor 1.0: cap = ceil(8 / 4) = 2. `first` holds 2: full.
        let load = |n: &str| if n == first { 2 } else { 1 };
        assert_eq!(
            ring.select_bounded(key, load, 5, 1.0, |_| true),
            Some(second)
        );
        // With room left it stays on the preferred node.
        assert_eq!(
            ring.select_bounded(key, |_| 0, 0, 1.25, |_| true),
            Some(first)
        );
        // Ineligible nodes are skipped and don't count in n_eligible.
        assert_eq!(
            ring.select_bounded(key, |_| 0, 0, 1.25, |n| n != first),
            Some(second)
        );
        // Everyone "full" (inconsistent counts): fall back to the best eligible node.
        assert_eq!(
            ring.select_bounded(key, |_| 100, 0, 1.0, |_| true),
            Some(first)
        );
        assert_eq!(ring.select_bounded(key, |_| 0, 0, 1.0, |_| false), None);
    }

    #[test]
    fn bounded_load_keeps_nodes_under_the_cap() {
        let ring = Ring::new(nodes(5));
        let factor = 1.25;
        let mut load: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
        for (i, key) in keys(10_000).into_iter().enumerate() {
            let total = i as u64;
            let picked = ring
                .select_bounded(
                    key.as_bytes(),
                    |n| load.get(n).copied().unwrap_or(0),
                    total,
                    factor,
                    |_| true,
                )
                .unwrap()
                .to_owned();
            *load.entry(picked).or_insert(0) += 1;
            let cap = (factor * (total as f64 + 1.0) / 5.0).ceil() as u64;
            assert!(load.values().all(|l| *l <= cap));
        }
    }
}
