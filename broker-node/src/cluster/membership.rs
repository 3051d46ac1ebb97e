//! Peer lifecycle: our outbound link to a peer coming up (its sync started, see [`super::sync`]) or going down,
//! a peer's inbound link opening (its identity checked, what we held of it restored or dropped) or closing (its
//! routes and claims kept aside for a resume), and what each does to readiness.
//!
//! Lock order where several are taken: `local` → `routes` → `peers`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::frame::Watermarks;
use super::outbox::LinkTx;
use super::routes::{PeerName, RouteTable};
use super::sync::{InboundSync, Suspended};
use super::{Cluster, Inbound, LinkIdentity};
use crate::broker::Broker;

/// An inbound link accepted after its Hello.
#[derive(Debug)]
pub(crate) struct Accepted {
    /// What our Hello offers: how far we hold the peer's tables from its earlier link.
    pub(crate) resume: Option<Watermarks>,
    /// The peer's address was new to us (dial it back).
    pub(crate) learned: bool,
}

/// Why an inbound link was refused after its Hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejected {
    /// Another identity holds a live link under the name the Hello claims.
    NameInUse,
    /// A connection the peer opened later is already up: this one waited in the accept backlog (a node that
    /// was frozen accepts the dead redials of its peers after the live one) and must not replace it.
    Superseded,
}

impl Rejected {
    /// The `reason` of the log event and metric.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Rejected::NameInUse => "name_in_use",
            Rejected::Superseded => "superseded",
        }
    }
}

impl Cluster {
    /// Registers our new outbound link to `peer` (whose Hello offered `resume`) and starts its sync.
    pub(crate) fn outbound_up(
        self: &Arc<Self>,
        broker: &Arc<Broker>,
        peer: &PeerName,
        link: Arc<LinkTx>,
        resume: Option<Watermarks>,
    ) {
        {
            // Under `local`: no change of our tables can be queued on the link before its SyncBegin.
            let _local = self.local.lock();
            let old = {
                let mut peers = self.peers.lock();
                let p = peers.map.entry(peer.clone()).or_default();
                p.leaving = false;
                p.acked = None;
                let old = p.out.replace(link.clone());
                self.route_generation.fetch_add(1, Ordering::AcqRel);
                old
            };
            if let Some(old) = old {
                old.cancel.cancel();
            }
        }
        self.start_sync(broker, peer, &link, resume);
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

    /// A peer opened inbound connection `id` (numbered in accept order) as process `incarnation` and proved
    /// `identity`. Refused when another identity holds a live link under the name, or when a connection accepted
    /// after this one is already up. What we held of the peer — from a connection it
    /// replaces, or kept since its last one dropped — stays when it is the same process (our Hello then offers
    /// a resume) and is dropped otherwise (it syncs in full).
    pub(crate) fn inbound_up(
        &self,
        peer: &PeerName,
        id: u64,
        incarnation: u64,
        identity: LinkIdentity,
        advertise: SocketAddr,
    ) -> Result<Accepted, Rejected> {
        let mut routes = self.routes.write();
        let mut peers = self.peers.lock();
        let p = peers.map.entry(peer.clone()).or_default();
        if p.inbound
            .as_ref()
            .is_some_and(|current| current.identity != identity)
        {
            return Err(Rejected::NameInUse);
        }
        // Ids follow the accept order: an older connection whose handshake finished late loses.
        if p.inbound.as_ref().is_some_and(|current| current.id > id) {
            return Err(Rejected::Superseded);
        }
        // What we hold of it: (its process, how far applied, routes and claims kept aside) — the routes of a
        // connection being replaced are still in the table.
        let prior = match p.inbound.take() {
            Some(current) => Some((current.incarnation, p.sync.resume_point(), None)),
            None => p
                .suspended
                .take()
                .filter(Suspended::is_fresh)
                .map(|s| (s.incarnation, s.applied, Some((s.routes, s.claims)))),
        };
        p.inbound = Some(Inbound {
            id,
            incarnation,
            identity,
        });
        let resume = match prior {
            Some((same, applied, kept)) if same == incarnation => {
                if let Some((kept_routes, kept_claims)) = kept {
                    p.claims = kept_claims;
                    routes.restore_peer(peer, kept_routes);
                }
                applied
            }
            _ => {
                p.claims.clear();
                let n = routes.remove_peer(peer);
                log_dropped(peer, n);
                None
            }
        };
        p.sync = InboundSync::offered(resume);
        let old = peers.known.insert(peer.to_string(), advertise);
        let learned = old != Some(advertise) && !peers.dialing.contains(&advertise);
        drop(peers);
        self.routes_changed(&routes);
        drop(routes);
        self.update_readiness();
        Ok(Accepted { resume, learned })
    }

    /// Inbound connection `id` from `peer` ended: its routes leave the route table and, unless it is leaving,
    /// are kept aside with its claims for a resume.
    pub(crate) fn inbound_down(&self, peer: &str, id: u64) {
        {
            let mut routes = self.routes.write();
            let mut peers = self.peers.lock();
            let Some(p) = peers.map.get_mut(peer) else {
                return;
            };
            if p.inbound.as_ref().is_none_or(|i| i.id != id) {
                return;
            }
            let Some(inbound) = p.inbound.take() else {
                return;
            };
            let sync = std::mem::take(&mut p.sync);
            let claims = std::mem::take(&mut p.claims);
            let taken = routes.take_peer(peer);
            log_dropped(peer, taken.len());
            p.suspended = (!p.leaving).then(|| Suspended {
                incarnation: inbound.incarnation,
                applied: sync.resume_point(),
                routes: taken,
                claims,
                since: Instant::now(),
            });
            drop(peers);
            self.routes_changed(&routes);
        }
        self.pending.lock().retain(|_, p| &*p.peer != peer);
        self.update_readiness();
    }

    /// Forgets every route and claim `peer` advertised, nothing kept for a resume (it leaves the cluster).
    pub(super) fn forget_peer(&self, peer: &str) {
        let mut routes = self.routes.write();
        {
            let mut peers = self.peers.lock();
            if let Some(p) = peers.map.get_mut(peer) {
                p.claims.clear();
                p.suspended = None;
            }
        }
        let n = routes.remove_peer(peer);
        log_dropped(peer, n);
        self.routes_changed(&routes);
    }

    /// The route table changed: cached forwards are stale, and the gauge follows.
    pub(super) fn routes_changed(&self, routes: &RouteTable) {
        self.route_generation.fetch_add(1, Ordering::AcqRel);
        self.metrics.remote_routes.set(routes.len() as f64);
    }
}

fn log_dropped(peer: &str, n: usize) {
    if n > 0 {
        tracing::info!(
            event = "cluster_routes_dropped",
            peer,
            routes = n,
            "dropped routes of {peer}"
        );
    }
}
