//! What this node advertises to its peers: the filters of its sessions' subscriptions (routes) and the client
//! IDs it holds sessions for while the ring assigns them elsewhere (claims), each a [`Versioned`] table. Every
//! change is queued to every linked peer while the tables are locked, so it is ordered with any sync stream
//! reading them ([`super::sync`]).

use std::collections::HashSet;

use fleetgate_protocol::mqtt::ByteString;

use super::Cluster;
use super::frame::Frame;
use super::versioned::Versioned;
use crate::broker::Broker;

/// The tables this node advertises.
#[derive(Debug, Default)]
pub(super) struct Advertised {
    /// Our subscriptions' filters, counted over sessions (and redirects).
    pub(super) filters: Versioned<usize>,
    /// Client IDs we hold sessions for while the ring assigns them elsewhere.
    pub(super) claims: Versioned<()>,
}

impl Cluster {
    /// A local session subscribed to `filter` (full filter) where it had no subscription before.
    pub(crate) fn filter_added(&self, filter: &ByteString) {
        let mut local = self.local.lock();
        if let Some(n) = local.filters.get_mut(filter) {
            *n += 1;
            return;
        }
        let seq = local.filters.set(filter.clone(), 1);
        self.broadcast(&Frame::RouteAdd {
            filter: filter.clone(),
            seq,
        });
    }

    /// A local session dropped its subscription to `filter`.
    pub(crate) fn filter_removed(&self, filter: &str) {
        let mut local = self.local.lock();
        let Some(n) = local.filters.get_mut(filter) else {
            return;
        };
        *n -= 1;
        if *n == 0
            && let Some(seq) = local.filters.remove(filter)
        {
            self.broadcast(&Frame::RouteRemove {
                filter: filter.into(),
                seq,
            });
        }
    }

    /// The ring owner of `client_id` as this node sees it.
    pub(super) fn owner(&self, client_id: &str) -> Option<String> {
        self.ring(true)
            .select(client_id.as_bytes(), |_| true)
            .map(str::to_string)
    }

    /// A session for `client_id` now exists here: claim it when the ring assigns it elsewhere.
    pub(crate) fn session_added(&self, client_id: &ByteString) {
        if self.owner(client_id).as_deref() == Some(&*self.name) {
            return;
        }
        let mut local = self.local.lock();
        if local.claims.get(client_id).is_none() {
            let seq = local.claims.set(client_id.clone(), ());
            self.broadcast(&claim(client_id.clone(), true, seq));
        }
    }

    /// The session for `client_id` ended or moved away.
    pub(crate) fn session_removed(&self, client_id: &ByteString) {
        let mut local = self.local.lock();
        if let Some(seq) = local.claims.remove(client_id) {
            self.broadcast(&claim(client_id.clone(), false, seq));
        }
    }

    /// Membership changed: claim exactly the sessions the new ring assigns elsewhere.
    pub(crate) fn recompute_claims(&self, broker: &Broker) {
        let ids = broker.client_ids();
        let ring = self.ring(true);
        let wanted: HashSet<ByteString> = ids
            .into_iter()
            .filter(|id| ring.select(id.as_bytes(), |_| true) != Some(&*self.name))
            .collect();
        let mut local = self.local.lock();
        let gone: Vec<ByteString> = local
            .claims
            .keys()
            .filter(|id| !wanted.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            if let Some(seq) = local.claims.remove(&id) {
                self.broadcast(&claim(id, false, seq));
            }
        }
        for id in wanted {
            if local.claims.get(&id).is_none() {
                let seq = local.claims.set(id.clone(), ());
                self.broadcast(&claim(id, true, seq));
            }
        }
    }
}

fn claim(client_id: ByteString, held: bool, seq: u64) -> Frame {
    Frame::Claim {
        client_id,
        held,
        seq,
    }
}
