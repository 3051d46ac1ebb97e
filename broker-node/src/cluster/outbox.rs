//! The per-peer outbound queue of a cluster link, between the senders ([`super::Cluster`]'s `push`, the publish
//! path's forwards) and the link's writer (`LinkTx::write_loop`, run by `link.rs`). Frames are encoded straight
//! into one write buffer, in queue order; the writer swaps the whole buffer out and writes it with one
//! `write_all`, so a burst of forwards costs one socket write, no allocation per frame (the two buffers are reused)
//! and at most one wake-up of the writer (only when it waits on an empty queue).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use futures::task::AtomicWaker;
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::frame::Frame;
use super::link::LinkWrite;

/// A write buffer grown past this by a burst is freed after the write instead of kept for reuse: a link that
/// once carried a large backlog (or one big message) should not hold that much memory while it idles.
const KEEP_WRITE_BUFFER: usize = 1024 * 1024;

/// Why [`LinkTx::try_push`] refused a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The queue is at its bound.
    Full,
    /// The link ended.
    Closed,
}

/// What is queued for the writer.
#[derive(Debug, Default)]
struct Outbox {
    /// Encoded frames, in queue order.
    buf: BytesMut,
    /// Frames in `buf` (the queue bound counts frames).
    frames: usize,
    /// The writer found the queue empty and waits for [`LinkTx::wake`].
    idle: bool,
    /// The link ended: nothing more is queued.
    closed: bool,
}

/// Our outbound queue to one peer.
#[derive(Debug)]
pub(crate) struct LinkTx {
    /// Which outbound connection this is (a reconnect gets a new one).
    pub(crate) id: u64,
    queue: Mutex<Outbox>,
    /// Wakes the writer when it waits on an empty queue.
    wake: AtomicWaker,
    /// Ends the link (the peer then resyncs on a new one).
    pub(crate) cancel: CancellationToken,
    /// The writer took a batch (or the link closed): a sync stream waiting for room looks again.
    drained: Notify,
    /// A sync stream waits on `drained` (spares the writer the notification otherwise).
    room_wanted: AtomicBool,
    /// The link was reset because a control frame found the queue at 4 × capacity.
    overflowed: AtomicBool,
    /// Bytes queued at most for droppable frames (4 × for the others), like the frame capacity.
    max_bytes: usize,
}

impl LinkTx {
    /// An empty queue for outbound connection `id`, holding at most `max_bytes` of droppable frames.
    pub(crate) fn new(id: u64, cancel: CancellationToken, max_bytes: usize) -> LinkTx {
        LinkTx {
            id,
            queue: Mutex::new(Outbox::default()),
            wake: AtomicWaker::new(),
            cancel,
            drained: Notify::new(),
            room_wanted: AtomicBool::new(false),
            overflowed: AtomicBool::new(false),
            max_bytes,
        }
    }

    /// Waits until at most `frames` (and half the byte bound) are queued; false when the link ended first.
    pub(crate) async fn wait_room(&self, frames: usize) -> bool {
        loop {
            // Created before the look, so a notification between the look and the wait is not missed.
            let drained = self.drained.notified();
            {
                let q = self.queue.lock();
                if q.closed {
                    return false;
                }
                if q.frames <= frames && q.buf.len() <= self.max_bytes / 2 {
                    return true;
                }
                self.room_wanted.store(true, Ordering::Release);
            }
            drained.await;
        }
    }

    /// True once the link ended.
    pub(crate) fn is_closed(&self) -> bool {
        self.queue.lock().closed
    }

