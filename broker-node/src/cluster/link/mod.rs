//! Node-to-node TCP links (TLS over them off loopback): the cluster port's accept loop (one task per inbound
//! connection at once), the dialers (one per known peer address, reconnecting with backoff), the Hello exchange
//! with its identity checks, and every link end counted by reason. Every read is bounded by `dead_after` of
//! silence.
//!
//! - `accept`: a connection a peer opened to us — its identity, its frames (checked, then applied), our acks.
//! - `dial`: our connection to a peer — its identity, our outbound queue's writer, its acks.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpListener;
use tokio::time::MissedTickBehavior;

use super::Cluster;
use super::frame::{Frame, FrameError, PROTOCOL_VERSION, Watermarks};
use super::sync::TOMBSTONE_SWEEP;
use super::validate::Violation;
use crate::access::reload::WATCH_DEBOUNCE;
use crate::broker::Broker;
use crate::events;
use fleetgate_config::watch;

mod accept;
mod dial;

/// Deadline of a TCP connect to a peer: peers are on the same network; a dead address must not hold the dialer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of the Hello each way.
const HELLO_TIMEOUT: Duration = Duration::from_secs(2);

/// The certificate the other end of a TLS link presented (its leaf), if any.
fn peer_leaf(tls: &rustls::CommonState) -> Option<rustls::pki_types::CertificateDer<'static>> {
    tls.peer_certificates()
        .and_then(|chain| chain.first())
        .map(|c| c.clone().into_owned())
}
/// First redial delay after a failure; doubled up to [`MAX_BACKOFF`]. Short, because a restarted peer should be
/// back in the cluster (and its sessions reachable) quickly.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest redial delay.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Bytes requested per socket read: a busy link carries thousands of small frames a second, all applied per
/// read, so a large read means few reads (and few wake-ups); a few links per node make the memory irrelevant.
const READ_CHUNK: usize = 64 * 1024;
/// Most Publish frames from a peer applied under one router read lock: amortises the lock over a read, while a
/// subscribe (router write lock) waits at most this many deliveries.
const PUBLISH_BATCH: usize = 64;
/// Silence checks per `dead_after` on an inbound link: a silent peer is dropped after `dead_after`, at most
/// `dead_after / SILENCE_TICKS` later.
const SILENCE_TICKS: u32 = 5;
/// After an accept error (e.g. out of file descriptors), pause instead of spinning.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// The read side of a link (TCP, or TLS over it).
type LinkRead = Box<dyn AsyncRead + Send + Unpin>;
/// The write side of a link.
pub(crate) type LinkWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// Who asked for a dialer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DialOrigin {
    /// `[cluster] peers`.
    Configured,
    /// `[cluster] peers_from`: retires once its address left the discovered set.
    Discovered,
    /// A peer that dialed us (its Hello said where to dial back).
    Learned,
}

