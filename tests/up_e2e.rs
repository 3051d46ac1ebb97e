//! `fleetgate up` as a user runs it, and `fleetgate check` on every config we ship or generate.
//!
//! `up` runs the real system (dev PKI, three `fleetgate node` children joined into one cluster, the LB in front)
//! on free ports; the test learns the LB's ports from the `listening` lines `up` forwards (tagged with the child's
//! `process` name), then: mosquitto over TLS with the generated CA and client certificate and plain mosquitto
//! exchange a message; two clients the ring pins to different nodes exchange a message through the LB (the
//! cluster acts as one broker); SIGTERM makes `up` exit 0 in bounded time with no child left behind.

#![allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING)

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::BIN;
use fleetgate_testkit::clients::{self, MqttVersion, RunningCommand};
use fleetgate_testkit::raw::Connect;
use fleetgate_testkit::{Admin, RawClient, ServerProcess, eventually, id_owned_by, scratch_dir};
use serde_json::Value;

/// Bound of the whole `up` test: a debug build starting four processes one after another on two shared cores.
const TEST_LIMIT: Duration = Duration::from_secs(60);
/// Bound on `up` becoming ready (its banner printed).
const UP_DEADLINE: Duration = Duration::from_secs(30);
/// Bound on one wait inside the test (a SUBACK, a message, a client showing up on a node).
const WAIT: Duration = Duration::from_secs(10);
/// How long `up` may take to stop after SIGTERM: the nodes drain (no clients left) and the LB closes; `up`
/// itself would SIGKILL a child only after 15 s.
const STOP_DEADLINE: Duration = Duration::from_secs(20);
/// Seconds a `mosquitto_sub` waits for its message before giving up (`-W`).
const SUB_WAIT_SECS: u32 = 15;
/// The node names `up` gives its children, in start order.
const NODES: [&str; 3] = ["broker-0", "broker-1", "broker-2"];
/// The last line of `up`'s banner: everything listens.
const BANNER_END: &str = "Press Ctrl-C to stop.";

/// The `addr` of the `listening` line of `role` forwarded from child `process`.
fn listening(logs: &[Value], process: &str, role: &str) -> Option<SocketAddr> {
    logs.iter()
        .find(|v| v["process"] == process && v["event"] == "listening" && v["role"] == role)
        .and_then(|v| v["addr"].as_str()?.parse().ok())
}

/// Starts `mosquitto_sub` with `extra` until it has its SUBACK: the LB may refuse the very first connections while
/// its health checks come up, so a subscriber that exits early is started again (bounded by [`WAIT`]).
async fn subscribed(addr: SocketAddr, extra: &[&str]) -> RunningCommand {
    let mut last = String::new();
    for _ in 0..5 {
        let sub = clients::mosquitto_sub(addr, MqttVersion::V311, SUB_WAIT_SECS, extra);
        let got = eventually(WAIT, || {
            let ok = sub.stdout().iter().any(|l| l.contains("SUBACK"));
            async move { ok.then_some(()) }
        })
        .await;
        if got.is_ok() {
            return sub;
        }
        last = sub.kill().await.stderr;
    }
    panic!("mosquitto_sub {extra:?} on {addr} never subscribed: {last}");
}

/// Publishes `payload` on `topic` with `extra` until `sub` prints it (a route may still be on its way to the
/// publisher's node); panics after [`WAIT`].
async fn deliver(
    sub: &RunningCommand,
    addr: SocketAddr,
    topic: &str,
    payload: &str,
    extra: &[&str],
) {
    let mut args = vec!["-t", topic, "-m", payload, "-q", "1"];
    args.extend_from_slice(extra);
    let got = eventually(WAIT, || async {
        let seen = |sub: &RunningCommand| {
            sub.mosquitto_messages()
                .iter()
                .any(|m| m.payload == payload)
        };
        if seen(sub) {
            return Some(());
        }
        let out = clients::mosquitto_pub(addr, MqttVersion::V311, &args).await;
        assert!(!out.timed_out, "mosquitto_pub timed out: {}", out.stderr);
        let delivered = eventually(Duration::from_millis(500), || async {
            seen(sub).then_some(())
        })
        .await;
        delivered.ok()
    })
    .await;
    assert!(
        got.is_ok(),
        "{payload:?} on {topic} never reached the subscriber; its output: {:?}",
        sub.stdout()
    );
}

