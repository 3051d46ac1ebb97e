//! Routing: plain connects carry the PROXY v2 header, pinning is stable, dead backends are skipped, fragmented
//! CONNECTs work.

use std::time::Duration;

use fleetgate_protocol::proxy::ProxyCommand;
use fleetgate_testkit::http::Response;
use fleetgate_testkit::proxy::proxy_v2;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::harness::*;

#[tokio::test]
async fn plain_connect_is_routed_with_proxy_v2_and_pinned() {
    let mut b0 = FakeBackend::start("broker-0").await;
    let mut b1 = FakeBackend::start("broker-1").await;
    let cfg = config(
        &[
            plain_listener("plain-route", ""),
            backend(&b0, ""),
            backend(&b1, ""),
        ],
        "",
    );
    let lb = TestLb::start(cfg).await;
    let addr = lb.addr("plain-route");

    rumqttc_connect(addr, "sensor-1", None).await.unwrap();
    let (first, backend_name) = tokio::select! {
        s = b0.next() => (s, "broker-0"),
        s = b1.next() => (s, "broker-1"),
    };
    assert_eq!(first.backend, backend_name);
    assert_eq!(first.header.command, ProxyCommand::Proxy);
    let source = first.header.source.unwrap();
    assert_eq!(source.ip().to_string(), "127.0.0.1");
    assert_eq!(first.header.destination, Some(addr));
    let id = &first.header.identity;
    assert!(!id.tls);
    assert_eq!(id.lb_client_id.as_deref(), Some("sensor-1"));
    assert!(id.unique_id.as_ref().is_some_and(|u| !u.is_empty()));
    assert_eq!(first.connect.client_id, "sensor-1");

    // The same client ID goes to the same backend, every time.
    for _ in 0..3 {
        rumqttc_connect(addr, "sensor-1", None).await.unwrap();
        let again = if backend_name == "broker-0" {
            b0.next().await
        } else {
            b1.next().await
        };
        assert_eq!(again.backend, backend_name);
    }
    let Response { status, body } = lb.admin.get("/clients/sensor-1").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(&format!("\"backend\":\"{backend_name}\"")),
        "{body}"
    );

    lb.admin
        .wait_count(
            "fleetgate_lb_connections_total",
            &[("listener", "plain-route"), ("outcome", "routed")],
            4.0,
        )
        .await;
    assert!(
        lb.admin
            .metric("fleetgate_lb_connect_peek_total", &[("outcome", "valid")])
            .await
            >= 4.0
    );
}

#[tokio::test]
async fn dead_backend_is_skipped() {
    let dead = dead_addr().await;
    let mut alive = FakeBackend::start("alive").await;
    let cfg = config(
        &[
            plain_listener("plain-dead", ""),
            backend_toml("dead", dead, ""),
            backend(&alive, ""),
        ],
        "backend_connect_timeout = \"2s\"",
    );
    let lb = TestLb::start(cfg).await;
    // Enough client IDs that some of them rank the dead backend first.
    for i in 0..8 {
        let id = format!("client-{i}");
        rumqttc_connect(lb.addr("plain-dead"), &id, None)
            .await
            .unwrap();
        assert_eq!(alive.next().await.connect.client_id, id);
    }
    assert!(
        lb.admin
            .metric(
                "fleetgate_lb_backend_connect_failures_total",
                &[("backend", "dead")]
            )
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn byte_at_a_time_connect_works_and_empty_id_routes_by_ip() {
    let mut b = FakeBackend::start("only").await;
    let cfg = config(&[plain_listener("plain-bytes", ""), backend(&b, "")], "");
    let lb = TestLb::start(cfg).await;
    let mut s = TcpStream::connect(lb.addr("plain-bytes")).await.unwrap();
    s.set_nodelay(true).unwrap();
    for byte in raw_connect(4, "", 60) {
        s.write_all(&[byte]).await.unwrap();
        // One segment per byte: the fragmentation is what this test is about, not a wait for state.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut ack = [0u8; 4];
    read_exactly(&mut s, &mut ack).await;
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00]);
    let seen = b.next().await;
    assert_eq!(seen.connect.client_id, "");
    assert_eq!(seen.header.identity.lb_client_id.as_deref(), Some(""));
    assert!(
        lb.admin
            .metric(
                "fleetgate_lb_connect_peek_total",
                &[("outcome", "empty_id")]
            )
            .await
            >= 1.0
    );

    // Traffic after the CONNECT is relayed both ways.
    s.write_all(&[0xC0, 0x00]).await.unwrap();
    let mut pong = [0u8; 2];
    read_exactly(&mut s, &mut pong).await;
    assert_eq!(pong, [0xD0, 0x00]);
}

#[tokio::test]
async fn proxy_v1_and_off_backends() {
    let mut v1 = FakeBackend::start("v1").await;
    let cfg = config(
        &[
            plain_listener("plain-v1", ""),
            backend(&v1, "proxy_protocol = \"v1\""),
        ],
        "",
    );
    let lb = TestLb::start(cfg).await;
    rumqttc_connect(lb.addr("plain-v1"), "old-school", None)
        .await
        .unwrap();
    let seen = v1.next().await;
    assert_eq!(seen.header.source.unwrap().ip().to_string(), "127.0.0.1");
    assert_eq!(seen.header.destination, Some(lb.addr("plain-v1")));
}

#[tokio::test]
async fn incoming_proxy_header_from_a_trusted_peer_sets_the_source() {
    let mut b = FakeBackend::start("only").await;
    let cfg = config(
        &[
            plain_listener(
                "plain-behind-cloud",
                "accept_proxy_from = [\"127.0.0.1/32\"]",
            ),
            plain_listener("plain-direct", ""),
            backend(&b, ""),
        ],
        "",
    );
    let lb = TestLb::start(cfg).await;
    let client: std::net::SocketAddr = "203.0.113.9:5555".parse().unwrap();
    let cloud_lb_dst: std::net::SocketAddr = "198.51.100.1:1883".parse().unwrap();
    let mut bytes = proxy_v2(client, cloud_lb_dst);
    bytes.extend_from_slice(&raw_connect(4, "behind-cloud", 30));
    let mut s = TcpStream::connect(lb.addr("plain-behind-cloud"))
        .await
        .unwrap();
    s.write_all(&bytes).await.unwrap();
    let mut ack = [0u8; 4];
    read_exactly(&mut s, &mut ack).await;
    let seen = b.next().await;
    assert_eq!(seen.header.source, Some(client));
    assert_eq!(seen.header.destination, Some(cloud_lb_dst));

    // The same header on a listener that does not expect one is not MQTT: closed, nothing routed.
    assert_eq!(
        sent_before_close(lb.addr("plain-direct"), &bytes).await,
        b""
    );
    assert!(b.nothing_yet());
}
