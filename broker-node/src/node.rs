//! Starting and stopping a node: bind every listener (MQTT and admin) up front so errors surface at start,
//! spawn the accept loops, then on shutdown — not ready and stop accepting; let connections close (each sends
//! its v5 DISCONNECT 0x8B) within `shutdown_grace`; return as soon as they are all gone.

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
use crate::broker::Broker;
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
            let pair = listener::bind(l)
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
        let tracker = TaskTracker::new();
        let mqtt_addrs = bound.iter().map(|(_, ctx)| ctx.local_addr).collect();
        let mut accept_loops = Vec::new();
        for (l, ctx) in bound {
            accept_loops.push(tokio::spawn(listener::accept_loop(
                l,
                ctx,
                broker.clone(),
                tracker.clone(),
                shutdown.clone(),
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
            };
            tokio::spawn(admin::serve(l, state, admin_shutdown.clone()))
        });
        readiness.set(true);

        let grace = config.shutdown_grace;
        let supervisor = tokio::spawn(supervise(
            shutdown,
            readiness.clone(),
            accept_loops,
            tracker,
            grace,
            timers,
            admin_shutdown,
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

#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename these
async fn supervise(
    shutdown: CancellationToken,
    readiness: Readiness,
    accept_loops: Vec<JoinHandle<()>>,
    tracker: TaskTracker,
    grace: Duration,
    timers: CancellationToken,
    admin_shutdown: CancellationToken,
    admin_task: Option<JoinHandle<()>>,
) {
    shutdown.cancelled().await;
    readiness.set(false);
    for a in accept_loops {
        let _ = a.await;
    }
    tracker.close();
    events::shutdown("draining", tracker.len());
    let drained = tokio::time::timeout(grace, tracker.wait()).await.is_ok();
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
pub async fn run(config_path: &Path, shutdown: CancellationToken) -> Result<(), BrokerError> {
    let config = NodeConfig::load(config_path)?;
    let handle = Node::start(config, shutdown).await?;
    handle.wait().await;
    Ok(())
}
