//! Starting and stopping the LB: loads the config, builds the first snapshot, binds every listener and the admin
//! server (each bound socket logs `event="listening"`), starts the controller ([`crate::control`]: reloads,
//! health checks, discovery), and runs the drain.
//!
//! Drain (SIGTERM, or `POST /drain`), three phases: `/readyz` turns false at once and the LB keeps accepting for
//! `[drain] delay` (so load balancers in front notice); then it stops accepting and flips the relays' drain
//! switches at `[drain] rate` per second with jitter (each relay ends at a packet boundary: v5 clients get
//! DISCONNECT 0x8B, the backend a normal DISCONNECT); the process exits as soon as every connection is closed,
//! or cuts the rest when `shutdown_grace` (counted from the end of the delay) is over.
//!
//! What the broker node sees when the LB drains a relay: a normal DISCONNECT (0x00) and then the close. The node
//! therefore publishes no will and keeps a persistent session (clean session false / session expiry > 0), so a
//! device that reconnects promptly — to the same node, by the same hash, through another LB replica — resumes
//! its session with no spurious will. The device did not ask to disconnect, but it was moved deliberately by the
//! operator, not lost: a will announces an unexpected loss, and firing one for every drained device would make
//! every rolling LB restart look like a fleet-wide outage to whoever consumes wills. A device that then fails to
//! come back is covered by its session expiry, not by its will.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use fleetgate_config::ConfigError;
use fleetgate_config::discovery::DiscoveryConfig;
use fleetgate_config::lb::LbConfig;
use fleetgate_discovery::Source;
use fleetgate_ops::admin::{self, AdminState, Readiness};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin_routes::LbRoutes;
use crate::admission::Gauge;
use crate::control::{BoundAddrs, COMMAND_QUEUE, Command, Controller};
use crate::metrics::{BACKENDS, DRAINING, SNAPSHOT_GENERATION};
use crate::registry::Registry;
use crate::reload::{self, Loaded};
use crate::snapshot::Snapshot;
use crate::tls::TlsError;
use crate::{drain, listener};

/// Clients answered "server busy" at the same time on plain listeners (each holds a socket until its CONNECT
/// arrives or the peek timeout passes); beyond this, refused clients are simply closed.
pub const MAX_CONCURRENT_REFUSALS: usize = 1024;

/// After the grace period, how long to wait for aborted connections to finish their last write.
pub const ABORT_WAIT: Duration = Duration::from_secs(1);

/// How long start-up (or a reload that changes the discovery source) waits for the first discovered set: a DNS
/// round normally takes milliseconds; an LB that starts with an empty set refuses every client until it has one.
pub const DISCOVERY_STARTUP_WAIT: Duration = Duration::from_secs(5);

/// How often the drain looks for relays that registered after it started (they were mid-handshake).
const DRAIN_RESCAN: Duration = Duration::from_millis(50);

