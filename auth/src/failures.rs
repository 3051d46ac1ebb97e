//! Brute-force protection: password failures counted per source address, and a short ban after too many in a
//! window (limits: `[auth.brute_force]`, validated as a `BruteForceConfig`). Pure (the caller passes the time) and
//! bounded in memory (at most `max_entries` addresses; the oldest tracked address is forgotten first). Lives
//! across reloads in the broker, outside the auth snapshot.
//!
//! IPv6 sources are counted per /64, because one host can rotate through a whole /64 for free. IPv4-mapped IPv6
//! addresses count as the IPv4 address.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::time::Instant;

use fleetgate_config::node::BruteForceConfig;

#[derive(Debug, Clone, Copy)]
struct Entry {
    window_start: Instant,
    failures: u32,
    banned_until: Option<Instant>,
    /// Matches the queue slot that owns this entry; older slots for the same key are stale.
    generation: u64,
}

impl Entry {
    /// True when the entry carries no information any more at `now`.
    fn expired(&self, now: Instant, limits: &BruteForceConfig) -> bool {
        let ban_over = self.banned_until.is_none_or(|t| t <= now);
        let window_over = now.saturating_duration_since(self.window_start) >= limits.window;
        ban_over && window_over
    }
}

/// Password-failure counters per source address.
#[derive(Debug)]
pub(crate) struct FailureTracker {
    limits: BruteForceConfig,
    entries: HashMap<IpAddr, Entry>,
    /// Insertion order (key, generation), oldest first; stale slots are skipped and compacted.
    order: VecDeque<(IpAddr, u64)>,
    next_generation: u64,
}

/// The key an address is counted under: IPv4 as is, IPv6 by its /64.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !((1u128 << 64) - 1))),
        },
    }
}

impl FailureTracker {
    /// An empty tracker.
    pub(crate) fn new(limits: BruteForceConfig) -> Self {
        let limits = BruteForceConfig {
            max_failures: limits.max_failures.max(1),
            max_entries: limits.max_entries.max(1),
            ..limits
        };
        Self {
            limits,
            entries: HashMap::new(),
            order: VecDeque::new(),
            next_generation: 0,
        }
    }

    /// Replaces the limits (after a config reload); existing counters and bans stay.
    pub(crate) fn set_limits(&mut self, limits: BruteForceConfig) {
        self.limits = Self::new(limits).limits;
        while self.entries.len() > self.limits.max_entries {
            self.evict_oldest();
        }
    }

    /// Number of addresses tracked.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Is `ip` banned at `now`?
    pub(crate) fn is_banned(&self, ip: IpAddr, now: Instant) -> bool {
        self.entries
            .get(&key(ip))
            .and_then(|e| e.banned_until)
            .is_some_and(|until| until > now)
    }

    /// Counts a failed password check from `ip` at `now`; returns true when this failure started a ban.
    pub(crate) fn record_failure(&mut self, ip: IpAddr, now: Instant) -> bool {
        let k = key(ip);
        let limits = self.limits;
        if let Some(e) = self.entries.get_mut(&k) {
            if e.banned_until.is_some_and(|t| t > now) {
                return false;
            }
            if now.saturating_duration_since(e.window_start) >= limits.window
                || e.banned_until.is_some()
            {
                // A new window (after the old one ran out, or after a ban ended).
                *e = Entry {
                    window_start: now,
                    failures: 0,
                    banned_until: None,
                    generation: e.generation,
                };
            }
            e.failures += 1;
            if e.failures >= limits.max_failures {
                e.banned_until = Some(now + limits.ban);
                return true;
            }
            return false;
        }
        self.make_room(now);
        let generation = self.next_generation;
        self.next_generation += 1;
        let mut entry = Entry {
            window_start: now,
            failures: 1,
            banned_until: None,
            generation,
        };
        let banned = entry.failures >= limits.max_failures;
        if banned {
            entry.banned_until = Some(now + limits.ban);
        }
        self.entries.insert(k, entry);
        self.order.push_back((k, generation));
        self.compact_if_needed();
        banned
    }

    /// Forgets `ip`'s failures after a successful password check.
    pub(crate) fn record_success(&mut self, ip: IpAddr) {
        self.entries.remove(&key(ip));
    }

    /// Drops expired entries from the old end, then the oldest live one if still full.
    fn make_room(&mut self, now: Instant) {
        while let Some(&(k, generation)) = self.order.front() {
            match self.entries.get(&k) {
                Some(e) if e.generation == generation => {
                    if !e.expired(now, &self.limits) {
                        break;
                    }
                    self.entries.remove(&k);
                }
                _ => {}
            }
            self.order.pop_front();
        }
        while self.entries.len() >= self.limits.max_entries {
            self.evict_oldest();
        }
    }

