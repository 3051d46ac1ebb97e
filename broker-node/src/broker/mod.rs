//! The node's shared state and what it does: sessions by client ID (attach, takeover, expiry), the
//! subscription [`Router`] and the [`RetainedStore`] — all private here — and the publish path from one message
//! to every matching session's queue. The layer above (connections) and the cluster call named methods; the
//! broker tells the cluster what changed through [`ClusterHooks`], a trait it owns.
//!
//! - [`hooks`]: what the broker tells the cluster ([`ClusterHooks`], [`NoCluster`] for a single node).
//! - [`publish`]: a message to every matching session (and the cluster), wills, local delivery of messages
//!   forwarded by peers.
//! - [`subscribe`]: subscriptions added and removed, retained messages at subscribe.
//! - [`handover`]: the named methods the cluster calls to move sessions between nodes and replicate retained
//!   messages.
//!
//! Lock order: `router` → `sessions` → a session's state. Nothing takes `sessions` or `router` while holding a
//! session's state.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleetgate_auth::{ClientIdBinding, Principal, SessionClaim, claim_session};
use fleetgate_config::node::LimitsConfig;
use fleetgate_protocol::mqtt::{ByteString, ProtocolLevel};
use parking_lot::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;

use crate::metrics::{DropReason, Metrics};
use crate::state::budget::MemoryBudget;
use crate::state::retained::{RetainedLimits, RetainedStore};
use crate::state::router::Router;
use crate::state::session::{ConnSlot, QueueLimits, Session};
use crate::state::will::Will;
use crate::wakeup::Wakeup;

pub(crate) mod handover;
pub(crate) mod hooks;
mod persist;
pub(crate) mod publish;
pub(crate) mod store_hooks;
pub(crate) mod subscribe;

pub(crate) use handover::Departure;
pub(crate) use hooks::{ClusterHooks, ForwardMemo, NoCluster};
pub(crate) use publish::{LocalDelivery, Redirected};
pub(crate) use store_hooks::{SessionStore, StoreFailed, Stored, wait_committed};

/// What a connection brings to [`Broker::attach`].
#[derive(Debug)]
pub(crate) struct AttachRequest {
    /// Client identifier (already assigned when the client sent an empty one).
    pub(crate) client_id: ByteString,
    /// Clean start / clean session.
    pub(crate) clean_start: bool,
    /// Granted session expiry (seconds).
    pub(crate) expiry_secs: u32,
    /// The will from CONNECT.
    pub(crate) will: Option<Will>,
    /// Protocol level.
    pub(crate) protocol: ProtocolLevel,
    /// Client address (PROXY source or TCP peer).
    pub(crate) source: SocketAddr,
    /// Outbound inflight window.
    pub(crate) window: usize,
    /// Who the client authenticated as.
    pub(crate) principal: Arc<Principal>,
    /// How tightly the client ID is bound to `principal`: whether it may take over another identity's session.
    pub(crate) binding: ClientIdBinding,
}

/// [`Broker::attach`] refused: the client ID's session belongs to another identity and the connection's binding
/// does not give it the client ID (`fleetgate_auth::claim_session`). Nothing was changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SessionOwnerMismatch;

/// A connection's handle on its session.
#[derive(Debug)]
pub(crate) struct Attached {
    /// The session.
    pub(crate) session: Arc<Session>,
    /// CONNACK session present.
    pub(crate) present: bool,
    /// This connection's generation in the session.
    pub(crate) generation: u64,
    /// Wake-ups and takeover for this connection.
    pub(crate) wakeup: Arc<Wakeup>,
}

/// What `GET /clients/{id}` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// A connection is attached.
    pub connected: bool,
    /// Protocol of the (last) connection.
    pub protocol: ProtocolLevel,
    /// Client address of the (last) connection.
    pub source: Option<SocketAddr>,
    /// Subscriptions held.
    pub subscriptions: usize,
    /// Messages queued.
    pub queued: usize,
    /// Messages in flight.
    pub inflight: usize,
    /// Session expiry interval in seconds (0: ends with its connection).
    pub session_expiry: u32,
}

