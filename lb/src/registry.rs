//! The connections relayed now, beside the snapshot (they outlive reloads): which client ID is connected through
//! this LB to which backend (for `GET /clients/{id}`), and each relay's drain switch (for paced drains at
//! shutdown and when a draining backend leaves the config).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

/// Shards of the registry: a connect or disconnect locks one shard (picked by client ID), so a reconnect storm
/// spreads over 16 locks instead of one. A power of two well above the worker count of a small LB.
const REGISTRY_SHARDS: usize = 16;

/// Live relays.
#[derive(Debug)]
pub(crate) struct Registry {
    next: AtomicU64,
    /// Random per process, so client IDs cannot be chosen to pile into one shard.
    hasher: RandomState,
    shards: [Mutex<Shard>; REGISTRY_SHARDS],
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            next: AtomicU64::new(0),
            hasher: RandomState::new(),
            shards: std::array::from_fn(|_| Mutex::default()),
        }
    }
}

/// The relays of the client IDs that hash to one shard (all relays of one ID are in the same shard).
#[derive(Debug, Default)]
struct Shard {
    conns: HashMap<u64, Entry>,
    clients: HashMap<String, ClientEntry>,
}

#[derive(Debug)]
struct Entry {
    client_id: String,
    backend: String,
    drain: CancellationToken,
    draining: bool,
}

/// What the LB knows of a client ID now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientEntry {
    /// Its relays open through this LB (more than one during a takeover).
    pub(crate) connections: usize,
    /// The backend of its latest relay.
    pub(crate) backend: String,
}

/// One registered relay; unregisters on drop.
#[derive(Debug)]
pub(crate) struct Registration {
    registry: Arc<Registry>,
    shard: usize,
    key: u64,
}

impl Registry {
    fn shard_of(&self, client_id: &str) -> usize {
        (self.hasher.hash_one(client_id) % REGISTRY_SHARDS as u64) as usize
    }

    /// Registers a relay of `client_id` to `backend`; returns its registration and its drain switch.
    pub(crate) fn register(
        self: &Arc<Self>,
        client_id: &str,
        backend: &str,
    ) -> (Registration, CancellationToken) {
        let drain = CancellationToken::new();
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let shard = self.shard_of(client_id);
        let mut inner = self.shards[shard].lock();
        inner.conns.insert(
            key,
            Entry {
                client_id: client_id.to_owned(),
                backend: backend.to_owned(),
                drain: drain.clone(),
                draining: false,
            },
        );
        if !client_id.is_empty() {
            let entry = inner
                .clients
                .entry(client_id.to_owned())
                .or_insert_with(|| ClientEntry {
                    connections: 0,
                    backend: String::new(),
                });
            entry.connections += 1;
            if entry.backend != backend {
                entry.backend = backend.to_owned();
            }
        }
        drop(inner);
        (
            Registration {
                registry: self.clone(),
                shard,
                key,
            },
            drain,
        )
    }

    /// What is known of `client_id` now (`None`: not connected through this LB).
    pub(crate) fn client(&self, client_id: &str) -> Option<ClientEntry> {
        self.shards[self.shard_of(client_id)]
            .lock()
            .clients
            .get(client_id)
            .cloned()
    }

    /// Relays open now.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().conns.len()).sum()
    }

    /// True when no relay is open.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The drain switches of the relays to `backend` (all relays when `None`) not yet being drained; marks them.
    pub(crate) fn take_for_drain(&self, backend: Option<&str>) -> Vec<CancellationToken> {
        let mut out = Vec::new();
        for shard in &self.shards {
            out.extend(
                shard
                    .lock()
                    .conns
                    .values_mut()
                    .filter(|e| !e.draining && backend.is_none_or(|b| e.backend == b))
                    .map(|e| {
                        e.draining = true;
                        e.drain.clone()
                    }),
            );
        }
        out
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut inner = self.registry.shards[self.shard].lock();
        let Some(entry) = inner.conns.remove(&self.key) else {
            return;
        };
        if let Some(client) = inner.clients.get_mut(&entry.client_id) {
            client.connections -= 1;
            if client.connections == 0 {
                inner.clients.remove(&entry.client_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_counts_and_drains_by_backend() {
        let r = Arc::new(Registry::default());
        let (a, _) = r.register("c1", "b0");
        let (b, tb) = r.register("c1", "b1");
        let (_c, _) = r.register("", "b1");
        assert_eq!(
            r.client("c1"),
            Some(ClientEntry {
                connections: 2,
                backend: "b1".into()
            })
        );
        let drained = r.take_for_drain(Some("b1"));
        assert_eq!(drained.len(), 2);
        assert!(r.take_for_drain(Some("b1")).is_empty(), "marked once");
        drained[0].cancel();
        assert!(tb.is_cancelled() || drained[1].is_cancelled() || !tb.is_cancelled());
        drop(a);
        drop(b);
        assert_eq!(r.client("c1"), None);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn shards_keep_counts_per_client_and_drain_across_shards() {
        let r = Arc::new(Registry::default());
        let regs: Vec<_> = (0..200)
            .map(|i| {
                r.register(
                    &format!("dev-{}", i % 100),
                    if i % 2 == 0 { "b0" } else { "b1" },
                )
            })
            .collect();
        assert_eq!(r.len(), 200);
        let used: std::collections::HashSet<usize> = regs.iter().map(|(g, _)| g.shard).collect();
        assert!(used.len() > 1, "client IDs spread over shards");
        assert_eq!(r.client("dev-7").map(|c| c.connections), Some(2));
        assert_eq!(r.take_for_drain(Some("b0")).len(), 100);
        assert_eq!(
            r.take_for_drain(None).len(),
            100,
            "the b1 relays, not the marked ones"
        );
        drop(regs);
        assert!(r.is_empty());
        assert_eq!(r.client("dev-7"), None);
    }
}
