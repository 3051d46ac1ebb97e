//! The connections relayed now, beside the snapshot (they outlive reloads): which client ID is connected through
//! this LB to which backend (for `GET /clients/{id}`), and each relay's drain switch (for paced drains at
//! shutdown and when a draining backend leaves the config).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio_util::sync::CancellationToken;

/// Live relays.
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
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
pub struct ClientEntry {
    /// Its relays open through this LB (more than one during a takeover).
    pub connections: usize,
    /// The backend of its latest relay.
    pub backend: String,
}

/// One registered relay; unregisters on drop.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<Registry>,
    key: u64,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a relay of `client_id` to `backend`; returns its registration and its drain switch.
    pub fn register(
        self: &Arc<Self>,
        client_id: &str,
        backend: &str,
    ) -> (Registration, CancellationToken) {
        let drain = CancellationToken::new();
        let mut inner = self.lock();
        inner.next += 1;
        let key = inner.next;
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
            entry.backend = backend.to_owned();
        }
        drop(inner);
        (
            Registration {
                registry: self.clone(),
                key,
            },
            drain,
        )
    }

    /// What is known of `client_id` now (`None`: not connected through this LB).
    pub fn client(&self, client_id: &str) -> Option<ClientEntry> {
        self.lock().clients.get(client_id).cloned()
    }

    /// Relays open now.
    pub fn len(&self) -> usize {
        self.lock().conns.len()
    }

    /// True when no relay is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The drain switches of the relays to `backend` (all relays when `None`) not yet being drained; marks them.
    pub fn take_for_drain(&self, backend: Option<&str>) -> Vec<CancellationToken> {
        let mut inner = self.lock();
        inner
            .conns
            .values_mut()
            .filter(|e| !e.draining && backend.is_none_or(|b| e.backend == b))
            .map(|e| {
                e.draining = true;
                e.drain.clone()
            })
            .collect()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut inner = self.registry.lock();
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
}
