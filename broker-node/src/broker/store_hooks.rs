//! What the broker tells the session store (`[storage] mode = "disk"`): the [`SessionStore`] trait the broker
//! owns and calls and the store implements, as with [`super::ClusterHooks`]. Every method queues one write and
//! returns its ticket; the write is durable once [`SessionStore::committed`] reaches it. Each is called with the
//! session's state locked where it names one, so the store sees a session's changes in memory's order.

use std::fmt;
use std::num::NonZeroU16;

use fleetgate_protocol::mqtt::ByteString;
use tokio::sync::Notify;

use crate::state::message::{Delivery, Message};
use crate::state::retained::Stamp;
use crate::state::session::{SessionState, SubscriptionEntry};

/// Where a stored message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    /// Queued, not sent yet (or sent at QoS 1: sent again after a restart under a new ID).
    Queued,
    /// A QoS 2 message sent under this packet ID, not yet received by the client.
    Sent(NonZeroU16),
    /// A QoS 2 message the client received (PUBREC): PUBREL sent under this packet ID.
    Released(NonZeroU16),
}

/// A commit of the store failed: it takes no more writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the session store failed to commit")]
pub(crate) struct StoreFailed;

/// The durable session store, as the broker and the connections use it.
pub(crate) trait SessionStore: Send + Sync + fmt::Debug {
    /// A sequence for a new stored message: unique on this node, increasing, never reused.
    fn next_seq(&self) -> u64;
    /// True while the store has no room (`[storage] max_bytes`) or failed: QoS 1/2 messages are refused.
    fn refuses_writes(&self) -> bool;
    /// True once a commit failed.
    fn has_failed(&self) -> bool;
    /// The ticket of the last write made durable.
    fn committed(&self) -> u64;
    /// Notified after every commit (and when the store fails).
    fn commits(&self) -> &Notify;
    /// Writes the record of `client_id`'s session (`st`, locked).
    fn record(&self, client_id: &ByteString, st: &SessionState) -> u64;
    /// Writes a subscription added (`Some`) or removed.
    fn subscription(
        &self,
        client_id: &ByteString,
        filter: &ByteString,
        entry: Option<SubscriptionEntry>,
    ) -> u64;
    /// Writes a QoS 1/2 message of `client_id` (its `seq` set) and where it stands.
    fn message(&self, client_id: &ByteString, delivery: &Delivery, stored: Stored) -> u64;
    /// Deletes message `seq` of `client_id` (acknowledged or dropped).
    fn forget(&self, client_id: &ByteString, seq: u64) -> u64;
    /// Deletes everything of `client_id` (its session ended, left the node, or stopped being persistent).
    fn end_session(&self, client_id: &ByteString) -> u64;
    /// Writes a retained message set (`Some`) or cleared on `topic`.
    fn retained(&self, topic: &ByteString, stamp: &Stamp, msg: Option<&Message>, seq: u64) -> u64;
}

/// Waits until `store` committed `ticket`.
pub(crate) async fn wait_committed(
    store: &dyn SessionStore,
    ticket: u64,
) -> Result<(), StoreFailed> {
    loop {
        let notified = store.commits().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if store.has_failed() {
            return Err(StoreFailed);
        }
        if store.committed() >= ticket {
            return Ok(());
        }
        notified.await;
    }
}
