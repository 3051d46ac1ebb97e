//! The node's shared state: sessions by client ID (attach, takeover, expiry), the subscription [`Router`] and
//! the [`RetainedStore`]; and the publish path from one message to every matching session's queue.
//!
//! Lock order: `sessions` → a session's state; `router` (read) → a session's state. Nothing takes `sessions` or
//! `router` while holding a session's state.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fleetgate_config::node::LimitsConfig;
use fleetgate_protocol::mqtt::topic::SharedSubscription;
use fleetgate_protocol::mqtt::{
    ByteString, ProtocolLevel, QoS, RetainHandling, SubscribeAckReason, SubscriptionOptions,
};
use parking_lot::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::cluster::relay::ForwardCache;
use crate::events;
use crate::message::{Delivery, Message};
use crate::metrics::Metrics;
use crate::retained::RetainedStore;
use crate::router::{Router, Scope, Subscriber};
use crate::session::{ConnSlot, Session, SubscriptionEntry, Will};
use crate::signal::ConnSignal;
use crate::will;

/// What a connection brings to [`Broker::attach`].
#[derive(Debug)]
pub struct AttachRequest {
    /// Client identifier (already assigned when the client sent an empty one).
    pub client_id: ByteString,
    /// Clean start / clean session.
    pub clean_start: bool,
    /// Granted session expiry (seconds).
    pub expiry_secs: u32,
    /// The will from CONNECT.
    pub will: Option<Will>,
    /// Protocol level.
    pub protocol: ProtocolLevel,
    /// Client address (PROXY source or TCP peer).
    pub source: SocketAddr,
    /// Outbound inflight window.
    pub window: usize,
}

/// A connection's handle on its session.
#[derive(Debug)]
pub struct Attached {
    /// The session.
    pub session: Arc<Session>,
    /// CONNACK session present.
    pub present: bool,
    /// This connection's generation in the session.
    pub generation: u64,
    /// Wake-ups and takeover for this connection.
    pub signal: Arc<ConnSignal>,
    /// An older connection was kicked.
    pub took_over: bool,
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
}

/// What became of a message relayed to one session (`Broker::deliver_to`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relayed {
    /// Queued for the session.
    Queued,
    /// The session has no subscription matching the topic any more.
    NotSubscribed,
    /// Dropped, and counted, by the session's queue rules.
    Dropped,
    /// No session by that client ID here.
    NoSession,
}

/// The broker's shared state.
#[derive(Debug)]
pub struct Broker {
    /// Node name.
    pub node_name: String,
    /// Limits from the config.
    pub limits: LimitsConfig,
    /// Metric handles.
    pub metrics: Metrics,
    /// Retained messages.
    pub retained: RetainedStore,
    /// Sessions by client ID (the cluster's session handover works on it directly).
    pub(crate) sessions: Mutex<HashMap<ByteString, Arc<Session>>>,
    /// Local subscriptions. Lock order when both are needed: `router` (write) → `sessions`.
    pub(crate) router: RwLock<Router>,
    next_session_id: AtomicU64,
    /// Cancelled at shutdown: stops will-delay and session-expiry timers.
    timers: CancellationToken,
    /// The cluster this node is part of, set once at start.
    cluster: OnceLock<Arc<Cluster>>,
}

impl Broker {
    /// A broker with no sessions.
    pub fn new(
        node_name: String,
        limits: LimitsConfig,
        metrics: Metrics,
        timers: CancellationToken,
    ) -> Broker {
        let retained = RetainedStore::for_node(metrics.retained.clone(), node_name.clone());
        // Session IDs seeded from the clock: distinct from those of an earlier run of this node.
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        Broker {
            node_name,
            limits,
            metrics,
            retained,
            sessions: Mutex::new(HashMap::new()),
            router: RwLock::new(Router::new()),
            next_session_id: AtomicU64::new(seed),
            timers,
            cluster: OnceLock::new(),
        }
    }