/// Waits until `pid` is gone (not in `/proc`, or another program under a reused pid).
async fn gone(pid: u32) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let check = eventually(Duration::from_secs(2), || {
        let cmdline = std::fs::read(proc_dir.join("cmdline")).unwrap_or_default();
        let alive = String::from_utf8_lossy(&cmdline).contains("fleetgate");
        async move { (!alive).then_some(()) }
    })
    .await;
    check.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_one_cluster_behind_the_lb_and_stops_cleanly() {
    let dir = scratch_dir();
    let mut up = ServerProcess::spawn(
        BIN,
        [
            "up".as_ref(),
            "--dir".as_ref(),
            dir.path().as_os_str(),
            "--mqtt-port".as_ref(),
            "0".as_ref(),
            "--mqtts-port".as_ref(),
            "0".as_ref(),
        ],
    );
    tokio::time::timeout(TEST_LIMIT, async {
        let ready = eventually(UP_DEADLINE, || {
            let done = up.logs().iter().any(|l| l == BANNER_END);
            async move { done.then_some(()) }
        })
        .await;
        assert!(
            ready.is_ok(),
            "up not ready within {UP_DEADLINE:?}:\n{}",
            up.logs_text()
        );
        let logs = up.json_logs();
        let mqtt = listening(&logs, "lb", "mqtt").expect("the LB's mqtt listening line");
        let mqtts = listening(&logs, "lb", "mqtts").expect("the LB's mqtts listening line");
        assert_ne!(mqtt.port(), 0);
        let text = up.logs_text();
        assert!(text.contains(&format!("Plain MQTT:   {mqtt}")), "{text}");
        assert!(
            text.contains(&format!("-p {} -t test -m hi", mqtts.port())),
            "{text}"
        );
        let admins: Vec<Admin> = NODES
            .iter()
            .map(|n| listening(&logs, n, "admin").unwrap_or_else(|| panic!("{n}'s admin line")))
            .map(Admin::new)
            .collect();
        for name in ["node-0.toml", "node-1.toml", "node-2.toml", "lb.toml"] {
            let file = dir.path().join(name);
            let (code, stdout, stderr) = check(&file);
            assert_eq!(code, Some(0), "generated {name}: {stdout}{stderr}");
        }
        for (node, admin) in NODES.iter().zip(&admins) {
            let peers = admin.metric("fleetgate_cluster_peers_up", &[]).await;
            assert_eq!(peers, 2.0, "{node} is linked to both other nodes");
        }

        // (a) TLS subscriber with the dev CA and client certificate, TLS publisher without one.
        let ca = dir.path().join("ca.pem");
        let (cert, key) = (
            dir.path().join("client.pem"),
            dir.path().join("client-key.pem"),
        );
        let tls = [
            "--cafile",
            ca.to_str().unwrap(),
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ];
        let mut sub_args = vec!["-t", "up/tls", "-C", "1", "-q", "1"];
        sub_args.extend_from_slice(&tls);
        let sub = subscribed(mqtts, &sub_args).await;
        // Published over TLS without a client certificate (the subscriber has one).
        deliver(
            &sub,
            mqtts,
            "up/tls",
            "over-tls",
            &["--cafile", ca.to_str().unwrap()],
        )
        .await;
        let out = sub.finish().await;
        assert!(out.success(), "mosquitto_sub over TLS: {}", out.stderr);

        // (a2) paho over TLS through the LB: MQTT 5 with the client certificate, 3.1.1 without one.
        let ca_arg = ca.to_str().unwrap();
        let with_cert = ["--cafile", ca_arg, "--cert", tls[3], "--key", tls[5]];
        let without_cert = ["--cafile", ca_arg];
        for (version, id, extra) in [
            (MqttVersion::V5, "paho-tls-5", &with_cert[..]),
            (MqttVersion::V311, "paho-tls-311", &without_cert[..]),
        ] {
            let topic = format!("up/{id}");
            let (sub, publish) = (format!("{topic}@1"), format!("1,0,{topic},hello"));
            let mut args = vec![
                "--id", id, "--sub", &sub, "--pub", &publish, "--expect", "1",
            ];
            args.extend_from_slice(extra);
            let out = clients::paho(mqtts, version, &args).finish().await;
            let got = out.events_of("msg");
            assert!(
                out.success() && got.len() == 1 && got[0]["payload"] == "hello",
                "paho {id} over TLS: {:?}\n{}",
                out.stdout,
                out.stderr
            );
        }

        // (b) Subscriber pinned to one node, publisher to another, both through the LB.
        let sub_id = id_owned_by(&NODES, NODES[0], "up-sub");
        let pub_id = id_owned_by(&NODES, NODES[2], "up-pub");
        let sub = subscribed(
            mqtt,
            &["-t", "up/cross", "-C", "1", "-q", "1", "-i", &sub_id],
        )
        .await;
        let pinned = eventually(WAIT, || async {
            admins[0].client(&sub_id).await.map(|_| ())
        })
        .await;
        assert!(pinned.is_ok(), "{sub_id} is not on {}", NODES[0]);
        assert!(admins[2].client(&sub_id).await.is_none());
        deliver(&sub, mqtt, "up/cross", "cross-node", &["-i", &pub_id]).await;
        let out = sub.finish().await;
        assert!(out.success(), "cross-node mosquitto_sub: {}", out.stderr);
        let forwarded = admins[2]
            .metric("fleetgate_cluster_forwarded_total", &[])
            .await;
        assert!(
            forwarded >= 1.0,
            "{} forwarded the message to {}",
            NODES[2],
            NODES[0]
        );

        // (b2) The node sees the device's own address (from the LB's PROXY v2 header), not the LB's.
        let device_id = id_owned_by(&NODES, NODES[1], "up-device");
        let mut device = RawClient::connect(mqtt).await;
        let connack = device.mqtt_connect(&Connect::new(4, &device_id)).await;
        assert!(connack.is_some(), "CONNACK");
        let info = admins[1].get(&format!("/clients/{device_id}")).await;
        assert_eq!(
            info.status, 200,
            "{device_id} on {}: {}",
            NODES[1], info.body
        );
        let info: Value = serde_json::from_str(&info.body).expect("JSON");
        assert_eq!(
            info["source"].as_str(),
            Some(device.local_addr().to_string().as_str()),
            "the node's view of {device_id}: {info}"
        );
        drop(device);

        // (c) SIGTERM: `up` stops every child and exits 0; none of them is left.
        let pids: Vec<u32> = up
            .json_logs()
            .iter()
            .filter(|v| v["event"] == "child_started")
            .filter_map(|v| v["pid"].as_u64())
            .filter_map(|p| u32::try_from(p).ok())
            .collect();
        assert_eq!(pids.len(), NODES.len() + 1, "a pid per node and the LB");
        let (status, killed) = up.terminate(STOP_DEADLINE).await;
        assert!(
            !killed && status.success(),
            "up after SIGTERM: {status}:\n{}",
            up.logs_text()
        );
        for pid in pids {
            assert!(gone(pid).await, "child {pid} still runs after up exited");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("test timed out; up's output:\n{}", up.logs_text()));
}

/// `fleetgate check FILE`: exit code and both outputs.
fn check(file: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(BIN).arg("check").arg(file).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

#[test]
fn check_accepts_the_examples_and_every_config_up_generates() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    for file in files {
        let (code, stdout, stderr) = check(&file);
        assert_eq!(code, Some(0), "{}: {stdout}{stderr}", file.display());
        let kind = match file.file_name().and_then(|n| n.to_str()) {
            Some("node.toml") => "node config",
            Some("lb.toml") => "lb config",
            Some("acl.toml") => "acl file",
            _ => ":",
        };
        assert!(stdout.contains(&format!(": ok ({kind})")), "{stdout}");
    }
}

#[test]
fn check_reports_a_broken_config_with_its_location_and_exit_64() {
    let dir = scratch_dir();
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        "[node]\nname = \"a\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\nproxy_protocol = \"required\"\n\
         trusted_proxies = [\"10.0.0.0/99\"]\n",
    )
    .unwrap();
    let (code, _, stderr) = check(&file);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:6:20: invalid CIDR", file.display())),
        "{stderr}"
    );
    let lb = dir.path().join("lb.toml");
    std::fs::write(&lb, "[lb]\nname = \"x\"\nbogus = 1\n").unwrap();
    let (code, _, stderr) = check(&lb);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains(&format!("{}:3:", lb.display())), "{stderr}");
    // Neither a node, an LB nor an ACL file: located problems, exit 64.
    let other = dir.path().join("other.toml");
    std::fs::write(&other, "x = 1\n").unwrap();
    let (code, _, stderr) = check(&other);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:1:1: neither", other.display())),
        "{stderr}"
    );
}
