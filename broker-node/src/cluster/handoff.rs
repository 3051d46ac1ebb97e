//! Sessions moving between nodes: takeover at CONNECT ([`Cluster::acquire`]: ask the claimants and the ring
//! owner, install what comes back) and drain at shutdown ([`Cluster::drain`]: push every persistent session to
//! the node the ring without us assigns, tell clients 0x9C, then leave).
//!
//! A session is taken out of the broker ([`extract`]) and put in ([`install`]) under the router write lock, so a
//! publish either queued its message before the extraction (it moves with the session) or sees the relay to
//! the new node (see [`Cluster::start_relays`]). The frames of one handover are queued back to back on the
//! ordered link, so anything the old node sends afterwards — a TakeoverReply, a Barrier — arrives after it.
//!
//! Concurrent CONNECTs for one client ID on two nodes resolve by arrival at the holder: the first request gets
//! the session, later ones get "moved to X" and ask X, which hands it over again (the earlier connection is
//! taken over, as on a single node), all within the takeover timeout.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetgate_protocol::mqtt::{ByteString, ProtocolLevel};
use fleetgate_protocol::ring::Ring;
use tokio::sync::oneshot;

use super::Cluster;
use super::frame::{self, Frame, SlotKind};
use super::routes::PeerName;
use crate::broker::{Broker, split_share};
use crate::message::Delivery;
use crate::metrics::DropReason;
use crate::router::Subscriber;
use crate::session::{Inflight, Session, SubscriptionEntry, Will};
use crate::will;

/// Request ids of pushed sessions have this bit set; our own requests never do.
const PUSH_BIT: u64 = 1 << 63;

/// How many "moved to" hops a takeover follows (a session moves at most once per drain or takeover).
const MAX_HOPS: usize = 3;

/// Sessions handed over per pacing step at drain; between steps the drain pauses [`DRAIN_PAUSE`], so the clients
/// reconnecting elsewhere arrive as a stream instead of all at once.
const DRAIN_BATCH: usize = 64;
/// How often the drain checks that the new holders confirmed their sessions.
const INSTALL_POLL: Duration = Duration::from_millis(10);
/// Passes of the drain over the sessions: the first hands over nearly all; the next catch the sessions of
/// CONNECTs that were past the listener when the drain began (two are enough: no new ones are accepted).
const DRAIN_PASSES: usize = 3;
/// Pause between drain batches.
const DRAIN_PAUSE: Duration = Duration::from_millis(5);

/// A takeover request waiting for its answer.
#[derive(Debug)]
pub(crate) struct Pending {
    /// Whom we asked.
    pub peer: PeerName,
    tx: oneshot::Sender<Outcome>,
}

#[derive(Debug)]
enum Outcome {
    /// The session arrived and is installed.
    Installed,
    /// Not there; maybe it went to this node.
    NotHere(Option<PeerName>),
}

/// A session in transit.
#[derive(Debug)]
pub struct Snapshot {
    client_id: ByteString,
    expiry_secs: u32,
    protocol: ProtocolLevel,
    next_packet_id: u16,
    inbound_qos2: Vec<u16>,
    will: Option<Will>,
    subs: Vec<(ByteString, SubscriptionEntry)>,
    queue: Vec<Delivery>,
    inflight: Vec<Inflight>,
}

/// Sessions being received on one inbound link, by request id.
#[derive(Debug, Default)]
pub(crate) struct Incoming {
    building: HashMap<u64, Snapshot>,
}

impl Incoming {
    /// The link these sessions arrived on closed mid-handover: they are lost; counts what they owed.
    pub(crate) fn abandon(self, broker: &Broker) {
        for snap in self.building.into_values() {
            tracing::warn!(event = "cluster_handoff_lost", client_id = %snap.client_id, "link closed during handover");
            broker.metrics.dropped_n(
                DropReason::ClusterLinkDown,
                snap.queue.len() + snap.inflight.len(),
            );
        }
    }
}

/// Why a session leaves this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A CONNECT elsewhere asked for it.
    Takeover {
        /// The new connection starts clean: end the session instead.
        clean_start: bool,
    },
    /// This node drains.
    Drain,
}

impl Snapshot {
    fn frames(self, req: u64) -> Vec<Frame> {
        let mut out =
            Vec::with_capacity(2 + self.subs.len() + self.queue.len() + self.inflight.len());
        out.push(Frame::SessionBegin {
            req,
            client_id: self.client_id,
            expiry_secs: self.expiry_secs,
            protocol: self.protocol.as_u8(),
            next_packet_id: self.next_packet_id,
            inbound_qos2: self.inbound_qos2,
            will: self
                .will
                .map(|w| (Arc::new(frame::will_to_message(&w.will)), w.delay)),
        });
        for (filter, e) in self.subs {
            out.push(Frame::SessionSub {
                req,
                filter,
                options: e.options,
                id: e.id,
            });
        }
        let slot = |kind, packet_id: u16, d: Delivery| Frame::SessionMsg {
            req,
            kind,
            packet_id,
            qos: d.qos,
            retain: d.retain,
            sub_ids: d.sub_ids,
            msg: d.msg,
        };
        for i in self.inflight {
            let kind = if i.released {
                SlotKind::Released
            } else {
                SlotKind::Inflight
            };
            out.push(slot(kind, i.packet_id.get(), i.delivery));
        }
        for d in self.queue {
            out.push(slot(SlotKind::Queued, 0, d));
        }
        out.push(Frame::SessionEnd { req });
        out
    }
}

