//! The budget of bytes the relays together may hold in buffers for clients' bytes (`[limits] max_buffered_bytes`),
//! below the relay: each relay direction holds a [`Claim`] for the buffer it reads into, taken before it reads and
//! given back when the buffer is written out and freed.
//!
//! Client → backend: at the bound, a direction that has no buffer waits for one before it reads again. The client's
//! bytes stay in the kernel (its TCP window closes), so a burst of clients or a backend that reads slowly slows
//! reads down instead of growing the LB's memory, and nothing is dropped. A direction that already has a buffer
//! grows it only when the budget allows, else keeps its size. Waiters are served in order (a tokio `Semaphore` of
//! bytes), so none starves.
//!
//! Backend → client: never waits, and is counted apart. Its buffer is held while a client does not read, so a
//! budget it took from would let clients that stop reading stall every other client's reads (and one stalled
//! backend's answers would wait on others' bytes); instead it is bounded per relay ([`crate::relay`]'s 16 KiB) and
//! by the connection caps (`max_connections_per_ip` × 16 KiB per client address).
//!
//! `fleetgate_lb_relay_buffered_bytes{direction}` shows what is held each way; `fleetgate_lb_relay_buffer_waits_total`
//! counts the client reads that had to wait. rustls' own buffers of a TLS connection are not counted (they are
//! bounded per connection by rustls).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::metrics::{RELAY_BUFFER_WAITS, RELAY_BUFFERED_BYTES};

/// A pending acquisition of budget bytes.
type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// Which way a relay direction's bytes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Toward {
    /// Client → backend: within the budget, waiting at its bound.
    Backend,
    /// Backend → client: counted, never waiting.
    Client,
}

/// The bytes the relays may hold for clients, all connections together.
#[derive(Debug)]
pub(crate) struct BufferBudget {
    bytes: Arc<Semaphore>,
    max: usize,
    to_backend: metrics::Gauge,
    to_client: metrics::Gauge,
    waits: metrics::Counter,
}

impl BufferBudget {
    /// A budget of `max` bytes (at most what a semaphore counts, far beyond any machine's memory).
    pub(crate) fn new(max: usize) -> Arc<Self> {
        let max = max.min(Semaphore::MAX_PERMITS);
        Arc::new(Self {
            bytes: Arc::new(Semaphore::new(max)),
            max,
            to_backend: metrics::gauge!(RELAY_BUFFERED_BYTES, "direction" => "to_backend"),
            to_client: metrics::gauge!(RELAY_BUFFERED_BYTES, "direction" => "to_client"),
            waits: metrics::counter!(RELAY_BUFFER_WAITS),
        })
    }

    /// The budget's size in bytes.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Bytes of the budget held by claims now.
    #[cfg(test)]
    pub(crate) fn in_use(&self) -> usize {
        self.max - self.bytes.available_permits()
    }

    /// An empty claim for a direction `toward` the backend or the client.
    pub(crate) fn claim(self: &Arc<Self>, toward: Toward) -> Claim {
        Claim {
            budget: self.clone(),
            toward,
            held: None,
            counted: 0,
            pending: None,
        }
    }
}

/// The bytes one relay direction holds; given back when released or dropped.
pub(crate) struct Claim {
    budget: Arc<BufferBudget>,
    toward: Toward,
    /// Toward the backend: the budget's bytes.
    held: Option<OwnedSemaphorePermit>,
    /// Toward the client: bytes counted, outside the budget.
    counted: usize,
    /// The acquisition a direction waits on.
    pending: Option<Acquire>,
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim")
            .field("held", &self.held())
            .field("waiting", &self.pending.is_some())
            .finish()
    }
}

