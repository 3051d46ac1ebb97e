//! Connections open per source address, capped: what the admin server and the LB's admission stage count a client
//! by. A source is an IPv4 address (IPv4-mapped IPv6 included) or an IPv6 /64, since one host can rotate through a
//! whole /64 for free ([`source_key`]).
//!
//! An address is tracked only while it has a connection open, so the map never holds more entries than there are
//! open connections (each of which a caller already capped); one short mutex hold per open and per close
//! (`parking_lot`: no poisoning, so a panic elsewhere can never turn a cap off).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use parking_lot::Mutex;

/// The key a source is counted under: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by its /64.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !((1u128 << 64) - 1))),
        },
    }
}

/// Open connections per source key.
#[derive(Debug, Default)]
pub struct SourceCounts {
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl SourceCounts {
    /// An empty count, shared by every connection it caps.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Counts one more connection from `ip`'s source if fewer than `max` are open; `None` when it is at `max`.
    /// The connection is counted until the returned slot drops.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<SourceSlot> {
        let key = source_key(ip);
        let mut open = self.open.lock();
        let n = open.entry(key).or_insert(0);
        if *n >= max {
            if *n == 0 {
                open.remove(&key);
            }
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            counts: self.clone(),
            key,
        })
    }

    /// Connections open from `ip`'s source now.
    pub fn open(&self, ip: IpAddr) -> usize {
        self.open.lock().get(&source_key(ip)).copied().unwrap_or(0)
    }

    /// Sources with at least one connection open.
    pub fn sources(&self) -> usize {
        self.open.lock().len()
    }
}

/// One connection counted against its source; released on drop.
#[derive(Debug)]
pub struct SourceSlot {
    counts: Arc<SourceCounts>,
    key: IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock();
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING)
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn keys_group_ipv6_by_64_and_unmap_ipv4() {
        assert_eq!(source_key(ip("10.0.0.1")), ip("10.0.0.1"));
        assert_eq!(source_key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        assert_eq!(source_key(ip("2001:db8:1:2:aaaa::7")), ip("2001:db8:1:2::"));
        assert_ne!(
            source_key(ip("2001:db8:1:2::1")),
            source_key(ip("2001:db8:1:3::1"))
        );
    }

    #[test]
    fn caps_per_source_and_forgets_a_source_with_nothing_open() {
        let counts = SourceCounts::new();
        let a = counts.try_acquire(ip("2001:db8::1"), 2).unwrap();
        let b = counts.try_acquire(ip("2001:db8::ffff:2"), 2).unwrap();
        assert!(
            counts.try_acquire(ip("2001:db8::3"), 2).is_none(),
            "same /64"
        );
        let other = counts.try_acquire(ip("2001:db8:0:1::1"), 2).unwrap();
        assert_eq!(counts.open(ip("2001:db8::9")), 2);
        assert_eq!(counts.sources(), 2);
        drop(a);
        let c = counts.try_acquire(ip("2001:db8::3"), 2).unwrap();
        drop((b, c, other));
        assert_eq!(counts.sources(), 0, "nothing left behind");
        assert!(counts.try_acquire(ip("10.0.0.1"), 0).is_none());
        assert_eq!(counts.sources(), 0, "a refusal leaves nothing behind");
    }
}
