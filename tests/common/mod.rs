//! Helpers shared by the node end-to-end test files (`node_e2e.rs`, `node_sessions.rs`).
// Each test target uses its own subset of these.
#![allow(dead_code)]

use std::time::Duration;

use fleetgate_testkit::clients::MosquittoMessage;
use fleetgate_testkit::{MqttVersion, Node, NodeSpec, ProxySender};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_fleetgate");

/// A password every client here sends; no log line may ever contain it.
pub const PASSWORD: &str = "e2e-S3cret-pa55word";

/// Bound on waits for a client to be connected/subscribed/delivered.
pub const WAIT: Duration = Duration::from_secs(15);

/// Both protocol versions, for tests that run once per version.
pub const BOTH: [MqttVersion; 2] = [MqttVersion::V311, MqttVersion::V5];

/// A node behind a PROXY v2 sender, as the LB would put it.
pub async fn start() -> (Node, ProxySender) {
    let node = Node::start(BIN, &NodeSpec::behind_local_proxy()).await;
    let sender = ProxySender::start(node.mqtt).await;
    (node, sender)
}

pub fn assert_no_password(node: &Node) {
    for line in node.process.logs() {
        assert!(
            !line.contains(PASSWORD),
            "a log line contains the password: {line}"
        );
    }
}

pub fn tag(v: MqttVersion) -> &'static str {
    match v {
        MqttVersion::V311 => "v311",
        MqttVersion::V5 => "v5",
    }
}

pub fn msg(retain: bool, qos: u8, topic: &str, payload: &str) -> MosquittoMessage {
    MosquittoMessage {
        retain,
        qos,
        topic: topic.into(),
        payload: payload.into(),
    }
}
