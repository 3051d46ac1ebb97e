//! Starting and stopping a node, the top of the layers: bind every socket (cluster, MQTT, admin) up front so
//! errors surface at start, build the cluster, the broker and the listeners, spawn the accept loops; then on
//! shutdown — not ready and stop accepting; in a cluster, hand every session to the node the ring without us
//! assigns (clients get v5 DISCONNECT 0x9C); let the remaining connections close (each sends its v5 DISCONNECT
//! 0x8B) within `shutdown_grace`; return as soon as they are all gone.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fleetgate_config::node::{NodeConfig, StorageMode};
use fleetgate_ops::admin::{AdminSockets, AdminState, Readiness};
use fleetgate_ops::telemetry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::{self, Access};
use crate::admin_routes::NodeRoutes;
use crate::broker::{Broker, ClusterHooks};
use crate::cluster::{self, Cluster};
use crate::error::BrokerError;
use crate::events;
use crate::listener::Listener;
use crate::metrics::Metrics;
use crate::store::{self, Store};

/// The broker node.
#[derive(Debug)]
pub struct Node;

/// A running node.
#[derive(Debug)]
pub struct NodeHandle {
    mqtt_addrs: Vec<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    broker: Arc<Broker>,
    readiness: Readiness,
    supervisor: JoinHandle<()>,
}

/// Binds `addr`, logging the bound address as `role`.
async fn bind(
    role: &'static str,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), BrokerError> {
    let bind_error = |source| BrokerError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    events::listening(role, local);
    Ok((listener, local))
}

impl Node {
    /// Binds every listener and starts serving, every client admitted anonymously; runs until `shutdown` is
    /// cancelled (then see [`NodeHandle::wait`]).
    pub async fn start(
        config: NodeConfig,
        shutdown: CancellationToken,
    ) -> Result<NodeHandle, BrokerError> {
        Self::start_with_access(config, Access::disabled(), shutdown).await
    }

    /// Like [`Node::start`], authenticating and authorizing clients with `access`.
    pub(crate) async fn start_with_access(
        config: NodeConfig,
        access: Arc<Access>,
        shutdown: CancellationToken,
    ) -> Result<NodeHandle, BrokerError> {
        let prometheus = telemetry::install();
        let timers = CancellationToken::new();
        let readiness = Readiness::new();

        // The cluster first: the broker tells it what changes.
        let cluster = match &config.cluster {
            Some(c) => {
                let (socket, local) = bind("cluster", c.bind).await?;
                let cluster = Arc::new(Cluster::new(
                    &config.name,
                    c.clone(),
                    local,
                    config.limits.clone(),
                    access.clone(),
                    readiness.clone(),
                )?);
                Some((cluster, socket))
            }
            None => None,
        };
        let hooks = cluster
            .as_ref()
            .map(|(c, _)| c.clone() as Arc<dyn ClusterHooks>);
        let broker = Broker::new(
            config.name.clone(),
            config.limits.clone(),
            Metrics::register(),
            timers.clone(),
            hooks,
        );
        // The store is read back before any client or peer is served: sessions are where they were.
        let (broker, store) = match &config.storage {
            StorageMode::Memory => (Arc::new(broker), None),
            StorageMode::Disk { path, max_bytes } => {
                let started = std::time::Instant::now();
                let max_value = store::max_value_len(config.limits.max_packet_size);
                let (store, recovered) = Store::open(path, *max_bytes, max_value)?;
                let broker = Arc::new(broker.with_store(store.clone()));
                let counts = recovered.counts();
                store::restore(&broker, &store, recovered);
                events::store_recovered(path, counts, started.elapsed());
                // A store whose commit failed takes no more writes until the process restarts (fjall poisons
                // itself): the node shuts down as on SIGTERM (in a cluster its sessions go to its peers) and
                // its supervisor (Kubernetes) starts it again.
                let (watched, stop) = (store.clone(), shutdown.clone());
                tokio::spawn(async move {
                    let failed = tokio::select! {
                        r = crate::broker::wait_committed(&*watched, u64::MAX) => r.is_err(),
                        () = stop.cancelled() => false,
                    };
                    if failed {
                        events::store_failed_shutdown();
                        stop.cancel();
                    }
                });
                (broker, Some(store))
            }
        };

        let cluster_handle = cluster.as_ref().map(|(c, _)| c.clone());
        let mut listeners = Vec::new();
        for l in &config.listeners {
            let listener =
                Listener::bind(l, access.clone(), broker.clone(), cluster_handle.clone())
                    .await
                    .map_err(|source| BrokerError::Bind {
                        addr: l.bind,
                        source,
                    })?;
            listeners.push(listener);
        }
        // `[admin]`, its token file read now: a bad one stops the start.
        let admin_sockets = match &config.admin {
            Some(admin) => Some(AdminSockets::bind(admin).await?),
            None => None,
        };

        // Links and discovery start before any client is accepted; the node is not ready until synced.
        if let Some((c, socket)) = cluster {
            cluster::link::start(c, broker.clone(), socket)?;
        }
        let tracker = TaskTracker::new();
        // Connections end at `conns`: at once without a cluster, after the drain handoff with one.
        let conns = CancellationToken::new();
        let mqtt_addrs = listeners.iter().map(|l| l.local_addr).collect();
        let accept_loops = listeners
            .into_iter()
            .map(|l| tokio::spawn(l.accept_loop(tracker.clone(), shutdown.clone(), conns.clone())))
            .collect();
        // The admin server outlives the drain so `/readyz` answers "not ready" while connections close.
        let admin_shutdown = CancellationToken::new();
        let admin_addr = admin_sockets.as_ref().map(AdminSockets::admin_addr);
        let admin_task = admin_sockets.map(|sockets| {
            let state = AdminState {
                readiness: readiness.clone(),
                metrics: prometheus,
                // `/clients/{id}` reveals clients: with `[admin] token_file` it needs the token.
                routes: Some(Arc::new(NodeRoutes::new(broker.clone()))),
            };
            tokio::spawn(sockets.serve(state, admin_shutdown.clone()))
        });
        // In a cluster, ready once synced with every reachable peer (the cluster sets it).
        if cluster_handle.is_none() {
            readiness.set(true);
        }

        let supervisor = tokio::spawn(supervise(Supervised {
            stop: Stop {
                shutdown,
                conns,
                readiness: readiness.clone(),
                timers,
                admin_shutdown,
            },
            accept_loops,
            tracker,
            grace: config.shutdown_grace,
            broker: broker.clone(),
            cluster: cluster_handle,
            admin_task,
            store,
        }));
        Ok(NodeHandle {
            mqtt_addrs,
            admin_addr,
            broker,
            readiness,
            supervisor,
        })
    }
}

