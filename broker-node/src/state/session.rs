//! Session state: what outlives a connection when the client asks for it — subscriptions, the outbound queue,
//! QoS 1/2 messages in flight both ways, packet-ID allocation — plus the slot of the connection currently
//! attached. Locked briefly (never across an `.await`); publishers push into the queue and wake the connection.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::num::{NonZeroU16, NonZeroU32};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use fleetgate_auth::Principal;
use fleetgate_protocol::mqtt::{ByteString, ProtocolLevel, QoS, SubscriptionOptions};
use parking_lot::Mutex;

use super::budget::{Backlog, MemoryBudget, Weigh};
use super::message::{Delivery, SessionId};
use super::will::Will;
use crate::metrics::DropReason;
use crate::wakeup::Wakeup;

/// The connection currently attached to a session.
#[derive(Debug)]
pub(crate) struct ConnSlot {
    /// Its wake-up/takeover signal.
    pub(crate) signal: Arc<Wakeup>,
    /// Its inflight window (for the `inflight_window` drop reason).
    pub(crate) window: usize,
}

/// One stored subscription (the key in [`SessionState::subscriptions`] is the full filter, `$share/..` included).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SubscriptionEntry {
    /// Options from SUBSCRIBE.
    pub(crate) options: SubscriptionOptions,
    /// Subscription identifier.
    pub(crate) id: Option<NonZeroU32>,
}

/// A QoS 1/2 message sent to the client and not yet fully acknowledged.
#[derive(Debug)]
pub(crate) struct Inflight {
    /// The packet identifier it was sent with.
    pub(crate) packet_id: NonZeroU16,
    /// What was sent (resent with DUP on reconnect).
    pub(crate) delivery: Delivery,
    /// QoS 2 only: PUBREC received and PUBREL sent; waiting for PUBCOMP.
    pub(crate) released: bool,
}

/// A session on its way between nodes (a cluster handover), detached from any connection: everything a
/// [`Session`] holds that outlives a connection.
#[derive(Debug)]
pub(crate) struct SessionSnapshot {
    /// The client identifier.
    pub(crate) client_id: ByteString,
    /// Session expiry interval in seconds.
    pub(crate) expiry_secs: u32,
    /// Protocol of the last connection.
    pub(crate) protocol: ProtocolLevel,
    /// Last packet identifier handed out.
    pub(crate) next_packet_id: u16,
    /// QoS 2 packet IDs received, waiting for PUBREL.
    pub(crate) inbound_qos2: Vec<u16>,
    /// A will waiting out its delay.
    pub(crate) will: Option<Will>,
    /// Who the client authenticated as.
    pub(crate) principal: Option<Arc<Principal>>,
    /// Subscriptions by full filter.
    pub(crate) subs: Vec<(ByteString, SubscriptionEntry)>,
    /// Messages waiting to be sent.
    pub(crate) queue: Vec<Delivery>,
    /// Messages sent and not fully acknowledged, oldest first.
    pub(crate) inflight: Vec<Inflight>,
}

/// The mutable part of a session.
#[derive(Debug)]
pub(crate) struct SessionState {
    /// Subscriptions by full filter.
    pub(crate) subscriptions: HashMap<ByteString, SubscriptionEntry>,
    /// Messages waiting to be sent (bounded by `max_queued_messages` and `max_queued_bytes`).
    pub(crate) queue: Backlog<Delivery>,
    /// QoS 1/2 messages sent, oldest first.
    pub(crate) inflight: Backlog<Inflight>,
    /// QoS 2 packet IDs received from the client, PUBREC sent, waiting for PUBREL.
    pub(crate) inbound_qos2: HashSet<u16>,
    /// The attached connection, if any (set through [`SessionState::attach`] and [`SessionState::take_conn`]).
    pub(crate) conn: Option<ConnSlot>,
    /// Increases on every attach; timers and detaches from older connections compare it and do nothing.
    pub(crate) generation: u64,
    /// Session expiry interval in seconds (0 = ends with the connection).
    pub(crate) expiry_secs: u32,
    /// The connected client's will.
    pub(crate) will: Option<Will>,
    /// A will waiting out its delay after the connection ended.
    pub(crate) pending_will: Option<Will>,
    /// The session was removed from the broker; late pushes are ignored.
    pub(crate) ended: bool,
    /// Protocol of the last connection (admin).
    pub(crate) protocol: ProtocolLevel,
    /// Client address of the last connection (admin).
    pub(crate) source: Option<SocketAddr>,
    /// Who the client of the last connection authenticated as (moves with the session between nodes).
    pub(crate) principal: Option<Arc<Principal>>,
    /// Last packet identifier handed out (moves with the session between nodes).
    pub(crate) next_packet_id: u16,
}

