//! Limits and protocol errors on raw sockets (what a well-behaved client library will not do): keep-alive
//! expiry, no CONNECT in time, oversized and malformed packets, a second CONNECT, v3.1.1 empty client ID,
//! takeover and shutdown reason codes, flow control.
#![allow(clippy::unwrap_used)]

mod common;

use std::num::NonZeroU16;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use fleetgate_config::node::LimitsConfig;
use fleetgate_protocol::mqtt::{Connect, ConnectAckReason, Packet, ProtocolLevel, Publish, QoS};
use fleetgate_testkit::WAIT;

fn disconnect_code(seen: &[Packet]) -> Option<u8> {
    match seen.last() {
        Some(Packet::Disconnect(d)) => Some(u8::from(d.reason_code)),
        _ => None,
    }
}

fn publish(topic: &str, qos: QoS, id: u16, payload: Bytes) -> Packet {
    Packet::Publish(Box::new(Publish {
        dup: false,
        retain: false,
        qos,
        topic: topic.into(),
        packet_id: NonZeroU16::new(id),
        payload,
        properties: None,
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_expiry() {
    with_node(LimitsConfig::default(), async |node| {
        let mut raw = node
            .client(
                ProtocolLevel::V5,
                Connect {
                    keep_alive: 1,
                    ..connect("sleepy")
                },
            )
            .await;
        let started = tokio::time::Instant::now();
        let seen = raw.until_closed().await;
        assert_eq!(disconnect_code(&seen), Some(0x8D), "{seen:?}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(1400) && took < Duration::from_secs(4),
            "{took:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_connect_within_timeout() {
    let limits = LimitsConfig {
        connect_timeout: Duration::from_millis(300),
        ..LimitsConfig::default()
    };
    with_node(limits, async |node| {
        let mut raw = CodecClient::connect(node.addr, ProtocolLevel::V311).await;
        assert!(raw.until_closed().await.is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_packet_disconnects() {
    let limits = LimitsConfig {
        max_packet_size: 1024,
        ..LimitsConfig::default()
    };
    with_node(limits, async |node| {
        let mut raw = node.client(ProtocolLevel::V5, connect("big")).await;
        raw.send(publish(
            "t",
            QoS::AtMostOnce,
            0,
            Bytes::from(vec![0u8; 2000]),
        ))
        .await;
        let seen = raw.until_closed().await;
        assert_eq!(disconnect_code(&seen), Some(0x95), "{seen:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_too_large_is_dropped_not_sent() {
    with_node(LimitsConfig::default(), async |node| {
        let mut small = node
            .client(
                ProtocolLevel::V5,
                Connect {
                    max_packet_size: std::num::NonZeroU32::new(100),
                    ..connect("small")
                },
            )
            .await;
        small.subscribe("t", QoS::AtMostOnce).await;
        let mut publ = node.client(ProtocolLevel::V5, connect("pub")).await;
        publ.send(publish(
            "t",
            QoS::AtMostOnce,
            0,
            Bytes::from(vec![1u8; 500]),
        ))
        .await;
        publ.send(publish(
            "t",
            QoS::AtMostOnce,
            0,
            Bytes::from_static(b"fits"),
        ))
        .await;
        match small.recv().await {
            Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"fits"),
            other => panic!("{other:?}"),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packet_closes() {
    with_node(LimitsConfig::default(), async |node| {
        let mut raw = node.client(ProtocolLevel::V311, connect("garbage")).await;
        // SUBSCRIBE with reserved flags 0000 (must be 0010).
        raw.send_raw(&[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00])
            .await;
        assert!(raw.until_closed().await.is_empty());
        node.eventually("session gone", |h| {
            h.broker().client_info("garbage").is_none()
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_connect_is_a_protocol_error() {
    with_node(LimitsConfig::default(), async |node| {
        let mut raw = node.client(ProtocolLevel::V5, connect("twice")).await;
        raw.send(Packet::Connect(Box::new(connect("twice")))).await;
        let seen = raw.until_closed().await;
        assert!(
            matches!(disconnect_code(&seen), Some(0x81 | 0x82)),
            "{seen:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_empty_client_id_needs_clean_session() {
    with_node(LimitsConfig::default(), async |node| {
        let mut raw = CodecClient::connect(node.addr, ProtocolLevel::V311).await;
        let ack = raw.mqtt_connect(Connect { clean_start: false, ..Connect::default() }).await;
        assert!(matches!(&ack, Packet::ConnectAck(a) if a.reason_code == ConnectAckReason::ClientIdentifierNotValid), "{ack:?}");
        let mut raw = CodecClient::connect(node.addr, ProtocolLevel::V311).await;
        let ack = raw.mqtt_connect(Connect { clean_start: true, ..Connect::default() }).await;
        assert!(matches!(&ack, Packet::ConnectAck(a) if a.reason_code == ConnectAckReason::Success), "{ack:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_and_shutdown_reason_codes() {
    with_node(LimitsConfig::default(), async |node| {
        let mut first = node.client(ProtocolLevel::V5, connect("same")).await;
        let mut second = node.client(ProtocolLevel::V5, connect("same")).await;
        assert_eq!(disconnect_code(&first.until_closed().await), Some(0x8E));
        let mut v3 = node.client(ProtocolLevel::V311, connect("old-style")).await;
        node.shutdown.cancel();
        assert_eq!(disconnect_code(&second.until_closed().await), Some(0x8B));
        assert!(v3.until_closed().await.is_empty());
        let mut node = node;
        let handle = node.handle.take().unwrap();
        tokio::time::timeout(WAIT, handle.wait())
            .await
            .expect("shutdown within the grace period");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_receive_maximum_exceeded() {
    let limits = LimitsConfig {
        receive_maximum: 2,
        ..LimitsConfig::default()
    };
    with_node(limits, async |node| {
        let mut raw = node.client(ProtocolLevel::V5, connect("flood")).await;
        for id in 1..=3 {
            raw.send(publish("t", QoS::ExactlyOnce, id, Bytes::from_static(b"x")))
                .await;
        }
        let seen = raw.until_closed().await;
        assert_eq!(disconnect_code(&seen), Some(0x93), "{seen:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_window_limits_unacked_messages() {
    let limits = LimitsConfig {
        receive_maximum: 2,
        ..LimitsConfig::default()
    };
    with_node(limits, async |node| {
        let mut sub = node.client(ProtocolLevel::V5, connect("windowed")).await;
        sub.subscribe("w", QoS::AtLeastOnce).await;
        let mut publ = node.client(ProtocolLevel::V5, connect("pub")).await;
        for id in 1..=4 {
            publ.send(publish("w", QoS::AtLeastOnce, id, Bytes::from_static(b"m")))
                .await;
        }
        node.eventually("2 in flight, 2 queued", |h| {
            h.broker()
                .client_info("windowed")
                .is_some_and(|i| i.inflight == 2 && i.queued == 2)
        })
        .await;
        let mut ids = Vec::new();
        for _ in 0..2 {
            match sub.recv().await {
                Some(Packet::Publish(p)) => ids.push(p.packet_id.unwrap()),
                other => panic!("{other:?}"),
            }
        }
        for id in ids {
            let ack = fleetgate_protocol::mqtt::PublishAck {
                packet_id: id,
                reason_code: fleetgate_protocol::mqtt::PublishAckReason::Success,
                properties: Vec::new(),
                reason_string: None,
            };
            sub.send(Packet::PublishAck(ack)).await;
        }
        for _ in 0..2 {
            assert!(matches!(sub.recv().await, Some(Packet::Publish(_))));
        }
    })
    .await;
}
