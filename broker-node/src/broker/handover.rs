//! What the cluster asks of the broker, by name: the sessions held, a session taken out for another node
//! ([`Broker::export_session`]) or put in from one ([`Broker::install_session`]), and the retained store's
//! replication. Sessions move under the router write lock, so a publish either queued its message before the
//! move (it travels with the session) or runs after it (and the cluster redirects it).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use fleetgate_auth::{ClientIdBinding, Principal, SessionClaim, claim_session};
use fleetgate_protocol::mqtt::ByteString;
use fleetgate_protocol::mqtt::topic::split_shared;

use super::{Broker, SessionOwnerMismatch};
use crate::metrics::DropReason;
use crate::state::message::Message;
use crate::state::retained::{RetainedEntry, Stamp, Written};
use crate::state::router::Subscriber;
use crate::state::session::SessionSnapshot;
use crate::state::will::Will;

/// Why a session leaves this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Departure {
    /// A CONNECT elsewhere asked for it.
    Takeover {
        /// The new connection starts clean: the session ends here instead of moving.
        clean_start: bool,
    },
    /// This node drains.
    Drain,
}

impl Broker {
    /// The client IDs of every session held now.
    pub(crate) fn client_ids(&self) -> Vec<ByteString> {
        self.sessions.lock().keys().cloned().collect()
    }

    /// Whether `client_id`'s session outlives its connection (`None`: no such session).
    pub(crate) fn is_persistent(&self, client_id: &str) -> Option<bool> {
        let session = self.sessions.lock().get(client_id).cloned()?;
        let persistent = session.state.lock().expiry_secs > 0;
        Some(persistent)
    }

    /// Tells `client_id`'s connection, if any, to use another server (v5 DISCONNECT 0x9C); its session stays
    /// and ends with the connection.
    pub(crate) fn move_client(&self, client_id: &str) {
        let Some(session) = self.sessions.lock().get(client_id).cloned() else {
            return;
        };
        if let Some(c) = session.state.lock().conn.as_ref() {
            c.signal.kick_moved();
        }
    }

    /// Takes `client_id`'s session out of this node (kicking its connection) and hands its snapshot to `ship`,
    /// or, for a clean-start takeover, ends it. `ship` runs under the router write lock, so every later publish
    /// here is ordered after what it queues; it says whether the session was sent. `Ok(true)` when the session
    /// was shipped and sent. For a takeover, `claimant` (the identity connecting elsewhere and its client-ID
    /// binding) is checked against the session's owner first, under the same locks: another identity's session is
    /// refused untouched, or ended as for a clean start when the binding reclaims the client ID.
    pub(crate) fn export_session(
        self: &Arc<Self>,
        client_id: &ByteString,
        departure: Departure,
        claimant: Option<(&Principal, ClientIdBinding)>,
        ship: impl FnOnce(SessionSnapshot) -> bool,
    ) -> Result<bool, SessionOwnerMismatch> {
        let mut router = self.router.write();
        let mut sessions = self.sessions.lock();
        let Some(session) = sessions.get(client_id).cloned() else {
            return Ok(false);
        };
        let mut st = session.state.lock();
        let claim = claimant.map_or(SessionClaim::Own, |(principal, binding)| {
            claim_session(principal, binding, st.principal.as_deref())
        });
        let departure = match claim {
            SessionClaim::Own => departure,
            SessionClaim::Reclaim => {
                tracing::info!(event = "session_reclaimed", client_id = %client_id, "a session of another identity ended: the client ID is bound to the one connecting elsewhere");
                Departure::Takeover { clean_start: true }
            }
            SessionClaim::Refused => return Err(SessionOwnerMismatch),
        };
        if let Some(slot) = st.take_conn() {
            match departure {
                Departure::Drain => slot.signal.kick_moved(),
                Departure::Takeover { .. } => slot.signal.kick(),
            }
            session.set_connected(false);
        }
        st.ended = true;
        if st.expiry_secs > 0 {
            // It lives on the node it moves to (which stores it there), or it ends.
            self.persist_end(client_id);
        }
        sessions.remove(client_id);
        drop(sessions);
        let running_will = st.will.take();
        let pending_will = st.pending_will.take();
        let filters: Vec<ByteString> = st.subscriptions.keys().cloned().collect();
        let moving = departure != Departure::Takeover { clean_start: true };
        // Wills: as for a local takeover, a clean start ends the old session (every will is due) and a resume
        // publishes the kicked connection's will only when it has no delay. At drain the will stays with the
        // session when it has a delay (the client is expected back elsewhere within it); a will without delay is
        // not published for a server-side move, as at shutdown.
        let (due, kept): (Vec<Will>, Option<Will>) = match departure {
            Departure::Takeover { clean_start: true } => {
                (running_will.into_iter().chain(pending_will).collect(), None)
            }
            Departure::Takeover { clean_start: false } => (
                running_will.into_iter().filter(|w| w.delay == 0).collect(),
                None,
            ),
            Departure::Drain => (
                Vec::new(),
                running_will.or(pending_will).filter(|w| w.delay > 0),
            ),
        };
        let snapshot = if moving {
            Some(SessionSnapshot {
                client_id: client_id.clone(),
                expiry_secs: st.expiry_secs,
                protocol: st.protocol,
                next_packet_id: st.next_packet_id,
                inbound_qos2: st.inbound_qos2.drain().collect(),
                will: kept,
                principal: st.principal.clone(),
                subs: st.subscriptions.drain().collect(),
                queue: st.queue.take_all(),
                inflight: st.inflight.take_all(),
            })
        } else {
            // A clean start ends the session: what it owed its client goes with it.
            self.metrics
                .dropped_n(DropReason::SessionEnded, st.discard());
            None
        };
        drop(st);
        let sent = snapshot.is_some_and(ship);
        self.unroute(&mut router, &session, &filters);
        drop(router);
        self.metrics.sessions_current.decrement(1.0);
        self.cluster.session_removed(client_id);
        for w in due {
            self.publish_will(client_id, w);
        }
        Ok(sent)
    }

