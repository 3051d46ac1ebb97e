//! Polling under a deadline: how every test waits for something to happen (never a bare sleep).

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How often [`eventually`] re-checks its condition: fast enough to keep tests quick, slow enough not to spin.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// The deadline most waits use: generous, because the suite shares two cores with compilers.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(15);

/// The condition given to [`eventually`] did not hold before the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut(pub Duration);

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "condition not met within {:?}", self.0)
    }
}

impl std::error::Error for TimedOut {}

/// Runs `check` every [`POLL_INTERVAL`] until it returns `Some`, or fails with [`TimedOut`] after `deadline`.
/// The check runs at least once, even with a zero deadline.
pub async fn eventually<T, F, Fut>(deadline: Duration, mut check: F) -> Result<T, TimedOut>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() >= end {
            return Err(TimedOut(deadline));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
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
    }
}
