//! Backends and their selection: the rendezvous ring over the backends' stable names, each backend's live state
//! (open connections for bounded load, a short "recently failed" mark), and the TCP connect with its timeout.
//!
//! Health lives beside selection, not inside it: [`BackendState::is_healthy`] is the seam a health checker will
//! flip (carried across reloads by the backend's name); today every backend is healthy and only the suspect mark
//! (set when a connect fails, cleared after [`SUSPECT_TTL`]) steers traffic away.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fleetgate_config::lb::BackendConfig;
use fleetgate_protocol::ring::{Ring, RingNode};
use tokio::net::TcpStream;

use crate::stats;

/// How long a backend whose connect failed is skipped by new connections: long enough that a reconnect storm
/// does not pay the connect timeout on every client, short enough that a restarted broker gets its clients back
/// within seconds (full health checking replaces this later).
pub const SUSPECT_TTL: Duration = Duration::from_secs(5);

/// One backend and its live state.
#[derive(Debug)]
pub struct BackendState {
    /// Its configuration.
    pub config: BackendConfig,
    active: AtomicU64,
    healthy: AtomicBool,
    suspect_until: Mutex<Option<Instant>>,
}

impl BackendState {
    /// A healthy backend with no connections.
    pub fn new(config: BackendConfig) -> Self {
        Self {
            config,
            active: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            suspect_until: Mutex::new(None),
        }
    }

    /// The stable name (ring key).
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// What the health checker last decided (always true until one exists).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Sets the health state (the health checker's seam).
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// True while a recent connect failure marks the backend.
    pub fn is_suspect(&self, now: Instant) -> bool {
        self.suspect_until
            .lock()
            .map(|s| s.is_some_and(|until| now < until))
            .unwrap_or(false)
    }

    /// Marks a connect failure.
    pub fn mark_failed(&self, now: Instant) {
        if let Ok(mut s) = self.suspect_until.lock() {
            *s = Some(now + SUSPECT_TTL);
        }
        metrics::counter!(stats::BACKEND_CONNECT_FAILURES, "backend" => self.config.name.clone())
            .increment(1);
    }

    /// Clears the mark after a successful connect.
    pub fn mark_ok(&self) {
        if let Ok(mut s) = self.suspect_until.lock() {
            *s = None;
        }
    }

    /// Connections relayed to it now.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Counts a relayed connection until the returned guard drops.
    pub fn track(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        let name = self.config.name.clone();
        metrics::gauge!(stats::BACKEND_CONNECTIONS, "backend" => name.clone()).increment(1.0);
        metrics::counter!(stats::BACKEND_CONNECTIONS_TOTAL, "backend" => name).increment(1);
        ActiveGuard(self.clone())
    }
}

/// One relayed connection counted against a backend.
#[derive(Debug)]
pub struct ActiveGuard(Arc<BackendState>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!(stats::BACKEND_CONNECTIONS, "backend" => self.0.config.name.clone())
            .decrement(1.0);
    }
}

/// The backends and the ring over their names.
#[derive(Debug)]
pub struct Backends {
    states: Vec<Arc<BackendState>>,
    by_name: HashMap<String, usize>,
    ring: Ring,
    bounded_load_factor: Option<f64>,
}

impl Backends {
    /// Builds the set; states of backends already known by name (a reload) are kept.
    pub fn new(
        configs: &[BackendConfig],
        previous: Option<&Backends>,
        bounded_load_factor: Option<f64>,
    ) -> Self {
        let states: Vec<Arc<BackendState>> = configs
            .iter()
            .map(|cfg| match previous.and_then(|p| p.get(&cfg.name)) {
                Some(old) if old.config == *cfg => old.clone(),
                _ => Arc::new(BackendState::new(cfg.clone())),
            })
            .collect();
        let by_name = states
            .iter()
            .enumerate()
            .map(|(i, s)| (s.config.name.clone(), i))
            .collect();
        let ring = Ring::new(configs.iter().map(|c| RingNode {
            name: c.name.clone(),
            weight: c.weight,
        }));
        Self {
            states,
            by_name,
            ring,
            bounded_load_factor,
        }
    }

    /// The backend named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<BackendState>> {
        self.by_name.get(name).and_then(|&i| self.states.get(i))
    }

    /// All backends, in config order.
    pub fn all(&self) -> &[Arc<BackendState>] {
        &self.states
    }

    /// The backend `key` goes to now, skipping unhealthy ones, ones in `tried`, and suspect ones unless every
    /// remaining one is suspect (then a suspect one is tried rather than refusing the client).
    pub fn pick(&self, key: &[u8], tried: &[String], now: Instant) -> Option<Arc<BackendState>> {
        let usable = |name: &str, skip_suspect: bool| {
            self.get(name).is_some_and(|b| {
                b.is_healthy()
                    && !tried.iter().any(|t| t == name)
                    && !(skip_suspect && b.is_suspect(now))
            })
        };
        self.select(key, |n| usable(n, true))
            .or_else(|| self.select(key, |n| usable(n, false)))
    }

    fn select(&self, key: &[u8], eligible: impl Fn(&str) -> bool) -> Option<Arc<BackendState>> {
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
        self.get(name).cloned()
    }
}

/// Connects to `backend` within `timeout` (name resolution included); the first resolved address is used.
pub async fn connect(backend: &BackendState, timeout: Duration) -> io::Result<TcpStream> {
    let attempt = async {
        let addr = tokio::net::lookup_host(backend.config.address.as_str())
            .await?
            .next()
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "backend address resolved to nothing",
                )
            })?;
        TcpStream::connect(addr).await
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "backend connect timed out",
            ))
        })
}

#[cfg(test)]
mod tests {
    use fleetgate_config::lb::ProxyVersion;

    use super::*;

    fn cfg(name: &str) -> BackendConfig {
        BackendConfig {
            name: name.into(),
            address: "127.0.0.1:1".into(),
            weight: 1,
            proxy_protocol: ProxyVersion::V2,
            send_client_cert: false,
            crc32c: false,
        }
    }

    #[test]
    fn same_key_same_backend_and_failover() {
        let b = Backends::new(
            &[cfg("broker-0"), cfg("broker-1"), cfg("broker-2")],
            None,
            None,
        );
        let now = Instant::now();
        let first = b.pick(b"client-a", &[], now).unwrap();
        assert_eq!(first.name(), b.pick(b"client-a", &[], now).unwrap().name());
        let second = b
            .pick(b"client-a", &[first.name().to_string()], now)
            .unwrap();
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
        let b = Backends::new(&[cfg("a"), cfg("b")], None, Some(1.25));
        let now = Instant::now();
        for s in b.all() {
            s.mark_failed(now);
        }
        assert!(b.pick(b"k", &[], now).is_some());
        assert!(b.pick(b"k", &["a".into(), "b".into()], now).is_none());
    }

    #[test]
    fn reload_keeps_state_by_name() {
        let old = Backends::new(&[cfg("a"), cfg("b")], None, None);
        let _guard = old.get("a").unwrap().track();
        let new = Backends::new(&[cfg("a"), cfg("c")], Some(&old), None);
        assert_eq!(new.get("a").unwrap().active(), 1);
        assert!(new.get("b").is_none());
    }
}
