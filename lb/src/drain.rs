//! Draining: the LB's shutdown, three phases (SIGTERM, or `POST /drain`), and the paced closing of relays it
//! and the controller use.
//!
//! 1. Not ready: `/readyz` turns false at once, reloads stop, and the LB keeps accepting for `[drain] delay` (so
//!    load balancers in front notice).
//! 2. Drain: it stops accepting and flips the relays' drain switches at `[drain] rate` per second with jitter
//!    ([`pace`]; each relay ends at a packet boundary, see [`crate::relay`]: v5 clients get DISCONNECT 0x8B, the
//!    backend a normal DISCONNECT); the process exits as soon as every connection is closed.
//! 3. Abort: when `shutdown_grace` (counted from the end of the delay) is over, the rest are cut.
//!
//! What the broker node sees when the LB drains a relay: a normal DISCONNECT (0x00) and then the close. The node
//! therefore publishes no will and keeps a persistent session (clean session false / session expiry > 0), so a
//! device that reconnects promptly — to the same node, by the same hash, through another LB replica — resumes
//! its session with no spurious will. The device did not ask to disconnect, but it was moved deliberately by the
//! operator, not lost: a will announces an unexpected loss, and firing one for every drained device would make
//! every rolling LB restart look like a fleet-wide outage to whoever consumes wills. A device that then fails to
//! come back is covered by its session expiry, not by its will.
//!
//! Pacing: relays are closed in random order with each gap varied by `jitter`, so that the devices reconnect
//! spread out instead of as one storm. Used at shutdown (every relay) and when a backend with `drain = true`
//! leaves the config (its relays, started by [`crate::control`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleetgate_config::lb::{DrainConfig, LbConfig};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::{DRAINED_TOTAL, DRAINING};
use crate::shared::Shared;

/// After the grace period, how long to wait for aborted connections to finish their last write.
const ABORT_WAIT: Duration = Duration::from_secs(1);

/// How often the drain looks for relays that registered after it started (they were mid-handshake).
const DRAIN_RESCAN: Duration = Duration::from_millis(50);

/// The LB's task groups, in the order the drain stops them: accept loops, then connections, then the background
/// tasks (health checks, discovery). The controller spawns into them; the drain closes them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tasks {
    /// Connection tasks, one per accepted socket.
    pub(crate) conns: TaskTracker,
    /// Accept loops, one per listener in force.
    pub(crate) accepts: TaskTracker,
    /// Cancelled at phase 2: every accept loop stops.
    pub(crate) stop_accepting: CancellationToken,
    /// Cancelled at the very end: health checks and discovery stop.
    pub(crate) background: CancellationToken,
}

/// A task the drain stops with a token of its own and then waits for (the controller, the admin server).
#[derive(Debug)]
pub(crate) struct Service {
    /// Cancelled to stop it.
    pub(crate) stop: CancellationToken,
    /// Its completion.
    pub(crate) join: JoinHandle<()>,
}

impl Service {
    /// Stops the task and waits for it.
    async fn stop(self) {
        self.stop.cancel();
        let _ = self.join.await;
    }
}

/// Waits for `shutdown` (or `POST /drain`), then runs the three phases and stops the rest; returns when the LB
/// has stopped.
pub(crate) async fn run(
    shared: Arc<Shared>,
    tasks: Tasks,
    shutdown: CancellationToken,
    controller: Service,
    admin: Option<Service>,
) {
    let trigger = tokio::select! {
        () = shutdown.cancelled() => "shutdown",
        () = shared.drain_requested.cancelled() => "admin",
    };
    let cfg = not_ready(&shared, controller, trigger).await;
    if !drain_relays(&shared, &tasks, &cfg).await {
        abort_relays(&shared, &tasks).await;
    }
    tasks.background.cancel();
    if let Some(admin) = admin {
        admin.stop().await;
    }
    tracing::info!(event = "stopped");
}

/// Phase 1: not ready; no more reloads (the controller stops); keep accepting for `[drain] delay`. Returns the
/// config in force, whose `[drain]` and `shutdown_grace` the next phases follow.
async fn not_ready(shared: &Shared, controller: Service, trigger: &'static str) -> LbConfig {
    shared.readiness.set(false);
    metrics::gauge!(DRAINING).set(1.0);
    controller.stop().await;
    let cfg = shared.snapshot.load().config.clone();
    tracing::info!(
        event = "draining",
        trigger,
        open = shared.total.open(),
        delay_ms = cfg.drain.delay.as_millis() as u64,
        rate = cfg.drain.rate
    );
    tokio::time::sleep(cfg.drain.delay).await;
    cfg
}

/// Phase 2: stop accepting; move the relays off at the drain pace; true as soon as every connection is closed,
/// false when `shutdown_grace` ran out first.
async fn drain_relays(shared: &Arc<Shared>, tasks: &Tasks, cfg: &LbConfig) -> bool {
    tasks.stop_accepting.cancel();
    tasks.accepts.close();
    tasks.accepts.wait().await;
    tasks.conns.close();
    let pacer = {
        let shared = shared.clone();
        let conns = tasks.conns.clone();
        let drain_cfg = cfg.drain.clone();
        tokio::spawn(async move {
            while !conns.is_empty() {
                let tokens = shared.registry.take_for_drain(None);
                if tokens.is_empty() {
                    tokio::time::sleep(DRAIN_RESCAN).await;
                } else {
                    pace(tokens, &drain_cfg, "shutdown", &shared.abort).await;
                }
            }
        })
    };
    let drained = tokio::time::timeout(cfg.shutdown_grace, tasks.conns.wait())
        .await
        .is_ok();
    pacer.abort();
    drained
}

/// Phase 3: end the remaining relays, and give them [`ABORT_WAIT`] to finish their last write.
async fn abort_relays(shared: &Shared, tasks: &Tasks) {
    tracing::info!(event = "aborting", open = shared.total.open());
    shared.abort.cancel();
    let _ = tokio::time::timeout(ABORT_WAIT, tasks.conns.wait()).await;
}

/// Flips the drain switches in `tokens` at the configured pace; returns when all are flipped (or `stop` fires:
/// the grace period is over and the relays are being aborted anyway).
pub(crate) async fn pace(
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
