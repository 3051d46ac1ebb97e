//! Cluster wire format, both directions of a peer link: length-prefixed binary frames ([`Frame`]) with a small
//! hand-written encoding (big-endian integers, `u16`-length strings, `u32`-length byte strings), every length
//! checked against what is left of the frame, so a malformed frame is an error and never a panic or an
//! allocation bigger than the frame. Frame layout and types: see `cluster/mod.rs`.

use std::net::SocketAddr;
use std::num::{NonZeroU16, NonZeroU32};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use fleetgate_protocol::mqtt::{
    ByteString, LastWill, PublishProperties, QoS, RetainHandling, SubscriptionOptions,
};

use crate::message::Message;

/// Version byte of [`Frame::Hello`]; a peer speaking another version is refused.
pub const PROTOCOL_VERSION: u8 = 1;

/// Bytes of a frame beyond its MQTT message: topic, properties and session fields are bounded by the MQTT
/// packet they came from, so a frame is at most one packet plus this slack for our own fields.
pub const FRAME_OVERHEAD: usize = 64 * 1024;

/// Length prefix size.
pub const LEN_PREFIX: usize = 4;

/// Why a frame could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The announced length exceeds the limit.
    #[error("frame too large")]
    TooLarge,
    /// The frame ended early or a field is out of range.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    /// Unknown frame type.
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
}

/// A hybrid logical timestamp: `(milliseconds << 16 | counter, node name)`; greater wins (last writer wins).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Stamp {
    /// Physical milliseconds in the high 48 bits, logical counter in the low 16.
    pub time: u64,
    /// Writer node, the tie-break.
    pub node: String,
}

/// What a [`Frame::SessionMsg`] is in the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotKind {
    /// Waiting in the queue.
    Queued,
    /// Sent, not acknowledged.
    Inflight,
    /// QoS 2, PUBREC received and PUBREL sent.
    Released,
}

