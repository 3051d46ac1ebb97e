//! Twenty reloads under load: 1,000 clients hold relays and publish while backends are added and removed, the
//! server certificate is rotated and one broken file is rejected. Zero relays may be lost, new connections must
//! follow each new config at once, and new TLS handshakes must get the rotated certificate.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fleetgate_testkit::http::Response;
use fleetgate_testkit::raw::{publish, read_packet};
use fleetgate_testkit::{Pki, WAIT, eventually, wait_until};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncWriteExt;

use crate::harness::*;

const CLIENTS: usize = 1000;
const RELOADS: usize = 20;
/// Each client publishes this often: 1,000 clients → 2,000 publishes per second through the LB.
const PUBLISH_EVERY: Duration = Duration::from_millis(500);

/// The LB `lb-reload`: a plain listener `mqtt`, a TLS listener `mqtts`, and `backends`.
fn reload_config(pki: &Pki, backends: &[&FakeBackend]) -> String {
    let mut parts = vec![
        listener("mqtt", "127.0.0.1:0"),
        tls_listener("mqtts", pki, "none", ""),
    ];
    parts.extend(backends.iter().map(|b| backend(b, "")));
    // Every test client is 127.0.0.1: the per-address cap must admit all of them.
    let limits = format!("[limits]\nmax_connections_per_ip = {}\n", 2 * CLIENTS);
    lb_text("name = \"lb-reload\"", &parts, &limits)
}

