//! What flows between sessions: an application [`Message`] (shared by every subscriber through an `Arc`, payload
//! never copied) and a [`Delivery`] (one message bound for one session, with that subscription's QoS and IDs).

use std::cell::OnceCell;
use std::num::{NonZeroU16, NonZeroU32};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetgate_protocol::mqtt::{ByteString, Bytes, LastWill, Publish, PublishProperties, QoS};

use crate::limits::COMPACT_BELOW;

/// Identifies the session a message came from, for No Local; 0 means "not from a client" (will, retained).
pub(crate) type SessionId = u64;

/// The current time, read from the clock at most once and only when a message with an expiry asks for it (most
/// messages have none, and the hot paths then never read the clock).
#[derive(Debug, Default)]
pub(crate) struct LazyNow(OnceCell<Instant>);

impl LazyNow {
    /// A clock that has not been read yet.
    pub(crate) fn new() -> LazyNow {
        LazyNow::default()
    }

    /// The time of the first call.
    pub(crate) fn get(&self) -> Instant {
        *self.0.get_or_init(Instant::now)
    }
}

/// One published application message as the broker keeps it.
#[derive(Debug)]
pub(crate) struct Message {
    /// Topic name (never empty; aliases are resolved on the way in).
    pub(crate) topic: ByteString,
    /// Payload, shared with the inbound read buffer it was sliced from.
    pub(crate) payload: Bytes,
    /// QoS it was published with.
    pub(crate) qos: QoS,
    /// RETAIN flag as published.
    pub(crate) retain: bool,
    /// v5 properties passed through unchanged (topic alias and subscription IDs removed; expiry recomputed).
    /// Boxed: most messages have none, and without them inline the shared allocation of a message (`Arc`)
    /// stays small enough for the allocator's fast per-size lists (it is made on one thread and often freed
    /// on another, by the subscriber's task).
    pub(crate) properties: Option<Box<PublishProperties>>,
    /// When the Message Expiry Interval runs out, if one was set.
    pub(crate) expires_at: Option<Instant>,
    /// The publishing session (for No Local).
    pub(crate) origin: SessionId,
}

impl Message {
    /// Builds a message from an inbound PUBLISH whose topic alias has been resolved to `topic`.
    pub(crate) fn from_publish(publish: Publish, topic: ByteString, origin: SessionId) -> Message {
        let mut properties = publish.properties;
        let mut expires_at = None;
        if let Some(p) = properties.as_mut() {
            p.topic_alias = None;
            p.subscription_ids.clear();
            expires_at = p
                .message_expiry_interval
                .map(|s| Instant::now() + Duration::from_secs(u64::from(s.get())));
        }
        // The codec decodes every v5 PUBLISH's property block, empty or not, to `Some`: an empty one is `None`
        // here, so deliveries of it take the plain encoder (`Delivery::is_plain`).
        if properties
            .as_ref()
            .is_some_and(|p| *p == PublishProperties::default())
        {
            properties = None;
        }
        Message {
            topic,
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
            properties: properties.map(Box::new),
            expires_at,
            origin,
        }
    }

    /// Builds the message a will turns into.
    pub(crate) fn from_will(will: LastWill, now: Instant) -> Message {
        let expires_at = will
            .message_expiry_interval
            .map(|s| now + Duration::from_secs(u64::from(s.get())));
        let properties = PublishProperties {
            topic_alias: None,
            correlation_data: will.correlation_data,
            message_expiry_interval: will.message_expiry_interval,
            content_type: will.content_type,
            user_properties: will.user_properties,
            is_utf8_payload: will.is_utf8_payload.unwrap_or(false),
            response_topic: will.response_topic,
            subscription_ids: Vec::new(),
        };
        Message {
            topic: will.topic,
            payload: will.message,
            qos: will.qos,
            retain: will.retain,
            properties: Some(Box::new(properties)),
            expires_at,
            origin: 0,
        }
    }

    /// The message to keep for long (retained, queued for an offline session): a payload below
    /// [`COMPACT_BELOW`] and the topic are copied out of the inbound read buffer they were sliced from, so a
    /// tiny message does not pin a whole read chunk; larger messages are shared as they are.
    pub(crate) fn compacted(self: &Arc<Self>) -> Arc<Message> {
        if self.payload.len() >= COMPACT_BELOW {
            return self.clone();
        }
        Arc::new(Message {
            topic: ByteString::from(&*self.topic),
            payload: Bytes::copy_from_slice(&self.payload),
            qos: self.qos,
            retain: self.retain,
            properties: self.properties.clone(),
            expires_at: self.expires_at,
            origin: self.origin,
        })
    }

    /// Bytes the message holds, roughly: its shared allocation, topic, payload and properties (what a bound on
    /// stored messages counts).
    pub(crate) fn footprint(&self) -> usize {
        let properties = self.properties.as_deref().map_or(0, |p| {
            std::mem::size_of::<PublishProperties>()
                + p.correlation_data.as_ref().map_or(0, |d| d.len())
                + p.content_type.as_ref().map_or(0, |c| c.len())
                + p.response_topic.as_ref().map_or(0, |r| r.len())
                + p.user_properties
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>()
        });
        std::mem::size_of::<Message>() + self.topic.len() + self.payload.len() + properties
    }

    /// True once the message expiry interval has run out.
    pub(crate) fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// [`is_expired`](Self::is_expired), reading the clock only for a message with an expiry.
    pub(crate) fn is_expired_lazy(&self, now: &LazyNow) -> bool {
        self.expires_at.is_some_and(|at| at <= now.get())
    }

