//! Our connection to a peer: the TLS handshake (its certificate verified for the name we dial, or its
//! address), our Hello, its Hello (the name must be the one we dialed and one its certificate names), then our
//! outbound queue's writer — the sync first — while we read its acks and heartbeats.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use rustls::pki_types::CertificateDer;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{
    CONNECT_TIMEOUT, FrameReader, HELLO_TIMEOUT, LinkError, LinkRead, LinkWrite, hello, peer_leaf,
    read_hello, record_link_end,
};
use crate::broker::Broker;
use crate::cluster::Cluster;
use crate::cluster::frame::Frame;
use crate::cluster::outbox::LinkTx;
use crate::cluster::routes::PeerName;

/// Splits a dialed connection into link halves, after the TLS handshake (verifying `name`'s certificate); then
/// also returns the peer's end-entity certificate, for the name check after its Hello.
async fn dial_halves(
    cluster: &Cluster,
    stream: TcpStream,
    name: Option<&str>,
    addr: SocketAddr,
) -> Result<(LinkRead, LinkWrite, Option<CertificateDer<'static>>), LinkError> {
    let Some(tls) = &cluster.tls else {
        let (r, w) = stream.into_split();
        return Ok((Box::new(r), Box::new(w), None));
    };
    let server_name = crate::cluster::tls::server_name(name, addr);
    let tls_stream =
        tokio::time::timeout(HELLO_TIMEOUT, tls.connector().connect(server_name, stream))
            .await
            .map_err(|_| LinkError::Tls(io::ErrorKind::TimedOut.into()))?
            .map_err(LinkError::Tls)?;
    let cert = peer_leaf(tls_stream.get_ref().1);
    let (r, w) = tokio::io::split(tls_stream);
    Ok((Box::new(r), Box::new(w), cert))
}

/// One outbound link to `addr`, from connect to close; returns the peer's name once it was established.
pub(super) async fn dial_once(
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
    let (r, mut w, cert) = dial_halves(cluster, stream, name, addr).await?;
    let mut ours = BytesMut::new();
    hello(cluster, None).encode(&mut ours);
    w.write_all(&ours).await?;
    let mut reader = FrameReader::new(r, cluster.frame_limit, cluster.config.dead_after);
    // Under TLS 1.3 the dialer's handshake completes before the acceptor checks our certificate: a refusal
    // arrives as an alert on the first read.
    let theirs = read_hello(cluster, &mut reader)
        .await
        .map_err(|e| match e {
            LinkError::Io(io)
                if cluster.tls.is_some() && io.kind() == io::ErrorKind::InvalidData =>
            {
                LinkError::Tls(io)
            }
            e => e,
        })?;
    // Under TLS the node that answers must be one its certificate names: a certificate valid for the address
    // we dialed does not make its holder any node it likes. (The name we dialed is only a hint: discovery by
    // address knows no node names.)
    if let Some(cert) = &cert
        && !crate::cluster::tls::certifies_node(cert, &theirs.name, addr)
    {
        return Err(LinkError::Rejected(
            "the peer's certificate does not name the node in its Hello",
        ));
    }
    let peer: PeerName = Arc::from(theirs.name.as_str());
    cluster
        .peers
        .lock()
        .known
        .entry(theirs.name.clone())
        .or_insert(addr);
    let cancel = cluster.shutdown.child_token();
    let id = cluster.next_id();
    let link = Arc::new(LinkTx::new(id, cancel.clone(), cluster.config.queue_bytes));
    cluster.outbound_up(broker, &peer, link.clone(), theirs.resume);
    if *first {
        *first = false;
        cluster.initial_dials.fetch_sub(1, Ordering::AcqRel);
        cluster.update_readiness();
    }
    let heartbeat = cluster.config.heartbeat_interval;
    let end: Option<LinkError> = tokio::select! {
        _ = cancel.cancelled() => link.overflowed().then_some(LinkError::QueueOverflow),
        r = link.write_loop(&mut w, heartbeat) => r.err().map(LinkError::Io),
        r = async {
            loop {
                match reader.next().await {
                    Ok(Some(Frame::Ack(applied))) => cluster.on_ack(&peer, applied),
                    Ok(Some(Frame::Heartbeat)) => {}
                    // The acceptor sends nothing else.
                    Ok(Some(_)) => {
                        return Some(LinkError::Violation(
                            crate::cluster::validate::Violation::Unexpected,
                        ));
                    }
                    Ok(None) => return Some(LinkError::Closed),
                    Err(e) => return Some(e),
                }
            }
        } => r,
    };
    if let Some(e) = &end {
        record_link_end(cluster, "outbound", &peer, e);
    }
    cancel.cancel();
    link.close();
    cluster.outbound_down(broker, &peer, id);
    Ok(theirs.name)
}