/// Why a link ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    /// The peer closed the connection.
    #[error("closed by the peer")]
    Closed,
    /// A frame broke the rules for peer input (see `validate`).
    #[error("{0}")]
    Violation(#[from] Violation),
    /// Our queue to the peer overflowed with control frames: the peer does not read.
    #[error("queue overflow")]
    QueueOverflow,
    /// The Hello named a node that the peer's certificate does not name, or another identity holds that name.
    #[error("peer rejected: {0}")]
    Rejected(&'static str),
    /// Socket error.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// Nothing received for `dead_after`.
    #[error("peer silent")]
    Silent,
    /// The peer sent a bad frame.
    #[error("{0}")]
    Frame(#[from] FrameError),
    /// The Hello was missing, late or of another version.
    #[error("bad hello: {0}")]
    Hello(&'static str),
    /// We dialed ourselves.
    #[error("dialed own address")]
    SelfDial,
    /// The TLS handshake failed or timed out (e.g. a certificate of another CA).
    #[error("tls: {0}")]
    Tls(io::Error),
}

impl LinkError {
    /// The `reason` label of `fleetgate_cluster_link_resets_total`.
    fn label(&self) -> &'static str {
        match self {
            LinkError::Closed => "closed",
            LinkError::Violation(_) => "violation",
            LinkError::QueueOverflow => "queue_overflow",
            LinkError::Rejected(_) => "rejected",
            LinkError::Io(_) => "io",
            LinkError::Silent => "silent",
            LinkError::Frame(_) => "bad_frame",
            LinkError::Hello(_) => "hello",
            LinkError::SelfDial => "self_dial",
            LinkError::Tls(_) => "tls",
        }
    }
}

/// Links that were up and ended, by `reason`.
const LINK_RESETS: &str = "fleetgate_cluster_link_resets_total";

/// Logs (WARN) and counts the end of an established link, unless the cluster is shutting down.
fn record_link_end(cluster: &Cluster, direction: &'static str, peer: &str, error: &LinkError) {
    if cluster.shutdown.is_cancelled() {
        return;
    }
    let reason = error.label();
    metrics::counter!(LINK_RESETS, "reason" => reason, "direction" => direction).increment(1);
    tracing::warn!(
        event = "cluster_link_reset",
        peer,
        direction,
        reason,
        error = %error,
        "{direction} cluster link with {peer} reset: {error}"
    );
}

/// Reads frames, each within `dead_after` of the previous bytes.
struct FrameReader {
    r: LinkRead,
    buf: BytesMut,
    limit: usize,
    dead_after: Duration,
}

impl FrameReader {
    fn new(r: LinkRead, limit: usize, dead_after: Duration) -> FrameReader {
        FrameReader {
            r,
            buf: BytesMut::new(),
            limit,
            dead_after,
        }
    }

    /// The next complete frame already read, if any (no I/O).
    fn buffered(&mut self) -> Result<Option<Frame>, LinkError> {
        Ok(Frame::decode(&mut self.buf, self.limit)?)
    }

    /// Reads what the socket has, however long that takes (the caller bounds the silence); `Ok(false)` at end
    /// of stream.
    async fn fill(&mut self) -> Result<bool, LinkError> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        Ok(self.r.read_buf(&mut self.buf).await? > 0)
    }

    /// The next frame, each read within `dead_after`; `Ok(None)` at end of stream.
    async fn next(&mut self) -> Result<Option<Frame>, LinkError> {
        loop {
            if let Some(f) = self.buffered()? {
                return Ok(Some(f));
            }
            match tokio::time::timeout(self.dead_after, self.fill()).await {
                Err(_) => return Err(LinkError::Silent),
                Ok(filled) => {
                    if !filled? {
                        return Ok(None);
                    }
                }
            }
        }
    }
}

/// Our Hello; the acceptor's offers the dialer a resume.
fn hello(cluster: &Cluster, resume: Option<Watermarks>) -> Frame {
    Frame::Hello {
        version: PROTOCOL_VERSION,
        name: cluster.name.to_string(),
        advertise: cluster.advertise,
        incarnation: cluster.incarnation,
        resume,
    }
}

/// What a peer's Hello says.
#[derive(Debug)]
struct PeerHello {
    /// Its node name.
    name: String,
    /// The address to dial it at.
    advertise: SocketAddr,
    /// Its process.
    incarnation: u64,
    /// (From an acceptor) how far it holds our tables.
    resume: Option<Watermarks>,
}

/// Reads and checks the peer's Hello.
async fn read_hello(cluster: &Cluster, reader: &mut FrameReader) -> Result<PeerHello, LinkError> {
    match tokio::time::timeout(HELLO_TIMEOUT, reader.next()).await {
        Ok(Ok(Some(Frame::Hello {
            version,
            name,
            advertise,
            incarnation,
            resume,
        }))) => {
            if version != PROTOCOL_VERSION {
                return Err(LinkError::Hello("unsupported version"));
            }
            if name == *cluster.name {
                return Err(LinkError::SelfDial);
            }
            if super::validate::check_node_name(&name).is_err() {
                return Err(LinkError::Hello("invalid node name"));
            }
            Ok(PeerHello {
                name,
                advertise,
                incarnation,
                resume,
            })
        }
        Ok(Ok(_)) => Err(LinkError::Hello("first frame is not Hello")),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(LinkError::Hello("timeout")),
    }
}

/// Starts the cluster: the accept loop on `listener`, a dialer per configured peer, and peer discovery when
/// configured. Fails only when discovery cannot start (unreadable resolver configuration).
pub(crate) fn start(
    cluster: Arc<Cluster>,
    broker: Arc<Broker>,
    listener: TcpListener,
) -> Result<(), fleetgate_discovery::ResolveError> {
    for p in cluster.config.peers.clone() {
        spawn_dialer(
            cluster.clone(),
            broker.clone(),
            p.addr,
            Some(p.name.clone()),
            true,
            DialOrigin::Configured,
        );
    }
    if let Some(d) = cluster.config.peers_from.clone() {
        super::discover::start(&cluster, &broker, &d)?;
    }
    cluster.update_readiness();
    if cluster.tls.is_some() {
        tokio::spawn(reload_tls(cluster.clone()));
    }
    tokio::spawn(sweep_tombstones(cluster.clone(), broker.clone()));
    tokio::spawn(accept_loop(cluster, broker, listener));
    Ok(())
}

/// Reads the cluster certificate, key and CA again whenever one of them changes (a rotated certificate is in use
/// for the next link), until the cluster stops; a broken file keeps the previous ones (logged and counted).
async fn reload_tls(cluster: Arc<Cluster>) {
    let Some(tls) = &cluster.tls else { return };
    let [first, rest @ ..] = tls.files();
    let mut watcher = match watch::watch(first, WATCH_DEBOUNCE) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(event = "watch_error", error = %e, "cluster certificates are not watched: rotate them with a restart");
            return;
        }
    };
    for f in rest {
        if let Err(e) = watcher.add(f) {
            tracing::warn!(event = "watch_error", error = %e, "cannot watch a cluster TLS file");
        }
    }
    loop {
        tokio::select! {
            _ = cluster.shutdown.cancelled() => return,
            changed = watcher.changed() => if changed.is_none() { return },
        }
        match tls.reload() {
            Ok(()) => {
                events::config_reload("cluster_tls", "file_changed", None);
                crate::metrics::config_reload("ok");
            }
            Err(e) => {
                events::config_reload("cluster_tls", "file_changed", Some(&e));
                crate::metrics::config_reload("error");
            }
        }
    }
}

