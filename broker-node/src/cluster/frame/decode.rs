//! Frame decoding: [`Frame::decode`] takes one complete frame off a read buffer and parses its fields, every
//! one checked against what is left of the frame.

use std::num::NonZeroU32;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use fleetgate_protocol::mqtt::{RetainHandling, SubscriptionOptions};

use super::fields::{
    get_ids, get_qos, get_str, get_strs, get_u8, get_u16, get_u32, get_u64, qos_from,
};
use super::message::get_message;
use fleetgate_auth::{AuthMethod, ClientIdBinding};

use super::{
    Claimant, Frame, FrameError, HandoffPrincipal, LEN_PREFIX, SlotKind, Stamp, Watermarks, ty,
};

impl Frame {
    /// Takes one complete frame off the front of `buf`: `Ok(None)` when more bytes are needed. Frames longer
    /// than `max_len` are refused before their body is buffered.
    pub(crate) fn decode(buf: &mut BytesMut, max_len: usize) -> Result<Option<Frame>, FrameError> {
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
                let resume = match get_u8(r)? {
                    0 => None,
                    _ => Some(get_watermarks(r)?),
                };
                Frame::Hello {
                    version,
                    name,
                    advertise,
                    incarnation,
                    resume,
                }
            }
            ty::HEARTBEAT => Frame::Heartbeat,
            ty::ROUTE_ADD => Frame::RouteAdd {
                filter: get_str(r)?,
                seq: get_u64(r)?,
            },
            ty::ROUTE_REMOVE => Frame::RouteRemove {
                filter: get_str(r)?,
                seq: get_u64(r)?,
            },
            ty::CLAIM => Frame::Claim {
                client_id: get_str(r)?,
                held: get_u8(r)? != 0,
                seq: get_u64(r)?,
            },
            ty::SYNC_BEGIN => Frame::SyncBegin {
                full: get_u8(r)? != 0,
            },
            ty::SYNC_DONE => Frame::SyncDone {
                upto: get_watermarks(r)?,
            },
            ty::ACK => Frame::Ack(get_watermarks(r)?),
            ty::PROGRESS => Frame::Progress(get_watermarks(r)?),
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
                    seq: get_u64(r)?,
                }
            }
            ty::TAKEOVER_REQUEST => Frame::TakeoverRequest {
                req: get_u64(r)?,
                client_id: get_str(r)?,
                clean_start: get_u8(r)? != 0,
                claimant: Claimant {
                    principal: get_principal(r)?,
                    binding: match get_u8(r)? {
                        0 => ClientIdBinding::Unbound,
                        1 => ClientIdBinding::Prefix,
                        2 => ClientIdBinding::Exact,
                        _ => return Err(FrameError::Malformed("client id binding")),
                    },
                },
            },
            ty::TAKEOVER_REPLY => {
                let req = get_u64(r)?;
                let moved = get_str(r)?;
                Frame::TakeoverReply {
                    req,
                    moved_to: (!moved.is_empty()).then(|| moved.to_string()),
                    refused: get_u8(r)? != 0,
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
                let principal = match get_u8(r)? {
                    0 => None,
                    _ => Some(get_principal(r)?),
                };
                Frame::SessionBegin {
                    req,
                    client_id,
                    expiry_secs,
                    protocol,
                    next_packet_id,
                    inbound_qos2,
                    will,
                    principal,
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

/// Reads the three change numbers of [`Watermarks`].
fn get_watermarks(r: &mut Bytes) -> Result<Watermarks, FrameError> {
    Ok(Watermarks {
        routes: get_u64(r)?,
        claims: get_u64(r)?,
        retained: get_u64(r)?,
    })
}

/// Reads a client's identity written by the encoder.
fn get_principal(r: &mut Bytes) -> Result<HandoffPrincipal, FrameError> {
    let method = match get_u8(r)? {
        0 => AuthMethod::Anonymous,
        1 => AuthMethod::Certificate,
        2 => AuthMethod::Password,
        3 => AuthMethod::CertificateAndPassword,
        _ => return Err(FrameError::Malformed("auth method")),
    };
    let client_id = get_str(r)?.to_string();
    let username = get_opt_str(r)?;
    let cn = get_opt_str(r)?;
    Ok(HandoffPrincipal {
        username,
        cn,
        client_id,
        method,
    })
}

fn get_opt_str(r: &mut Bytes) -> Result<Option<String>, FrameError> {
    match get_u8(r)? {
        0 => Ok(None),
        _ => Ok(Some(get_str(r)?.to_string())),
    }
}

/// Back from the options byte written by the encoder.
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
