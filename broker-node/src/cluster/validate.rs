//! A peer is as untrusted as a client: every field of every frame from it is checked with the rules client
//! input gets (topic names and filters by the codec's own validators: UTF-8 — already checked by the decoder —,
//! length, depth, wildcard placement, no U+0000; client IDs; packet identifiers; protocol levels; message sizes
//! within our maximum packet size), and what it can make us hold is bounded (routes and claims per peer). A
//! violation closes the link with a logged reason and a metric; it never panics and never allocates without
//! bound. What a handed-over session may bring is bounded where it is assembled ([`super::handoff`]).

use fleetgate_protocol::mqtt::topic::{validate_topic_filter, validate_topic_name};

use super::frame::Frame;
use crate::state::message::Message;

/// Routes one peer may advertise: far above any fleet (a subscription filter per device would be ~10⁶ in one
/// node), and a ceiling on what a broken or hostile peer can make us hold.
pub(crate) const MAX_PEER_ROUTES: usize = 2_000_000;
/// Claims one peer may hold: one per session it holds for a client ID the ring gives another node.
pub(crate) const MAX_PEER_CLAIMS: usize = 2_000_000;

/// Why a peer's frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Violation {
    /// A topic filter that a client could not subscribe with.
    #[error("invalid topic filter")]
    Filter,
    /// A topic name that a client could not publish to.
    #[error("invalid topic name")]
    Topic,
    /// An empty client ID, or one with U+0000.
    #[error("invalid client id")]
    ClientId,
    /// A message larger than our maximum packet size.
    #[error("message larger than max_packet_size")]
    MessageTooLarge,
    /// A retained message whose topic is not the frame's.
    #[error("retained message for another topic")]
    RetainedTopic,
    /// More routes than [`MAX_PEER_ROUTES`].
    #[error("too many routes")]
    TooManyRoutes,
    /// More claims than [`MAX_PEER_CLAIMS`].
    #[error("too many claims")]
    TooManyClaims,
    /// A handed-over session that does not fit our limits or is inconsistent.
    #[error("invalid session handover: {0}")]
    Session(&'static str),
    /// A frame only the other side of a link sends.
    #[error("frame not expected on this link")]
    Unexpected,
}

impl Violation {
    /// The `reason` label of the metric and log event.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Violation::Filter => "filter",
            Violation::Topic => "topic",
            Violation::ClientId => "client_id",
            Violation::MessageTooLarge => "message_too_large",
            Violation::RetainedTopic => "retained_topic",
            Violation::TooManyRoutes => "too_many_routes",
            Violation::TooManyClaims => "too_many_claims",
            Violation::Session(_) => "session",
            Violation::Unexpected => "unexpected_frame",
        }
    }
}

/// Checks every field of `frame` (received on an inbound link) that can be checked on its own.
pub(crate) fn check_frame(frame: &Frame, max_packet_size: usize) -> Result<(), Violation> {
    match frame {
        Frame::RouteAdd { filter, .. } | Frame::RouteRemove { filter, .. } => check_filter(filter),
        Frame::Claim { client_id, .. }
        | Frame::TakeoverRequest { client_id, .. }
        | Frame::SessionInstalled(client_id)
        | Frame::SessionArrived(client_id) => check_client_id(client_id),
        Frame::Publish {
            groups,
            sessions,
            msg,
            ..
        } => {
            groups.iter().try_for_each(|g| check_filter(g))?;
            sessions.iter().try_for_each(|s| check_client_id(s))?;
            check_message(msg, max_packet_size)
        }
        Frame::Retain { topic, msg, .. } => {
            validate_topic_name(topic).map_err(|_| Violation::Topic)?;
            match msg {
                Some(m) if m.topic != *topic => Err(Violation::RetainedTopic),
                Some(m) => check_message(m, max_packet_size),
                None => Ok(()),
            }
        }
        Frame::SessionBegin {
            client_id, will, ..
        } => {
            check_client_id(client_id)?;
            match will {
                Some((m, _)) => check_message(m, max_packet_size),
                None => Ok(()),
            }
        }
        Frame::SessionSub { filter, .. } => check_filter(filter),
        Frame::SessionMsg { msg, .. } => check_message(msg, max_packet_size),
        // The acceptor's own frames never travel this way.
        Frame::Ack(_) => Err(Violation::Unexpected),
        Frame::Hello { .. }
        | Frame::Heartbeat
        | Frame::SyncBegin { .. }
        | Frame::SyncDone { .. }
        | Frame::Progress(_)
        | Frame::TakeoverReply { .. }
        | Frame::SessionEnd { .. }
        | Frame::Leaving
        | Frame::Barrier(_)
        | Frame::BarrierAck(_) => Ok(()),
    }
}

