//! Node-to-node TCP links: the cluster port's accept loop (one task per inbound connection at once), the
//! dialers (one per known peer address, reconnecting with backoff), the Hello exchange, the ordered writer of our
//! outbound queue ([`super::outbox`]) and the heartbeats; every read is bounded by `dead_after` of silence. A
//! read takes whatever the socket has (up to `READ_CHUNK`) and every complete frame in it is applied before the
//! next read.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::Cluster;
use super::frame::{Frame, FrameError, PROTOCOL_VERSION};
use super::handoff::Incoming;
use super::outbox::LinkTx;
use super::routes::PeerName;
use crate::broker::Broker;

/// Deadline of a TCP connect to a peer: peers are on the same network; a dead address must not hold the dialer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of the Hello each way.
const HELLO_TIMEOUT: Duration = Duration::from_secs(2);
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

/// Inbound cluster links refused, by `reason` (`tls`: handshake failed; `name_mismatch`: the certificate is not
/// valid for the name in the peer's Hello).
const LINKS_REFUSED: &str = "fleetgate_cluster_links_refused_total";

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

fn encode(frame: &Frame) -> Bytes {
    let mut b = BytesMut::new();
    frame.encode(&mut b);
    b.freeze()
}

fn hello(cluster: &Cluster) -> Frame {
    Frame::Hello {
        version: PROTOCOL_VERSION,
        name: cluster.name.to_string(),
        advertise: cluster.advertise,
        incarnation: cluster.incarnation,
    }
}

/// Reads and checks the peer's Hello: its name and the address to dial it at.
async fn read_hello(
    cluster: &Cluster,
    reader: &mut FrameReader,
) -> Result<(String, SocketAddr), LinkError> {
    match tokio::time::timeout(HELLO_TIMEOUT, reader.next()).await {
        Ok(Ok(Some(Frame::Hello {
            version,
            name,
            advertise,
            ..
        }))) => {
            if version != PROTOCOL_VERSION {
                return Err(LinkError::Hello("unsupported version"));
            }
            if name == *cluster.name {
                return Err(LinkError::SelfDial);
            }
            Ok((name, advertise))
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
    tokio::spawn(accept_loop(cluster, broker, listener));
    Ok(())
}

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
    let tls_stream = tokio::time::timeout(HELLO_TIMEOUT, tls.acceptor.accept(stream))
        .await
        .map_err(|_| LinkError::Tls(io::ErrorKind::TimedOut.into()))?
        .map_err(LinkError::Tls)?;
    let cert = tls_stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|c| c.clone().into_owned());
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

/// Splits a dialed connection into link halves, after the TLS handshake (verifying `name`'s certificate).
async fn dial_halves(
    cluster: &Cluster,
    stream: TcpStream,
    name: Option<&str>,
    addr: SocketAddr,
) -> Result<(LinkRead, LinkWrite), LinkError> {
    let Some(tls) = &cluster.tls else {
        let (r, w) = stream.into_split();
        return Ok((Box::new(r), Box::new(w)));
    };
    let server_name = super::tls::server_name(name, addr);
    let tls_stream =
        tokio::time::timeout(HELLO_TIMEOUT, tls.connector.connect(server_name, stream))
            .await
            .map_err(|_| LinkError::Tls(io::ErrorKind::TimedOut.into()))?
            .map_err(LinkError::Tls)?;
    let (r, w) = tokio::io::split(tls_stream);
    Ok((Box::new(r), Box::new(w)))
}

async fn accept_loop(cluster: Arc<Cluster>, broker: Arc<Broker>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = cluster.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                tokio::spawn(inbound(cluster.clone(), broker.clone(), stream));
            }
            Err(e) => {
                tracing::warn!(event = "accept_failed", role = "cluster", error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
}

/// A connection a peer opened to us: we receive its frames here, and send it only Hello and heartbeats.
async fn inbound(cluster: Arc<Cluster>, broker: Arc<Broker>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let (r, w, cert) = match accept_halves(&cluster, stream).await {
        Ok(halves) => halves,
        Err(e) => {
            metrics::counter!(LINKS_REFUSED, "reason" => "tls").increment(1);
            tracing::warn!(event = "cluster_tls_failed", error = %e, "inbound cluster link refused");
            return;
        }
    };
    let mut reader = FrameReader::new(r, cluster.frame_limit, cluster.config.dead_after);
    let (name, advertise) = match read_hello(&cluster, &mut reader).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(event = "cluster_hello_failed", error = %e, "inbound cluster link refused");
            return;
        }
    };
    // Under TLS the claimed name must be the certificate's: the CA check alone would let any node's
    // certificate speak for any node name.
    if let Some(cert) = &cert
        && !super::tls::certifies_node(cert, &name, advertise)
    {
        metrics::counter!(LINKS_REFUSED, "reason" => "name_mismatch").increment(1);
        tracing::warn!(
            event = "cluster_tls_failed",
            peer = %name,
            advertise = %advertise,
            error = "certificate does not name the node its Hello claims",
            "inbound cluster link from a certificate not valid for {name} refused"
        );
        return;
    }
    let peer: PeerName = Arc::from(name.as_str());
    let id = cluster.next_id();
    let stop = cluster.shutdown.child_token();
    let beat = tokio::spawn(heartbeats(
        w,
        w_hello(&cluster),
        cluster.config.heartbeat_interval,
        stop.clone(),
    ));
    if cluster.inbound_up(&peer, id, advertise) {
        spawn_dialer(
            cluster.clone(),
            broker.clone(),
            advertise,
            Some(name),
            false,
            DialOrigin::Learned,
        );
    }
    let mut incoming = Incoming::default();
    // Silence is measured in ticks of dead_after / SILENCE_TICKS with a flag set per read, not with a timer per
    // read: the peer is dead after that many ticks in a row with nothing read (dead_after, at most one tick
    // more).
    let mut tick = tokio::time::interval(cluster.config.dead_after / SILENCE_TICKS);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (mut heard, mut silent_ticks) = (true, 0);
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    let end = loop {
        // Every complete frame of the last read, then one read: no timer or wake-up per frame.
        if let Err(e) = apply_buffered(&cluster, &broker, &peer, &mut reader, &mut incoming) {
            break Some(e);
        }
        let filled = tokio::select! {
            biased;
            _ = &mut stopped => break None,
            r = reader.fill() => r,
            _ = tick.tick() => {
                if std::mem::take(&mut heard) {
                    silent_ticks = 0;
                } else {
                    silent_ticks += 1;
                    if silent_ticks >= SILENCE_TICKS {
                        break Some(LinkError::Silent);
                    }
                }
                continue;
            }
        };
        match filled {
            Ok(true) => heard = true,
            Ok(false) => break None,
            Err(e) => break Some(e),
        }
    };
    if let Some(e) = end {
        tracing::info!(event = "cluster_inbound_closed", peer = %peer, error = %e, "inbound link from {peer} closed");
    }
    stop.cancel();
    beat.abort();
    let owed = incoming.abandon();
    if owed > 0 {
        cluster.metrics.dropped_link_down.increment(owed as u64);
    }
    cluster.inbound_down(&peer, id);
}

