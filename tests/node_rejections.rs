//! End-to-end tests of the ways a real `fleetgate node` refuses a connection: a PROXY header from an untrusted peer,
//! none at all, a garbage, truncated or late one, garbage MQTT after a good header, oversized packets and a client
//! that never completes CONNECT. Each must close the connection without a CONNACK (or with a v5 DISCONNECT once
//! connected), and show up in `/metrics` and as a JSON log event.

use std::time::{Duration, Instant};

use fleetgate_testkit::clients::mosquitto_pub;
use fleetgate_testkit::raw::{self, Closed, Connect, RawClient};
use fleetgate_testkit::{MqttVersion, Node, NodeSpec, ProxySender};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_fleetgate");

/// Bound on waits for a rejection, a metric or a log line.
const WAIT: Duration = Duration::from_secs(15);

/// Asserts the server closed the connection without sending a byte.
async fn assert_closed_silently(client: &mut RawClient, what: &str) {
    match client.closed_within(WAIT).await {
        Closed::After(bytes) => assert!(
            bytes.is_empty(),
            "{what}: server sent {bytes:?} before closing"
        ),
        Closed::StillOpen(bytes) => panic!("{what}: still open after {WAIT:?} (got {bytes:?})"),
    }
}

async fn wait_for_event(node: &Node, event: &str, reason: &str) -> Value {
    node.process
        .wait_for_log(WAIT, &format!("event={event} reason={reason}"), |l| {
            l["event"] == event && l["reason"] == reason
        })
        .await
}

#[tokio::test]
async fn proxy_header_from_an_untrusted_peer_is_rejected() {
    let node = Node::start(BIN, &NodeSpec::with_proxy(&["10.0.0.0/8"])).await;
    let mut client = RawClient::connect_proxied(node.mqtt).await;
    client.send(&Connect::new(4, "untrusted").encode()).await;
    assert_closed_silently(&mut client, "untrusted peer").await;
    node.wait_for_metric(
        "fleetgate_proxy_rejected_total",
        &[("reason", "untrusted_peer")],
        1.0,
        WAIT,
    )
    .await;
    node.wait_for_metric(
        "fleetgate_connections_total",
        &[("result", "proxy_rejected")],
        1.0,
        WAIT,
    )
    .await;
    wait_for_event(&node, "proxy_rejected", "untrusted_peer").await;

    // A real client through a (well-formed) PROXY sender on an untrusted address gets nowhere either.
    let px = ProxySender::start(node.mqtt).await;
    let out = mosquitto_pub(px.addr(), MqttVersion::V311, &["-t", "t", "-m", "x"]).await;
    assert!(
        !out.success(),
        "publish through an untrusted proxy succeeded: {out:?}"
    );
    assert_eq!(
        node.metric("fleetgate_connections_total", &[("result", "accepted")])
            .await,
        0.0
    );
}

#[tokio::test]
async fn missing_proxy_header_is_rejected() {
    let node = Node::start(BIN, &NodeSpec::behind_local_proxy()).await;
    let mut client = RawClient::connect(node.mqtt).await;
    client.send(&Connect::new(4, "no-header").encode()).await;
    assert_closed_silently(&mut client, "CONNECT without PROXY header").await;
    node.wait_for_metric(
        "fleetgate_proxy_rejected_total",
        &[("reason", "missing")],
        1.0,
        WAIT,
    )
    .await;
    wait_for_event(&node, "proxy_rejected", "missing").await;

    let out = mosquitto_pub(node.mqtt, MqttVersion::V5, &["-t", "t", "-m", "x"]).await;
    assert!(
        !out.success(),
        "mosquitto_pub straight to a PROXY-required listener succeeded: {out:?}"
    );
    assert_eq!(
        node.metric("fleetgate_connections_total", &[("result", "accepted")])
            .await,
        0.0
    );
}

