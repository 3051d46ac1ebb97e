//! A session in transit ([`SessionSnapshot`]) on the wire: written as the frames of one handover
//! ([`frames`]: SessionBegin, a SessionSub per subscription, a SessionMsg per inflight or queued message,
//! SessionEnd) and rebuilt from them on the link they arrive on ([`Incoming`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use fleetgate_protocol::mqtt::{ProtocolLevel, QoS};

use crate::cluster::frame::{self, Frame, SlotKind};
use crate::cluster::validate::Violation;
use crate::state::budget::Weigh;
use crate::state::message::Delivery;
use crate::state::session::{Inflight, SessionSnapshot, SubscriptionEntry};
use crate::state::will::Will;

/// What one handed-over session may bring: the limits a local client's session has.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HandoverLimits {
    /// Queued messages (`max_queued_messages`).
    pub(crate) max_queued: usize,
    /// QoS 2 packet IDs awaiting PUBREL, and messages in flight to the client (`receive_maximum`).
    pub(crate) max_inflight: usize,
    /// Subscriptions (`max_subscriptions`).
    pub(crate) max_subscriptions: usize,
    /// Bytes of its queued and in-flight messages (`max_queued_bytes`).
    pub(crate) max_bytes: usize,
    /// Sessions being received at once on one link.
    pub(crate) max_in_transit: usize,
    /// Bytes of messages being received at once on one link, over all its sessions in transit.
    pub(crate) max_transit_bytes: usize,
}

impl HandoverLimits {
    /// The limits of a local session (`[limits]`), and what one link may have in transit: a drain pushes
    /// sessions one after another, so a few sessions' worth.
    pub(crate) fn from_config(limits: &fleetgate_config::node::LimitsConfig) -> HandoverLimits {
        HandoverLimits {
            max_queued: limits.max_queued_messages,
            max_inflight: usize::from(limits.receive_maximum),
            max_subscriptions: limits.max_subscriptions,
            max_bytes: limits.max_queued_bytes,
            max_in_transit: MAX_SESSIONS_IN_TRANSIT,
            max_transit_bytes: limits
                .max_queued_bytes
                .saturating_mul(TRANSIT_SESSIONS_OF_BYTES),
        }
    }
}

/// Sessions received at once on one link: a drain pushes them one after another.
pub(crate) const MAX_SESSIONS_IN_TRANSIT: usize = 1024;
/// Full sessions' worth of message bytes (`max_queued_bytes`) one link may have in transit at once.
const TRANSIT_SESSIONS_OF_BYTES: usize = 4;

/// Sessions being received on one inbound link, by request id.
#[derive(Debug)]
pub(crate) struct Incoming {
    building: HashMap<u64, Building>,
    limits: HandoverLimits,
    /// Bytes of the messages of every session in transit.
    bytes: usize,
}

/// A session being received, with the packet IDs of its messages in flight so far and their bytes.
#[derive(Debug)]
struct Building {
    snap: SessionSnapshot,
    inflight_ids: HashSet<u16>,
    bytes: usize,
}

impl Incoming {
    /// Nothing received yet; sessions are held to `limits`.
    pub(crate) fn new(limits: HandoverLimits) -> Incoming {
        Incoming {
            building: HashMap::new(),
            limits,
            bytes: 0,
        }
    }

    /// The link these sessions arrived on closed mid-handover: they are lost; returns how many messages they
    /// owed their clients.
    pub(crate) fn abandon(self) -> usize {
        let mut owed = 0;
        for Building { snap, .. } in self.building.into_values() {
            tracing::warn!(event = "cluster_handoff_lost", client_id = %snap.client_id, "link closed during handover");
            owed += snap.queue.len() + snap.inflight.len();
        }
        owed
    }

