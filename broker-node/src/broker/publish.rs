//! The publish path: one message to every matching local session's queue (overlapping subscriptions of one
//! session merged into one delivery) and, through [`ClusterHooks::forward`], to the peers that want it; wills;
//! and the local half of a message a peer forwarded ([`LocalDelivery`]).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetgate_protocol::mqtt::{QoS, topic};
use parking_lot::RwLockReadGuard;

use super::{Broker, ForwardMemo};
use crate::events;
use crate::state::message::{Delivery, Message};
use crate::state::router::{Router, Scope, Subscriber};
use crate::state::session::Session;
use crate::state::will::Will;

/// What became of a message redirected to one session ([`LocalDelivery::deliver_to`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Redirected {
    /// Queued for the session.
    Queued,
    /// The session has no subscription matching the topic any more.
    NotSubscribed,
    /// Dropped, and counted, by the session's queue rules.
    Dropped,
    /// No session by that client ID here.
    NoSession,
}

/// The highest of two granted QoS levels.
fn max_qos(a: Option<QoS>, b: QoS) -> QoS {
    match a {
        Some(a) if a.value() >= b.value() => a,
        _ => b,
    }
}

impl Broker {
    /// Routes `msg` to every matching session (stores it first when retained) and to the cluster peers with
    /// matching subscriptions; returns how many local sessions it was queued for.
    pub(crate) fn publish(&self, msg: Arc<Message>) -> usize {
        self.publish_with(msg, &mut ForwardMemo::default())
    }

    /// [`publish`](Self::publish) for a connection that keeps where its last message went to peers.
    pub(crate) fn publish_with(&self, msg: Arc<Message>, memo: &mut ForwardMemo) -> usize {
        if msg.retain {
            let written = self.retained.store(&msg, |stamp, seq| {
                self.cluster.retained_written(&msg, stamp, seq);
                let kept = (!msg.payload.is_empty()).then_some(&*msg);
                self.persist_retained(&msg.topic, stamp, kept, seq);
            });
            self.count_unretained(&written);
        }
        let mut served = Vec::new();
        // The router stays read-locked until the forwards are queued: a session handed to this node is installed
        // (router write lock) either before the local delivery or after the forwards, never in between, so the
        // SessionArrived frame queued at install tells the old holder exactly which of our forwards it must still
        // redirect to the session (see the cluster's `forward` module).
        let router = self.router.read();
        let queued = self.deliver_in(
            &router,
            &msg,
            &mut Scope::All {
                served: &mut served,
            },
        );
        self.cluster.forward(&msg, &served, memo);
        drop(router);
        queued
    }

    /// Queues `msg` for the local sessions `scope` selects; returns how many it was queued for.
    fn deliver_in(&self, router: &Router, msg: &Arc<Message>, scope: &mut Scope<'_>) -> usize {
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
                qos = Some(max_qos(qos, msg.qos.less_value(sub.options.qos)));
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
                seq: 0,
            };
            if self.enqueue(session, delivery) {
                queued += 1;
            }
        }
        queued
    }

    /// Queues `delivery` for `session`; a drop is counted by its reason. True when queued.
    pub(super) fn enqueue(&self, session: &Session, delivery: Delivery) -> bool {
        let persist = |st: &_, d: &mut Delivery| self.persist_delivery(&session.client_id, st, d);
        match session.enqueue(delivery, self.queue_limits(), persist) {
            Ok(()) => true,
            Err(reason) => {
                self.metrics.dropped(reason);
                false
            }
        }
    }

    /// Holds the router read-locked for a run of deliveries of messages forwarded by a cluster peer: under it,
    /// no session is handed away between a local delivery and the redirects the cluster makes for it.
    pub(crate) fn local_delivery(&self) -> LocalDelivery<'_> {
        LocalDelivery {
            broker: self,
            router: self.router.read(),
        }
    }

    /// Publishes a will message.
    pub(crate) fn publish_will(&self, client_id: &str, will: Will) {
        // The ACL current now decides, not the one of the CONNECT (see `WillPermit`).
        if !will.permitted() {
            return;
        }
        events::will_published(client_id, &will.will.topic);
        let msg = Message::from_will(*will.will, Instant::now());
        self.publish(Arc::new(msg));
    }

    /// Publishes `will` now, or parks it in the session and publishes it after its delay unless connection
    /// `generation` was succeeded by a new one (the session was resumed) in the meantime.
    pub(crate) fn schedule_will(
        self: &Arc<Self>,
        session: &Arc<Session>,
        generation: u64,
        will: Will,
        session_expiry_secs: u32,
    ) {
        let secs = will.delay_within(session_expiry_secs);
        if secs == 0 {
            self.publish_will(&session.client_id, will);
            return;
        }
        session.state.lock().pending_will = Some(will);
        let (broker, session) = (self.clone(), session.clone());
        self.spawn_timer(Duration::from_secs(u64::from(secs)), move || {
            let will = {
                let mut st = session.state.lock();
                if st.generation != generation || st.conn.is_some() {
                    return;
                }
                let will = st.pending_will.take();
                // Published now: not again after a restart.
                broker.persist_record(&session.client_id, &st);
                will
            };
            if let Some(will) = will {
                broker.publish_will(&session.client_id, will);
            }
        });
    }
}

