//! The control plane: one task that owns every change to the running LB, so two changes never interleave.
//!
//! Triggers: the config file or a file it references changed (the watcher), SIGHUP, `POST /reload`, and a new
//! discovered backend set. A reload reads and validates the file, builds ONE complete snapshot (listeners' TLS
//! configs with certificates, CA and CRLs loaded again, backend set and ring, limits), binds any new listener
//! address, and only then swaps the snapshot with one `ArcSwap::store`; the old listener sockets are closed after
//! the new ones accept. Any failure (syntax, unknown field, bad certificate, bind error) leaves the old snapshot
//! in force, is logged with `file:line:column`, and counts `fleetgate_config_reloads_total{result="error"}`;
//! readiness is not touched. Established relays hold the snapshot they started with and are never dropped by a
//! reload; relays to a removed backend with `drain = true` are moved off at the `[drain]` pace.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use fleetgate_config::discovery::DiscoveryConfig;
use fleetgate_config::lb::LbConfig;
use fleetgate_config::watch::ConfigWatcher;
use fleetgate_discovery::{Discovery, Endpoint, EndpointSet, Source};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::admission::Gauge;
use crate::drain::{self, Tasks};
use crate::error::LbError;
use crate::health_check::Checkers;
use crate::listener::{self, Bound, accept_loop};
use crate::metrics::{BACKENDS, CONFIG_RELOADS, SNAPSHOT_GENERATION};
use crate::reload;
use crate::shared::{Command, Shared};
use crate::snapshot::{STATIC_SOURCE, Snapshot};

/// Quiet time after a file change before reloading: an editor save or a ConfigMap swap is several events.
const WATCH_DEBOUNCE: Duration = Duration::from_millis(200);

/// How long start-up (or a reload that changes the discovery source) waits for the first discovered set: a DNS
/// round normally takes milliseconds; an LB that starts with an empty set refuses every client until it has one.
pub(crate) const DISCOVERY_STARTUP_WAIT: Duration = Duration::from_secs(5);

/// A running accept loop.
#[derive(Debug)]
struct Running {
    bind: SocketAddr,
    stop: CancellationToken,
}

/// A running discovery and the settings it was started with.
struct RunningDiscovery {
    config: DiscoveryConfig,
    label: String,
    rx: watch::Receiver<EndpointSet>,
    stop: CancellationToken,
    _handle: Discovery,
}

/// The controller's state.
pub(crate) struct Controller {
    shared: Arc<Shared>,
    path: Option<PathBuf>,
    running: HashMap<String, Running>,
    gauges: HashMap<String, Arc<Gauge>>,
    checkers: Checkers,
    discovery: Option<RunningDiscovery>,
    watcher: Option<ConfigWatcher>,
    tasks: Tasks,
}

impl Controller {
    /// A controller for `shared`, reading `path` on reloads (none: reloads are refused); accept loops,
    /// connections, health checks and discovery run in `tasks`, which the drain stops.
    pub(crate) fn new(shared: Arc<Shared>, path: Option<PathBuf>, tasks: Tasks) -> Self {
        Self {
            shared,
            path,
            running: HashMap::new(),
            gauges: HashMap::new(),
            checkers: Checkers::default(),
            discovery: None,
            watcher: None,
            tasks,
        }
    }

    /// Starts discovery for `config` (if any) and waits up to `wait` for its first set; returns the set.
    pub(crate) async fn start_discovery(
        &mut self,
        config: Option<&DiscoveryConfig>,
        wait: Duration,
    ) -> Result<EndpointSet, LbError> {
        let Some(config) = config else {
            self.discovery = None;
            return Ok(Arc::default());
        };
        let stop = self.tasks.background.child_token();
        let handle = Discovery::spawn_from_config(config, stop.clone())
            .map_err(|e| LbError::Discovery(e.to_string()))?;
        let mut rx = handle.subscribe();
        let _ = tokio::time::timeout(wait, rx.wait_for(|set| !set.is_empty())).await;
        let set = rx.borrow_and_update().clone();
        if let Some(old) = self.discovery.take() {
            old.stop.cancel();
        }
        self.discovery = Some(RunningDiscovery {
            config: config.clone(),
            label: Source::from(&config.source).label(),
            rx,
            stop,
            _handle: handle,
        });
        Ok(set)
    }

    /// The discovery label of backends found now.
    pub(crate) fn source_label(&self) -> String {
        self.discovery
            .as_ref()
            .map_or_else(|| STATIC_SOURCE.to_owned(), |d| d.label.clone())
    }

