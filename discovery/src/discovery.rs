//! The refresh loop: resolve a [`Source`] on a TTL-aware schedule and publish the current endpoint set through a
//! `watch` channel — the LB's backend set and the node's peer list subscribe to it.
//!
//! A failed round (timeout, SERVFAIL, NXDOMAIN, empty answer) keeps the last good set: a DNS outage must not
//! empty a ring. Failures are counted (`fleetgate_discovery_failures_total{source, reason}`) and logged
//! (`event="discovery_failed"`); changes are counted (`fleetgate_discovery_changes_total{source}`) and logged
//! (`event="discovery_changed"` with the added and removed names).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::endpoint::{Endpoint, Source, diff_names, normalize};
use crate::resolve::{DnsResolver, FailureReason, Nameserver, ResolveError, Resolved};

/// Default time between refreshes when TTLs are longer: a rescheduled pod is noticed within this.
pub const DEFAULT_INTERVAL: Duration = fleetgate_config::discovery::DEFAULT_INTERVAL;
/// Refresh floor: a TTL of 0 or 1 s (common for headless Services) must not turn discovery into a query storm
/// against cluster DNS; nor may a failing nameserver be retried in a tight loop.
pub const MIN_REFRESH: Duration = fleetgate_config::discovery::MIN_INTERVAL;
/// Default deadline of one DNS query attempt: cluster DNS answers in milliseconds; two seconds covers a loaded
/// CoreDNS without letting a dead one stall a round for long.
pub const DEFAULT_QUERY_TIMEOUT: Duration = fleetgate_config::discovery::DEFAULT_QUERY_TIMEOUT;
/// Default deadline of a whole round (the SRV lookup plus its follow-up A/AAAA lookups, with retries).
pub const DEFAULT_ROUND_TIMEOUT: Duration = Duration::from_secs(10);

/// The published set: sorted by name, one endpoint per name.
pub type EndpointSet = Arc<Vec<Endpoint>>;

/// How a [`Discovery`] refreshes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryOptions {
    /// Longest time between refreshes.
    pub interval: Duration,
    /// Shortest time between refreshes, whatever the TTLs say.
    pub min_refresh: Duration,
    /// Which nameserver to ask.
    pub nameserver: Nameserver,
    /// Deadline of one query attempt.
    pub query_timeout: Duration,
    /// Deadline of one whole round.
    pub round_timeout: Duration,
}

impl Default for DiscoveryOptions {
    fn default() -> Self {
        Self {
            interval: DEFAULT_INTERVAL,
            min_refresh: MIN_REFRESH,
            nameserver: Nameserver::System,
            query_timeout: DEFAULT_QUERY_TIMEOUT,
            round_timeout: DEFAULT_ROUND_TIMEOUT,
        }
    }
}

/// Counters of one [`Discovery`], for tests and admin pages (the same facts also go to `metrics`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiscoveryStats {
    /// Rounds that succeeded.
    pub refreshes: u64,
    /// Published changes of the set (the first non-empty set counts).
    pub changes: u64,
    /// Failed rounds, by reason (indexed like [`FailureReason::ALL`]).
    pub failures: [u64; FailureReason::ALL.len()],
    /// Delay chosen after the last round.
    pub next_refresh: Duration,
}

impl DiscoveryStats {
    /// Failed rounds with this reason.
    pub fn failures(&self, reason: FailureReason) -> u64 {
        reason_index(reason).map_or(0, |i| self.failures[i])
    }

    /// Failed rounds, all reasons.
    pub fn total_failures(&self) -> u64 {
        self.failures.iter().sum()
    }
}

#[derive(Debug, Default)]
struct Counters {
    refreshes: AtomicU64,
    changes: AtomicU64,
    failures: [AtomicU64; FailureReason::ALL.len()],
    next_refresh_ms: AtomicU64,
}

