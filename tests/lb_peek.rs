//! The LB's CONNECT peek against real `fleetgate lb` and `fleetgate node` processes: a CONNECT whose remaining
//! length is written in more bytes than needed (MQTT 5 §1.5.5, 3.1.1 §2.2.3) is refused at the peek — closed
//! without a byte, counted `fleetgate_lb_connect_peek_total{outcome="malformed"}`, logged as `connect_peek`, and
//! never forwarded to a backend — while the same CONNECT minimally encoded is routed.

mod common;

use common::BIN;
use fleetgate_testkit::raw::Connect;
use fleetgate_testkit::{Closed, LbProcess, Node, NodeSpec, RawClient, WAIT};

#[tokio::test]
async fn a_connect_with_a_padded_remaining_length_is_refused_at_the_peek() {
    let node = Node::start(BIN, &NodeSpec::behind_local_proxy()).await;
    let rest = format!(
        "[[backends]]\nname = \"broker-0\"\naddress = \"{}\"\nhealth = {{ kind = \"none\" }}\n",
        node.mqtt
    );
    let lb = LbProcess::start(BIN, "lb-peek", &rest).await;

    for level in [4u8, 5] {
        let id = format!("padded-{level}");
        let connect = Connect::new(level, &id).encode();
        assert!(connect[1] < 0x80, "a remaining length in one byte");
        // 0x80 | n, 0x00: the same value in two bytes.
        let padded = [&[0x10, connect[1] | 0x80, 0x00][..], &connect[2..]].concat();
        let mut client = RawClient::connect(lb.mqtt).await;
        client.send(&padded).await;
        match client.closed_within(WAIT).await {
            Closed::After(bytes) => assert!(bytes.is_empty(), "{id}: the LB sent {bytes:?}"),
            Closed::StillOpen(bytes) => panic!("{id}: still open (got {bytes:?})"),
        }
    }
    let malformed = [("outcome", "malformed")];
    let peek_total = "fleetgate_lb_connect_peek_total";
    lb.admin.wait_count(peek_total, &malformed, 2.0).await;
    lb.process
        .wait_for_log(WAIT, "event=connect_peek outcome=malformed", |l| {
            l["event"] == "connect_peek" && l["outcome"] == "malformed"
        })
        .await;

    // The same CONNECT minimally encoded goes through to the node.
    let mut client = RawClient::connect(lb.mqtt).await;
    assert_eq!(
        client.mqtt_connect(&Connect::new(5, "minimal")).await,
        Some(0)
    );
    node.admin.wait_connected("minimal", true, WAIT).await;
    // The padded ones never reached it: one connection accepted, none refused or broken.
    let total = "fleetgate_connections_total";
    assert_eq!(
        node.admin.metric(total, &[("result", "accepted")]).await,
        1.0
    );
    assert_eq!(node.admin.metric(total, &[]).await, 1.0);
    assert_eq!(lb.admin.metric(peek_total, &malformed).await, 2.0);
}
