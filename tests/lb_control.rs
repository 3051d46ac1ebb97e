//! The LB's control plane against real `fleetgate node` and `fleetgate lb` processes: the `mqtt` health check
//! catches a SIGSTOPped broker (port open, nothing answers) within fall × interval while a `tcp` check still
//! says up; and a drained client reconnects through another LB to the same node without a will being published
//! and with its session kept (the LB sends the node a normal DISCONNECT before closing).

use std::time::{Duration, Instant};

use fleetgate_testkit::lb::{LbProcess, Stopped};
use fleetgate_testkit::raw::{Closed, Connect, RawClient, subscribe};
use fleetgate_testkit::{Node, NodeSpec};

const BIN: &str = env!("CARGO_BIN_EXE_fleetgate");
/// Bound on every wait here.
const WAIT: Duration = Duration::from_secs(15);

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
    lb.wait_health("via-mqtt", "up", WAIT).await;
    lb.wait_health("via-tcp", "up", WAIT).await;

    let stopped = Stopped::stop(node.process.pid());
    let at = Instant::now();
    lb.wait_health("via-mqtt", "down", WAIT).await;
    let took = at.elapsed();
    // fall × interval, plus the probe in flight's timeout, plus scheduling slack on two shared cores.
    let bound = Duration::from_millis(FALL * INTERVAL_MS + TIMEOUT_MS + 1500);
    assert!(took <= bound, "detected after {took:?}, bound {bound:?}");
    // The kernel still completes TCP handshakes for the stopped process: a tcp check says up all along.
    for _ in 0..FALL + 1 {
        assert_eq!(lb.health("via-tcp").await, "up");
        tokio::time::sleep(Duration::from_millis(INTERVAL_MS)).await;
    }
    let log = lb
        .process
        .wait_for_log(WAIT, "backend_health down", |v| {
            v["event"] == "backend_health" && v["backend"] == "via-mqtt" && v["healthy"] == false
        })
        .await;
    assert_eq!(log["kind"], "mqtt", "{log}");

    drop(stopped);
    lb.wait_health("via-mqtt", "up", WAIT).await;
}

/// CONNACK of a raw client: (session present, return/reason code).
async fn connack(c: &mut RawClient) -> (bool, u8) {
    let (first, body) = c.read_packet(WAIT).await.expect("CONNACK");
    assert_eq!(first, 0x20, "not a CONNACK: {body:?}");
    (body[0] & 1 == 1, body[1])
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
    let mut watcher = RawClient::connect(lb_b.mqtt).await;
    watcher
        .send(&Connect::new(4, "will-watcher").encode())
        .await;
    assert_eq!(connack(&mut watcher).await.1, 0);
    watcher.send(&subscribe(4, 1, "wills/#", 1)).await;
    assert_eq!(watcher.read_packet(WAIT).await.map(|p| p.0), Some(0x90));

    // A 3.1.1 device with a persistent session and a subscription, and a v5 device; both with wills.
    let mut v4 = RawClient::connect(lb_a.mqtt).await;
    let mut c = Connect::new(4, "dev-v4");
    c.clean = false;
    c.will = Some(("wills/dev-v4", b"lost"));
    v4.send(&c.encode()).await;
    assert_eq!(connack(&mut v4).await.1, 0);
    v4.send(&subscribe(4, 1, "cmd/dev-v4", 1)).await;
    assert_eq!(v4.read_packet(WAIT).await.map(|p| p.0), Some(0x90));
    let mut v5 = RawClient::connect(lb_a.mqtt).await;
    let mut c = Connect::new(5, "dev-v5");
    c.will = Some(("wills/dev-v5", b"lost"));
    v5.send(&c.encode()).await;
    assert_eq!(connack(&mut v5).await.1, 0);
    node.wait_connected("dev-v4", true, WAIT).await;
    node.wait_connected("dev-v5", true, WAIT).await;

    assert_eq!(lb_a.post("/drain").await, 202);
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
    assert_eq!(connack(&mut again).await, (true, 0), "session present");
    let mut again5 = RawClient::connect(lb_b.mqtt).await;
    again5.send(&Connect::new(5, "dev-v5").encode()).await;
    assert_eq!(connack(&mut again5).await.1, 0);

    // No will was published for either device.
    match watcher.closed_within(Duration::from_secs(2)).await {
        Closed::StillOpen(bytes) => assert!(bytes.is_empty(), "a will arrived: {bytes:?}"),
        Closed::After(bytes) => panic!("watcher closed: {bytes:?}"),
    }
    // The drained LB exits by itself once its relays are closed.
    let exited = fleetgate_testkit::eventually(WAIT, || {
        let status = lb_a.process.try_status();
        async move { status }
    })
    .await
    .expect("the drained LB exits");
    assert!(exited.success(), "{exited}");
}
