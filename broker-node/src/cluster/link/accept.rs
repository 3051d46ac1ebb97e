//! A connection a peer opened to us: the TLS handshake (a client certificate of the cluster CA required), its
//! Hello (the name must be one its certificate names, and not held by another identity), then its frames —
//! each checked as untrusted input and applied in order — while we send back our Hello (with the resume we
//! offer), then acks of how far we applied its tables, or heartbeats.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rustls::pki_types::CertificateDer;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::{
    DialOrigin, FrameReader, HELLO_TIMEOUT, LinkError, LinkRead, LinkWrite, PUBLISH_BATCH,
    SILENCE_TICKS, hello, peer_leaf, read_hello, record_link_end, spawn_dialer,
};
use crate::broker::Broker;
use crate::cluster::frame::{Frame, Watermarks};
use crate::cluster::handoff::{HandoverLimits, Incoming};
use crate::cluster::membership::Rejected;
use crate::cluster::routes::PeerName;
use crate::cluster::validate::check_frame;
use crate::cluster::{Cluster, LinkIdentity};

/// Inbound cluster links refused before they carried anything, by `reason` (`tls`: handshake failed;
/// `name_mismatch`: the certificate is not valid for the name in the peer's Hello; `name_in_use`: another
/// identity holds a live link under that name).
const LINKS_REFUSED: &str = "fleetgate_cluster_links_refused_total";
/// Frames from peers that broke the rules for peer input, by `reason`; each closed its link.
const PEER_VIOLATIONS: &str = "fleetgate_cluster_peer_violations_total";

/// Splits an accepted connection into link halves, after the TLS handshake when the cluster uses TLS; then also
/// returns the peer's (CA-verified) end-entity certificate, for the name check after its Hello.
async fn accept_halves(
    cluster: &Cluster,
    stream: TcpStream,
) -> Result<(LinkRead, LinkWrite, Option<CertificateDer<'static>>), LinkError> {
    let Some(tls) = &cluster.tls else {
        let (r, w) = stream.into_split();
        return Ok((Box::new(r), Box::new(w), None));
    };
    let tls_stream = tokio::time::timeout(HELLO_TIMEOUT, tls.acceptor().accept(stream))
        .await
        .map_err(|_| LinkError::Tls(io::ErrorKind::TimedOut.into()))?
        .map_err(LinkError::Tls)?;
    let cert = peer_leaf(tls_stream.get_ref().1);
    // The verifier requires a client certificate; a handshake without one cannot complete.
    if cert.is_none() {
        return Err(LinkError::Tls(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "no client certificate",
        )));
    }
    let (r, w) = tokio::io::split(tls_stream);
    Ok((Box::new(r), Box::new(w), cert))
}

fn refused(reason: &'static str) {
    metrics::counter!(LINKS_REFUSED, "reason" => reason).increment(1);
}

/// What one handed-over session may bring here.
fn handover_limits(cluster: &Cluster) -> HandoverLimits {
    HandoverLimits::from_config(&cluster.limits)
}

/// A connection a peer opened to us (`id`: its number in accept order): we receive its frames here, and send it
/// our Hello and acks.
pub(super) async fn inbound(
    cluster: Arc<Cluster>,
    broker: Arc<Broker>,
    stream: TcpStream,
    from: SocketAddr,
    id: u64,
) {
    let _ = stream.set_nodelay(true);
    let (r, mut w, cert) = match accept_halves(&cluster, stream).await {
        Ok(halves) => halves,
        Err(e) => {
            refused("tls");
            tracing::warn!(event = "cluster_tls_failed", from = %from, error = %e, "inbound cluster link refused");
            return;
        }
    };
    let mut reader = FrameReader::new(r, cluster.frame_limit, cluster.config.dead_after);
    let peer_hello = match read_hello(&cluster, &mut reader).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(event = "cluster_hello_failed", from = %from, error = %e, "inbound cluster link refused");
            return;
        }
    };
    let name = peer_hello.name;
    // Under TLS the claimed name must be the certificate's: the CA check alone would let any node's
    // certificate speak for any node name.
    let identity = match &cert {
        Some(cert) => {
            if !crate::cluster::tls::certifies_node(cert, &name, peer_hello.advertise) {
                refused("name_mismatch");
                tracing::warn!(
                    event = "cluster_peer_rejected",
                    peer = %name,
                    from = %from,
                    advertise = %peer_hello.advertise,
                    reason = "name_mismatch",
                    "inbound cluster link from a certificate not valid for {name} refused"
                );
                return;
            }
            LinkIdentity::Certificate(cert.to_vec())
        }
        None => LinkIdentity::Address(from.ip()),
    };
    let peer: PeerName = Arc::from(name.as_str());
    let accepted = match cluster.inbound_up(
        &peer,
        id,
        peer_hello.incarnation,
        identity,
        peer_hello.advertise,
    ) {
        Ok(accepted) => accepted,
        Err(Rejected::Superseded) => {
            refused(Rejected::Superseded.reason());
            tracing::info!(
                event = "cluster_peer_rejected",
                peer = %name,
                from = %from,
                reason = Rejected::Superseded.reason(),
                "inbound cluster link for {name} closed: a connection it opened later is already up"
            );
            return;
        }
        Err(rejected) => {
            refused(rejected.reason());
            tracing::warn!(
                event = "cluster_peer_rejected",
                peer = %name,
                from = %from,
                advertise = %peer_hello.advertise,
                reason = rejected.reason(),
                "inbound cluster link for {name} refused: another identity holds that name"
            );
            return;
        }
    };
    let mut first = BytesMut::new();
    hello(&cluster, accepted.resume).encode(&mut first);
    if w.write_all(&first).await.is_err() {
        cluster.inbound_down(&peer, id);
        return;
    }
    if accepted.learned {
        spawn_dialer(
            cluster.clone(),
            broker.clone(),
            peer_hello.advertise,
            Some(name),
            false,
            DialOrigin::Learned,
        );
    }
    let stop = cluster.shutdown.child_token();
    let acks = tokio::spawn(acks(
        cluster.clone(),
        peer.clone(),
        w,
        cluster.config.heartbeat_interval,
        stop.clone(),
    ));
    let mut incoming = Incoming::new(handover_limits(&cluster));
    let end = read_loop(&cluster, &broker, &peer, &mut reader, &mut incoming, &stop).await;
    if let Some(e) = &end {
        if let LinkError::Violation(v) = e {
            metrics::counter!(PEER_VIOLATIONS, "reason" => v.label()).increment(1);
            tracing::warn!(event = "cluster_peer_violation", peer = %peer, reason = v.label(), error = %v, "{peer} sent a frame against the rules: link closed");
        }
        record_link_end(&cluster, "inbound", &peer, e);
    }
    stop.cancel();
    acks.abort();
    let owed = incoming.abandon();
    if owed > 0 {
        cluster.metrics.dropped_link_down.increment(owed as u64);
    }
    cluster.inbound_down(&peer, id);
}

