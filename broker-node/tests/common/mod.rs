//! What only the broker's in-process tests need (rumqttc clients, deadlines and the rest come from
//! `fleetgate-testkit`): a node started in process on 127.0.0.1:0, and a client on a raw socket speaking through
//! our own codec.
#![allow(dead_code, clippy::unwrap_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::time::Duration;

use bytes::BytesMut;
use fleetgate_broker::{Node, NodeHandle};
use fleetgate_config::node::{LimitsConfig, NodeConfig};
use fleetgate_protocol::mqtt::{
    Codec, Connect, Packet, ProtocolLevel, QoS, Subscribe, SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::CancellationToken;

use fleetgate_testkit::WAIT;

/// Upper bound of a whole test.
pub const TEST_DEADLINE: Duration = Duration::from_secs(30);

/// Runs a test body under [`TEST_DEADLINE`].
pub async fn bounded<F: Future<Output = ()>>(f: F) {
    fleetgate_testkit::bounded(TEST_DEADLINE, f).await;
}

/// Runs `test` on a fresh node with `limits` under [`TEST_DEADLINE`]. An async closure, so that the node is moved
/// into the test's future whole and lives until it ends (a closure returning `async move` would capture only the
/// fields it reads, and the node would stop at once).
pub async fn with_node(limits: LimitsConfig, test: impl AsyncFnOnce(TestNode)) {
    bounded(async { test(TestNode::start(limits).await).await }).await;
}

/// A running node and its shutdown token (cancelled on drop).
pub struct TestNode {
    /// The node (taken by a test that waits for its end).
    pub handle: Option<NodeHandle>,
    /// Its first MQTT listener.
    pub addr: SocketAddr,
    /// Cancelled on drop, or by a test to shut the node down.
    pub shutdown: CancellationToken,
}

impl TestNode {
    /// A local node with `limits`.
    pub async fn start(limits: LimitsConfig) -> TestNode {
        let mut config = NodeConfig::local("test-node", "127.0.0.1:0".parse().unwrap());
        config.limits = limits;
        TestNode::start_config(config).await
    }

    /// A node from `config`.
    pub async fn start_config(config: NodeConfig) -> TestNode {
        let shutdown = CancellationToken::new();
        let handle = Node::start(config, shutdown.clone()).await.unwrap();
        let addr = handle.mqtt_addrs()[0];
        TestNode {
            handle: Some(handle),
            addr,
            shutdown,
        }
    }

    /// A [`CodecClient`] at `level` that sent `connect` and read its CONNACK.
    pub async fn client(&self, level: ProtocolLevel, connect: Connect) -> CodecClient {
        let mut client = CodecClient::connect(self.addr, level).await;
        client.mqtt_connect(connect).await;
        client
    }

    /// Waits until the node holds a retained message (`true`) or none (`false`).
    pub async fn wait_retained(&self, any: bool) {
        self.eventually("retained messages", |h| {
            (h.broker().retained_count() > 0) == any
        })
        .await;
    }

    /// Waits until the session of `id` is offline (kept, not connected).
    pub async fn wait_offline(&self, id: &str) {
        self.eventually(&format!("{id} offline"), |h| {
            h.broker().client_info(id).is_some_and(|i| !i.connected)
        })
        .await;
    }

    /// The running node.
    pub fn handle(&self) -> &NodeHandle {
        self.handle.as_ref().unwrap()
    }

    /// Polls `f` until it returns true, up to [`WAIT`].
    pub async fn eventually(&self, what: &str, mut f: impl FnMut(&NodeHandle) -> bool) {
        let handle = self.handle();
        fleetgate_testkit::wait_until(WAIT, what, || f(handle)).await;
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// rumqttc 3.1.1 options for a persistent session.
pub fn persistent(o: &mut rumqttc::MqttOptions) {
    o.set_clean_session(false);
}

/// A clean-start CONNECT for client `id`.
pub fn connect(id: &str) -> Connect {
    Connect {
        client_id: id.into(),
        clean_start: true,
        ..Connect::default()
    }
}

/// A client on a raw socket speaking through our codec, for what rumqttc will not do (stop pinging, send garbage,
/// skip CONNECT) with packets built as our types.
pub struct CodecClient {
    /// The socket.
    pub stream: TcpStream,
    /// Our codec, in client mode.
    pub codec: Codec,
    buf: BytesMut,
}

impl CodecClient {
    /// Connects to `addr`; nothing sent yet.
    pub async fn connect(addr: SocketAddr, level: ProtocolLevel) -> CodecClient {
        let stream = TcpStream::connect(addr).await.unwrap();
        CodecClient::over(stream, level)
    }

    /// A client over an open `stream` (after a PROXY header, say).
    pub fn over(stream: TcpStream, level: ProtocolLevel) -> CodecClient {
        CodecClient {
            stream,
            codec: Codec::client(level, 16 * 1024 * 1024),
            buf: BytesMut::new(),
        }
    }

    /// Encodes and sends `packet`.
    pub async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        self.codec.encode(packet, &mut out).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    /// Sends `bytes` as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// SUBSCRIBE to one filter at `qos`; waits for the SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) {
        let options = SubscriptionOptions {
            qos,
            ..Default::default()
        };
        self.send(Packet::Subscribe(Subscribe {
            packet_id: NonZeroU16::MIN,
            id: None,
            user_properties: Vec::new(),
            topic_filters: vec![(filter.into(), options)],
        }))
        .await;
        let ack = self.recv().await;
        assert!(matches!(ack, Some(Packet::SubscribeAck(_))), "{ack:?}");
    }

    /// Sends CONNECT and returns the CONNACK.
    pub async fn mqtt_connect(&mut self, connect: Connect) -> Packet {
        self.send(Packet::Connect(Box::new(connect))).await;
        self.recv().await.expect("no CONNACK")
    }

    /// Next packet, or `None` when the server closed the connection; panics after [`WAIT`].
    pub async fn recv(&mut self) -> Option<Packet> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(p) = self.codec.decode(&mut self.buf).unwrap() {
                return Some(p);
            }
            let n = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf))
                .await
                .expect("timed out waiting for a packet");
            match n {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Reads until the server closes; returns the packets seen (panics after [`WAIT`]).
    pub async fn until_closed(&mut self) -> Vec<Packet> {
        let mut seen = Vec::new();
        while let Some(p) = self.recv().await {
            seen.push(p);
        }
        seen
    }
}
