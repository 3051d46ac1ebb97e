//! Starting and stopping the LB: builds the runtime snapshot, binds every listener and the admin server (each
//! bound socket logs `event="listening"`), runs the accept loops, and shuts down in three phases — not ready and
//! stop accepting; drain open connections for up to `shutdown_grace`; then end the remaining relays.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use fleetgate_config::ConfigError;
use fleetgate_config::lb::LbConfig;
use fleetgate_ops::admin::{self, AdminState, Readiness};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::LbRoutes;
use crate::admission::{Gauge, HandshakeBudget, PerIpLimiter};
use crate::listener::accept_loop;
use crate::snapshot::Snapshot;
use crate::tls::TlsError;

/// Clients answered "server busy" at the same time on plain listeners (each holds a socket until its CONNECT
/// arrives or the peek timeout passes); beyond this, refused clients are simply closed.
pub const MAX_CONCURRENT_REFUSALS: usize = 1024;

/// After the grace period, how long to wait for aborted connections to finish their last write.
pub const ABORT_WAIT: Duration = Duration::from_secs(1);

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
    /// Open connections, all listeners.
    pub total: Arc<Gauge>,
    /// Open connections per listener (index = listener index).
    pub listener_gauges: Vec<Arc<Gauge>>,
    /// "Server busy" answers in progress.
    pub refusing: Arc<Gauge>,
    /// Per-source-IP rate limit.
    pub per_ip: Option<PerIpLimiter>,
    /// TLS handshake budget.
    pub handshakes: Option<HandshakeBudget>,
    /// Connection ID source.
    pub ids: ConnIds,
    /// Cancelled when the grace period is over: relays end.
    pub abort: CancellationToken,
}

/// The load balancer.
#[derive(Debug)]
pub struct Lb;

/// A running LB: its bound addresses and its completion.
#[derive(Debug)]
pub struct LbHandle {
    listeners: Vec<(String, SocketAddr)>,
    admin: Option<SocketAddr>,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl LbHandle {
    /// Bound address of every listener, in config order, with its name.
    pub fn listener_addrs(&self) -> &[(String, SocketAddr)] {
        &self.listeners
    }

    /// Bound address of the listener called `name`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// Bound address of the admin server, if configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// The shared state (snapshot, gauges), for tests and admin tooling.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Waits until the LB has shut down (after its shutdown token is cancelled).
    pub async fn wait(self) -> Result<(), LbError> {
        self.task.await.map_err(|e| LbError::Task(e.to_string()))
    }
}

impl Lb {
    /// Builds the snapshot (loading certificates), binds every socket and starts serving until `shutdown`.
    pub async fn start(config: LbConfig, shutdown: CancellationToken) -> Result<LbHandle, LbError> {
        // Only the aws-lc-rs provider is used (explicitly everywhere); installing it as the process default
        // too keeps any library that asks for the default from picking another. Fails harmlessly if set.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let limits = config.limits.clone();
        let listener_configs = config.listeners.clone();
        let admin_bind = config.admin_bind;
        let grace = config.shutdown_grace;
        let snapshot = Snapshot::build(config, None)?;

        let mut bound = Vec::new();
        for l in &listener_configs {
            let socket = TcpListener::bind(l.bind)
                .await
                .map_err(|source| LbError::Bind {
                    role: l.name.clone(),
                    addr: l.bind,
                    source,
                })?;
            let addr = socket.local_addr().unwrap_or(l.bind);
            tracing::info!(event = "listening", role = %l.name, addr = %addr, "listening on {} {addr}", l.name);
            bound.push((l.name.clone(), addr, socket));
        }
        let admin_socket = match admin_bind {
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

        let shared = Arc::new(Shared {
            snapshot: ArcSwap::new(snapshot),
            total: Gauge::new(limits.max_connections),
            listener_gauges: listener_configs
                .iter()
                .map(|l| Gauge::new(l.max_connections))
                .collect(),
            refusing: Gauge::new(Some(MAX_CONCURRENT_REFUSALS)),
            per_ip: limits
                .per_ip_rate
                .map(|(rate, burst)| PerIpLimiter::new(rate, burst)),
            handshakes: limits.tls_handshakes_per_second.map(HandshakeBudget::new),
            ids: ConnIds::new(),
            abort: CancellationToken::new(),
        });

        let tracker = TaskTracker::new();
        let stop_accepting = CancellationToken::new();
        let mut loops = Vec::new();
        let listeners: Vec<(String, SocketAddr)> =
            bound.iter().map(|(n, a, _)| (n.clone(), *a)).collect();
        for (index, (_, _, socket)) in bound.into_iter().enumerate() {
            loops.push(tokio::spawn(accept_loop(
                shared.clone(),
                index,
                socket,
                tracker.clone(),
                stop_accepting.clone(),
            )));
        }
        let readiness = Readiness::new();
        let admin_stop = CancellationToken::new();
        let admin_addr = admin_socket.as_ref().map(|(a, _)| *a);
        let admin_join = admin_socket.map(|(_, socket)| {
            let state = AdminState {
                readiness: readiness.clone(),
                metrics: fleetgate_ops::telemetry::install(),
                routes: Some(Arc::new(LbRoutes::new(shared.clone()))),
            };
            tokio::spawn(admin::serve(socket, state, admin_stop.clone()))
        });
        readiness.set(true);

        let task_shared = shared.clone();
        let task = tokio::spawn(async move {
            shutdown.cancelled().await;
            // Phase 1: not ready, stop accepting.
            readiness.set(false);
            stop_accepting.cancel();
            for l in loops {
                let _ = l.await;
            }
            tracker.close();
            tracing::info!(event = "draining", open = task_shared.total.open());
            // Phase 2: let connections finish, up to the grace period; return as soon as they have.
            if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
                // Phase 3: end the remaining relays.
                tracing::info!(event = "aborting", open = task_shared.total.open());
                task_shared.abort.cancel();
                let _ = tokio::time::timeout(ABORT_WAIT, tracker.wait()).await;
            }
            admin_stop.cancel();
            if let Some(join) = admin_join {
                let _ = join.await;
            }
            tracing::info!(event = "stopped");
        });
        Ok(LbHandle {
            listeners,
            admin: admin_addr,
            shared,
            task,
        })
    }
}

/// `fleetgate lb --config <path>`: loads the config, serves until `shutdown` is cancelled, then drains.
pub async fn run(config_path: &Path, shutdown: CancellationToken) -> Result<(), LbError> {
    let config = LbConfig::load(config_path)?;
    let handle = Lb::start(config, shutdown).await?;
    handle.wait().await
}
