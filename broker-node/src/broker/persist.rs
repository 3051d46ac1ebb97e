//! What the broker writes to the session store (`[storage] mode = "disk"`, through [`SessionStore`]): a
//! persistent session's record, subscriptions and QoS 1/2 messages as they change, its end, and retained
//! messages. Every write of a session is made with its state locked, so the store sees its changes in memory's
//! order. A session is persistent while its expiry interval is not 0.

use std::sync::Arc;

use fleetgate_protocol::mqtt::{ByteString, QoS};

use super::Broker;
use super::store_hooks::{SessionStore, Stored};
use crate::metrics::DropReason;
use crate::state::message::{Delivery, Message};
use crate::state::retained::Stamp;
use crate::state::session::{Inflight, SessionState, SubscriptionEntry};

impl Broker {
    /// Persists sessions and retained messages in `store` from now on.
    pub(crate) fn with_store(mut self, store: Arc<dyn SessionStore>) -> Broker {
        self.store = Some(store);
        self
    }

    /// The session store, when sessions are persisted.
    pub(crate) fn store(&self) -> Option<&dyn SessionStore> {
        self.store.as_deref()
    }

    /// The store, when `st`'s session is persisted.
    fn store_for(&self, st: &SessionState) -> Option<&dyn SessionStore> {
        self.store().filter(|_| st.expiry_secs > 0)
    }

    /// Writes a QoS 1/2 delivery about to be queued for `client_id`'s persistent session (`st`, locked), giving
    /// it its sequence; a store that has no room or failed refuses it.
    pub(crate) fn persist_delivery(
        &self,
        client_id: &ByteString,
        st: &SessionState,
        delivery: &mut Delivery,
    ) -> Result<(), DropReason> {
        let Some(store) = self.store_for(st) else {
            return Ok(());
        };
        if delivery.qos == QoS::AtMostOnce {
            return Ok(());
        }
        if store.refuses_writes() {
            return Err(DropReason::StoreFull);
        }
        delivery.seq = store.next_seq();
        store.message(client_id, delivery, Stored::Queued);
        Ok(())
    }

    /// Writes the record of `client_id`'s session (locked: `st`) when it is persistent.
    pub(crate) fn persist_record(&self, client_id: &ByteString, st: &SessionState) {
        if let Some(store) = self.store_for(st) {
            store.record(client_id, st);
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
            store.subscription(client_id, filter, entry);
        }
    }

    /// Forgets stored message `seq` of `client_id` (acknowledged or dropped); nothing for 0 (not stored).
    pub(crate) fn persist_forget(&self, client_id: &ByteString, seq: u64) {
        if let (Some(store), true) = (self.store(), seq != 0) {
            store.forget(client_id, seq);
        }
    }

    /// Writes where a stored message stands now (sent under a packet ID, or released); returns the write's
    /// ticket (0: not stored).
    pub(crate) fn persist_inflight(&self, client_id: &ByteString, entry: &Inflight) -> u64 {
        match (self.store(), entry.delivery.seq != 0) {
            (Some(store), true) => {
                let stored = if entry.released {
                    Stored::Released(entry.packet_id)
                } else {
                    Stored::Sent(entry.packet_id)
                };
                store.message(client_id, &entry.delivery, stored)
            }
            _ => 0,
        }
    }

    /// Deletes everything stored for `client_id` (its session ended, left the node, or stopped being persistent).
    pub(crate) fn persist_end(&self, client_id: &ByteString) {
        if let Some(store) = self.store() {
            store.end_session(client_id);
        }
    }

    /// Writes all of a session that just became persistent or arrived from a peer: its record, subscriptions
    /// and QoS 1/2 messages (given sequences now).
    pub(crate) fn persist_session(&self, client_id: &ByteString, st: &mut SessionState) {
        let Some(store) = self.store_for(st) else {
            return;
        };
        store.record(client_id, st);
        for (filter, entry) in &st.subscriptions {
            store.subscription(client_id, filter, Some(*entry));
        }
        for d in st.queue.iter_mut().filter(|d| d.qos != QoS::AtMostOnce) {
            d.seq = store.next_seq();
            store.message(client_id, d, Stored::Queued);
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
            store.retained(topic, stamp, msg, seq);
        }
    }
}
