//! End-to-end tests of the ways a real `fleetgate node` refuses a connection: a PROXY header from an untrusted peer,
//! none at all, a garbage, truncated or late one, garbage MQTT after a good header, oversized packets and a client
//! that never completes CONNECT, a remaining length in more bytes than needed. Each must close the connection
//! without a CONNACK (or with a v5 DISCONNECT once connected), and show up in `/metrics` and as a JSON log event.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{BIN, wait_disconnects};
use fleetgate_testkit::clients::mosquitto_pub;
use fleetgate_testkit::proxy::proxy_v2;
use fleetgate_testkit::raw::{self, Connect};
use fleetgate_testkit::{Closed, MqttVersion, Node, NodeSpec, ProxySender, RawClient, WAIT};
use serde_json::Value;

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

/// Waits until `name{key=value}` reaches `at_least` for every `(value, at_least)` of `table`.
async fn wait_counts(node: &Node, name: &str, key: &str, table: &[(&str, f64)]) {
    for (value, at_least) in table {
        node.admin
            .wait_count(name, &[(key, value)], *at_least)
            .await;
    }
}

/// A CONNECT `client` sends is refused before any MQTT byte is read: closed silently, counted and logged as
/// `proxy_rejected` with `reason`.
async fn assert_proxy_rejected(node: &Node, mut client: RawClient, reason: &str, what: &str) {
    client.send(&Connect::new(4, what).encode()).await;
    assert_closed_silently(&mut client, what).await;
    wait_counts(
        node,
        "fleetgate_proxy_rejected_total",
        "reason",
        &[(reason, 1.0)],
    )
    .await;
    wait_for_event(node, "proxy_rejected", reason).await;
}

/// `mosquitto_pub` to `addr` gets nowhere: it fails, and the node accepted no connection at all.
async fn assert_mosquitto_gets_nowhere(node: &Node, addr: SocketAddr, v: MqttVersion, what: &str) {
    let out = mosquitto_pub(addr, v, &["-t", "t", "-m", "x"]).await;
    assert!(!out.success(), "{what} succeeded: {out:?}");
    assert_eq!(
        node.admin
            .metric("fleetgate_connections_total", &[("result", "accepted")])
            .await,
        0.0
    );
}

/// A connection ended before CONNECT is counted as `connections_total{result}` and logged as a `disconnect` with
/// that reason.
async fn assert_ended_before_connect(node: &Node, result: &str, at_least: f64) {
    let counts = [(result, at_least)];
    wait_counts(node, "fleetgate_connections_total", "result", &counts).await;
    wait_for_event(node, "disconnect", result).await;
}

/// A client connected at `level` (CONNACK 0) sends `bytes`: MQTT 5 gets a DISCONNECT with one of `v5_reasons`
/// before the close, 3.1.1 a silent close.
async fn assert_disconnected_after(node: &Node, level: u8, bytes: &[u8], v5_reasons: &[u8]) {
    let id = format!("bad-packet-{level}-{}", bytes.len());
    let mut client = RawClient::connect_proxied(node.mqtt).await;
    let connack = client.mqtt_connect(&Connect::new(level, &id)).await;
    assert_eq!(connack, Some(0), "{id}: CONNACK");
    client.send(bytes).await;
    match client.closed_within(WAIT).await {
        Closed::After(got) if level == 5 => {
            assert_eq!(
                got.first(),
                Some(&0xE0),
                "{id}: expected a DISCONNECT, got {got:?}"
            );
            assert!(
                got.get(2).is_some_and(|r| v5_reasons.contains(r)),
                "{id}: DISCONNECT reason {got:?}"
            );
        }
        Closed::After(got) => assert!(got.is_empty(), "{id}: 3.1.1 got {got:?}"),
        Closed::StillOpen(got) => panic!("{id}: still open ({got:?})"),
    }
}

