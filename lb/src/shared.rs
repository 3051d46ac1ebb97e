//! The state every connection shares, one level below the pipeline: the snapshot in force (swapped by
//! [`crate::control`]), the connection gauges, the relay registry, readiness, the abort switch and the mailbox
//! to the controller. Built once by [`crate::server`]; read by [`crate::conn`], [`crate::listener`],
//! [`crate::admin_routes`] and [`crate::drain`].
//!
//! It owns no behaviour beyond handing a reload request to the controller and naming connections: every module
//! that changes something here says so in its own docs.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use fleetgate_ops::admin::Readiness;
use fleetgate_ops::sources::SourceCounts;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::admission::Gauge;
use crate::buffers::BufferBudget;
use crate::registry::Registry;
use crate::snapshot::Snapshot;

/// Deadline of an admin `POST /reload`: a reload reads a file and a few certificates.
const ADMIN_RELOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Commands queued to the controller; a handful is plenty (each reload reads the latest file anyway).
pub(crate) const COMMAND_QUEUE: usize = 8;

/// A request to the controller ([`crate::control`]), which owns every change to the running LB.
#[derive(Debug)]
pub(crate) enum Command {
    /// Reload the config file; the answer is the new snapshot generation or the error text.
    Reload(oneshot::Sender<Result<u64, String>>),
}

/// Bound addresses of the listeners in force, by name, in config order (for the handle and tests).
pub(crate) type BoundAddrs = Arc<Mutex<Vec<(String, SocketAddr)>>>;

/// Connection IDs: a per-process prefix (start time) and a counter, so an ID is unique across restarts and is
/// the same string in the LB's logs and the backend's PROXY `UNIQUE_ID` TLV.
#[derive(Debug)]
pub(crate) struct ConnIds {
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
    pub(crate) fn next(&self) -> String {
        format!(
            "{:08x}-{:x}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// State shared by every connection: the current snapshot and what outlives a reload.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The current runtime snapshot; each connection loads it once.
    pub(crate) snapshot: ArcSwap<Snapshot>,
    /// Open connections, all listeners (capped by the snapshot's `limits.max_connections`).
    pub(crate) total: Arc<Gauge>,
    /// "Server busy" answers in progress (capped by [`crate::conn::MAX_CONCURRENT_REFUSALS`]).
    pub(crate) refusing: Arc<Gauge>,
    /// Open connections per client source address (capped by the snapshot's `limits.max_connections_per_ip`).
    pub(crate) sources: Arc<SourceCounts>,
    /// Bytes the relays may hold in buffers for clients (`limits.max_buffered_bytes` of the first snapshot: a
    /// reload does not resize it).
    pub(crate) buffers: Arc<BufferBudget>,
    /// Connection ID source.
    pub(crate) ids: ConnIds,
    /// Cancelled when the grace period is over: relays end.
    pub(crate) abort: CancellationToken,
    /// Relays open now: client IDs, backends, drain switches.
    pub(crate) registry: Arc<Registry>,
    /// What `/readyz` answers.
    pub(crate) readiness: Readiness,
    /// Cancelled by `POST /drain`: starts the same drain as SIGTERM.
    pub(crate) drain_requested: CancellationToken,
    /// Requests to the controller (`POST /reload`).
    pub(crate) control: mpsc::Sender<Command>,
    /// Bound addresses of the listeners in force.
    pub(crate) bound: BoundAddrs,
}

impl Shared {
    /// Fresh shared state serving `snapshot`, not ready yet, sending reload requests to `control`.
    pub(crate) fn new(snapshot: Arc<Snapshot>, control: mpsc::Sender<Command>) -> Arc<Self> {
        let buffers = BufferBudget::new(snapshot.config.limits.max_buffered_bytes);
        Arc::new(Self {
            snapshot: ArcSwap::new(snapshot),
            total: Gauge::new(None),
            refusing: Gauge::new(None),
            sources: SourceCounts::new(),
            buffers,
            ids: ConnIds::new(),
            abort: CancellationToken::new(),
            registry: Arc::new(Registry::default()),
            readiness: Readiness::new(),
            drain_requested: CancellationToken::new(),
            control,
            bound: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// Asks the controller to reload the config file; the new generation or the error text.
    pub(crate) async fn reload(&self) -> Result<u64, String> {
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
