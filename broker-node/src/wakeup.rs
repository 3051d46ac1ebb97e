//! How the rest of the node wakes a connection's task: new messages in its session queue, a takeover, a move
//! to another node, or shutdown.
//!
//! One atomic word of flags and one [`AtomicWaker`], polled directly by the packet loop. Cheaper per message
//! than a `tokio::sync::Notify` (whose `notified()` future takes a mutex to register and again to deregister on
//! every turn of the loop), and it holds no future in the connection's task while idle.

use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;

/// Messages were queued.
const MESSAGES: u8 = 1;
/// Another connection took the session over.
const TAKEN_OVER: u8 = 1 << 1;
/// The session moved to another node.
const MOVED: u8 = 1 << 2;
/// The node is shutting down.
const SHUTDOWN: u8 = 1 << 3;

/// Why the connection's task was woken, most urgent first when several apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// The node is shutting down.
    Shutdown,
    /// The session moved to another node (drain): the client should use another server.
    Moved,
    /// Another connection with the same client ID took the session.
    TakenOver,
    /// The session queue went from empty to non-empty.
    Messages,
}

/// The wake-up channel of one connection (shared by its session slot and its task).
#[derive(Debug, Default)]
pub(crate) struct Wakeup {
    flags: AtomicU8,
    waker: AtomicWaker,
}

impl Wakeup {
    /// Tells the connection messages are waiting (wakes it only when it was not already told).
    pub(crate) fn messages(&self) {
        if self.flags.fetch_or(MESSAGES, Ordering::AcqRel) & MESSAGES == 0 {
            self.waker.wake();
        }
    }

    /// Tells the connection another one took its session over.
    pub(crate) fn kick(&self) {
        self.raise(TAKEN_OVER);
    }

    /// Tells the connection its session moved to another node (drain): the client should use another server.
    pub(crate) fn kick_moved(&self) {
        self.raise(MOVED);
    }

    /// Tells the connection the node is shutting down.
    pub(crate) fn shutdown(&self) {
        self.raise(SHUTDOWN);
    }

    /// Ready with the most urgent reason the connection was woken for; a [`Wake::Messages`] is consumed, an
    /// ending stays set. Registers the task's waker otherwise.
    pub(crate) fn poll_wake(&self, cx: &mut Context<'_>) -> Poll<Wake> {
        if let Some(wake) = self.take() {
            return Poll::Ready(wake);
        }
        self.waker.register(cx.waker());
        // A flag raised between the first look and the registration found no waker to wake: look again.
        match self.take() {
            Some(wake) => Poll::Ready(wake),
            None => Poll::Pending,
        }
    }

    fn raise(&self, flag: u8) {
        self.flags.fetch_or(flag, Ordering::AcqRel);
        self.waker.wake();
    }

    fn take(&self) -> Option<Wake> {
        let flags = self.flags.load(Ordering::Acquire);
        if flags & SHUTDOWN != 0 {
            Some(Wake::Shutdown)
        } else if flags & MOVED != 0 {
            Some(Wake::Moved)
        } else if flags & TAKEN_OVER != 0 {
            Some(Wake::TakenOver)
        } else if flags & MESSAGES != 0 {
            self.flags.fetch_and(!MESSAGES, Ordering::AcqRel);
            Some(Wake::Messages)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn the_most_urgent_reason_wins_and_only_messages_are_consumed() {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let s = Wakeup::default();
        assert_eq!(s.poll_wake(&mut cx), Poll::Pending);
        s.messages();
        assert_eq!(s.poll_wake(&mut cx), Poll::Ready(Wake::Messages));
        assert_eq!(s.poll_wake(&mut cx), Poll::Pending);
        s.messages();
        s.kick();
        assert_eq!(s.poll_wake(&mut cx), Poll::Ready(Wake::TakenOver));
        s.kick_moved();
        assert_eq!(s.poll_wake(&mut cx), Poll::Ready(Wake::Moved));
        s.shutdown();
        assert_eq!(s.poll_wake(&mut cx), Poll::Ready(Wake::Shutdown));
        assert_eq!(s.poll_wake(&mut cx), Poll::Ready(Wake::Shutdown));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_task_is_woken_from_another_thread() {
        let s = Arc::new(Wakeup::default());
        for _ in 0..1000 {
            let waiter = tokio::spawn({
                let s = s.clone();
                async move { std::future::poll_fn(|cx| s.poll_wake(cx)).await }
            });
            let s2 = s.clone();
            std::thread::spawn(move || s2.messages());
            let woke = tokio::time::timeout(Duration::from_secs(5), waiter).await;
            assert_eq!(woke.unwrap().unwrap(), Wake::Messages);
        }
    }
}
