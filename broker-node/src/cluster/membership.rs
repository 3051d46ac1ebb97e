//! Peer lifecycle: our outbound link to a peer coming up (the full sync queued on it) or going down, a peer's
//! inbound link opening or closing, and what each does to the peer's routes, claims and readiness.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Cluster;
use super::frame::Frame;
use super::outbox::LinkTx;
use super::routes::PeerName;
use crate::broker::Broker;

impl Cluster {
    /// Registers our new outbound link to `peer` and queues the full sync on it (routes, claims, retained,
    /// SyncDone) before any incremental frame can follow.
    pub(crate) fn outbound_up(&self, broker: &Broker, peer: &PeerName, link: Arc<LinkTx>) {
        {
            let local = self.local.lock();
            let old = {
                let mut peers = self.peers.lock();
                let p = peers.map.entry(peer.clone()).or_default();
                p.leaving = false;
                let old = p.out.replace(link.clone());
                self.route_generation.fetch_add(1, Ordering::AcqRel);
                old
            };
            if let Some(old) = old {
                old.cancel.cancel();
            }
            for f in local.filters.keys() {
                self.push(&link, &Frame::RouteAdd(f.clone()));
            }
            for c in &local.claims {
                let claim = Frame::Claim {
                    client_id: c.clone(),
                    held: true,
                };
                self.push(&link, &claim);
            }
        }
        for (topic, msg, stamp) in broker.retained_snapshot() {
            self.push(&link, &Frame::Retain { stamp, topic, msg });
        }
        self.push(&link, &Frame::SyncDone);
        self.metrics.peers_up.set(self.up_peers().len() as f64);
        tracing::info!(event = "cluster_peer_up", peer = %peer, "cluster link to {peer} up");
        self.recompute_claims(broker);
        self.update_readiness();
    }

    /// Our outbound link `id` to `peer` ended.
    pub(crate) fn outbound_down(&self, broker: &Broker, peer: &str, id: u64) {
        {
            let mut peers = self.peers.lock();
            let Some(p) = peers.map.get_mut(peer) else {
                return;
            };
            if p.out.as_ref().is_none_or(|l| l.id != id) {
                return;
            }
            p.out = None;
            self.route_generation.fetch_add(1, Ordering::AcqRel);
        }
        self.end_redirects_to(peer);
        self.metrics.peers_up.set(self.up_peers().len() as f64);
        tracing::warn!(
            event = "cluster_peer_down",
            peer,
            "cluster link to {peer} down"
        );
        self.recompute_claims(broker);
        self.update_readiness();
    }

    /// A peer opened inbound connection `id`: whatever it advertised before is void until it syncs again.
    pub(crate) fn inbound_up(&self, peer: &PeerName, id: u64, advertise: SocketAddr) -> bool {
        let learned = {
            let mut peers = self.peers.lock();
            let p = peers.map.entry(peer.clone()).or_default();
            p.inbound = Some(id);
            p.synced = false;
            p.claims.clear();
            let old = peers.known.insert(peer.to_string(), advertise);
            old != Some(advertise) && !peers.dialing.contains(&advertise)
        };
        self.drop_routes(peer);
        self.update_readiness();
        learned
    }

    /// Inbound connection `id` from `peer` ended: drop what it advertised.
    pub(crate) fn inbound_down(&self, peer: &str, id: u64) {
        {
            let mut peers = self.peers.lock();
            let Some(p) = peers.map.get_mut(peer) else {
                return;
            };
            if p.inbound != Some(id) {
                return;
            }
            p.inbound = None;
            p.synced = false;
            p.claims.clear();
        }
        self.drop_routes(peer);
        self.pending.lock().retain(|_, p| &*p.peer != peer);
        self.update_readiness();
    }

    /// Forgets every route `peer` advertised.
    pub(super) fn drop_routes(&self, peer: &str) {
        let mut routes = self.routes.write();
        let n = routes.remove_peer(peer);
        self.route_generation.fetch_add(1, Ordering::AcqRel);
        self.metrics.remote_routes.set(routes.len() as f64);
        if n > 0 {
            tracing::info!(
                event = "cluster_routes_dropped",
                peer,
                routes = n,
                "dropped routes of {peer}"
            );
        }
    }
}