fn reason_index(reason: FailureReason) -> Option<usize> {
    FailureReason::ALL.iter().position(|r| *r == reason)
}

/// A running discovery: the latest set through [`Discovery::subscribe`], stopped by the shutdown token (or when
/// this handle and every receiver are dropped).
#[derive(Debug)]
pub struct Discovery {
    rx: watch::Receiver<EndpointSet>,
    counters: Arc<Counters>,
    task: Option<JoinHandle<()>>,
    /// Keeps a static set's channel open, so subscribers see "no change yet" rather than "closed".
    _static_tx: Option<watch::Sender<EndpointSet>>,
}

impl Discovery {
    /// Starts discovering `source`. A static source is published at once; a DNS source starts empty and is
    /// filled by its first successful round (wait with `rx.wait_for(|set| !set.is_empty())`). Must be called
    /// inside a tokio runtime; fails only if the resolver cannot be set up (unreadable `/etc/resolv.conf`).
    pub fn spawn(
        source: Source,
        options: DiscoveryOptions,
        shutdown: CancellationToken,
    ) -> Result<Self, ResolveError> {
        let counters = Arc::new(Counters::default());
        let label = source.label();
        let lookup = match source {
            Source::Static(endpoints) => {
                let set = normalize(endpoints);
                metrics::gauge!("fleetgate_discovery_endpoints", "source" => label.clone())
                    .set(set.len() as f64);
                counters.changes.store(1, Ordering::Relaxed);
                let (tx, rx) = watch::channel(Arc::new(set));
                return Ok(Self {
                    rx,
                    counters,
                    task: None,
                    _static_tx: Some(tx),
                });
            }
            Source::DnsA { name, port } => Lookup::A { name, port },
            Source::DnsSrv { name, name_from } => Lookup::Srv { name, name_from },
        };
        let resolver = DnsResolver::new(&options.nameserver, options.query_timeout)?;
        let (tx, rx) = watch::channel(Arc::new(Vec::new()));
        let refresher = Refresher {
            label,
            lookup,
            resolver,
            options,
            tx,
            counters: counters.clone(),
        };
        let task = tokio::spawn(refresher.run(shutdown));
        Ok(Self {
            rx,
            counters,
            task: Some(task),
            _static_tx: None,
        })
    }

    /// A receiver of the current set; `changed()` fires only when the set really changes.
    pub fn subscribe(&self) -> watch::Receiver<EndpointSet> {
        self.rx.clone()
    }