/// One frame of a peer link.
#[derive(Debug)]
pub enum Frame {
    /// First frame each way: protocol version, node name, the address to dial it at, a per-process nonce.
    Hello {
        /// [`PROTOCOL_VERSION`].
        version: u8,
        /// Sender's node name.
        name: String,
        /// Sender's advertised cluster address.
        advertise: SocketAddr,
        /// Random per process start: a restarted node is a new incarnation.
        incarnation: u64,
    },
    /// Liveness, sent when the link is idle.
    Heartbeat,
    /// The sender has a subscription on `filter` (full filter, `$share/...` included).
    RouteAdd(ByteString),
    /// The sender no longer has any subscription on `filter`.
    RouteRemove(ByteString),
    /// The sender holds a session for a client ID the ring assigns elsewhere (`held`), or no longer does.
    Claim {
        /// Client ID.
        client_id: ByteString,
        /// Held (true) or released.
        held: bool,
    },
    /// End of the full sync (routes, claims, retained) that follows Hello.
    SyncDone,
    /// A message for the receiver's local subscribers: the plain ones when `direct`, the members of the listed
    /// shared groups (full `$share/g/f` filters), and the listed sessions (relayed to a session just handed over).
    Publish {
        /// Deliver to non-shared subscribers.
        direct: bool,
        /// Shared subscriptions the receiver serves for this message.
        groups: Vec<ByteString>,
        /// Client IDs whose sessions get it whatever `direct` says.
        sessions: Vec<ByteString>,
        /// The message.
        msg: Arc<Message>,
    },
    /// A retained message set (`msg`) or cleared (`None`) at `stamp`.
    Retain {
        /// When, last writer wins.
        stamp: Stamp,
        /// Topic.
        topic: ByteString,
        /// The message; `None` clears.
        msg: Option<Arc<Message>>,
    },
    /// Asks the receiver for its session of `client_id` (reply: SessionBegin.. SessionEnd, or TakeoverReply).
    TakeoverRequest {
        /// Request id, echoed.
        req: u64,
        /// Client ID.
        client_id: ByteString,
        /// The new connection starts clean: the old session ends instead of moving.
        clean_start: bool,
    },
    /// No session to hand over; `moved_to` names the node it went to, when known.
    TakeoverReply {
        /// Request id.
        req: u64,
        /// Where the session went.
        moved_to: Option<String>,
    },
    /// Start of a session handover (`req` 0 = pushed at drain).
    SessionBegin {
        /// Request id, 0 when pushed.
        req: u64,
        /// Client ID.
        client_id: ByteString,
        /// Session expiry (seconds).
        expiry_secs: u32,
        /// Protocol level byte of the last connection.
        protocol: u8,
        /// Packet ID allocator position.
        next_packet_id: u16,
        /// QoS 2 packet IDs received, PUBREL pending.
        inbound_qos2: Vec<u16>,
        /// A will to keep for the session (drain only), with its delay.
        will: Option<(Arc<Message>, u32)>,
    },
    /// A subscription of the session being handed over.
    SessionSub {
        /// Request id.
        req: u64,
        /// Full filter.
        filter: ByteString,
        /// Options.
        options: SubscriptionOptions,
        /// Subscription identifier.
        id: Option<NonZeroU32>,
    },
    /// A queued or in-flight message of the session being handed over.
    SessionMsg {
        /// Request id.
        req: u64,
        /// Queue or inflight.
        kind: SlotKind,
        /// Packet ID (inflight only, else 0).
        packet_id: u16,
        /// Delivery QoS.
        qos: QoS,
        /// Delivery RETAIN flag.
        retain: bool,
        /// Subscription identifiers.
        sub_ids: Vec<NonZeroU32>,
        /// The message.
        msg: Arc<Message>,
    },
    /// End of a session handover.
    SessionEnd {
        /// Request id.
        req: u64,
    },
    /// The session handed over for `client_id` is in the sender's router: every message the sender publishes
    /// after this frame reached the session there (sent at once on install).
    SessionArrived(ByteString),
    /// The session handed over for `client_id` is installed at the sender and every peer has its routes:
    /// relays to it can end (sent after a barrier round).
    SessionInstalled(ByteString),
    /// The sender is draining: drop its routes and claims, send it nothing more.
    Leaving,
    /// Answer with BarrierAck once everything before it was applied.
    Barrier(u64),
    /// Reply to Barrier.
    BarrierAck(u64),
}

mod ty {
    pub const HELLO: u8 = 0x01;
    pub const HEARTBEAT: u8 = 0x02;
    pub const ROUTE_ADD: u8 = 0x10;
    pub const ROUTE_REMOVE: u8 = 0x11;
    pub const CLAIM: u8 = 0x12;
    pub const SYNC_DONE: u8 = 0x13;
    pub const PUBLISH: u8 = 0x20;
    pub const RETAIN: u8 = 0x21;
    pub const TAKEOVER_REQUEST: u8 = 0x30;
    pub const TAKEOVER_REPLY: u8 = 0x31;
    pub const SESSION_BEGIN: u8 = 0x32;
    pub const SESSION_SUB: u8 = 0x33;
    pub const SESSION_MSG: u8 = 0x34;
    pub const SESSION_END: u8 = 0x35;
    pub const SESSION_INSTALLED: u8 = 0x36;
    pub const SESSION_ARRIVED: u8 = 0x37;
    pub const LEAVING: u8 = 0x40;
    pub const BARRIER: u8 = 0x41;
    pub const BARRIER_ACK: u8 = 0x42;
}

impl Frame {
    /// True for the frames a full peer queue may drop (message forwards); everything else must arrive or the
    /// link is reset.
    pub fn is_droppable(&self) -> bool {
        matches!(self, Frame::Publish { .. })
    }

