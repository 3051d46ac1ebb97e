//! Frames from peers, applied in link order: routes, claims, sync, forwarded messages (with the redirects of a
//! session that moved), retained writes, leaving, barriers; session handover frames go to [`super::handoff`].

use std::sync::Arc;
use std::sync::atomic::Ordering;

use fleetgate_protocol::mqtt::ByteString;

use super::frame::Frame;
use super::routes::PeerName;
use super::{Cluster, forward, handoff};
use crate::broker::{Broker, LocalDelivery, Redirected};
use crate::state::message::Message;
use crate::state::router::Scope;

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
                let local = broker.local_delivery();
                self.on_publish(&local, peer, direct, &groups, &sessions, &msg);
            }
            Frame::Retain { stamp, topic, msg } => {
                broker.apply_retained(topic, msg, stamp);
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
            Frame::SessionInstalled(client_id) => self.redirect_installed(peer, &client_id),
            Frame::SessionArrived(client_id) => self.redirect_arrived(peer, &client_id),
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
    /// redirects, so a session gets the message either here (and takes it along) or redirected.
    pub(crate) fn on_publish(
        &self,
        local: &LocalDelivery<'_>,
        peer: &PeerName,
        direct: bool,
        groups: &[ByteString],
        sessions: &[ByteString],
        msg: &Arc<Message>,
    ) {
        local.deliver(msg, &mut Scope::Chosen { direct, groups });
        if sessions.is_empty() && !self.has_redirects.load(Ordering::Acquire) {
            return;
        }
        let gone: Vec<&ByteString> = sessions
            .iter()
            .filter(|c| local.deliver_to(c, msg) == Redirected::NoSession)
            .collect();
        let origin = forward::Origin::Peer {
            peer,
            direct,
            groups: !groups.is_empty(),
            sessions,
        };
        let redirected = self.redirect(msg, origin);
        let lost = gone.iter().filter(|c| !redirected.contains(c)).count();
        if lost > 0 {
            self.metrics.dropped_session_gone.increment(lost as u64);
        }
    }
}
