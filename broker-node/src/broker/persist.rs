//! What the broker tells the session store (`[storage] mode = "disk"`): a persistent session's record,
//! subscriptions and QoS 1/2 messages as they change, its end, and retained messages; and, at start, putting
//! back what the store held ([`Broker::restore`]). Every write of a session is submitted with its state locked,
//! so the store sees its changes in memory's order. A session is persistent while its expiry interval is not 0.

use std::sync::Arc;
use std::time::Duration;

use fleetgate_protocol::mqtt::{ByteString, QoS};

use super::Broker;
use crate::cluster::frame::SlotKind;
use crate::state::message::Message;
use crate::state::retained::Stamp;
use crate::state::session::{Inflight, SessionState, SubscriptionEntry};
use crate::store::{Op, Recovered, Store, records};

impl Broker {
    /// Persists sessions and retained messages in `store` from now on.
    pub(crate) fn with_store(mut self, store: Arc<Store>) -> Broker {
        self.store = Some(store);
        self
    }

    /// The session store, when sessions are persisted.
    pub(crate) fn store(&self) -> Option<&Store> {
        self.store.as_deref()
    }

    /// The store, when `st`'s session is persisted.
    fn store_for(&self, st: &SessionState) -> Option<&Store> {
        self.store().filter(|_| st.expiry_secs > 0)
    }

    /// Writes the record of `client_id`'s session (locked: `st`) when it is persistent.
    pub(crate) fn persist_record(&self, client_id: &ByteString, st: &SessionState) {
        if let Some(store) = self.store_for(st) {
            store.submit(Op::Record {
                client_id: client_id.clone(),
                value: records::encode_record(client_id, st),
            });
        }
    }

    /// Writes a subscription added (`Some`) or removed of `client_id`'s session (locked: `st`).
    pub(crate) fn persist_subscription(
        &self,
        client_id: &ByteString,
        st: &SessionState,
        filter: &ByteString,
        entry: Option<SubscriptionEntry>,
    ) {
        if let Some(store) = self.store_for(st) {
            store.submit(Op::Subscription {
                client_id: client_id.clone(),
                filter: filter.clone(),
                value: entry.map(|e| records::encode_subscription(filter, e)),
            });
        }
    }

    /// Forgets stored message `seq` of `client_id` (acknowledged or dropped); nothing for 0 (not stored).
    pub(crate) fn persist_forget(&self, client_id: &ByteString, seq: u64) {
        if let (Some(store), true) = (self.store(), seq != 0) {
            store.submit(Op::Forget {
                client_id: client_id.clone(),
                seq,
            });
        }
    }

    /// Writes where a stored message stands now (sent under a packet ID, or released); returns the op's ticket
    /// (0: not stored).
    pub(crate) fn persist_inflight(&self, client_id: &ByteString, entry: &Inflight) -> u64 {
        match (self.store(), entry.delivery.seq != 0) {
            (Some(store), true) => store.submit(Op::Message {
                client_id: client_id.clone(),
                seq: entry.delivery.seq,
                slot: if entry.released {
                    SlotKind::Released
                } else {
                    SlotKind::Inflight
                },
                packet_id: entry.packet_id.get(),
                delivery: entry.delivery.clone(),
            }),
            _ => 0,
        }
    }

    /// Deletes everything stored for `client_id` (its session ended, left the node, or stopped being persistent).
    pub(crate) fn persist_end(&self, client_id: &ByteString) {
        if let Some(store) = self.store() {
            store.submit(Op::EndSession {
                client_id: client_id.clone(),
            });
        }
    }

    /// Writes all of a session that just became persistent or arrived from a peer: its record, subscriptions
    /// and QoS 1/2 messages (given sequences now).
    pub(crate) fn persist_session(&self, client_id: &ByteString, st: &mut SessionState) {
        let Some(store) = self.store_for(st) else {
            return;
        };
        self.persist_record(client_id, st);
        for (filter, entry) in &st.subscriptions {
            self.persist_subscription(client_id, st, filter, Some(*entry));
        }
        for d in st.queue.iter_mut().filter(|d| d.qos != QoS::AtMostOnce) {
            d.seq = store.next_seq();
            store.submit(Op::Message {
                client_id: client_id.clone(),
                seq: d.seq,
                slot: SlotKind::Queued,
                packet_id: 0,
                delivery: d.clone(),
            });
        }
        for entry in st.inflight.iter_mut() {
            entry.delivery.seq = store.next_seq();
        }
        for entry in st.inflight.iter() {
            self.persist_inflight(client_id, entry);
        }
    }

    /// Writes a retained message set (`Some`) or cleared on `topic`.
    pub(crate) fn persist_retained(
        &self,
        topic: &ByteString,
        stamp: &Stamp,
        msg: Option<&Message>,
        seq: u64,
    ) {
        if let Some(store) = self.store() {
            let value = msg.map(|m| {
                let mut out = bytes::BytesMut::new();
                crate::cluster::frame::encode_retain(&mut out, stamp, topic, Some(m), seq);
                out
            });
            store.submit(Op::Retained {
                topic: topic.clone(),
                value,
            });
        }
    }

    /// Puts back what the store held at start: the retained messages, then every persistent session,
    /// detached (its expiry counts from now; a will is due after its delay unless the client returns first).
    pub(crate) fn restore(self: &Arc<Self>, recovered: Recovered) {
        for (topic, msg, stamp) in recovered.retained {
            self.apply_retained_unstored(topic, Some(msg), stamp);
        }
        for client_id in &recovered.orphans {
            self.persist_end(client_id);
        }
        for snap in recovered.sessions {
            self.install_restored(snap, Duration::ZERO);
        }
    }
}
