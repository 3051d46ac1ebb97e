//! PROXY protocol v2 from the client side: [`ProxySender`], a TCP forwarder on `127.0.0.1:0` standing in for the LB
//! in front of a broker listener that requires PROXY v2 (each accepted connection gets a header carrying the real
//! client address as source, then bytes are relayed both ways, so mosquitto, paho and rumqttc talk to such a
//! listener unchanged); [`proxy_v2`] headers made by our encoder, and one made by hand that our encoder would never
//! write ([`proxy_v2_verify_zero_without_cert`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use fleetgate_protocol::proxy::{HeaderSpec, PeerIdentity, encode_v2};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::raw::put_bytes;

/// A PROXY v2 header describing a plain TCP client at `source` that connected to `destination`.
pub fn proxy_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    proxy_v2_with_identity(source, destination, PeerIdentity::default())
}

/// A PROXY v2 header describing a client at `source` that connected to `destination`, with `identity` in its TLVs
/// (e.g. a verified TLS client CN, as the LB would send it).
pub fn proxy_v2_with_identity(
    source: SocketAddr,
    destination: SocketAddr,
    identity: PeerIdentity,
) -> Vec<u8> {
    encode_v2(&HeaderSpec {
        source,
        destination,
        identity,
        crc32c: false,
    })
}

/// A PROXY v2 header made by hand (not by our encoder) with an SSL TLV that claims TLS with `verify == 0` and a CN,
/// but sets neither CERT_CONN nor CERT_SESS: a certificate that was never presented, so no identity at all.
pub fn proxy_v2_verify_zero_without_cert(
    source: SocketAddr,
    dest: SocketAddr,
    cn: &str,
) -> Vec<u8> {
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (source, dest) else {
        panic!("IPv4 addresses only");
    };
    let mut ssl = vec![0x01]; // PP2_CLIENT_SSL only
    ssl.extend_from_slice(&0u32.to_be_bytes()); // verify = 0 ("verified")
    ssl.push(0x22); // PP2_SUBTYPE_SSL_CN
    put_bytes(&mut ssl, cn.as_bytes());
    let mut payload = Vec::new();
    payload.extend_from_slice(&s.ip().octets());
    payload.extend_from_slice(&d.ip().octets());
    payload.extend_from_slice(&s.port().to_be_bytes());
    payload.extend_from_slice(&d.port().to_be_bytes());
    payload.push(0x20); // PP2_TYPE_SSL
    put_bytes(&mut payload, &ssl);
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.push(0x21); // v2, PROXY
    header.push(0x11); // TCP over IPv4
    header.extend_from_slice(&u16::try_from(payload.len()).expect("short").to_be_bytes());
    header.extend_from_slice(&payload);
    header
}

/// A running PROXY v2 forwarder; stops (and drops every relayed connection) when dropped.
pub struct ProxySender {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl ProxySender {
    /// Forwards to `target` with an empty identity (a plain-TCP client as the LB would describe it).
    pub async fn start(target: SocketAddr) -> Self {
        Self::start_with_identity(target, PeerIdentity::default()).await
    }

    /// Forwards to `target`, describing every client with `identity` (e.g. a verified TLS client CN).
    pub async fn start_with_identity(target: SocketAddr, identity: PeerIdentity) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the PROXY sender");
        let addr = listener.local_addr().expect("PROXY sender address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            // Owned by the accept task: aborting it drops the set, which aborts every relay.
            let mut relays = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((client, peer)) = accepted else { continue };
                        counter.fetch_add(1, Ordering::SeqCst);
                        relays.spawn(relay(client, peer, addr, target, identity.clone()));
                    }
                    Some(_) = relays.join_next(), if !relays.is_empty() => {}
                }
            }
        });
        Self {
            addr,
            accepted,
            task,
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many client connections were accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for ProxySender {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects to `target`, writes the header, then copies both ways until either side closes.
async fn relay(
    mut client: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    target: SocketAddr,
    identity: PeerIdentity,
) {
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        return;
    };
    let _ = upstream.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let header = proxy_v2_with_identity(peer, local, identity);
    if upstream.write_all(&header).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn prefixes_a_v2_header_and_relays() {
        let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sender = ProxySender::start(backend.local_addr().unwrap()).await;
        let mut client = TcpStream::connect(sender.addr()).await.unwrap();
        let client_addr = client.local_addr().unwrap();
        client.write_all(b"ping").await.unwrap();
        let (mut server, _) = backend.accept().await.unwrap();
        let expected = proxy_v2(client_addr, sender.addr());
        let mut got = vec![0; expected.len() + 4];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..expected.len()], &expected[..]);
        assert_eq!(&got[expected.len()..], b"ping");
        server.write_all(b"pong").await.unwrap();
        let mut back = [0; 4];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"pong");
        assert_eq!(sender.accepted(), 1);
    }
}