    /// Joins this broker to `cluster` (once, at start).
    pub fn set_cluster(&self, cluster: Arc<Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    /// The cluster, when this node is part of one.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    /// A fresh session identifier.
    pub(crate) fn new_session_id(&self) -> u64 {
        self.next_session_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A client identifier for a client that sent an empty one.
    /// A random 128-bit suffix: unguessable (a predictable ID would let another client take the session
    /// over) and unique across nodes and restarts.
    pub fn assign_client_id(&self) -> ByteString {
        let suffix: u128 = rand::random();
        format!("fleetgate-{}-{suffix:032x}", self.node_name).into()
    }

    /// Attaches a new connection to its session: creates it, resumes it, or takes it over from another
    /// connection (which is kicked; its session ends first when `clean_start`).
    pub fn attach(self: &Arc<Self>, req: AttachRequest) -> Attached {
        let signal = Arc::new(ConnSignal::default());
        let mut wills: Vec<Will> = Vec::new();
        let mut ended: Option<Arc<Session>> = None;
        let mut took_over = false;
        let mut new_session = false;
        let mut sessions = self.sessions.lock();
        let resumed = match sessions.get(&req.client_id).cloned() {
            Some(old) => {
                let mut st = old.state.lock();
                if let Some(slot) = st.conn.take() {
                    slot.signal.kick();
                    took_over = true;
                    old.set_connected(false);
                }
                let running_will = st.will.take();
                let pending_will = st.pending_will.take();
                if req.clean_start {
                    // The old session ends here, so its will is due whatever its delay.
                    st.ended = true;
                    self.metrics
                        .dropped_n(crate::metrics::DropReason::SessionEnded, st.discard());
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
                let id = self.next_session_id.fetch_add(1, Ordering::Relaxed);
                let s = Arc::new(Session::new(
                    id,
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
            st.conn = Some(ConnSlot {
                signal: signal.clone(),
                window: req.window,
            });
            st.expiry_secs = req.expiry_secs;
            st.will = req.will;
            st.protocol = req.protocol;
            st.source = Some(req.source);
            session.set_connected(true);
            st.generation
        };
        drop(sessions);
        if let Some(old) = ended {
            self.remove_routes(&old);
        }
        if let (true, Some(c)) = (new_session, self.cluster()) {
            c.session_added(&req.client_id);
        }
        for w in wills {
            self.publish_will(&req.client_id, w);
        }
        Attached {
            session,
            present,
            generation,
            signal,
            took_over,
        }
    }

    /// Tells every attached connection the node is shutting down (after the connections' shutdown token was
    /// cancelled; a connection attached later sees the token).
    pub fn shutdown_connections(&self) {
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
    pub fn detach(
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
            st.conn = None;
            session.set_connected(false);
            if let Some(e) = expiry {
                st.expiry_secs = e;
            }
            let will = st.will.take();
            (will.filter(|_| publish_will), st.expiry_secs)
        };
        if let Some(w) = will {
            will::schedule(self, session, generation, w, expiry_secs);
        }
        if expiry_secs == 0 {
            self.expire(session, generation);
        } else if expiry_secs != u32::MAX {
            let (broker, session) = (self.clone(), session.clone());
            self.spawn_timer(Duration::from_secs(u64::from(expiry_secs)), move || {
                broker.expire(&session, generation)
            });
        }
    }

    /// Ends `session` if it is still detached since connection `generation`.
    pub(crate) fn expire(&self, session: &Arc<Session>, generation: u64) {
        let pending_will = {
            let mut sessions = self.sessions.lock();
            let mut st = session.state.lock();
            if st.generation != generation || st.conn.is_some() || st.ended {
                return;
            }
            st.ended = true;
            self.metrics
                .dropped_n(crate::metrics::DropReason::SessionEnded, st.discard());
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
        if let Some(c) = self.cluster() {
            c.session_removed(&session.client_id);
        }
        if let Some(w) = pending_will {
            self.publish_will(&session.client_id, w);
        }
    }

    fn remove_routes(&self, session: &Arc<Session>) {
        let filters: Vec<ByteString> = session.state.lock().subscriptions.keys().cloned().collect();
        if filters.is_empty() {
            return;
        }
        let mut router = self.router.write();
        self.unroute(&mut router, session, &filters);
    }

    /// Removes `session`'s subscriptions on `filters` from the router (and from what the cluster advertises).
    pub(crate) fn unroute(&self, router: &mut Router, session: &Session, filters: &[ByteString]) {
        for f in filters {
            let (group, plain) = split_share(f);
            if router.unsubscribe(plain, group, session.id)
                && let Some(c) = self.cluster()
            {
                c.filter_removed(f);
            }
        }
    }

    /// Runs `f` after `after` unless the node shuts down first.
    pub fn spawn_timer(&self, after: Duration, f: impl FnOnce() + Send + 'static) {
        let token = self.timers.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = tokio::time::sleep(after) => f(),
            }
        });
    }

    /// Publishes a will message.
    pub fn publish_will(&self, client_id: &str, will: Will) {
        // The ACL current now decides, not the one of the CONNECT (see `will::permitted`).
        if !will::permitted(&will) {
            return;
        }
        events::will_published(client_id, &will.will.topic);
        let msg = Message::from_will(*will.will, Instant::now());
        self.publish(Arc::new(msg));
    }

    /// Routes `msg` to every matching session (stores it first when retained) and to the cluster peers with
    /// matching subscriptions; returns how many local sessions it was queued for.
    pub fn publish(&self, msg: Arc<Message>) -> usize {
        self.publish_with(msg, &mut ForwardCache::default())
    }

    /// [`publish`](Self::publish) for a connection that keeps where its last message went to peers.
    pub fn publish_with(&self, msg: Arc<Message>, cache: &mut ForwardCache) -> usize {
        if msg.retain {
            let stamp = self.retained.store(&msg);
            if let Some(c) = self.cluster() {
                c.replicate_retained(&msg, stamp);
            }
        }
        let mut served = Vec::new();
        // The router stays read-locked until the forwards are queued: a session handed to this node is installed
        // (router write lock) either before the local delivery or after the forwards, never in between, so the
        // SessionArrived frame queued at install tells the old holder exactly which of our forwards it must still
        // relay to the session (see `cluster::relay`).
        let router = self.router.read();
        let queued = self.deliver_in(
            &router,
            &msg,
            &mut Scope::All {
                served: &mut served,
            },
        );
        if let Some(c) = self.cluster() {
            c.forward(&msg, &served, cache);
        }
        drop(router);
        queued
    }

    /// Queues `msg` for the local sessions `scope` selects; returns how many it was queued for.
    pub fn deliver(&self, msg: &Arc<Message>, scope: &mut Scope<'_>) -> usize {
        self.deliver_in(&self.router.read(), msg, scope)
    }

    /// [`deliver`](Self::deliver) with the router already read-locked by the caller.
    pub(crate) fn deliver_in(
        &self,
        router: &Router,
        msg: &Arc<Message>,
        scope: &mut Scope<'_>,
    ) -> usize {
        let mut hits: Vec<&Subscriber> = Vec::new();
        router.collect_scoped(&msg.topic, scope, &mut hits);
        if hits.is_empty() {
            return 0;
        }
        // Overlapping subscriptions of one session become one delivery (highest QoS, every identifier).
        hits.sort_unstable_by_key(|s| s.session.id);
        let mut queued = 0;
        let mut compact: Option<Arc<Message>> = None;
        for group in hits.chunk_by(|a, b| a.session.id == b.session.id) {
            let session = &group[0].session;
            let mut qos: Option<QoS> = None;
            let mut retain = false;
            let mut sub_ids: Vec<NonZeroU32> = Vec::new();
            for sub in group {
                if sub.options.no_local && msg.origin == session.id {
                    continue;
                }
                let granted = msg.qos.less_value(sub.options.qos);
                qos = Some(qos.map_or(granted, |q| {
                    if granted.value() > q.value() {
                        granted
                    } else {
                        q
                    }
                }));
                retain |= sub.options.retain_as_published && msg.retain;
                sub_ids.extend(sub.id);
            }
            let Some(qos) = qos else { continue };
            // Queued for an offline session, the message may wait long: a compact copy (made once per publish)
            // rather than a slice pinning the publisher's read chunk.
            let msg = if qos != QoS::AtMostOnce && !session.is_connected() {
                compact.get_or_insert_with(|| msg.compacted()).clone()
            } else {
                msg.clone()
            };
            let delivery = Delivery {
                msg,
                qos,
                retain,
                sub_ids,
            };
            match session.enqueue(delivery, self.limits.max_queued_messages) {
                Ok(()) => queued += 1,
                Err(reason) => self.metrics.dropped(reason),
            }
        }
        queued
    }

    /// Queues `msg` for the session of `client_id` alone, as its matching subscriptions ask (a message relayed
    /// by the node the session just moved from). The caller holds the router read lock, so the session cannot
    /// be handed away meanwhile (that takes the write lock): the message is queued before the session moves
    /// (and moves with it), or the session is already gone.
    pub(crate) fn deliver_to(
        &self,
        _router: &Router,
        client_id: &str,
        msg: &Arc<Message>,
    ) -> Relayed {
        let Some(session) = self.sessions.lock().get(client_id).cloned() else {
            return Relayed::NoSession;
        };
        let mut qos: Option<QoS> = None;
        let mut retain = false;
        let mut sub_ids: Vec<NonZeroU32> = Vec::new();
        for (filter, e) in session.state.lock().subscriptions.iter() {
            if !fleetgate_protocol::mqtt::topic::matches(split_share(filter).1, &msg.topic) {
                continue;
            }
            let granted = msg.qos.less_value(e.options.qos);
            qos = Some(qos.map_or(granted, |q| {
                if granted.value() > q.value() {
                    granted
                } else {
                    q
                }
            }));
            retain |= e.options.retain_as_published && msg.retain;
            sub_ids.extend(e.id);
        }
        // Unsubscribed meanwhile: nothing is owed.
        let Some(qos) = qos else {
            return Relayed::NotSubscribed;
        };
        let delivery = Delivery {
            msg: msg.clone(),
            qos,
            retain,
            sub_ids,
        };
        match session.enqueue(delivery, self.limits.max_queued_messages) {
            Ok(()) => Relayed::Queued,
            Err(reason) => {
                self.metrics.dropped(reason);
                Relayed::Dropped
            }
        }
    }

    /// Adds or replaces a subscription of `session` and queues the retained messages its retain handling asks
    /// for. Returns the SUBACK reason.
    pub fn subscribe(
        &self,
        session: &Arc<Session>,
        filter: &ByteString,
        options: SubscriptionOptions,
        id: Option<NonZeroU32>,
    ) -> SubscribeAckReason {
        let (group, plain) = split_share(filter);
        let existed = session
            .state
            .lock()
            .subscriptions
            .insert(filter.clone(), SubscriptionEntry { options, id })
            .is_some();
        let replaced = self.router.write().subscribe(
            plain,
            group,
            Subscriber {
                session: session.clone(),
                options,
                id,
            },
        );
        if let (false, Some(c)) = (replaced, self.cluster()) {
            c.filter_added(filter);
        }
        let send_retained = group.is_none()
            && match options.retain_handling {
                RetainHandling::AtSubscribe => true,
                RetainHandling::AtSubscribeNew => !existed,
                RetainHandling::NoAtSubscribe => false,
            };
        if send_retained {
            for msg in self.retained.matching(plain, Instant::now()) {
                let qos = msg.qos.less_value(options.qos);
                let delivery = Delivery {
                    msg,
                    qos,
                    retain: true,
                    sub_ids: id.into_iter().collect(),
                };
                if let Err(reason) = session.enqueue(delivery, self.limits.max_queued_messages) {
                    self.metrics.dropped(reason);
                }
            }
        }
        match options.qos {
            QoS::AtMostOnce => SubscribeAckReason::GrantedQos0,
            QoS::AtLeastOnce => SubscribeAckReason::GrantedQos1,
            QoS::ExactlyOnce => SubscribeAckReason::GrantedQos2,
        }
    }

    /// Removes a subscription; false when `session` had none on `filter`.
    pub fn unsubscribe(&self, session: &Arc<Session>, filter: &ByteString) -> bool {
        let existed = session.state.lock().subscriptions.remove(filter).is_some();
        if existed {
            let mut router = self.router.write();
            self.unroute(&mut router, session, std::slice::from_ref(filter));
        }
        existed
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
        })
    }

    /// Number of sessions held.
    pub fn session_count(&self) -> usize {
        self.sessions.lock().len()
    }
}

/// `$share/{group}/{filter}` → (Some(group), filter); anything else → (None, filter). Filters were validated by
/// the codec, so a malformed share is treated as a plain filter.
pub(crate) fn split_share(filter: &str) -> (Option<&str>, &str) {
    match SharedSubscription::parse(filter) {
        Ok(Some(s)) => (Some(s.group), s.filter),
        _ => (None, filter),
    }
}
