//! The node's memory budget: the bytes that session queues, in-flight windows and the retained store hold,
//! against one limit (`[limits] memory_budget`), so that no mix of slow subscribers, offline sessions and
//! retained floods can grow the node past it.
//!
//! A [`Backlog`] (a session's queue or its in-flight list) weighs what it holds and reports the total to the
//! shared [`MemoryBudget`] in grains of [`GRAIN`] bytes while its client is connected — a delivery popped soon
//! after it was pushed costs no shared atomic operation — and exactly while it is not (offline sessions are
//! where memory piles up, and there may be many). An empty backlog always reports exactly, so the error of the
//! total is below `GRAIN` per connected session with a backlog. The retained store reports every change.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use metrics::Gauge;

use super::message::Delivery;
use super::session::Inflight;

/// What a connected session's backlog may hold beyond what it reported to the budget.
pub(crate) const GRAIN: usize = 16 * 1024;

/// Bytes a queued delivery costs beside its message: the delivery itself and its queue slot.
const DELIVERY_OVERHEAD: usize = std::mem::size_of::<Delivery>() + 16;

/// The node-wide byte budget and what is in use.
#[derive(Debug)]
pub(crate) struct MemoryBudget {
    used: AtomicUsize,
    limit: usize,
    gauge: Gauge,
}

impl MemoryBudget {
    /// A budget of `limit` bytes; `gauge` follows what is in use.
    pub(crate) fn new(limit: usize, gauge: Gauge) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            used: AtomicUsize::new(0),
            limit,
            gauge,
        })
    }

    /// A budget nothing reaches (unit tests).
    #[cfg(test)]
    pub(crate) fn unbounded() -> Arc<MemoryBudget> {
        MemoryBudget::new(usize::MAX, Gauge::noop())
    }

    /// Bytes in use, as reported.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// True when holding `more` bytes would pass the limit.
    pub(crate) fn would_exceed(&self, more: usize) -> bool {
        self.used().saturating_add(more) > self.limit
    }

    /// True when the use is at or above `percent` of the limit.
    pub(crate) fn is_above(&self, percent: usize) -> bool {
        self.used() >= self.limit / 100 * percent
    }

    /// Records `n` more bytes held.
    pub(crate) fn add(&self, n: usize) {
        let now = self.used.fetch_add(n, Ordering::Relaxed) + n;
        self.gauge.set(now as f64);
    }

    /// Records `n` bytes released.
    pub(crate) fn sub(&self, n: usize) {
        let now = self.used.fetch_sub(n, Ordering::Relaxed) - n;
        self.gauge.set(now as f64);
    }
}

/// Something a backlog holds, with the bytes it costs.
pub(crate) trait Weigh {
    /// Bytes this item keeps in memory (shared parts counted in full: a bound, not an exact figure).
    fn weight(&self) -> usize;
}

impl Weigh for Delivery {
    fn weight(&self) -> usize {
        self.msg.footprint() + DELIVERY_OVERHEAD + self.sub_ids.len() * 4
    }
}

impl Weigh for Inflight {
    fn weight(&self) -> usize {
        self.delivery.weight()
    }
}

/// A session's queue or in-flight list: a deque that knows its bytes and reports them to the budget.
#[derive(Debug)]
pub(crate) struct Backlog<T> {
    items: VecDeque<T>,
    bytes: usize,
    reported: usize,
    /// Report every change (no connection attached).
    exact: bool,
    budget: Arc<MemoryBudget>,
}

impl<T: Weigh> Backlog<T> {
    /// An empty backlog reporting to `budget`, exactly until [`Backlog::set_exact`] says otherwise.
    pub(crate) fn new(budget: Arc<MemoryBudget>) -> Backlog<T> {
        Backlog {
            items: VecDeque::new(),
            bytes: 0,
            reported: 0,
            exact: true,
            budget,
        }
    }

