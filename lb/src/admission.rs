//! Admission control, the first stage of a connection: caps on open connections (per listener and in total; per
//! source address with `fleetgate_ops::sources`, which `conn` holds in [`crate::shared::Shared`]), a token bucket
//! per source address, and a global budget of TLS handshakes per second (handshakes are the expensive part of a
//! reconnect storm). Each check is amortized O(1) under at most one short mutex hold (`parking_lot`: no
//! poisoning, so a panic elsewhere can never turn a limit off).
//!
//! The per-source buckets are a hard-capped map: IPv6 sources share one bucket per /64 (one host can rotate
//! through a whole /64 for free), and once [`PER_IP_MAX_TRACKED`] sources are tracked, the least recently used
//! bucket is forgotten for each new one (a bucket untouched for `burst / rate` seconds is full again, so
//! forgetting it loses nothing).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use fleetgate_ops::sources::source_key;
use parking_lot::Mutex;

use crate::metrics::CONNECTIONS_OPEN;

/// Most source addresses (IPv4 addresses and IPv6 /64s) the per-IP limiter tracks at once: about 100 bytes each
/// with the LRU queue, so ~7 MB at the cap, and an attacker cycling source addresses cannot grow it further.
const PER_IP_MAX_TRACKED: usize = 65_536;

/// Why admission refused a connection (the metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The listener's `max_connections` is reached.
    ListenerFull,
    /// The total `max_connections` is reached.
    TotalFull,
    /// The source address (IPv6: its /64) has `max_connections_per_ip` connections open.
    PerIpConnections,
    /// The source IP exceeded `per_ip_rate`.
    PerIpRate,
    /// The TLS handshake budget of this second is spent.
    TlsBudget,
}

impl Refused {
    /// Label for metrics and logs.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Refused::ListenerFull => "listener_full",
            Refused::TotalFull => "total_full",
            Refused::PerIpConnections => "per_ip_connections",
            Refused::PerIpRate => "per_ip_rate",
            Refused::TlsBudget => "tls_budget",
        }
    }
}

/// An open-connection counter. It is live state that outlives reloads (carried by listener name); its cap
/// comes from the snapshot at each acquire, so a reload that changes `max_connections` applies at once.
#[derive(Debug)]
pub(crate) struct Gauge {
    open: AtomicUsize,
    /// `listener` label of `fleetgate_lb_connections_open`; `None` for gauges that are not a listener's.
    label: Option<String>,
}

impl Gauge {
    /// A counter, recorded as `fleetgate_lb_connections_open{listener}` when `listener` is given.
    pub(crate) fn new(listener: Option<&str>) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            label: listener.map(str::to_owned),
        })
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Takes one slot if fewer than `max` are open (`None`: no cap); released when the slot drops.
    pub(crate) fn try_acquire(self: &Arc<Self>, max: Option<usize>) -> Option<Slot> {
        let max = max.unwrap_or(usize::MAX);
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| {
                if let Some(l) = &self.label {
                    metrics::gauge!(CONNECTIONS_OPEN, "listener" => l.clone()).increment(1.0);
                }
                Slot(self.clone())
            })
    }
}

/// One open connection counted in a [`Gauge`]; released on drop.
#[derive(Debug)]
pub(crate) struct Slot(Arc<Gauge>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(l) = &self.0.label {
            metrics::gauge!(CONNECTIONS_OPEN, "listener" => l.clone()).decrement(1.0);
        }
    }
}

/// The slots a connection holds (its listener's and the total); released together on drop.
#[derive(Debug)]
pub(crate) struct Permit {
    _listener: Slot,
    _total: Slot,
}

/// Takes a slot in both the listener's and the total gauge (each under its cap), or says which is full.
pub(crate) fn acquire(
    (listener, listener_max): (&Arc<Gauge>, Option<usize>),
    (total, total_max): (&Arc<Gauge>, Option<usize>),
) -> Result<Permit, Refused> {
    let listener_slot = listener
        .try_acquire(listener_max)
        .ok_or(Refused::ListenerFull)?;
    let total_slot = total.try_acquire(total_max).ok_or(Refused::TotalFull)?;
    Ok(Permit {
        _listener: listener_slot,
        _total: total_slot,
    })
}

