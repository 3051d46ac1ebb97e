//! The admin token of both binaries, against real `fleetgate node` and `fleetgate lb` processes: an admin port
//! other hosts can reach without `token_file` is refused at start and by `fleetgate check` (with
//! `file:line:column`); with a token, every route but `/healthz`, `/readyz` and `/metrics` answers 401 without it —
//! the node's `/clients/{id}` (client addresses), the LB's `/backends`, `/clients/{id}`, `POST /reload`,
//! `POST /drain` — and works with it; the token never reaches a log line; a missing token file stops the start.
#![allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING)

mod common;

use std::path::Path;
use std::process::ExitStatus;

use common::BIN;
use fleetgate_testkit::rumqttc_client::v3_client;
use fleetgate_testkit::{
    LbProcess, Node, NodeSpec, ServerProcess, WAIT, assert_no_secrets, eventually, scratch_dir,
};

/// The token written into the tests' token files.
const TOKEN: &str = "adm1n-T0ken-e2e-4f1c";

/// Runs `fleetgate ARGS` to its exit (bounded by [`WAIT`]) and waits until what it printed contains `expected`;
/// returns the exit status and the output.
async fn run_to_exit(args: &[&str], expected: &str) -> (ExitStatus, String) {
    let mut process = ServerProcess::spawn(BIN, args);
    let exited = eventually(WAIT, || {
        let status = process.try_status();
        async move { status }
    })
    .await
    .unwrap_or_else(|e| panic!("fleetgate {args:?} still running: {e}"));
    // The output threads finish at EOF, just after the exit.
    let printed = eventually(WAIT, || {
        let text = process.logs_text();
        async move { text.contains(expected).then_some(text) }
    })
    .await;
    let out = printed.unwrap_or_else(|_| process.logs_text());
    assert!(
        out.contains(expected),
        "fleetgate {args:?} did not print {expected:?}: {out}"
    );
    (exited, out)
}

/// Asserts that `fleetgate check FILE` and `fleetgate KIND --config FILE` both refuse `file` with `expected` (a
/// `file:line:column: message` prefix) and that the server bound nothing.
async fn refused_everywhere(kind: &str, file: &Path, expected: &str) {
    let path = file.to_str().expect("a UTF-8 path");
    let (status, out) = run_to_exit(&["check", path], expected).await;
    assert_eq!(status.code(), Some(64), "{out}");
    let (status, out) =
        run_to_exit(&["--log-format", "text", kind, "--config", path], expected).await;
    assert!(!status.success(), "{out}");
    assert!(!out.contains("listening on"), "bound something: {out}");
}

#[tokio::test]
async fn an_admin_port_other_hosts_reach_needs_a_token_file() {
    let dir = scratch_dir();
    let node = dir.path().join("node.toml");
    std::fs::write(
        &node,
        "[node]\nname = \"n\"\n\n[[listeners]]\nbind = \"127.0.0.1:0\"\n\n[admin]\nbind = \"0.0.0.0:0\"\n",
    )
    .unwrap();
    let expected = format!(
        "{}:8:8: admin bind 0.0.0.0:0 is reachable from other hosts: set token_file",
        node.display()
    );
    refused_everywhere("node", &node, &expected).await;

    let lb = dir.path().join("lb.toml");
    std::fs::write(
        &lb,
        "[lb]\nname = \"l\"\n\n[admin]\nbind = \"[::]:0\"\n\n[[listeners]]\nname = \"mqtt\"\n\
         bind = \"127.0.0.1:0\"\n\n[[backends]]\nname = \"b\"\naddress = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let expected = format!(
        "{}:5:8: admin bind [::]:0 is reachable from other hosts: set token_file",
        lb.display()
    );
    refused_everywhere("lb", &lb, &expected).await;
}

#[tokio::test]
async fn a_missing_token_file_stops_the_start() {
    let dir = scratch_dir();
    let mut spec = NodeSpec::plain();
    spec.extra_admin = vec!["token_file = \"missing.token\"".into()];
    let file = dir.path().join("node.toml");
    std::fs::write(&file, spec.to_toml()).unwrap();
    let path = file.to_str().unwrap();
    // The config is valid (the file is only named), so `check` passes; the start reads it and stops.
    let (status, out) = run_to_exit(&["check", path], "ok (node config)").await;
    assert!(status.success(), "{out}");
    let missing = dir.path().join("missing.token");
    let expected = format!("{}: cannot read secret file", missing.display());
    let args = ["--log-format", "text", "node", "--config", path];
    let (status, out) = run_to_exit(&args, &expected).await;
    assert!(!status.success(), "{out}");
}