impl SessionState {
    /// Next free packet identifier (skipping those in flight); `None` when all 65,535 are in flight. Among
    /// `inflight.len() + 1` consecutive candidates one is free, so at most that many are tried (each an
    /// O(inflight) scan; the inflight window keeps it short, and the first candidate is the usual hit).
    pub(crate) fn alloc_packet_id(&mut self) -> Option<NonZeroU16> {
        if self.inflight.len() >= usize::from(u16::MAX) {
            return None;
        }
        for _ in 0..=self.inflight.len() {
            self.next_packet_id = self.next_packet_id.wrapping_add(1);
            if self.next_packet_id == 0 {
                self.next_packet_id = 1;
            }
            let id = NonZeroU16::new(self.next_packet_id)?;
            if !self.inflight.iter().any(|e| e.packet_id == id) {
                return Some(id);
            }
        }
        None
    }

    /// Attaches a connection: from now on it drains the backlogs, which report their bytes in grains.
    pub(crate) fn attach(&mut self, slot: ConnSlot) {
        self.conn = Some(slot);
        self.queue.set_exact(false);
        self.inflight.set_exact(false);
    }

    /// Detaches the connection, if any: the backlogs report their bytes exactly again.
    pub(crate) fn take_conn(&mut self) -> Option<ConnSlot> {
        self.queue.set_exact(true);
        self.inflight.set_exact(true);
        self.conn.take()
    }

    /// Bytes the queue and the in-flight list hold.
    pub(crate) fn held_bytes(&self) -> usize {
        self.queue.bytes() + self.inflight.bytes()
    }

    /// The session ends: forgets what it still owed its client; returns how many messages that was.
    pub(crate) fn discard(&mut self) -> usize {
        self.queue.clear() + self.inflight.clear()
    }

    /// PUBACK: forgets a QoS 1 message; its store sequence (0: not stored), `None` when unknown.
    pub(crate) fn acknowledge(&mut self, id: NonZeroU16) -> Option<u64> {
        self.remove_inflight(id, |e| e.delivery.qos == QoS::AtLeastOnce)
    }

    /// PUBREC: marks a QoS 2 message released; the entry, `None` when unknown.
    pub(crate) fn release(&mut self, id: NonZeroU16) -> Option<&Inflight> {
        let e = self
            .inflight
            .iter_mut()
            .find(|e| e.packet_id == id && e.delivery.qos == QoS::ExactlyOnce)?;
        e.released = true;
        Some(e)
    }

    /// PUBCOMP (or a failed PUBREC): forgets a QoS 2 message; its store sequence, `None` when unknown.
    pub(crate) fn complete(&mut self, id: NonZeroU16) -> Option<u64> {
        self.remove_inflight(id, |e| e.delivery.qos == QoS::ExactlyOnce)
    }

    fn remove_inflight(&mut self, id: NonZeroU16, ok: impl Fn(&Inflight) -> bool) -> Option<u64> {
        // Acks mostly arrive in order: the front is the usual hit.
        let pos = self
            .inflight
            .iter()
            .position(|e| e.packet_id == id && ok(e))?;
        self.inflight.remove(pos).map(|e| e.delivery.seq)
    }
}

/// How much one session's queue may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueLimits {
    /// Messages queued at most (`max_queued_messages`).
    pub(crate) max_messages: usize,
    /// Bytes the queue and the in-flight list hold at most (`max_queued_bytes`).
    pub(crate) max_bytes: usize,
}

