//! Admission control, the first stage of a connection: caps on open connections (per listener and in total), a
//! token bucket per source IP, and a global budget of TLS handshakes per second (handshakes are the expensive
//! part of a reconnect storm). Each check is O(1) under at most one short mutex hold.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::stats;

/// Above this many tracked source IPs, full buckets are swept on insert: a bucket refilled to its burst holds no
/// information, and an attacker cycling source addresses must not grow the map without bound.
pub const PER_IP_SWEEP_THRESHOLD: usize = 65_536;

/// Why admission refused a connection (the metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The listener's `max_connections` is reached.
    ListenerFull,
    /// The total `max_connections` is reached.
    TotalFull,
    /// The source IP exceeded `per_ip_rate`.
    PerIpRate,
    /// The TLS handshake budget of this second is spent.
    TlsBudget,
}

impl Refused {
    /// Label for metrics and logs.
    pub fn reason(self) -> &'static str {
        match self {
            Refused::ListenerFull => "listener_full",
            Refused::TotalFull => "total_full",
            Refused::PerIpRate => "per_ip_rate",
            Refused::TlsBudget => "tls_budget",
        }
    }
}

/// An open-connection counter. It is live state that outlives reloads (carried by listener name); its cap
/// comes from the snapshot at each acquire, so a reload that changes `max_connections` applies at once.
#[derive(Debug)]
pub struct Gauge {
    open: AtomicUsize,
    /// `listener` label of `fleetgate_lb_connections_open`; `None` for gauges that are not a listener's.
    label: Option<String>,
}

impl Gauge {
    /// A counter, recorded as `fleetgate_lb_connections_open{listener}` when `listener` is given.
    pub fn new(listener: Option<&str>) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            label: listener.map(str::to_owned),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn try_acquire(self: &Arc<Self>, max: Option<usize>) -> Option<Slot> {
        let max = max.unwrap_or(usize::MAX);
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| {
                if let Some(l) = &self.label {
                    metrics::gauge!(stats::CONNECTIONS_OPEN, "listener" => l.clone())
                        .increment(1.0);
                }
                Slot(self.clone())
            })
    }
}

/// One open connection counted in a [`Gauge`]; released on drop.
#[derive(Debug)]
pub struct Slot(Arc<Gauge>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(l) = &self.0.label {
            metrics::gauge!(stats::CONNECTIONS_OPEN, "listener" => l.clone()).decrement(1.0);
        }
    }
}

/// The slots a connection holds (its listener's and the total); released together on drop.
#[derive(Debug)]
pub struct Permit {
    _listener: Slot,
    _total: Slot,
}

/// Takes a slot in both the listener's and the total gauge (each under its cap), or says which is full.
pub fn acquire(
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

/// Token buckets per source IP.
#[derive(Debug)]
pub struct PerIpLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl PerIpLimiter {
    /// `rate` new connections per second per IP, bursts up to `burst`.
    pub fn new(rate: f64, burst: u32) -> Self {
        Self {
            rate,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `ip`; false when its bucket is empty.
    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        let Ok(mut buckets) = self.buckets.lock() else {
            return true;
        };
        if buckets.len() >= PER_IP_SWEEP_THRESHOLD && !buckets.contains_key(&ip) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| {
                b.refill(now, rate, burst);
                b.tokens < burst
            });
        }
        let bucket = buckets.entry(ip).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        bucket.take(now, self.rate, self.burst)
    }
}

/// A global budget of TLS handshakes per second.
#[derive(Debug)]
pub struct HandshakeBudget {
    rate: f64,
    bucket: Mutex<Bucket>,
}

impl HandshakeBudget {
    /// `per_second` handshakes per second, bursting to one second's worth.
    pub fn new(per_second: u32) -> Self {
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
    pub fn allow(&self, now: Instant) -> bool {
        match self.bucket.lock() {
            Ok(mut b) => b.take(now, self.rate, self.rate),
            Err(_) => true,
        }
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
    fn handshake_budget() {
        let budget = HandshakeBudget::new(3);
        let t0 = Instant::now();
        let allowed = (0..10).filter(|_| budget.allow(t0)).count();
        assert_eq!(allowed, 3);
        assert!(budget.allow(t0 + Duration::from_secs(1)));
    }
}