/// Deadline of an admin `POST /reload`: a reload reads a file and a few certificates.
pub const ADMIN_RELOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the LB could not start.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    /// The config file is invalid.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A certificate, key, CA or CRL could not be loaded.
    #[error("{0}")]
    Tls(#[from] TlsError),
    /// A socket could not be bound.
    #[error("cannot bind {role} on {addr}: {source}")]
    Bind {
        /// Listener name or `admin`.
        role: String,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Discovery could not be set up (resolver configuration).
    #[error("discovery: {0}")]
    Discovery(String),
    /// The LB's supervisor task panicked.
    #[error("load balancer task failed: {0}")]
    Task(String),
}

/// Connection IDs: a per-process prefix (start time) and a counter, so an ID is unique across restarts and is
/// the same string in the LB's logs and the backend's PROXY `UNIQUE_ID` TLV.
#[derive(Debug)]
pub struct ConnIds {
    prefix: u32,
    next: AtomicU64,
}

impl ConnIds {
    fn new() -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            prefix: (now.as_secs() as u32) ^ now.subsec_nanos(),
            next: AtomicU64::new(1),
        }
    }

    /// The next connection ID.
    pub fn next(&self) -> String {
        format!(
            "{:08x}-{:x}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// State shared by every connection: the current snapshot and what outlives a reload.
#[derive(Debug)]
pub struct Shared {
    /// The current runtime snapshot; each connection loads it once.
    pub snapshot: ArcSwap<Snapshot>,
    /// Open connections, all listeners (capped by the snapshot's `limits.max_connections`).
    pub total: Arc<Gauge>,
    /// "Server busy" answers in progress.
    pub refusing: Arc<Gauge>,
    /// Connection ID source.
    pub ids: ConnIds,
    /// Cancelled when the grace period is over: relays end.
    pub abort: CancellationToken,
    /// Relays open now: client IDs, backends, drain switches.
    pub registry: Arc<Registry>,
    /// What `/readyz` answers.
    pub readiness: Readiness,
    /// Cancelled by `POST /drain`: starts the same drain as SIGTERM.
    pub drain_requested: CancellationToken,
    /// Requests to the controller (`POST /reload`).
    pub control: mpsc::Sender<Command>,
    /// Bound addresses of the listeners in force.
    pub bound: BoundAddrs,
}

impl Shared {
    /// Asks the controller to reload the config file; the new generation or the error text.
    pub async fn reload(&self) -> Result<u64, String> {
        let (tx, rx) = oneshot::channel();
        self.control
            .send(Command::Reload(tx))
            .await
            .map_err(|_| "the LB is draining; reloads are over".to_string())?;
        match tokio::time::timeout(ADMIN_RELOAD_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err("the LB is draining; reloads are over".into()),
            Err(_) => Err("reload timed out".into()),
        }
    }
}

/// The load balancer.
#[derive(Debug)]
pub struct Lb;

/// What [`Lb::start_with`] needs besides the shutdown token.
#[derive(Debug)]
pub struct LbOptions {
    /// The config file (re-read on reloads, watched); `None` = reloads are refused.
    pub path: Option<PathBuf>,
    /// The validated config and its discovery source.
    pub loaded: Loaded,
    /// SIGHUP notifications.
    pub sighup: Option<mpsc::Receiver<()>>,
}

/// A running LB: its bound addresses and its completion.
#[derive(Debug)]
pub struct LbHandle {
    admin: Option<SocketAddr>,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl LbHandle {
    /// Bound address of every listener in force, in config order, with its name.
    pub fn listener_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.shared
            .bound
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Bound address of the listener called `name`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listener_addrs()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a)
    }

    /// Bound address of the admin server, if configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// The shared state (snapshot, gauges, registry), for tests and admin tooling.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Reloads the config file now (what SIGHUP and `POST /reload` do).
    pub async fn reload(&self) -> Result<u64, String> {
        self.shared.reload().await
    }

    /// Starts the drain (what SIGTERM and `POST /drain` do).
    pub fn drain(&self) {
        self.shared.drain_requested.cancel();
    }

    /// Whether the LB has finished.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits until the LB has shut down (after its shutdown token is cancelled or a drain).
    pub async fn wait(self) -> Result<(), LbError> {
        self.task.await.map_err(|e| LbError::Task(e.to_string()))
    }
}

impl Lb {
    /// Builds the snapshot (loading certificates), binds every socket and serves `config` until `shutdown`;
    /// without a file, reloads are refused (discovery, health checks and drains work as usual).
    pub async fn start(config: LbConfig, shutdown: CancellationToken) -> Result<LbHandle, LbError> {
        let options = LbOptions {
            path: None,
            loaded: Loaded::new(config),
            sighup: None,
        };
        Self::start_with(options, shutdown).await
    }

    /// Loads `path` and serves it, reloading on file changes, on `sighup` and on `POST /reload`.
    pub async fn start_file(
        path: &Path,
        sighup: Option<mpsc::Receiver<()>>,
        shutdown: CancellationToken,
    ) -> Result<LbHandle, LbError> {
        let loaded = reload::load(path)?;
        let options = LbOptions {
            path: Some(path.to_path_buf()),
            loaded,
            sighup,
        };
        Self::start_with(options, shutdown).await
    }

    /// Starts from `options`.
    pub async fn start_with(
        options: LbOptions,
        shutdown: CancellationToken,
    ) -> Result<LbHandle, LbError> {
        // Only the aws-lc-rs provider is used (explicitly everywhere); installing it as the process default
        // too keeps any library that asks for the default from picking another. Fails harmlessly if set.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let LbOptions {
            path,
            loaded,
            sighup,
        } = options;
        let config = loaded.config;
        let discovery: Option<DiscoveryConfig> = loaded.discovery;

        let conns = TaskTracker::new();
        let accepts = TaskTracker::new();
        let stop_accepting = CancellationToken::new();
        let background = CancellationToken::new();
        let (control_tx, control_rx) = mpsc::channel(COMMAND_QUEUE);

        // The first snapshot needs the first discovered set: a placeholder until the controller exists.
        let placeholder =
            Snapshot::build(config.clone(), &[], crate::snapshot::STATIC_SOURCE, None)?;
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::new(placeholder),
            total: Gauge::new(None),
            refusing: Gauge::new(None),
            ids: ConnIds::new(),
            abort: CancellationToken::new(),
            registry: Arc::new(Registry::default()),
            readiness: Readiness::new(),
            drain_requested: CancellationToken::new(),
            control: control_tx,
            bound: Arc::new(Mutex::new(Vec::new())),
        });
        let mut controller = Controller::new(
            shared.clone(),
            path,
            conns.clone(),
            accepts.clone(),
            stop_accepting.clone(),
            background.clone(),
        );
        let endpoints = controller
            .start_discovery(discovery.as_ref(), DISCOVERY_STARTUP_WAIT)
            .await?;
        let label = discovery.as_ref().map_or_else(
            || crate::snapshot::STATIC_SOURCE.to_owned(),
            |d| Source::from(&d.source).label(),
        );
        let first = Snapshot::build(config.clone(), &endpoints, &label, None)?;
        metrics::gauge!(BACKENDS).set(first.backends.all().len() as f64);
        metrics::gauge!(SNAPSHOT_GENERATION).set(first.generation as f64);
        shared.snapshot.store(first);

        let mut bound = Vec::new();
        for l in &config.listeners {
            let (socket, addr) =
                listener::bind(&l.name, l.bind)
                    .await
                    .map_err(|source| LbError::Bind {
                        role: l.name.clone(),
                        addr: l.bind,
                        source,
                    })?;
            bound.push((l.name.clone(), l.bind, addr, socket));
        }
        // Read once at start, like the bind address: a changed token applies at the next restart.
        let admin_token = match &config.admin_token_file {
            Some(path) => Some(fleetgate_config::lb::Secret::read_file(path)?),
            None => None,
        };
        let admin_socket = match config.admin_bind {
            Some(bind) => {
                let socket = TcpListener::bind(bind)
                    .await
                    .map_err(|source| LbError::Bind {
                        role: "admin".into(),
                        addr: bind,
                        source,
                    })?;
                let addr = socket.local_addr().unwrap_or(bind);
                tracing::info!(event = "listening", role = "admin", addr = %addr, "listening on admin {addr}");
                Some((addr, socket))
            }
            None => None,
        };
        controller.adopt(bound);
        controller.reconcile_health();
        controller.watch_files();

        let admin_stop = CancellationToken::new();
        let admin_addr = admin_socket.as_ref().map(|(a, _)| *a);
        let admin_join = admin_socket.map(|(_, socket)| {
            let state = AdminState {
                readiness: shared.readiness.clone(),
                metrics: fleetgate_ops::telemetry::install(),
                routes: Some(Arc::new(LbRoutes::new(shared.clone()))),
                // `[admin] token_file`: POST /reload and /drain need `Authorization: Bearer <token>`.
                token: admin_token.map(|t| t.expose().to_owned()),
            };
            tokio::spawn(admin::serve(socket, state, admin_stop.clone()))
        });
        shared.readiness.set(true);
        metrics::gauge!(DRAINING).set(0.0);

        let controller_stop = CancellationToken::new();
        let controller_task =
            tokio::spawn(controller.run(sighup, control_rx, controller_stop.clone()));

        let task_shared = shared.clone();
        let task = tokio::spawn(async move {
            let trigger = tokio::select! {
                () = shutdown.cancelled() => "shutdown",
                () = task_shared.drain_requested.cancelled() => "admin",
            };
            let shared = task_shared;
            // Phase 1: not ready; no more reloads; keep accepting for the delay.
            shared.readiness.set(false);
            metrics::gauge!(DRAINING).set(1.0);
            controller_stop.cancel();
            let _ = controller_task.await;
            let cfg = shared.snapshot.load().config.clone();
            tracing::info!(
                event = "draining",
                trigger,
                open = shared.total.open(),
                delay_ms = cfg.drain.delay.as_millis() as u64,
                rate = cfg.drain.rate
            );
            tokio::time::sleep(cfg.drain.delay).await;
            // Phase 2: stop accepting; move the relays off at the drain pace; exit as soon as all are closed.
            stop_accepting.cancel();
            accepts.close();
            accepts.wait().await;
            conns.close();
            let pacer = {
                let shared = shared.clone();
                let conns = conns.clone();
                let drain_cfg = cfg.drain.clone();
                tokio::spawn(async move {
                    while !conns.is_empty() {
                        let tokens = shared.registry.take_for_drain(None);
                        if tokens.is_empty() {
                            tokio::time::sleep(DRAIN_RESCAN).await;
                        } else {
                            drain::pace(tokens, &drain_cfg, "shutdown", &shared.abort).await;
                        }
                    }
                })
            };
            if tokio::time::timeout(cfg.shutdown_grace, conns.wait())
                .await
                .is_err()
            {
                // Phase 3: end the remaining relays.
                tracing::info!(event = "aborting", open = shared.total.open());
                shared.abort.cancel();
                let _ = tokio::time::timeout(ABORT_WAIT, conns.wait()).await;
            }
            pacer.abort();
            background.cancel();
            admin_stop.cancel();
            if let Some(join) = admin_join {
                let _ = join.await;
            }
            tracing::info!(event = "stopped");
        });
        Ok(LbHandle {
            admin: admin_addr,
            shared,
            task,
        })
    }
}

/// `fleetgate lb --config <path>`: loads the config, serves until `shutdown` is cancelled (or `POST /drain`),
/// then drains. Each `()` on `sighup` reloads the config, as do file changes and `POST /reload`.
pub async fn run(
    config_path: &Path,
    shutdown: CancellationToken,
    sighup: Option<mpsc::Receiver<()>>,
) -> Result<(), LbError> {
    let handle = Lb::start_file(config_path, sighup, shutdown).await?;
    handle.wait().await
}