/// From this share of the node's memory budget (percent), QoS 0 messages to subscribers that already have a
/// backlog are dropped: they go before anything else does.
const BUDGET_QOS0_PERCENT: usize = 90;

/// A session: identity plus locked state.
#[derive(Debug)]
pub(crate) struct Session {
    /// Unique per session object (a clean-start reconnect gets a new one).
    pub(crate) id: SessionId,
    /// The client identifier.
    pub(crate) client_id: ByteString,
    connected: AtomicBool,
    /// The state; lock briefly, never across `.await`.
    pub(crate) state: Mutex<SessionState>,
}

impl Session {
    /// A new session, its backlogs reporting to `budget`.
    pub(crate) fn new(
        id: SessionId,
        client_id: ByteString,
        protocol: ProtocolLevel,
        expiry_secs: u32,
        budget: &Arc<MemoryBudget>,
    ) -> Session {
        Session {
            id,
            client_id,
            connected: AtomicBool::new(false),
            state: Mutex::new(SessionState {
                subscriptions: HashMap::new(),
                queue: Backlog::new(budget.clone()),
                inflight: Backlog::new(budget.clone()),
                inbound_qos2: HashSet::new(),
                conn: None,
                generation: 0,
                expiry_secs,
                will: None,
                pending_will: None,
                ended: false,
                protocol,
                source: None,
                principal: None,
                next_packet_id: 0,
            }),
        }
    }

    /// A detached session, for unit tests of other modules.
    #[cfg(test)]
    pub(crate) fn new_for_test(id: SessionId) -> Arc<Session> {
        Arc::new(Session::new(
            id,
            format!("c{id}").into(),
            ProtocolLevel::V5,
            0,
            &MemoryBudget::unbounded(),
        ))
    }