#[tokio::test]
async fn garbage_truncated_and_late_proxy_headers_are_rejected() {
    let node = Node::start(BIN, &NodeSpec::behind_local_proxy()).await;
    let valid = raw::proxy_v2("192.0.2.1:4242".parse().unwrap(), node.mqtt);

    // v2 signature with an unknown version nibble (3).
    let mut bad_version = valid.clone();
    bad_version[12] = 0x31;
    let mut client = RawClient::connect(node.mqtt).await;
    client.send(&bad_version).await;
    assert_closed_silently(&mut client, "v2 header with version 3").await;

    // A v1 line that is not PROXY grammar.
    let mut client = RawClient::connect(node.mqtt).await;
    client.send(b"PROXY NONSENSE here\r\n").await;
    assert_closed_silently(&mut client, "garbage v1 header").await;
    wait_for_event(&node, "proxy_rejected", "malformed").await;

    // Half a header, then EOF.
    let mut client = RawClient::connect(node.mqtt).await;
    client.send(&valid[..14]).await;
    client.shutdown_write().await;
    assert_closed_silently(&mut client, "truncated header").await;
    wait_for_event(&node, "proxy_rejected", "truncated").await;

    // Half a header, then silence: the 2 s proxy_timeout of NodeSpec ends it.
    let mut client = RawClient::connect(node.mqtt).await;
    client.send(&valid[..14]).await;
    let start = Instant::now();
    assert_closed_silently(&mut client, "stalled header").await;
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "stalled header closed after {:?}",
        start.elapsed()
    );
    wait_for_event(&node, "proxy_rejected", "timeout").await;

    node.wait_for_metric(
        "fleetgate_proxy_rejected_total",
        &[("reason", "malformed")],
        2.0,
        WAIT,
    )
    .await;
    node.wait_for_metric(
        "fleetgate_proxy_rejected_total",
        &[("reason", "truncated")],
        1.0,
        WAIT,
    )
    .await;
    node.wait_for_metric(
        "fleetgate_proxy_rejected_total",
        &[("reason", "timeout")],
        1.0,
        WAIT,
    )
    .await;
    node.wait_for_metric(
        "fleetgate_connections_total",
        &[("result", "proxy_rejected")],
        4.0,
        WAIT,
    )
    .await;
}

#[tokio::test]
async fn garbage_mqtt_after_a_good_header_is_rejected() {
    let node = Node::start(BIN, &NodeSpec::behind_local_proxy()).await;
    // Not MQTT at all.
    let mut client = RawClient::connect_proxied(node.mqtt).await;
    client.send(b"GET / HTTP/1.1\r\nHost: broker\r\n\r\n").await;
    assert_closed_silently(&mut client, "HTTP instead of CONNECT").await;
    node.wait_for_metric(
        "fleetgate_connections_total",
        &[("result", "protocol_error")],
        1.0,
        WAIT,
    )
    .await;
    wait_for_event(&node, "disconnect", "protocol_error").await;

    // A good v5 CONNECT, then a reserved packet type: DISCONNECT (0x81 malformed or 0x82 protocol error), close.
    let mut client = RawClient::connect_proxied(node.mqtt).await;
    client
        .send(&Connect::new(5, "garbage-later").encode())
        .await;
    assert_eq!(
        client.read_packet(WAIT).await.map(|p| p.0),
        Some(0x20),
        "CONNACK"
    );
    client.send(&[0x00, 0x00]).await;
    match client.closed_within(WAIT).await {
        Closed::After(bytes) => {
            assert_eq!(
                bytes.first(),
                Some(&0xE0),
                "expected a v5 DISCONNECT, got {bytes:?}"
            );
            assert!(
                matches!(bytes.get(2), Some(0x81 | 0x82)),
                "DISCONNECT reason {bytes:?}"
            );
        }
        Closed::StillOpen(bytes) => panic!("still open after a reserved packet type ({bytes:?})"),
    }
    node.wait_for_metric(
        "fleetgate_disconnects_total",
        &[("reason", "protocol_error")],
        2.0,
        WAIT,
    )
    .await;
}

