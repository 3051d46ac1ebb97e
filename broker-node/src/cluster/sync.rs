//! Keeping peers' views of each other's tables (routes, claims, retained messages) in step, at any size.
//!
//! **Sending** (on our outbound link to a peer): [`Cluster::start_sync`] streams our tables after `SyncBegin`, a
//! chunk at a time under each table's lock, waiting for the link to drain between chunks — so a link comes up
//! whatever the size of the state, and the queue holds at most a chunk of it. Changes made meanwhile are queued
//! as they happen (under the same locks), so stream and changes are ordered on the link; a key read twice is
//! harmless (every frame is idempotent). `SyncDone` carries our change numbers at its end. When the peer's
//! Hello says it still holds our tables from an earlier link of this process (`resume`), only the changes after
//! its watermarks are sent — an incremental sync — unless some of them were forgotten.
//!
//! **Receiving** (a peer's inbound link): its routes and claims are kept for [`RESUME_WINDOW`] after its link
//! dropped (out of the route table, so nothing is forwarded on them), and restored when it comes back as the
//! same incarnation; our Hello then offers it a resume from what we applied. A full sync marks what we held as
//! stale and sweeps what it did not send again at `SyncDone`, so the routes never go missing in between. We
//! acknowledge how far we applied its tables (`Ack`, on the same connection), which lets it forget retained
//! deletes once every peer has them.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetgate_protocol::mqtt::ByteString;

use super::Cluster;
use super::frame::{self, Frame, Watermarks};
use super::outbox::LinkTx;
use super::routes::PeerName;
use crate::broker::Broker;

/// Entries read per chunk of a sync stream, under the table's lock: short lock holds, few wake-ups.
const CHUNK: usize = 256;
/// How long a peer's routes and claims are kept after its inbound link dropped, for a resume: a node frozen or
/// cut off for seconds comes back without a full sync.
pub(super) const RESUME_WINDOW: Duration = Duration::from_secs(60);
/// How often retained deletes every peer has are collected.
pub(super) const TOMBSTONE_SWEEP: Duration = Duration::from_secs(10);
/// A retained delete is kept at least this long (on the hybrid clock), whatever the acknowledgements: a peer cut
/// off for less than this still gets it when it comes back.
pub(super) const TOMBSTONE_MIN_AGE: Duration = Duration::from_secs(300);

/// The receiving side of one peer's sync, on its current inbound link.
#[derive(Debug, Default)]
pub(super) struct InboundSync {
    /// Its `SyncDone` arrived on this link.
    pub(super) synced: bool,
    /// How far its tables are applied (meaningful once synced).
    pub(super) applied: Watermarks,
    /// The resume our Hello offered on this link: still where a later link can resume from while this one's
    /// sync has not completed (a dead connection accepted late must not cost the next link a full sync).
    pub(super) offered: Option<Watermarks>,
    /// Routes held from before a full sync that it has not sent again (yet).
    stale_routes: HashSet<ByteString>,
    /// Claims likewise.
    stale_claims: HashSet<ByteString>,
}

impl InboundSync {
    /// A new link's sync, nothing received yet; our Hello offered it `offered`.
    pub(super) fn offered(offered: Option<Watermarks>) -> InboundSync {
        InboundSync {
            offered,
            ..InboundSync::default()
        }
    }

    /// Where a later link of the same process can resume from: how far this one applied once synced, else what
    /// it was offered (the frames of an unfinished sync are idempotent: sent again, they do no harm).
    pub(super) fn resume_point(&self) -> Option<Watermarks> {
        if self.synced {
            Some(self.applied)
        } else {
            self.offered
        }
    }
}

/// A peer's routes and claims kept after its inbound link dropped, for a resume.
#[derive(Debug)]
pub(super) struct Suspended {
    /// The process they came from.
    pub(super) incarnation: u64,
    /// How far its tables were applied, when its sync had completed.
    pub(super) applied: Option<Watermarks>,
    /// Its routes.
    pub(super) routes: HashSet<ByteString>,
    /// Its claims.
    pub(super) claims: HashSet<ByteString>,
    /// When the link dropped.
    pub(super) since: Instant,
}

impl Suspended {
    /// Still within the resume window.
    pub(super) fn is_fresh(&self) -> bool {
        self.since.elapsed() < RESUME_WINDOW
    }
}

/// How a sync went, for the log and the metrics.
#[derive(Debug, Clone, Copy)]
struct SyncStats {
    full: bool,
    entries: u64,
    bytes: u64,
}

impl Cluster {
    // ---- sending -------------------------------------------------------------------------------------------

    /// The watermarks a resumed sync can start from: the peer's, when every change after them is still known
    /// here; `None` (a full sync) otherwise.
    fn resume_point(&self, broker: &Broker, resume: Option<Watermarks>) -> Option<Watermarks> {
        let w = resume?;
        let local = self.local.lock();
        let known = local.filters.can_resume_from(w.routes)
            && local.claims.can_resume_from(w.claims)
            && broker.retained_resumable_from(w.retained);
        // Watermarks beyond what we issued are not ours: start over.
        let ours = w.routes <= local.filters.seq()
            && w.claims <= local.claims.seq()
            && w.retained <= broker.retained_seq();
        (known && ours).then_some(w)
    }

