//! Subscriptions: added to the session and the router (and, when new, advertised through
//! [`ClusterHooks::filter_added`]), removed likewise; the retained messages a new subscription asks for.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use fleetgate_protocol::mqtt::topic::split_shared;
use fleetgate_protocol::mqtt::{
    ByteString, QoS, RetainHandling, SubscribeAckReason, SubscriptionOptions,
};

use super::Broker;
use crate::state::message::Delivery;
use crate::state::router::{Router, Subscriber};
use crate::state::session::{Session, SubscriptionEntry};

impl Broker {
    /// Adds or replaces a subscription of `session` and queues the retained messages its retain handling asks
    /// for. Returns the SUBACK reason: quota exceeded (0x97) for a new filter past `max_subscriptions`.
    pub(crate) fn subscribe(
        &self,
        session: &Arc<Session>,
        filter: &ByteString,
        options: SubscriptionOptions,
        id: Option<NonZeroU32>,
    ) -> SubscribeAckReason {
        let (group, plain) = split_shared(filter);
        let existed = {
            let mut st = session.state.lock();
            let subs = &mut st.subscriptions;
            if !subs.contains_key(filter) && subs.len() >= self.limits.max_subscriptions {
                return SubscribeAckReason::QuotaExceeded;
            }
            let entry = SubscriptionEntry { options, id };
            let existed = subs.insert(filter.clone(), entry).is_some();
            self.persist_subscription(&session.client_id, &st, filter, Some(entry));
            existed
        };
        let replaced = self.router.write().subscribe(
            plain,
            group,
            Subscriber {
                session: session.clone(),
                options,
                id,
            },
        );
        if !replaced {
            self.cluster.filter_added(filter);
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
                    seq: 0,
                };
                self.enqueue(session, delivery);
            }
        }
        match options.qos {
            QoS::AtMostOnce => SubscribeAckReason::GrantedQos0,
            QoS::AtLeastOnce => SubscribeAckReason::GrantedQos1,
            QoS::ExactlyOnce => SubscribeAckReason::GrantedQos2,
        }
    }

    /// Removes a subscription; false when `session` had none on `filter`.
    pub(crate) fn unsubscribe(&self, session: &Arc<Session>, filter: &ByteString) -> bool {
        let existed = {
            let mut st = session.state.lock();
            let existed = st.subscriptions.remove(filter).is_some();
            if existed {
                self.persist_subscription(&session.client_id, &st, filter, None);
            }
            existed
        };
        if existed {
            let mut router = self.router.write();
            self.unroute(&mut router, session, std::slice::from_ref(filter));
        }
        existed
    }

    /// Takes every subscription of a session that ended out of the router.
    pub(super) fn remove_routes(&self, session: &Arc<Session>) {
        let filters: Vec<ByteString> = session.state.lock().subscriptions.keys().cloned().collect();
        if filters.is_empty() {
            return;
        }
        let mut router = self.router.write();
        self.unroute(&mut router, session, &filters);
    }

    /// Removes `session`'s subscriptions on `filters` from the router (and from what the cluster advertises).
    pub(super) fn unroute(&self, router: &mut Router, session: &Session, filters: &[ByteString]) {
        for f in filters {
            let (group, plain) = split_shared(f);
            if router.unsubscribe(plain, group, session.id) {
                self.cluster.filter_removed(f);
            }
        }
    }
}