/// A request for budget bytes: whole `u32` permits (a relay buffer is at most 16 KiB).
fn permits(bytes: usize) -> u32 {
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

impl Claim {
    /// Bytes held now.
    pub(crate) fn held(&self) -> usize {
        self.counted
            + self
                .held
                .as_ref()
                .map_or(0, OwnedSemaphorePermit::num_permits)
    }

    /// Whether the direction waits for budget bytes now.
    pub(crate) fn is_waiting(&self) -> bool {
        self.pending.is_some()
    }

    /// Holds at least `bytes`, waiting (woken through `cx`) while the budget is spent; each wait is counted once.
    /// Toward the client it never waits.
    pub(crate) fn poll_hold(&mut self, cx: &mut Context<'_>, bytes: usize) -> Poll<()> {
        if self.toward == Toward::Client {
            self.count(bytes);
            return Poll::Ready(());
        }
        loop {
            let missing = bytes.saturating_sub(self.held());
            if missing == 0 {
                self.pending = None;
                return Poll::Ready(());
            }
            let acquire = match self.pending.as_mut() {
                Some(pending) => pending,
                None => {
                    match self.try_take(missing) {
                        Ok(()) => continue,
                        // Never closed: nothing to wait for.
                        Err(TryAcquireError::Closed) => return Poll::Ready(()),
                        Err(TryAcquireError::NoPermits) => {}
                    }
                    self.budget.waits.increment(1);
                    let acquire = self
                        .budget
                        .bytes
                        .clone()
                        .acquire_many_owned(permits(missing));
                    self.pending.insert(Box::pin(acquire))
                }
            };
            match acquire.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                // What was asked may be less than is missing by now: the loop asks again.
                Poll::Ready(Ok(permit)) => {
                    self.pending = None;
                    self.add(permit);
                }
                Poll::Ready(Err(_closed)) => {
                    self.pending = None;
                    return Poll::Ready(());
                }
            }
        }
    }

    /// Holds at least `bytes` if the budget has them now (toward the client: always); false (holding what it held)
    /// otherwise.
    pub(crate) fn try_grow(&mut self, bytes: usize) -> bool {
        if self.toward == Toward::Client {
            self.count(bytes);
            return true;
        }
        let missing = bytes.saturating_sub(self.held());
        missing == 0 || self.try_take(missing).is_ok()
    }

    /// Takes `missing` more bytes of the budget if it has them now.
    fn try_take(&mut self, missing: usize) -> Result<(), TryAcquireError> {
        let permit = self
            .budget
            .bytes
            .clone()
            .try_acquire_many_owned(permits(missing))?;
        self.add(permit);
        Ok(())
    }

    /// Gives back every byte held (a wait in progress goes on).
    pub(crate) fn release(&mut self) {
        if let Some(permit) = self.held.take() {
            self.budget
                .to_backend
                .decrement(permit.num_permits() as f64);
        }
        if self.counted > 0 {
            self.budget.to_client.decrement(self.counted as f64);
            self.counted = 0;
        }
    }

    /// Toward the client: counts up to `bytes` held.
    fn count(&mut self, bytes: usize) {
        if bytes > self.counted {
            self.budget
                .to_client
                .increment((bytes - self.counted) as f64);
            self.counted = bytes;
        }
    }

    fn add(&mut self, permit: OwnedSemaphorePermit) {
        self.budget
            .to_backend
            .increment(permit.num_permits() as f64);
        match self.held.as_mut() {
            Some(held) => held.merge(permit),
            None => self.held = Some(permit),
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING)
mod tests {
    use std::future::poll_fn;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_claim_waits_at_the_bound_and_gets_its_bytes_when_others_give_them_back() {
        let budget = BufferBudget::new(64 * 1024);
        let mut a = budget.claim(Toward::Backend);
        poll_fn(|cx| a.poll_hold(cx, 48 * 1024)).await;
        assert_eq!((a.held(), budget.in_use()), (48 * 1024, 48 * 1024));
        // Growth is only taken when free.
        assert!(!a.try_grow(80 * 1024));
        assert!(a.try_grow(64 * 1024));
        assert_eq!(budget.in_use(), budget.max());

        // Toward the client nothing waits, and the budget is not touched.
        let mut down = budget.claim(Toward::Client);
        poll_fn(|cx| down.poll_hold(cx, 16 * 1024)).await;
        assert!(down.try_grow(32 * 1024));
        assert_eq!((down.held(), budget.in_use()), (32 * 1024, budget.max()));
        drop(down);

        let mut b = budget.claim(Toward::Backend);
        let waiting = tokio::spawn(async move {
            poll_fn(|cx| b.poll_hold(cx, 16 * 1024)).await;
            b
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the budget is spent: b waits");
        a.release();
        let b = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((b.held(), budget.in_use()), (16 * 1024, 16 * 1024));
        drop(b);
        assert_eq!(budget.in_use(), 0, "a dropped claim gives its bytes back");
    }
}