#[tokio::test]
async fn proxy_header_from_an_untrusted_peer_is_rejected() {
    let node = Node::start(BIN, &NodeSpec::with_proxy(&["10.0.0.0/8"])).await;
    let client = RawClient::connect_proxied(node.mqtt).await;
    assert_proxy_rejected(&node, client, "untrusted_peer", "untrusted").await;
    wait_counts(
        &node,
        "fleetgate_connections_total",
        "result",
        &[("proxy_rejected", 1.0)],
    )
    .await;

    // A real client through a (well-formed) PROXY sender on an untrusted address gets nowhere either.
    let px = ProxySender::start(node.mqtt).await;
    let what = "publish through an untrusted proxy";
    assert_mosquitto_gets_nowhere(&node, px.addr(), MqttVersion::V311, what).await;
}

#[tokio::test]
async fn missing_proxy_header_is_rejected() {
    let node = Node::start(BIN, &NodeSpec::behind_local_proxy()).await;
    let client = RawClient::connect(node.mqtt).await;
    assert_proxy_rejected(&node, client, "missing", "no-header").await;
    let what = "mosquitto_pub straight to a PROXY-required listener";
    assert_mosquitto_gets_nowhere(&node, node.mqtt, MqttVersion::V5, what).await;
}

#[tokio::test]
async fn garbage_truncated_and_late_proxy_headers_are_rejected() {
    let node = Node::start(BIN, &NodeSpec::behind_local_proxy()).await;
    let valid = proxy_v2("192.0.2.1:4242".parse().unwrap(), node.mqtt);

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

    let rejected = [("malformed", 2.0), ("truncated", 1.0), ("timeout", 1.0)];
    wait_counts(&node, "fleetgate_proxy_rejected_total", "reason", &rejected).await;
    wait_counts(
        &node,
        "fleetgate_connections_total",
        "result",
        &[("proxy_rejected", 4.0)],
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
    assert_ended_before_connect(&node, "protocol_error", 1.0).await;

    // A good v5 CONNECT, then a reserved packet type: DISCONNECT (0x81 malformed or 0x82 protocol error), close.
    assert_disconnected_after(&node, 5, &[0x00, 0x00], &[0x81, 0x82]).await;
    wait_disconnects(&node, "protocol_error", 2.0).await;
}

#[tokio::test]
async fn a_remaining_length_in_more_bytes_than_needed_is_malformed() {
    let node = Node::start(BIN, &NodeSpec::behind_local_proxy()).await;
    // A CONNECT whose remaining length (< 128) is written in two bytes: closed before any CONNACK (the protocol
    // level is not known yet).
    let connect = Connect::new(5, "padded-connect").encode();
    assert!(connect[1] < 0x80);
    let padded = [&[0x10, connect[1] | 0x80, 0x00][..], &connect[2..]].concat();
    let mut client = RawClient::connect_proxied(node.mqtt).await;
    client.send(&padded).await;
    assert_closed_silently(&mut client, "CONNECT with a padded remaining length").await;
    assert_ended_before_connect(&node, "protocol_error", 1.0).await;

    // The same CONNECT minimally encoded is accepted, and so is a PINGREQ: the refusals below are the padding's.
    let mut client = RawClient::connect_proxied(node.mqtt).await;
    assert_eq!(
        client.mqtt_connect(&Connect::new(5, "minimal")).await,
        Some(0)
    );
    client.send(&[0xC0, 0x00]).await;
    assert_eq!(client.read_packet(WAIT).await, Some((0xD0, Vec::new())));

    // Connected clients sending a PINGREQ with remaining length 0 as 0x80 0x00: v5 gets DISCONNECT 0x81
    // Malformed Packet, 3.1.1 a close.
    for level in [5u8, 4] {
        assert_disconnected_after(&node, level, &[0xC0, 0x80, 0x00], &[0x81]).await;
    }
    wait_disconnects(&node, "protocol_error", 3.0).await;
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
    assert_ended_before_connect(&node, "too_large", 1.0).await;

    // Connected clients sending a 4 KiB PUBLISH: v5 gets DISCONNECT 0x95 Packet too large, 3.1.1 a close.
    for level in [5u8, 4] {
        let big = raw::publish(level, "big", &[b'x'; 4096]);
        assert_disconnected_after(&node, level, &big, &[0x95]).await;
    }
    wait_disconnects(&node, "too_large", 3.0).await;
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

    assert_ended_before_connect(&node, "connect_timeout", 2.0).await;
}