    /// Appends the length-prefixed frame to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        framed(out, |out| self.encode_body(out));
    }

    fn encode_body(&self, out: &mut BytesMut) {
        match self {
            Frame::Hello {
                version,
                name,
                advertise,
                incarnation,
            } => {
                out.put_u8(ty::HELLO);
                out.put_u8(*version);
                put_str(out, name);
                put_str(out, &advertise.to_string());
                out.put_u64(*incarnation);
            }
            Frame::Heartbeat => out.put_u8(ty::HEARTBEAT),
            Frame::RouteAdd(f) => {
                out.put_u8(ty::ROUTE_ADD);
                put_str(out, f);
            }
            Frame::RouteRemove(f) => {
                out.put_u8(ty::ROUTE_REMOVE);
                put_str(out, f);
            }
            Frame::Claim { client_id, held } => {
                out.put_u8(ty::CLAIM);
                put_str(out, client_id);
                out.put_u8(u8::from(*held));
            }
            Frame::SyncDone => out.put_u8(ty::SYNC_DONE),
            Frame::Publish {
                direct,
                groups,
                sessions,
                msg,
            } => put_publish(out, *direct, groups, sessions, PublishBody::Message(msg)),
            Frame::Retain { stamp, topic, msg } => {
                out.put_u8(ty::RETAIN);
                out.put_u64(stamp.time);
                put_str(out, &stamp.node);
                put_str(out, topic);
                match msg {
                    Some(m) => {
                        out.put_u8(1);
                        put_message(out, m);
                    }
                    None => out.put_u8(0),
                }
            }
            Frame::TakeoverRequest {
                req,
                client_id,
                clean_start,
            } => {
                out.put_u8(ty::TAKEOVER_REQUEST);
                out.put_u64(*req);
                put_str(out, client_id);
                out.put_u8(u8::from(*clean_start));
            }
            Frame::TakeoverReply { req, moved_to } => {
                out.put_u8(ty::TAKEOVER_REPLY);
                out.put_u64(*req);
                put_str(out, moved_to.as_deref().unwrap_or(""));
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
                out.put_u8(ty::SESSION_BEGIN);
                out.put_u64(*req);
                put_str(out, client_id);
                out.put_u32(*expiry_secs);
                out.put_u8(*protocol);
                out.put_u16(*next_packet_id);
                out.put_u16(u16::try_from(inbound_qos2.len()).unwrap_or(u16::MAX));
                for id in inbound_qos2.iter().take(usize::from(u16::MAX)) {
                    out.put_u16(*id);
                }
                match will {
                    Some((m, delay)) => {
                        out.put_u8(1);
                        out.put_u32(*delay);
                        put_message(out, m);
                    }
                    None => out.put_u8(0),
                }
            }
            Frame::SessionSub {
                req,
                filter,
                options,
                id,
            } => {
                out.put_u8(ty::SESSION_SUB);
                out.put_u64(*req);
                put_str(out, filter);
                out.put_u8(options_byte(options));
                out.put_u32(id.map_or(0, NonZeroU32::get));
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
                out.put_u8(ty::SESSION_MSG);
                out.put_u64(*req);
                out.put_u8(match kind {
                    SlotKind::Queued => 0,
                    SlotKind::Inflight => 1,
                    SlotKind::Released => 2,
                });
                out.put_u16(*packet_id);
                out.put_u8(qos.value());
                out.put_u8(u8::from(*retain));
                put_ids(out, sub_ids);
                put_message(out, msg);
            }
            Frame::SessionEnd { req } => {
                out.put_u8(ty::SESSION_END);
                out.put_u64(*req);
            }
            Frame::SessionInstalled(c) => {
                out.put_u8(ty::SESSION_INSTALLED);
                put_str(out, c);
            }
            Frame::SessionArrived(c) => {
                out.put_u8(ty::SESSION_ARRIVED);
                put_str(out, c);
            }
            Frame::Leaving => out.put_u8(ty::LEAVING),
            Frame::Barrier(id) => {
                out.put_u8(ty::BARRIER);
                out.put_u64(*id);
            }
            Frame::BarrierAck(id) => {
                out.put_u8(ty::BARRIER_ACK);
                out.put_u64(*id);
            }
        }
    }

    /// Takes one complete frame off the front of `buf`: `Ok(None)` when more bytes are needed. Frames longer
    /// than `max_len` are refused before their body is buffered.
    pub fn decode(buf: &mut BytesMut, max_len: usize) -> Result<Option<Frame>, FrameError> {
        if buf.len() < LEN_PREFIX {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len > max_len {
            return Err(FrameError::TooLarge);
        }
        if buf.len() < LEN_PREFIX + len {
            buf.reserve(LEN_PREFIX + len - buf.len());
            return Ok(None);
        }
        buf.advance(LEN_PREFIX);
        let body = buf.split_to(len).freeze();
        Frame::parse(body).map(Some)
    }

    fn parse(mut b: Bytes) -> Result<Frame, FrameError> {
        let r = &mut b;
        let kind = get_u8(r)?;
        let frame = match kind {
            ty::HELLO => {
                let version = get_u8(r)?;
                let name = get_str(r)?.to_string();
                let advertise = get_str(r)?
                    .parse()
                    .map_err(|_| FrameError::Malformed("advertise address"))?;
                let incarnation = get_u64(r)?;
                Frame::Hello {
                    version,
                    name,
                    advertise,
                    incarnation,
                }
            }
            ty::HEARTBEAT => Frame::Heartbeat,
            ty::ROUTE_ADD => Frame::RouteAdd(get_str(r)?),
            ty::ROUTE_REMOVE => Frame::RouteRemove(get_str(r)?),
            ty::CLAIM => Frame::Claim {
                client_id: get_str(r)?,
                held: get_u8(r)? != 0,
            },
            ty::SYNC_DONE => Frame::SyncDone,
            ty::PUBLISH => {
                let direct = get_u8(r)? != 0;
                let groups = get_strs(r)?;
                let sessions = get_strs(r)?;
                Frame::Publish {
                    direct,
                    groups,
                    sessions,
                    msg: Arc::new(get_message(r)?),
                }
            }
            ty::RETAIN => {
                let time = get_u64(r)?;
                let node = get_str(r)?.to_string();
                let topic = get_str(r)?;
                let msg = match get_u8(r)? {
                    0 => None,
                    _ => Some(Arc::new(get_message(r)?)),
                };
                Frame::Retain {
                    stamp: Stamp { time, node },
                    topic,
                    msg,
                }
            }
            ty::TAKEOVER_REQUEST => Frame::TakeoverRequest {
                req: get_u64(r)?,
                client_id: get_str(r)?,
                clean_start: get_u8(r)? != 0,
            },
            ty::TAKEOVER_REPLY => {
                let req = get_u64(r)?;
                let moved = get_str(r)?;
                Frame::TakeoverReply {
                    req,
                    moved_to: (!moved.is_empty()).then(|| moved.to_string()),
                }
            }
            ty::SESSION_BEGIN => {
                let req = get_u64(r)?;
                let client_id = get_str(r)?;
                let expiry_secs = get_u32(r)?;
                let protocol = get_u8(r)?;
                let next_packet_id = get_u16(r)?;
                let n = get_u16(r)?;
                let mut inbound_qos2 = Vec::new();
                for _ in 0..n {
                    inbound_qos2.push(get_u16(r)?);
                }
                let will = match get_u8(r)? {
                    0 => None,
                    _ => {
                        let delay = get_u32(r)?;
                        Some((Arc::new(get_message(r)?), delay))
                    }
                };
                Frame::SessionBegin {
                    req,
                    client_id,
                    expiry_secs,
                    protocol,
                    next_packet_id,
                    inbound_qos2,
                    will,
                }
            }
            ty::SESSION_SUB => Frame::SessionSub {
                req: get_u64(r)?,
                filter: get_str(r)?,
                options: options_from(get_u8(r)?)?,
                id: NonZeroU32::new(get_u32(r)?),
            },
            ty::SESSION_MSG => {
                let req = get_u64(r)?;
                let kind = match get_u8(r)? {
                    0 => SlotKind::Queued,
                    1 => SlotKind::Inflight,
                    2 => SlotKind::Released,
                    _ => return Err(FrameError::Malformed("slot kind")),
                };
                Frame::SessionMsg {
                    req,
                    kind,
                    packet_id: get_u16(r)?,
                    qos: get_qos(r)?,
                    retain: get_u8(r)? != 0,
                    sub_ids: get_ids(r)?,
                    msg: Arc::new(get_message(r)?),
                }
            }
            ty::SESSION_END => Frame::SessionEnd { req: get_u64(r)? },
            ty::SESSION_INSTALLED => Frame::SessionInstalled(get_str(r)?),
            ty::SESSION_ARRIVED => Frame::SessionArrived(get_str(r)?),
            ty::LEAVING => Frame::Leaving,
            ty::BARRIER => Frame::Barrier(get_u64(r)?),
            ty::BARRIER_ACK => Frame::BarrierAck(get_u64(r)?),
            other => return Err(FrameError::UnknownType(other)),
        };
        if r.has_remaining() {
            return Err(FrameError::Malformed("trailing bytes"));
        }
        Ok(frame)
    }
}

