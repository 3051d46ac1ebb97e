//! The tokio-util codec of a broker connection: framing and size limits (ours), raw checks (`checks.rs`),
//! packet model (rmqtt-codec), v3⇄v5 conversion (`convert.rs`), topic checks ([`super::topic`]).
//!
//! Encoder choice: `Encoder<Packet>` (owned), because rmqtt's encoders take packets by value; taking `&Packet`
//! would force a clone of every outbound packet.

use std::num::NonZeroU16;

use bytes::{BufMut, BytesMut};
use rmqtt_codec::{v3, v5};
use tokio_util::codec::{Decoder, Encoder};

use super::checks::{self, Role, VarInt, ptype};
use super::error::{from_decode, from_encode};
use super::topic::{self, SharedSubscription};
use super::{
    ByteString, CodecError, Packet, ProtocolLevel, PublishAck2Reason, PublishAckReason, QoS,
    UserProperties, convert,
};

/// Largest remaining length MQTT can express (4-byte Variable Byte Integer).
const MAX_REMAINING_LENGTH: usize = super::MAX_VARINT;

/// Most the read buffer is grown by per decode call while a frame is incomplete. The announced length is only a
/// claim: reserving all of it at once would let a 5-byte fixed header make every connection allocate up to the
/// maximum packet size before a single body byte arrived. Growing by at most this much (the size of one socket
/// read in `Framed`) keeps memory proportional to the bytes actually received.
pub(crate) const RESERVE_STEP: usize = 8 * 1024;

/// MQTT codec for one connection. See the [module docs](super) for what it checks.
#[derive(Debug)]
pub struct Codec {
    role: Role,
    /// Known once a CONNECT announced it (server role) or from the start (client role).
    level: Option<ProtocolLevel>,
    /// True after a CONNECT was decoded completely (server role).
    connected: bool,
    /// Inbound limit on the whole packet (fixed header included), as MQTT 5 Maximum Packet Size counts it.
    max_packet_size: u32,
    /// The peer's Maximum Packet Size (whole packet), if it announced one.
    outbound_max: Option<u32>,
    /// Set after the first decode error: a broken stream is never resynchronised.
    failed: Option<CodecError>,
    v3: v3::Codec,
    v5: v5::Codec,
}

impl Codec {
    /// Server-side codec: the first packet must be a CONNECT; inbound packets above `max_packet_size` bytes
    /// (whole packet) are refused before their body is buffered.
    pub fn new(max_packet_size: u32) -> Self {
        Codec {
            role: Role::Server,
            level: None,
            connected: false,
            max_packet_size,
            outbound_max: None,
            failed: None,
            // rmqtt's own inbound limit is off: we check the size before it sees the frame.
            v3: v3::Codec::new(0),
            v5: v5::Codec::new(0, 0),
        }
    }

    /// Client-side codec (tests, tools): protocol level known up front, decodes server→client packets.
    pub fn client(level: ProtocolLevel, max_packet_size: u32) -> Self {
        Codec {
            role: Role::Client,
            level: Some(level),
            connected: true,
            ..Codec::new(max_packet_size)
        }
    }

    /// The protocol level, once a CONNECT announced one. After a CONNECT with an unsupported level this is
    /// `V311`, so the broker can encode the CONNACK 0x01 every client version understands.
    pub fn protocol_level(&self) -> Option<ProtocolLevel> {
        self.level
    }

    /// Inbound maximum packet size (whole packet, bytes).
    pub fn max_packet_size(&self) -> u32 {
        self.max_packet_size
    }

    /// Sets the peer's Maximum Packet Size (MQTT 5 CONNECT property); `None` = unlimited. Larger outbound
    /// packets fail with [`CodecError::OutboundTooLarge`] and nothing is written. Reason strings and user
    /// properties of acks are left out first when that makes the packet fit (MQTT 5 §3.1.2.11.4).
    pub fn set_outbound_max(&mut self, max: Option<u32>) {
        self.outbound_max = max;
    }

