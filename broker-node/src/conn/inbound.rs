//! Packet loop, read side: bytes from the socket → packets → what each one does (route a PUBLISH, ack,
//! subscribe, ping, DISCONNECT). Replies are encoded into the write buffer; the loop flushes them.

use std::io::ErrorKind;
use std::num::NonZeroU16;
use std::sync::Arc;

use fleetgate_protocol::mqtt::{
    ByteString, DisconnectReasonCode, Packet, Publish, PublishAck, PublishAck2, PublishAck2Reason,
    PublishAckReason, QoS, Subscribe, SubscribeAck, SubscribeAckReason, Unsubscribe,
    UnsubscribeAck, UnsubscribeAckReason,
};

use super::{Conn, End, Violation};
use crate::metrics::DropReason;
use crate::state::message::Message;
use crate::store;

/// Topic aliases a v5 client set on its PUBLISHes (alias → topic), up to our Topic Alias Maximum.
#[derive(Debug, Default)]
pub(crate) struct InboundAliases {
    max: u16,
    topics: Vec<Option<ByteString>>,
}

impl InboundAliases {
    /// Accepts aliases 1..=max.
    pub(crate) fn new(max: u16) -> InboundAliases {
        InboundAliases {
            max,
            topics: Vec::new(),
        }
    }

    /// The topic a PUBLISH is for: sets the alias when it carries a topic, looks it up when it does not.
    pub(crate) fn resolve(
        &mut self,
        topic: &ByteString,
        alias: Option<NonZeroU16>,
    ) -> Result<ByteString, End> {
        let Some(alias) = alias else {
            return if topic.is_empty() {
                Err(End::Protocol(Violation::EmptyTopic))
            } else {
                Ok(topic.clone())
            };
        };
        if alias.get() > self.max {
            return Err(End::Protocol(Violation::TopicAliasInvalid));
        }
        let idx = usize::from(alias.get() - 1);
        if topic.is_empty() {
            return self
                .topics
                .get(idx)
                .cloned()
                .flatten()
                .ok_or(End::Protocol(Violation::UnknownTopicAlias));
        }
        if self.topics.len() <= idx {
            self.topics.resize(idx + 1, None);
        }
        self.topics[idx] = Some(topic.clone());
        Ok(topic.clone())
    }
}

