//! Cluster wire format, both directions of a peer link: length-prefixed binary frames ([`Frame`]) with a small
//! hand-written encoding (big-endian integers, `u16`-length strings, `u32`-length byte strings), every length
//! checked against what is left of the frame, so a malformed frame is an error and never a panic or an
//! allocation bigger than the frame. Frame layout and types: see `cluster/mod.rs`.
//!
//! This module holds the frame types; the code is split by concern:
//! - `encode`: [`Frame::encode`] and the publish path's encoders ([`encode_publish`], [`encode_message`]).
//! - `decode`: [`Frame::decode`], one frame off the front of a read buffer.
//! - `message`: a message's encoding inside a frame, and wills as messages for handover.
//! - `fields`: the field writers and bounds-checked field readers everything above is built from.
//! - `fuzzing`: the fuzz target's entry (decode, validate, round trip), re-exported as `crate::fuzzing`.

use std::net::SocketAddr;
use std::num::{NonZeroU16, NonZeroU32};
use std::sync::Arc;

use fleetgate_protocol::mqtt::{ByteString, QoS, SubscriptionOptions};

use crate::state::message::Message;
use crate::state::retained::Stamp;

mod decode;
mod encode;
mod fields;
pub(crate) mod fuzzing;
mod message;

pub(crate) use encode::{PublishBody, encode_message, encode_publish, encode_retain};
pub(crate) use message::{message_to_will, will_to_message};

/// Version byte of [`Frame::Hello`]; a peer speaking another version is refused. Version 2: change numbers on
/// route, claim and retained frames, SyncBegin/SyncDone with watermarks, resume in the Hello, Ack, the client's
/// identity in a handed-over session. Version 3: the connecting client's identity in a TakeoverRequest
/// ([`Claimant`]) and the holder's refusal in a TakeoverReply (a session stays with its identity).
pub(crate) const PROTOCOL_VERSION: u8 = 3;

/// Bytes of a frame beyond its MQTT message: topic, properties and session fields are bounded by the MQTT
/// packet they came from, so a frame is at most one packet plus this slack for our own fields.
pub(crate) const FRAME_OVERHEAD: usize = 64 * 1024;

/// Length prefix size.
pub(crate) const LEN_PREFIX: usize = 4;

/// Why a frame could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
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

/// How far a receiver has applied a sender's three replicated tables (its subscription filters, its claims, its
/// retained store), as the sender's change numbers: what a resumed link need not send again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Watermarks {
    /// Last route change applied.
    pub(crate) routes: u64,
    /// Last claim change applied.
    pub(crate) claims: u64,
    /// Last retained change applied.
    pub(crate) retained: u64,
}

/// The identity a handed-over session's client authenticated with at its node: the receiving node checks the
/// session's filters and will against its own ACL for it.
pub(crate) type HandoffPrincipal = fleetgate_auth::Principal;

/// Who a TakeoverRequest is for: the identity the connecting client authenticated with at the requesting node and
/// how its client ID is bound there. The holder hands the session over only when `fleetgate_auth::claim_session`
/// allows it, before it kicks anyone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claimant {
    /// The connecting client's identity.
    pub(crate) principal: HandoffPrincipal,
    /// How tightly its client ID is bound to it.
    pub(crate) binding: fleetgate_auth::ClientIdBinding,
}

/// What a [`Frame::SessionMsg`] is in the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotKind {
    /// Waiting in the queue.
    Queued,
    /// Sent, not acknowledged.
    Inflight,
    /// QoS 2, PUBREC received and PUBREL sent.
    Released,
}

