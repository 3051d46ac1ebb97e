//! [`RawClient`]: one raw MQTT connection over TCP or TLS, for what a well-behaved client library will not do —
//! arbitrary bytes ([`crate::raw`]), a spoofed PROXY header, exact CONNACK/SUBACK/PUBACK reason codes, silence, a
//! half-close — and how the server ended it ([`Closed`]).

use std::net::SocketAddr;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::pki::{CertFiles, Pki, SERVER_CN};
use crate::proxy::proxy_v2;
use crate::raw::{self, Connect};
use crate::wait::WAIT;

/// Any byte stream a raw client can run over (TCP, TLS).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// How a connection ended, as seen by a raw client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// The server closed (EOF or reset) after sending these bytes.
    After(Vec<u8>),
    /// Still open when the wait ended; these bytes arrived meanwhile.
    StillOpen(Vec<u8>),
}

/// A raw connection to a listener.
pub struct RawClient {
    stream: Box<dyn Stream>,
    local: SocketAddr,
    /// Protocol level of the last CONNECT sent with [`RawClient::mqtt_connect`] (4 until then): how SUBSCRIBE and
    /// PUBLISH are encoded and their acknowledgements read.
    level: u8,
}

impl RawClient {
    /// Connects to `addr` over TCP.
    pub async fn connect(addr: SocketAddr) -> Self {
        Self::connect_from(addr, None, &[]).await
    }

    /// Connects to `addr` and sends a valid PROXY v2 header with this socket's own addresses.
    pub async fn connect_proxied(addr: SocketAddr) -> Self {
        let mut client = Self::connect(addr).await;
        let header = proxy_v2(client.local_addr(), addr);
        client.send(&header).await;
        client
    }

    /// Connects to `addr` over TCP from the local address `from` when given (e.g. `127.0.0.2:0`, an untrusted
    /// peer), then sends `preamble` (a PROXY header, or nothing).
    pub async fn connect_from(addr: SocketAddr, from: Option<SocketAddr>, preamble: &[u8]) -> Self {
        let socket = TcpSocket::new_v4().expect("socket");
        if let Some(from) = from {
            socket.bind(from).expect("bind the client address");
        }
        let stream: TcpStream = socket
            .connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let _ = stream.set_nodelay(true);
        let local = stream
            .local_addr()
            .expect("local address of a connected socket");
        let mut client = Self {
            stream: Box::new(stream),
            local,
            level: 4,
        };
        client.send(preamble).await;
        client
    }

    /// Connects to `addr` over TLS (server name [`SERVER_CN`]) trusting `pki`, presenting `client` when given.
    pub async fn connect_tls(addr: SocketAddr, pki: &Pki, client: Option<&CertFiles>) -> Self {
        let tcp = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let local = tcp
            .local_addr()
            .expect("local address of a connected socket");
        let connector = TlsConnector::from(pki.client_config(client));
        let name = ServerName::try_from(SERVER_CN).expect("server name");
        let tls = connector
            .connect(name, tcp)
            .await
            .unwrap_or_else(|e| panic!("TLS handshake with {addr}: {e}"));
        Self {
            stream: Box::new(tls),
            local,
            level: 4,
        }
    }

    /// This end's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Writes `bytes`; a write error (the server already closed) is ignored, [`RawClient::closed_within`] tells.
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
        let _ = self.stream.flush().await;
    }

    /// Half-closes the connection (sends FIN): the server sees EOF, we can still read its answer.
    pub async fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    /// Reads one MQTT packet (first byte, body) within `deadline`; `None` on EOF, error, timeout or garbage.
    pub async fn read_packet(&mut self, deadline: Duration) -> Option<(u8, Vec<u8>)> {
        raw::read_packet_within(&mut self.stream, deadline).await
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

    /// Whether the server closes the connection within [`WAIT`] (whatever it sends first).
    pub async fn closed(&mut self) -> bool {
        matches!(self.closed_within(WAIT).await, Closed::After(_))
    }

    /// Reads a CONNACK: (session present, reason/return code); `None` when the server closed without one. Panics on
    /// any other packet.
    pub async fn read_connack(&mut self) -> Option<(bool, u8)> {
        let (first, body) = self.read_packet(WAIT).await?;
        assert_eq!(first, 0x20, "expected CONNACK, got {first:#x} {body:?}");
        Some((body.first().is_some_and(|f| f & 1 == 1), *body.get(1)?))
    }

    /// Sends `connect` and returns the CONNACK reason/return code; `None` when the server closed without one.
    pub async fn mqtt_connect(&mut self, connect: &Connect<'_>) -> Option<u8> {
        self.level = connect.level;
        self.send(&connect.encode()).await;
        self.read_connack().await.map(|(_, code)| code)
    }

    /// SUBSCRIBE to one filter at QoS 1; returns the SUBACK code.
    pub async fn subscribe(&mut self, packet_id: u16, filter: &str) -> u8 {
        self.send(&raw::subscribe(self.level, packet_id, filter, 1))
            .await;
        let (first, body) = self.read_packet(WAIT).await.expect("SUBACK");
        assert_eq!(first, 0x90, "expected SUBACK, got {first:#x}");
        // packet id (2), v5 properties length (1, empty), then the codes.
        let at = if self.level == 5 { 3 } else { 2 };
        body[at]
    }

    /// PUBLISH at QoS 1; returns the PUBACK reason (0 when a v5 PUBACK omits it, and always for 3.1.1).
    pub async fn publish_qos1(&mut self, packet_id: u16, topic: &str, payload: &[u8]) -> u8 {
        self.send(&raw::publish_qos1(self.level, packet_id, topic, payload))
            .await;
        let (first, body) = self.read_packet(WAIT).await.expect("PUBACK");
        assert_eq!(first, 0x40, "expected PUBACK, got {first:#x}");
        body.get(2).copied().unwrap_or(0)
    }
}
