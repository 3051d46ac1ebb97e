//! Will messages: taken from CONNECT, dropped on a normal DISCONNECT (0x00), published when the connection
//! ends otherwise (or on DISCONNECT 0x04) — at once, or after the v5 Will Delay Interval unless the session is
//! resumed first; never later than the session's own end. The broker schedules them
//! ([`crate::broker::Broker::schedule_will`]); this module holds the will and the right to publish it.

use std::sync::Arc;

use fleetgate_auth::Principal;
use fleetgate_protocol::mqtt::{ByteString, Bytes, Connect, LastWill};

use crate::access::{Access, ClientAccess};

/// A will message held for the connection (or, after it ended, for its delay).
#[derive(Debug)]
pub(crate) struct Will {
    /// The will as sent in CONNECT.
    pub(crate) will: Box<LastWill>,
    /// Will Delay Interval in seconds (0 for MQTT 3).
    pub(crate) delay: u32,
    /// The ACL check the will must pass when it is published; `None` publishes unchecked (a will that did not
    /// come from a local CONNECT, e.g. handed over by a cluster peer that checked it).
    pub(crate) permit: Option<WillPermit>,
}

/// The right to publish a will, checked against the ACL current when the will is due (not at CONNECT: the ACL
/// may have been reloaded in between, and a delayed will may be published long after).
#[derive(Debug, Clone)]
pub(crate) struct WillPermit {
    access: Arc<Access>,
    principal: Arc<Principal>,
}

impl WillPermit {
    /// The permit of a connection's will: its client's identity, checked against the ACL of the moment.
    pub(crate) fn for_client(client: &ClientAccess) -> WillPermit {
        WillPermit::new(client.access().clone(), client.principal().clone())
    }

    /// The permit of a will of `principal`, checked against `access` (a session handed over from another node).
    pub(crate) fn new(access: Arc<Access>, principal: Arc<Principal>) -> WillPermit {
        WillPermit { access, principal }
    }

    /// May the will go to `topic`? A denial is logged as `acl_denied` with `access="will"` and counted as a
    /// dropped message.
    pub(crate) fn allows(&self, topic: &str) -> bool {
        self.access.will_allowed(&self.principal, topic)
    }
}

impl Will {
    /// The will of a CONNECT, if it has one, with the ACL check it must pass when it is published.
    pub(crate) fn from_connect(connect: &mut Connect, permit: Option<WillPermit>) -> Option<Will> {
        let mut will = connect.last_will.take()?;
        // Copied: decoded, they are slices of the read chunk, which the session would otherwise pin for its life.
        will.topic = ByteString::from(&*will.topic);
        will.message = Bytes::copy_from_slice(&will.message);
        let delay = will.will_delay_interval_sec.unwrap_or(0);
        Some(Will {
            will: Box::new(will),
            delay,
            permit,
        })
    }

    /// Whether the will may be published now: the ACL current at this moment decides.
    pub(crate) fn permitted(&self) -> bool {
        self.permit
            .as_ref()
            .is_none_or(|p| p.allows(&self.will.topic))
    }

    /// Seconds to wait before publishing: the will delay, but no longer than the session lives.
    pub(crate) fn delay_within(&self, session_expiry_secs: u32) -> u32 {
        self.delay.min(session_expiry_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetgate_protocol::mqtt::{LastWill, QoS};

    #[test]
    fn delay_is_capped_by_session_expiry() {
        let mut connect = Connect {
            last_will: Some(LastWill {
                qos: QoS::AtMostOnce,
                retain: false,
                topic: "w".into(),
                message: Default::default(),
                will_delay_interval_sec: Some(30),
                correlation_data: None,
                message_expiry_interval: None,
                content_type: None,
                user_properties: Vec::new(),
                is_utf8_payload: None,
                response_topic: None,
            }),
            ..Connect::default()
        };
        let will = Will::from_connect(&mut connect, None).unwrap();
        assert!(connect.last_will.is_none());
        assert_eq!(will.delay_within(10), 10);
        assert_eq!(will.delay_within(100), 30);
        assert_eq!(will.delay_within(0), 0);
    }
}
