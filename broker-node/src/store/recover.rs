//! Reading the store back at start: one ordered scan of the `sessions` keyspace rebuilds every persistent
//! session (record, then subscriptions, then messages in sequence order: inflight ones keep their packet ID,
//! and are sent again with DUP), one of `retained` the retained messages. A value that does not decode is
//! skipped and counted (logged with its client ID); keys without a record are returned as orphans to delete.

use std::collections::HashSet;
use std::num::NonZeroU16;
use std::sync::Arc;

use fleetgate_protocol::mqtt::{ByteString, ProtocolLevel, QoS};

use super::records::{KeyKind, decode_value, parse_key};
use super::writer::Tables;
use crate::cluster::frame::{self, Frame, SlotKind};
use crate::state::message::{Delivery, Message};
use crate::state::retained::Stamp;
use crate::state::session::{Inflight, SessionSnapshot, SubscriptionEntry};
use crate::state::will::Will;

/// Everything read back.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// The persistent sessions, detached.
    pub(crate) sessions: Vec<SessionSnapshot>,
    /// The retained messages.
    pub(crate) retained: Vec<(ByteString, Arc<Message>, Stamp)>,
    /// The highest message sequence seen (new ones start above it).
    pub(crate) max_seq: u64,
    /// Client IDs with stored keys but no record (to be deleted).
    pub(crate) orphans: Vec<ByteString>,
    /// Values that did not decode, skipped.
    pub(crate) skipped: usize,
    /// Messages read back.
    pub(crate) messages: usize,
}

/// A session being read back, with the packet IDs of its inflight messages so far.
struct Building {
    snap: SessionSnapshot,
    inflight_ids: HashSet<u16>,
}

impl Recovered {
    /// The counts the `store_recovered` event reports.
    pub(crate) fn counts(&self) -> crate::events::StoreCounts {
        crate::events::StoreCounts {
            sessions: self.sessions.len(),
            messages: self.messages,
            retained: self.retained.len(),
            skipped: self.skipped,
            orphans: self.orphans.len(),
        }
    }
}

/// Reads every session and retained message of `tables`; values longer than `max_value_len` are skipped.
pub(super) fn read_all(tables: &Tables, max_value_len: usize) -> Result<Recovered, fjall::Error> {
    let mut out = Recovered::default();
    let mut current: Option<Building> = None;
    let mut orphan: Option<Vec<u8>> = None;
    for guard in tables.sessions.iter() {
        let (key, value) = guard.into_inner()?;
        let Some(parsed) = parse_key(&key) else {
            out.skipped += 1;
            continue;
        };
        if parsed.kind == KeyKind::Message {
            out.max_seq = out.max_seq.max(parsed.seq);
        }
        let same = current
            .as_ref()
            .is_some_and(|b| b.snap.client_id.as_bytes() == parsed.client_id);
        if !same {
            out.sessions.extend(current.take().map(|b| b.snap));
        }
        let frame = decode_value(&value, max_value_len);
        match (parsed.kind, frame) {
            (KeyKind::Record, Ok(frame)) => match session_from_record(frame) {
                Some(snap) if snap.client_id.as_bytes() == parsed.client_id => {
                    current = Some(Building {
                        snap,
                        inflight_ids: HashSet::new(),
                    });
                }
                _ => skipped(&mut out, parsed.client_id, "session record"),
            },
            (_, Ok(frame)) if same => {
                let Some(b) = current.as_mut() else { continue };
                if !add_to_session(b, frame, parsed.seq) {
                    skipped(&mut out, parsed.client_id, "subscription or message");
                } else if parsed.kind == KeyKind::Message {
                    out.messages += 1;
                }
            }
            (_, Ok(_)) => {
                if orphan.as_deref() != Some(parsed.client_id) {
                    orphan = Some(parsed.client_id.to_vec());
                    if let Ok(id) = std::str::from_utf8(parsed.client_id) {
                        out.orphans.push(ByteString::from(id));
                    }
                }
            }
            (_, Err(what)) => skipped(&mut out, parsed.client_id, what),
        }
    }
    out.sessions.extend(current.map(|b| b.snap));
    for guard in tables.retained.iter() {
        let (_, value) = guard.into_inner()?;
        match decode_value(&value, max_value_len) {
            Ok(Frame::Retain {
                stamp,
                topic,
                msg: Some(msg),
                ..
            }) => out.retained.push((topic, msg, stamp)),
            Ok(_) => {}
            Err(what) => skipped(&mut out, b"", what),
        }
    }
    Ok(out)
}

/// Counts and logs a value that could not be read back.
fn skipped(out: &mut Recovered, client_id: &[u8], what: &str) {
    out.skipped += 1;
    tracing::warn!(event = "store_value_skipped", client_id = %String::from_utf8_lossy(client_id), what, "a stored value did not decode; skipped");
}

/// A detached session from its record (a SessionBegin frame).
fn session_from_record(frame: Frame) -> Option<SessionSnapshot> {
    let Frame::SessionBegin {
        client_id,
        expiry_secs,
        protocol,
        next_packet_id,
        inbound_qos2,
        will,
        principal,
        ..
    } = frame
    else {
        return None;
    };
    let protocol = ProtocolLevel::from_u8(protocol)?;
    // The will is checked against the ACL of the moment it is due (see `install_session`).
    let will = will.map(|(m, delay)| Will {
        will: Box::new(frame::message_to_will(&m, delay)),
        delay,
        permit: None,
    });
    Some(SessionSnapshot {
        client_id,
        expiry_secs,
        protocol,
        next_packet_id,
        inbound_qos2: inbound_qos2.into_iter().filter(|&id| id != 0).collect(),
        will,
        principal: principal.map(Arc::new),
        subs: Vec::new(),
        queue: Vec::new(),
        inflight: Vec::new(),
    })
}

/// Adds a subscription or a message (sequence `seq`) to the session being read; false when it is not one.
fn add_to_session(b: &mut Building, frame: Frame, seq: u64) -> bool {
    match frame {
        Frame::SessionSub {
            filter,
            options,
            id,
            ..
        } => {
            b.snap
                .subs
                .push((filter, SubscriptionEntry { options, id }));
            true
        }
        Frame::SessionMsg {
            kind,
            packet_id,
            qos,
            retain,
            sub_ids,
            msg,
            ..
        } => {
            if qos == QoS::AtMostOnce {
                return false;
            }
            let delivery = Delivery {
                msg,
                qos,
                retain,
                sub_ids,
                seq,
            };
            let sent = match (kind, NonZeroU16::new(packet_id)) {
                (SlotKind::Queued, _) | (_, None) => None,
                (kind, Some(id)) if b.inflight_ids.insert(id.get()) => Some((kind, id)),
                // Two messages in flight under one packet ID: the later one goes out again as new.
                _ => None,
            };
            match sent {
                Some((kind, packet_id)) => b.snap.inflight.push(Inflight {
                    packet_id,
                    delivery,
                    released: kind == SlotKind::Released && qos == QoS::ExactlyOnce,
                }),
                None => b.snap.queue.push(delivery),
            }
            true
        }
        _ => false,
    }
}