/// Applies a session-handover frame from `peer`.
pub(crate) fn on_frame(
    cluster: &Arc<Cluster>,
    broker: &Arc<Broker>,
    peer: &PeerName,
    f: Frame,
    incoming: &mut Incoming,
) {
    match f {
        Frame::TakeoverRequest {
            req,
            client_id,
            clean_start,
        } => {
            cluster.metrics.takeover_received.increment(1);
            let has_link = cluster
                .peers
                .lock()
                .map
                .get(peer)
                .is_some_and(|p| p.out.is_some());
            let moved = has_link
                && extract(
                    cluster,
                    broker,
                    &client_id,
                    Mode::Takeover { clean_start },
                    peer,
                    req,
                );
            let sent = if moved {
                tracing::info!(event = "cluster_takeover", client_id = %client_id, to = %peer, "session handed to {peer}");
                true
            } else {
                cluster.send_to(
                    peer,
                    &Frame::TakeoverReply {
                        req,
                        moved_to: cluster.moved_to(&client_id).map(|p| p.to_string()),
                    },
                )
            };
            if !sent {
                tracing::warn!(event = "cluster_takeover_failed", client_id = %client_id, peer = %peer, "no link to answer {peer}");
            }
        }
        Frame::TakeoverReply { req, moved_to } => {
            if let Some(p) = cluster.pending.lock().remove(&req) {
                let _ =
                    p.tx.send(Outcome::NotHere(moved_to.map(|m| Arc::from(m.as_str()))));
            }
        }
        Frame::SessionBegin {
            req,
            client_id,
            expiry_secs,
            protocol,
            next_packet_id,
            inbound_qos2,
            will,
        } => {
            // The sending node checked the will against its ACL when the client connected.
            let will = will.map(|(m, delay)| Will {
                will: Box::new(frame::message_to_will(&m, delay)),
                delay,
                permit: None,
            });
            incoming.building.insert(
                req,
                Snapshot {
                    client_id,
                    expiry_secs,
                    protocol: ProtocolLevel::from_u8(protocol).unwrap_or(ProtocolLevel::V5),
                    next_packet_id,
                    inbound_qos2,
                    will,
                    subs: Vec::new(),
                    queue: Vec::new(),
                    inflight: Vec::new(),
                },
            );
        }
        Frame::SessionSub {
            req,
            filter,
            options,
            id,
        } => {
            if let Some(s) = incoming.building.get_mut(&req) {
                s.subs.push((filter, SubscriptionEntry { options, id }));
            }
        }
        Frame::SessionMsg {
            req,
            kind,
            packet_id,
            qos,
            retain,
            sub_ids,
            msg,
        } => {
            let Some(s) = incoming.building.get_mut(&req) else {
                return;
            };
            let delivery = Delivery {
                msg,
                qos,
                retain,
                sub_ids,
            };
            match (kind, frame::packet_id(packet_id)) {
                (SlotKind::Queued, _) | (_, Err(_)) => s.queue.push(delivery),
                (kind, Ok(packet_id)) => s.inflight.push(Inflight {
                    packet_id,
                    delivery,
                    released: kind == SlotKind::Released,
                }),
            }
        }
        Frame::SessionEnd { req } => {
            let Some(snap) = incoming.building.remove(&req) else {
                return;
            };
            let client_id = snap.client_id.clone();
            let pushed = req & PUSH_BIT != 0;
            // Installed whether or not the request is still waiting: a session is never dropped here.
            install(cluster, broker, peer, snap, pushed);
            // Confirmed once every peer applied our RouteAdds for it: the old node may then stop advertising
            // the session's filters without a moment where nobody does.
            let (c, p, id) = (cluster.clone(), peer.clone(), client_id.clone());
            tokio::spawn(async move {
                c.settle().await;
                c.send_to(&p, &Frame::SessionInstalled(id));
            });
            tracing::info!(event = "cluster_session_received", client_id = %client_id, from = %peer, pushed, "session received from {peer}");
            if !pushed && let Some(p) = cluster.pending.lock().remove(&req) {
                let _ = p.tx.send(Outcome::Installed);
            }
        }
        _ => {}
    }
}

