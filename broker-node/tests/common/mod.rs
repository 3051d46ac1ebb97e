//! Shared harness of the in-process tests: a node on 127.0.0.1:0, rumqttc clients whose events arrive on a
//! channel, a raw-socket client speaking through our codec, and deadlines on everything.
#![allow(dead_code, clippy::unwrap_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use fleetgate_broker::{Node, NodeHandle};
use fleetgate_config::node::{LimitsConfig, NodeConfig};
use fleetgate_protocol::mqtt::{Codec, Connect, Packet, ProtocolLevel};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::CancellationToken;

/// Upper bound of any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(5);
/// Upper bound of a whole test.
pub const TEST_DEADLINE: Duration = Duration::from_secs(30);

/// Runs a test body under [`TEST_DEADLINE`].
pub async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_DEADLINE, f)
        .await
        .expect("test exceeded its deadline");
}

/// A running node and its shutdown token (cancelled on drop).
pub struct TestNode {
    pub handle: Option<NodeHandle>,
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
}

impl TestNode {
    pub async fn start(limits: LimitsConfig) -> TestNode {
        let mut config = NodeConfig::local("test-node", "127.0.0.1:0".parse().unwrap());
        config.limits = limits;
        TestNode::start_config(config).await
    }

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

    pub fn handle(&self) -> &NodeHandle {
        self.handle.as_ref().unwrap()
    }

    /// Polls `f` until it returns true, up to [`WAIT`].
    pub async fn eventually(&self, what: &str, mut f: impl FnMut(&NodeHandle) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !f(self.handle()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Events of a rumqttc event loop, forwarded from a background task (which stops at the first error so
/// rumqttc does not reconnect behind the test's back).
pub struct Events<E> {
    pub rx: mpsc::UnboundedReceiver<Result<E, String>>,
    task: tokio::task::JoinHandle<()>,
}

impl<E> Events<E> {
    /// Kills the event loop, closing the socket without DISCONNECT (an ungraceful close).
    pub fn kill(self) {
        self.task.abort();
    }
}

impl<E: std::fmt::Debug> Events<E> {
    /// The next event matching `pick`, skipping others; panics after [`WAIT`].
    pub async fn next_matching<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&E) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let ev = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
                .unwrap_or_else(|| panic!("event loop ended while waiting for {what}"));
            match ev {
                Ok(ev) => {
                    if let Some(t) = pick(&ev) {
                        return t;
                    }
                }
                Err(e) => panic!("connection error while waiting for {what}: {e}"),
            }
        }
    }

    /// The connection error the event loop ended with (skipping events); panics after [`WAIT`].
    pub async fn error(&mut self) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .expect("timed out waiting for an error")
            {
                Some(Ok(_)) => {}
                Some(Err(e)) => return e,
                None => return "closed".into(),
            }
        }
    }

    /// Asserts nothing matching `pick` arrives within `quiet`.
    pub async fn assert_none(&mut self, quiet: Duration, mut pick: impl FnMut(&E) -> bool) {
        let deadline = tokio::time::Instant::now() + quiet;
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            if let Ok(ev) = ev {
                assert!(!pick(&ev), "unexpected event {ev:?}");
            }
        }
    }
}

/// A v3.1.1 rumqttc client, connected (CONNACK seen).
pub async fn v3_client(
    addr: SocketAddr,
    id: &str,
    tweak: impl FnOnce(&mut rumqttc::MqttOptions),
) -> (rumqttc::AsyncClient, Events<rumqttc::Event>) {
    let mut opts = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    tweak(&mut opts);
    let (client, mut el) = rumqttc::AsyncClient::new(opts, 64);
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(ev) => {
                    if tx.send(Ok(ev)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            }
        }
    });
    let mut events = Events { rx, task };
    events
        .next_matching("CONNACK", |e| match e {
            rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)) => Some(()),
            _ => None,
        })
        .await;
    (client, events)
}

/// A v5 rumqttc client; returns the CONNACK too.
pub async fn v5_client(
    addr: SocketAddr,
    id: &str,
    tweak: impl FnOnce(&mut rumqttc::v5::MqttOptions),
) -> (
    rumqttc::v5::AsyncClient,
    Events<rumqttc::v5::Event>,
    rumqttc::v5::mqttbytes::v5::ConnAck,
) {
    use rumqttc::v5::{Event, Incoming};
    let mut opts = rumqttc::v5::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    tweak(&mut opts);
    let (client, mut el) = rumqttc::v5::AsyncClient::new(opts, 64);
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(ev) => {
                    if tx.send(Ok(ev)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            }
        }
    });
    let mut events = Events { rx, task };
    let connack = events
        .next_matching("CONNACK", |e| match e {
            Event::Incoming(Incoming::ConnAck(ack)) => Some(ack.clone()),
            _ => None,
        })
        .await;
    (client, events, connack)
}

/// v3 PUBLISH picker.
pub fn v3_publish(e: &rumqttc::Event) -> Option<rumqttc::Publish> {
    match e {
        rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => Some(p.clone()),
        _ => None,
    }
}

/// v3 SUBACK picker.
pub fn v3_suback(e: &rumqttc::Event) -> Option<()> {
    matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))).then_some(())
}

/// v5 PUBLISH picker.
pub fn v5_publish(e: &rumqttc::v5::Event) -> Option<rumqttc::v5::mqttbytes::v5::Publish> {
    match e {
        rumqttc::v5::Event::Incoming(rumqttc::v5::Incoming::Publish(p)) => Some(p.clone()),
        _ => None,
    }
}

/// v5 SUBACK picker.
pub fn v5_suback(e: &rumqttc::v5::Event) -> Option<()> {
    matches!(
        e,
        rumqttc::v5::Event::Incoming(rumqttc::v5::Incoming::SubAck(_))
    )
    .then_some(())
}

/// A client on a raw socket, for what rumqttc will not do (stop pinging, send garbage, skip CONNECT).
pub struct RawClient {
    pub stream: TcpStream,
    pub codec: Codec,
    buf: BytesMut,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr, level: ProtocolLevel) -> RawClient {
        let stream = TcpStream::connect(addr).await.unwrap();
        RawClient::over(stream, level)
    }

    pub fn over(stream: TcpStream, level: ProtocolLevel) -> RawClient {
        RawClient {
            stream,
            codec: Codec::client(level, 16 * 1024 * 1024),
            buf: BytesMut::new(),
        }
    }

    pub async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        self.codec.encode(packet, &mut out).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
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
