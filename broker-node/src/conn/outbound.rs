//! Packet loop, write side: the session queue → PUBLISH packets in the write buffer, within the client's
//! receive maximum (inflight window), Maximum Packet Size and topic aliases; expired messages are dropped here.
//! On reconnect, what was in flight goes out again first (PUBLISH with DUP, or PUBREL).

use std::collections::HashMap;
use std::num::NonZeroU16;

use fleetgate_protocol::mqtt::{
    ByteString, CodecError, Packet, PlainPublish, Publish, PublishAck2, PublishAck2Reason, QoS,
};

use super::wire::Wire;
use super::{Conn, End};
use crate::limits::{DRAIN_BATCH, MAX_DEFERRED_ACKS, WRITE_HIGH_WATER};
use crate::metrics::DropReason;
use crate::state::message::{Delivery, LazyNow};
use crate::state::session::Inflight;

/// Topic aliases we assign on PUBLISHes to a v5 client, up to its Topic Alias Maximum. Assigned first come,
/// first served and kept for the connection (no eviction).
#[derive(Debug, Default)]
pub(crate) struct OutboundAliases {
    max: u16,
    aliases: HashMap<ByteString, NonZeroU16>,
}

/// How one PUBLISH names its topic.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct AliasChoice {
    /// Topic on the wire (empty when the alias is already known to the client).
    pub(crate) topic: ByteString,
    /// Alias property.
    pub(crate) alias: Option<NonZeroU16>,
    /// True when this PUBLISH establishes the alias (commit it once the packet is encoded).
    pub(crate) new: bool,
}

impl OutboundAliases {
    /// No aliases when `max` is 0.
    pub(crate) fn new(max: u16) -> OutboundAliases {
        OutboundAliases {
            max,
            aliases: HashMap::new(),
        }
    }

    /// True when the client takes no topic aliases from us.
    pub(crate) fn is_off(&self) -> bool {
        self.max == 0
    }

    /// How to name `topic` in the next PUBLISH.
    pub(crate) fn choose(&self, topic: &ByteString) -> AliasChoice {
        if self.max == 0 {
            return AliasChoice {
                topic: topic.clone(),
                alias: None,
                new: false,
            };
        }
        if let Some(alias) = self.aliases.get(topic) {
            return AliasChoice {
                topic: ByteString::new(),
                alias: Some(*alias),
                new: false,
            };
        }
        let next = u16::try_from(self.aliases.len()).unwrap_or(u16::MAX);
        match NonZeroU16::new(next.saturating_add(1)).filter(|a| a.get() <= self.max) {
            Some(alias) => AliasChoice {
                topic: topic.clone(),
                alias: Some(alias),
                new: true,
            },
            None => AliasChoice {
                topic: topic.clone(),
                alias: None,
                new: false,
            },
        }
    }

    /// Records an alias the client now knows.
    pub(crate) fn commit(&mut self, choice: &AliasChoice) {
        if let (true, Some(alias)) = (choice.new, choice.alias) {
            self.aliases.insert(choice.topic.clone(), alias);
        }
    }
}