    fn endpoints(&self) -> Vec<Endpoint> {
        self.discovery
            .as_ref()
            .map(|d| d.rx.borrow().as_ref().clone())
            .unwrap_or_default()
    }

    /// Starts accept loops for sockets already bound (at start-up).
    pub(crate) fn adopt(&mut self, bound: Vec<Bound>) {
        for socket in bound {
            self.start_loop(socket);
        }
        self.publish_addrs();
    }

    fn start_loop(&mut self, bound: Bound) {
        let Bound {
            name,
            bind,
            addr,
            socket,
        } = bound;
        let gauge = self
            .gauges
            .entry(name.clone())
            .or_insert_with(|| Gauge::new(Some(&name)))
            .clone();
        let stop = self.tasks.stop_accepting.child_token();
        self.tasks.accepts.spawn(accept_loop(
            self.shared.clone(),
            Arc::from(name.as_str()),
            gauge,
            socket,
            self.tasks.conns.clone(),
            stop.clone(),
        ));
        let mut addrs = self
            .shared
            .bound
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        addrs.retain(|(n, _)| *n != name);
        addrs.push((name.clone(), addr));
        drop(addrs);
        self.running.insert(name, Running { bind, stop });
    }

    fn publish_addrs(&self) {
        let snapshot = self.shared.snapshot.load();
        let mut addrs = self
            .shared
            .bound
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        addrs.retain(|(n, _)| self.running.contains_key(n));
        addrs.sort_by_key(|(n, _)| {
            snapshot
                .listeners
                .iter()
                .position(|l| l.name == *n)
                .unwrap_or(usize::MAX)
        });
    }

    /// Starts watching the config file and the files it references.
    pub(crate) fn watch_files(&mut self) {
        let Some(path) = self.path.clone() else {
            return;
        };
        match fleetgate_config::watch::watch(&path, WATCH_DEBOUNCE) {
            Ok(w) => self.watcher = Some(w),
            Err(e) => {
                tracing::warn!(event = "config_watch_failed", error = %e, "config changes on disk will not reload; SIGHUP and POST /reload still do")
            }
        }
        self.watch_referenced();
    }

    fn watch_referenced(&mut self) {
        let files = reload::referenced_files(&self.shared.snapshot.load().config);
        if let Some(w) = self.watcher.as_mut() {
            for f in files {
                if let Err(e) = w.add(&f) {
                    tracing::warn!(event = "config_watch_failed", file = %f.display(), error = %e);
                }
            }
        }
    }

    /// Health checks for the snapshot in force.
    pub(crate) fn reconcile_health(&mut self) {
        let snapshot = self.shared.snapshot.load_full();
        self.checkers
            .reconcile(&snapshot.backends, &self.tasks.background);
    }

    /// Serves triggers until `stop` (the drain has begun: no more changes).
    pub(crate) async fn run(
        mut self,
        mut sighup: Option<mpsc::Receiver<()>>,
        mut commands: mpsc::Receiver<Command>,
        stop: CancellationToken,
    ) {
        loop {
            let trigger = tokio::select! {
                () = stop.cancelled() => return,
                Some(()) = recv_opt(&mut sighup) => "sighup",
                Some(()) = changed_opt(&mut self.watcher) => "file_changed",
                Some(Command::Reload(reply)) = commands.recv() => {
                    let result = self.reload("admin").await;
                    let _ = reply.send(result);
                    continue;
                }
                Some(()) = discovered(&mut self.discovery) => {
                    self.apply_endpoints();
                    continue;
                }
            };
            let _ = self.reload(trigger).await;
        }
    }

    /// A new discovered set: same config and certificates, new backend set.
    fn apply_endpoints(&mut self) {
        let endpoints = self.endpoints();
        let current = self.shared.snapshot.load_full();
        let next = current.with_endpoints(&endpoints, &self.source_label());
        self.swap(&current, next, "discovery");
    }

    /// One reload; the new generation or the error text.
    async fn reload(&mut self, trigger: &'static str) -> Result<u64, String> {
        let result = self.try_reload().await;
        match &result {
            Ok(generation) => {
                metrics::counter!(CONFIG_RELOADS, "result" => "ok").increment(1);
                tracing::info!(
                    event = "config_reload",
                    result = "ok",
                    trigger,
                    generation = *generation,
                    "config reloaded"
                );
            }
            Err(e) => {
                metrics::counter!(CONFIG_RELOADS, "result" => "error").increment(1);
                tracing::error!(event = "config_reload", result = "error", trigger, error = %e, "config reload rejected; the previous config stays in force");
            }
        }
        result
    }

