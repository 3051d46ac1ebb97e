//! The control plane in process: reloads (broken files rejected in place, listeners rebound without dropping
//! relays), health checks steering new clients, paced drains (1,000 relays at 200/s onto another LB), and
//! clients moved off a removed `drain = true` backend.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::fleet::*;
use crate::harness::STEP;

fn write(path: &std::path::Path, text: &str) {
    // Write then rename, like an editor or a ConfigMap swap: the watcher never sees a half-written file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn lb_toml(listener_bind: &str, parts: &[String], extra: &str) -> String {
    format!(
        "[lb]\nname = \"lb-test\"\nshutdown_grace = \"30s\"\n[admin]\nbind = \"127.0.0.1:0\"\n\
         [[listeners]]\nname = \"mqtt\"\nbind = \"{listener_bind}\"\n{}\n{extra}\n",
        parts.concat()
    )
}

async fn ping(s: &mut TcpStream) -> bool {
    if s.write_all(&[0xC0, 0x00]).await.is_err() {
        return false;
    }
    matches!(
        tokio::time::timeout(STEP, read_packet(s)).await,
        Ok(Some((0xD0, _)))
    )
}

#[tokio::test]
async fn broken_reload_is_rejected_and_listener_moves_without_dropping_relays() {
    let b0 = MqttFake::start("b0").await;
    let b1 = MqttFake::start("b1").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    write(&path, &lb_toml("127.0.0.1:0", &[backend(&b0, "")], ""));
    let lb = FileLb::start(&path).await;
    let old_addr = lb.addr("mqtt");
    let mut held = mqtt_connect(old_addr, 4, "held").await.unwrap();

    // A file with an unknown field: rejected with file:line:column, old config in force, still ready.
    write(
        &path,
        &lb_toml("127.0.0.1:0", &[backend(&b0, "colour = \"red\"")], ""),
    );
    let (status, body) = lb.admin("POST", "/reload").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("lb.toml:12:1: unknown field `colour`"),
        "{body}"
    );
    assert!(
        lb.metric("fleetgate_config_reloads_total", &["result=\"error\""])
            .await
            >= 1.0
    );
    assert_eq!(lb.admin("GET", "/readyz").await.0, 200);
    assert_eq!(
        lb.json("/backends").await["backends"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(ping(&mut held).await);

    // A valid change: another backend and the listener on another address.
    write(
        &path,
        &lb_toml("127.0.0.2:0", &[backend(&b0, ""), backend(&b1, "")], ""),
    );
    let (status, body) = lb.admin("POST", "/reload").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        lb.metric("fleetgate_config_reloads_total", &["result=\"ok\""])
            .await
            >= 1.0
    );
    let new_addr = lb.addr("mqtt");
    assert_eq!(new_addr.ip().to_string(), "127.0.0.2");
    assert_eq!(
        lb.json("/backends").await["backends"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    mqtt_connect(new_addr, 5, "fresh").await.unwrap();
    assert!(
        eventually(STEP, || async {
            TcpStream::connect(old_addr).await.is_err()
        })
        .await,
        "the old socket must be closed"
    );
    assert!(
        ping(&mut held).await,
        "a relay on the old listener survives"
    );
    let client = lb.json("/clients/held").await;
    assert_eq!(client["connected"], true, "{client}");
    assert_eq!(client["connections"], 1, "{client}");
}

#[tokio::test]
async fn mqtt_health_check_marks_a_frozen_backend_down_and_moves_new_clients() {
    let b0 = MqttFake::start("b0").await;
    let b1 = MqttFake::start("b1").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    let health = "[health]\nkind = \"mqtt\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2\n";
    write(
        &path,
        &lb_toml("127.0.0.1:0", &[backend(&b0, ""), backend(&b1, "")], health),
    );
    let lb = FileLb::start(&path).await;
    let health_of = |name: &'static str| {
        let lb = &lb;
        async move {
            let v = lb.json("/backends").await;
            v["backends"]
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["name"] == name)
                .unwrap()["health"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    assert!(eventually(STEP, || async { health_of("b0").await == "up" }).await);
    assert!(b0.stats.probes.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    let mut on_b0 = None;
    for i in 0..64 {
        let id = format!("dev-{i}");
        if lb.pinned(&id).await == "b0" {
            on_b0 = Some(id);
            break;
        }
    }
    let id = on_b0.unwrap();

    b0.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    let frozen_at = Instant::now();
    assert!(eventually(STEP, || async { health_of("b0").await == "down" }).await);
    // fall × interval plus the probe timeout, with room for a loaded machine.
    assert!(
        frozen_at.elapsed() < Duration::from_secs(3),
        "{:?}",
        frozen_at.elapsed()
    );
    assert_eq!(
        lb.metric("fleetgate_lb_backend_up", &["backend=\"b0\""])
            .await,
        0.0
    );
    assert_eq!(lb.pinned(&id).await, "b1");
    mqtt_connect(lb.addr("mqtt"), 4, &id).await.unwrap();
    assert_eq!(b1.count(&id), 1);

    b0.frozen.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(eventually(STEP, || async { health_of("b0").await == "up" }).await);
    assert_eq!(lb.pinned(&id).await, "b0");
    assert!(
        lb.metric(
            "fleetgate_lb_backend_health_transitions_total",
            &["backend=\"b0\""]
        )
        .await
            >= 2.0
    );
}

#[tokio::test]
async fn removed_backend_with_drain_has_its_clients_moved() {
    let b0 = MqttFake::start("b0").await;
    let b1 = MqttFake::start("b1").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    let drain = "[drain]\nrate = 100.0\n";
    write(
        &path,
        &lb_toml(
            "127.0.0.1:0",
            &[backend(&b0, "drain = true"), backend(&b1, "")],
            drain,
        ),
    );
    let lb = FileLb::start(&path).await;
    let mut clients = Vec::new();
    for i in 0..20 {
        let id = format!("dev-{i}");
        let pinned = lb.pinned(&id).await;
        let s = mqtt_connect(lb.addr("mqtt"), 5, &id).await.unwrap();
        clients.push((id, pinned, s));
    }
    assert!(clients.iter().any(|c| c.1 == "b0") && clients.iter().any(|c| c.1 == "b1"));
    write(&path, &lb_toml("127.0.0.1:0", &[backend(&b1, "")], drain));
    assert_eq!(lb.admin("POST", "/reload").await.0, 200);
    for (id, pinned, mut s) in clients {
        if pinned == "b0" {
            let got = tokio::time::timeout(STEP, read_packet(&mut s))
                .await
                .unwrap();
            assert_eq!(got, Some((0xE0, vec![0x8B, 0x00])), "{id}");
            assert_eq!(read_packet(&mut s).await, None);
            mqtt_connect(lb.addr("mqtt"), 5, &id).await.unwrap();
            assert_eq!(b1.count(&id), 1, "{id} reconnects to the remaining backend");
        } else {
            assert!(ping(&mut s).await, "{id} on b1 must stay");
        }
    }
    assert!(
        eventually(STEP, || async {
            b0.stats.graceful.load(std::sync::atomic::Ordering::SeqCst)
                == b0.stats.connects.load(std::sync::atomic::Ordering::SeqCst)
        })
        .await,
        "b0 must see a normal DISCONNECT for every moved client"
    );
}

/// What one drained client saw.
struct Drained {
    level: u8,
    disconnect_8b: bool,
    closed_at: Instant,
    reconnected: Result<(), String>,
}

#[tokio::test]
async fn drain_moves_1000_connections_at_200_per_second_onto_the_other_lb() {
    const CLIENTS: usize = 1000;
    let b0 = MqttFake::start("b0").await;
    let b1 = MqttFake::start("b1").await;
    let dir = tempfile::tempdir().unwrap();
    let drain = "[drain]\nrate = 200.0\njitter = 0.2\ndelay = \"200ms\"\n";
    let parts = [backend(&b0, ""), backend(&b1, "")];
    let path_a = dir.path().join("a.toml");
    let path_b = dir.path().join("b.toml");
    write(&path_a, &lb_toml("127.0.0.1:0", &parts, drain));
    write(&path_b, &lb_toml("127.0.0.1:0", &parts, drain));
    let lb_a = FileLb::start(&path_a).await;
    let lb_b = FileLb::start(&path_b).await;
    let (addr_a, addr_b) = (lb_a.addr("mqtt"), lb_b.addr("mqtt"));

    let (connected_tx, mut connected) = tokio::sync::mpsc::unbounded_channel();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let connected_tx = connected_tx.clone();
            tokio::spawn(async move {
                let level = if n % 2 == 0 { 5 } else { 4 };
                let id = format!("dev-{n}");
                let mut s = mqtt_connect(addr_a, level, &id).await.unwrap();
                let _ = connected_tx.send(());
                let mut disconnect_8b = false;
                let deadline = Duration::from_secs(30);
                while let Ok(Some((first, body))) =
                    tokio::time::timeout(deadline, read_packet(&mut s)).await
                {
                    disconnect_8b |= first == 0xE0 && body.first() == Some(&0x8B);
                }
                let closed_at = Instant::now();
                let reconnected = mqtt_connect(addr_b, level, &id).await.map(|_| ());
                Drained {
                    level,
                    disconnect_8b,
                    closed_at,
                    reconnected,
                }
            })
        })
        .collect();
    for _ in 0..CLIENTS {
        tokio::time::timeout(STEP, connected.recv())
            .await
            .unwrap()
            .unwrap();
    }
    assert!(eventually(STEP, || async { lb_a.handle.open_relays() == CLIENTS }).await);

    let started = Instant::now();
    lb_a.handle.drain();
    assert!(
        eventually(Duration::from_millis(150), || async {
            lb_a.admin("GET", "/readyz").await.0 == 503
        })
        .await,
        "/readyz must turn false at once"
    );
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let last = results.iter().map(|r| r.closed_at).max().unwrap();
    let took = last.duration_since(started);
    // 200 ms delay + 1,000 / 200 per second = 5.2 s; the schedule is cumulative, so jitter averages out.
    assert!(
        took > Duration::from_millis(4500) && took < Duration::from_secs(8),
        "{took:?}"
    );
    for r in &results {
        assert_eq!(
            r.disconnect_8b,
            r.level == 5,
            "v5 clients, and only they, get DISCONNECT 0x8B"
        );
        assert!(r.reconnected.is_ok(), "{:?}", r.reconnected);
    }
    // Spread: in the first second of closing, far fewer than all clients were moved.
    let first_second = results
        .iter()
        .filter(|r| r.closed_at.duration_since(started) < Duration::from_millis(1200))
        .count();
    assert!(
        first_second < 400,
        "{first_second} closed in the first second"
    );
    // The node saw a normal DISCONNECT for every drained relay (no will, session kept) ...
    let graceful = b0.stats.graceful.load(std::sync::atomic::Ordering::SeqCst)
        + b1.stats.graceful.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(graceful, CLIENTS);
    // ... and every reconnect landed on the backend the client had before (same hash, other LB).
    for n in 0..CLIENTS {
        let id = format!("dev-{n}");
        assert!(b0.count(&id) == 2 || b1.count(&id) == 2, "{id}");
    }
    // The drained LB exits as soon as everything is closed.
    assert!(eventually(STEP, || async { lb_a.handle.is_finished() }).await);
}

#[tokio::test]
async fn discovered_backends_join_the_ring_with_the_discovery_settings() {
    let b0 = MqttFake::start("b0").await;
    let b1 = MqttFake::start("pod-1").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lb.toml");
    let discovery = |addr: std::net::SocketAddr| {
        format!(
            "[discovery]\nendpoints = {{ static = [{{ name = \"pod-1\", address = \"{addr}\" }}] }}\n\
             drain = true\nhealth = {{ kind = \"tcp\", interval = \"100ms\" }}\n"
        )
    };
    write(
        &path,
        &lb_toml("127.0.0.1:0", &[backend(&b0, "")], &discovery(b1.addr)),
    );
    let lb = FileLb::start(&path).await;
    let v = lb.json("/backends").await;
    let pod = v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "pod-1")
        .cloned()
        .unwrap();
    assert_eq!(pod["source"], "static", "{pod}");
    assert_eq!(pod["check"], "tcp", "{pod}");
    assert_eq!(pod["drain_on_removal"], true, "{pod}");
    let mut on_pod = None;
    for i in 0..64 {
        let id = format!("dev-{i}");
        if lb.pinned(&id).await == "pod-1" {
            on_pod = Some(id);
            break;
        }
    }
    let id = on_pod.unwrap();
    let mut held = mqtt_connect(lb.addr("mqtt"), 4, &id).await.unwrap();
    assert_eq!(b1.count(&id), 1);

    // The pod comes back with a new address under the same name: its clients stay pinned to it, and the
    // relay on the old address is not touched.
    let moved = MqttFake::start("pod-1").await;
    write(
        &path,
        &lb_toml("127.0.0.1:0", &[backend(&b0, "")], &discovery(moved.addr)),
    );
    assert_eq!(lb.admin("POST", "/reload").await.0, 200);
    assert_eq!(lb.pinned(&id).await, "pod-1");
    mqtt_connect(lb.addr("mqtt"), 4, &id).await.unwrap();
    assert_eq!(moved.count(&id), 1, "new connections go to the new address");
    assert!(ping(&mut held).await, "the relay to the old address stays");
}
