//! Hand-made MQTT bytes for the paths a well-behaved client never takes: garbage, oversized packets, a client that
//! goes silent after CONNECT or never sends one. Encoders here are deliberately independent of our codec.

use std::net::SocketAddr;
use std::time::Duration;

use fleetgate_protocol::proxy::{HeaderSpec, PeerIdentity, encode_v2};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A CONNECT to build by hand.
#[derive(Debug, Clone)]
pub struct Connect<'a> {
    /// 4 = MQTT 3.1.1, 5 = MQTT 5.0.
    pub level: u8,
    /// Client identifier.
    pub client_id: &'a str,
    /// Keep alive in seconds.
    pub keep_alive: u16,
    /// Clean session / clean start.
    pub clean: bool,
    /// Will topic and payload (QoS 0, not retained).
    pub will: Option<(&'a str, &'a [u8])>,
    /// Username and password.
    pub credentials: Option<(&'a str, &'a str)>,
}

impl<'a> Connect<'a> {
    /// A clean-session CONNECT for `client_id` at `level`, keep alive 60 s, no will, no credentials.
    pub fn new(level: u8, client_id: &'a str) -> Self {
        Self {
            level,
            client_id,
            keep_alive: 60,
            clean: true,
            will: None,
            credentials: None,
        }
    }

    /// The encoded packet.
    pub fn encode(&self) -> Vec<u8> {
        let v5 = self.level == 5;
        let mut body = Vec::new();
        put_str(&mut body, "MQTT");
        body.push(self.level);
        let mut flags = 0u8;
        if self.clean {
            flags |= 0x02;
        }
        if self.will.is_some() {
            flags |= 0x04;
        }
        if self.credentials.is_some() {
            flags |= 0xC0;
        }
        body.push(flags);
        body.extend_from_slice(&self.keep_alive.to_be_bytes());
        if v5 {
            body.push(0); // no CONNECT properties
        }
        put_str(&mut body, self.client_id);
        if let Some((topic, payload)) = self.will {
            if v5 {
                body.push(0); // no will properties
            }
            put_str(&mut body, topic);
            put_bytes(&mut body, payload);
        }
        if let Some((user, pass)) = self.credentials {
            put_str(&mut body, user);
            put_bytes(&mut body, pass.as_bytes());
        }
        packet(0x10, &body)
    }
}

/// A QoS 0 PUBLISH of `payload` to `topic` (v3.1.1 layout; for level 5 an empty property length is added).
pub fn publish(level: u8, topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, topic);
    if level == 5 {
        body.push(0);
    }
    body.extend_from_slice(payload);
    packet(0x30, &body)
}

/// A SUBSCRIBE of one `topic` at `qos` with `packet_id`.
pub fn subscribe(level: u8, packet_id: u16, topic: &str, qos: u8) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    if level == 5 {
        body.push(0);
    }
    put_str(&mut body, topic);
    body.push(qos);
    packet(0x82, &body)
}

/// A PUBACK for `packet_id` (success; the short form is valid in 3.1.1 and 5).
pub fn puback(packet_id: u16) -> Vec<u8> {
    packet(0x40, &packet_id.to_be_bytes())
}

/// PINGREQ.
pub const PINGREQ: [u8; 2] = [0xC0, 0x00];

/// A fixed header (`first` byte, remaining length) followed by `body`.
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    out.extend(remaining_length(body.len()));
    out.extend_from_slice(body);
    out
}

/// The variable-length encoding of a remaining length.
pub fn remaining_length(mut len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            return out;
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    let len = u16::try_from(b.len()).expect("MQTT string longer than 65535 bytes");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(b);
}

/// A PROXY v2 header describing a plain TCP client at `source` that connected to `destination`.
pub fn proxy_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    encode_v2(&HeaderSpec {
        source,
        destination,
        identity: PeerIdentity::default(),
        crc32c: false,
    })
}

/// How a connection ended, as seen by a raw client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// The server closed (EOF or reset) after sending these bytes.
    After(Vec<u8>),
    /// Still open when the wait ended; these bytes arrived meanwhile.
    StillOpen(Vec<u8>),
}

/// A raw TCP connection to a listener, for sending arbitrary bytes.
pub struct RawClient {
    stream: TcpStream,
}

impl RawClient {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let _ = stream.set_nodelay(true);
        Self { stream }
    }

    /// Connects to `addr` and sends a valid PROXY v2 header with this socket's own addresses.
    pub async fn connect_proxied(addr: SocketAddr) -> Self {
        let mut client = Self::connect(addr).await;
        let header = proxy_v2(client.local_addr(), addr);
        client.send(&header).await;
        client
    }

    /// This end's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.stream
            .local_addr()
            .expect("local address of a connected socket")
    }

    /// Writes `bytes`; a write error (the server already closed) is ignored, [`RawClient::closed_within`] tells.
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// Half-closes the connection (sends FIN): the server sees EOF, we can still read its answer.
    pub async fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    /// Reads one MQTT packet (first byte, body) within `deadline`; `None` on EOF, error, timeout or garbage.
    pub async fn read_packet(&mut self, deadline: Duration) -> Option<(u8, Vec<u8>)> {
        read_packet(&mut self.stream, deadline).await
    }

    /// Waits up to `deadline` for the server to close the connection, collecting what it sent meanwhile.
    pub async fn closed_within(&mut self, deadline: Duration) -> Closed {
        let end = Instant::now() + deadline;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(end, self.stream.read(&mut buf)).await {
                Err(_) => return Closed::StillOpen(got),
                Ok(Ok(0)) | Ok(Err(_)) => return Closed::After(got),
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            }
        }
    }
}

/// Reads one MQTT packet (first byte, body) from any stream (TCP, TLS) within `deadline`; `None` on EOF, error,
/// timeout or a remaining length longer than four bytes.
pub async fn read_packet<S: AsyncRead + Unpin>(
    stream: &mut S,
    deadline: Duration,
) -> Option<(u8, Vec<u8>)> {
    let read = async {
        let first = stream.read_u8().await.ok()?;
        let mut len = 0usize;
        for shift in 0..4 {
            let b = stream.read_u8().await.ok()?;
            len |= usize::from(b & 0x7F) << (7 * shift);
            if b & 0x80 == 0 {
                let mut body = vec![0; len];
                stream.read_exact(&mut body).await.ok()?;
                return Some((first, body));
            }
        }
        None
    };
    tokio::time::timeout(deadline, read).await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_connect_and_lengths() {
        assert_eq!(remaining_length(0), vec![0]);
        assert_eq!(remaining_length(127), vec![0x7F]);
        assert_eq!(remaining_length(128), vec![0x80, 0x01]);
        assert_eq!(remaining_length(16_383), vec![0xFF, 0x7F]);
        let c = Connect::new(4, "a").encode();
        assert_eq!(
            c,
            vec![
                0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 1, b'a'
            ]
        );
        let mut v5 = Connect::new(5, "a");
        v5.will = Some(("w", b"x"));
        let c = v5.encode();
        assert_eq!(c[1] as usize, c.len() - 2);
        assert_eq!(c[9], 0x06);
    }
}