/// Moves queued messages into the write buffer while the inflight window and the buffer allow. Returns true
/// when it stopped at [`WRITE_HIGH_WATER`] with messages still queued: nothing will signal the connection for
/// those (only the queue's empty → non-empty edge does), so the loop must come back once the socket took the
/// bytes.
///
/// A plain delivery (no properties, no alias: most of them) is encoded right where it is popped, under the
/// session lock, and then moved into the inflight list: encoding one takes tens of nanoseconds, while keeping a
/// clone of the shared message to encode after the lock (and dropping it then) cost two atomic operations on a
/// cache line that every subscriber of the message contends for. Other deliveries are encoded after the lock is
/// released (building their packet takes longer, and publishers must not wait behind it).
pub(crate) fn drain(conn: &mut Conn) -> Result<bool, End> {
    let now = LazyNow::new();
    let v5 = conn.level.is_v5();
    let plain_ok = conn.outbound_aliases.is_off();
    let mut batch: Vec<(Delivery, Option<NonZeroU16>, u64)> = Vec::new();
    let mut delivered = [0u64; 3];
    // Once one PUBLISH waits for the store (see `persist_sent`), every later one waits behind it: the wire
    // order is the queue order.
    let mut holding = conn.deferred_publishes > 0;
    loop {
        if holding && conn.deferred.len() >= MAX_DEFERRED_ACKS {
            return Ok(false);
        }
        // Pop under the session lock (packet IDs and inflight entries included, so the window and the IDs stay
        // exact).
        let popped = {
            let mut st = conn.session.state.lock();
            let mut budget = WRITE_HIGH_WATER.saturating_sub(conn.wire.pending());
            let mut taken = 0;
            loop {
                if budget == 0 || taken >= DRAIN_BATCH || (holding && batch.len() >= DRAIN_BATCH) {
                    break Ok(!st.queue.is_empty());
                }
                let Some(front) = st.queue.front() else {
                    break Ok(false);
                };
                if front.msg.is_expired_lazy(&now) {
                    if let Some(expired) = st.queue.pop_front() {
                        conn.broker
                            .persist_forget(&conn.session.client_id, expired.seq);
                    }
                    conn.broker.metrics.dropped(DropReason::Expired);
                    continue;
                }
                if front.qos != QoS::AtMostOnce && st.inflight.len() >= conn.limits.outbound_window
                {
                    // The client's acknowledgements wake the loop (they arrive as reads).
                    break Ok(false);
                }
                let Some(delivery) = st.queue.pop_front() else {
                    break Ok(false);
                };
                taken += 1;
                budget = budget.saturating_sub(delivery.wire_estimate());
                let packet_id = match delivery.qos {
                    QoS::AtMostOnce => None,
                    _ => match st.alloc_packet_id() {
                        Some(id) => Some(id),
                        None => {
                            // Every packet ID in flight (a window of 65,535): wait for an acknowledgement.
                            st.queue.push_front(delivery);
                            break Ok(false);
                        }
                    },
                };
                let hold = packet_id.map_or(0, |id| persist_sent(conn, id, &delivery));
                holding |= hold > 0;
                // Once one delivery waits in the batch, the rest of this round joins it: the wire order is
                // the queue order.
                if !(plain_ok && batch.is_empty() && delivery.is_plain(v5)) || holding {
                    if let Some(id) = packet_id {
                        st.inflight.push_back(Inflight {
                            packet_id: id,
                            delivery: delivery.clone(),
                            released: false,
                        });
                    }
                    batch.push((delivery, packet_id, if holding { hold.max(1) } else { 0 }));
                    continue;
                }
                let encoded = encode_plain(&mut conn.wire, &delivery, packet_id);
                match encoded {
                    Ok(()) => delivered[usize::from(delivery.qos.value().min(2))] += 1,
                    Err(CodecError::OutboundTooLarge) => {
                        conn.broker.metrics.dropped(DropReason::TooLarge);
                        conn.broker
                            .persist_forget(&conn.session.client_id, delivery.seq);
                        continue;
                    }
                    Err(_) => {}
                }
                // Moved, not cloned, into the inflight list (also on a codec failure: a resumed session
                // resends it).
                if let Some(id) = packet_id {
                    st.inflight.push_back(Inflight {
                        packet_id: id,
                        delivery,
                        released: false,
                    });
                }
                if let Err(e) = encoded {
                    break Err(e);
                }
            }
        };
        let more = match popped {
            Ok(more) => more,
            Err(e) => {
                conn.broker.metrics.delivered_n(delivered);
                return Err(End::codec(e));
            }
        };
        let mut too_large: Vec<NonZeroU16> = Vec::new();
        for (delivery, packet_id, hold) in batch.drain(..) {
            if hold > 0 {
                // Sent once the store has its packet ID (`Conn::send_committed`); counted as delivered now.
                let publish = publish_packet(&delivery, packet_id, v5, &now);
                conn.deferred
                    .push_back((hold, Packet::Publish(Box::new(publish))));
                conn.deferred_publishes += 1;
                delivered[usize::from(delivery.qos.value().min(2))] += 1;
                continue;
            }
            match encode_full(conn, &delivery, packet_id, v5, &now) {
                Ok(()) => {
                    delivered[usize::from(delivery.qos.value().min(2))] += 1;
                }
                Err(CodecError::OutboundTooLarge) => {
                    conn.broker.metrics.dropped(DropReason::TooLarge);
                    too_large.extend(packet_id);
                }
                // What is still in the batch stays in flight: a resumed session resends it.
                Err(e) => {
                    conn.broker.metrics.delivered_n(delivered);
                    return Err(End::codec(e));
                }
            }
        }
        // Counted once per batch, not per message (the shared counters are contended between threads).
        conn.broker.metrics.delivered_n(delivered);
        delivered = [0; 3];
        if !too_large.is_empty() {
            let mut st = conn.session.state.lock();
            for e in st
                .inflight
                .iter()
                .filter(|e| too_large.contains(&e.packet_id))
            {
                conn.broker
                    .persist_forget(&conn.session.client_id, e.delivery.seq);
            }
            st.inflight.retain(|e| !too_large.contains(&e.packet_id));
        }
        if !more || conn.wire.pending() >= WRITE_HIGH_WATER {
            return Ok(more);
        }
    }
}