#[tokio::test]
async fn oversized_packets_are_rejected() {
    let mut spec = NodeSpec::behind_local_proxy();
    spec.max_packet_size = Some(1024);
    let node = Node::start(BIN, &spec).await;

    // A CONNECT announcing 1 MB: refused from the fixed header, before the body is buffered.
    let mut client = RawClient::connect_proxied(node.mqtt).await;
    let mut huge = vec![0x10];
    huge.extend(raw::remaining_length(1_000_000));
    huge.extend_from_slice(&[0; 64]);
    client.send(&huge).await;
    assert_closed_silently(&mut client, "1 MB CONNECT").await;
    node.wait_for_metric(
        "fleetgate_connections_total",
        &[("result", "too_large")],
        1.0,
        WAIT,
    )
    .await;
    wait_for_event(&node, "disconnect", "too_large").await;

    // Connected clients sending a 4 KiB PUBLISH: v5 gets DISCONNECT 0x95 Packet too large, 3.1.1 a close.
    for level in [5u8, 4] {
        let mut client = RawClient::connect_proxied(node.mqtt).await;
        client
            .send(&Connect::new(level, &format!("big-{level}")).encode())
            .await;
        let (kind, connack) = client.read_packet(WAIT).await.expect("CONNACK");
        assert_eq!(
            (kind, connack.get(1)),
            (0x20, Some(&0)),
            "level {level} CONNACK {connack:?}"
        );
        client
            .send(&raw::publish(level, "big", &[b'x'; 4096]))
            .await;
        match client.closed_within(WAIT).await {
            Closed::After(bytes) if level == 5 => {
                assert_eq!(
                    (bytes.first(), bytes.get(2)),
                    (Some(&0xE0), Some(&0x95)),
                    "v5 DISCONNECT {bytes:?}"
                )
            }
            Closed::After(bytes) => assert!(bytes.is_empty(), "3.1.1 got {bytes:?}"),
            Closed::StillOpen(bytes) => {
                panic!("level {level}: still open after a 4 KiB packet ({bytes:?})")
            }
        }
    }
    node.wait_for_metric(
        "fleetgate_disconnects_total",
        &[("reason", "too_large")],
        3.0,
        WAIT,
    )
    .await;
}

#[tokio::test]
async fn a_client_that_never_completes_connect_is_dropped() {
    let mut spec = NodeSpec::behind_local_proxy();
    spec.connect_timeout = Some("1s".into());
    let node = Node::start(BIN, &spec).await;

    // Silent after the PROXY header.
    let mut client = RawClient::connect_proxied(node.mqtt).await;
    let start = Instant::now();
    assert_closed_silently(&mut client, "silent client").await;
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(800) && elapsed < Duration::from_secs(4),
        "closed after {elapsed:?}"
    );

    // Slow loris: one CONNECT byte every 200 ms; the deadline covers the whole CONNECT, not each byte.
    let mut client = RawClient::connect_proxied(node.mqtt).await;
    let connect = Connect::new(4, "slow-loris-client-id").encode();
    let start = Instant::now();
    let mut closed = false;
    for byte in &connect {
        client.send(&[*byte]).await;
        if let Closed::After(bytes) = client.closed_within(Duration::from_millis(200)).await {
            assert!(bytes.is_empty(), "slow loris got {bytes:?}");
            closed = true;
            break;
        }
    }
    let elapsed = start.elapsed();
    assert!(
        closed,
        "a {}-byte CONNECT sent over {elapsed:?} was accepted",
        connect.len()
    );
    assert!(
        elapsed < Duration::from_secs(4),
        "slow loris dropped after {elapsed:?}"
    );

    node.wait_for_metric(
        "fleetgate_connections_total",
        &[("result", "connect_timeout")],
        2.0,
        WAIT,
    )
    .await;
    wait_for_event(&node, "disconnect", "connect_timeout").await;
}