/// Applies every complete frame already read, in order; a run of Publish frames shares one router read lock
/// (at most [`PUBLISH_BATCH`] of them).
fn apply_buffered(
    cluster: &Arc<Cluster>,
    broker: &Arc<Broker>,
    peer: &PeerName,
    reader: &mut FrameReader,
    incoming: &mut Incoming,
) -> Result<(), LinkError> {
    let mut local = None;
    let mut held = 0;
    while let Some(frame) = reader.buffered()? {
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
                cluster.on_frame(broker, peer, frame, incoming);
            }
        }
    }
    Ok(())
}

fn w_hello(cluster: &Cluster) -> Bytes {
    encode(&hello(cluster))
}

/// Writes `first`, then a heartbeat every `every` until `stop` or a write error.
async fn heartbeats(mut w: LinkWrite, first: Bytes, every: Duration, stop: CancellationToken) {
    let beat = encode(&Frame::Heartbeat);
    if w.write_all(&first).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {
                if w.write_all(&beat).await.is_err() {
                    return;
                }
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
            let result = dial_once(&cluster, &broker, addr, name.as_deref(), &mut first).await;
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

/// One outbound link to `addr`, from connect to close; returns the peer's name once it was established.
async fn dial_once(
    cluster: &Arc<Cluster>,
    broker: &Arc<Broker>,
    addr: SocketAddr,
    name: Option<&str>,
    first: &mut bool,
) -> Result<String, LinkError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| LinkError::Io(io::ErrorKind::TimedOut.into()))??;
    let _ = stream.set_nodelay(true);
    let (r, mut w) = dial_halves(cluster, stream, name, addr).await?;
    w.write_all(&w_hello(cluster)).await?;
    let mut reader = FrameReader::new(r, cluster.frame_limit, cluster.config.dead_after);
    // Under TLS 1.3 the dialer's handshake completes before the acceptor checks our certificate: a refusal
    // arrives as an alert on the first read.
    let (name, _) = read_hello(cluster, &mut reader)
        .await
        .map_err(|e| match e {
            LinkError::Io(io)
                if cluster.tls.is_some() && io.kind() == io::ErrorKind::InvalidData =>
            {
                LinkError::Tls(io)
            }
            e => e,
        })?;
    let peer: PeerName = Arc::from(name.as_str());
    cluster
        .peers
        .lock()
        .known
        .entry(name.clone())
        .or_insert(addr);
    let cancel = cluster.shutdown.child_token();
    let id = cluster.next_id();
    let link = Arc::new(LinkTx::new(id, cancel.clone()));
    cluster.outbound_up(broker, &peer, link.clone());
    if *first {
        *first = false;
        cluster.initial_dials.fetch_sub(1, Ordering::AcqRel);
        cluster.update_readiness();
    }
    let heartbeat = cluster.config.heartbeat_interval;
    let end: Option<LinkError> = tokio::select! {
        _ = cancel.cancelled() => None,
        r = link.write_loop(&mut w, heartbeat) => r.err().map(LinkError::Io),
        r = async {
            loop {
                match reader.next().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return None,
                    Err(e) => return Some(e),
                }
            }
        } => r,
    };
    if let Some(e) = end {
        tracing::info!(event = "cluster_outbound_closed", peer = %peer, error = %e, "outbound link to {peer} closed");
    }
    cancel.cancel();
    link.close();
    cluster.outbound_down(broker, &peer, id);
    Ok(name)
}
