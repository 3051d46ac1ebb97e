//! Backends and their selection: the rendezvous ring over the backends' stable names and each backend's live
//! state — open connections (bounded load) and a short passive "suspect" mark (set when a connect fails or the
//! backend resets a relay) in [`Live`], and beside it the backend's [`Health`] (flipped by
//! [`crate::health_check`] after N consecutive results).
//!
//! Health lives beside selection, not inside it: the ring only asks [`BackendState::is_healthy`]. Both are
//! carried across reloads and discovery refreshes by the backend's stable name, so a backend whose address
//! changes (a pod rescheduled with a new IP) keeps its health, its load and its clients' pinning.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fleetgate_config::lb::BackendConfig;
use fleetgate_protocol::ring::{Ring, RingNode};
use parking_lot::Mutex;

use crate::health::Health;
use crate::metrics::{BACKEND_CONNECT_FAILURES, BACKEND_CONNECTIONS, BACKEND_CONNECTIONS_TOTAL};

/// How long a backend whose connect failed is skipped by new connections: long enough that a reconnect storm
/// does not pay the connect timeout on every client, short enough that a restarted broker gets its clients back
/// within seconds; active health checks decide beyond that.
const SUSPECT_TTL: Duration = Duration::from_secs(5);

/// Load and passive state that outlives a snapshot: carried by backend name.
#[derive(Debug, Default)]
pub(crate) struct Live {
    active: AtomicU64,
    suspect_until: Mutex<Option<Instant>>,
}

/// One backend of a snapshot: its configuration and its (shared) live state and health, side by side.
#[derive(Debug)]
pub(crate) struct BackendState {
    /// Its configuration.
    pub(crate) config: BackendConfig,
    /// Where it came from: `static` or the discovery source label.
    pub(crate) source: String,
    /// Load and suspect mark, shared with earlier and later snapshots.
    pub(crate) live: Arc<Live>,
    /// Active health, flipped by [`crate::health_check`]; shared likewise.
    pub(crate) health: Arc<Health>,
}

impl BackendState {
    /// The stable name (ring key).
    pub(crate) fn name(&self) -> &str {
        &self.config.name
    }

    /// What the health checker last decided (up while unchecked or not yet checked).
    pub(crate) fn is_healthy(&self) -> bool {
        self.health.is_up()
    }

    /// True while a recent connect failure or reset marks the backend.
    pub(crate) fn is_suspect(&self, now: Instant) -> bool {
        self.live
            .suspect_until
            .lock()
            .is_some_and(|until| now < until)
    }

    /// Marks a connect failure or a reset (passive detection).
    pub(crate) fn mark_failed(&self, now: Instant) {
        *self.live.suspect_until.lock() = Some(now + SUSPECT_TTL);
        metrics::counter!(BACKEND_CONNECT_FAILURES, "backend" => self.config.name.clone())
            .increment(1);
    }

    /// Clears the mark after a successful connect.
    pub(crate) fn mark_ok(&self) {
        *self.live.suspect_until.lock() = None;
    }

    /// Connections relayed to it now.
    pub(crate) fn active(&self) -> u64 {
        self.live.active.load(Ordering::Relaxed)
    }

    /// Counts a relayed connection until the returned guard drops.
    pub(crate) fn track(&self) -> ActiveGuard {
        self.live.active.fetch_add(1, Ordering::Relaxed);
        let name = self.config.name.clone();
        metrics::gauge!(BACKEND_CONNECTIONS, "backend" => name.clone()).increment(1.0);
        metrics::counter!(BACKEND_CONNECTIONS_TOTAL, "backend" => name.clone()).increment(1);
        ActiveGuard(self.live.clone(), name)
    }
}

/// One relayed connection counted against a backend.
#[derive(Debug)]
pub(crate) struct ActiveGuard(Arc<Live>, String);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!(BACKEND_CONNECTIONS, "backend" => self.1.clone()).decrement(1.0);
    }
}

/// The backends and the ring over their names.
#[derive(Debug)]
pub(crate) struct Backends {
    states: Vec<Arc<BackendState>>,
    by_name: HashMap<String, usize>,
    ring: Ring,
    bounded_load_factor: Option<f64>,
    /// Some backend has `send_client_cert`: decided here once, not per TLS handshake.
    any_sends_client_cert: bool,
}

impl Backends {
    /// Builds the set from `(config, source)` pairs; live state of backends already known by name is kept.
    pub(crate) fn new(
        configs: Vec<(BackendConfig, String)>,
        previous: Option<&Backends>,
        bounded_load_factor: Option<f64>,
    ) -> Self {
        let ring = Ring::new(configs.iter().map(|(c, _)| RingNode {
            name: c.name.clone(),
            weight: c.weight,
        }));
        let states: Vec<Arc<BackendState>> = configs
            .into_iter()
            .map(|(config, source)| {
                let (live, health) = match previous.and_then(|p| p.get(&config.name)) {
                    Some(old) => (old.live.clone(), old.health.clone()),
                    None => (
                        Arc::new(Live::default()),
                        Arc::new(Health::new(&config.name)),
                    ),
                };
                Arc::new(BackendState {
                    config,
                    source,
                    live,
                    health,
                })
            })
            .collect();
        let by_name = states
            .iter()
            .enumerate()
            .map(|(i, s)| (s.config.name.clone(), i))
            .collect();
        let any_sends_client_cert = states.iter().any(|b| b.config.send_client_cert);
        Self {
            states,
            by_name,
            ring,
            bounded_load_factor,
            any_sends_client_cert,
        }
    }

