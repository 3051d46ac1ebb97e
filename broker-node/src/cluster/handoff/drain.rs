//! The drain handover at shutdown: [`Cluster::drain`] pushes every persistent session to the node the ring
//! without us assigns (in paced batches), tells every client 0x9C, then leaves the cluster.

use std::sync::Arc;
use std::time::Duration;

use fleetgate_protocol::mqtt::ByteString;
use fleetgate_protocol::ring::Ring;

use super::PUSH_BIT;
use super::transfer::extract;
use crate::broker::{Broker, Departure};
use crate::cluster::Cluster;
use crate::cluster::frame::Frame;
use crate::cluster::routes::PeerName;

/// Sessions handed over per pacing step at drain; between steps the drain pauses [`DRAIN_PAUSE`], so the clients
/// reconnecting elsewhere arrive as a stream instead of all at once.
const DRAIN_BATCH: usize = 64;
/// How often the drain checks that the new holders confirmed their sessions.
const INSTALL_POLL: Duration = Duration::from_millis(10);
/// Passes of the drain over the sessions: the first hands over nearly all; the next catch the sessions of
/// CONNECTs that were past the listener when the drain began (two are enough: no new ones are accepted).
const DRAIN_PASSES: usize = 3;
/// Pause between drain batches.
const DRAIN_PAUSE: Duration = Duration::from_millis(5);

impl Cluster {
    /// Scale-down: not ready; every persistent session to the node the ring without us assigns (its connection
    /// told 0x9C), every other connection told 0x9C too; then Leaving and two barrier rounds, so that every peer
    /// has stopped sending here and applied everything we sent (redirects included) before we exit.
    pub(crate) async fn drain(self: &Arc<Self>, broker: &Arc<Broker>) {
        self.leaving
            .store(true, std::sync::atomic::Ordering::Release);
        self.update_readiness();
        let ring = self.ring(false);
        if ring.is_empty() {
            return;
        }
        let mut pushed = 0;
        // A CONNECT accepted before the listeners closed may attach after the first pass looked at the sessions
        // (new CONNECTs are refused once we are leaving): later passes hand those over too.
        for _ in 0..DRAIN_PASSES {
            let n = self.push_sessions(broker, &ring).await;
            pushed += n;
            // Peers must have the new holders' routes before they drop ours.
            let deadline = tokio::time::Instant::now() + self.config.takeover_timeout;
            while self.redirects_pending() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(INSTALL_POLL).await;
            }
            if n == 0 {
                break;
            }
        }
        tracing::info!(
            event = "cluster_drain",
            sessions = pushed,
            "sessions handed over"
        );
        self.broadcast(&Frame::Leaving);
        self.settle().await;
        self.settle().await;
        tracing::info!(event = "cluster_left", "left the cluster");
    }

    /// One pass of the drain over the sessions held now; returns how many were handed over.
    async fn push_sessions(self: &Arc<Self>, broker: &Arc<Broker>, ring: &Ring) -> usize {
        let ids: Vec<ByteString> = broker.client_ids();
        let mut pushed = 0usize;
        for (i, id) in ids.iter().enumerate() {
            if i > 0 && i % DRAIN_BATCH == 0 {
                tokio::time::sleep(DRAIN_PAUSE).await;
            }
            match broker.is_persistent(id) {
                None => continue,
                Some(false) => {
                    broker.move_client(id);
                    continue;
                }
                Some(true) => {}
            }
            let Some(target) = ring.select(id.as_bytes(), |_| true) else {
                continue;
            };
            let target: PeerName = Arc::from(target);
            let linked = self
                .peers
                .lock()
                .map
                .get(&target)
                .is_some_and(|p| p.out.is_some());
            if !linked {
                continue;
            }
            let req = PUSH_BIT | self.next_id();
            if extract(self, broker, id, (Departure::Drain, None), &target, req) == Ok(true) {
                pushed += 1;
                self.metrics.sessions_pushed.increment(1);
            }
        }
        pushed
    }
}