    fn evict_oldest(&mut self) {
        while let Some((k, generation)) = self.order.pop_front() {
            if self
                .entries
                .get(&k)
                .is_some_and(|e| e.generation == generation)
            {
                self.entries.remove(&k);
                return;
            }
        }
    }

    /// Keeps the order queue within twice the live entries (successes leave stale slots behind).
    fn compact_if_needed(&mut self) {
        if self.order.len() > 2 * self.entries.len() + 16 {
            let entries = &self.entries;
            self.order
                .retain(|(k, g)| entries.get(k).is_some_and(|e| e.generation == *g));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits(max_failures: u32, max_entries: usize) -> BruteForceConfig {
        BruteForceConfig {
            max_failures,
            window: Duration::from_secs(60),
            ban: Duration::from_secs(300),
            max_entries,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn bans_after_n_failures_and_the_ban_expires() {
        let mut t = FailureTracker::new(limits(3, 10));
        let now = Instant::now();
        let a = ip("192.0.2.1");
        assert!(!t.record_failure(a, now));
        assert!(!t.record_failure(a, now + Duration::from_secs(1)));
        assert!(!t.is_banned(a, now + Duration::from_secs(2)));
        assert!(t.record_failure(a, now + Duration::from_secs(2)));
        assert!(t.is_banned(a, now + Duration::from_secs(3)));
        assert!(
            !t.is_banned(ip("192.0.2.2"), now + Duration::from_secs(3)),
            "other addresses unaffected"
        );
        assert!(t.is_banned(a, now + Duration::from_secs(301)));
        assert!(
            !t.is_banned(a, now + Duration::from_secs(302)),
            "ban is over"
        );
        // After the ban the count starts again.
        assert!(!t.record_failure(a, now + Duration::from_secs(303)));
        assert!(!t.is_banned(a, now + Duration::from_secs(303)));
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let mut t = FailureTracker::new(limits(3, 10));
        let now = Instant::now();
        let a = ip("192.0.2.1");
        t.record_failure(a, now);
        t.record_failure(a, now + Duration::from_secs(30));
        assert!(
            !t.record_failure(a, now + Duration::from_secs(61)),
            "window restarted"
        );
        assert!(!t.is_banned(a, now + Duration::from_secs(62)));
    }

    #[test]
    fn success_resets_the_count() {
        let mut t = FailureTracker::new(limits(2, 10));
        let now = Instant::now();
        let a = ip("192.0.2.1");
        t.record_failure(a, now);
        t.record_success(a);
        assert!(!t.record_failure(a, now));
        assert!(t.record_failure(a, now));
    }

    #[test]
    fn memory_is_bounded_and_the_oldest_goes_first() {
        let mut t = FailureTracker::new(limits(2, 3));
        let now = Instant::now();
        for i in 1..=3 {
            t.record_failure(ip(&format!("192.0.2.{i}")), now);
        }
        t.record_failure(ip("192.0.2.1"), now); // banned, but the oldest entry
        for i in 4..=100 {
            t.record_failure(ip(&format!("192.0.2.{i}")), now);
            t.record_success(ip(&format!("192.0.2.{}", i - 1)));
            t.record_failure(ip(&format!("192.0.2.{}", i - 1)), now);
            assert!(t.len() <= 3);
            assert!(t.order.len() <= 2 * 3 + 17);
        }
        assert!(!t.is_banned(ip("192.0.2.1"), now), "evicted");
    }

    #[test]
    fn expired_entries_are_dropped_before_live_ones() {
        let mut t = FailureTracker::new(limits(2, 2));
        let now = Instant::now();
        t.record_failure(ip("192.0.2.1"), now);
        t.record_failure(ip("192.0.2.2"), now + Duration::from_secs(100));
        t.record_failure(ip("192.0.2.2"), now + Duration::from_secs(100)); // banned
        t.record_failure(ip("192.0.2.3"), now + Duration::from_secs(101));
        assert!(
            t.is_banned(ip("192.0.2.2"), now + Duration::from_secs(102)),
            "live ban kept, expired .1 dropped"
        );
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let mut t = FailureTracker::new(limits(2, 10));
        let now = Instant::now();
        t.record_failure(ip("2001:db8:1:2::1"), now);
        assert!(t.record_failure(ip("2001:db8:1:2:ffff::9"), now));
        assert!(t.is_banned(ip("2001:db8:1:2::77"), now));
        assert!(!t.is_banned(ip("2001:db8:1:3::1"), now));
        t.record_failure(ip("::ffff:198.51.100.7"), now);
        assert!(t.record_failure(ip("198.51.100.7"), now));
    }
}
