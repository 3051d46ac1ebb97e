//! Raw-frame checks run by the codec on every complete frame *before* rmqtt-codec builds the packet model:
//! the spec rules rmqtt skips or reports only as a generic error, each turned into a typed [`CodecError`].
//! Strings are checked for U+0000 here; UTF-8 validity is left to rmqtt (mapped to `InvalidUtf8`).

use super::{CodecError, ProtocolLevel, topic};

/// Which side of the connection the codec serves (decides which packet types may arrive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Broker side: decodes client→server packets.
    Server,
    /// Client side (tests, tools): decodes server→client packets.
    Client,
}

/// MQTT control packet types (upper nibble of the first byte).
pub(crate) mod ptype {
    pub const CONNECT: u8 = 1;
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const PUBREC: u8 = 5;
    pub const PUBREL: u8 = 6;
    pub const PUBCOMP: u8 = 7;
    pub const SUBSCRIBE: u8 = 8;
    pub const SUBACK: u8 = 9;
    pub const UNSUBSCRIBE: u8 = 10;
    pub const UNSUBACK: u8 = 11;
    pub const PINGREQ: u8 = 12;
    pub const PINGRESP: u8 = 13;
    pub const DISCONNECT: u8 = 14;
    pub const AUTH: u8 = 15;
}

/// Longest Variable Byte Integer: 4 bytes (max 268,435,455).
const MAX_VARINT_BYTES: usize = 4;

/// Result of reading a Variable Byte Integer from a possibly incomplete buffer.
pub(crate) enum VarInt {
    /// Not enough bytes yet.
    Incomplete,
    /// Value and number of bytes used.
    Done(u32, usize),
}

/// Reads a Variable Byte Integer; a 4th byte with the continuation bit is `Malformed`, and so is a value written
/// in more bytes than it needs (MQTT 5 §1.5.5, 3.1.1 §2.2.3: "the minimum number of bytes"), e.g. `0x80 0x00`
/// for 0: such an encoding ends in a zero byte after a continuation byte.
pub(crate) fn read_varint(buf: &[u8]) -> Result<VarInt, CodecError> {
    let mut value: u32 = 0;
    for i in 0..MAX_VARINT_BYTES {
        let Some(&b) = buf.get(i) else {
            return Ok(VarInt::Incomplete);
        };
        value |= u32::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            if i > 0 && b == 0 {
                return Err(CodecError::Malformed);
            }
            return Ok(VarInt::Done(value, i + 1));
        }
    }
    Err(CodecError::Malformed)
}

/// Checks the first byte and remaining length, before the body is buffered.
pub(crate) fn check_fixed_header(
    first: u8,
    remaining: u32,
    level: Option<ProtocolLevel>,
    expect_connect: bool,
    role: Role,
) -> Result<(), CodecError> {
    let kind = first >> 4;
    let flags = first & 0x0F;
    if expect_connect && kind != ptype::CONNECT {
        return Err(CodecError::ExpectedConnect);
    }
    let v5 = level.is_some_and(ProtocolLevel::is_v5);
    let server_to_client = matches!(
        kind,
        ptype::CONNACK | ptype::SUBACK | ptype::UNSUBACK | ptype::PINGRESP
    );
    let client_to_server = matches!(
        kind,
        ptype::CONNECT | ptype::SUBSCRIBE | ptype::UNSUBSCRIBE | ptype::PINGREQ
    );
    // MQTT 3 has no DISCONNECT from the server (our encoder writes none): a client never takes one.
    let v3_server_disconnect = role == Role::Client && kind == ptype::DISCONNECT && !v5;
    match (role, server_to_client, client_to_server) {
        (Role::Server, true, _) | (Role::Client, _, true) => {
            return Err(CodecError::UnexpectedPacket);
        }
        _ if v3_server_disconnect => return Err(CodecError::UnexpectedPacket),
        _ => {}
    }
    match kind {
        0 => return Err(CodecError::Malformed),
        ptype::AUTH if !v5 => return Err(CodecError::Malformed),
        ptype::PUBLISH => {
            if (flags >> 1) & 0b11 == 3 {
                return Err(CodecError::InvalidQos);
            }
            return Ok(());
        }
        _ => {}
    }
    let required_flags = match kind {
        ptype::PUBREL | ptype::SUBSCRIBE | ptype::UNSUBSCRIBE => 0b0010,
        _ => 0,
    };
    if flags != required_flags {
        return Err(CodecError::ReservedFlags);
    }
    let must_be_empty =
        matches!(kind, ptype::PINGREQ | ptype::PINGRESP) || (kind == ptype::DISCONNECT && !v5);
    if must_be_empty && remaining != 0 {
        return Err(CodecError::InvalidLength);
    }
    // MQTT 3 CONNACK and UNSUBACK are exactly 2 bytes long (3.1.1 §3.2.1, §3.11.1); rmqtt reads their two
    // fields and ignores whatever follows.
    if !v5 && matches!(kind, ptype::CONNACK | ptype::UNSUBACK) && remaining != 2 {
        return Err(CodecError::InvalidLength);
    }
    Ok(())
}