    /// Seconds of expiry left, rounded up, for the forwarded Message Expiry Interval; `None` without expiry.
    pub(crate) fn remaining_expiry(&self, now: Instant) -> Option<NonZeroU32> {
        let left = self.expires_at?.saturating_duration_since(now);
        let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        NonZeroU32::new(u32::try_from(secs).unwrap_or(u32::MAX)).or(NonZeroU32::new(1))
    }
}

/// One message bound for one session.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    /// The shared message.
    pub(crate) msg: Arc<Message>,
    /// min(published QoS, granted QoS).
    pub(crate) qos: QoS,
    /// RETAIN flag to send (retain-as-published, or 1 for a retained message sent on subscribe).
    pub(crate) retain: bool,
    /// Subscription identifiers of the matching subscriptions (v5).
    pub(crate) sub_ids: Vec<NonZeroU32>,
    /// Its sequence in the session store (`[storage] mode = "disk"`, persistent sessions); 0 when not stored.
    pub(crate) seq: u64,
}

impl Delivery {
    /// Roughly the bytes this delivery takes in the write buffer (topic, payload, fixed header and packet ID;
    /// properties not counted), to stop draining near the write buffer's high-water mark.
    pub(crate) fn wire_estimate(&self) -> usize {
        self.msg.topic.len() + self.msg.payload.len() + 8
    }

    /// True when this delivery's PUBLISH carries no properties for a v5 client (none from the publisher, no
    /// expiry, no subscription identifier): it can go out through [`Codec::encode_plain_publish`] when no topic
    /// alias is used either. An MQTT 3 PUBLISH never carries properties.
    ///
    /// [`Codec::encode_plain_publish`]: fleetgate_protocol::mqtt::Codec::encode_plain_publish
    pub(crate) fn is_plain(&self, v5: bool) -> bool {
        !v5 || (self.msg.properties.is_none()
            && self.msg.expires_at.is_none()
            && self.sub_ids.is_empty())
    }

    /// The PUBLISH to send for this delivery. `topic` is what goes on the wire (empty when a known alias is used).
    pub(crate) fn to_publish(
        &self,
        packet_id: Option<NonZeroU16>,
        dup: bool,
        topic: ByteString,
        alias: Option<NonZeroU16>,
        v5: bool,
        now: &LazyNow,
    ) -> Publish {
        let nothing = self.msg.properties.is_none()
            && alias.is_none()
            && self.msg.expires_at.is_none()
            && self.sub_ids.is_empty();
        let properties = if v5 && !nothing {
            let mut p = self.msg.properties.as_deref().cloned().unwrap_or_default();
            p.topic_alias = alias;
            if self.msg.expires_at.is_some() {
                p.message_expiry_interval = self.msg.remaining_expiry(now.get());
            }
            p.subscription_ids.clone_from(&self.sub_ids);
            Some(p)
        } else {
            None
        };
        Publish {
            dup,
            retain: self.retain,
            qos: self.qos,
            topic,
            packet_id,
            payload: self.msg.payload.clone(),
            properties,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_message_fits_the_allocators_small_size_lists() {
        // glibc serves chunks up to 128 bytes (the `Arc` counts included) from lock-free per-size lists; a
        // message is allocated by a reading task and freed by the subscribers' tasks, on other threads.
        assert!(
            std::mem::size_of::<Message>() + 2 * std::mem::size_of::<usize>() <= 120,
            "Message grew to {} bytes",
            std::mem::size_of::<Message>()
        );
    }

    #[test]
    fn remaining_expiry_rounds_up() {
        let now = Instant::now();
        let msg = Message {
            topic: "a".into(),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: None,
            expires_at: Some(now + Duration::from_millis(1500)),
            origin: 0,
        };
        assert_eq!(msg.remaining_expiry(now).map(NonZeroU32::get), Some(2));
        assert!(!msg.is_expired(now));
        assert!(msg.is_expired(now + Duration::from_secs(2)));
    }

    fn publish(properties: Option<PublishProperties>) -> Publish {
        Publish {
            dup: false,
            retain: false,
            qos: QoS::AtLeastOnce,
            topic: "t".into(),
            packet_id: NonZeroU16::new(1),
            payload: Bytes::from_static(b"x"),
            properties,
        }
    }

    fn delivery(msg: Message) -> Delivery {
        Delivery {
            msg: Arc::new(msg),
            qos: QoS::AtLeastOnce,
            retain: false,
            sub_ids: Vec::new(),
            seq: 0,
        }
    }

    #[test]
    fn a_v5_publish_with_no_properties_left_is_delivered_plain() {
        let empty =
            Message::from_publish(publish(Some(PublishProperties::default())), "t".into(), 1);
        assert!(empty.properties.is_none());
        assert!(delivery(empty).is_plain(true));

        // Only an inbound topic alias: resolved and removed, nothing left to pass on.
        let alias_only = PublishProperties {
            topic_alias: NonZeroU16::new(3),
            ..PublishProperties::default()
        };
        let aliased = Message::from_publish(publish(Some(alias_only)), "t".into(), 1);
        assert!(aliased.properties.is_none());

        let with_user_property = PublishProperties {
            user_properties: vec![("k".into(), "v".into())],
            ..PublishProperties::default()
        };
        let kept = Message::from_publish(publish(Some(with_user_property)), "t".into(), 1);
        assert!(kept.properties.is_some());
        assert!(!delivery(kept).is_plain(true));
        assert!(delivery(Message::from_publish(publish(None), "t".into(), 1)).is_plain(false));
    }
}
