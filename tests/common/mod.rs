//! What only the root package's process tests share: the binary under test (`CARGO_BIN_EXE_fleetgate` exists only
//! in this package's own tests) and a node behind a PROXY v2 sender. Everything else is in `fleetgate-testkit`.
// Each test target uses its own subset of these.
#![allow(dead_code)]

use fleetgate_testkit::{Node, NodeSpec, ProxySender, assert_no_secrets};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_fleetgate");

/// A password the node tests' clients send; no log line may ever contain it.
pub const PASSWORD: &str = "e2e-S3cret-pa55word";

/// A node behind a PROXY v2 sender, as the LB would put it.
pub async fn start() -> (Node, ProxySender) {
    let node = Node::start(BIN, &NodeSpec::behind_local_proxy()).await;
    let sender = ProxySender::start(node.mqtt).await;
    (node, sender)
}

/// Waits until `node` counted `at_least` disconnects for `reason`.
pub async fn wait_disconnects(node: &Node, reason: &str, at_least: f64) {
    let disconnects = "fleetgate_disconnects_total";
    node.admin
        .wait_count(disconnects, &[("reason", reason)], at_least)
        .await;
}

/// Panics when a log line of `node` contains [`PASSWORD`], a password hash or a certificate.
pub fn assert_no_password(node: &Node) {
    assert_no_secrets(&node.process.logs(), &[PASSWORD]);
}
