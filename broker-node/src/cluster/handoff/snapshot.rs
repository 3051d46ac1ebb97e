//! A session in transit ([`SessionSnapshot`]) on the wire: written as the frames of one handover
//! ([`frames`]: SessionBegin, a SessionSub per subscription, a SessionMsg per inflight or queued message,
//! SessionEnd) and rebuilt from them on the link they arrive on ([`Incoming`]).

use std::collections::HashMap;
use std::sync::Arc;

use fleetgate_protocol::mqtt::ProtocolLevel;

use crate::cluster::frame::{self, Frame, SlotKind};
use crate::state::message::Delivery;
use crate::state::session::{Inflight, SessionSnapshot, SubscriptionEntry};
use crate::state::will::Will;

/// Sessions being received on one inbound link, by request id.
#[derive(Debug, Default)]
pub(crate) struct Incoming {
    building: HashMap<u64, SessionSnapshot>,
}

impl Incoming {
    /// The link these sessions arrived on closed mid-handover: they are lost; returns how many messages they
    /// owed their clients.
    pub(crate) fn abandon(self) -> usize {
        let mut owed = 0;
        for snap in self.building.into_values() {
            tracing::warn!(event = "cluster_handoff_lost", client_id = %snap.client_id, "link closed during handover");
            owed += snap.queue.len() + snap.inflight.len();
        }
        owed
    }

    /// Applies a SessionBegin, SessionSub or SessionMsg frame to the session it belongs to; other frames are
    /// ignored.
    pub(super) fn apply(&mut self, f: Frame) {
        match f {
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
                self.building.insert(
                    req,
                    SessionSnapshot {
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
                if let Some(s) = self.building.get_mut(&req) {
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
                let Some(s) = self.building.get_mut(&req) else {
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
            _ => {}
        }
    }

    /// The session of handover `req`, complete at its SessionEnd; `None` when it never began here.
    pub(super) fn finish(&mut self, req: u64) -> Option<SessionSnapshot> {
        self.building.remove(&req)
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