/// Applies the peer's frames until the link ends: every complete frame of a read, then one read. Silence is
/// measured in ticks of `dead_after / SILENCE_TICKS` with a flag set per read, not with a timer per read: the
/// peer is dead after that many ticks in a row with nothing read. `None` at a clean end (shutdown).
async fn read_loop(
    cluster: &Arc<Cluster>,
    broker: &Arc<Broker>,
    peer: &PeerName,
    reader: &mut FrameReader,
    incoming: &mut Incoming,
    stop: &CancellationToken,
) -> Option<LinkError> {
    let mut tick = tokio::time::interval(cluster.config.dead_after / SILENCE_TICKS);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (mut heard, mut silent_ticks) = (true, 0);
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        if let Err(e) = apply_buffered(cluster, broker, peer, reader, incoming) {
            return Some(e);
        }
        let filled = tokio::select! {
            biased;
            _ = &mut stopped => return None,
            r = reader.fill() => r,
            _ = tick.tick() => {
                if std::mem::take(&mut heard) {
                    silent_ticks = 0;
                } else {
                    silent_ticks += 1;
                    if silent_ticks >= SILENCE_TICKS {
                        return Some(LinkError::Silent);
                    }
                }
                continue;
            }
        };
        match filled {
            Ok(true) => heard = true,
            Ok(false) => return Some(LinkError::Closed),
            Err(e) => return Some(e),
        }
    }
}

/// Checks and applies every complete frame already read, in order; a run of Publish frames shares one router
/// read lock (at most [`PUBLISH_BATCH`] of them).
fn apply_buffered(
    cluster: &Arc<Cluster>,
    broker: &Arc<Broker>,
    peer: &PeerName,
    reader: &mut FrameReader,
    incoming: &mut Incoming,
) -> Result<(), LinkError> {
    let mut local = None;
    let mut held = 0;
    let max_packet_size = cluster.limits.max_packet_size as usize;
    while let Some(frame) = reader.buffered()? {
        check_frame(&frame, max_packet_size)?;
        match frame {
            Frame::Publish {
                direct,
                groups,
                sessions,
                msg,
            } => {
                if held == PUBLISH_BATCH {
                    local = None;
                    held = 0;
                }
                let l = local.get_or_insert_with(|| broker.local_delivery());
                held += 1;
                cluster.on_publish(l, peer, direct, &groups, &sessions, &msg);
            }
            frame => {
                // Other frames may take the router themselves (a session handed over).
                local = None;
                held = 0;
                cluster.on_frame(broker, peer, frame, incoming)?;
            }
        }
    }
    Ok(())
}

/// After our Hello: every `every`, how far we applied the peer's tables (`Ack`, when it changed) or a
/// heartbeat, until `stop` or a write error.
async fn acks(
    cluster: Arc<Cluster>,
    peer: PeerName,
    mut w: LinkWrite,
    every: Duration,
    stop: CancellationToken,
) {
    let mut beat = BytesMut::new();
    Frame::Heartbeat.encode(&mut beat);
    let mut sent: Option<Watermarks> = None;
    let mut frame = BytesMut::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let applied = cluster.applied_from(&peer);
        let bytes = match applied {
            Some(a) if sent != Some(a) => {
                sent = Some(a);
                frame.clear();
                Frame::Ack(a).encode(&mut frame);
                &frame
            }
            _ => &beat,
        };
        if w.write_all(bytes).await.is_err() {
            return;
        }
    }
}