    /// True while a connection is attached (lock-free; used to prefer connected shared-group members).
    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Records whether a connection is attached (called with the state lock held).
    pub(crate) fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }

    /// Queues a delivery and wakes the connection; the error says why it was dropped instead. `persist` runs
    /// under the lock just before the delivery is queued (the session store's write, in memory's order); its
    /// error drops the delivery.
    pub(crate) fn enqueue(
        &self,
        mut delivery: Delivery,
        limits: QueueLimits,
        persist: impl FnOnce(&SessionState, &mut Delivery) -> Result<(), DropReason>,
    ) -> Result<(), DropReason> {
        let mut st = self.state.lock();
        if st.ended {
            return Err(DropReason::SessionEnded);
        }
        let qos0 = delivery.qos == QoS::AtMostOnce;
        let weight = delivery.weight();
        let full =
            st.queue.len() >= limits.max_messages || st.held_bytes() + weight > limits.max_bytes;
        // The node's budget bounds backlogs: what waits for an offline client or piles up behind a slow one. A
        // delivery to a connected client with nothing queued leaves at its next write and is always taken (a
        // spent budget does not stop live traffic). QoS 0 to a backlog goes first (from 90 % of the budget),
        // the rest at the limit.
        let backlog = st.conn.is_none() || !st.queue.is_empty();
        let budget = st.queue.budget();
        let over_budget = backlog
            && (budget.would_exceed(weight) || (qos0 && budget.is_above(BUDGET_QOS0_PERCENT)));
        let Some(conn) = st.conn.as_ref() else {
            if qos0 {
                return Err(DropReason::NotConnected);
            }
            if full {
                return Err(DropReason::QueueFull);
            }
            if over_budget {
                return Err(DropReason::MemoryBudget);
            }
            persist(&st, &mut delivery)?;
            st.queue.push_back(delivery);
            return Ok(());
        };
        if full {
            return Err(if qos0 {
                DropReason::Qos0QueueFull
            } else if st.inflight.len() >= conn.window {
                DropReason::InflightWindow
            } else {
                DropReason::QueueFull
            });
        }
        if over_budget {
            return Err(DropReason::MemoryBudget);
        }
        persist(&st, &mut delivery)?;
        let was_empty = st.queue.is_empty();
        let signal = was_empty.then(|| conn.signal.clone());
        st.queue.push_back(delivery);
        drop(st);
        // Only the empty → non-empty edge wakes: a connection with a backlog drains it on its next turn anyway.
        if let Some(signal) = signal {
            signal.messages();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::message::Message;
    use fleetgate_protocol::mqtt::Bytes;

    fn lim(max_messages: usize) -> QueueLimits {
        QueueLimits {
            max_messages,
            max_bytes: usize::MAX,
        }
    }

    fn delivery(qos: QoS) -> Delivery {
        let msg = Message {
            topic: "t".into(),
            payload: Bytes::from_static(b"x"),
            qos,
            retain: false,
            properties: None,
            expires_at: None,
            origin: 0,
        };
        Delivery {
            msg: Arc::new(msg),
            qos,
            retain: false,
            sub_ids: Vec::new(),
            seq: 0,
        }
    }

    #[test]
    fn offline_queueing_rules() {
        let s = Session::new_for_test(1);
        assert_eq!(
            s.enqueue(delivery(QoS::AtMostOnce), lim(2), |_, _| Ok(())),
            Err(DropReason::NotConnected)
        );
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce), lim(2), |_, _| Ok(())),
            Ok(())
        );
        assert_eq!(
            s.enqueue(delivery(QoS::ExactlyOnce), lim(2), |_, _| Ok(())),
            Ok(())
        );
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce), lim(2), |_, _| Ok(())),
            Err(DropReason::QueueFull)
        );
    }

    #[test]
    fn online_queue_full_reasons() {
        let s = Session::new_for_test(1);
        let signal = Arc::new(Wakeup::default());
        s.state.lock().conn = Some(ConnSlot { signal, window: 1 });
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce), lim(1), |_, _| Ok(())),
            Ok(())
        );
        assert_eq!(
            s.enqueue(delivery(QoS::AtMostOnce), lim(1), |_, _| Ok(())),
            Err(DropReason::Qos0QueueFull)
        );
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce), lim(1), |_, _| Ok(())),
            Err(DropReason::QueueFull)
        );
        let mut st = s.state.lock();
        let id = st.alloc_packet_id().unwrap();
        let d = st.queue.pop_front().unwrap();
        st.inflight.push_back(Inflight {
            packet_id: id,
            delivery: d,
            released: false,
        });
        st.queue.push_back(delivery(QoS::AtLeastOnce));
        drop(st);
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce), lim(1), |_, _| Ok(())),
            Err(DropReason::InflightWindow)
        );
    }

    #[test]
    fn packet_ids_skip_inflight_and_zero() {
        let s = Session::new_for_test(1);
        let mut st = s.state.lock();
        st.next_packet_id = u16::MAX - 1;
        let a = st.alloc_packet_id().unwrap();
        assert_eq!(a.get(), u16::MAX);
        st.inflight.push_back(Inflight {
            packet_id: NonZeroU16::MIN,
            delivery: delivery(QoS::AtLeastOnce),
            released: false,
        });
        assert_eq!(st.alloc_packet_id().map(NonZeroU16::get), Some(2));
        assert!(st.acknowledge(NonZeroU16::MIN).is_some());
        assert!(st.acknowledge(NonZeroU16::MIN).is_none());
    }

    #[test]
    fn packet_ids_run_out_instead_of_spinning() {
        let s = Session::new_for_test(1);
        let mut st = s.state.lock();
        let d = delivery(QoS::AtLeastOnce);
        for packet_id in (1..=u16::MAX).filter_map(NonZeroU16::new) {
            st.inflight.push_back(Inflight {
                packet_id,
                delivery: d.clone(),
                released: false,
            });
        }
        assert_eq!(st.alloc_packet_id(), None);
        // One acknowledged: found by the next allocation that reaches it.
        let free = NonZeroU16::new(40_000).unwrap();
        assert!(st.acknowledge(free).is_some());
        st.next_packet_id = 39_998;
        assert_eq!(st.alloc_packet_id(), Some(free));
    }
}