fn check_filter(filter: &str) -> Result<(), Violation> {
    validate_topic_filter(filter).map_err(|_| Violation::Filter)
}

/// A node name as a Hello may carry it: what `[node] name` accepts (non-empty, no white space or control
/// characters).
pub(crate) fn check_node_name(name: &str) -> Result<(), Violation> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Violation::ClientId);
    }
    Ok(())
}

/// Non-empty, without U+0000 (the decoder checked UTF-8 and the 65,535-byte bound).
pub(crate) fn check_client_id(client_id: &str) -> Result<(), Violation> {
    if client_id.is_empty() || client_id.contains('\0') {
        return Err(Violation::ClientId);
    }
    Ok(())
}

fn check_message(msg: &Message, max_packet_size: usize) -> Result<(), Violation> {
    validate_topic_name(&msg.topic).map_err(|_| Violation::Topic)?;
    if msg.footprint() > max_packet_size.saturating_add(std::mem::size_of::<Message>() + 64 * 1024)
    {
        return Err(Violation::MessageTooLarge);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use bytes::Bytes;
    use fleetgate_protocol::mqtt::QoS;

    fn message(topic: &str, payload: usize) -> Arc<Message> {
        Arc::new(Message {
            topic: topic.into(),
            payload: Bytes::from(vec![b'x'; payload]),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: None,
            expires_at: None,
            origin: 0,
        })
    }

    fn route(filter: &str) -> Frame {
        Frame::RouteAdd {
            filter: filter.into(),
            seq: 1,
        }
    }

    #[test]
    fn filters_at_the_depth_limit_pass_and_one_level_more_is_refused() {
        let deepest = vec!["a"; 128].join("/");
        assert_eq!(check_frame(&route(&deepest), 1024), Ok(()));
        let deeper = vec!["a"; 129].join("/");
        assert_eq!(check_frame(&route(&deeper), 1024), Err(Violation::Filter));
        for bad in ["", "a/#/b", "a+", "$share/g", "$share/+/a", "a\0b"] {
            assert_eq!(
                check_frame(&route(bad), 1024),
                Err(Violation::Filter),
                "{bad:?}"
            );
        }
        assert_eq!(check_frame(&route("$share/g/a/#"), 1024), Ok(()));
    }

    #[test]
    fn topics_messages_and_client_ids() {
        let publish = |topic: &str, size: usize| Frame::Publish {
            direct: true,
            groups: Vec::new(),
            sessions: Vec::new(),
            msg: message(topic, size),
        };
        assert_eq!(check_frame(&publish("a/b", 10), 1024), Ok(()));
        assert_eq!(
            check_frame(&publish("a/+", 10), 1024),
            Err(Violation::Topic)
        );
        assert_eq!(
            check_frame(&publish(&vec!["a"; 129].join("/"), 10), 1024),
            Err(Violation::Topic)
        );
        assert_eq!(
            check_frame(&publish("a", 1 << 20), 1024),
            Err(Violation::MessageTooLarge)
        );
        let claim = |id: &str| Frame::Claim {
            client_id: id.into(),
            held: true,
            seq: 1,
        };
        assert_eq!(check_frame(&claim("c"), 1024), Ok(()));
        assert_eq!(check_frame(&claim(""), 1024), Err(Violation::ClientId));
        assert_eq!(check_frame(&claim("c\0"), 1024), Err(Violation::ClientId));
        let retain = Frame::Retain {
            stamp: Default::default(),
            topic: "a".into(),
            msg: Some(message("b", 1)),
            seq: 1,
        };
        assert_eq!(check_frame(&retain, 1024), Err(Violation::RetainedTopic));
        assert_eq!(
            check_frame(&Frame::Ack(Default::default()), 1024),
            Err(Violation::Unexpected)
        );
    }
}