/// Reads the protocol name and level of a complete CONNECT body.
pub(crate) fn connect_level(body: &[u8]) -> Result<ProtocolLevel, CodecError> {
    let mut r = Reader::new(body);
    let name_len = r.u16()?;
    let name = r.take(usize::from(name_len))?;
    let level = r.u8()?;
    match (name, level) {
        (b"MQIsdp", 3) => Ok(ProtocolLevel::V31),
        (b"MQTT", 4) => Ok(ProtocolLevel::V311),
        (b"MQTT", 5) => Ok(ProtocolLevel::V5),
        (b"MQIsdp" | b"MQTT", _) => Err(CodecError::UnsupportedProtocolLevel),
        _ => Err(CodecError::InvalidProtocolName),
    }
}

/// Checks a complete packet body (after [`check_fixed_header`] passed).
pub(crate) fn check_body(
    first: u8,
    body: &[u8],
    level: ProtocolLevel,
    role: Role,
) -> Result<(), CodecError> {
    let v5 = level.is_v5();
    let mut r = Reader::new(body);
    match first >> 4 {
        ptype::CONNECT => check_connect(&mut r, level)?,
        ptype::PUBLISH => check_publish(&mut r, first, v5, role)?,
        ptype::PUBACK | ptype::PUBREC | ptype::PUBREL | ptype::PUBCOMP => {
            packet_id(&mut r)?;
            if v5 && r.has_remaining() {
                r.u8()?; // reason code, validated by rmqtt
                if r.has_remaining() {
                    properties(&mut r, Ctx::Ack, role)?;
                }
            }
        }
        ptype::SUBSCRIBE => check_subscribe(&mut r, v5, role)?,
        ptype::UNSUBSCRIBE => {
            packet_id(&mut r)?;
            if v5 {
                properties(&mut r, Ctx::Unsubscribe, role)?;
            }
            if !r.has_remaining() {
                return Err(CodecError::NoTopicFilters);
            }
            while r.has_remaining() {
                r.string()?;
            }
        }
        ptype::DISCONNECT | ptype::AUTH if v5 => {
            if r.has_remaining() {
                r.u8()?; // reason code, validated by rmqtt
                if r.has_remaining() {
                    let ctx = if first >> 4 == ptype::AUTH {
                        Ctx::Auth
                    } else {
                        Ctx::Disconnect
                    };
                    properties(&mut r, ctx, role)?;
                }
            }
        }
        // [MQTT-3.2.2-4], [MQTT-3.2.2-6]: a refusal never says "session present" (our encoder clears it); MQTT 3
        // return codes above 5 are reserved (rmqtt would read them all as one "reserved" code).
        ptype::CONNACK => {
            let (flags, code) = (r.u8()?, r.u8()?);
            if (flags & 0x01 != 0 && code != 0) || (!v5 && code > 5) {
                return Err(CodecError::Malformed);
            }
            return Ok(());
        }
        // SUBACK, UNSUBACK (client role) and the empty packets: rmqtt's checks suffice.
        _ => return Ok(()),
    }
    if r.has_remaining() {
        return Err(CodecError::Malformed);
    }
    Ok(())
}

