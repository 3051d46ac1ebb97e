//! A listener with `proxy_protocol = "required"`: a PROXY v2 header from a trusted peer, then MQTT; the client
//! address and `GET /clients/{id}` reflect the header; missing, garbage and untrusted headers are refused before
//! any MQTT byte is read, and counted.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use fleetgate_config::admin::AdminConfig;
use fleetgate_config::node::{NodeConfig, ProxyMode};
use fleetgate_protocol::mqtt::{Packet, ProtocolLevel};
use fleetgate_protocol::proxy::{HeaderSpec, PeerIdentity, encode_v2, encode_v2_local};
use fleetgate_testkit::http::{self, Response};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn proxied_node(trusted: &str) -> TestNode {
    let mut config = NodeConfig::local("proxy-node", "127.0.0.1:0".parse().unwrap());
    config.listeners[0].proxy_protocol = ProxyMode::Required;
    config.listeners[0].trusted_proxies = vec![trusted.parse().unwrap()];
    config.admin = Some(AdminConfig::local("127.0.0.1:0".parse().unwrap()));
    TestNode::start_config(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_header_then_connect() {
    bounded(async {
        let node = proxied_node("127.0.0.1/32").await;
        let mut stream = TcpStream::connect(node.addr).await.unwrap();
        let spec = HeaderSpec {
            source: "203.0.113.7:5555".parse().unwrap(),
            destination: "198.51.100.1:1883".parse().unwrap(),
            identity: PeerIdentity::default(),
            crc32c: true,
        };
        stream.write_all(&encode_v2(&spec)).await.unwrap();
        let mut raw = CodecClient::over(stream, ProtocolLevel::V311);
        let ack = raw.mqtt_connect(connect("behind-lb")).await;
        assert!(matches!(ack, Packet::ConnectAck(_)), "{ack:?}");
        let info = node.handle().broker().client_info("behind-lb").unwrap();
        assert_eq!(info.source, Some(spec.source));

        let admin = node.handle().admin_addr().unwrap();
        let Response { status, body } = http::get(admin, "/clients/behind-lb").await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains("\"connected\":true") && body.contains("203.0.113.7:5555"),
            "{body}"
        );
        assert!(body.contains("\"node\":\"proxy-node\""), "{body}");
        assert_eq!(http::get(admin, "/clients/nobody").await.status, 404);
        assert_eq!(http::get(admin, "/readyz").await.status, 200);

        // A LOCAL header (LB health check) proceeds with the peer's own address.
        let mut stream = TcpStream::connect(node.addr).await.unwrap();
        let local_addr = stream.local_addr().unwrap();
        stream.write_all(&encode_v2_local()).await.unwrap();
        let mut raw = CodecClient::over(stream, ProtocolLevel::V311);
        assert!(matches!(
            raw.mqtt_connect(connect("probe")).await,
            Packet::ConnectAck(_)
        ));
        assert_eq!(
            node.handle().broker().client_info("probe").unwrap().source,
            Some(local_addr)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections() {
    bounded(async {
        let node = proxied_node("127.0.0.1/32").await;
        // Missing header: MQTT straight away.
        let mut raw = CodecClient::connect(node.addr, ProtocolLevel::V311).await;
        raw.send(Packet::Connect(Box::new(connect("no-header"))))
            .await;
        assert!(raw.until_closed().await.is_empty());
        // Garbage, and a truncated v2 header.
        let mut raw = CodecClient::connect(node.addr, ProtocolLevel::V311).await;
        raw.send_raw(b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c\x01")
            .await;
        raw.stream.shutdown().await.unwrap();
        assert!(raw.until_closed().await.is_empty());
        let mut raw = CodecClient::connect(node.addr, ProtocolLevel::V311).await;
        raw.send_raw(b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(raw.until_closed().await.is_empty());
        assert!(node.handle().broker().client_info("no-header").is_none());

        // Untrusted peer: refused before reading, even with a valid header.
        let strict = proxied_node("10.0.0.0/8").await;
        let mut stream = TcpStream::connect(strict.addr).await.unwrap();
        let _ = stream.write_all(&encode_v2_local()).await;
        let mut raw = CodecClient::over(stream, ProtocolLevel::V311);
        assert!(raw.until_closed().await.is_empty());

        let admin = strict.handle().admin_addr().unwrap();
        let metrics = http::get(admin, "/metrics").await.body;
        for reason in ["untrusted_peer", "missing"] {
            let line = format!("fleetgate_proxy_rejected_total{{reason=\"{reason}\"}}");
            assert!(metrics.contains(&line), "{line} not in {metrics}");
        }
        assert!(
            metrics.contains("fleetgate_dropped_messages_total{reason=\"acl\"} "),
            "{metrics}"
        );
    })
    .await;
}