/// The broker's shared state.
#[derive(Debug)]
pub struct Broker {
    node_name: String,
    /// Limits from the config.
    pub(crate) limits: LimitsConfig,
    /// Metric handles.
    pub(crate) metrics: Metrics,
    retained: RetainedStore,
    /// What queues, in-flight and retained messages may hold together.
    budget: Arc<MemoryBudget>,
    /// Sessions by client ID.
    sessions: Mutex<HashMap<ByteString, Arc<Session>>>,
    /// Local subscriptions. Lock order when both are needed: `router` (write) → `sessions`.
    router: RwLock<Router>,
    next_session_id: AtomicU64,
    /// Cancelled at shutdown: stops will-delay and session-expiry timers.
    timers: CancellationToken,
    /// The rest of the cluster ([`NoCluster`] for a single node).
    cluster: Arc<dyn ClusterHooks>,
    /// The session store (`[storage] mode = "disk"`), set by [`Broker::with_store`].
    store: Option<Arc<dyn SessionStore>>,
}

impl Broker {
    /// A broker with no sessions, telling `cluster` what changes (`None`: a single node).
    pub(crate) fn new(
        node_name: String,
        limits: LimitsConfig,
        metrics: Metrics,
        timers: CancellationToken,
        cluster: Option<Arc<dyn ClusterHooks>>,
    ) -> Broker {
        let retained_limits = RetainedLimits {
            max_messages: limits.max_retained_messages,
            max_bytes: limits.max_retained_bytes,
        };
        metrics.memory_limit.set(limits.memory_budget as f64);
        let budget = MemoryBudget::new(limits.memory_budget, metrics.memory_used.clone());
        // Deletes are kept as tombstones only when peers replicate the store.
        let retained = RetainedStore::new(
            node_name.clone(),
            retained_limits,
            metrics.retained.clone(),
            budget.clone(),
            cluster.is_some(),
        );
        let cluster = cluster.unwrap_or_else(|| Arc::new(NoCluster));
        // Session IDs seeded from the clock: distinct from those of an earlier run of this node.
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        Broker {
            node_name,
            limits,
            metrics,
            retained,
            budget,
            sessions: Mutex::new(HashMap::new()),
            router: RwLock::new(Router::new()),
            next_session_id: AtomicU64::new(seed),
            timers,
            cluster,
            store: None,
        }
    }

    /// How much one session's queue may hold.
    pub(crate) fn queue_limits(&self) -> QueueLimits {
        QueueLimits {
            max_messages: self.limits.max_queued_messages,
            max_bytes: self.limits.max_queued_bytes,
        }
    }

    /// A new session reporting to this node's memory budget.
    fn new_session(
        &self,
        client_id: ByteString,
        protocol: ProtocolLevel,
        expiry_secs: u32,
    ) -> Session {
        Session::new(
            self.new_session_id(),
            client_id,
            protocol,
            expiry_secs,
            &self.budget,
        )
    }

    /// This node's name.
    pub(crate) fn node_name(&self) -> &str {
        &self.node_name
    }