    fn decode_frame(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, CodecError> {
        if src.len() < 2 {
            return Ok(None);
        }
        let first = src[0];
        let (remaining, len_bytes) = match checks::read_varint(&src[1..])? {
            VarInt::Incomplete => return Ok(None),
            VarInt::Done(v, n) => (v as usize, n),
        };
        let total = 1 + len_bytes + remaining;
        if total > self.max_packet_size as usize {
            return Err(CodecError::PacketTooLarge);
        }
        let expect_connect = self.role == Role::Server && !self.connected;
        checks::check_fixed_header(
            first,
            remaining as u32,
            self.level,
            expect_connect,
            self.role,
        )?;
        if src.len() < total {
            // Room for the next read only, never the whole announced frame (see RESERVE_STEP).
            src.reserve((total - src.len()).min(RESERVE_STEP));
            return Ok(None);
        }
        let body = &src[1 + len_bytes..total];
        if first >> 4 == ptype::CONNECT && self.role == Role::Server && !self.connected {
            match checks::connect_level(body) {
                Ok(level) => self.level = Some(level),
                Err(CodecError::UnsupportedProtocolLevel) => {
                    self.level = Some(ProtocolLevel::V311);
                    return Err(CodecError::UnsupportedProtocolLevel);
                }
                Err(e) => return Err(e),
            }
        }
        let level = self.level.ok_or(CodecError::ExpectedConnect)?;
        checks::check_body(first, body, level, self.role)?;

        // rmqtt sees exactly one complete frame, so its `reserve(remaining_length)` never runs and its
        // internal state is back at "frame header" afterwards.
        let before = src.len();
        let packet = if level.is_v5() {
            self.v5.decode(src).map_err(from_decode)?.map(|(p, _)| p)
        } else {
            self.v3
                .decode(src)
                .map_err(from_decode)?
                .map(|(p, _)| convert::v3_to_v5(p))
        };
        let packet = packet.ok_or(CodecError::Malformed)?;
        if before - src.len() != total {
            return Err(CodecError::Malformed);
        }
        check_model(&packet, level)?;
        if matches!(packet, Packet::Connect(_)) {
            self.connected = true;
        }
        Ok(Some(packet))
    }
}

/// Checks that need the decoded strings: topic filter syntax and `no_local` on shared subscriptions.
fn check_model(packet: &Packet, level: ProtocolLevel) -> Result<(), CodecError> {
    match packet {
        Packet::Subscribe(s) => {
            for (filter, opts) in &s.topic_filters {
                topic::validate_topic_filter(filter).map_err(filter_error)?;
                if level.is_v5()
                    && opts.no_local
                    && SharedSubscription::parse(filter)
                        .map_err(filter_error)?
                        .is_some()
                {
                    return Err(CodecError::NoLocalOnSharedSubscription);
                }
            }
        }
        Packet::Unsubscribe(u) => {
            for filter in &u.topic_filters {
                topic::validate_topic_filter(filter).map_err(filter_error)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// A bad filter is `InvalidTopicFilter` (0x8F), even when empty; U+0000 and too many levels keep their own error.
fn filter_error(e: topic::TopicError) -> CodecError {
    match e {
        topic::TopicError::NullChar => CodecError::NullChar,
        topic::TopicError::TooDeep => CodecError::TopicFilterTooDeep,
        _ => CodecError::InvalidTopicFilter,
    }
}

impl Decoder for Codec {
    type Item = Packet;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, CodecError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        self.decode_frame(src).inspect_err(|&e| {
            self.failed = Some(e);
            // rmqtt may have stopped mid-frame; never reuse its v3 decode state. (The v5 codec is kept: it
            // remembers "request problem information" for encoding the DISCONNECT that may follow.)
            self.v3 = v3::Codec::new(0);
        })
    }
}

impl Encoder<Packet> for Codec {
    type Error = CodecError;

    /// Encodes in the connection's protocol version. For MQTT 3, a server's DISCONNECT writes nothing and
    /// returns `Ok` (MQTT 3 has no server DISCONNECT: the broker just closes the socket); AUTH is
    /// `NotInProtocolVersion`. Above the peer's Maximum Packet Size, an MQTT 5 ack/DISCONNECT/AUTH is retried
    /// without its reason string and user properties; if it still does not fit, or for any other packet,
    /// the result is `OutboundTooLarge`. On error nothing is left in `dst`.
    fn encode(&mut self, item: Packet, dst: &mut BytesMut) -> Result<(), CodecError> {
        let level = self.level.ok_or(CodecError::NoProtocolLevel)?;
        let fallback = match self.outbound_max {
            Some(_) if level.is_v5() => without_diagnostics(&item),
            _ => None,
        };
        match self.encode_once(item, level, dst) {
            Err(CodecError::OutboundTooLarge) if fallback.is_some() => match fallback {
                Some(stripped) => self.encode_once(stripped, level, dst),
                None => Err(CodecError::OutboundTooLarge),
            },
            other => other,
        }
    }
}

/// A PUBLISH without properties, for [`Codec::encode_plain_publish`]: the common delivery, encoded from
/// borrowed parts.
#[derive(Debug, Clone, Copy)]
pub struct PlainPublish<'a> {
    /// Topic name (not empty: no alias here).
    pub topic: &'a str,
    /// Application payload.
    pub payload: &'a [u8],
    /// QoS of this delivery.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// DUP flag.
    pub dup: bool,
    /// Packet identifier (QoS 1 and 2 only).
    pub packet_id: Option<NonZeroU16>,
}

impl Codec {
    /// Encodes a PUBLISH with no properties straight from borrowed parts, byte for byte what
    /// [`Encoder::encode`] writes for the same packet (`plain_publish_matches_the_packet_encoder` checks it),
    /// without building an owned packet: no allocation and no reference-count traffic per delivery. Same errors:
    /// `NoProtocolLevel`, `OutboundTooLarge` above the peer's Maximum Packet Size or the largest remaining
    /// length; nothing is written then.
    pub fn encode_plain_publish(
        &mut self,
        p: PlainPublish<'_>,
        dst: &mut BytesMut,
    ) -> Result<(), CodecError> {
        let level = self.level.ok_or(CodecError::NoProtocolLevel)?;
        let packet_id = match (p.qos, p.packet_id) {
            (QoS::AtMostOnce, _) => None,
            (_, Some(id)) => Some(id),
            (_, None) => return Err(CodecError::EncodeFailed),
        };
        let remaining = 2
            + p.topic.len()
            + if packet_id.is_some() { 2 } else { 0 }
            + usize::from(level.is_v5())
            + p.payload.len();
        if remaining > MAX_REMAINING_LENGTH || p.topic.len() > usize::from(u16::MAX) {
            return Err(CodecError::OutboundTooLarge);
        }
        let header_len = 1 + varint_len(remaining);
        if let Some(max) = self.outbound_max
            && header_len + remaining > max as usize
        {
            return Err(CodecError::OutboundTooLarge);
        }
        dst.reserve(header_len + remaining);
        dst.put_u8(0x30 | (u8::from(p.dup) << 3) | (p.qos.value() << 1) | u8::from(p.retain));
        super::encode_varint(remaining, dst)?;
        // Checked above: the topic length fits in a u16.
        dst.put_u16(p.topic.len() as u16);
        dst.put_slice(p.topic.as_bytes());
        if let Some(id) = packet_id {
            dst.put_u16(id.get());
        }
        if level.is_v5() {
            // Property length 0.
            dst.put_u8(0);
        }
        dst.put_slice(p.payload);
        Ok(())
    }

    fn encode_once(
        &mut self,
        item: Packet,
        level: ProtocolLevel,
        dst: &mut BytesMut,
    ) -> Result<(), CodecError> {
        if let Packet::Publish(p) = &item {
            // rmqtt's v3 encoder panics above the largest remaining length; refuse before calling it.
            let approx = 4 + p.topic.len() + p.payload.len();
            if approx > MAX_REMAINING_LENGTH {
                return Err(CodecError::OutboundTooLarge);
            }
        }
        let start = dst.len();
        let is_connect = matches!(item, Packet::Connect(_));
        // rmqtt's own outbound limit stays off: with a small limit its size arithmetic underflows
        // (`limit - 7` in PUBACK, `limit - 2 - len` in SUBACK) and panics in debug builds.
        let result = if level.is_v5() {
            if let Some(frame) =
                short_ack(&item).filter(|f| self.outbound_max.is_none_or(|m| m as usize >= f.len()))
            {
                dst.extend_from_slice(&frame);
                return Ok(());
            }
            self.v5.encode(item, dst).map_err(from_encode)
        } else {
            match convert::v5_to_v3(item, level, self.role == Role::Client)? {
                None => return Ok(()),
                Some(p) => self.v3.encode(p, dst).map_err(from_encode),
            }
        };
        if let Err(e) = result {
            // rmqtt may have written part of the packet before failing.
            dst.truncate(start);
            return Err(e);
        }
        if level == ProtocolLevel::V31 && is_connect {
            patch_v31_level(&mut dst[start..]);
        }
        if let Some(max) = self.outbound_max
            && dst.len() - start > max as usize
        {
            dst.truncate(start);
            return Err(CodecError::OutboundTooLarge);
        }
        Ok(())
    }
}

/// Bytes of `value` as a Variable Byte Integer (at most [`MAX_REMAINING_LENGTH`]).
fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// The 2-byte short form of an MQTT 5 PUBACK/PUBREC/PUBREL/PUBCOMP whose reason is Success and that has no
/// properties (MQTT 5 §3.4.2.1): what Mosquitto sends, and the only form some clients parse (paho-mqtt 1.6
/// crashes on a longer PUBREL).
fn short_ack(packet: &Packet) -> Option<[u8; 4]> {
    let (first_byte, packet_id, success, bare) = match packet {
        Packet::PublishAck(a) | Packet::PublishReceived(a) => (
            if matches!(packet, Packet::PublishAck(_)) {
                0x40
            } else {
                0x50
            },
            a.packet_id,
            a.reason_code == PublishAckReason::Success,
            a.properties.is_empty() && a.reason_string.is_none(),
        ),
        Packet::PublishRelease(a) | Packet::PublishComplete(a) => (
            if matches!(packet, Packet::PublishRelease(_)) {
                0x62
            } else {
                0x70
            },
            a.packet_id,
            a.reason_code == PublishAck2Reason::Success,
            a.properties.is_empty() && a.reason_string.is_none(),
        ),
        _ => return None,
    };
    let [hi, lo] = packet_id.get().to_be_bytes();
    (success && bare).then_some([first_byte, 2, hi, lo])
}

/// The packet without its diagnostic properties (reason string, user properties), if it has any that the
/// sender may leave out to respect the peer's Maximum Packet Size (MQTT 5 §3.1.2.11.4).
fn without_diagnostics(packet: &Packet) -> Option<Packet> {
    let mut p = packet.clone();
    let had = match &mut p {
        Packet::ConnectAck(a) => take_diag(&mut a.reason_string, &mut a.user_properties),
        Packet::PublishAck(a) | Packet::PublishReceived(a) => {
            take_diag(&mut a.reason_string, &mut a.properties)
        }
        Packet::PublishRelease(a) | Packet::PublishComplete(a) => {
            take_diag(&mut a.reason_string, &mut a.properties)
        }
        Packet::SubscribeAck(a) => take_diag(&mut a.reason_string, &mut a.properties),
        Packet::UnsubscribeAck(a) => take_diag(&mut a.reason_string, &mut a.properties),
        Packet::Disconnect(a) => take_diag(&mut a.reason_string, &mut a.user_properties),
        Packet::Auth(a) => take_diag(&mut a.reason_string, &mut a.user_properties),
        _ => false,
    };
    had.then_some(p)
}

fn take_diag(reason: &mut Option<ByteString>, user: &mut UserProperties) -> bool {
    let had = reason.is_some() || !user.is_empty();
    *reason = None;
    user.clear();
    had
}

/// rmqtt 0.3.1 writes level 4 after the `MQIsdp` name of a v3.1 CONNECT; put the 3 there.
fn patch_v31_level(frame: &mut [u8]) {
    // type byte, remaining length, name length (2), "MQIsdp" (6), then the level.
    let offset = match checks::read_varint(frame.get(1..).unwrap_or_default()) {
        Ok(VarInt::Done(_, n)) => 1 + n + 2 + 6,
        _ => return,
    };
    if frame.get(offset - 6..offset) == Some(b"MQIsdp".as_slice())
        && let Some(level) = frame.get_mut(offset)
    {
        *level = ProtocolLevel::V31.as_u8();
    }
}
