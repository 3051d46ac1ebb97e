//! A cluster peer written by hand, to act as a hostile one: it dials a node's cluster port (TLS with a certificate
//! of the test CA, or plain TCP), sends a Hello and then whatever frames a test builds with the encoders below —
//! an independent implementation of the wire format documented in `broker-node/src/cluster/mod.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fleetgate_testkit::{CertFiles, Pki, WAIT};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The link protocol version the nodes speak.
const VERSION: u8 = 3;

/// A connection to a node's cluster port.
pub struct Peer {
    stream: Box<dyn Stream>,
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

impl Peer {
    /// Connects over TLS to the node called `node` at `addr`, presenting `cert` (a certificate of `pki`'s CA).
    pub async fn tls(pki: &Pki, cert: &CertFiles, node: &str, addr: SocketAddr) -> Peer {
        let mut config = (*pki.client_config(Some(cert))).clone();
        config.alpn_protocols = vec![b"fleetgate-cluster/1".to_vec()];
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from(node.to_string()).expect("server name");
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        Peer {
            stream: Box::new(tls),
        }
    }

    /// Connects with plain TCP.
    pub async fn plain(addr: SocketAddr) -> Peer {
        Peer {
            stream: Box::new(TcpStream::connect(addr).await.expect("connect")),
        }
    }

    /// A connection the node opened to us (its dial to the address our Hello advertised), plain TCP.
    pub fn accepted(stream: TcpStream) -> Peer {
        Peer {
            stream: Box::new(stream),
        }
    }

    /// As the acceptor of the node's dial: reads its Hello and answers with ours (as `name`, at `advertise`);
    /// true when both went through.
    pub async fn answer_hello(&mut self, name: &str, advertise: SocketAddr) -> bool {
        self.read_hello().await && self.send(&hello(name, advertise)).await
    }

    /// Sends raw bytes; false once the node closed the connection.
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok() && self.stream.flush().await.is_ok()
    }

    /// Sends our Hello (as node `name`, dialable at `advertise`) and reads the node's: true when it answered with
    /// a Hello, false when it closed the connection (or sent anything else).
    pub async fn hello(&mut self, name: &str, advertise: SocketAddr) -> bool {
        self.send(&hello(name, advertise)).await && self.read_hello().await
    }

    async fn read_hello(&mut self) -> bool {
        let mut len = [0u8; 4];
        let read = tokio::time::timeout(WAIT, self.stream.read_exact(&mut len)).await;
        if !matches!(read, Ok(Ok(_))) {
            return false;
        }
        let mut body = vec![0u8; u32::from_be_bytes(len).min(1 << 16) as usize];
        let read = tokio::time::timeout(WAIT, self.stream.read_exact(&mut body)).await;
        matches!(read, Ok(Ok(_))) && body.first() == Some(&0x01)
    }

    /// True once the node closes the connection (end of stream or an error) within [`WAIT`]; whatever it
    /// writes meanwhile (heartbeats, acks, a TLS alert) is read and dropped.
    pub async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        let until = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(until, self.stream.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }

    /// True when the node closes the connection within a second (what it writes meanwhile is read and dropped).
    pub async fn closed_within_a_moment(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        let until = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            match tokio::time::timeout_at(until, self.stream.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }

    /// Everything the node sends within `quiet` of silence (at most [`WAIT`]), until it closes.
    pub async fn read_all(&mut self, quiet: Duration) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let until = tokio::time::Instant::now() + WAIT;
        loop {
            let next = tokio::time::timeout(quiet, self.stream.read(&mut buf));
            match tokio::time::timeout_at(until, next).await {
                Ok(Ok(Ok(n))) if n > 0 => out.extend_from_slice(&buf[..n]),
                _ => return out,
            }
        }
    }
}

/// A frame: `u32` big-endian length, then the body.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// A `u16`-length string field.
fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Hello: version, name, advertised address, incarnation, no resume.
pub fn hello(name: &str, advertise: SocketAddr) -> Vec<u8> {
    let mut b = vec![0x01, VERSION];
    string(&mut b, name);
    string(&mut b, &advertise.to_string());
    b.extend_from_slice(&7u64.to_be_bytes());
    b.push(0);
    frame(&b)
}

/// SyncBegin of a full sync.
pub fn sync_begin() -> Vec<u8> {
    frame(&[0x14, 1])
}

/// SyncDone: our tables (empty) are all sent, change numbers 0.
pub fn sync_done() -> Vec<u8> {
    let mut b = vec![0x13];
    b.extend_from_slice(&[0u8; 24]);
    frame(&b)
}

/// RouteAdd of `filter`.
pub fn route_add(filter: &str) -> Vec<u8> {
    let mut b = vec![0x10];
    string(&mut b, filter);
    b.extend_from_slice(&1u64.to_be_bytes());
    frame(&b)
}

/// A message inside a frame: topic, QoS, retain, no expiry, no properties, payload.
fn message(out: &mut Vec<u8>, topic: &str, qos: u8, payload: &[u8]) {
    string(out, topic);
    out.push(qos);
    out.push(0);
    out.extend_from_slice(&0u64.to_be_bytes());
    out.push(0);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// Publish of a QoS 0 message on `topic` for the receiver's plain subscribers.
pub fn publish(topic: &str) -> Vec<u8> {
    let mut b = vec![0x20, 1];
    b.extend_from_slice(&0u16.to_be_bytes());
    b.extend_from_slice(&0u16.to_be_bytes());
    message(&mut b, topic, 0, b"x");
    frame(&b)
}

/// Request id of a session pushed at a drain (its top bit).
pub const PUSHED: u64 = 1 << 63;

/// SessionBegin of a pushed session of `client_id` with `expiry_secs`, protocol 5, no will, no identity.
pub fn session_begin(req: u64, client_id: &str, expiry_secs: u32) -> Vec<u8> {
    let mut b = vec![0x32];
    b.extend_from_slice(&req.to_be_bytes());
    string(&mut b, client_id);
    b.extend_from_slice(&expiry_secs.to_be_bytes());
    b.push(5);
    b.extend_from_slice(&0u16.to_be_bytes());
    b.extend_from_slice(&0u16.to_be_bytes());
    b.push(0);
    b.push(0);
    frame(&b)
}

/// SessionMsg: a queued QoS 1 message of session `req`.
pub fn session_queued(req: u64, topic: &str) -> Vec<u8> {
    let mut b = vec![0x34];
    b.extend_from_slice(&req.to_be_bytes());
    b.push(0);
    b.extend_from_slice(&0u16.to_be_bytes());
    b.push(1);
    b.push(0);
    b.extend_from_slice(&0u16.to_be_bytes());
    message(&mut b, topic, 1, b"q");
    frame(&b)
}

/// SessionEnd of `req`.
pub fn session_end(req: u64) -> Vec<u8> {
    let mut b = vec![0x35];
    b.extend_from_slice(&req.to_be_bytes());
    frame(&b)
}
