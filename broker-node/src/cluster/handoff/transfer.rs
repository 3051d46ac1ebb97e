//! A session leaving or entering this node's broker: [`extract`] takes it out (kicking its connection) and
//! queues its handover frames, [`install`] puts one that arrived in; both under the router write lock.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use fleetgate_protocol::mqtt::ByteString;

use super::snapshot::Snapshot;
use crate::broker::{Broker, split_share};
use crate::cluster::Cluster;
use crate::cluster::frame::Frame;
use crate::cluster::routes::PeerName;
use crate::metrics::DropReason;
use crate::router::Subscriber;
use crate::session::{Session, Will};
use crate::will;

/// Why a session leaves this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// A CONNECT elsewhere asked for it.
    Takeover {
        /// The new connection starts clean: end the session instead.
        clean_start: bool,
    },
    /// This node drains.
    Drain,
}

/// Takes `client_id`'s session out of this node and queues it to `to` as handover `req` (kicking its
/// connection), or ends it for a clean start. False when nothing was handed over. The frames are queued before
/// the router lock is released, so every later publish here reaches `to` behind them.
pub(super) fn extract(
    cluster: &Cluster,
    broker: &Arc<Broker>,
    client_id: &ByteString,
    mode: Mode,
    to: &PeerName,
    req: u64,
) -> bool {
    let mut router = broker.router.write();
    let mut sessions = broker.sessions.lock();
    let Some(session) = sessions.get(client_id).cloned() else {
        return false;
    };
    let mut st = session.state.lock();
    if let Some(slot) = st.conn.take() {
        match mode {
            Mode::Drain => slot.signal.kick_moved(),
            Mode::Takeover { .. } => slot.signal.kick(),
        }
        session.set_connected(false);
    }
    st.ended = true;
    sessions.remove(client_id);
    drop(sessions);
    let running_will = st.will.take();
    let pending_will = st.pending_will.take();
    let filters: Vec<ByteString> = st.subscriptions.keys().cloned().collect();
    let moving = mode != Mode::Takeover { clean_start: true };
    // Wills: as for a local takeover, a clean start ends the old session (every will is due) and a resume
    // publishes the kicked connection's will only when it has no delay. At drain the will stays with the
    // session when it has a delay (the client is expected back elsewhere within it); a will without delay is
    // not published for a server-side move, as at shutdown.
    let (due, kept): (Vec<Will>, Option<Will>) = match mode {
        Mode::Takeover { clean_start: true } => {
            (running_will.into_iter().chain(pending_will).collect(), None)
        }
        Mode::Takeover { clean_start: false } => (
            running_will.into_iter().filter(|w| w.delay == 0).collect(),
            None,
        ),
        Mode::Drain => (
            Vec::new(),
            running_will.or(pending_will).filter(|w| w.delay > 0),
        ),
    };
    if !moving {
        // A clean start ends the session: what it owed its client goes with it.
        broker
            .metrics
            .dropped_n(DropReason::SessionEnded, st.discard());
    }
    let snap = moving.then(|| Snapshot {
        client_id: client_id.clone(),
        expiry_secs: st.expiry_secs,
        protocol: st.protocol,
        next_packet_id: st.next_packet_id,
        inbound_qos2: st.inbound_qos2.drain().collect(),
        will: kept,
        subs: st.subscriptions.drain().collect(),
        queue: std::mem::take(&mut st.queue).into(),
        inflight: std::mem::take(&mut st.inflight).into(),
    });
    drop(st);
    let sent = match snap {
        Some(snap) => {
            let owed = snap.queue.len() + snap.inflight.len();
            let sent = cluster.send_all_to(to, &snap.frames(req));
            if !sent {
                // The link to `to` went down under us: the session is lost with what it owed.
                broker.metrics.dropped_n(DropReason::ClusterLinkDown, owed);
                tracing::warn!(event = "cluster_handoff_lost", client_id = %client_id, to = %to, "link to {to} down during handover");
            }
            cluster.start_relay(to, client_id, &filters);
            cluster.remember_moved(client_id, to);
            sent
        }
        None => false,
    };
    broker.unroute(&mut router, &session, &filters);
    drop(router);
    broker.metrics.sessions_current.decrement(1.0);
    cluster.session_removed(client_id);
    for w in due {
        broker.publish_will(client_id, w);
    }
    sent
}

/// Puts a session that arrived from a peer into this node (detached; the client attaches next, or it expires).
pub(super) fn install(
    cluster: &Cluster,
    broker: &Arc<Broker>,
    from: &PeerName,
    snap: Snapshot,
    pushed: bool,
) {
    let session = {
        let mut router = broker.router.write();
        // Queued under the router write lock: every message this node forwards to `from` after this frame was
        // published with the session in place here (see `relay`).
        cluster.send_to(from, &Frame::SessionArrived(snap.client_id.clone()));
        let mut sessions = broker.sessions.lock();
        if let Some(existing) = sessions.get(&snap.client_id).cloned() {
            // The client already started a session here meanwhile: keep it, and give it what the old one owed.
            drop(sessions);
            drop(router);
            let owed = snap
                .inflight
                .into_iter()
                .map(|i| i.delivery)
                .chain(snap.queue);
            for d in owed {
                if let Err(reason) = existing.enqueue(d, broker.limits.max_queued_messages) {
                    broker.metrics.dropped(reason);
                }
            }
            return;
        }
        let session = Arc::new(Session::new(
            broker.new_session_id(),
            snap.client_id.clone(),
            snap.protocol,
            snap.expiry_secs,
        ));
        {
            let mut st = session.state.lock();
            st.subscriptions = snap.subs.iter().cloned().collect();
            st.queue = VecDeque::from(snap.queue);
            st.inflight = VecDeque::from(snap.inflight);
            st.inbound_qos2 = snap.inbound_qos2.into_iter().collect::<HashSet<u16>>();
            st.next_packet_id = snap.next_packet_id;
        }
        sessions.insert(snap.client_id.clone(), session.clone());
        for (filter, e) in &snap.subs {
            let (group, plain) = split_share(filter);
            router.subscribe(
                plain,
                group,
                Subscriber {
                    session: session.clone(),
                    options: e.options,
                    id: e.id,
                },
            );
        }
        session
    };
    broker.metrics.sessions_current.increment(1.0);
    for (filter, _) in &snap.subs {
        cluster.filter_added(filter);
    }
    cluster.session_added(&snap.client_id);
    if let Some(w) = snap.will {
        will::schedule(broker, &session, 0, w, snap.expiry_secs);
    }
    // Detached until the client attaches (generation 0 → 1 cancels these timers). A session that was to end
    // with its connection waits the takeover timeout for it, in case the requester gave up meanwhile.
    let expiry = match snap.expiry_secs {
        0 if !pushed => Some(cluster.config.takeover_timeout),
        0 => Some(Duration::ZERO),
        u32::MAX => None,
        s => Some(Duration::from_secs(u64::from(s))),
    };
    if let Some(after) = expiry {
        let b = broker.clone();
        broker.spawn_timer(after, move || b.expire(&session, 0));
    }
}
