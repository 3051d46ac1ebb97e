//! [`ProxySender`]: a TCP forwarder on `127.0.0.1:0` standing in for the LB in front of a broker listener that
//! requires PROXY v2. Each accepted connection gets a header carrying the real client address as source, then
//! bytes are relayed both ways — so mosquitto, paho and rumqttc can talk to such a listener unchanged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use fleetgate_protocol::proxy::{HeaderSpec, PeerIdentity, encode_v2};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

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
    let header = encode_v2(&HeaderSpec {
        source: peer,
        destination: local,
        identity,
        crc32c: false,
    });
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
        let expected = encode_v2(&HeaderSpec {
            source: client_addr,
            destination: sender.addr(),
            identity: PeerIdentity::default(),
            crc32c: false,
        });
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