    /// Applies a SessionBegin, SessionSub or SessionMsg frame to the session it belongs to; other frames are
    /// ignored. A session beyond our limits, or inconsistent, is a violation.
    pub(super) fn apply(&mut self, f: Frame) -> Result<(), Violation> {
        let limits = self.limits;
        match f {
            Frame::SessionBegin {
                req,
                client_id,
                expiry_secs,
                protocol,
                next_packet_id,
                inbound_qos2,
                will,
                principal,
            } => {
                if self.building.len() >= limits.max_in_transit || self.building.contains_key(&req)
                {
                    return Err(Violation::Session("too many sessions in transit"));
                }
                let protocol =
                    ProtocolLevel::from_u8(protocol).ok_or(Violation::Session("protocol level"))?;
                if inbound_qos2.len() > limits.max_inflight || inbound_qos2.contains(&0) {
                    return Err(Violation::Session("QoS 2 packet ids"));
                }
                // The will's right to be published is decided by this node's ACL when it is due (see install).
                let will = will.map(|(m, delay)| Will {
                    will: Box::new(frame::message_to_will(&m, delay)),
                    delay,
                    permit: None,
                });
                let snap = SessionSnapshot {
                    client_id,
                    expiry_secs,
                    protocol,
                    next_packet_id,
                    inbound_qos2,
                    will,
                    principal: principal.map(Arc::new),
                    subs: Vec::new(),
                    queue: Vec::new(),
                    inflight: Vec::new(),
                };
                self.building.insert(
                    req,
                    Building {
                        snap,
                        inflight_ids: HashSet::new(),
                        bytes: 0,
                    },
                );
            }
            Frame::SessionSub {
                req,
                filter,
                options,
                id,
            } => {
                let s = &mut self.session(req)?.snap;
                if s.subs.len() >= limits.max_subscriptions {
                    return Err(Violation::Session("too many subscriptions"));
                }
                s.subs.push((filter, SubscriptionEntry { options, id }));
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
                let delivery = Delivery {
                    msg,
                    qos,
                    retain,
                    sub_ids,
                    seq: 0,
                };
                let weight = delivery.weight();
                if self.bytes + weight > limits.max_transit_bytes {
                    return Err(Violation::Session(
                        "more message bytes in transit than allowed",
                    ));
                }
                let b = self.session(req)?;
                if b.bytes + weight > limits.max_bytes {
                    return Err(Violation::Session("messages beyond max_queued_bytes"));
                }
                b.bytes += weight;
                self.bytes += weight;
                let b = self.session(req)?;
                if kind == SlotKind::Queued {
                    if b.snap.queue.len() >= limits.max_queued {
                        return Err(Violation::Session("queue longer than max_queued_messages"));
                    }
                    b.snap.queue.push(delivery);
                    return Ok(());
                }
                let packet_id =
                    frame::packet_id(packet_id).map_err(|_| Violation::Session("packet id 0"))?;
                if b.snap.inflight.len() >= limits.max_inflight
                    || qos == QoS::AtMostOnce
                    || (kind == SlotKind::Released && qos != QoS::ExactlyOnce)
                    || !b.inflight_ids.insert(packet_id.get())
                {
                    return Err(Violation::Session("inflight message"));
                }
                b.snap.inflight.push(Inflight {
                    packet_id,
                    delivery,
                    released: kind == SlotKind::Released,
                });
            }
            _ => {}
        }
        Ok(())
    }

    fn session(&mut self, req: u64) -> Result<&mut Building, Violation> {
        self.building
            .get_mut(&req)
            .ok_or(Violation::Session("part of a session that did not begin"))
    }

    /// The session of handover `req`, complete at its SessionEnd; `None` when it never began here.
    pub(super) fn finish(&mut self, req: u64) -> Option<SessionSnapshot> {
        let b = self.building.remove(&req)?;
        self.bytes -= b.bytes;
        Some(b.snap)
    }
}

/// The frames of handover `req` of `snap`: SessionBegin, the subscriptions, the inflight then queued messages,
/// SessionEnd.
pub(super) fn frames(snap: SessionSnapshot, req: u64) -> Vec<Frame> {
    let mut out = Vec::with_capacity(2 + snap.subs.len() + snap.queue.len() + snap.inflight.len());
    out.push(Frame::SessionBegin {
        req,
        client_id: snap.client_id,
        expiry_secs: snap.expiry_secs,
        protocol: snap.protocol.as_u8(),
        next_packet_id: snap.next_packet_id,
        inbound_qos2: snap.inbound_qos2,
        will: snap
            .will
            .map(|w| (Arc::new(frame::will_to_message(&w.will)), w.delay)),
        principal: snap.principal.as_deref().cloned(),
    });
    for (filter, e) in snap.subs {
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
    for i in snap.inflight {
        let kind = if i.released {
            SlotKind::Released
        } else {
            SlotKind::Inflight
        };
        out.push(slot(kind, i.packet_id.get(), i.delivery));
    }
    for d in snap.queue {
        out.push(slot(SlotKind::Queued, 0, d));
    }
    out.push(Frame::SessionEnd { req });
    out
}
