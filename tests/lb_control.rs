//! The LB's control plane against real `fleetgate node` and `fleetgate lb` processes: the `mqtt` health check
//! catches a SIGSTOPped broker (port open, nothing answers) within fall × interval while a `tcp` check still
//! says up; and a drained client reconnects through another LB to the same node without a will being published
//! and with its session kept (the LB sends the node a normal DISCONNECT before closing).

mod common;

use std::time::{Duration, Instant};

use common::BIN;
use fleetgate_testkit::raw::Connect;
use fleetgate_testkit::{Closed, LbProcess, Node, NodeSpec, RawClient, WAIT, eventually};

const INTERVAL_MS: u64 = 300;
const TIMEOUT_MS: u64 = 250;
const FALL: u64 = 3;

#[tokio::test]
async fn mqtt_check_catches_a_stopped_node_that_a_tcp_check_calls_up() {
    let node = Node::start(BIN, &NodeSpec::behind_local_proxy()).await;
    let health = format!(
        "[health]\ninterval = \"{INTERVAL_MS}ms\"\ntimeout = \"{TIMEOUT_MS}ms\"\nrise = 1\nfall = {FALL}\n"
    );
    let backends = format!(
        "[[backends]]\nname = \"via-mqtt\"\naddress = \"{0}\"\nhealth = {{ kind = \"mqtt\" }}\n\n\
         [[backends]]\nname = \"via-tcp\"\naddress = \"{0}\"\nhealth = {{ kind = \"tcp\" }}\n\n{health}",
        node.mqtt
    );
    let lb = LbProcess::start(BIN, "lb-sigstop", &backends).await;
    lb.admin.wait_health("via-mqtt", "up", WAIT).await;
    lb.admin.wait_health("via-tcp", "up", WAIT).await;

    let frozen = node.process.freeze();
    let at = Instant::now();
    lb.admin.wait_health("via-mqtt", "down", WAIT).await;
    let took = at.elapsed();
    // fall × interval, plus the probe in flight's timeout, plus scheduling slack on two shared cores.
    let bound = Duration::from_millis(FALL * INTERVAL_MS + TIMEOUT_MS + 1500);
    assert!(took <= bound, "detected after {took:?}, bound {bound:?}");
    // The kernel still completes TCP handshakes for the stopped process: a tcp check says up all along (the
    // sleep spans the checks that must not flip it: it is the behaviour under test, not a wait for state).
    for _ in 0..FALL + 1 {
        assert_eq!(lb.admin.health("via-tcp").await, "up");
        tokio::time::sleep(Duration::from_millis(INTERVAL_MS)).await;
    }
    let log = lb
        .process
        .wait_for_log(WAIT, "backend_health down", |v| {
            v["event"] == "backend_health" && v["backend"] == "via-mqtt" && v["healthy"] == false
        })
        .await;
    assert_eq!(log["kind"], "mqtt", "{log}");

    drop(frozen);
    lb.admin.wait_health("via-mqtt", "up", WAIT).await;
}

/// A raw client through `lb` that sent `connect` and got CONNACK 0.
async fn connected(lb: &LbProcess, connect: &Connect<'_>) -> RawClient {
    let mut client = RawClient::connect(lb.mqtt).await;
    let code = client.mqtt_connect(connect).await;
    assert_eq!(code, Some(0), "{}: CONNACK", connect.client_id);
    client
}

#[tokio::test]
async fn drained_clients_reconnect_through_another_lb_without_a_will_and_keep_their_session() {
    let node = Node::start(BIN, &NodeSpec::behind_local_proxy()).await;
    let rest = format!(
        "[[backends]]\nname = \"broker-0\"\naddress = \"{}\"\n\n[drain]\nrate = 50.0\n",
        node.mqtt
    );
    let mut lb_a = LbProcess::start(BIN, "lb-a", &rest).await;
    let lb_b = LbProcess::start(BIN, "lb-b", &rest).await;

    // A watcher of the wills, through the LB that stays.
    let mut watcher = connected(&lb_b, &Connect::new(4, "will-watcher")).await;
    watcher.subscribe(1, "wills/#").await;

    // A 3.1.1 device with a persistent session and a subscription, and a v5 device; both with wills.
    let mut c = Connect::new(4, "dev-v4");
    c.clean = false;
    c.will = Some(("wills/dev-v4", b"lost"));
    let mut v4 = connected(&lb_a, &c).await;
    v4.subscribe(1, "cmd/dev-v4").await;
    let mut c = Connect::new(5, "dev-v5");
    c.will = Some(("wills/dev-v5", b"lost"));
    let mut v5 = connected(&lb_a, &c).await;
    for id in ["dev-v4", "dev-v5"] {
        node.admin.wait_connected(id, true, WAIT).await;
    }

    assert_eq!(lb_a.admin.post("/drain").await.status, 202);
    // v5: DISCONNECT 0x8B at a packet boundary, then the close; 3.1.1: the close.
    match v5.closed_within(WAIT).await {
        Closed::After(bytes) => assert_eq!(bytes, vec![0xE0, 0x02, 0x8B, 0x00]),
        other => panic!("v5 client not drained: {other:?}"),
    }
    assert!(matches!(v4.closed_within(WAIT).await, Closed::After(b) if b.is_empty()));

    // Prompt reconnect through the other LB: same node by the same hash, session still there.
    let mut again = RawClient::connect(lb_b.mqtt).await;
    let mut c = Connect::new(4, "dev-v4");
    c.clean = false;
    again.send(&c.encode()).await;
    assert_eq!(
        again.read_connack().await,
        Some((true, 0)),
        "session present"
    );
    let _again5 = connected(&lb_b, &Connect::new(5, "dev-v5")).await;

    // No will was published for either device (nothing arriving within 2 s is the behaviour under test).
    match watcher.closed_within(Duration::from_secs(2)).await {
        Closed::StillOpen(bytes) => assert!(bytes.is_empty(), "a will arrived: {bytes:?}"),
        Closed::After(bytes) => panic!("watcher closed: {bytes:?}"),
    }
    // The drained LB exits by itself once its relays are closed.
    let exited = eventually(WAIT, || {
        let status = lb_a.process.try_status();
        async move { status }
    })
    .await
    .expect("the drained LB exits");
    assert!(exited.success(), "{exited}");
}
