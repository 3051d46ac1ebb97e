//! A hostile client floods the admin port of both binaries the way issue #14 describes (connections pipelining
//! `GET /metrics` and never reading — it once locked the port, and with it `/healthz` and `/readyz`), against real
//! `fleetgate node` and `fleetgate lb` processes: 200 connections for a few seconds, each reconnecting when cut.
//! Throughout, `/readyz` on the probe socket (`[admin] probe_bind`) answers 200 within 100 ms; the per-IP cap
//! turns most flood connections away at accept, the write deadline cuts the ones it let in, MQTT clients are
//! served meanwhile, and the admin port answers again once the flood stops.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::BIN;
use fleetgate_testkit::node::PROBE_ROLE;
use fleetgate_testkit::rumqttc_client::{v3_client, v3_puback};
use fleetgate_testkit::{Admin, LbProcess, Node, NodeSpec, WAIT, eventually};

/// Flood connections kept open at once (each reconnects after a cut or a refusal).
const FLOOD_CONNECTIONS: usize = 200;
/// How long each flood lasts.
const FLOOD_FOR: Duration = Duration::from_secs(3);
/// Pause of a flood connection before it reconnects: bounds the connect rate to 1,000/s.
const RECONNECT_AFTER: Duration = Duration::from_millis(200);
/// Requests per write of a flood connection.
const PIPELINED: usize = 64;
/// What a probe may take, connect to last byte.
const PROBE_BOUND: Duration = Duration::from_millis(100);
/// Pause between probes.
const PROBE_EVERY: Duration = Duration::from_millis(25);
/// The `[admin]` lines under test: a probe socket, and deadlines short enough to cut within the flood.
const ADMIN_LINES: [&str; 3] = [
    "probe_bind = \"127.0.0.1:0\"",
    "request_timeout = \"1s\"",
    "write_timeout = \"500ms\"",
];

/// What the flood saw from its side.
#[derive(Debug, Default)]
struct Flooded {
    /// Connections opened.
    opened: usize,
    /// Connections whose writes failed: cut by the server (refused at accept, or cut by a deadline).
    cut: usize,
}

