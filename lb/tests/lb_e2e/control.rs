//! The control plane in process: reloads (broken files rejected in place, listeners rebound without dropping
//! relays), health checks steering new clients, paced drains (1,000 relays at 200/s onto another LB), and
//! clients moved off a removed `drain = true` backend.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fleetgate_testkit::http::Response;
use fleetgate_testkit::raw::read_packet;
use fleetgate_testkit::{WAIT, eventually, wait_until};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::harness::*;

/// An LB named `lb-test` with one listener `mqtt` on `listener_bind` before `parts`, then `extra`.
fn lb_toml(listener_bind: &str, parts: &[String], extra: &str) -> String {
    let mut all = vec![listener("mqtt", listener_bind)];
    all.extend_from_slice(parts);
    lb_text("name = \"lb-test\"\nshutdown_grace = \"30s\"", &all, extra)
}

/// The first of `dev-0`, `dev-1`, ... that the LB pins to `backend`.
async fn id_pinned_to(lb: &TestLb, backend: &str) -> String {
    for i in 0..64 {
        let id = format!("dev-{i}");
        if lb.admin.pinned(&id).await == backend {
            return id;
        }
    }
    panic!("no client ID pinned to {backend}");
}

async fn ping(s: &mut TcpStream) -> bool {
    if s.write_all(&[0xC0, 0x00]).await.is_err() {
        return false;
    }
    matches!(
        tokio::time::timeout(WAIT, read_packet(s)).await,
        Ok(Some((0xD0, _)))
    )
}

#[tokio::test]
async fn broken_reload_is_rejected_and_listener_moves_without_dropping_relays() {
    let b0 = FakeBackend::start("b0").await;
    let b1 = FakeBackend::start("b1").await;
    let file = ConfigFile::new("lb.toml", &lb_toml("127.0.0.1:0", &[backend(&b0, "")], ""));
    let lb = TestLb::start_file(&file.path).await;
    let old_addr = lb.addr("mqtt");
    let mut held = mqtt_connect(old_addr, 4, "held").await.unwrap();

    // A file with an unknown field: rejected with file:line:column, old config in force, still ready.
    file.write(&lb_toml(
        "127.0.0.1:0",
        &[backend(&b0, "colour = \"red\"")],
        "",
    ));
    let Response { status, body } = lb.admin.post("/reload").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("lb.toml:12:1: unknown field `colour`"),
        "{body}"
    );
    assert!(
        lb.admin
            .metric("fleetgate_config_reloads_total", &[("result", "error")])
            .await
            >= 1.0
    );
    assert_eq!(lb.admin.get("/readyz").await.status, 200);
    assert_eq!(lb.admin.backends().await.len(), 1);
    assert!(ping(&mut held).await);

    // A valid change: another backend and the listener on another address.
    file.write(&lb_toml(
        "127.0.0.2:0",
        &[backend(&b0, ""), backend(&b1, "")],
        "",
    ));
    let Response { status, body } = lb.admin.post("/reload").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        lb.admin
            .metric("fleetgate_config_reloads_total", &[("result", "ok")])
            .await
            >= 1.0
    );
    let new_addr = lb.addr("mqtt");
    assert_eq!(new_addr.ip().to_string(), "127.0.0.2");
    assert_eq!(lb.admin.backends().await.len(), 2);
    mqtt_connect(new_addr, 5, "fresh").await.unwrap();
    assert!(
        eventually(WAIT, || async {
            (TcpStream::connect(old_addr).await.is_err()).then_some(())
        })
        .await
        .is_ok(),
        "the old socket must be closed"
    );
    assert!(
        ping(&mut held).await,
        "a relay on the old listener survives"
    );
    let client = lb.admin.json("/clients/held").await;
    assert_eq!(client["connected"], true, "{client}");
    assert_eq!(client["connections"], 1, "{client}");
}

#[tokio::test]
async fn mqtt_health_check_marks_a_frozen_backend_down_and_moves_new_clients() {
    let b0 = FakeBackend::start("b0").await;
    let b1 = FakeBackend::start("b1").await;
    let health = "[health]\nkind = \"mqtt\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2\n";
    let file = ConfigFile::new(
        "lb.toml",
        &lb_toml("127.0.0.1:0", &[backend(&b0, ""), backend(&b1, "")], health),
    );
    let lb = TestLb::start_file(&file.path).await;
    lb.admin.wait_health("b0", "up", WAIT).await;
    assert!(b0.stats.probes.load(Ordering::SeqCst) >= 1);
    let id = id_pinned_to(&lb, "b0").await;

    b0.frozen.store(true, Ordering::SeqCst);
    let frozen_at = Instant::now();
    lb.admin.wait_health("b0", "down", WAIT).await;
    // fall × interval plus the probe timeout, with room for a loaded machine.
    assert!(
        frozen_at.elapsed() < Duration::from_secs(3),
        "{:?}",
        frozen_at.elapsed()
    );
    assert_eq!(
        lb.admin
            .metric("fleetgate_lb_backend_up", &[("backend", "b0")])
            .await,
        0.0
    );
    assert_eq!(lb.admin.pinned(&id).await, "b1");
    mqtt_connect(lb.addr("mqtt"), 4, &id).await.unwrap();
    assert_eq!(b1.count(&id), 1);

    b0.frozen.store(false, Ordering::SeqCst);
    lb.admin.wait_health("b0", "up", WAIT).await;
    assert_eq!(lb.admin.pinned(&id).await, "b0");
    assert!(
        lb.admin
            .metric(
                "fleetgate_lb_backend_health_transitions_total",
                &[("backend", "b0")]
            )
            .await
            >= 2.0
    );
}