fn check_connect(r: &mut Reader<'_>, level: ProtocolLevel) -> Result<(), CodecError> {
    let name_len = r.u16()?;
    r.take(usize::from(name_len))?;
    r.u8()?; // level, checked by connect_level
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(CodecError::ReservedFlags);
    }
    let will = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0b11;
    let will_retain = flags & 0x20 != 0;
    let username = flags & 0x80 != 0;
    let password = flags & 0x40 != 0;
    if !will && (will_qos != 0 || will_retain) {
        return Err(CodecError::InvalidConnectFlags);
    }
    if will && will_qos == 3 {
        return Err(CodecError::InvalidQos);
    }
    if !level.is_v5() && password && !username {
        return Err(CodecError::PasswordWithoutUsername);
    }
    r.u16()?; // keep alive
    if level.is_v5() {
        properties(r, Ctx::Connect, Role::Server)?;
    }
    r.string()?; // client id
    if will {
        if level.is_v5() {
            properties(r, Ctx::Will, Role::Server)?;
        }
        topic_name(r.string()?, false)?;
        r.binary()?;
    }
    if username {
        r.string()?;
    }
    if password {
        r.binary()?;
    }
    Ok(())
}

fn check_publish(r: &mut Reader<'_>, first: u8, v5: bool, role: Role) -> Result<(), CodecError> {
    let topic = r.string()?;
    if (first >> 1) & 0b11 != 0 {
        packet_id(r)?;
    }
    let has_alias = if v5 {
        properties(r, Ctx::Publish, role)?.topic_alias
    } else {
        false
    };
    topic_name(topic, has_alias)?;
    // The rest is the payload.
    r.pos = r.buf.len();
    Ok(())
}

fn check_subscribe(r: &mut Reader<'_>, v5: bool, role: Role) -> Result<(), CodecError> {
    packet_id(r)?;
    if v5 {
        properties(r, Ctx::Subscribe, role)?;
    }
    if !r.has_remaining() {
        return Err(CodecError::NoTopicFilters);
    }
    while r.has_remaining() {
        r.string()?;
        let opts = r.u8()?;
        // v3: bits 2-7 reserved [MQTT-3.8.3-4]; v5: bits 6-7 reserved, retain handling 3 invalid.
        let reserved = if v5 {
            opts & 0xC0 != 0 || (opts >> 4) & 0b11 == 3
        } else {
            opts & 0xFC != 0
        };
        if reserved {
            return Err(CodecError::InvalidSubscriptionOptions);
        }
        if opts & 0b11 == 3 {
            return Err(CodecError::InvalidQos);
        }
    }
    Ok(())
}

fn packet_id(r: &mut Reader<'_>) -> Result<(), CodecError> {
    if r.u16()? == 0 {
        return Err(CodecError::PacketIdZero);
    }
    Ok(())
}

/// Topic name rules on raw bytes: non-empty unless a v5 topic alias stands in, no wildcard, at most
/// [`topic::MAX_TOPIC_LEVELS`] levels.
fn topic_name(name: &[u8], has_alias: bool) -> Result<(), CodecError> {
    if name.is_empty() && !has_alias {
        return Err(CodecError::EmptyTopic);
    }
    if name.iter().any(|&b| b == b'+' || b == b'#') {
        return Err(CodecError::WildcardInTopic);
    }
    if topic::too_deep(name) {
        return Err(CodecError::TopicNameTooDeep);
    }
    Ok(())
}

/// Where a property block sits: decides which property identifiers are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Connect,
    Will,
    Publish,
    Ack,
    Subscribe,
    Unsubscribe,
    Disconnect,
    Auth,
}

/// Wire type of a property value.
#[derive(Clone, Copy)]
enum Kind {
    Byte,
    Two,
    Four,
    VarInt,
    Str,
    Bin,
    Pair,
}

/// Property identifier → wire type (MQTT 5 §2.2.2.2); `None` for unknown identifiers.
fn property_kind(id: u32) -> Option<Kind> {
    Some(match id {
        0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => Kind::Byte,
        0x13 | 0x21 | 0x22 | 0x23 => Kind::Two,
        0x02 | 0x11 | 0x18 | 0x27 => Kind::Four,
        0x0B => Kind::VarInt,
        0x03 | 0x08 | 0x12 | 0x15 | 0x1A | 0x1C | 0x1F => Kind::Str,
        0x09 | 0x16 => Kind::Bin,
        0x26 => Kind::Pair,
        _ => return None,
    })
}

