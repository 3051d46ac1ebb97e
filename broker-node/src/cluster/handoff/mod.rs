//! Sessions moving between nodes: takeover at CONNECT ([`Cluster::acquire`]: ask the claimants and the ring
//! owner, install what comes back) and drain at shutdown ([`Cluster::drain`]: push every persistent session to
//! the node the ring without us assigns, tell clients 0x9C, then leave).
//!
//! A session is taken out of the broker (`extract`) and put in (`install`) under the broker's router write
//! lock, so a publish either queued its message before the extraction (it moves with the session) or sees the
//! redirect to the new node (see `Cluster::start_redirect`). The frames of one handover are queued back to back on the
//! ordered link, so anything the old node sends afterwards — a TakeoverReply, a Barrier — arrives after it.
//!
//! Concurrent CONNECTs for one client ID on two nodes resolve by arrival at the holder: the first request gets
//! the session, later ones get "moved to X" and ask X, which hands it over again (the earlier connection is
//! taken over, as on a single node), all within the takeover timeout.
//!
//! - `takeover`: takeover requests, both sides ([`Cluster::acquire`], the answer to a TakeoverRequest).
//! - `drain`: the drain handover ([`Cluster::drain`]).
//! - `transfer`: a session out of this node's broker and into it.
//! - `snapshot`: a session in transit to and from the frames of one handover.

use std::sync::Arc;

use super::Cluster;
use super::frame::Frame;
use super::routes::PeerName;
use super::validate::Violation;
use crate::broker::Broker;

mod drain;
mod snapshot;
mod takeover;
mod transfer;

pub(crate) use snapshot::{HandoverLimits, Incoming};
pub(crate) use takeover::Pending;

/// Request ids of pushed sessions have this bit set; our own requests never do.
const PUSH_BIT: u64 = 1 << 63;

/// Applies a session-handover frame from `peer`.
pub(crate) fn on_frame(
    cluster: &Arc<Cluster>,
    broker: &Arc<Broker>,
    peer: &PeerName,
    f: Frame,
    incoming: &mut Incoming,
) -> Result<(), Violation> {
    match f {
        Frame::TakeoverRequest {
            req,
            client_id,
            clean_start,
            claimant,
        } => takeover::on_request(
            cluster,
            broker,
            peer,
            (req, &client_id, clean_start),
            &claimant,
        ),
        Frame::TakeoverReply {
            req,
            moved_to,
            refused,
        } => takeover::on_reply(cluster, req, moved_to, refused),
        Frame::SessionEnd { req } => {
            let Some(snap) = incoming.finish(req) else {
                return Err(Violation::Session("end of a session that did not begin"));
            };
            let client_id = snap.client_id.clone();
            let pushed = req & PUSH_BIT != 0;
            // Installed whether or not the request is still waiting: a session is never dropped here.
            transfer::install(cluster, broker, peer, snap, pushed);
            // Confirmed once every peer applied our RouteAdds for it: the old node may then stop advertising
            // the session's filters without a moment where nobody does.
            let (c, p, id) = (cluster.clone(), peer.clone(), client_id.clone());
            tokio::spawn(async move {
                c.settle().await;
                c.send_to(&p, &Frame::SessionInstalled(id));
            });
            tracing::info!(event = "cluster_session_received", client_id = %client_id, from = %peer, pushed, "session received from {peer}");
            if !pushed {
                takeover::on_installed(cluster, req);
            }
        }
        // SessionBegin, SessionSub, SessionMsg: the parts of a session being received.
        f => incoming.apply(f)?,
    }
    Ok(())
}
