//! Cluster membership from discovery (`[cluster] peers_from`): a static list or a headless Service's DNS
//! records, refreshed by `fleetgate_discovery`; every endpoint but this node gets a dialer (see [`link`]).
//! Sits beside the configured `peers`, at start ([`start`]) and on every change of the discovered set.
//!
//! This node is skipped by name (with SRV records the endpoint name is the pod name, our ring key) and by
//! address (A records name endpoints `"<ip>:<port>"`); a dial that still reaches us ends at the Hello
//! (`SelfDial`). A dialer of an address that left the set stops after its next failed attempt.
//!
//! [`link`]: super::link

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fleetgate_config::discovery::DiscoveryConfig;
use fleetgate_discovery::{Discovery, Endpoint, ResolveError};

use super::Cluster;
use super::link::{DialOrigin, spawn_dialer};
use crate::broker::Broker;

/// How long readiness waits for the first discovered set: a DNS name with no records yet (the first pod of a
/// StatefulSet) must not keep the node unready; peers found later join as they come.
const FIRST_SET_WAIT: Duration = Duration::from_secs(5);

/// Starts discovering peers as `cfg` says; the node counts as having tried its peers once the first set was
/// dialed (or after `FIRST_SET_WAIT`).
pub(crate) fn start(
    cluster: &Arc<Cluster>,
    broker: &Arc<Broker>,
    cfg: &DiscoveryConfig,
) -> Result<(), ResolveError> {
    let discovery = Discovery::spawn_from_config(cfg, cluster.shutdown.child_token())?;
    let mut rx = discovery.subscribe();
    let (cluster, broker) = (cluster.clone(), broker.clone());
    tokio::spawn(async move {
        // Held for the task's life: dropping it would stop the refresh.
        let _discovery = discovery;
        let first = tokio::time::sleep(FIRST_SET_WAIT);
        tokio::pin!(first);
        let mut pending_first = true;
        loop {
            let set = rx.borrow_and_update().clone();
            if pending_first && !set.is_empty() {
                apply(&cluster, &broker, &set, true);
                pending_first = false;
                first_done(&cluster);
            } else if !pending_first {
                apply(&cluster, &broker, &set, false);
            }
            tokio::select! {
                _ = cluster.shutdown.cancelled() => return,
                changed = rx.changed() => if changed.is_err() { return },
                _ = &mut first, if pending_first => {
                    pending_first = false;
                    first_done(&cluster);
                    tracing::warn!(event = "cluster_discovery_empty", "no peers discovered yet; ready without them");
                }
            }
        }
    });
    Ok(())
}

/// The one "discovery pending" unit of `initial_dials` is done.
fn first_done(cluster: &Cluster) {
    cluster.initial_dials.fetch_sub(1, Ordering::AcqRel);
    cluster.update_readiness();
}

/// Records the discovered set and dials every new endpoint other than this node (`initial`: the first set,
/// which readiness waits for).
fn apply(cluster: &Arc<Cluster>, broker: &Arc<Broker>, set: &[Endpoint], initial: bool) {
    let others: Vec<&Endpoint> = set
        .iter()
        .filter(|e| e.name != *cluster.name && e.addr != cluster.advertise)
        .collect();
    let addrs: HashSet<SocketAddr> = others.iter().map(|e| e.addr).collect();
    tracing::info!(
        event = "cluster_discovered",
        peers = others.len(),
        "discovered {} peers",
        others.len()
    );
    if initial {
        cluster
            .initial_dials
            .fetch_add(others.len(), Ordering::AcqRel);
    }
    cluster.peers.lock().discovered = addrs;
    for e in others {
        spawn_dialer(
            cluster.clone(),
            broker.clone(),
            e.addr,
            Some(e.name.clone()),
            initial,
            DialOrigin::Discovered,
        );
    }
}
