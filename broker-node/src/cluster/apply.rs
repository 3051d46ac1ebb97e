//! Frames from peers, applied in link order: routes, claims, sync, forwarded messages (with the relays of a
//! session that moved), retained writes, leaving, barriers; session handover frames go to [`super::handoff`].

use std::sync::Arc;
use std::sync::atomic::Ordering;

use fleetgate_protocol::mqtt::ByteString;

use super::frame::Frame;
use super::routes::PeerName;
use super::{Cluster, handoff, relay};
use crate::broker::{Broker, Relayed};
use crate::message::Message;
use crate::metrics::DropReason;
use crate::router::Router;

impl Cluster {
    /// Applies a frame received from `peer` (in link order).
    pub(crate) fn on_frame(
        self: &Arc<Self>,
        broker: &Arc<Broker>,
        peer: &PeerName,
        frame: Frame,
        sessions: &mut handoff::Incoming,
    ) {
        match frame {
            Frame::Hello { .. } | Frame::Heartbeat => {}
            Frame::RouteAdd(f) => {
                let mut routes = self.routes.write();
                routes.add(peer, &f);
                self.route_generation.fetch_add(1, Ordering::AcqRel);
                self.metrics.remote_routes.set(routes.len() as f64);
            }
            Frame::RouteRemove(f) => {
                let mut routes = self.routes.write();
                routes.remove(peer, &f);
                self.route_generation.fetch_add(1, Ordering::AcqRel);
                self.metrics.remote_routes.set(routes.len() as f64);
            }
            Frame::Claim { client_id, held } => {
                let mut peers = self.peers.lock();
                if let Some(p) = peers.map.get_mut(peer) {
                    if held {
                        p.claims.insert(client_id);
                    } else {
                        p.claims.remove(&client_id);
                    }
                }
            }
            Frame::SyncDone => {
                if let Some(p) = self.peers.lock().map.get_mut(peer) {
                    p.synced = true;
                }
                tracing::info!(event = "cluster_synced", peer = %peer, "routes synced with {peer}");
                self.update_readiness();
            }
            Frame::Publish {
                direct,
                groups,
                sessions,
                msg,
            } => {
                let router = broker.router.read();
                self.on_publish(broker, &router, peer, direct, &groups, &sessions, &msg);
            }
            Frame::Retain { stamp, topic, msg } => {
                broker.retained.apply(topic, msg, stamp);
            }
            Frame::Leaving => {
                {
                    let mut peers = self.peers.lock();
                    if let Some(p) = peers.map.get_mut(peer) {
                        p.leaving = true;
                        p.claims.clear();
                    }
                }
                self.drop_routes(peer);
                tracing::info!(event = "cluster_peer_leaving", peer = %peer, "{peer} is draining");
                self.metrics.peers_up.set(self.up_peers().len() as f64);
                self.recompute_claims(broker);
                self.update_readiness();
            }
            Frame::Barrier(id) => {
                self.send_to(peer, &Frame::BarrierAck(id));
            }
            Frame::SessionInstalled(client_id) => self.relay_installed(peer, &client_id),
            Frame::SessionArrived(client_id) => self.relay_arrived(peer, &client_id),
            Frame::BarrierAck(id) => {
                if let Some(tx) = self.barriers.lock().remove(&id) {
                    let _ = tx.send(());
                }
            }
            f @ (Frame::TakeoverRequest { .. }
            | Frame::TakeoverReply { .. }
            | Frame::SessionBegin { .. }
            | Frame::SessionSub { .. }
            | Frame::SessionMsg { .. }
            | Frame::SessionEnd { .. }) => handoff::on_frame(self, broker, peer, f, sessions),
        }
    }

    /// Applies a Publish frame from `peer` with the router read-locked by the caller (the link applies a run of
    /// them under one lock). Under that lock no session is handed away between the local delivery and the
    /// relays, so a session gets the message either here (and takes it along) or relayed.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_publish(
        &self,
        broker: &Broker,
        router: &Router,
        peer: &PeerName,
        direct: bool,
        groups: &[ByteString],
        sessions: &[ByteString],
        msg: &Arc<Message>,
    ) {
        broker.deliver_in(
            router,
            msg,
            &mut crate::router::Scope::Chosen { direct, groups },
        );
        if sessions.is_empty() && !self.has_relays.load(Ordering::Acquire) {
            return;
        }
        let gone: Vec<&ByteString> = sessions
            .iter()
            .filter(|c| broker.deliver_to(router, c, msg) == Relayed::NoSession)
            .collect();
        let origin = relay::Origin::Peer {
            peer,
            direct,
            groups: !groups.is_empty(),
            sessions,
        };
        let relayed = self.relay(msg, origin);
        let lost = gone.iter().filter(|c| !relayed.contains(c)).count();
        broker
            .metrics
            .dropped_n(DropReason::ClusterSessionGone, lost);
    }
}