/// Floods `addr` for [`FLOOD_FOR`] with [`FLOOD_CONNECTIONS`] connections that pipeline `GET /metrics` and never
/// read.
async fn flood(addr: SocketAddr) -> Flooded {
    let until = tokio::time::Instant::now() + FLOOD_FOR;
    let batch = "GET /metrics HTTP/1.1\r\nHost: flood\r\n\r\n".repeat(PIPELINED);
    let tasks: Vec<_> = (0..FLOOD_CONNECTIONS)
        .map(|_| {
            let batch = batch.clone();
            tokio::spawn(async move {
                let mut seen = Flooded::default();
                while tokio::time::Instant::now() < until {
                    if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
                        seen.opened += 1;
                        loop {
                            let write =
                                tokio::io::AsyncWriteExt::write_all(&mut s, batch.as_bytes());
                            match tokio::time::timeout_at(until, write).await {
                                Ok(Ok(())) => {}
                                Ok(Err(_)) => {
                                    seen.cut += 1;
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                    }
                    tokio::time::sleep(RECONNECT_AFTER).await;
                }
                seen
            })
        })
        .collect();
    let mut total = Flooded::default();
    for t in tasks {
        let seen = t.await.expect("flood task");
        total.opened += seen.opened;
        total.cut += seen.cut;
    }
    total
}

/// One probe: its time from connect to the last byte, and the status line and body (or what went wrong).
fn probe_once(addr: SocketAddr) -> (Duration, Result<String, String>) {
    let started = Instant::now();
    let answer = (|| {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")?;
        let mut raw = String::new();
        s.read_to_string(&mut raw)?;
        Ok::<_, std::io::Error>(raw)
    })();
    let took = started.elapsed();
    let answer = answer.map_err(|e| e.to_string()).map(|raw| {
        let status = raw.lines().next().unwrap_or_default();
        let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        format!("{status} {}", body.trim())
    });
    (took, answer)
}

/// Probes `/readyz` at `addr` every [`PROBE_EVERY`] for `span`, on a thread of its own (blocking sockets, so the
/// flood's tasks in this process cannot delay it).
fn probe_during(
    addr: SocketAddr,
    span: Duration,
) -> std::thread::JoinHandle<Vec<(Duration, Result<String, String>)>> {
    std::thread::spawn(move || {
        let until = Instant::now() + span;
        let mut probes = Vec::new();
        while Instant::now() < until {
            probes.push(probe_once(addr));
            std::thread::sleep(PROBE_EVERY);
        }
        probes
    })
}

/// Floods `admin` while probing `probe` and checking that MQTT at `mqtt` is served; then checks what the server
/// counted. `what` names the binary in failure messages.
async fn flood_and_probe(what: &str, admin: Admin, probe: SocketAddr, mqtt: SocketAddr) {
    let probes = probe_during(probe, FLOOD_FOR);
    let flooding = tokio::spawn(flood(admin.addr));
    // Halfway through, an MQTT client connects and gets its QoS 1 publish acknowledged.
    tokio::time::sleep(FLOOD_FOR / 2).await;
    let (client, mut events, _) = v3_client(mqtt, &format!("{what}-during-flood"), |_| {}).await;
    client
        .publish("flood/served", rumqttc::QoS::AtLeastOnce, false, "x")
        .await
        .expect("queue the publish");
    events.next_matching("PUBACK", v3_puback).await;
    let flooded = flooding.await.expect("flood");
    let probes = probes.join().expect("probe thread");

    let slowest = probes
        .iter()
        .map(|(took, _)| *took)
        .max()
        .unwrap_or_default();
    let failed: Vec<_> = probes
        .iter()
        .filter(|(took, answer)| {
            *took >= PROBE_BOUND || answer.as_deref() != Ok("HTTP/1.1 200 OK ready")
        })
        .collect();
    eprintln!(
        "{what}: {} probes, slowest {slowest:?}; flood opened {} connections, {} cut",
        probes.len(),
        flooded.opened,
        flooded.cut
    );
    assert!(
        probes.len() >= 20,
        "{what}: only {} probes: {probes:?}",
        probes.len()
    );
    assert!(
        failed.is_empty(),
        "{what}: probes over {PROBE_BOUND:?} or not ready: {failed:?}"
    );
    assert!(
        flooded.cut > 0,
        "{what}: no flood connection was cut: {flooded:?}"
    );

    // The admin port serves again once the flood is gone, and says what it did.
    let answered = eventually(WAIT, || async {
        let r = fleetgate_testkit::http::get(admin.addr, "/healthz").await;
        (r.status == 200).then_some(())
    });
    answered
        .await
        .unwrap_or_else(|e| panic!("{what}: admin port not serving after the flood: {e}"));
    let refused = "fleetgate_admin_connections_refused_total";
    let cut = "fleetgate_admin_connections_cut_total";
    let per_ip = admin
        .metric(refused, &[("listener", "admin"), ("reason", "per_ip")])
        .await;
    let write = admin
        .metric(cut, &[("listener", "admin"), ("reason", "write_timeout")])
        .await;
    let counted: Vec<String> = fleetgate_testkit::http::get(admin.addr, "/metrics")
        .await
        .body
        .lines()
        .filter(|l| l.starts_with("fleetgate_admin_"))
        .map(str::to_string)
        .collect();
    assert!(
        per_ip > 0.0,
        "{what}: nothing refused by the per-IP cap: {counted:#?}"
    );
    assert!(
        write > 0.0,
        "{what}: nothing cut by the write deadline: {counted:#?}"
    );
    let probe_refusals = admin.metric(refused, &[("listener", "probe")]).await;
    assert_eq!(
        probe_refusals, 0.0,
        "{what}: the probe socket refused a probe"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooded_admin_port_never_starves_the_probes_of_either_binary() {
    let mut spec = NodeSpec::plain();
    spec.extra_admin = ADMIN_LINES.iter().map(|l| l.to_string()).collect();
    let mut node = Node::start(BIN, &spec).await;
    let node_probe = node.process.wait_for_listening(PROBE_ROLE).await;
    flood_and_probe("node", node.admin, node_probe, node.mqtt).await;

    let text = format!(
        "[lb]\nname = \"lb-flood\"\n\n[admin]\nbind = \"127.0.0.1:0\"\n{}\n\n\
         [[listeners]]\nname = \"mqtt\"\nbind = \"127.0.0.1:0\"\n\n\
         [[backends]]\nname = \"broker-0\"\naddress = \"{}\"\nproxy_protocol = \"off\"\n",
        ADMIN_LINES.join("\n"),
        node.mqtt
    );
    let mut lb = LbProcess::start_text(BIN, &text, "mqtt").await;
    let lb_probe = lb.process.wait_for_listening(PROBE_ROLE).await;
    flood_and_probe("lb", lb.admin, lb_probe, lb.mqtt).await;
    assert!(lb.process.try_status().is_none(), "the LB exited");
    assert!(node.process.try_status().is_none(), "the node exited");
}
