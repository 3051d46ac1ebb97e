//! A session leaving or entering this node, the cluster's half: [`extract`] has the broker export a session and
//! queues its handover frames to the node taking it (starting the redirect of its messages), [`install`] hands
//! one that arrived to the broker. The broker does both under its router write lock.

use std::sync::Arc;
use std::time::Duration;

use fleetgate_protocol::mqtt::ByteString;

use super::snapshot;
use crate::broker::{Broker, Departure, SessionOwnerMismatch};
use crate::cluster::Cluster;
use crate::cluster::frame::{Claimant, Frame};
use crate::cluster::routes::PeerName;
use crate::state::session::SessionSnapshot;
use crate::state::will::WillPermit;
use fleetgate_auth::{AuthMethod, Principal};

/// Takes `client_id`'s session out of this node and queues it to `to` as handover `req` (kicking its
/// connection), or ends it for a clean start. `Ok(false)` when nothing was handed over; an error when `claimant`
/// (a takeover's connecting identity) may not have another identity's session, which then stays. The frames are
/// queued before the broker releases its router lock, so every later publish here reaches `to` behind them.
pub(super) fn extract(
    cluster: &Cluster,
    broker: &Arc<Broker>,
    client_id: &ByteString,
    (departure, claimant): (Departure, Option<&Claimant>),
    to: &PeerName,
    req: u64,
) -> Result<bool, SessionOwnerMismatch> {
    let claimant = claimant.map(|c| (&c.principal, c.binding));
    broker.export_session(client_id, departure, claimant, |snap| {
        let filters: Vec<ByteString> = snap.subs.iter().map(|(f, _)| f.clone()).collect();
        let owed = snap.queue.len() + snap.inflight.len();
        let sent = cluster.send_all_to(to, &snapshot::frames(snap, req));
        if !sent {
            // The link to `to` went down under us: the session is lost with what it owed.
            if owed > 0 {
                cluster.metrics.dropped_link_down.increment(owed as u64);
            }
            tracing::warn!(event = "cluster_handoff_lost", client_id = %client_id, to = %to, "link to {to} down during handover");
        }
        cluster.start_redirect(to, client_id, &filters);
        cluster.remember_moved(client_id, to);
        sent
    })
}

/// Puts a session that arrived from `from` into this node (detached; the client attaches next, or it
/// expires). A session that was to end with its connection waits the takeover timeout for its client when it
/// was requested (the requester may have given up meanwhile), not at all when it was pushed at a drain.
///
/// It gets no more than a local client's session would: its expiry is capped by our `session_expiry_maximum`,
/// its subscriptions are checked by our ACL for the identity it carries (denied ones dropped, logged and
/// counted), and its will is published only if our ACL allows it when it is due.
pub(super) fn install(
    cluster: &Cluster,
    broker: &Arc<Broker>,
    from: &PeerName,
    mut snap: SessionSnapshot,
    pushed: bool,
) {
    let cap = u32::try_from(cluster.limits.session_expiry_maximum.as_secs()).unwrap_or(u32::MAX);
    snap.expiry_secs = snap.expiry_secs.min(cap);
    let principal = snap.principal.clone().unwrap_or_else(|| {
        // From a node without authentication: as an anonymous client of this ID.
        Arc::new(Principal {
            username: None,
            cn: None,
            client_id: snap.client_id.to_string(),
            method: AuthMethod::Anonymous,
        })
    });
    snap.subs
        .retain(|(filter, _)| cluster.access.subscription_allowed(&principal, filter));
    if let Some(will) = &mut snap.will {
        will.permit = Some(WillPermit::new(cluster.access.clone(), principal.clone()));
    }
    snap.principal = Some(principal);
    let keep_transient = if pushed {
        Duration::ZERO
    } else {
        cluster.config.takeover_timeout
    };
    let client_id = snap.client_id.clone();
    broker.install_session(snap, keep_transient, || {
        // Under the broker's router write lock: every message this node forwards to `from` after this frame
        // was published with the session in place here (see `forward`).
        cluster.send_to(from, &Frame::SessionArrived(client_id));
    });
}
