//! What only the root package's process tests share: the binary under test (`CARGO_BIN_EXE_fleetgate` exists only
//! in this package's own tests), a node behind a PROXY v2 sender, `fleetgate passwd` and a `fleetgate lb` with
//! mutual TLS in front of one node. Everything else is in `fleetgate-testkit`.
// Each test target uses its own subset of these.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;

use fleetgate_testkit::clients::{self, CmdOutput};
use fleetgate_testkit::{LbProcess, Node, NodeSpec, Pki, ProxySender, assert_no_secrets};

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

/// A `fleetgate lb` with one TLS listener (`mqtts`, `client_auth` `"optional"` or `"required"`, trusting `pki`'s
/// CA) in front of one backend that gets PROXY v2.
pub async fn tls_lb(pki: &Pki, client_auth: &str, backend: SocketAddr) -> LbProcess {
    let server = pki.server();
    let config = format!(
        "[lb]\nname = \"lb-auth\"\nshutdown_grace = \"2s\"\n\n[admin]\nbind = \"127.0.0.1:0\"\n\n\
         [[listeners]]\nname = \"mqtts\"\nbind = \"127.0.0.1:0\"\n[listeners.tls]\n\
         certificates = [{{ cert = {:?}, key = {:?} }}]\nclient_auth = {client_auth:?}\nclient_ca = {:?}\n\n\
         [[backends]]\nname = \"node\"\naddress = \"{backend}\"\nproxy_protocol = \"v2\"\n\n\
         [limits]\nper_ip_rate = 1000.0\nper_ip_burst = 1000\n",
        server.cert.display().to_string(),
        server.key.display().to_string(),
        pki.ca_cert().display().to_string(),
    );
    LbProcess::start_text(BIN, &config, "mqtts").await
}

/// `echo PASSWORD | bin passwd FILE USER` (the password reaches the shell through the environment, never argv).
pub async fn passwd(file: &Path, user: &str, password: &str) -> CmdOutput {
    let script = "printf '%s\\n' \"$FG_PW\" | \"$FG_BIN\" passwd \"$FG_FILE\" \"$FG_USER\"";
    let file = file.display().to_string();
    let env = [
        ("FG_PW", password),
        ("FG_BIN", BIN),
        ("FG_FILE", file.as_str()),
        ("FG_USER", user),
    ];
    clients::run_with_env("sh", &["-c".into(), script.into()], &env).await
}