/// A token bucket: `rate` tokens per second up to `burst`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant, rate: f64, burst: f64) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at = now;
    }

    fn take(&mut self, now: Instant, rate: f64, burst: f64) -> bool {
        self.refill(now, rate, burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A tracked source: its bucket and the stamp of its newest slot in the LRU queue.
#[derive(Debug, Clone, Copy)]
struct Tracked {
    bucket: Bucket,
    stamp: u64,
}

/// The buckets and their use order.
#[derive(Debug, Default)]
struct Buckets {
    map: HashMap<IpAddr, Tracked>,
    /// `(key, stamp)` per use, oldest first; a slot whose stamp is not its entry's is stale (the key was used
    /// again later, or evicted). Compacted when stale slots outnumber live ones, so each use costs O(1) amortized.
    order: VecDeque<(IpAddr, u64)>,
    next_stamp: u64,
}

impl Buckets {
    /// Forgets the least recently used source; false when nothing is left to forget.
    fn evict_one(&mut self) -> bool {
        while let Some((key, stamp)) = self.order.pop_front() {
            if self.map.get(&key).is_some_and(|t| t.stamp == stamp) {
                self.map.remove(&key);
                return true;
            }
        }
        false
    }

    /// Drops the stale slots once they are at least half of the queue: O(queue), after at least as many uses.
    fn compact(&mut self) {
        if self.order.len() <= 2 * self.map.len().max(1024) {
            return;
        }
        let map = &self.map;
        self.order
            .retain(|(key, stamp)| map.get(key).is_some_and(|t| t.stamp == *stamp));
    }
}

/// Token buckets per source address (IPv6 per /64), at most `max_tracked` of them.
#[derive(Debug)]
pub(crate) struct PerIpLimiter {
    rate: f64,
    burst: f64,
    max_tracked: usize,
    buckets: Mutex<Buckets>,
}

impl PerIpLimiter {
    /// `rate` new connections per second per source, bursts up to `burst`.
    pub(crate) fn new(rate: f64, burst: u32) -> Self {
        Self::with_max_tracked(rate, burst, PER_IP_MAX_TRACKED)
    }

    /// Like [`PerIpLimiter::new`], tracking at most `max_tracked` sources.
    fn with_max_tracked(rate: f64, burst: u32, max_tracked: usize) -> Self {
        Self {
            rate,
            burst: f64::from(burst.max(1)),
            max_tracked: max_tracked.max(1),
            buckets: Mutex::new(Buckets::default()),
        }
    }

    /// Takes one token for `ip`'s source key; false when its bucket is empty.
    pub(crate) fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        let key = source_key(ip);
        let mut b = self.buckets.lock();
        b.next_stamp += 1;
        let stamp = b.next_stamp;
        if !b.map.contains_key(&key) {
            while b.map.len() >= self.max_tracked && b.evict_one() {}
        }
        let tracked = b.map.entry(key).or_insert(Tracked {
            bucket: Bucket {
                tokens: self.burst,
                at: now,
            },
            stamp,
        });
        tracked.stamp = stamp;
        let allowed = tracked.bucket.take(now, self.rate, self.burst);
        b.order.push_back((key, stamp));
        b.compact();
        allowed
    }

    /// Sources tracked now.
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.buckets.lock().map.len()
    }
}

/// A global budget of TLS handshakes per second.
#[derive(Debug)]
pub(crate) struct HandshakeBudget {
    rate: f64,
    bucket: Mutex<Bucket>,
}

impl HandshakeBudget {
    /// `per_second` handshakes per second, bursting to one second's worth.
    pub(crate) fn new(per_second: u32) -> Self {
        let rate = f64::from(per_second.max(1));
        Self {
            rate,
            bucket: Mutex::new(Bucket {
                tokens: rate,
                at: Instant::now(),
            }),
        }
    }