    /// A fresh session identifier.
    fn new_session_id(&self) -> u64 {
        self.next_session_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A client identifier for a client that sent an empty one.
    /// A random 128-bit suffix: unguessable (a predictable ID would let another client take the session
    /// over) and unique across nodes and restarts.
    pub(crate) fn assign_client_id(&self) -> ByteString {
        let suffix: u128 = rand::random();
        format!("fleetgate-{}-{suffix:032x}", self.node_name).into()
    }

    /// Attaches a new connection to its session: creates it, resumes it, or takes it over from another
    /// connection (which is kicked; its session ends first when `clean_start`). A session another identity holds
    /// is refused before anything changes, or, when the binding reclaims the client ID, ended as for a clean start.
    pub(crate) fn attach(
        self: &Arc<Self>,
        req: AttachRequest,
    ) -> Result<Attached, SessionOwnerMismatch> {
        let wakeup = Arc::new(Wakeup::default());
        let mut wills: Vec<Will> = Vec::new();
        let mut ended: Option<Arc<Session>> = None;
        let mut new_session = false;
        let mut sessions = self.sessions.lock();
        let resumed = match sessions.get(&req.client_id).cloned() {
            Some(old) => {
                let mut st = old.state.lock();
                // Decided under the sessions lock, before the old connection is kicked: a refused claimant
                // changes nothing, and no attach can slip in between the check and the takeover.
                let clean_start = match claim_session(
                    &req.principal,
                    req.binding,
                    st.principal.as_deref(),
                ) {
                    SessionClaim::Own => req.clean_start,
                    SessionClaim::Reclaim => {
                        tracing::info!(event = "session_reclaimed", client_id = %req.client_id, "a session of another identity ended: the client ID is bound to the new one");
                        true
                    }
                    SessionClaim::Refused => return Err(SessionOwnerMismatch),
                };
                if let Some(slot) = st.take_conn() {
                    slot.signal.kick();
                    old.set_connected(false);
                }
                let running_will = st.will.take();
                let pending_will = st.pending_will.take();
                if clean_start {
                    // The old session ends here, so its will is due whatever its delay.
                    st.ended = true;
                    if st.expiry_secs > 0 {
                        self.persist_end(&req.client_id);
                    }
                    self.metrics
                        .dropped_n(DropReason::SessionEnded, st.discard());
                    wills.extend(running_will);
                    wills.extend(pending_will);
                    drop(st);
                    ended = Some(old);
                    None
                } else {
                    // Resumed: a delayed will is cancelled; a kicked connection's will without delay is due now.
                    wills.extend(running_will.filter(|w| w.delay == 0));
                    drop(st);
                    Some(old)
                }
            }
            None => None,
        };
        let present = resumed.is_some();
        let session = match resumed {
            Some(s) => s,
            None => {
                let s = Arc::new(self.new_session(
                    req.client_id.clone(),
                    req.protocol,
                    req.expiry_secs,
                ));
                sessions.insert(req.client_id.clone(), s.clone());
                if ended.is_none() {
                    self.metrics.sessions_current.increment(1.0);
                    new_session = true;
                }
                s
            }
        };
        let generation = {
            let mut st = session.state.lock();
            st.generation += 1;
            st.attach(ConnSlot {
                signal: wakeup.clone(),
                window: req.window,
            });
            let was_persistent = present && st.expiry_secs > 0;
            st.expiry_secs = req.expiry_secs;
            st.will = req.will;
            st.protocol = req.protocol;
            st.source = Some(req.source);
            st.principal = Some(req.principal);
            session.set_connected(true);
            match (was_persistent, st.expiry_secs > 0) {
                // Resumed with an expiry of 0: nothing of it is kept on disk any more.
                (true, false) => self.persist_end(&req.client_id),
                (true, true) => self.persist_record(&req.client_id, &st),
                (false, true) => self.persist_session(&req.client_id, &mut st),
                (false, false) => {}
            }
            st.generation
        };
        drop(sessions);
        if let Some(old) = ended {
            self.remove_routes(&old);
        }
        if new_session {
            self.cluster.session_added(&req.client_id);
        }
        for w in wills {
            self.publish_will(&req.client_id, w);
        }
        Ok(Attached {
            session,
            present,
            generation,
            wakeup,
        })
    }

    /// Tells every attached connection the node is shutting down (after the connections' shutdown token was
    /// cancelled; a connection attached later sees the token).
    pub(crate) fn shutdown_connections(&self) {
        let sessions: Vec<Arc<Session>> = self.sessions.lock().values().cloned().collect();
        for session in sessions {
            if let Some(slot) = &session.state.lock().conn {
                slot.signal.shutdown();
            }
        }
    }

    /// Detaches connection `generation` from its session when it ends; publishes or schedules the will when
    /// `publish_will`, and ends the session now (expiry 0) or schedules its expiry. `expiry` overrides the
    /// session expiry (v5 DISCONNECT property). No-op when another connection took the session over.
    pub(crate) fn detach(
        self: &Arc<Self>,
        session: &Arc<Session>,
        generation: u64,
        publish_will: bool,
        expiry: Option<u32>,
    ) {
        let (will, expiry_secs) = {
            let mut st = session.state.lock();
            if st.generation != generation || st.conn.is_none() {
                return;
            }
            st.take_conn();
            session.set_connected(false);
            let was_persistent = st.expiry_secs > 0;
            if let Some(e) = expiry {
                st.expiry_secs = e;
            }
            if was_persistent && st.expiry_secs == 0 {
                self.persist_end(&session.client_id);
            }
            let will = st.will.take();
            (will.filter(|_| publish_will), st.expiry_secs)
        };
        if let Some(w) = will {
            self.schedule_will(session, generation, w, expiry_secs);
        }
        if expiry_secs > 0 && self.store().is_some() {
            // The record now holds the expiry in force and the will still due after its delay, if any.
            let st = session.state.lock();
            if st.generation == generation && st.conn.is_none() && !st.ended {
                self.persist_record(&session.client_id, &st);
            }
        }
        if expiry_secs == 0 {
            self.expire(session, generation);
        } else if expiry_secs != u32::MAX {
            self.expire_after(
                session,
                generation,
                Duration::from_secs(u64::from(expiry_secs)),
            );
        }
    }

    /// Ends `session` after `after` if it is still detached since connection `generation` then.
    fn expire_after(self: &Arc<Self>, session: &Arc<Session>, generation: u64, after: Duration) {
        let (broker, session) = (self.clone(), session.clone());
        self.spawn_timer(after, move || broker.expire(&session, generation));
    }

    /// Ends `session` if it is still detached since connection `generation`.
    fn expire(&self, session: &Arc<Session>, generation: u64) {
        let pending_will = {
            let mut sessions = self.sessions.lock();
            let mut st = session.state.lock();
            if st.generation != generation || st.conn.is_some() || st.ended {
                return;
            }
            st.ended = true;
            self.metrics
                .dropped_n(DropReason::SessionEnded, st.discard());
            if st.expiry_secs > 0 {
                self.persist_end(&session.client_id);
            }
            if sessions
                .get(&session.client_id)
                .is_some_and(|s| Arc::ptr_eq(s, session))
            {
                sessions.remove(&session.client_id);
            }
            st.pending_will.take()
        };
        self.metrics.sessions_current.decrement(1.0);
        self.remove_routes(session);
        self.cluster.session_removed(&session.client_id);
        if let Some(w) = pending_will {
            self.publish_will(&session.client_id, w);
        }
    }

    /// Runs `f` after `after` unless the node shuts down first.
    fn spawn_timer(&self, after: Duration, f: impl FnOnce() + Send + 'static) {
        let token = self.timers.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = tokio::time::sleep(after) => f(),
            }
        });
    }

    /// What the admin API shows about a client.
    pub fn client_info(&self, client_id: &str) -> Option<ClientInfo> {
        let session = self.sessions.lock().get(client_id).cloned()?;
        let st = session.state.lock();
        Some(ClientInfo {
            connected: st.conn.is_some(),
            protocol: st.protocol,
            source: st.source,
            subscriptions: st.subscriptions.len(),
            queued: st.queue.len(),
            inflight: st.inflight.len(),
            session_expiry: st.expiry_secs,
        })
    }

    /// Number of sessions held.
    pub fn session_count(&self) -> usize {
        self.sessions.lock().len()
    }

    /// Number of retained messages held.
    pub fn retained_count(&self) -> usize {
        self.retained.len()
    }
}

#[cfg(test)]
#[path = "owner_tests.rs"]
mod owner_tests;