/// One frame of a peer link.
#[derive(Debug)]
pub(crate) enum Frame {
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
        /// In the acceptor's Hello: how far it holds the dialer's tables from an earlier link of the same
        /// incarnation (the dialer then sends only later changes).
        resume: Option<Watermarks>,
    },
    /// Liveness, sent when the link is idle.
    Heartbeat,
    /// The sender has a subscription on `filter` (full filter, `$share/...` included), as its route change
    /// `seq`.
    RouteAdd {
        /// Full filter.
        filter: ByteString,
        /// The sender's change number.
        seq: u64,
    },
    /// The sender no longer has any subscription on `filter`, as its route change `seq`.
    RouteRemove {
        /// Full filter.
        filter: ByteString,
        /// The sender's change number.
        seq: u64,
    },
    /// The sender holds a session for a client ID the ring assigns elsewhere (`held`), or no longer does.
    Claim {
        /// Client ID.
        client_id: ByteString,
        /// Held (true) or released.
        held: bool,
        /// The sender's claim change number.
        seq: u64,
    },
    /// Start of the sync that follows Hello: everything (`full`; what the receiver held of the sender before is
    /// void unless sent again) or only the changes after the watermarks of the acceptor's Hello.
    SyncBegin {
        /// A full sync.
        full: bool,
    },
    /// End of the sync: the receiver now holds the sender's tables up to `upto`.
    SyncDone {
        /// The sender's change numbers at the end of the sync.
        upto: Watermarks,
    },
    /// After the sync, now and then: the sender's change numbers, every change of its own up to them queued
    /// before this frame. A retained write the sender applied from a third node is not sent on (its origin sends
    /// it), yet takes a change number of the sender: this moves the receiver's watermark past them, so that a
    /// resume does not send them again.
    Progress(Watermarks),
    /// From the receiver of a link back to its sender: how far it applied the sender's tables (lets the sender
    /// forget retained deletes every peer has).
    Ack(Watermarks),
    /// A message for the receiver's local subscribers: the plain ones when `direct`, the members of the listed
    /// shared groups (full `$share/g/f` filters), and the listed sessions (redirected to a session just handed over).
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
        /// The sender's retained change number.
        seq: u64,
    },
    /// Asks the receiver for its session of `client_id` (reply: SessionBegin.. SessionEnd, or TakeoverReply).
    TakeoverRequest {
        /// Request id, echoed.
        req: u64,
        /// Client ID.
        client_id: ByteString,
        /// The new connection starts clean: the old session ends instead of moving.
        clean_start: bool,
        /// Who connects.
        claimant: Claimant,
    },
    /// No session to hand over; `moved_to` names the node it went to, when known.
    TakeoverReply {
        /// Request id.
        req: u64,
        /// Where the session went.
        moved_to: Option<String>,
        /// The session is here but another identity's: the requester refuses its CONNECT
        /// (`session_owner_mismatch`).
        refused: bool,
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
        /// Who the client authenticated as (`None`: a session of a node without authentication).
        principal: Option<HandoffPrincipal>,
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
    /// redirects to it can end (sent after a barrier round).
    SessionInstalled(ByteString),
    /// The sender is draining: drop its routes and claims, send it nothing more.
    Leaving,
    /// Answer with BarrierAck once everything before it was applied.
    Barrier(u64),
    /// Reply to Barrier.
    BarrierAck(u64),
}

/// The type byte that starts each frame's body.
mod ty {
    pub(crate) const HELLO: u8 = 0x01;
    pub(crate) const HEARTBEAT: u8 = 0x02;
    pub(crate) const ROUTE_ADD: u8 = 0x10;
    pub(crate) const ROUTE_REMOVE: u8 = 0x11;
    pub(crate) const CLAIM: u8 = 0x12;
    pub(crate) const SYNC_DONE: u8 = 0x13;
    pub(crate) const SYNC_BEGIN: u8 = 0x14;
    pub(crate) const ACK: u8 = 0x15;
    pub(crate) const PROGRESS: u8 = 0x16;
    pub(crate) const PUBLISH: u8 = 0x20;
    pub(crate) const RETAIN: u8 = 0x21;
    pub(crate) const TAKEOVER_REQUEST: u8 = 0x30;
    pub(crate) const TAKEOVER_REPLY: u8 = 0x31;
    pub(crate) const SESSION_BEGIN: u8 = 0x32;
    pub(crate) const SESSION_SUB: u8 = 0x33;
    pub(crate) const SESSION_MSG: u8 = 0x34;
    pub(crate) const SESSION_END: u8 = 0x35;
    pub(crate) const SESSION_INSTALLED: u8 = 0x36;
    pub(crate) const SESSION_ARRIVED: u8 = 0x37;
    pub(crate) const LEAVING: u8 = 0x40;
    pub(crate) const BARRIER: u8 = 0x41;
    pub(crate) const BARRIER_ACK: u8 = 0x42;
}

/// The packet identifier of an inflight slot (0 is never valid on the wire).
pub(crate) fn packet_id(v: u16) -> Result<NonZeroU16, FrameError> {
    NonZeroU16::new(v).ok_or(FrameError::Malformed("packet id 0"))
}

#[cfg(test)]
mod tests;
