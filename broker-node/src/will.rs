//! Will messages: taken from CONNECT, dropped on a normal DISCONNECT (0x00), published when the connection
//! ends otherwise (or on DISCONNECT 0x04) — at once, or after the v5 Will Delay Interval unless the session is
//! resumed first; never later than the session's own end.

use std::sync::Arc;
use std::time::Duration;

use fleetgate_protocol::mqtt::{ByteString, Bytes, Connect};

use crate::auth::WillPermit;
use crate::broker::Broker;
use crate::session::{Session, Will};

/// The will of a CONNECT, if it has one, with the ACL check it must pass when it is published.
pub fn from_connect(connect: &mut Connect, permit: Option<WillPermit>) -> Option<Will> {
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

/// Whether `will` may be published now: the ACL current at this moment decides (a denial is logged as
/// `acl_denied` with `access="will"` and counted as a dropped message).
pub fn permitted(will: &Will) -> bool {
    will.permit
        .as_ref()
        .is_none_or(|p| p.allows(&will.will.topic))
}

/// Seconds to wait before publishing: the will delay, but no longer than the session lives.
pub fn delay(will: &Will, session_expiry_secs: u32) -> u32 {
    will.delay.min(session_expiry_secs)
}

/// Publishes `will` now, or parks it in the session and publishes it after its delay unless connection
/// `generation` was succeeded by a new one (the session was resumed) in the meantime.
pub fn schedule(
    broker: &Arc<Broker>,
    session: &Arc<Session>,
    generation: u64,
    will: Will,
    session_expiry_secs: u32,
) {
    let secs = delay(&will, session_expiry_secs);
    if secs == 0 {
        broker.publish_will(&session.client_id, will);
        return;
    }
    session.state.lock().pending_will = Some(will);
    let (broker2, session) = (broker.clone(), session.clone());
    broker.spawn_timer(Duration::from_secs(u64::from(secs)), move || {
        let will = {
            let mut st = session.state.lock();
            if st.generation != generation || st.conn.is_some() {
                return;
            }
            st.pending_will.take()
        };
        if let Some(will) = will {
            broker2.publish_will(&session.client_id, will);
        }
    });
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
        let will = from_connect(&mut connect, None).unwrap();
        assert!(connect.last_will.is_none());
        assert_eq!(delay(&will, 10), 10);
        assert_eq!(delay(&will, 100), 30);
        assert_eq!(delay(&will, 0), 0);
    }
}