/// Takes `client_id`'s session out of this node and queues it to `to` as handover `req` (kicking its
/// connection), or ends it for a clean start. False when nothing was handed over. The frames are queued before
/// the router lock is released, so every later publish here reaches `to` behind them.
fn extract(
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
fn install(cluster: &Cluster, broker: &Arc<Broker>, from: &PeerName, snap: Snapshot, pushed: bool) {
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

impl Cluster {
    /// Before attaching a CONNECT for `client_id`: fetches its session from the node that holds it, when this
    /// node is not the ring owner or another node claims it. Bounded by the takeover timeout; on timeout the
    /// client gets a new session here.
    pub async fn acquire(
        self: &Arc<Self>,
        _broker: &Arc<Broker>,
        client_id: &ByteString,
        clean_start: bool,
    ) {
        let mut candidates = self.candidates(client_id);
        if candidates.is_empty() {
            return;
        }
        let start = Instant::now();
        let deadline = tokio::time::Instant::now() + self.config.takeover_timeout;
        let mut asked: HashSet<PeerName> = HashSet::new();
        for _ in 0..MAX_HOPS {
            let mut waits = Vec::new();
            for peer in candidates.drain(..) {
                if *peer == *self.name || !asked.insert(peer.clone()) {
                    continue;
                }
                let req = self.next_id() & !PUSH_BIT;
                let (tx, rx) = oneshot::channel();
                self.pending.lock().insert(
                    req,
                    Pending {
                        peer: peer.clone(),
                        tx,
                    },
                );
                let request = Frame::TakeoverRequest {
                    req,
                    client_id: client_id.clone(),
                    clean_start,
                };
                if self.send_to(&peer, &request) {
                    self.metrics.takeover_sent.increment(1);
                    waits.push((req, rx));
                } else {
                    self.pending.lock().remove(&req);
                }
            }
            if waits.is_empty() {
                break;
            }
            let mut installed = false;
            for (req, rx) in waits {
                match tokio::time::timeout_at(deadline, rx).await {
                    Ok(Ok(Outcome::Installed)) => installed = true,
                    Ok(Ok(Outcome::NotHere(Some(next)))) => candidates.push(next),
                    Ok(Ok(Outcome::NotHere(None))) => {}
                    Ok(Err(_)) | Err(_) => {
                        self.pending.lock().remove(&req);
                    }
                }
            }
            if installed {
                break;
            }
        }
        self.metrics
            .handoff_seconds
            .record(start.elapsed().as_secs_f64());
    }

    /// Scale-down: not ready; every persistent session to the node the ring without us assigns (its connection
    /// told 0x9C), every other connection told 0x9C too; then Leaving and two barrier rounds, so that every peer
    /// has stopped sending here and applied everything we sent (relays included) before we exit.
    pub async fn drain(self: &Arc<Self>, broker: &Arc<Broker>) {
        self.leaving
            .store(true, std::sync::atomic::Ordering::Release);
        self.update_readiness();
        let ring = self.ring(false);
        if ring.is_empty() {
            return;
        }
        let mut pushed = 0;
        // A CONNECT accepted before the listeners closed may attach after the first pass looked at the sessions
        // (new CONNECTs are refused once we are leaving): later passes hand those over too.
        for _ in 0..DRAIN_PASSES {
            let n = self.push_sessions(broker, &ring).await;
            pushed += n;
            // Peers must have the new holders' routes before they drop ours.
            let deadline = tokio::time::Instant::now() + self.config.takeover_timeout;
            while self.relays_pending() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(INSTALL_POLL).await;
            }
            if n == 0 {
                break;
            }
        }
        tracing::info!(
            event = "cluster_drain",
            sessions = pushed,
            "sessions handed over"
        );
        self.broadcast(&Frame::Leaving);
        self.settle().await;
        self.settle().await;
        tracing::info!(event = "cluster_left", "left the cluster");
    }

    /// One pass of the drain over the sessions held now; returns how many were handed over.
    async fn push_sessions(self: &Arc<Self>, broker: &Arc<Broker>, ring: &Ring) -> usize {
        let ids: Vec<ByteString> = broker.sessions.lock().keys().cloned().collect();
        let mut pushed = 0usize;
        for (i, id) in ids.iter().enumerate() {
            if i > 0 && i % DRAIN_BATCH == 0 {
                tokio::time::sleep(DRAIN_PAUSE).await;
            }
            let Some(session) = broker.sessions.lock().get(id).cloned() else {
                continue;
            };
            let persistent = session.state.lock().expiry_secs > 0;
            if !persistent {
                if let Some(c) = session.state.lock().conn.as_ref() {
                    c.signal.kick_moved();
                }
                continue;
            }
            let Some(target) = ring.select(id.as_bytes(), |_| true) else {
                continue;
            };
            let target: PeerName = Arc::from(target);
            let linked = self
                .peers
                .lock()
                .map
                .get(&target)
                .is_some_and(|p| p.out.is_some());
            if !linked {
                continue;
            }
            let req = PUSH_BIT | self.next_id();
            if extract(self, broker, id, Mode::Drain, &target, req) {
                pushed += 1;
                self.metrics.sessions_pushed.increment(1);
            }
        }
        pushed
    }
}
