//! MQTT codec used by the broker node: sits between the socket (`tokio_util::codec::Framed`) and the broker's
//! connection loop, turning bytes into one packet model (the MQTT 5 one) and back.
//!
//! # Public API
//! - [`Codec`]: `Decoder<Item = Packet>` + `Encoder<Packet>`. Starts expecting a CONNECT, learns the
//!   [`ProtocolLevel`] from it, then decodes with the matching rmqtt-codec codec. MQTT 3.1/3.1.1 packets are
//!   converted to the MQTT 5 model on decode and back on encode (mapping rules: `convert.rs`).
//! - [`CodecError`]: small `Copy` error with a stable [`CodecError::reason`] label and the MQTT 5 reason code to
//!   send ([`CodecError::v5_disconnect_reason`]).
//! - [`topic`]: topic name/filter validation, wildcard matching, `$share` parsing.
//! - [`encode_varint`]: the Variable Byte Integer encoder shared by every hand-built MQTT frame (LB probes, tests).
//! - Re-exports of the rmqtt-codec MQTT 5 types, so the broker never names `rmqtt_codec`.
//!
//! # Notes (what the wrapper adds to rmqtt-codec 0.3.1)
//! - Framing is ours: the fixed header is parsed here, the announced total size is checked against the inbound
//!   limit *before* any body byte is buffered (rmqtt would `reserve(remaining_length)` first), and rmqtt's
//!   stateful decoder only ever sees complete frames, so its internal state can never be left half-way.
//! - A remaining length (or any Variable Byte Integer) written in more bytes than needed, e.g. `0x80 0x00` for
//!   0, is `Malformed` (MQTT 5 §1.5.5, 3.1.1 §2.2.3); rmqtt would accept it.
//! - Before rmqtt builds the model, `checks.rs` walks the raw frame and rejects what rmqtt lets through or
//!   reports only as a generic error: wrong fixed-header flags, non-zero length PINGREQ/PINGRESP/v3 DISCONNECT,
//!   QoS 3, v3 password without username, will QoS/retain without will (rmqtt checks it for v3 only), U+0000 in
//!   any string, packet identifier 0, reserved subscription option bits (rmqtt ignores them for v3), unknown,
//!   misplaced or duplicated v5 properties, invalid property values, trailing bytes after a CONNECT.
//! - Topic names (PUBLISH, will: empty, wildcards, depth) are checked on the raw frame; topic filters are
//!   validated with [`topic`] after decoding (`#` not last, `a/b#`, `a/+b`, `$share` names, `no_local` on shared
//!   subscriptions, depth). Names and filters deeper than [`topic::MAX_TOPIC_LEVELS`] levels are refused
//!   (`topic_too_deep`: 0x90 for a name, 0x8F for a filter) so no level-by-level walk in the broker can overflow.
//! - Framing grows the read buffer in bounded steps as bytes arrive ([`codec`] `RESERVE_STEP`): a 5-byte fixed
//!   header announcing the maximum packet size costs no memory until the body actually comes.
//! - Encoding: MQTT 3 output is converted from the MQTT 5 model; the peer's Maximum Packet Size is checked
//!   exactly on the encoded bytes (rmqtt's own limit is never set, see below), and on any error nothing is
//!   left in the output buffer.
//! - rmqtt 0.3.1 findings: its v3 encoder writes level 4 into a v3.1 (`MQIsdp`) CONNECT (patched here); its
//!   v5 encoder's size arithmetic underflows with a small outbound limit (`limit - 7` for PUBACK,
//!   `limit - 2 - len` for SUBACK: a panic in debug builds, no limit at all in release); its v3 encoder panics
//!   (`write_variable_length`) above 268,435,455 bytes instead of returning an error (guarded here); its v5
//!   decoder rejects an empty client ID with clean start 0, which MQTT 5 allows (kept: the broker answers
//!   0x85 for it).

mod checks;
mod codec;
mod convert;
mod error;
pub mod topic;

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING)
mod corpus_tests;
#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING)
mod fuzz_tests;
#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING)
mod malformed_tests;
#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING)
mod plain_publish_tests;

pub use bytes::Bytes;
pub use bytestring::ByteString;
pub use codec::{Codec, PlainPublish};
pub use convert::V3_PERSISTENT_SESSION_EXPIRY;
pub use error::CodecError;

pub(crate) use checks::{VarInt, read_varint};
pub use rmqtt_codec::cert::CertInfo;
pub use rmqtt_codec::types::{Publish, QoS};
pub use rmqtt_codec::v5::{
    Auth, AuthReasonCode, Connect, ConnectAck, ConnectAckReason, Disconnect, DisconnectReasonCode,
    LastWill, Packet, PublishAck, PublishAck2, PublishAck2Reason, PublishAckReason,
    PublishProperties, RetainHandling, Subscribe, SubscribeAck, SubscribeAckReason,
    SubscriptionOptions, Unsubscribe, UnsubscribeAck, UnsubscribeAckReason, UserProperties,
    UserProperty,
};

use std::fmt;

use bytes::BufMut;

/// Largest value a Variable Byte Integer can carry (4 bytes of 7 bits, MQTT 5 §1.5.5).
pub const MAX_VARINT: usize = 268_435_455;

/// Appends `value` as an MQTT Variable Byte Integer (the remaining length of a fixed header, a property length)
/// to `out` (a `Vec<u8>` or a `BytesMut`). Values above [`MAX_VARINT`] cannot be expressed: they are refused with
/// [`CodecError::PacketTooLarge`] and nothing is written.
pub fn encode_varint(value: usize, out: &mut impl BufMut) -> Result<(), CodecError> {
    if value > MAX_VARINT {
        return Err(CodecError::PacketTooLarge);
    }
    let mut n = value;
    loop {
        // n % 128 < 128: the cast keeps every bit.
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if n == 0 {
            return Ok(());
        }
    }
}

/// MQTT protocol level announced in the CONNECT packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolLevel {
    /// MQTT 3.1 (protocol name `MQIsdp`, level 3).
    V31,
    /// MQTT 3.1.1 (protocol name `MQTT`, level 4).
    V311,
    /// MQTT 5.0 (protocol name `MQTT`, level 5).
    V5,
}

impl ProtocolLevel {
    /// The level byte as sent in CONNECT (3, 4 or 5).
    pub fn as_u8(self) -> u8 {
        match self {
            ProtocolLevel::V31 => 3,
            ProtocolLevel::V311 => 4,
            ProtocolLevel::V5 => 5,
        }
    }

    /// Parses a CONNECT level byte; `None` for levels we do not speak.
    pub fn from_u8(level: u8) -> Option<Self> {
        match level {
            3 => Some(ProtocolLevel::V31),
            4 => Some(ProtocolLevel::V311),
            5 => Some(ProtocolLevel::V5),
            _ => None,
        }
    }

    /// True for MQTT 5.0.
    pub fn is_v5(self) -> bool {
        self == ProtocolLevel::V5
    }
}

impl fmt::Display for ProtocolLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProtocolLevel::V31 => "3.1",
            ProtocolLevel::V311 => "3.1.1",
            ProtocolLevel::V5 => "5.0",
        })
    }
}
