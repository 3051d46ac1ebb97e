//! Starting and stopping a node: bind every listener (MQTT, admin, cluster) up front so errors surface at start,
//! spawn the accept loops, then on shutdown — not ready and stop accepting; in a cluster, hand every session to
//! the node the ring without us assigns (clients get v5 DISCONNECT 0x9C); let the remaining connections close
//! (each sends its v5 DISCONNECT 0x8B) within `shutdown_grace`; return as soon as they are all gone.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fleetgate_config::node::NodeConfig;
use fleetgate_ops::admin::{self, AdminState, Readiness};
use fleetgate_ops::telemetry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin_routes::NodeRoutes;
use crate::auth::AuthState;
use crate::broker::Broker;
use crate::cluster::{self, Cluster};
use crate::metrics::Metrics;
use crate::{BrokerError, events, listener};

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

impl Node {
    /// Binds every listener and starts serving; runs until `shutdown` is cancelled (then see [`NodeHandle::wait`]).
    pub async fn start(
        config: NodeConfig,
        shutdown: CancellationToken,
    ) -> Result<NodeHandle, BrokerError> {
        Self::start_with_auth(config, AuthState::disabled(), shutdown).await
    }

    /// Like [`Node::start`], authenticating and authorizing clients with `auth`.
    pub async fn start_with_auth(
        config: NodeConfig,
        auth: Arc<AuthState>,
        shutdown: CancellationToken,
    ) -> Result<NodeHandle, BrokerError> {
        let prometheus = telemetry::install();
        let timers = CancellationToken::new();
        let broker = Arc::new(Broker::new(
            config.name.clone(),
            config.limits.clone(),
            Metrics::register(),
            timers.clone(),
        ));

        let mut bound = Vec::new();
        for l in &config.listeners {
            let pair =
                listener::bind(l, auth.clone())
                    .await
                    .map_err(|source| BrokerError::Bind {
                        addr: l.bind,
                        source,
                    })?;
            bound.push(pair);
        }
        let admin_listener = match config.admin_bind {
            Some(addr) => {
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(|source| BrokerError::Bind { addr, source })?;
                let local = l
                    .local_addr()
                    .map_err(|source| BrokerError::Bind { addr, source })?;
                events::listening("admin", local);
                Some((l, local))
            }
            None => None,
        };

        let readiness = Readiness::new();
        let cluster = match &config.cluster {
            Some(c) => {
                let l = TcpListener::bind(c.bind)
                    .await
                    .map_err(|source| BrokerError::Bind {
                        addr: c.bind,
                        source,
                    })?;
                let local = l.local_addr().map_err(|source| BrokerError::Bind {
                    addr: c.bind,
                    source,
                })?;
                events::listening("cluster", local);
                let cluster = Arc::new(Cluster::new(
                    &config.name,
                    c.clone(),
                    local,
                    config.limits.max_packet_size,
                    readiness.clone(),
                )?);
                broker.set_cluster(cluster.clone());
                // Links and discovery start before any client is accepted; the node is not ready until synced.
                cluster::link::start(cluster.clone(), broker.clone(), l)?;
                Some(cluster)
            }
            None => None,
        };
        let tracker = TaskTracker::new();
        // Connections end at `conns`: at once without a cluster, after the drain handoff with one.
        let conns = CancellationToken::new();
        let mqtt_addrs = bound.iter().map(|(_, ctx)| ctx.local_addr).collect();
        let mut accept_loops = Vec::new();
        for (l, ctx) in bound {
            accept_loops.push(tokio::spawn(listener::accept_loop(
                l,
                ctx,
                broker.clone(),
                tracker.clone(),
                shutdown.clone(),
                conns.clone(),
            )));
        }
        // The admin server outlives the drain so `/readyz` answers "not ready" while connections close.
        let admin_shutdown = CancellationToken::new();
        let admin_addr = admin_listener.as_ref().map(|(_, a)| *a);
        let admin_task = admin_listener.map(|(l, _)| {
            let state = AdminState {
                readiness: readiness.clone(),
                metrics: prometheus,
                routes: Some(Arc::new(NodeRoutes::new(broker.clone()))),
                // The node's admin routes are all GET: nothing to guard with a token.
                token: None,
            };
            tokio::spawn(admin::serve(l, state, admin_shutdown.clone()))
        });
        // In a cluster, ready once synced with every reachable peer (the cluster sets it).
        if cluster.is_none() {
            readiness.set(true);
        }

        let grace = config.shutdown_grace;
        let supervisor = tokio::spawn(supervise(
            Stop {
                shutdown,
                conns,
                readiness: readiness.clone(),
                timers,
                admin_shutdown,
            },
            accept_loops,
            tracker,
            grace,
            broker.clone(),
            cluster,
            admin_task,
        ));
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

async fn supervise(
    stop: Stop,
    accept_loops: Vec<JoinHandle<()>>,
    tracker: TaskTracker,
    grace: Duration,
    broker: Arc<Broker>,
    cluster: Option<Arc<Cluster>>,
    admin_task: Option<JoinHandle<()>>,
) {
    let Stop {
        shutdown,
        conns,
        readiness,
        timers,
        admin_shutdown,
    } = stop;
    shutdown.cancelled().await;
    readiness.set(false);
    for a in accept_loops {
        let _ = a.await;
    }
    let deadline = tokio::time::Instant::now() + grace;
    if let Some(c) = &cluster {
        events::shutdown("handoff", tracker.len());
        let _ = tokio::time::timeout_at(deadline, c.drain(&broker)).await;
    }
    conns.cancel();
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
    timers.cancel();
    events::shutdown(
        if drained { "drained" } else { "grace_expired" },
        tracker.len(),
    );
    admin_shutdown.cancel();
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

/// What `fleetgate node --config FILE` runs: load the config, start, serve until `shutdown`, drain.
/// `reload` delivers SIGHUP (`fleetgate_ops::signals::spawn`): the `[auth]` section, password and ACL files are
/// re-read then, and whenever one of them changes on disk.
pub async fn run(
    config_path: &Path,
    shutdown: CancellationToken,
    reload: Option<tokio::sync::mpsc::Receiver<()>>,
) -> Result<(), BrokerError> {
    let config = NodeConfig::load(config_path)?;
    let auth = AuthState::load(config_path, &config)?;
    let reloader = crate::auth_reload::spawn(auth.clone(), reload, shutdown.clone());
    let handle = match Node::start_with_auth(config, auth, shutdown).await {
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