/// The DER of the certificate the LB serves to a handshake for `name`.
async fn served_cert(lb: &TestLb, pki: &Pki, name: &str) -> Vec<u8> {
    let connector = tokio_rustls::TlsConnector::from(pki.client_config(None));
    let tcp = tokio::net::TcpStream::connect(lb.addr("mqtts"))
        .await
        .unwrap();
    let tls = tokio::time::timeout(
        WAIT,
        connector.connect(ServerName::try_from(name.to_string()).unwrap(), tcp),
    )
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("handshake for {name}: {e}"));
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_clients_survive_twenty_reloads() {
    let started = Instant::now();
    let pki = Pki::new();
    let fakes: Vec<FakeBackend> = futures_all(5).await;
    let first = reload_config(&pki, &[&fakes[0], &fakes[1], &fakes[2]]);
    let file = ConfigFile::new("lb.toml", &first);
    let lb = TestLb::start_file(&file.path).await;
    let addr = lb.addr("mqtt");

    // 1,000 clients: connect, then publish every PUBLISH_EVERY until told to stop; then a PINGREQ must still
    // be answered. A client whose relay closes at any point is lost.
    let stop = Arc::new(AtomicBool::new(false));
    let (connected_tx, mut connected) = tokio::sync::mpsc::unbounded_channel();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let stop = stop.clone();
            let connected_tx = connected_tx.clone();
            tokio::spawn(async move {
                let level = if n % 2 == 0 { 5 } else { 4 };
                let mut s = mqtt_connect(addr, level, &format!("load-{n}")).await?;
                let _ = connected_tx.send(());
                let msg = publish(level, "telemetry/load", b"21.5C");
                // Spread the publishes over the period (pacing, not a wait for state).
                tokio::time::sleep(PUBLISH_EVERY.mul_f64((n % 100) as f64 / 100.0)).await;
                while !stop.load(Ordering::SeqCst) {
                    s.write_all(&msg)
                        .await
                        .map_err(|e| format!("load-{n}: publish: {e}"))?;
                    // Nothing may arrive (QoS 0 gets no answer): a read that completes is a close.
                    if let Ok(got) = tokio::time::timeout(PUBLISH_EVERY, read_packet(&mut s)).await
                    {
                        return Err(format!(
                            "load-{n}: relay ended or unexpected packet: {got:?}"
                        ));
                    }
                }
                s.write_all(&[0xC0, 0x00])
                    .await
                    .map_err(|e| e.to_string())?;
                match tokio::time::timeout(WAIT, read_packet(&mut s)).await {
                    Ok(Some((0xD0, _))) => Ok(()),
                    other => Err(format!("load-{n}: no PINGRESP at the end: {other:?}")),
                }
            })
        })
        .collect();
    for _ in 0..CLIENTS {
        tokio::time::timeout(Duration::from_secs(30), connected.recv())
            .await
            .expect("1,000 clients connected in time")
            .unwrap();
    }

    let mut generation = lb.admin.json("/backends").await["generation"]
        .as_u64()
        .unwrap();
    let mut rotated = 0;
    for r in 0..RELOADS {
        if r == 7 {
            // A broken file: rejected, located, the old snapshot stays, readiness untouched.
            file.write("[lb]\nname = \"lb-reload\"\n[[backends]\n");
            let Response { status, body } = lb.admin.post("/reload").await;
            assert_eq!(status, 400, "{body}");
            assert!(body.contains("lb.toml:3:"), "{body}");
            assert_eq!(lb.admin.get("/readyz").await.status, 200);
            assert_eq!(
                lb.admin.json("/backends").await["generation"]
                    .as_u64()
                    .unwrap(),
                generation
            );
            continue;
        }
        let set: Vec<&FakeBackend> = vec![&fakes[0], &fakes[1], &fakes[2 + r % 3]];
        if r % 5 == 2 {
            // Rotate the server certificate in place (same file names, new key and name).
            let name = format!("rot{r}.test");
            let rotated_in = pki.server_for(&name);
            std::fs::copy(&rotated_in.cert, pki.dir().join("staged.pem")).unwrap();
            std::fs::rename(pki.dir().join("staged.pem"), &pki.server().cert).unwrap();
            std::fs::copy(&rotated_in.key, pki.dir().join("staged.key")).unwrap();
            std::fs::rename(pki.dir().join("staged.key"), &pki.server().key).unwrap();
            rotated += 1;
        }
        file.write(&reload_config(&pki, &set));
        if r % 4 == 3 {
            // Let the file watcher do it.
            let before = generation;
            assert!(
                eventually(WAIT, || async {
                    (lb.admin.json("/backends").await["generation"]
                        .as_u64()
                        .unwrap()
                        > before)
                        .then_some(())
                })
                .await
                .is_ok(),
                "the watcher did not reload after reload {r}"
            );
        } else {
            let Response { status, body } = lb.admin.post("/reload").await;
            assert_eq!(status, 200, "reload {r}: {body}");
        }
        let backends = lb.admin.json("/backends").await;
        generation = backends["generation"].as_u64().unwrap();
        let mut names: Vec<String> = backends["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        let mut want: Vec<String> = set.iter().map(|b| b.name.clone()).collect();
        want.sort();
        assert_eq!(names, want, "reload {r}");
        // A new connection follows the new config at once.
        let id = format!("fresh-{r}");
        let pinned = lb.admin.pinned(&id).await;
        mqtt_connect(addr, 4, &id).await.unwrap();
        let fake = fakes.iter().find(|f| f.name == pinned).unwrap();
        assert_eq!(fake.count(&id), 1, "reload {r}: {id} must reach {pinned}");
        if r % 5 == 2 {
            let name = format!("rot{r}.test");
            let served = served_cert(&lb, &pki, &name).await;
            let on_disk = CertificateDer::from_pem_file(&pki.server().cert).unwrap();
            assert_eq!(served, on_disk.to_vec(), "reload {r}: rotated certificate");
        }
    }
    assert!(rotated >= 3);
    assert!(
        lb.admin
            .metric("fleetgate_config_reloads_total", &[("result", "error")])
            .await
            >= 1.0
    );
    assert!(
        lb.admin
            .metric("fleetgate_config_reloads_total", &[("result", "ok")])
            .await
            >= 19.0
    );

    // Every client keeps publishing through and after the reloads.
    let total = || {
        fakes
            .iter()
            .map(|f| f.stats.publishes.load(Ordering::SeqCst))
            .sum::<usize>()
    };
    let target = total() + CLIENTS;
    wait_until(WAIT, &format!("{target} publishes (they stall?)"), || {
        total() >= target
    })
    .await;
    // No backend connection ended while the reloads ran (the fresh probe clients close later, at the end).
    let ungraceful: usize = fakes
        .iter()
        .map(|f| f.stats.ungraceful.load(Ordering::SeqCst))
        .sum();
    assert!(
        ungraceful <= RELOADS,
        "{ungraceful} backend connections ended during the reloads"
    );
    stop.store(true, Ordering::SeqCst);
    let mut lost = Vec::new();
    for c in clients {
        if let Err(e) = c.await.unwrap() {
            lost.push(e);
        }
    }
    assert!(
        lost.is_empty(),
        "{} relays lost, first: {:?}",
        lost.len(),
        lost.first()
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
}

async fn futures_all(n: usize) -> Vec<FakeBackend> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(FakeBackend::start(&format!("b{i}")).await);
    }
    out
}
