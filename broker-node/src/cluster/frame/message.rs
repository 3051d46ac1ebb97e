//! A message inside a frame (Publish, Retain, SessionMsg, a SessionBegin's will): its encoding and decoding,
//! and the conversions between a will and the message it turns into, for handover.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use fleetgate_protocol::mqtt::{LastWill, PublishProperties};

use super::FrameError;
use super::fields::{get_bytes, get_qos, get_str, get_u8, get_u32, get_u64, put_bytes, put_str};
use crate::state::message::Message;

/// Bytes of an encoded message without properties (a reservation hint; properties grow the buffer as needed).
pub(super) fn message_size_hint(m: &Message) -> usize {
    2 + m.topic.len() + 1 + 1 + 8 + 1 + 4 + m.payload.len()
}

/// A will as a message (what it turns into when published), for handover.
pub(crate) fn will_to_message(will: &LastWill) -> Message {
    Message::from_will(will.clone(), Instant::now())
}

/// Back from [`will_to_message`].
pub(crate) fn message_to_will(msg: &Message, delay: u32) -> LastWill {
    let p = msg.properties.as_deref().cloned().unwrap_or_default();
    LastWill {
        qos: msg.qos,
        retain: msg.retain,
        topic: msg.topic.clone(),
        message: msg.payload.clone(),
        will_delay_interval_sec: (delay > 0).then_some(delay),
        correlation_data: p.correlation_data,
        message_expiry_interval: p.message_expiry_interval,
        content_type: p.content_type,
        user_properties: p.user_properties,
        is_utf8_payload: p.is_utf8_payload.then_some(true),
        response_topic: p.response_topic,
    }
}

// Property presence bits of an encoded message.
const P_PROPS: u8 = 1;
const P_CORRELATION: u8 = 2;
const P_CONTENT_TYPE: u8 = 4;
const P_RESPONSE_TOPIC: u8 = 8;
const P_UTF8: u8 = 16;
const P_EXPIRY_INTERVAL: u8 = 32;

/// topic, qos, retain, expiry (ms left + 1, 0 = none), property bits and fields, user properties, payload.
/// The clock is read only for a message with an expiry (most have none; this runs for every forward).
pub(super) fn put_message(out: &mut BytesMut, m: &Message) {
    put_str(out, &m.topic);
    out.put_u8(m.qos.value());
    out.put_u8(u8::from(m.retain));
    let left = m.expires_at.map_or(0, |at| {
        u64::try_from(at.saturating_duration_since(Instant::now()).as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    });
    out.put_u64(left);
    match &m.properties {
        None => out.put_u8(0),
        Some(p) => {
            let mut bits = P_PROPS;
            if p.correlation_data.is_some() {
                bits |= P_CORRELATION;
            }
            if p.content_type.is_some() {
                bits |= P_CONTENT_TYPE;
            }
            if p.response_topic.is_some() {
                bits |= P_RESPONSE_TOPIC;
            }
            if p.is_utf8_payload {
                bits |= P_UTF8;
            }
            if p.message_expiry_interval.is_some() {
                bits |= P_EXPIRY_INTERVAL;
            }
            out.put_u8(bits);
            if let Some(c) = &p.correlation_data {
                put_bytes(out, c);
            }
            if let Some(c) = &p.content_type {
                put_str(out, c);
            }
            if let Some(r) = &p.response_topic {
                put_str(out, r);
            }
            if let Some(e) = p.message_expiry_interval {
                out.put_u32(e.get());
            }
            out.put_u32(u32::try_from(p.user_properties.len()).unwrap_or(u32::MAX));
            for (k, v) in &p.user_properties {
                put_str(out, k);
                put_str(out, v);
            }
        }
    }
    put_bytes(out, &m.payload);
}

/// Back from [`put_message`]: a message whose expiry is counted from now.
pub(super) fn get_message(r: &mut Bytes) -> Result<Message, FrameError> {
    let topic = get_str(r)?;
    let qos = get_qos(r)?;
    let retain = get_u8(r)? != 0;
    let left = get_u64(r)?;
    // At most the largest Message Expiry Interval MQTT can carry: a peer's absurd value is an error, not an
    // overflowing instant.
    if left > u64::from(u32::MAX) * 1000 + 1 {
        return Err(FrameError::Malformed("message expiry"));
    }
    let expires_at = match left {
        0 => None,
        left => Some(
            Instant::now()
                .checked_add(Duration::from_millis(left - 1))
                .ok_or(FrameError::Malformed("message expiry"))?,
        ),
    };
    let bits = get_u8(r)?;
    let properties = if bits & P_PROPS == 0 {
        None
    } else {
        let correlation_data = (bits & P_CORRELATION != 0)
            .then(|| get_bytes(r))
            .transpose()?;
        let content_type = (bits & P_CONTENT_TYPE != 0)
            .then(|| get_str(r))
            .transpose()?;
        let response_topic = (bits & P_RESPONSE_TOPIC != 0)
            .then(|| get_str(r))
            .transpose()?;
        let message_expiry_interval = if bits & P_EXPIRY_INTERVAL != 0 {
            NonZeroU32::new(get_u32(r)?)
        } else {
            None
        };
        let n = get_u32(r)?;
        let mut user_properties = Vec::new();
        for _ in 0..n {
            user_properties.push((get_str(r)?, get_str(r)?));
        }
        Some(Box::new(PublishProperties {
            topic_alias: None,
            correlation_data,
            message_expiry_interval,
            content_type,
            user_properties,
            is_utf8_payload: bits & P_UTF8 != 0,
            response_topic,
            subscription_ids: Vec::new(),
        }))
    };
    let payload = get_bytes(r)?;
    Ok(Message {
        topic,
        payload,
        qos,
        retain,
        properties,
        expires_at,
        origin: 0,
    })
}
