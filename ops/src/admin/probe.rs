//! The probe socket (`[admin] probe_bind`) on a thread of its own, and the heartbeat that keeps `/healthz` honest
//! about the runtime that serves clients.
//!
//! A socket of its own keeps other admin traffic from taking a probe's connection slot; a thread of its own (with
//! a one-thread tokio runtime) keeps it from taking a probe's CPU turn: when the binary's runtime is saturated —
//! by a flood of the admin port, a reconnect storm, a stalled handler — its queue of tasks does not delay the
//! kubelet's probe. A probe that could be delayed like that would restart a busy pod, which only makes a storm
//! worse.
//!
//! That isolation must not make `/healthz` say "ok" for a process whose runtime has stopped running tasks:
//! [`Heartbeat`] is a task on the serving runtime that stamps the time every [`HEARTBEAT_EVERY`]; `/healthz` (on
//! either socket) answers 503 once the stamp is older than [`STALLED_AFTER`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fleetgate_config::admin::AdminLimits;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::respond::Responder;
use super::{AdminError, Lane, PROBE_ROLE, accept_loop};

/// How often the serving runtime stamps the heartbeat: cheap (one timer and one atomic store), and fine enough
/// for [`STALLED_AFTER`].
pub(crate) const HEARTBEAT_EVERY: Duration = Duration::from_millis(250);

/// Age of the heartbeat at which `/healthz` fails: a runtime that has not run a timer task for this long is stuck
/// (a blocked worker, a deadlock), not busy — even a saturated runtime runs each task within a fraction of it.
/// Kubernetes then restarts the pod after its own `failureThreshold` × `periodSeconds`.
pub(crate) const STALLED_AFTER: Duration = Duration::from_secs(10);

/// When the serving runtime last ran its heartbeat task.
#[derive(Debug, Clone)]
pub(crate) struct Heartbeat {
    origin: Instant,
    /// Milliseconds after `origin` of the last beat.
    last: Arc<AtomicU64>,
}

impl Heartbeat {
    /// A heartbeat stamped now, and beating on the current runtime until `shutdown`.
    pub(crate) fn start(shutdown: CancellationToken) -> Heartbeat {
        let heartbeat = Heartbeat {
            origin: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        };
        let beating = heartbeat.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(HEARTBEAT_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = every.tick() => beating.beat(),
                }
            }
        });
        heartbeat
    }

    fn beat(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Release);
    }

    /// Time since the last beat.
    pub(crate) fn age(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Acquire));
        self.origin.elapsed().saturating_sub(last)
    }

    /// Whether the serving runtime looks stuck ([`STALLED_AFTER`]).
    pub(crate) fn stalled(&self) -> bool {
        self.age() > STALLED_AFTER
    }
}

/// What the probe thread needs to start serving: the responder, the caps, the shutdown switch.
type Start = (Arc<Responder>, AdminLimits, CancellationToken);

/// The probe socket, bound, with its thread started and waiting for [`ProbeThread::run`].
pub(crate) struct ProbeThread {
    pub(crate) addr: SocketAddr,
    start: oneshot::Sender<Start>,
    done: oneshot::Receiver<()>,
}

impl std::fmt::Debug for ProbeThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbeThread")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ProbeThread {
    /// Binds the probe socket at `addr` (logging `listening`, role [`PROBE_ROLE`]) and starts its thread and
    /// runtime, so that every failure surfaces at start. Dropped without [`ProbeThread::run`], the thread ends.
    pub(crate) fn start(addr: SocketAddr) -> Result<ProbeThread, AdminError> {
        let error = |source| AdminError::Bind {
            role: PROBE_ROLE,
            addr,
            source,
        };
        let listener = std::net::TcpListener::bind(addr).map_err(error)?;
        listener.set_nonblocking(true).map_err(error)?;
        let addr = listener.local_addr().map_err(error)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(AdminError::ProbeThread)?;
        let (start, started) = oneshot::channel::<Start>();
        let (finished, done) = oneshot::channel();
        std::thread::Builder::new()
            .name("admin-probe".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok((responder, limits, shutdown)) = started.await else {
                        return;
                    };
                    match TcpListener::from_std(listener) {
                        Ok(l) => accept_loop(l, Lane::Probe, responder, limits, shutdown).await,
                        Err(e) => {
                            tracing::error!(event = "probe_failed", addr = %addr, error = %e, "the probe socket cannot be served")
                        }
                    }
                });
                let _ = finished.send(());
            })
            .map_err(AdminError::ProbeThread)?;
        tracing::info!(event = "listening", role = PROBE_ROLE, addr = %addr, "listening on {PROBE_ROLE} {addr}");
        Ok(ProbeThread { addr, start, done })
    }

    /// Starts serving the probe socket from `responder` until `shutdown` (at once: nothing waits on the caller's
    /// runtime); the receiver resolves once the thread has stopped.
    pub(crate) fn serve(
        self,
        responder: Arc<Responder>,
        limits: AdminLimits,
        shutdown: CancellationToken,
    ) -> oneshot::Receiver<()> {
        // A thread that is gone has dropped its end of `done` too: the receiver resolves at once.
        let _ = self.start.send((responder, limits, shutdown));
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_heartbeat_is_stalled() {
        let fresh = Heartbeat {
            origin: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        };
        assert!(!fresh.stalled());
        let Some(past) = Instant::now().checked_sub(STALLED_AFTER * 2) else {
            return; // a machine up for less than 20 s
        };
        let old = Heartbeat {
            origin: past,
            last: Arc::new(AtomicU64::new(0)),
        };
        assert!(old.stalled(), "{:?}", old.age());
        old.beat();
        assert!(!old.stalled());
    }
}