    /// Starts the sync of our new outbound link to `peer`: queues `SyncBegin` at once (before any change can
    /// follow on the link) and streams the tables in a task of their own.
    pub(super) fn start_sync(
        self: &Arc<Self>,
        broker: &Arc<Broker>,
        peer: &PeerName,
        link: &Arc<LinkTx>,
        resume: Option<Watermarks>,
    ) {
        let since = self.resume_point(broker, resume);
        self.push(
            link,
            &Frame::SyncBegin {
                full: since.is_none(),
            },
        );
        let (cluster, broker, peer, link) =
            (self.clone(), broker.clone(), peer.clone(), link.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let Some(stats) = cluster.stream(&broker, &link, since).await else {
                return;
            };
            tokio::spawn(cluster.clone().progress(broker.clone(), link.clone()));
            let kind = if stats.full { "full" } else { "incremental" };
            let took = started.elapsed();
            cluster.metrics.sync_bytes(kind).increment(stats.bytes);
            cluster
                .metrics
                .sync_seconds(kind)
                .record(took.as_secs_f64());
            tracing::info!(
                event = "cluster_sync_sent",
                peer = %peer,
                kind,
                entries = stats.entries,
                bytes = stats.bytes,
                millis = took.as_millis() as u64,
                "{kind} sync sent to {peer}"
            );
        });
    }

    /// Streams the tables (everything, or the changes after `since`) and `SyncDone`; `None` when the link ended
    /// first.
    async fn stream(
        &self,
        broker: &Broker,
        link: &LinkTx,
        since: Option<Watermarks>,
    ) -> Option<SyncStats> {
        let full = since.is_none();
        let since = since.unwrap_or_default();
        let capacity = self.config.queue_capacity;
        // Room for a chunk beside the forwards the queue may hold: wait until it is down to half.
        let chunk = CHUNK.min(capacity / 4).max(1);
        let mut stats = SyncStats {
            full,
            entries: 0,
            bytes: 0,
        };
        let push = |stats: &mut SyncStats, encode: &mut dyn FnMut(&mut bytes::BytesMut)| {
            link.push(capacity, false, |buf| {
                let before = buf.len();
                encode(buf);
                stats.bytes += (buf.len() - before) as u64;
            });
            stats.entries += 1;
        };
        // Each table in turn, a chunk at a time under its lock, waiting for the link between chunks.
        let drained =
            async |read: &mut (dyn FnMut(Option<&ByteString>) -> Option<ByteString> + Send)| {
                let mut after = None;
                while let Some(last) = read(after.as_ref()) {
                    after = Some(last);
                    if !link.wait_room(capacity / 2).await {
                        return false;
                    }
                }
                true
            };
        let routes = &mut |after: Option<&ByteString>| {
            let local = self.local.lock();
            local
                .filters
                .chunk(after, since.routes, chunk, |(filter, live, seq)| {
                    let frame = match live {
                        Some(_) => Frame::RouteAdd {
                            filter: filter.clone(),
                            seq,
                        },
                        None => Frame::RouteRemove {
                            filter: filter.clone(),
                            seq,
                        },
                    };
                    push(&mut stats, &mut |buf| frame.encode(buf));
                })
        };
        if !drained(routes).await {
            return None;
        }
        let claims = &mut |after: Option<&ByteString>| {
            let local = self.local.lock();
            local
                .claims
                .chunk(after, since.claims, chunk, |(client_id, live, seq)| {
                    let frame = Frame::Claim {
                        client_id: client_id.clone(),
                        held: live.is_some(),
                        seq,
                    };
                    push(&mut stats, &mut |buf| frame.encode(buf));
                })
        };
        if !drained(claims).await {
            return None;
        }
        let retained = &mut |after: Option<&ByteString>| {
            broker.retained_chunk(after, since.retained, chunk, |(topic, msg, stamp, seq)| {
                push(&mut stats, &mut |buf| {
                    frame::encode_retain(buf, &stamp, &topic, msg.as_deref(), seq)
                });
            })
        };
        if !drained(retained).await {
            return None;
        }
        let done = Frame::SyncDone {
            upto: self.watermarks(broker),
        };
        push(&mut stats, &mut |buf| done.encode(buf));
        (!link.is_closed()).then_some(stats)
    }

    /// Our change numbers now. Every change up to them is already queued on every link it goes to: each is
    /// queued under its table's lock, and the numbers are read under the same locks.
    fn watermarks(&self, broker: &Broker) -> Watermarks {
        let local = self.local.lock();
        Watermarks {
            routes: local.filters.seq(),
            claims: local.claims.seq(),
            retained: broker.retained_seq(),
        }
    }

    /// After the sync of `link`: our change numbers every heartbeat interval while they move ([`Frame::Progress`]),
    /// until the link closes.
    async fn progress(self: Arc<Self>, broker: Arc<Broker>, link: Arc<LinkTx>) {
        let mut sent = self.watermarks(&broker);
        let mut tick = tokio::time::interval(self.config.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !link.is_closed() {
            tick.tick().await;
            let now = self.watermarks(&broker);
            if now != sent {
                sent = now;
                self.push(&link, &Frame::Progress(now));
            }
        }
    }

    /// `peer` acknowledged how far it applied our tables (an `Ack` on our outbound link).
    pub(super) fn on_ack(&self, peer: &str, applied: Watermarks) {
        if let Some(p) = self.peers.lock().map.get_mut(peer) {
            p.acked = Some(applied);
        }
    }

    /// Drops the retained deletes every linked peer acknowledged (and older than [`TOMBSTONE_MIN_AGE`]).
    pub(super) fn collect_tombstones(&self, broker: &Broker) {
        let acked = {
            let peers = self.peers.lock();
            peers
                .map
                .values()
                .filter(|p| p.out.is_some())
                .map(|p| p.acked.map_or(0, |a| a.retained))
                .min()
        };
        // No peer linked: nobody to wait for but the minimum age.
        let acked = acked.unwrap_or_else(|| broker.retained_seq());
        let min_age = u64::try_from(TOMBSTONE_MIN_AGE.as_millis()).unwrap_or(u64::MAX);
        let dropped = broker.collect_retained_tombstones(acked, min_age);
        if dropped > 0 {
            tracing::debug!(
                event = "cluster_tombstones_collected",
                dropped,
                "retained deletes every peer has were dropped"
            );
        }
    }

    // ---- receiving -----------------------------------------------------------------------------------------

    /// A `SyncBegin` from `peer`: a full sync marks what we hold of it stale (swept at `SyncDone` unless sent
    /// again).
    pub(super) fn on_sync_begin(&self, peer: &str, full: bool) {
        let routes = if full {
            self.routes.read().peer_filters(peer)
        } else {
            HashSet::new()
        };
        let mut peers = self.peers.lock();
        let Some(p) = peers.map.get_mut(peer) else {
            return;
        };
        p.sync = InboundSync {
            offered: p.sync.offered,
            stale_routes: routes,
            stale_claims: if full {
                p.claims.clone()
            } else {
                HashSet::new()
            },
            ..InboundSync::default()
        };
    }

    /// A route of `peer` arrived (added or removed), its change `seq`: no longer stale, and, once synced, the
    /// watermark moves.
    pub(super) fn on_route_seen(&self, peer: &str, filter: &str, seq: u64) {
        if let Some(p) = self.peers.lock().map.get_mut(peer) {
            p.sync.stale_routes.remove(filter);
            if p.sync.synced {
                p.sync.applied.routes = seq;
            }
        }
    }

    /// A claim of `peer` arrived; as [`Cluster::on_route_seen`].
    pub(super) fn on_claim(&self, peer: &str, client_id: ByteString, held: bool, seq: u64) {
        if let Some(p) = self.peers.lock().map.get_mut(peer) {
            p.sync.stale_claims.remove(&client_id);
            if held {
                p.claims.insert(client_id);
            } else {
                p.claims.remove(&client_id);
            }
            if p.sync.synced {
                p.sync.applied.claims = seq;
            }
        }
    }

    /// A retained write of `peer` (its change `seq`) was applied.
    pub(super) fn on_retained_seen(&self, peer: &str, seq: u64) {
        if let Some(p) = self.peers.lock().map.get_mut(peer)
            && p.sync.synced
        {
            p.sync.applied.retained = seq;
        }
    }

    /// `peer`'s `SyncDone`: what it did not send again is gone, and we hold its tables up to `upto`.
    pub(super) fn on_sync_done(&self, peer: &str, upto: Watermarks) {
        let stale_routes = {
            let mut peers = self.peers.lock();
            let Some(p) = peers.map.get_mut(peer) else {
                return;
            };
            let stale_claims = std::mem::take(&mut p.sync.stale_claims);
            p.claims.retain(|c| !stale_claims.contains(c));
            p.sync.synced = true;
            p.sync.applied = upto;
            std::mem::take(&mut p.sync.stale_routes)
        };
        if !stale_routes.is_empty() {
            let mut routes = self.routes.write();
            for f in &stale_routes {
                routes.remove(peer, f);
            }
            self.routes_changed(&routes);
        }
        tracing::info!(event = "cluster_synced", peer = %peer, "routes synced with {peer}");
        self.update_readiness();
    }

    /// `peer`'s change numbers after its sync ([`Frame::Progress`]): what it did not send us of its own up to
    /// them, we got from elsewhere.
    pub(super) fn on_progress(&self, peer: &str, upto: Watermarks) {
        if let Some(p) = self.peers.lock().map.get_mut(peer)
            && p.sync.synced
        {
            let a = &mut p.sync.applied;
            a.routes = a.routes.max(upto.routes);
            a.claims = a.claims.max(upto.claims);
            a.retained = a.retained.max(upto.retained);
        }
    }

    /// How far we applied `peer`'s tables, once synced (what an `Ack` carries).
    pub(super) fn applied_from(&self, peer: &str) -> Option<Watermarks> {
        let peers = self.peers.lock();
        let p = peers.map.get(peer)?;
        p.sync.synced.then_some(p.sync.applied)
    }
}