    /// Puts a session that arrived from a peer into this node, detached: its client attaches next, or it
    /// expires — a session that was to end with its connection after `keep_transient`. `announce` runs first,
    /// under the router write lock (every message this node forwards after it was published with the session in
    /// place). When the client already started a session here meanwhile, that one is kept and given what the
    /// arriving one owed — unless it belongs to another identity: then what the arriving one owed is dropped
    /// (counted `session_ended`), never handed to a client it was not for.
    pub(crate) fn install_session(
        self: &Arc<Self>,
        snap: SessionSnapshot,
        keep_transient: Duration,
        announce: impl FnOnce(),
    ) {
        self.install(snap, keep_transient, announce, true);
    }

    /// Puts a session read back from the session store into this node (it is on disk already).
    pub(crate) fn install_restored(
        self: &Arc<Self>,
        snap: SessionSnapshot,
        keep_transient: Duration,
    ) {
        self.install(snap, keep_transient, || {}, false);
    }

    /// [`install_session`](Self::install_session); `store` writes the session to the session store.
    fn install(
        self: &Arc<Self>,
        snap: SessionSnapshot,
        keep_transient: Duration,
        announce: impl FnOnce(),
        store: bool,
    ) {
        let session = {
            let mut router = self.router.write();
            announce();
            let mut sessions = self.sessions.lock();
            if let Some(existing) = sessions.get(&snap.client_id).cloned() {
                drop(sessions);
                drop(router);
                let owed = snap
                    .inflight
                    .into_iter()
                    .map(|i| i.delivery)
                    .chain(snap.queue);
                let owner = existing.state.lock().principal.clone();
                let same = match (&owner, &snap.principal) {
                    (Some(a), Some(b)) => a.same_identity(b),
                    _ => true,
                };
                if !same {
                    let n = owed.count();
                    self.metrics.dropped_n(DropReason::SessionEnded, n);
                    tracing::warn!(event = "session_conflict", client_id = %snap.client_id, dropped = n, "a session arrived for a client ID another identity holds here; what it owed is dropped");
                    return;
                }
                for d in owed {
                    self.enqueue(&existing, d);
                }
                return;
            }
            let session =
                Arc::new(self.new_session(snap.client_id.clone(), snap.protocol, snap.expiry_secs));
            {
                let mut st = session.state.lock();
                st.subscriptions = snap.subs.iter().cloned().collect();
                for d in snap.queue {
                    st.queue.push_back(d);
                }
                for i in snap.inflight {
                    st.inflight.push_back(i);
                }
                st.inbound_qos2 = snap.inbound_qos2.into_iter().collect::<HashSet<u16>>();
                st.next_packet_id = snap.next_packet_id;
                st.principal = snap.principal.clone();
                if store {
                    self.persist_session(&snap.client_id, &mut st);
                }
            }
            sessions.insert(snap.client_id.clone(), session.clone());
            for (filter, e) in &snap.subs {
                let (group, plain) = split_shared(filter);
                router.subscribe(
                    plain,
                    group,
                    Subscriber {
                        session: session.clone(),
                        options: e.options,
                        id: e.id,
                    },
                );
            }
            session
        };
        self.metrics.sessions_current.increment(1.0);
        for (filter, _) in &snap.subs {
            self.cluster.filter_added(filter);
        }
        self.cluster.session_added(&snap.client_id);
        if let Some(w) = snap.will {
            self.schedule_will(&session, 0, w, snap.expiry_secs);
        }
        // Detached until the client attaches (generation 0 → 1 cancels these timers).
        let expiry = match snap.expiry_secs {
            0 => Some(keep_transient),
            u32::MAX => None,
            s => Some(Duration::from_secs(u64::from(s))),
        };
        if let Some(after) = expiry {
            self.expire_after(&session, 0, after);
        }
    }

