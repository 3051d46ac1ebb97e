//! What the store holds, key by key. Every value is one frame of the cluster's handover encoding (the same
//! bounds-checked decoder reads both), so a session read back from disk is rebuilt exactly like one arriving
//! from a peer.
//!
//! Keyspace `sessions`, keys `u16 length ‖ client ID ‖ kind ‖ rest`, so one client's keys are contiguous and
//! ordered record → subscriptions → messages:
//! - kind 0, no rest: the session record (a SessionBegin frame: expiry, protocol, identity, will, QoS 2 IDs);
//! - kind 1, rest the full filter: a subscription (a SessionSub frame);
//! - kind 2, rest a big-endian `u64` sequence: a queued or in-flight message (a SessionMsg frame; its kind and
//!   packet ID say whether it was sent). Sequences are unique on the node and never reused.
//!
//! Keyspace `retained`, key the topic: a Retain frame.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use fleetgate_protocol::mqtt::ByteString;

use crate::cluster::frame::{self, Frame, SlotKind};
use crate::state::message::Delivery;
use crate::state::session::{SessionState, SubscriptionEntry};

/// The kind byte of a key in the `sessions` keyspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// The session record.
    Record = 0,
    /// A subscription.
    Subscription = 1,
    /// A queued or in-flight message.
    Message = 2,
}

/// The prefix every key of `client_id` starts with.
pub(crate) fn client_prefix(client_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + client_id.len() + 9);
    // Client IDs are at most 65,535 bytes (an MQTT string).
    key.put_u16(u16::try_from(client_id.len()).unwrap_or(u16::MAX));
    key.put_slice(client_id.as_bytes());
    key
}

/// The key of `client_id`'s record.
pub(crate) fn record_key(client_id: &str) -> Vec<u8> {
    let mut key = client_prefix(client_id);
    key.put_u8(KeyKind::Record as u8);
    key
}

/// The key of `client_id`'s subscription on `filter`.
pub(crate) fn subscription_key(client_id: &str, filter: &str) -> Vec<u8> {
    let mut key = client_prefix(client_id);
    key.put_u8(KeyKind::Subscription as u8);
    key.put_slice(filter.as_bytes());
    key
}

/// The key of `client_id`'s message `seq`.
pub(crate) fn message_key(client_id: &str, seq: u64) -> Vec<u8> {
    let mut key = client_prefix(client_id);
    key.put_u8(KeyKind::Message as u8);
    key.put_u64(seq);
    key
}

/// A key of the `sessions` keyspace, taken apart.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ParsedKey<'k> {
    /// The client ID.
    pub(crate) client_id: &'k [u8],
    /// What the value is.
    pub(crate) kind: KeyKind,
    /// The message sequence (kind Message), else 0.
    pub(crate) seq: u64,
}

/// Takes a key apart; `None` for a key this version does not write.
pub(crate) fn parse_key(key: &[u8]) -> Option<ParsedKey<'_>> {
    let (len, rest) = key.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    let client_id = rest.get(..len)?;
    let (&kind, rest) = rest.get(len..)?.split_first()?;
    match kind {
        0 if rest.is_empty() => Some(ParsedKey {
            client_id,
            kind: KeyKind::Record,
            seq: 0,
        }),
        1 => Some(ParsedKey {
            client_id,
            kind: KeyKind::Subscription,
            seq: 0,
        }),
        2 => Some(ParsedKey {
            client_id,
            kind: KeyKind::Message,
            seq: u64::from_be_bytes(rest.try_into().ok()?),
        }),
        _ => None,
    }
}

/// The record of a session: what a SessionBegin frame carries. The will kept is the connection's (a node
/// that dies ends its connections without DISCONNECT, so the will is due after its delay) or the one waiting
/// out its delay.
pub(crate) fn encode_record(client_id: &ByteString, st: &SessionState) -> BytesMut {
    let will = st
        .will
        .as_ref()
        .or(st.pending_will.as_ref())
        .map(|w| (Arc::new(frame::will_to_message(&w.will)), w.delay));
    let begin = Frame::SessionBegin {
        req: 0,
        client_id: client_id.clone(),
        expiry_secs: st.expiry_secs,
        protocol: st.protocol.as_u8(),
        next_packet_id: st.next_packet_id,
        inbound_qos2: st.inbound_qos2.iter().copied().collect(),
        will,
        principal: st.principal.as_deref().cloned(),
    };
    let mut out = BytesMut::new();
    begin.encode(&mut out);
    out
}

/// A subscription's value.
pub(crate) fn encode_subscription(filter: &ByteString, entry: SubscriptionEntry) -> BytesMut {
    let mut out = BytesMut::new();
    Frame::SessionSub {
        req: 0,
        filter: filter.clone(),
        options: entry.options,
        id: entry.id,
    }
    .encode(&mut out);
    out
}

/// A message's value: the delivery, and whether (and under which packet ID) it was sent.
pub(crate) fn encode_message(delivery: &Delivery, slot: SlotKind, packet_id: u16) -> BytesMut {
    let mut out = BytesMut::with_capacity(64 + delivery.msg.payload.len());
    Frame::SessionMsg {
        req: 0,
        kind: slot,
        packet_id,
        qos: delivery.qos,
        retain: delivery.retain,
        sub_ids: delivery.sub_ids.clone(),
        msg: delivery.msg.clone(),
    }
    .encode(&mut out);
    out
}

/// Decodes a value written by this module: exactly one frame, of at most `max_len` bytes.
pub(crate) fn decode_value(value: &[u8], max_len: usize) -> Result<Frame, &'static str> {
    let mut buf = BytesMut::from(value);
    match Frame::decode(&mut buf, max_len) {
        Ok(Some(frame)) if buf.is_empty() => Ok(frame),
        Ok(Some(_)) => Err("bytes after the frame"),
        Ok(None) => Err("truncated frame"),
        Err(frame::FrameError::TooLarge) => Err("frame too large"),
        Err(frame::FrameError::Malformed(what)) => Err(what),
        Err(frame::FrameError::UnknownType(_)) => Err("unknown frame type"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_record_subscriptions_messages_and_parse_back() {
        let keys = [
            record_key("a"),
            subscription_key("a", "t/#"),
            message_key("a", 1),
            message_key("a", 256),
            record_key("ab"),
        ];
        let mut sorted = keys.to_vec();
        sorted.sort();
        // "ab" sorts after every key of "a": the length prefix keeps clients apart.
        assert_eq!(sorted, keys);
        assert_eq!(
            parse_key(&message_key("a", 256)),
            Some(ParsedKey {
                client_id: b"a",
                kind: KeyKind::Message,
                seq: 256
            })
        );
        assert_eq!(
            parse_key(&record_key("ab")).map(|k| k.kind),
            Some(KeyKind::Record)
        );
        assert_eq!(parse_key(&[0, 5, b'a']), None);
        assert_eq!(parse_key(&[0, 1, b'a', 9]), None);
        assert_eq!(parse_key(&[0, 1, b'a', 2, 1]), None);
    }
}