    /// The current set.
    pub fn current(&self) -> EndpointSet {
        self.rx.borrow().clone()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> DiscoveryStats {
        let c = &self.counters;
        DiscoveryStats {
            refreshes: c.refreshes.load(Ordering::Relaxed),
            changes: c.changes.load(Ordering::Relaxed),
            failures: std::array::from_fn(|i| c.failures[i].load(Ordering::Relaxed)),
            next_refresh: Duration::from_millis(c.next_refresh_ms.load(Ordering::Relaxed)),
        }
    }

    /// Waits for the refresh task to end (after the shutdown token is cancelled).
    pub async fn join(mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// What a DNS round looks up.
#[derive(Debug)]
enum Lookup {
    A {
        name: String,
        port: u16,
    },
    Srv {
        name: String,
        name_from: crate::endpoint::NameFrom,
    },
}

struct Refresher {
    label: String,
    lookup: Lookup,
    resolver: DnsResolver,
    options: DiscoveryOptions,
    tx: watch::Sender<EndpointSet>,
    counters: Arc<Counters>,
}

impl Refresher {
    async fn run(self, shutdown: CancellationToken) {
        let mut consecutive_failures = 0u32;
        loop {
            let round = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.tx.closed() => return,
                round = tokio::time::timeout(self.options.round_timeout, self.round()) => round,
            };
            let delay = match round
                .unwrap_or(Err(ResolveError::RoundTimeout(self.options.round_timeout)))
            {
                Ok(resolved) => {
                    consecutive_failures = 0;
                    self.publish(resolved.endpoints);
                    next_delay(&self.options, resolved.min_ttl)
                }
                Err(error) => {
                    consecutive_failures = consecutive_failures.saturating_add(1);
                    self.fail(&error);
                    retry_delay(&self.options, consecutive_failures)
                }
            };
            let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
            self.counters
                .next_refresh_ms
                .store(delay_ms, Ordering::Relaxed);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.tx.closed() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn round(&self) -> Result<Resolved, ResolveError> {
        match &self.lookup {
            Lookup::A { name, port } => self.resolver.resolve_a(name, *port).await,
            Lookup::Srv { name, name_from } => self.resolver.resolve_srv(name, *name_from).await,
        }
    }

    fn publish(&self, endpoints: Vec<Endpoint>) {
        self.counters.refreshes.fetch_add(1, Ordering::Relaxed);
        let new = normalize(endpoints);
        let mut diff = None;
        self.tx.send_if_modified(|current| {
            if **current == new {
                return false;
            }
            diff = Some(diff_names(current, &new));
            *current = Arc::new(new);
            true
        });
        let Some((added, removed)) = diff else { return };
        let size = self.tx.borrow().len();
        self.counters.changes.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("fleetgate_discovery_changes_total", "source" => self.label.clone())
            .increment(1);
        metrics::gauge!("fleetgate_discovery_endpoints", "source" => self.label.clone())
            .set(size as f64);
        tracing::info!(
            event = "discovery_changed",
            source = %self.label,
            endpoints = size,
            added = ?added,
            removed = ?removed,
            "discovered endpoints changed"
        );
    }

    fn fail(&self, error: &ResolveError) {
        let reason = error.reason();
        if let Some(i) = reason_index(reason) {
            self.counters.failures[i].fetch_add(1, Ordering::Relaxed);
        }
        metrics::counter!(
            "fleetgate_discovery_failures_total",
            "source" => self.label.clone(),
            "reason" => reason.as_str()
        )
        .increment(1);
        tracing::warn!(
            event = "discovery_failed",
            source = %self.label,
            reason = reason.as_str(),
            error = %error,
            kept = self.tx.borrow().len(),
            "discovery failed; keeping the last good set"
        );
    }
}

/// Delay after a successful round: the interval, or sooner when a record's TTL runs out first, never below the
/// floor.
pub fn next_delay(options: &DiscoveryOptions, min_ttl: Option<Duration>) -> Duration {
    let wanted = min_ttl.map_or(options.interval, |ttl| ttl.min(options.interval));
    wanted.max(options.min_refresh)
}

/// Delay after the `failures`-th failed round in a row: the floor, doubling, capped at the interval.
pub fn retry_delay(options: &DiscoveryOptions, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let backoff = options.min_refresh.saturating_mul(1 << doublings);
    backoff.min(options.interval).max(options.min_refresh)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(interval: u64) -> DiscoveryOptions {
        DiscoveryOptions {
            interval: Duration::from_secs(interval),
            ..DiscoveryOptions::default()
        }
    }

    #[test]
    fn delay_follows_ttl_within_floor_and_interval() {
        let o = options(30);
        assert_eq!(next_delay(&o, None), Duration::from_secs(30));
        assert_eq!(
            next_delay(&o, Some(Duration::from_secs(300))),
            Duration::from_secs(30)
        );
        assert_eq!(
            next_delay(&o, Some(Duration::from_secs(5))),
            Duration::from_secs(5)
        );
        assert_eq!(next_delay(&o, Some(Duration::ZERO)), MIN_REFRESH);
    }

    #[test]
    fn retries_back_off_to_the_interval() {
        let o = options(10);
        let delays: Vec<u64> = (1..=6).map(|n| retry_delay(&o, n).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 10, 10]);
        assert_eq!(retry_delay(&o, u32::MAX), Duration::from_secs(10));
    }
}
