//! Frame encoding: [`Frame::encode`], and the Publish frame built from its parts ([`encode_publish`], with the
//! message encoded once for several peers by [`encode_message`]).

use std::num::NonZeroU32;

use bytes::{BufMut, BytesMut};
use fleetgate_protocol::mqtt::{ByteString, SubscriptionOptions};

use super::fields::{put_ids, put_str, put_strs};
use super::message::{message_size_hint, put_message};
use fleetgate_auth::{AuthMethod, ClientIdBinding};

use super::{Frame, HandoffPrincipal, LEN_PREFIX, SlotKind, Stamp, Watermarks, ty};
use crate::state::message::Message;

impl Frame {
    /// Appends the length-prefixed frame to `out`.
    pub(crate) fn encode(&self, out: &mut BytesMut) {
        framed(out, |out| self.encode_body(out));
    }

    fn encode_body(&self, out: &mut BytesMut) {
        match self {
            Frame::Hello {
                version,
                name,
                advertise,
                incarnation,
                resume,
            } => {
                out.put_u8(ty::HELLO);
                out.put_u8(*version);
                put_str(out, name);
                put_str(out, &advertise.to_string());
                out.put_u64(*incarnation);
                match resume {
                    Some(w) => {
                        out.put_u8(1);
                        put_watermarks(out, w);
                    }
                    None => out.put_u8(0),
                }
            }
            Frame::Heartbeat => out.put_u8(ty::HEARTBEAT),
            Frame::RouteAdd { filter, seq } => {
                out.put_u8(ty::ROUTE_ADD);
                put_str(out, filter);
                out.put_u64(*seq);
            }
            Frame::RouteRemove { filter, seq } => {
                out.put_u8(ty::ROUTE_REMOVE);
                put_str(out, filter);
                out.put_u64(*seq);
            }
            Frame::Claim {
                client_id,
                held,
                seq,
            } => {
                out.put_u8(ty::CLAIM);
                put_str(out, client_id);
                out.put_u8(u8::from(*held));
                out.put_u64(*seq);
            }
            Frame::SyncBegin { full } => {
                out.put_u8(ty::SYNC_BEGIN);
                out.put_u8(u8::from(*full));
            }
            Frame::SyncDone { upto } => {
                out.put_u8(ty::SYNC_DONE);
                put_watermarks(out, upto);
            }
            Frame::Ack(w) => {
                out.put_u8(ty::ACK);
                put_watermarks(out, w);
            }
            Frame::Progress(w) => {
                out.put_u8(ty::PROGRESS);
                put_watermarks(out, w);
            }
            Frame::Publish {
                direct,
                groups,
                sessions,
                msg,
            } => put_publish(out, *direct, groups, sessions, PublishBody::Message(msg)),
            Frame::Retain {
                stamp,
                topic,
                msg,
                seq,
            } => put_retain(out, stamp, topic, msg.as_deref(), *seq),
            Frame::TakeoverRequest {
                req,
                client_id,
                clean_start,
                claimant,
            } => {
                out.put_u8(ty::TAKEOVER_REQUEST);
                out.put_u64(*req);
                put_str(out, client_id);
                out.put_u8(u8::from(*clean_start));
                put_principal(out, &claimant.principal);
                out.put_u8(match claimant.binding {
                    ClientIdBinding::Unbound => 0,
                    ClientIdBinding::Prefix => 1,
                    ClientIdBinding::Exact => 2,
                });
            }
            Frame::TakeoverReply {
                req,
                moved_to,
                refused,
            } => {
                out.put_u8(ty::TAKEOVER_REPLY);
                out.put_u64(*req);
                put_str(out, moved_to.as_deref().unwrap_or(""));
                out.put_u8(u8::from(*refused));
            }
            Frame::SessionBegin {
                req,
                client_id,
                expiry_secs,
                protocol,
                next_packet_id,
                inbound_qos2,
                will,
                principal,
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
                match principal {
                    Some(p) => {
                        out.put_u8(1);
                        put_principal(out, p);
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
}

/// Writes the three change numbers of [`Watermarks`].
fn put_watermarks(out: &mut BytesMut, w: &Watermarks) {
    out.put_u64(w.routes);
    out.put_u64(w.claims);
    out.put_u64(w.retained);
}

/// Writes a client's identity: how it authenticated, its client ID, username and certificate CN.
fn put_principal(out: &mut BytesMut, p: &HandoffPrincipal) {
    out.put_u8(match p.method {
        AuthMethod::Anonymous => 0,
        AuthMethod::Certificate => 1,
        AuthMethod::Password => 2,
        AuthMethod::CertificateAndPassword => 3,
    });
    put_str(out, &p.client_id);
    put_opt_str(out, p.username.as_deref());
    put_opt_str(out, p.cn.as_deref());
}

fn put_opt_str(out: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => {
            out.put_u8(1);
            put_str(out, s);
        }
        None => out.put_u8(0),
    }
}

/// The body of a Retain frame.
fn put_retain(out: &mut BytesMut, stamp: &Stamp, topic: &str, msg: Option<&Message>, seq: u64) {
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
    out.put_u64(seq);
}

/// Appends a [`Frame::Retain`] built from its parts (the sync stream and the retained hook send borrowed
/// entries, without building a frame).
pub(crate) fn encode_retain(
    out: &mut BytesMut,
    stamp: &Stamp,
    topic: &str,
    msg: Option<&Message>,
    seq: u64,
) {
    framed(out, |out| put_retain(out, stamp, topic, msg, seq));
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
pub(crate) enum PublishBody<'a> {
    /// Encoded here.
    Message(&'a Message),
    /// Encoded once beforehand by [`encode_message`] (a message going to several peers).
    Encoded(&'a [u8]),
}

/// The message part of a Publish frame, encoded once for every peer it goes to ([`PublishBody::Encoded`]).
pub(crate) fn encode_message(msg: &Message) -> BytesMut {
    let mut out = BytesMut::with_capacity(message_size_hint(msg));
    put_message(&mut out, msg);
    out
}

/// Appends a [`Frame::Publish`] built from its parts, without assembling the frame (what the publish path sends).
pub(crate) fn encode_publish(
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

/// The body of a Publish frame: type byte, `direct`, the group and session lists, the message.
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

/// The options of a subscription as one byte: QoS in bits 0-1, no local, retain as published, retain handling
/// from bit 4.
fn options_byte(o: &SubscriptionOptions) -> u8 {
    o.qos.value()
        | u8::from(o.no_local) << 2
        | u8::from(o.retain_as_published) << 3
        | u8::from(o.retain_handling) << 4
}