/// The tokens and flags shutdown flips, in order.
struct Stop {
    shutdown: CancellationToken,
    conns: CancellationToken,
    readiness: Readiness,
    timers: CancellationToken,
    admin_shutdown: CancellationToken,
}

/// What the supervisor stops, in order.
struct Supervised {
    stop: Stop,
    accept_loops: Vec<JoinHandle<()>>,
    tracker: TaskTracker,
    grace: Duration,
    broker: Arc<Broker>,
    cluster: Option<Arc<Cluster>>,
    admin_task: Option<JoinHandle<()>>,
    store: Option<Arc<Store>>,
}

async fn supervise(node: Supervised) {
    let Supervised {
        stop,
        accept_loops,
        tracker,
        grace,
        broker,
        cluster,
        admin_task,
        store,
    } = node;
    stop.shutdown.cancelled().await;
    stop.readiness.set(false);
    for a in accept_loops {
        let _ = a.await;
    }
    let deadline = tokio::time::Instant::now() + grace;
    if let Some(c) = &cluster {
        events::shutdown("handoff", tracker.len());
        let _ = tokio::time::timeout_at(deadline, c.drain(&broker)).await;
    }
    stop.conns.cancel();
    broker.shutdown_connections();
    tracker.close();
    events::shutdown("draining", tracker.len());
    let drained = tokio::time::timeout_at(deadline, tracker.wait())
        .await
        .is_ok();
    if let Some(c) = &cluster {
        // What the last connections published is written and applied by the peers before the links close.
        let _ = tokio::time::timeout_at(deadline, c.settle()).await;
        c.shutdown.cancel();
    }
    stop.timers.cancel();
    if let Some(store) = store {
        // What the last connections changed is committed before the process ends.
        let _ = tokio::task::spawn_blocking(move || store.close()).await;
    }
    events::shutdown(
        if drained { "drained" } else { "grace_expired" },
        tracker.len(),
    );
    stop.admin_shutdown.cancel();
    if let Some(t) = admin_task {
        let _ = t.await;
    }
}

impl NodeHandle {
    /// Bound MQTT listener addresses, in config order.
    pub fn mqtt_addrs(&self) -> &[SocketAddr] {
        &self.mqtt_addrs
    }

    /// Bound admin address, when an `[admin]` section is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The shared broker state (tests and admin tooling).
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// True while the node accepts traffic.
    pub fn is_ready(&self) -> bool {
        self.readiness.is_ready()
    }

    /// Waits until the node has shut down (after the shutdown token was cancelled).
    pub async fn wait(self) {
        let _ = self.supervisor.await;
    }
}

/// What `fleetgate node --config FILE` runs with the loaded `config` (the caller may have applied command-line
/// overrides): load the `[auth]` files, start, serve until `shutdown`, drain. `reload` delivers SIGHUP
/// (`fleetgate_ops::signals::spawn`): the `[auth]` section, password and ACL files are re-read then, and whenever
/// one of them changes on disk.
pub async fn run(
    config_path: &Path,
    config: NodeConfig,
    shutdown: CancellationToken,
    reload: Option<tokio::sync::mpsc::Receiver<()>>,
) -> Result<(), BrokerError> {
    let access = Access::load(config_path, &config)?;
    let reloader = access::reload::spawn(access.clone(), reload, shutdown.clone());
    let handle = match Node::start_with_access(config, access, shutdown).await {
        Ok(handle) => handle,
        Err(e) => {
            reloader.abort();
            return Err(e);
        }
    };
    handle.wait().await;
    // The reload task ends with the shutdown token.
    let _ = reloader.await;
    Ok(())
}
