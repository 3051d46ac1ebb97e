//! Password verification off the async runtime: argon2 runs in `spawn_blocking`, at most `max_concurrent` at once
//! (each check holds ~19 MiB and a core for tens of milliseconds), and at most `max_waiting` CONNECTs queue for a
//! slot — beyond that a reconnect storm gets "server busy" at once instead of piling up memory and latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Semaphore;

use crate::passwd::{PasswordFile, verify_hash};

/// The outcome of a password check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verified {
    /// The user exists and the password is right.
    Match,
    /// Unknown user or wrong password (indistinguishable by design).
    Mismatch,
    /// Too many checks waiting; refuse with "server busy".
    Busy,
    /// The blocking task failed (panicked or was cancelled at shutdown).
    Failed,
}

/// Runs password checks with bounded concurrency; one per process, shared by every connection.
#[derive(Debug, Clone)]
pub(crate) struct PasswordVerifier {
    permits: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    max_waiting: usize,
}

/// Decrements the waiting count when a waiter leaves, however it leaves (including the CONNECT future being
/// dropped on a timeout).
struct WaitingGuard<'a>(&'a AtomicUsize);

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl PasswordVerifier {
    /// A verifier running at most `max_concurrent` (≥ 1) checks, with at most `max_waiting` queued.
    pub(crate) fn new(max_concurrent: usize, max_waiting: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
            waiting: Arc::new(AtomicUsize::new(0)),
            max_waiting,
        }
    }

    /// Checks `password` for `username` in `passwords`. An unknown user runs the same argon2 work as a known one.
    pub(crate) async fn verify(
        &self,
        passwords: &PasswordFile,
        username: &str,
        password: &[u8],
    ) -> Verified {
        let material = passwords.material(username);
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Verified::Busy;
        }
        let guard = WaitingGuard(&self.waiting);
        let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await else {
            return Verified::Failed;
        };
        drop(guard);
        let password = password.to_vec();
        let result = tokio::task::spawn_blocking(move || {
            // The permit is held until argon2 finishes, even if the awaiting CONNECT is dropped meanwhile.
            let _permit = permit;
            verify_hash(&material.phc, &password) && material.known
        })
        .await;
        match result {
            Ok(true) => Verified::Match,
            Ok(false) => Verified::Mismatch,
            Err(_) => Verified::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn verifies_and_bounds_the_queue() {
        let mut file = PasswordFile::empty();
        file.set_with_cost_for_tests("alice", "s3cret");
        let verifier = PasswordVerifier::new(1, 0);
        // max_waiting = 0: nothing may queue.
        assert_eq!(
            verifier.verify(&file, "alice", b"s3cret").await,
            Verified::Busy
        );

        let verifier = PasswordVerifier::new(2, 8);
        assert_eq!(
            verifier.verify(&file, "alice", b"s3cret").await,
            Verified::Match
        );
        assert_eq!(
            verifier.verify(&file, "alice", b"wrong").await,
            Verified::Mismatch
        );
        assert_eq!(
            verifier.verify(&file, "bob", b"s3cret").await,
            Verified::Mismatch
        );

        // All slots taken: two CONNECTs may queue, the third is refused at once; the queued ones finish once a
        // slot frees, and the waiting count returns to zero.
        let verifier = PasswordVerifier::new(1, 2);
        let held = Arc::clone(&verifier.permits).acquire_owned().await.unwrap();
        let file = Arc::new(file);
        let mut queued = Vec::new();
        for _ in 0..2 {
            let (v, f) = (verifier.clone(), Arc::clone(&file));
            queued.push(tokio::spawn(async move {
                v.verify(&f, "alice", b"s3cret").await
            }));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while verifier.waiting.load(Ordering::Acquire) < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "waiters never queued"
            );
            tokio::task::yield_now().await;
        }
        assert_eq!(
            verifier.verify(&file, "alice", b"s3cret").await,
            Verified::Busy
        );
        drop(held);
        for t in queued {
            let got = tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got, Verified::Match);
        }
        assert_eq!(verifier.waiting.load(Ordering::Acquire), 0);
    }
}