/// Appends what `body` writes, behind its `u32` length.
fn framed(out: &mut BytesMut, body: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_u32(0);
    body(out);
    let len = u32::try_from(out.len() - start - LEN_PREFIX).unwrap_or(u32::MAX);
    out[start..start + LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
}

/// The message part of a [`Frame::Publish`].
#[derive(Debug, Clone, Copy)]
pub enum PublishBody<'a> {
    /// Encoded here.
    Message(&'a Message),
    /// Encoded once beforehand by [`encode_message`] (a message going to several peers).
    Encoded(&'a [u8]),
}

/// The message part of a Publish frame, encoded once for every peer it goes to ([`PublishBody::Encoded`]).
pub fn encode_message(msg: &Message) -> BytesMut {
    let mut out = BytesMut::with_capacity(message_size_hint(msg));
    put_message(&mut out, msg);
    out
}

/// Appends a [`Frame::Publish`] built from its parts, without assembling the frame (what the publish path sends).
pub fn encode_publish(
    out: &mut BytesMut,
    direct: bool,
    groups: &[ByteString],
    sessions: &[ByteString],
    body: PublishBody<'_>,
) {
    let size = match body {
        PublishBody::Message(m) => message_size_hint(m),
        PublishBody::Encoded(b) => b.len(),
    };
    // One reservation for the whole frame (lists are usually empty): no growth step while encoding.
    out.reserve(LEN_PREFIX + 6 + size);
    framed(out, |out| put_publish(out, direct, groups, sessions, body));
}

fn put_publish(
    out: &mut BytesMut,
    direct: bool,
    groups: &[ByteString],
    sessions: &[ByteString],
    body: PublishBody<'_>,
) {
    out.put_u8(ty::PUBLISH);
    out.put_u8(u8::from(direct));
    put_strs(out, groups);
    put_strs(out, sessions);
    match body {
        PublishBody::Message(m) => put_message(out, m),
        PublishBody::Encoded(b) => out.put_slice(b),
    }
}

/// Bytes of an encoded message without properties (a reservation hint; properties grow the buffer as needed).
fn message_size_hint(m: &Message) -> usize {
    2 + m.topic.len() + 1 + 1 + 8 + 1 + 4 + m.payload.len()
}

/// A will as a message (what it turns into when published), for handover.
pub fn will_to_message(will: &LastWill) -> Message {
    Message::from_will(will.clone(), Instant::now())
}

/// Back from [`will_to_message`].
pub fn message_to_will(msg: &Message, delay: u32) -> LastWill {
    let p = msg.properties.clone().unwrap_or_default();
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

fn options_byte(o: &SubscriptionOptions) -> u8 {
    o.qos.value()
        | u8::from(o.no_local) << 2
        | u8::from(o.retain_as_published) << 3
        | u8::from(o.retain_handling) << 4
}

fn options_from(b: u8) -> Result<SubscriptionOptions, FrameError> {
    Ok(SubscriptionOptions {
        qos: qos_from(b & 0b11)?,
        no_local: b & 0b100 != 0,
        retain_as_published: b & 0b1000 != 0,
        retain_handling: match b >> 4 {
            0 => RetainHandling::AtSubscribe,
            1 => RetainHandling::AtSubscribeNew,
            2 => RetainHandling::NoAtSubscribe,
            _ => return Err(FrameError::Malformed("retain handling")),
        },
    })
}

fn qos_from(v: u8) -> Result<QoS, FrameError> {
    match v {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        2 => Ok(QoS::ExactlyOnce),
        _ => Err(FrameError::Malformed("qos")),
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
fn put_message(out: &mut BytesMut, m: &Message) {
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

fn get_message(r: &mut Bytes) -> Result<Message, FrameError> {
    let topic = get_str(r)?;
    let qos = get_qos(r)?;
    let retain = get_u8(r)? != 0;
    let left = get_u64(r)?;
    let expires_at = (left > 0).then(|| Instant::now() + Duration::from_millis(left - 1));
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
        Some(PublishProperties {
            topic_alias: None,
            correlation_data,
            message_expiry_interval,
            content_type,
            user_properties,
            is_utf8_payload: bits & P_UTF8 != 0,
            response_topic,
            subscription_ids: Vec::new(),
        })
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

fn put_str(out: &mut BytesMut, s: &str) {
    // MQTT strings (topics, client IDs) are at most 65535 bytes; our own (names, addresses) far less.
    let s = &s.as_bytes()[..s.len().min(usize::from(u16::MAX))];
    out.put_u16(s.len() as u16);
    out.put_slice(s);
}

fn put_strs(out: &mut BytesMut, list: &[ByteString]) {
    out.put_u16(u16::try_from(list.len()).unwrap_or(u16::MAX));
    for s in list.iter().take(usize::from(u16::MAX)) {
        put_str(out, s);
    }
}

fn get_strs(r: &mut Bytes) -> Result<Vec<ByteString>, FrameError> {
    let n = get_u16(r)?;
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(get_str(r)?);
    }
    Ok(out)
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32(u32::try_from(b.len()).unwrap_or(u32::MAX));
    out.put_slice(b);
}

fn put_ids(out: &mut BytesMut, ids: &[NonZeroU32]) {
    out.put_u16(u16::try_from(ids.len()).unwrap_or(u16::MAX));
    for id in ids.iter().take(usize::from(u16::MAX)) {
        out.put_u32(id.get());
    }
}

fn need(r: &Bytes, n: usize) -> Result<(), FrameError> {
    if r.remaining() < n {
        Err(FrameError::Malformed("truncated"))
    } else {
        Ok(())
    }
}

fn get_u8(r: &mut Bytes) -> Result<u8, FrameError> {
    need(r, 1)?;
    Ok(r.get_u8())
}

fn get_u16(r: &mut Bytes) -> Result<u16, FrameError> {
    need(r, 2)?;
    Ok(r.get_u16())
}

fn get_u32(r: &mut Bytes) -> Result<u32, FrameError> {
    need(r, 4)?;
    Ok(r.get_u32())
}

fn get_u64(r: &mut Bytes) -> Result<u64, FrameError> {
    need(r, 8)?;
    Ok(r.get_u64())
}

fn get_qos(r: &mut Bytes) -> Result<QoS, FrameError> {
    qos_from(get_u8(r)?)
}

fn get_str(r: &mut Bytes) -> Result<ByteString, FrameError> {
    let n = usize::from(get_u16(r)?);
    need(r, n)?;
    ByteString::try_from(r.split_to(n)).map_err(|_| FrameError::Malformed("utf-8"))
}

fn get_bytes(r: &mut Bytes) -> Result<Bytes, FrameError> {
    let n = get_u32(r)? as usize;
    need(r, n)?;
    Ok(r.split_to(n))
}

fn get_ids(r: &mut Bytes) -> Result<Vec<NonZeroU32>, FrameError> {
    let n = get_u16(r)?;
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.extend(NonZeroU32::new(get_u32(r)?));
    }
    Ok(ids)
}

/// The packet identifier of an inflight slot (0 is never valid on the wire).
pub fn packet_id(v: u16) -> Result<NonZeroU16, FrameError> {
    NonZeroU16::new(v).ok_or(FrameError::Malformed("packet id 0"))
}

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;