#[tokio::test]
async fn removed_backend_with_drain_has_its_clients_moved() {
    let b0 = FakeBackend::start("b0").await;
    let b1 = FakeBackend::start("b1").await;
    let drain = "[drain]\nrate = 100.0\n";
    let file = ConfigFile::new(
        "lb.toml",
        &lb_toml(
            "127.0.0.1:0",
            &[backend(&b0, "drain = true"), backend(&b1, "")],
            drain,
        ),
    );
    let lb = TestLb::start_file(&file.path).await;
    let mut clients = Vec::new();
    for i in 0..20 {
        let id = format!("dev-{i}");
        let pinned = lb.admin.pinned(&id).await;
        let s = mqtt_connect(lb.addr("mqtt"), 5, &id).await.unwrap();
        clients.push((id, pinned, s));
    }
    assert!(clients.iter().any(|c| c.1 == "b0") && clients.iter().any(|c| c.1 == "b1"));
    file.write(&lb_toml("127.0.0.1:0", &[backend(&b1, "")], drain));
    assert_eq!(lb.admin.post("/reload").await.status, 200);
    for (id, pinned, mut s) in clients {
        if pinned == "b0" {
            let got = tokio::time::timeout(WAIT, read_packet(&mut s))
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
    let what = "b0 to see a normal DISCONNECT for every moved client";
    wait_until(WAIT, what, || {
        b0.stats.graceful.load(Ordering::SeqCst) == b0.stats.connects.load(Ordering::SeqCst)
    })
    .await;
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
    let b0 = FakeBackend::start("b0").await;
    let b1 = FakeBackend::start("b1").await;
    let drain = "[drain]\nrate = 200.0\njitter = 0.2\ndelay = \"200ms\"\n";
    let parts = [backend(&b0, ""), backend(&b1, "")];
    let file_a = ConfigFile::new("a.toml", &lb_toml("127.0.0.1:0", &parts, drain));
    let file_b = ConfigFile::new("b.toml", &lb_toml("127.0.0.1:0", &parts, drain));
    let lb_a = TestLb::start_file(&file_a.path).await;
    let lb_b = TestLb::start_file(&file_b.path).await;
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
        tokio::time::timeout(WAIT, connected.recv())
            .await
            .unwrap()
            .unwrap();
    }
    wait_until(WAIT, "every relay registered", || {
        lb_a.handle.open_relays() == CLIENTS
    })
    .await;

    let started = Instant::now();
    lb_a.handle.drain();
    assert!(
        eventually(Duration::from_millis(150), || async {
            (lb_a.admin.get("/readyz").await.status == 503).then_some(())
        })
        .await
        .is_ok(),
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
    let graceful =
        b0.stats.graceful.load(Ordering::SeqCst) + b1.stats.graceful.load(Ordering::SeqCst);
    assert_eq!(graceful, CLIENTS);
    // ... and every reconnect landed on the backend the client had before (same hash, other LB).
    for n in 0..CLIENTS {
        let id = format!("dev-{n}");
        assert!(b0.count(&id) == 2 || b1.count(&id) == 2, "{id}");
    }
    // The drained LB exits as soon as everything is closed.
    wait_until(WAIT, "the drained LB to exit", || lb_a.handle.is_finished()).await;
}

#[tokio::test]
async fn discovered_backends_join_the_ring_with_the_discovery_settings() {
    let b0 = FakeBackend::start("b0").await;
    let b1 = FakeBackend::start("pod-1").await;
    let discovery = |addr: std::net::SocketAddr| {
        format!(
            "[discovery]\nendpoints = {{ static = [{{ name = \"pod-1\", address = \"{addr}\" }}] }}\n\
             drain = true\nhealth = {{ kind = \"tcp\", interval = \"100ms\" }}\n"
        )
    };
    let file = ConfigFile::new(
        "lb.toml",
        &lb_toml("127.0.0.1:0", &[backend(&b0, "")], &discovery(b1.addr)),
    );
    let lb = TestLb::start_file(&file.path).await;
    let pod = lb.admin.backend("pod-1").await;
    assert_eq!(pod["source"], "static", "{pod}");
    assert_eq!(pod["check"], "tcp", "{pod}");
    assert_eq!(pod["drain_on_removal"], true, "{pod}");
    let id = id_pinned_to(&lb, "pod-1").await;
    let mut held = mqtt_connect(lb.addr("mqtt"), 4, &id).await.unwrap();
    assert_eq!(b1.count(&id), 1);

    // The pod comes back with a new address under the same name: its clients stay pinned to it, and the
    // relay on the old address is not touched.
    let moved = FakeBackend::start("pod-1").await;
    file.write(&lb_toml(
        "127.0.0.1:0",
        &[backend(&b0, "")],
        &discovery(moved.addr),
    ));
    assert_eq!(lb.admin.post("/reload").await.status, 200);
    assert_eq!(lb.admin.pinned(&id).await, "pod-1");
    mqtt_connect(lb.addr("mqtt"), 4, &id).await.unwrap();
    assert_eq!(moved.count(&id), 1, "new connections go to the new address");
    assert!(ping(&mut held).await, "the relay to the old address stays");
}