    async fn try_reload(&mut self) -> Result<u64, String> {
        let Some(path) = self.path.clone() else {
            return Err("this LB was started without a config file".into());
        };
        let config = LbConfig::load(&path).map_err(|e| e.to_string())?;
        let discovery = reload::discovery_source(&config);
        if config.admin != self.shared.snapshot.load().config.admin {
            tracing::warn!(
                event = "config_reload_partial",
                "[admin] changes (bind, probe_bind, token_file, limits) take effect at the next restart"
            );
        }
        if config.limits.max_buffered_bytes != self.shared.buffers.max() {
            tracing::warn!(
                event = "config_reload_partial",
                "[limits] max_buffered_bytes changes take effect at the next restart"
            );
        }
        // Discovery first (a changed source is restarted; its first set is waited for briefly).
        let same_discovery = match (&self.discovery, discovery) {
            (Some(d), Some(new)) => d.config == *new,
            (None, None) => true,
            _ => false,
        };
        if !same_discovery {
            self.start_discovery(discovery, DISCOVERY_STARTUP_WAIT)
                .await
                .map_err(|e| e.to_string())?;
        }
        let current = self.shared.snapshot.load_full();
        let next = Snapshot::build(
            config,
            &self.endpoints(),
            &self.source_label(),
            Some(&current),
        )
        .map_err(|e| e.to_string())?;

        // New sockets before the swap: a bind failure rejects the whole reload.
        let mut fresh = Vec::new();
        for l in &next.config.listeners {
            let keep = self.running.get(&l.name).is_some_and(|r| r.bind == l.bind);
            if !keep {
                let socket = listener::bind(&l.name, l.bind)
                    .await
                    .map_err(|e| format!("cannot bind {} on {}: {e}", l.name, l.bind))?;
                fresh.push(socket);
            }
        }
        let generation = next.generation;
        self.swap(&current, next, "config");
        // Then the old sockets: replaced or removed listeners stop accepting (their relays go on).
        let wanted: Vec<String> = self
            .shared
            .snapshot
            .load()
            .config
            .listeners
            .iter()
            .map(|l| l.name.clone())
            .collect();
        for socket in fresh {
            if let Some(old) = self.running.remove(&socket.name) {
                old.stop.cancel();
            }
            self.start_loop(socket);
        }
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|n| !wanted.contains(n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(old) = self.running.remove(&name) {
                old.stop.cancel();
                tracing::info!(event = "listener_removed", listener = %name);
            }
        }
        self.publish_addrs();
        self.watch_referenced();
        Ok(generation)
    }

    /// Swaps `next` in (one store), then starts what follows from it: health tasks, paced moves off removed
    /// backends with `drain = true`.
    fn swap(&mut self, current: &Snapshot, next: Arc<Snapshot>, why: &'static str) {
        let removed: Vec<(String, bool)> = current
            .backends
            .all()
            .iter()
            .filter(|b| next.backends.get(b.name()).is_none())
            .map(|b| (b.name().to_owned(), b.config.drain))
            .collect();
        let added: Vec<String> = next
            .backends
            .all()
            .iter()
            .filter(|b| current.backends.get(b.name()).is_none())
            .map(|b| b.name().to_owned())
            .collect();
        let drain_cfg = next.config.drain.clone();
        metrics::gauge!(BACKENDS).set(next.backends.all().len() as f64);
        metrics::gauge!(SNAPSHOT_GENERATION).set(next.generation as f64);
        tracing::info!(event = "snapshot_swapped", why, generation = next.generation, backends = next.backends.all().len(), added = ?added, removed = ?removed.iter().map(|(n, _)| n).collect::<Vec<_>>());
        self.shared.snapshot.store(next);
        self.reconcile_health();
        for (name, drains) in removed {
            if !drains {
                continue;
            }
            let tokens = self.shared.registry.take_for_drain(Some(&name));
            tracing::info!(event = "backend_drain", backend = %name, connections = tokens.len(), rate = drain_cfg.rate, "moving clients off a removed backend");
            let cfg = drain_cfg.clone();
            let abort = self.shared.abort.clone();
            tokio::spawn(async move {
                drain::pace(tokens, &cfg, "backend_removed", &abort).await;
            });
        }
    }
}

async fn recv_opt(rx: &mut Option<mpsc::Receiver<()>>) -> Option<()> {
    match rx {
        Some(r) => match r.recv().await {
            Some(()) => Some(()),
            None => {
                *rx = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

async fn changed_opt(w: &mut Option<ConfigWatcher>) -> Option<()> {
    match w {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}

async fn discovered(d: &mut Option<RunningDiscovery>) -> Option<()> {
    match d {
        Some(d) => match d.rx.changed().await {
            Ok(()) => Some(()),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}