    /// True when the link was reset because its queue overflowed with control frames.
    pub(crate) fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }

    /// Queues the frame `encode` appends (exactly one). With `capacity` frames (or the byte bound) already
    /// waiting, a droppable frame is refused (false) and any other is queued up to 4 × either; past that the
    /// link is reset (the peer resyncs on the new link). False as well once the link ended.
    pub(crate) fn push(
        &self,
        capacity: usize,
        droppable: bool,
        encode: impl FnOnce(&mut BytesMut),
    ) -> bool {
        self.try_push(capacity, droppable, encode).is_ok()
    }

    /// [`push`](Self::push), saying why a frame was refused.
    pub(crate) fn try_push(
        &self,
        capacity: usize,
        droppable: bool,
        encode: impl FnOnce(&mut BytesMut),
    ) -> Result<(), Refused> {
        let mut q = self.queue.lock();
        if q.closed {
            return Err(Refused::Closed);
        }
        if q.frames >= capacity || q.buf.len() >= self.max_bytes {
            if droppable {
                return Err(Refused::Full);
            }
            if q.frames >= capacity.saturating_mul(4)
                || q.buf.len() >= self.max_bytes.saturating_mul(4)
            {
                // A control frame that cannot be queued: the peer is stuck; a fresh link resyncs it.
                drop(q);
                self.overflowed.store(true, Ordering::Release);
                self.cancel.cancel();
                return Err(Refused::Full);
            }
        }
        encode(&mut q.buf);
        q.frames += 1;
        let wake = std::mem::take(&mut q.idle);
        drop(q);
        if wake {
            self.wake.wake();
        }
        Ok(())
    }

    /// The link ended: later pushes fail, and what is queued is dropped.
    pub(crate) fn close(&self) {
        {
            let mut q = self.queue.lock();
            q.closed = true;
            q.frames = 0;
            q.buf = BytesMut::new();
        }
        self.drained.notify_waiters();
    }

    /// Ready once the queued frames were swapped into `batch` (emptied by the caller); with nothing queued,
    /// pending: the writer is marked idle and registered for the next push's wake-up. The waker is registered before the
    /// queue is looked at, so a push after the look always finds it.
    fn poll_batch(&self, cx: &mut Context<'_>, batch: &mut BytesMut) -> Poll<()> {
        self.wake.register(cx.waker());
        let mut q = self.queue.lock();
        if q.frames == 0 {
            q.idle = true;
            return Poll::Pending;
        }
        // The cleared buffer of the last write becomes the queue's: no allocation per batch.
        std::mem::swap(&mut q.buf, batch);
        q.frames = 0;
        drop(q);
        if self.room_wanted.swap(false, Ordering::AcqRel) {
            self.drained.notify_waiters();
        }
        Poll::Ready(())
    }

    /// Writes the queue in order, everything queued at once per write; a heartbeat when nothing was written for
    /// a tick of half `heartbeat` (so the peer hears from us at least every `heartbeat`). One timer for the
    /// link's life and an atomic wake-up: nothing per batch but the write. Returns on a write error only.
    pub(crate) async fn write_loop(
        &self,
        w: &mut LinkWrite,
        heartbeat: Duration,
    ) -> io::Result<()> {
        let mut beat = BytesMut::new();
        Frame::Heartbeat.encode(&mut beat);
        let mut batch = BytesMut::new();
        let mut tick = tokio::time::interval((heartbeat / 2).max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut wrote = false;
        loop {
            tokio::select! {
                biased;
                () = std::future::poll_fn(|cx| self.poll_batch(cx, &mut batch)) => {
                    w.write_all(&batch).await?;
                    wrote = true;
                    batch.clear();
                    if batch.capacity() > KEEP_WRITE_BUFFER {
                        batch = BytesMut::new();
                    }
                }
                _ = tick.tick() => {
                    if !std::mem::take(&mut wrote) {
                        w.write_all(&beat).await?;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat(b: &mut BytesMut) {
        Frame::Heartbeat.encode(b);
    }

    #[test]
    fn bound_drops_forwards_then_resets_the_link() {
        let link = LinkTx::new(1, CancellationToken::new(), usize::MAX);
        assert!(link.push(2, true, heartbeat));
        assert!(link.push(2, true, heartbeat));
        assert!(
            !link.push(2, true, heartbeat),
            "droppable frame over capacity"
        );
        for _ in 0..6 {
            assert!(link.push(2, false, heartbeat));
        }
        assert!(!link.cancel.is_cancelled());
        assert!(!link.push(2, false, heartbeat));
        assert!(link.cancel.is_cancelled());
        assert_eq!(link.try_push(2, true, heartbeat), Err(Refused::Full));
        link.close();
        assert_eq!(link.try_push(100, false, heartbeat), Err(Refused::Closed));
    }

    #[test]
    fn bytes_are_bounded_like_frames() {
        let link = LinkTx::new(1, CancellationToken::new(), 100);
        let sixty = |b: &mut BytesMut| b.extend_from_slice(&[0u8; 60]);
        assert!(link.push(1000, true, sixty));
        assert!(link.push(1000, true, sixty));
        assert!(!link.push(1000, true, sixty), "droppable past the bytes");
        for _ in 0..5 {
            assert!(link.push(1000, false, sixty));
        }
        assert!(!link.cancel.is_cancelled());
        assert!(!link.push(1000, false, sixty), "4 × the bytes: reset");
        assert!(link.cancel.is_cancelled());
    }

    #[tokio::test]
    async fn writes_every_frame_in_order_in_few_writes() {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let link = std::sync::Arc::new(LinkTx::new(1, CancellationToken::new(), usize::MAX));
        for i in 0..100u64 {
            assert!(link.push(1000, true, |b| Frame::Barrier(i).encode(b)));
        }
        let writer = {
            let link = link.clone();
            tokio::spawn(async move {
                let mut w: LinkWrite = Box::new(client);
                link.write_loop(&mut w, Duration::from_secs(60)).await
            })
        };
        // Pushed while the writer waits: it is woken.
        tokio::task::yield_now().await;
        assert!(link.push(1000, false, |b| Frame::Barrier(100).encode(b)));
        let mut buf = BytesMut::new();
        let mut next = 0u64;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while next <= 100 {
            tokio::time::timeout_at(
                deadline,
                tokio::io::AsyncReadExt::read_buf(&mut server, &mut buf),
            )
            .await
            .unwrap()
            .unwrap();
            while let Some(f) = Frame::decode(&mut buf, 1 << 16).unwrap() {
                match f {
                    Frame::Barrier(i) => {
                        assert_eq!(i, next);
                        next += 1;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        writer.abort();
    }
}
