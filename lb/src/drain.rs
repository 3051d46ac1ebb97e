//! Paced draining: closes relays at `[drain] rate` connections per second, in random order with each gap varied
//! by `jitter`, so that the devices reconnect spread out instead of as one storm. Used at shutdown (every relay)
//! and when a backend with `drain = true` leaves the config (its relays). Each relay ends itself at an MQTT
//! packet boundary when its switch is flipped (see [`crate::relay`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleetgate_config::lb::DrainConfig;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::DRAINED_TOTAL;

/// Flips the drain switches in `tokens` at the configured pace; returns when all are flipped (or `stop` fires:
/// the grace period is over and the relays are being aborted anyway).
pub async fn pace(
    mut tokens: Vec<CancellationToken>,
    cfg: &DrainConfig,
    reason: &'static str,
    stop: &CancellationToken,
) {
    let mut rng = SplitMix::seeded();
    shuffle(&mut tokens, &mut rng);
    let gap = Duration::from_secs_f64(1.0 / cfg.rate);
    let mut at = Instant::now();
    for token in tokens {
        // u in [-1, 1): each gap varies by up to ±jitter; the schedule is cumulative, so the mean rate holds.
        let u = rng.unit() * 2.0 - 1.0;
        at += gap.mul_f64((1.0 + cfg.jitter * u).max(0.0));
        if at > Instant::now() {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(at) => {}
            }
        }
        token.cancel();
        metrics::counter!(DRAINED_TOTAL, "reason" => reason).increment(1);
    }
}

/// Fisher–Yates.
fn shuffle<T>(items: &mut [T], rng: &mut SplitMix) {
    for i in (1..items.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// SplitMix64: enough randomness for spreading reconnects, no dependency.
struct SplitMix(u64);

impl SplitMix {
    fn seeded() -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self(now.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn paces_at_the_rate() {
        let tokens: Vec<_> = (0..50).map(|_| CancellationToken::new()).collect();
        let cfg = DrainConfig {
            delay: Duration::ZERO,
            rate: 500.0,
            jitter: 0.5,
        };
        let started = std::time::Instant::now();
        pace(tokens.clone(), &cfg, "test", &CancellationToken::new()).await;
        let took = started.elapsed();
        assert!(tokens.iter().all(CancellationToken::is_cancelled));
        // 50 at 500/s = 100 ms on average; jitter averages out over the cumulative schedule.
        assert!(took >= Duration::from_millis(50), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    #[test]
    fn shuffle_keeps_every_item() {
        let mut v: Vec<u32> = (0..100).collect();
        shuffle(&mut v, &mut SplitMix::seeded());
        v.sort_unstable();
        assert_eq!(v, (0..100).collect::<Vec<_>>());
    }
}
