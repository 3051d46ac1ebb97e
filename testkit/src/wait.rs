//! Waiting under a deadline: how every test waits for something to happen (never a bare sleep). [`eventually`]
//! polls an async condition; [`Poll`] is the same deadline ticker for a loop whose condition needs mutable state (a
//! live connection); [`wait_until`] polls a plain `bool`; [`eventually_blocking`] is [`eventually`] for synchronous
//! code (drop glue, `#[test]` functions); [`bounded`] caps a whole test.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How often a condition is re-checked: fast enough to keep tests quick, slow enough not to spin.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// The deadline most waits use (a CONNACK, a SUBACK, a metric, a log line): generous, because the suite shares two
/// cores with compilers; a passing test never waits this long.
pub const WAIT: Duration = Duration::from_secs(15);

/// The condition did not hold before the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut(pub Duration);

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "condition not met within {:?}", self.0)
    }
}

impl std::error::Error for TimedOut {}

/// A deadline ticker: `tick` sleeps one [`POLL_INTERVAL`] until the deadline, then fails. For loops like
/// `while !cond(&mut conn).await { poll.tick().await? }` where the condition borrows state mutably.
#[derive(Debug)]
pub struct Poll {
    deadline: Duration,
    end: Instant,
}

impl Poll {
    /// Starts the clock: the last tick succeeds before `deadline` from now.
    pub fn new(deadline: Duration) -> Self {
        Self {
            deadline,
            end: Instant::now() + deadline,
        }
    }

    /// Sleeps one [`POLL_INTERVAL`]; [`TimedOut`] once the deadline has passed.
    pub async fn tick(&mut self) -> Result<(), TimedOut> {
        if Instant::now() >= self.end {
            return Err(TimedOut(self.deadline));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
        Ok(())
    }
}

/// Runs `check` every [`POLL_INTERVAL`] until it returns `Some`, or fails with [`TimedOut`] after `deadline`.
/// The check runs at least once, even with a zero deadline.
pub async fn eventually<T, F, Fut>(deadline: Duration, mut check: F) -> Result<T, TimedOut>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let mut poll = Poll::new(deadline);
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        poll.tick().await?;
    }
}

/// [`eventually`] for a synchronous condition; panics with `what` after `deadline`.
pub async fn wait_until(deadline: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    eventually(deadline, || {
        let holds = cond();
        async move { holds.then_some(()) }
    })
    .await
    .unwrap_or_else(|e| panic!("timed out waiting for {what}: {e}"));
}

/// [`eventually`] for synchronous code: blocks the thread between checks.
pub fn eventually_blocking<T>(
    deadline: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T, TimedOut> {
    let end = std::time::Instant::now() + deadline;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if std::time::Instant::now() >= end {
            return Err(TimedOut(deadline));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Runs a whole test body under `limit`, so a hang fails the test instead of the suite.
pub async fn bounded<T>(limit: Duration, test: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, test)
        .await
        .unwrap_or_else(|_| panic!("test exceeded its deadline of {limit:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn returns_once_the_condition_holds() {
        let calls = Arc::new(AtomicU32::new(0));
        let value = eventually(Duration::from_secs(5), || {
            let calls = calls.clone();
            async move { (calls.fetch_add(1, Ordering::SeqCst) >= 2).then_some(7) }
        })
        .await;
        assert_eq!(value, Ok(7));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn times_out() {
        let result: Result<(), _> = eventually(Duration::from_millis(60), || async { None }).await;
        assert_eq!(result, Err(TimedOut(Duration::from_millis(60))));
        let blocking: Result<(), _> = eventually_blocking(Duration::from_millis(60), || None);
        assert_eq!(blocking, Err(TimedOut(Duration::from_millis(60))));
    }
}