    /// The retained store's last change number (what a peer that applied everything up to now has seen).
    pub(crate) fn retained_seq(&self) -> u64 {
        self.retained.seq()
    }

    /// Whether the retained changes after `since` can still be listed (else a peer needs them all).
    pub(crate) fn retained_resumable_from(&self, since: u64) -> bool {
        self.retained.can_resume_from(since)
    }

    /// Up to `max` retained entries after topic `after`, those changed after `since` passed to `each` under the
    /// store's lock (see [`RetainedStore::chunk`]); the topic to continue after, `None` at the end.
    pub(crate) fn retained_chunk(
        &self,
        after: Option<&ByteString>,
        since: u64,
        max: usize,
        each: impl FnMut(RetainedEntry),
    ) -> Option<ByteString> {
        self.retained.chunk(after, since, max, each)
    }

    /// Drops the retained tombstones every live peer has (change number at most `applied_by_all`) once older
    /// than `min_age_ms`; returns how many went.
    pub(crate) fn collect_retained_tombstones(
        &self,
        applied_by_all: u64,
        min_age_ms: u64,
    ) -> usize {
        self.retained.collect_tombstones(applied_by_all, min_age_ms)
    }

    /// Applies a retained write replicated by a peer unless a later one is held; a write the store has no room
    /// for is counted.
    pub(crate) fn apply_retained(
        &self,
        topic: ByteString,
        msg: Option<Arc<Message>>,
        stamp: Stamp,
    ) -> Written {
        let (kept_topic, kept) = (topic.clone(), msg.clone());
        let written = self.retained.apply(topic, msg, stamp, |stamp, seq| {
            self.persist_retained(&kept_topic, stamp, kept.as_deref(), seq);
        });
        self.count_unretained(&written);
        written
    }

    /// Applies a retained message read back from the session store (not written to it again).
    pub(crate) fn apply_retained_unstored(
        &self,
        topic: ByteString,
        msg: Option<Arc<Message>>,
        stamp: Stamp,
    ) {
        let written = self.retained.apply(topic, msg, stamp, |_, _| {});
        self.count_unretained(&written);
    }

    /// Counts a retained write the store refused.
    pub(crate) fn count_unretained(&self, written: &Written) {
        match written {
            Written::Full => self.metrics.dropped(DropReason::RetainedFull),
            Written::OverBudget => self.metrics.dropped(DropReason::MemoryBudget),
            Written::Applied(..) | Written::Stale => {}
        }
    }
}