/// The router read-locked for deliveries of messages a cluster peer forwarded ([`Broker::local_delivery`]).
pub(crate) struct LocalDelivery<'b> {
    broker: &'b Broker,
    router: RwLockReadGuard<'b, Router>,
}

impl LocalDelivery<'_> {
    /// Queues `msg` for the local sessions `scope` selects; returns how many it was queued for.
    pub(crate) fn deliver(&self, msg: &Arc<Message>, scope: &mut Scope<'_>) -> usize {
        self.broker.deliver_in(&self.router, msg, scope)
    }

    /// Queues `msg` for the session of `client_id` alone, as its matching subscriptions ask (a message redirected
    /// by the node the session just moved from). The router is read-locked, so the session cannot be handed
    /// away meanwhile (that takes the write lock): the message is queued before the session moves (and moves
    /// with it), or the session is already gone.
    pub(crate) fn deliver_to(&self, client_id: &str, msg: &Arc<Message>) -> Redirected {
        let Some(session) = self.broker.sessions.lock().get(client_id).cloned() else {
            return Redirected::NoSession;
        };
        let mut qos: Option<QoS> = None;
        let mut retain = false;
        let mut sub_ids: Vec<NonZeroU32> = Vec::new();
        for (filter, e) in session.state.lock().subscriptions.iter() {
            if !topic::matches(topic::split_shared(filter).1, &msg.topic) {
                continue;
            }
            qos = Some(max_qos(qos, msg.qos.less_value(e.options.qos)));
            retain |= e.options.retain_as_published && msg.retain;
            sub_ids.extend(e.id);
        }
        // Unsubscribed meanwhile: nothing is owed.
        let Some(qos) = qos else {
            return Redirected::NotSubscribed;
        };
        let delivery = Delivery {
            msg: msg.clone(),
            qos,
            retain,
            sub_ids,
            seq: 0,
        };
        if self.broker.enqueue(&session, delivery) {
            Redirected::Queued
        } else {
            Redirected::Dropped
        }
    }
}

impl std::fmt::Debug for LocalDelivery<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalDelivery").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_granted_qos_wins() {
        use QoS::{AtLeastOnce, AtMostOnce, ExactlyOnce};
        assert_eq!(max_qos(None, AtMostOnce), AtMostOnce);
        assert_eq!(max_qos(Some(AtLeastOnce), AtMostOnce), AtLeastOnce);
        assert_eq!(max_qos(Some(AtMostOnce), ExactlyOnce), ExactlyOnce);
        assert_eq!(max_qos(Some(ExactlyOnce), ExactlyOnce), ExactlyOnce);
    }
}