/// Encodes a delivery without properties or alias straight from the shared message.
fn encode_plain(
    wire: &mut Wire,
    delivery: &Delivery,
    packet_id: Option<NonZeroU16>,
) -> Result<(), CodecError> {
    wire.encode_plain_publish(PlainPublish {
        topic: &delivery.msg.topic,
        payload: &delivery.msg.payload,
        qos: delivery.qos,
        retain: delivery.retain,
        dup: false,
        packet_id,
    })
}

/// Encodes `delivery` as a full PUBLISH packet (properties, topic alias), committing a new alias once encoded.
fn encode_full(
    conn: &mut Conn,
    delivery: &Delivery,
    packet_id: Option<NonZeroU16>,
    v5: bool,
    now: &LazyNow,
) -> Result<(), CodecError> {
    let choice = conn.outbound_aliases.choose(&delivery.msg.topic);
    let publish = delivery.to_publish(
        packet_id,
        false,
        choice.topic.clone(),
        choice.alias,
        v5,
        now,
    );
    conn.wire.encode(Packet::Publish(Box::new(publish)))?;
    conn.outbound_aliases.commit(&AliasChoice {
        topic: delivery.msg.topic.clone(),
        ..choice
    });
    Ok(())
}

/// The full PUBLISH for `delivery`, to be encoded later in the order it was built: no topic alias (a held
/// packet that turned out too large would leave the client without an alias it was promised).
fn publish_packet(
    delivery: &Delivery,
    packet_id: Option<NonZeroU16>,
    v5: bool,
    now: &LazyNow,
) -> Publish {
    delivery.to_publish(packet_id, false, delivery.msg.topic.clone(), None, v5, now)
}

/// After CONNACK on a resumed session: everything unacknowledged again, in order — PUBLISH with DUP=1, or
/// PUBREL for QoS 2 messages the client already PUBREC'd.
pub(crate) fn resend_inflight(conn: &mut Conn) {
    let now = LazyNow::new();
    let v5 = conn.level.is_v5();
    let mut st = conn.session.state.lock();
    let mut too_large = Vec::new();
    for entry in st.inflight.iter() {
        let packet = if entry.released {
            Packet::PublishRelease(PublishAck2 {
                packet_id: entry.packet_id,
                reason_code: PublishAck2Reason::Success,
                properties: Vec::new(),
                reason_string: None,
            })
        } else {
            let topic = entry.delivery.msg.topic.clone();
            Packet::Publish(Box::new(entry.delivery.to_publish(
                Some(entry.packet_id),
                true,
                topic,
                None,
                v5,
                &now,
            )))
        };
        if conn.wire.encode(packet).is_err() {
            // The new connection announced a smaller Maximum Packet Size than the old one: it can never get it.
            too_large.push(entry.packet_id);
        }
    }
    for id in too_large {
        for e in st.inflight.iter().filter(|e| e.packet_id == id) {
            conn.broker
                .persist_forget(&conn.session.client_id, e.delivery.seq);
        }
        st.inflight.retain(|e| e.packet_id != id);
        conn.broker.metrics.dropped(DropReason::TooLarge);
    }
}

/// Records in the session store the packet ID a stored QoS 2 message goes out with, so that after a restart it
/// is sent again under the same ID (DUP) and the client does not take it for a new one; returns the ticket the
/// PUBLISH must wait for (0: it need not wait). QoS 1 messages are not rewritten: after a restart they go out
/// again under new IDs, a duplicate QoS 1 allows.
fn persist_sent(conn: &Conn, packet_id: NonZeroU16, delivery: &Delivery) -> u64 {
    if delivery.qos != QoS::ExactlyOnce || delivery.seq == 0 {
        return 0;
    }
    let entry = Inflight {
        packet_id,
        delivery: delivery.clone(),
        released: false,
    };
    let ticket = conn
        .broker
        .persist_inflight(&conn.session.client_id, &entry);
    let committed = conn.broker.store().map_or(u64::MAX, |s| s.committed());
    if ticket > committed { ticket } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_are_assigned_up_to_the_maximum() {
        let mut a = OutboundAliases::new(1);
        let t1: ByteString = "t/1".into();
        let t2: ByteString = "t/2".into();
        let first = a.choose(&t1);
        assert_eq!(
            first,
            AliasChoice {
                topic: t1.clone(),
                alias: NonZeroU16::new(1),
                new: true
            }
        );
        a.commit(&first);
        assert_eq!(
            a.choose(&t1),
            AliasChoice {
                topic: ByteString::new(),
                alias: NonZeroU16::new(1),
                new: false
            }
        );
        assert_eq!(
            a.choose(&t2),
            AliasChoice {
                topic: t2.clone(),
                alias: None,
                new: false
            }
        );
        assert_eq!(OutboundAliases::new(0).choose(&t1).alias, None);
    }
}
