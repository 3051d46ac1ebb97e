//! What the broker tells the cluster: the [`ClusterHooks`] trait the broker owns and calls, the cluster
//! implements, and a single node fills with [`NoCluster`]. The broker never names the cluster's types; the
//! cluster calls the broker only through its named methods (see [`super::handover`]).

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use fleetgate_protocol::mqtt::ByteString;

use crate::state::message::Message;
use crate::state::retained::Stamp;

/// Events of the broker that the rest of a cluster must learn. Every method is called with the broker's own
/// locks in the state its doc says, and must not call back into the broker.
pub(crate) trait ClusterHooks: Send + Sync + fmt::Debug {
    /// A message published on this node: send it to the peers that subscribe to its topic. `served` lists the
    /// shared groups (full `$share/..` filters) a local member already took. Called with the router
    /// read-locked, so a session installed here meanwhile is either served locally or covered by the
    /// forwards (see the cluster's `forward` module).
    fn forward(&self, msg: &Arc<Message>, served: &[ByteString], memo: &mut ForwardMemo);

    /// A local session subscribed to `filter` (full filter) where it had no subscription before.
    fn filter_added(&self, filter: &ByteString);

    /// A local session dropped its subscription to `filter` (full filter).
    fn filter_removed(&self, filter: &str);

    /// A session for `client_id` now exists on this node.
    fn session_added(&self, client_id: &ByteString);

    /// The session for `client_id` ended here or moved away.
    fn session_removed(&self, client_id: &ByteString);

    /// A retained message was written here (`msg` with an empty payload clears the topic) at `stamp`, as the
    /// store's change `seq`. Called with the retained store locked, so what it queues is ordered with any sync
    /// stream reading the store.
    fn retained_written(&self, msg: &Arc<Message>, stamp: &Stamp, seq: u64);
}

/// A node on its own: nothing to tell anyone.
#[derive(Debug, Default)]
pub(crate) struct NoCluster;

impl ClusterHooks for NoCluster {
    fn forward(&self, _: &Arc<Message>, _: &[ByteString], _: &mut ForwardMemo) {}
    fn filter_added(&self, _: &ByteString) {}
    fn filter_removed(&self, _: &str) {}
    fn session_added(&self, _: &ByteString) {}
    fn session_removed(&self, _: &ByteString) {}
    fn retained_written(&self, _: &Arc<Message>, _: &Stamp, _: u64) {}
}

/// What [`ClusterHooks::forward`] may remember per publishing connection between two of its messages (a device
/// publishes on the same topic again and again): kept by the connection, carried by the broker, read and
/// written only by the hooks, whose type it is. Empty until they store something.
#[derive(Default)]
pub(crate) struct ForwardMemo(Option<Box<dyn Any + Send>>);

impl ForwardMemo {
    /// What the hooks stored, when it is a `T`.
    pub(crate) fn get<T: Any>(&self) -> Option<&T> {
        self.0.as_deref().and_then(|v| v.downcast_ref())
    }

    /// Stores `value`, replacing what was there.
    pub(crate) fn set<T: Any + Send>(&mut self, value: T) {
        self.0 = Some(Box::new(value));
    }

    /// Forgets what was stored.
    pub(crate) fn clear(&mut self) {
        self.0 = None;
    }
}

impl fmt::Debug for ForwardMemo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ForwardMemo")
            .field(&self.0.as_ref().map(|_| ".."))
            .finish()
    }
}