/// Reads what the socket has and handles every complete packet in it.
pub(crate) fn read_and_handle(conn: &mut Conn) -> Result<(), End> {
    match conn.wire.try_fill() {
        Ok(0) => return Err(End::Ungraceful),
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
        Err(_) => return Err(End::Ungraceful),
    }
    conn.heard = true;
    // PUBLISHes counted once per read, not per message (the shared counters are contended between threads).
    let mut received = [0u64; 3];
    let result = loop {
        match conn.wire.decode() {
            Ok(Some(packet)) => {
                if let Packet::Publish(p) = &packet {
                    received[usize::from(p.qos.value().min(2))] += 1;
                }
                if let Err(end) = handle(conn, packet) {
                    break Err(end);
                }
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(End::codec(e)),
        }
    };
    conn.broker.metrics.received_n(received);
    conn.wire.release_read_buffer();
    result
}

fn encode(conn: &mut Conn, packet: Packet) -> Result<(), End> {
    conn.wire.encode(packet).map_err(End::codec)
}

/// Sends an acknowledgement once what its packet changed is durable: at once without a store or when the
/// packet wrote nothing, else after the store's commit (and after the acknowledgements already waiting: a
/// client sees them in the order of its packets).
fn reply(conn: &mut Conn, packet: Packet) -> Result<(), End> {
    let ticket = store::last_submitted();
    let committed = conn.broker.store().map_or(u64::MAX, |s| s.committed());
    if conn.deferred.is_empty() && ticket <= committed {
        return encode(conn, packet);
    }
    conn.deferred.push_back((ticket, packet));
    Ok(())
}

fn handle(conn: &mut Conn, packet: Packet) -> Result<(), End> {
    store::reset_last_submitted();
    match packet {
        Packet::Publish(publish) => on_publish(conn, *publish),
        Packet::PublishAck(ack) => {
            let seq = conn.session.state.lock().acknowledge(ack.packet_id);
            if let Some(seq) = seq {
                conn.broker.persist_forget(&conn.session.client_id, seq);
            }
            Ok(())
        }
        Packet::PublishReceived(rec) => {
            let failed = u8::from(rec.reason_code) >= 0x80;
            let known = {
                let (broker, client_id) = (&conn.broker, &conn.session.client_id);
                let mut st = conn.session.state.lock();
                if failed {
                    let seq = st.complete(rec.packet_id);
                    if let Some(seq) = seq {
                        broker.persist_forget(client_id, seq);
                    }
                    seq.is_some()
                } else {
                    st.release(rec.packet_id)
                        .map(|entry| broker.persist_inflight(client_id, entry))
                        .is_some()
                }
            };
            if failed {
                return Ok(());
            }
            let reason = if known {
                PublishAck2Reason::Success
            } else {
                PublishAck2Reason::PacketIdNotFound
            };
            reply(conn, Packet::PublishRelease(ack2(rec.packet_id, reason)))
        }
        Packet::PublishRelease(rel) => {
            let known = {
                let mut st = conn.session.state.lock();
                let known = st.inbound_qos2.remove(&rel.packet_id.get());
                if known {
                    conn.broker.persist_record(&conn.session.client_id, &st);
                }
                known
            };
            let reason = if known {
                PublishAck2Reason::Success
            } else {
                PublishAck2Reason::PacketIdNotFound
            };
            reply(conn, Packet::PublishComplete(ack2(rel.packet_id, reason)))
        }
        Packet::PublishComplete(comp) => {
            let seq = conn.session.state.lock().complete(comp.packet_id);
            if let Some(seq) = seq {
                conn.broker.persist_forget(&conn.session.client_id, seq);
            }
            Ok(())
        }
        Packet::Subscribe(sub) => on_subscribe(conn, sub),
        Packet::Unsubscribe(unsub) => on_unsubscribe(conn, unsub),
        Packet::PingRequest => encode(conn, Packet::PingResponse),
        Packet::Disconnect(d) => {
            if let Some(expiry) = d.session_expiry_interval_secs {
                // [MQTT-3.14.2-2]: a session that was to end with the connection cannot be extended now.
                if conn.connect_expiry == 0 && expiry != 0 {
                    return Err(End::Protocol(Violation::SessionExpiryAfterZero));
                }
            }
            let cap = u32::try_from(conn.broker.limits.session_expiry_maximum.as_secs())
                .unwrap_or(u32::MAX);
            let expiry = d.session_expiry_interval_secs.map(|e| e.min(cap));
            Err(End::Graceful {
                with_will: d.reason_code == DisconnectReasonCode::DisconnectWithWillMessage,
                expiry,
            })
        }
        Packet::Connect(_) => Err(End::Protocol(Violation::SecondConnect)),
        Packet::Auth(_) => Err(End::Protocol(Violation::AuthNotNegotiated)),
        _ => Err(End::Protocol(Violation::UnexpectedPacket)),
    }
}

fn ack2(packet_id: NonZeroU16, reason_code: PublishAck2Reason) -> PublishAck2 {
    PublishAck2 {
        packet_id,
        reason_code,
        properties: Vec::new(),
        reason_string: None,
    }
}

fn on_publish(conn: &mut Conn, publish: Publish) -> Result<(), End> {
    let qos = publish.qos;
    let alias = publish.properties.as_ref().and_then(|p| p.topic_alias);
    let topic = conn.inbound_aliases.resolve(&publish.topic, alias)?;
    if topic.len() > conn.broker.limits.max_topic_length {
        return Err(End::Protocol(Violation::TopicTooLong));
    }
    let packet_id = publish.packet_id;
    if !conn.access.may_publish(&topic) {
        return on_denied_publish(conn, qos, packet_id);
    }
    if qos != QoS::AtMostOnce && conn.broker.store().is_some_and(|s| s.refuses_writes()) {
        return on_store_unavailable(conn, qos, packet_id);
    }
    match qos {
        QoS::AtMostOnce => {
            route(conn, publish, topic);
            Ok(())
        }
        QoS::AtLeastOnce => {
            let packet_id = packet_id.ok_or(End::Protocol(Violation::MissingPacketId))?;
            route(conn, publish, topic);
            let ack = PublishAck {
                packet_id,
                reason_code: PublishAckReason::Success,
                properties: Vec::new(),
                reason_string: None,
            };
            reply(conn, Packet::PublishAck(ack))
        }
        QoS::ExactlyOnce => {
            let packet_id = packet_id.ok_or(End::Protocol(Violation::MissingPacketId))?;
            // Delivered on PUBLISH, remembered until PUBREL so a DUP resend is not delivered twice (also
            // across a restart: the store has the packet ID by the time PUBREC goes out).
            let (new, waiting) = {
                let mut st = conn.session.state.lock();
                let new = st.inbound_qos2.insert(packet_id.get());
                if new {
                    conn.broker.persist_record(&conn.session.client_id, &st);
                }
                (new, st.inbound_qos2.len())
            };
            if new && waiting > usize::from(conn.broker.limits.receive_maximum) {
                return Err(End::Protocol(Violation::ReceiveMaximumExceeded));
            }
            if new {
                route(conn, publish, topic);
            }
            let ack = PublishAck {
                packet_id,
                reason_code: PublishAckReason::Success,
                properties: Vec::new(),
                reason_string: None,
            };
            reply(conn, Packet::PublishReceived(ack))
        }
    }
}

/// A PUBLISH the ACL denied (already logged and counted as dropped): v5 gets PUBACK/PUBREC 0x87; 3.1.1 has no
/// negative acknowledgement, so the message is dropped with a normal one (or the connection closed, per
/// `[auth] v3_disconnect_on_denied_publish`) — without an ack a 3.1.1 client would resend it forever.
fn on_denied_publish(conn: &mut Conn, qos: QoS, packet_id: Option<NonZeroU16>) -> Result<(), End> {
    let v5 = conn.level.is_v5();
    if !v5 && conn.access.v3_disconnect_on_denied_publish() {
        return Err(End::NotAuthorized);
    }
    let reason_code = if v5 {
        PublishAckReason::NotAuthorized
    } else {
        PublishAckReason::Success
    };
    let ack = |packet_id| PublishAck {
        packet_id,
        reason_code,
        properties: Vec::new(),
        reason_string: None,
    };
    match qos {
        QoS::AtMostOnce => Ok(()),
        QoS::AtLeastOnce => {
            let packet_id = packet_id.ok_or(End::Protocol(Violation::MissingPacketId))?;
            reply(conn, Packet::PublishAck(ack(packet_id)))
        }
        QoS::ExactlyOnce => {
            let packet_id = packet_id.ok_or(End::Protocol(Violation::MissingPacketId))?;
            if !v5 {
                // The 3.1.1 flow continues with PUBREL, which must find the packet ID to be completed; bounded
                // by the receive maximum like an accepted QoS 2 PUBLISH.
                let (new, waiting) = {
                    let mut st = conn.session.state.lock();
                    let new = st.inbound_qos2.insert(packet_id.get());
                    (new, st.inbound_qos2.len())
                };
                if new && waiting > usize::from(conn.broker.limits.receive_maximum) {
                    return Err(End::Protocol(Violation::ReceiveMaximumExceeded));
                }
            }
            reply(conn, Packet::PublishReceived(ack(packet_id)))
        }
    }
}

/// A QoS 1/2 PUBLISH the session store has no room for (`[storage] max_bytes`) or cannot take (failed):
/// counted `store_full`; v5 gets PUBACK/PUBREC 0x97 (quota exceeded), 3.1.1 — without a negative
/// acknowledgement — is closed unacknowledged, so the client keeps the message and sends it again later.
fn on_store_unavailable(
    conn: &mut Conn,
    qos: QoS,
    packet_id: Option<NonZeroU16>,
) -> Result<(), End> {
    conn.broker.metrics.dropped(DropReason::StoreFull);
    if !conn.level.is_v5() {
        return Err(End::StoreUnavailable);
    }
    let packet_id = packet_id.ok_or(End::Protocol(Violation::MissingPacketId))?;
    let ack = PublishAck {
        packet_id,
        reason_code: PublishAckReason::QuotaExceeded,
        properties: Vec::new(),
        reason_string: None,
    };
    if qos == QoS::AtLeastOnce {
        reply(conn, Packet::PublishAck(ack))
    } else {
        reply(conn, Packet::PublishReceived(ack))
    }
}

fn route(conn: &mut Conn, publish: Publish, topic: ByteString) {
    let msg = Message::from_publish(publish, topic, conn.session.id);
    conn.broker
        .publish_with(Arc::new(msg), &mut conn.forward_memo);
}

/// SUBSCRIBE: each filter in turn, within the limits — those past `max_filters_per_subscribe` get 0x97 (quota
/// exceeded; 3.1.1: 0x80) without being looked at, one longer than `max_topic_length` 0x8F.
fn on_subscribe(conn: &mut Conn, sub: Subscribe) -> Result<(), End> {
    let limits = &conn.broker.limits;
    let (max_filters, max_length) = (limits.max_filters_per_subscribe, limits.max_topic_length);
    let status = sub
        .topic_filters
        .iter()
        .enumerate()
        .map(|(n, (filter, options))| {
            if n >= max_filters {
                return SubscribeAckReason::QuotaExceeded;
            }
            if filter.len() > max_length {
                return SubscribeAckReason::TopicFilterInvalid;
            }
            if !conn.access.may_subscribe(filter) {
                // 0x87; the codec turns it into the 3.1.1 failure code 0x80.
                return SubscribeAckReason::NotAuthorized;
            }
            conn.broker
                .subscribe(&conn.session, filter, *options, sub.id)
        })
        .collect();
    reply(
        conn,
        Packet::SubscribeAck(SubscribeAck {
            packet_id: sub.packet_id,
            properties: Vec::new(),
            reason_string: None,
            status,
        }),
    )
}

fn on_unsubscribe(conn: &mut Conn, unsub: Unsubscribe) -> Result<(), End> {
    let status = unsub
        .topic_filters
        .iter()
        .map(|filter| {
            if conn.broker.unsubscribe(&conn.session, filter) {
                UnsubscribeAckReason::Success
            } else {
                UnsubscribeAckReason::NoSubscriptionExisted
            }
        })
        .collect();
    reply(
        conn,
        Packet::UnsubscribeAck(UnsubscribeAck {
            packet_id: unsub.packet_id,
            properties: Vec::new(),
            reason_string: None,
            status,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_set_resolve_and_reject() {
        let mut a = InboundAliases::new(2);
        let one = NonZeroU16::new(1);
        assert_eq!(a.resolve(&"t/1".into(), one).unwrap(), "t/1");
        assert_eq!(a.resolve(&"".into(), one).unwrap(), "t/1");
        assert_eq!(
            a.resolve(&"".into(), NonZeroU16::new(2)),
            Err(End::Protocol(Violation::UnknownTopicAlias))
        );
        assert_eq!(
            a.resolve(&"x".into(), NonZeroU16::new(3)),
            Err(End::Protocol(Violation::TopicAliasInvalid))
        );
        assert_eq!(
            a.resolve(&"".into(), None),
            Err(End::Protocol(Violation::EmptyTopic))
        );
    }
}