    /// The budget it reports to.
    pub(crate) fn budget(&self) -> &Arc<MemoryBudget> {
        &self.budget
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Items held.
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// True when empty.
    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Reports every change (`true`: no connection attached) or in grains (a connection drains it).
    pub(crate) fn set_exact(&mut self, exact: bool) {
        self.exact = exact;
        self.settle();
    }

    /// Appends an item.
    pub(crate) fn push_back(&mut self, item: T) {
        self.bytes += item.weight();
        self.items.push_back(item);
        self.settle();
    }

    /// Puts an item back at the front.
    pub(crate) fn push_front(&mut self, item: T) {
        self.bytes += item.weight();
        self.items.push_front(item);
        self.settle();
    }

    /// Takes the first item.
    pub(crate) fn pop_front(&mut self) -> Option<T> {
        let item = self.items.pop_front()?;
        self.bytes -= item.weight();
        self.settle();
        Some(item)
    }

    /// The first item.
    pub(crate) fn front(&self) -> Option<&T> {
        self.items.front()
    }

    /// The items, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter()
    }

    /// The items, oldest first, to change in place (without changing their weight).
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.items.iter_mut()
    }

    /// Removes the item at `pos`.
    pub(crate) fn remove(&mut self, pos: usize) -> Option<T> {
        let item = self.items.remove(pos)?;
        self.bytes -= item.weight();
        self.settle();
        Some(item)
    }

    /// Keeps the items `keep` accepts.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let mut bytes = self.bytes;
        self.items.retain(|item| {
            let kept = keep(item);
            if !kept {
                bytes -= item.weight();
            }
            kept
        });
        self.bytes = bytes;
        self.settle();
    }

    /// Takes every item, oldest first, leaving it empty.
    pub(crate) fn take_all(&mut self) -> Vec<T> {
        let items = std::mem::take(&mut self.items);
        self.bytes = 0;
        self.settle();
        items.into()
    }

    /// Forgets every item; returns how many there were.
    pub(crate) fn clear(&mut self) -> usize {
        let n = self.items.len();
        self.items.clear();
        self.bytes = 0;
        self.settle();
        n
    }

    /// Reports the change to the budget when it is due: always when exact or empty, else past a grain.
    fn settle(&mut self) {
        if self.bytes == self.reported {
            return;
        }
        if self.exact || self.bytes == 0 || self.bytes.abs_diff(self.reported) >= GRAIN {
            if self.bytes > self.reported {
                self.budget.add(self.bytes - self.reported);
            } else {
                self.budget.sub(self.reported - self.bytes);
            }
            self.reported = self.bytes;
        }
    }
}

impl<T> Drop for Backlog<T> {
    fn drop(&mut self) {
        if self.reported > 0 {
            self.budget.sub(self.reported);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::message::Message;
    use fleetgate_protocol::mqtt::{Bytes, QoS};

    fn delivery(payload: usize) -> Delivery {
        Delivery {
            msg: Arc::new(Message {
                topic: "t".into(),
                payload: Bytes::from(vec![0u8; payload]),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: None,
                expires_at: None,
                origin: 0,
            }),
            qos: QoS::AtLeastOnce,
            retain: false,
            sub_ids: Vec::new(),
            seq: 0,
        }
    }

    #[test]
    fn exact_while_offline_in_grains_while_online_and_released_on_drop() {
        let budget = MemoryBudget::unbounded();
        let mut queue: Backlog<Delivery> = Backlog::new(budget.clone());
        queue.push_back(delivery(100));
        let one = queue.bytes();
        assert!(one > 100);
        assert_eq!(budget.used(), one, "offline: every change reported");

        queue.set_exact(false);
        queue.push_back(delivery(100));
        assert_eq!(budget.used(), one, "online: below a grain, not yet");
        queue.push_back(delivery(GRAIN));
        assert_eq!(budget.used(), queue.bytes(), "a grain's worth: reported");
        queue.pop_front();
        assert!(budget.used() > queue.bytes(), "a small release waits");
        queue.retain(|_| false);
        assert_eq!(budget.used(), 0, "empty: reported exactly");

        queue.push_back(delivery(10));
        queue.set_exact(true);
        assert_eq!(budget.used(), queue.bytes(), "going offline settles");
        drop(queue);
        assert_eq!(
            budget.used(),
            0,
            "a dropped backlog releases what it reported"
        );
    }

    #[test]
    fn limit_checks() {
        let budget = MemoryBudget::new(1000, Gauge::noop());
        budget.add(900);
        assert!(budget.is_above(90));
        assert!(!budget.is_above(91));
        assert!(!budget.would_exceed(100));
        assert!(budget.would_exceed(101));
        budget.sub(900);
        assert_eq!(budget.used(), 0);
    }
}
