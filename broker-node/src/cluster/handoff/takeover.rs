//! Takeover requests, both sides: [`Cluster::acquire`] asks the nodes that may hold a client's session at
//! CONNECT and waits for it (following "moved to" answers); [`on_request`] answers a peer's TakeoverRequest with
//! the session, or with where it went — or refuses it, untouched, when the session belongs to another identity
//! than the connecting client's (the request carries it: [`Claimant`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use fleetgate_protocol::mqtt::ByteString;
use tokio::sync::oneshot;

use super::PUSH_BIT;
use super::transfer::extract;
use crate::broker::{Broker, Departure, SessionOwnerMismatch};
use crate::cluster::Cluster;
use crate::cluster::frame::{Claimant, Frame};
use crate::cluster::routes::PeerName;

/// How many "moved to" hops a takeover follows (a session moves at most once per drain or takeover).
const MAX_HOPS: usize = 3;

/// A takeover request waiting for its answer.
#[derive(Debug)]
pub(crate) struct Pending {
    /// Whom we asked.
    pub(crate) peer: PeerName,
    tx: oneshot::Sender<Outcome>,
}

/// What a takeover request learned.
#[derive(Debug)]
enum Outcome {
    /// The session arrived and is installed.
    Installed,
    /// Not there; maybe it went to this node.
    NotHere(Option<PeerName>),
    /// There, but another identity's: the CONNECT is refused.
    Refused,
}

/// Answers a TakeoverRequest from `peer`: hands `client_id`'s session over as handover `req` when this node
/// holds it and `claimant` may have it, else replies where it went (when known) or that it is refused.
pub(super) fn on_request(
    cluster: &Arc<Cluster>,
    broker: &Arc<Broker>,
    peer: &PeerName,
    (req, client_id, clean_start): (u64, &ByteString, bool),
    claimant: &Claimant,
) {
    cluster.metrics.takeover_received.increment(1);
    let has_link = cluster
        .peers
        .lock()
        .map
        .get(peer)
        .is_some_and(|p| p.out.is_some());
    let departure = (Departure::Takeover { clean_start }, Some(claimant));
    let extracted = match has_link {
        true => extract(cluster, broker, client_id, departure, peer, req),
        false => Ok(false),
    };
    let sent = if extracted == Ok(true) {
        tracing::info!(event = "cluster_takeover", client_id = %client_id, to = %peer, "session handed to {peer}");
        true
    } else {
        let refused = extracted.is_err();
        if refused {
            tracing::info!(event = "cluster_takeover_refused", client_id = %client_id, peer = %peer, "the session belongs to another identity than the one connecting at {peer}");
        }
        cluster.send_to(
            peer,
            &Frame::TakeoverReply {
                req,
                moved_to: cluster.moved_to(client_id).map(|p| p.to_string()),
                refused,
            },
        )
    };
    if !sent {
        tracing::warn!(event = "cluster_takeover_failed", client_id = %client_id, peer = %peer, "no link to answer {peer}");
    }
}

/// A TakeoverReply: the request `req` waiting for it learns the peer has no session (maybe it went to `moved_to`),
/// or that it is `refused`.
pub(super) fn on_reply(cluster: &Cluster, req: u64, moved_to: Option<String>, refused: bool) {
    if let Some(p) = cluster.pending.lock().remove(&req) {
        let outcome = match refused {
            true => Outcome::Refused,
            false => Outcome::NotHere(moved_to.map(|m| Arc::from(m.as_str()))),
        };
        let _ = p.tx.send(outcome);
    }
}

/// The session of our request `req` arrived and is installed: wakes the request, if still waiting.
pub(super) fn on_installed(cluster: &Cluster, req: u64) {
    if let Some(p) = cluster.pending.lock().remove(&req) {
        let _ = p.tx.send(Outcome::Installed);
    }
}

impl Cluster {
    /// Before attaching a CONNECT for `client_id` by `claimant`: fetches its session from the node that holds it,
    /// when this node is not the ring owner or another node claims it. Bounded by the takeover timeout; on timeout
    /// the client gets a new session here. An error when the holder refused: the session is another identity's.
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        client_id: &ByteString,
        clean_start: bool,
        claimant: &Claimant,
    ) -> Result<(), SessionOwnerMismatch> {
        let mut candidates = self.candidates(client_id);
        if candidates.is_empty() {
            return Ok(());
        }
        let start = Instant::now();
        let deadline = tokio::time::Instant::now() + self.config.takeover_timeout;
        let mut asked: HashSet<PeerName> = HashSet::new();
        let mut refused = false;
        for _ in 0..MAX_HOPS {
            let mut waits = Vec::new();
            for peer in candidates.drain(..) {
                if *peer == *self.name || !asked.insert(peer.clone()) {
                    continue;
                }
                let req = self.next_id() & !PUSH_BIT;
                let (tx, rx) = oneshot::channel();
                self.pending.lock().insert(
                    req,
                    Pending {
                        peer: peer.clone(),
                        tx,
                    },
                );
                let request = Frame::TakeoverRequest {
                    req,
                    client_id: client_id.clone(),
                    clean_start,
                    claimant: claimant.clone(),
                };
                if self.send_to(&peer, &request) {
                    self.metrics.takeover_sent.increment(1);
                    waits.push((req, rx));
                } else {
                    self.pending.lock().remove(&req);
                }
            }
            if waits.is_empty() {
                break;
            }
            let mut installed = false;
            for (req, rx) in waits {
                match tokio::time::timeout_at(deadline, rx).await {
                    Ok(Ok(Outcome::Installed)) => installed = true,
                    Ok(Ok(Outcome::Refused)) => refused = true,
                    Ok(Ok(Outcome::NotHere(Some(next)))) => candidates.push(next),
                    Ok(Ok(Outcome::NotHere(None))) => {}
                    Ok(Err(_)) | Err(_) => {
                        self.pending.lock().remove(&req);
                    }
                }
            }
            if installed || refused {
                break;
            }
        }
        self.metrics
            .handoff_seconds
            .record(start.elapsed().as_secs_f64());
        match refused {
            true => Err(SessionOwnerMismatch),
            false => Ok(()),
        }
    }
}