    /// True when some backend wants the client certificate (so a handshake keeps its DER).
    pub(crate) fn any_sends_client_cert(&self) -> bool {
        self.any_sends_client_cert
    }

    /// The backend named `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&Arc<BackendState>> {
        self.by_name.get(name).and_then(|&i| self.states.get(i))
    }

    /// All backends, in config order (static ones first, then discovered ones by name).
    pub(crate) fn all(&self) -> &[Arc<BackendState>] {
        &self.states
    }

    /// The backend `key` goes to now, skipping unhealthy ones, ones in `tried`, and suspect ones unless every
    /// remaining one is suspect (then a suspect one is tried rather than refusing the client).
    pub(crate) fn pick(
        &self,
        key: &[u8],
        tried: &[&str],
        now: Instant,
    ) -> Option<&Arc<BackendState>> {
        let usable = |name: &str, skip_suspect: bool| {
            self.get(name).is_some_and(|b| {
                b.is_healthy() && !tried.contains(&name) && !(skip_suspect && b.is_suspect(now))
            })
        };
        self.select(key, |n| usable(n, true))
            .or_else(|| self.select(key, |n| usable(n, false)))
    }

    fn select(&self, key: &[u8], eligible: impl Fn(&str) -> bool) -> Option<&Arc<BackendState>> {
        let name = match self.bounded_load_factor {
            Some(factor) => {
                let total: u64 = self
                    .states
                    .iter()
                    .filter(|b| eligible(b.name()))
                    .map(|b| b.active())
                    .sum();
                let load_of = |name: &str| self.get(name).map_or(0, |b| b.active());
                self.ring
                    .select_bounded(key, load_of, total, factor, &eligible)
            }
            None => self.ring.select(key, &eligible),
        }?;
        self.get(name)
    }
}

#[cfg(test)]
mod tests {
    use fleetgate_config::lb::{HealthConfig, ProxyVersion};

    use super::*;

    fn cfg(name: &str) -> (BackendConfig, String) {
        (
            BackendConfig {
                name: name.into(),
                address: "127.0.0.1:1".into(),
                weight: 1,
                proxy_protocol: ProxyVersion::V2,
                send_client_cert: false,
                crc32c: false,
                drain: false,
                health: HealthConfig::none("lb"),
            },
            "static".into(),
        )
    }

    #[test]
    fn same_key_same_backend_and_failover() {
        let b = Backends::new(
            vec![cfg("broker-0"), cfg("broker-1"), cfg("broker-2")],
            None,
            None,
        );
        let now = Instant::now();
        let first = b.pick(b"client-a", &[], now).unwrap();
        assert_eq!(first.name(), b.pick(b"client-a", &[], now).unwrap().name());
        let second = b.pick(b"client-a", &[first.name()], now).unwrap();
        assert_ne!(first.name(), second.name());
        first.mark_failed(now);
        assert_eq!(b.pick(b"client-a", &[], now).unwrap().name(), second.name());
        assert_eq!(
            b.pick(b"client-a", &[], now + SUSPECT_TTL).unwrap().name(),
            first.name()
        );
    }

    #[test]
    fn all_suspect_still_picks_and_all_tried_gives_none() {
        let b = Backends::new(vec![cfg("a"), cfg("b")], None, Some(1.25));
        assert!(!b.any_sends_client_cert());
        let mut wants = cfg("c");
        wants.0.send_client_cert = true;
        assert!(Backends::new(vec![cfg("a"), wants], None, None).any_sends_client_cert());
        let now = Instant::now();
        for s in b.all() {
            s.mark_failed(now);
        }
        assert!(b.pick(b"k", &[], now).is_some());
        assert!(b.pick(b"k", &["a", "b"], now).is_none());
    }

    #[test]
    fn reload_keeps_live_state_by_name_even_when_the_address_changes() {
        let old = Backends::new(vec![cfg("a"), cfg("b")], None, None);
        let _guard = old.get("a").unwrap().track();
        old.get("a").unwrap().health.force(false);
        let mut moved = cfg("a");
        moved.0.address = "127.0.0.2:1".into();
        let new = Backends::new(vec![moved, cfg("c")], Some(&old), None);
        assert_eq!(new.get("a").unwrap().active(), 1);
        assert!(!new.get("a").unwrap().is_healthy());
        assert!(new.get("b").is_none());
        assert_eq!(new.pick(b"k", &[], Instant::now()).unwrap().name(), "c");
    }
}