#[tokio::test]
async fn node_clients_route_needs_the_token_and_the_token_is_never_logged() {
    let dir = scratch_dir();
    std::fs::write(dir.path().join("admin.token"), format!("{TOKEN}\n")).unwrap();
    let mut spec = NodeSpec::plain();
    spec.extra_admin = vec!["token_file = \"admin.token\"".into()];
    let node = Node::start_in(BIN, dir.path(), &spec.to_toml()).await;
    let (_client, _events, _) = v3_client(node.mqtt, "dev-7", |_| {}).await;

    let admin = node.admin;
    for token in [None, Some("wrong"), Some(&TOKEN[..TOKEN.len() - 1])] {
        let r = admin.request_as("GET", "/clients/dev-7", token).await;
        assert_eq!(r.status, 401, "{token:?}: {}", r.body);
        assert!(!r.body.contains("127.0.0.1"), "{}", r.body);
    }
    let r = admin.request_as("GET", "/clients/dev-7", Some(TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let client: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(client["connected"], true, "{client}");
    // Probes and the scrape stay open.
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(admin.get(path).await.status, 200, "{path}");
    }
    admin
        .wait_count("fleetgate_admin_unauthorized_total", &[], 3.0)
        .await;
    let denied = node
        .process
        .wait_for_log(WAIT, "admin_unauthorized", |v| {
            v["event"] == "admin_unauthorized"
        })
        .await;
    assert_eq!(denied["path"], "/clients/dev-7", "{denied}");
    assert_no_secrets(&node.process.logs(), &[TOKEN]);
}

#[tokio::test]
async fn lb_routes_need_the_token_and_the_token_is_never_logged() {
    let dir = scratch_dir();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let text = format!(
        "[lb]\nname = \"lb-token\"\n\n[admin]\nbind = \"127.0.0.1:0\"\ntoken_file = {:?}\n\n\
         [[listeners]]\nname = \"mqtt\"\nbind = \"127.0.0.1:0\"\n\n\
         [[backends]]\nname = \"broker-0\"\naddress = \"127.0.0.1:1\"\n",
        token_file.display().to_string()
    );
    let lb = LbProcess::start_text(BIN, &text, "mqtt").await;
    let admin = lb.admin;
    let guarded = [
        ("GET", "/backends"),
        ("GET", "/clients/dev-1"),
        ("POST", "/reload"),
        ("POST", "/drain"),
    ];
    for (method, path) in guarded {
        for token in [None, Some("Bearer"), Some("x")] {
            let r = admin.request_as(method, path, token).await;
            assert_eq!(r.status, 401, "{method} {path} {token:?}: {}", r.body);
        }
    }
    assert!(
        admin.is_ready().await,
        "an unauthorized POST /drain drained"
    );
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(admin.get(path).await.status, 200, "{path}");
    }
    let backends = admin.request_as("GET", "/backends", Some(TOKEN)).await;
    assert_eq!(backends.status, 200, "{}", backends.body);
    assert!(backends.body.contains("broker-0"), "{}", backends.body);
    let client = admin.request_as("GET", "/clients/dev-1", Some(TOKEN)).await;
    assert!(
        client.body.contains("\"backend\":\"broker-0\""),
        "{}",
        client.body
    );
    let reload = admin.request_as("POST", "/reload", Some(TOKEN)).await;
    assert_eq!(reload.status, 200, "{}", reload.body);
    admin
        .wait_count("fleetgate_admin_unauthorized_total", &[], 12.0)
        .await;
    let drain = admin.request_as("POST", "/drain", Some(TOKEN)).await;
    assert_eq!(drain.status, 202, "{}", drain.body);
    admin.wait_ready(false, WAIT).await;
    assert_no_secrets(&lb.process.logs(), &[TOKEN]);
}