fn allowed(ctx: Ctx, id: u32) -> bool {
    let list: &[u32] = match ctx {
        Ctx::Connect => &[0x11, 0x21, 0x27, 0x22, 0x19, 0x17, 0x26, 0x15, 0x16],
        Ctx::Will => &[0x18, 0x01, 0x02, 0x03, 0x08, 0x09, 0x26],
        Ctx::Publish => &[0x01, 0x02, 0x23, 0x08, 0x09, 0x26, 0x0B, 0x03],
        Ctx::Ack => &[0x1F, 0x26],
        Ctx::Subscribe => &[0x0B, 0x26],
        Ctx::Unsubscribe => &[0x26],
        Ctx::Disconnect => &[0x11, 0x1F, 0x26, 0x1C],
        Ctx::Auth => &[0x15, 0x16, 0x1F, 0x26],
    };
    list.contains(&id)
}

/// What the codec needs to know from a property block.
struct PropSummary {
    topic_alias: bool,
}

/// Walks a v5 property block: known, allowed, not duplicated, well-typed, values in range, no U+0000.
fn properties(r: &mut Reader<'_>, ctx: Ctx, role: Role) -> Result<PropSummary, CodecError> {
    let len = r.varint()?;
    let mut p = Reader::new(r.take(len as usize)?);
    let mut seen: u64 = 0;
    let mut summary = PropSummary { topic_alias: false };
    while p.has_remaining() {
        let id = p.varint()?;
        let kind = property_kind(id).ok_or(CodecError::UnknownProperty)?;
        if !allowed(ctx, id) {
            return Err(CodecError::UnknownProperty);
        }
        let repeatable = id == 0x26 || (id == 0x0B && ctx == Ctx::Publish);
        let bit = 1u64 << id; // id <= 0x2A here
        if !repeatable && seen & bit != 0 {
            return Err(CodecError::DuplicateProperty);
        }
        seen |= bit;
        let value = match kind {
            Kind::Byte => u32::from(p.u8()?),
            Kind::Two => u32::from(p.u16()?),
            Kind::Four => p.u32()?,
            Kind::VarInt => p.varint()?,
            Kind::Str => {
                p.string()?;
                continue;
            }
            Kind::Bin => {
                p.binary()?;
                continue;
            }
            Kind::Pair => {
                p.string()?;
                p.string()?;
                continue;
            }
        };
        let invalid = match id {
            // Payload format indicator, request problem/response information: 0 or 1.
            0x01 | 0x17 | 0x19 => value > 1,
            // Receive maximum, maximum packet size, topic alias, subscription identifier: never 0.
            0x21 | 0x27 | 0x23 | 0x0B => value == 0,
            _ => false,
        };
        // [MQTT-3.3.4-6]: a client's PUBLISH carries no subscription identifier.
        let sub_id_from_client = id == 0x0B && ctx == Ctx::Publish && role == Role::Server;
        if invalid || sub_id_from_client {
            return Err(CodecError::InvalidProperty);
        }
        if id == 0x23 {
            summary.topic_alias = true;
        }
    }
    Ok(summary)
}

/// Bounds-checked big-endian reader over a complete frame; running short is `Malformed`.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn has_remaining(&self) -> bool {
        self.pos < self.buf.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let end = self.pos.checked_add(n).ok_or(CodecError::Malformed)?;
        let s = self.buf.get(self.pos..end).ok_or(CodecError::Malformed)?;
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, CodecError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, CodecError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn varint(&mut self) -> Result<u32, CodecError> {
        match read_varint(&self.buf[self.pos..])? {
            VarInt::Done(v, n) => {
                self.pos += n;
                Ok(v)
            }
            VarInt::Incomplete => Err(CodecError::Malformed),
        }
    }

    fn binary(&mut self) -> Result<&'a [u8], CodecError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// A UTF-8 string field: U+0000 is refused here [MQTT-1.5.3-2], UTF-8 validity by rmqtt.
    fn string(&mut self) -> Result<&'a [u8], CodecError> {
        let s = self.binary()?;
        if s.contains(&0) {
            return Err(CodecError::NullChar);
        }
        Ok(s)
    }
}
