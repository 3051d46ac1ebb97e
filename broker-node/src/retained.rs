//! Retained messages: the last RETAIN=1 message per topic (an empty payload deletes it), handed to new
//! subscribers whose filter matches.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use fleetgate_protocol::mqtt::{ByteString, topic};
use metrics::Gauge;
use parking_lot::RwLock;

use crate::message::Message;

/// The retained-message store.
#[derive(Debug)]
pub struct RetainedStore {
    messages: RwLock<HashMap<ByteString, Arc<Message>>>,
    gauge: Gauge,
}

impl RetainedStore {
    /// An empty store reporting its size on `gauge`.
    pub fn new(gauge: Gauge) -> RetainedStore {
        RetainedStore {
            messages: RwLock::new(HashMap::new()),
            gauge,
        }
    }

    /// Stores `msg` as the topic's retained message, or deletes it when the payload is empty.
    pub fn store(&self, msg: &Arc<Message>) {
        let mut map = self.messages.write();
        if msg.payload.is_empty() {
            map.remove(&msg.topic);
        } else {
            map.insert(msg.topic.clone(), msg.clone());
        }
        self.gauge.set(map.len() as f64);
    }

    /// Retained messages matching `filter` (a plain filter, `$share` prefix stripped), expired ones left out.
    pub fn matching(&self, filter: &str, now: Instant) -> Vec<Arc<Message>> {
        let map = self.messages.read();
        let live = |m: &&Arc<Message>| !m.is_expired(now);
        if !filter.contains(['+', '#']) {
            return map.get(filter).filter(live).cloned().into_iter().collect();
        }
        map.iter()
            .filter(|(t, _)| topic::matches(filter, t))
            .map(|(_, m)| m)
            .filter(live)
            .cloned()
            .collect()
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.messages.read().len()
    }

    /// True when none are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetgate_protocol::mqtt::{Bytes, QoS};

    fn msg(topic: &str, payload: &'static [u8]) -> Arc<Message> {
        Arc::new(Message {
            topic: topic.into(),
            payload: Bytes::from_static(payload),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: None,
            expires_at: None,
            origin: 0,
        })
    }

    #[test]
    fn set_match_delete() {
        let store = RetainedStore::new(Gauge::noop());
        store.store(&msg("a/b", b"1"));
        store.store(&msg("a/c", b"2"));
        store.store(&msg("$SYS/x", b"3"));
        let now = Instant::now();
        assert_eq!(store.matching("a/b", now).len(), 1);
        assert_eq!(store.matching("a/+", now).len(), 2);
        assert_eq!(
            store.matching("#", now).len(),
            2,
            "no $ topics for a leading wildcard"
        );
        store.store(&msg("a/b", b""));
        assert_eq!(store.matching("a/#", now).len(), 1);
        assert_eq!(store.len(), 2);
    }
}