/// Collects the retained deletes every peer has, every [`TOMBSTONE_SWEEP`], until the cluster stops.
async fn sweep_tombstones(cluster: Arc<Cluster>, broker: Arc<Broker>) {
    let mut tick = tokio::time::interval(TOMBSTONE_SWEEP);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cluster.shutdown.cancelled() => return,
            _ = tick.tick() => cluster.collect_tombstones(&broker),
        }
    }
}

async fn accept_loop(cluster: Arc<Cluster>, broker: Arc<Broker>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = cluster.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, from)) => {
                // Numbered here, in accept order (the order the peers opened their connections in), before the
                // handshake, which may finish in any order.
                let id = cluster.next_id();
                tokio::spawn(accept::inbound(
                    cluster.clone(),
                    broker.clone(),
                    stream,
                    from,
                    id,
                ));
            }
            Err(e) => {
                tracing::warn!(event = "accept_failed", role = "cluster", error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
}

/// Keeps dialing `addr` until the node it reaches is known elsewhere or the cluster stops.
pub(crate) fn spawn_dialer(
    cluster: Arc<Cluster>,
    broker: Arc<Broker>,
    addr: SocketAddr,
    mut name: Option<String>,
    initial: bool,
    origin: DialOrigin,
) {
    if !cluster.peers.lock().dialing.insert(addr) {
        if initial {
            cluster.initial_dials.fetch_sub(1, Ordering::AcqRel);
        }
        return;
    }
    tokio::spawn(async move {
        let mut first = initial;
        let mut backoff = MIN_BACKOFF;
        loop {
            if cluster.shutdown.is_cancelled() {
                break;
            }
            // A node that came back at another address is dialed there by a new dialer; this one retires.
            let moved = name.as_ref().is_some_and(|n| {
                cluster
                    .peers
                    .lock()
                    .known
                    .get(n)
                    .is_some_and(|a| *a != addr)
            });
            if moved {
                break;
            }
            let result =
                dial::dial_once(&cluster, &broker, addr, name.as_deref(), &mut first).await;
            if first {
                first = false;
                cluster.initial_dials.fetch_sub(1, Ordering::AcqRel);
                cluster.update_readiness();
            }
            match result {
                Ok(peer) => {
                    backoff = MIN_BACKOFF;
                    name = Some(peer);
                }
                Err(LinkError::SelfDial) => break,
                Err(e) => {
                    if let LinkError::Tls(_) = e {
                        tracing::warn!(event = "cluster_tls_failed", addr = %addr, error = %e, "cluster link to {addr} refused");
                    } else {
                        tracing::debug!(event = "cluster_dial_failed", addr = %addr, error = %e, "dial failed");
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    let gone = origin == DialOrigin::Discovered
                        && !cluster.peers.lock().discovered.contains(&addr);
                    if gone {
                        break;
                    }
                }
            }
            tokio::select! {
                _ = cluster.shutdown.cancelled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
        }
        cluster.peers.lock().dialing.remove(&addr);
    });
}