    /// Takes one handshake from the budget.
    pub(crate) fn allow(&self, now: Instant) -> bool {
        self.bucket.lock().take(now, self.rate, self.rate)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn gauges_cap_and_release() {
        let listener = Gauge::new(Some("l"));
        let total = Gauge::new(None);
        let two = Some(2);
        let a = acquire((&listener, two), (&total, two)).unwrap();
        let _b = acquire((&listener, two), (&total, two)).unwrap();
        assert_eq!(
            acquire((&listener, two), (&total, two)).unwrap_err(),
            Refused::ListenerFull
        );
        drop(a);
        let other = Gauge::new(None);
        let _c = acquire((&listener, two), (&total, two)).unwrap();
        assert_eq!(
            acquire((&other, None), (&total, two)).unwrap_err(),
            Refused::TotalFull
        );
        assert_eq!(
            other.open(),
            0,
            "a refused total must release the listener slot"
        );
        assert_eq!(total.open(), 2);
    }

    #[test]
    fn per_ip_bucket_refills() {
        let limiter = PerIpLimiter::new(2.0, 2);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        assert!(limiter.allow(ip, t0));
        assert!(limiter.allow(ip, t0));
        assert!(!limiter.allow(ip, t0));
        assert!(limiter.allow(other, t0));
        assert!(limiter.allow(ip, t0 + Duration::from_millis(500)));
        assert!(!limiter.allow(ip, t0 + Duration::from_millis(500)));
    }

    #[test]
    fn ipv6_sources_share_a_bucket_per_64() {
        let limiter = PerIpLimiter::new(1.0, 5);
        let t0 = Instant::now();
        let base = "2001:db8:1:2::"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .to_bits();
        let allowed = (0..200_000u128)
            .filter(|i| limiter.allow(IpAddr::V6((base | (i * 7919)).into()), t0))
            .count();
        assert_eq!(allowed, 5, "one /64 is one bucket");
        assert_eq!(limiter.tracked(), 1);
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(limiter.allow(other, t0), "the next /64 has its own bucket");
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let pair = PerIpLimiter::new(1.0, 1);
        assert!(pair.allow(mapped, t0));
        assert!(
            !pair.allow(v4, t0),
            "IPv4-mapped counts as the IPv4 address"
        );
    }

    #[test]
    fn rotating_sources_stay_capped_and_fast() {
        let limiter = PerIpLimiter::new(1.0, 1);
        let t0 = Instant::now();
        let started = Instant::now();
        for i in 0..200_000u32 {
            let ip = IpAddr::V4((0x0A00_0000 + i).into());
            assert!(
                limiter.allow(ip, t0),
                "a new source starts with a full bucket"
            );
            assert!(limiter.tracked() <= PER_IP_MAX_TRACKED);
        }
        assert_eq!(limiter.tracked(), PER_IP_MAX_TRACKED);
        // The old full sweep cost O(n) per new source above the cap: ~10^10 steps here. A bound of seconds
        // (generous for a debug build on a shared runner) separates the two by orders of magnitude.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "200k new sources took {:?}",
            started.elapsed()
        );
        let queue = limiter.buckets.lock().order.len();
        assert!(
            queue <= 2 * PER_IP_MAX_TRACKED + 1,
            "LRU queue compacted: {queue}"
        );
    }

    #[test]
    fn least_recently_used_source_is_evicted_first() {
        let limiter = PerIpLimiter::with_max_tracked(1.0, 1, 2);
        let t0 = Instant::now();
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "10.0.0.3".parse().unwrap(),
        );
        assert!(limiter.allow(a, t0));
        assert!(limiter.allow(b, t0));
        assert!(
            !limiter.allow(a, t0),
            "a is empty and now the most recently used"
        );
        assert!(limiter.allow(c, t0), "evicts b, not a");
        assert_eq!(limiter.tracked(), 2);
        assert!(!limiter.allow(a, t0), "a's empty bucket survived");
        assert!(limiter.allow(b, t0), "b was forgotten: a fresh bucket");
    }

    #[test]
    fn handshake_budget() {
        let budget = HandshakeBudget::new(3);
        let t0 = Instant::now();
        let allowed = (0..10).filter(|_| budget.allow(t0)).count();
        assert_eq!(allowed, 3);
        assert!(budget.allow(t0 + Duration::from_secs(1)));
    }
}
