//! Frames from peers, applied in link order: sync, routes, claims, forwarded messages (with the redirects of a
//! session that moved), retained writes, leaving, barriers; session handover frames go to [`super::handoff`].

use std::sync::Arc;
use std::sync::atomic::Ordering;

use fleetgate_protocol::mqtt::ByteString;

use super::frame::Frame;
use super::routes::PeerName;
use super::validate::{MAX_PEER_CLAIMS, MAX_PEER_ROUTES, Violation};
use super::{Cluster, forward, handoff};
use crate::broker::{Broker, LocalDelivery, Redirected};
use crate::state::message::Message;
use crate::state::router::Scope;

impl Cluster {
    /// Applies a frame received from `peer` (in link order), its fields already checked
    /// ([`validate::check_frame`]); what it would make us hold beyond our bounds is refused.
    pub(crate) fn on_frame(
        self: &Arc<Self>,
        broker: &Arc<Broker>,
        peer: &PeerName,
        frame: Frame,
        sessions: &mut handoff::Incoming,
    ) -> Result<(), Violation> {
        match frame {
            Frame::Hello { .. } | Frame::Heartbeat | Frame::Ack(_) => {}
            Frame::SyncBegin { full } => self.on_sync_begin(peer, full),
            Frame::RouteAdd { filter, seq } => {
                {
                    let mut routes = self.routes.write();
                    if routes.peer_len(peer) >= MAX_PEER_ROUTES {
                        return Err(Violation::TooManyRoutes);
                    }
                    routes.add(peer, &filter);
                    self.routes_changed(&routes);
                }
                self.on_route_seen(peer, &filter, seq);
            }
            Frame::RouteRemove { filter, seq } => {
                {
                    let mut routes = self.routes.write();
                    routes.remove(peer, &filter);
                    self.routes_changed(&routes);
                }
                self.on_route_seen(peer, &filter, seq);
            }
            Frame::Claim {
                client_id,
                held,
                seq,
            } => {
                if held && self.peer_claims(peer) >= MAX_PEER_CLAIMS {
                    return Err(Violation::TooManyClaims);
                }
                self.on_claim(peer, client_id, held, seq);
            }
            Frame::SyncDone { upto } => self.on_sync_done(peer, upto),
            Frame::Progress(upto) => self.on_progress(peer, upto),
            Frame::Publish {
                direct,
                groups,
                sessions,
                msg,
            } => {
                let local = broker.local_delivery();
                self.on_publish(&local, peer, direct, &groups, &sessions, &msg);
            }
            Frame::Retain {
                stamp,
                topic,
                msg,
                seq,
            } => {
                broker.apply_retained(topic, msg, stamp);
                self.on_retained_seen(peer, seq);
            }
            Frame::Leaving => {
                if let Some(p) = self.peers.lock().map.get_mut(peer) {
                    p.leaving = true;
                }
                self.forget_peer(peer);
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
            | Frame::SessionEnd { .. }) => handoff::on_frame(self, broker, peer, f, sessions)?,
        }
        Ok(())
    }

    /// Number of claims `peer` holds.
    fn peer_claims(&self, peer: &str) -> usize {
        self.peers
            .lock()
            .map
            .get(peer)
            .map_or(0, |p| p.claims.len())
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
