//! Sessions across nodes: takeover with queued messages, a killed node's clients served by the next one, a rolling
//! restart under QoS 1 load with nothing lost.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetgate_testkit::rumqttc_client::{Missed, try_v3_client, v3_puback, v3_publish};
use fleetgate_testkit::{Node, Signal, WAIT, bounded, eventually, id_owned_by, ring_owner};
use rumqttc::QoS;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_moves_a_persistent_session_with_its_queued_messages() {
    with_cluster(async |nodes| {
        let id = id_owned_by(&NAMES, NAMES[0], "persist");
        let first = connect(nodes[0].mqtt, &id, false).await;
        first.subscribe("inbox/#", QoS::AtLeastOnce).await;
        wait_routes(&nodes[1], 1.0).await;
        first.disconnect().await;

        let publisher = owned_client(&nodes[1], "tp").await;
        for i in 0..5 {
            publisher.publish1("inbox/x", &i.to_string()).await;
        }
        wait_queued(&nodes[0], &id, 5).await;

        // The client comes back on broker-2 (not its ring owner): broker-2 fetches the session.
        let mut again = connect(nodes[2].mqtt, &id, false).await;
        assert!(again.present, "session present after takeover");
        let got: Vec<String> = again.take(5).await.iter().map(text).collect();
        assert_eq!(got, vec!["0", "1", "2", "3", "4"]);
        assert!(
            nodes[2]
                .admin
                .metric(
                    "fleetgate_cluster_takeover_requests_total",
                    &[("direction", "sent")]
                )
                .await
                >= 1.0
        );
        assert!(
            nodes[0]
                .admin
                .metric(
                    "fleetgate_cluster_takeover_requests_total",
                    &[("direction", "received")]
                )
                .await
                >= 1.0
        );
        // New messages follow the session to broker-2.
        publisher.publish1("inbox/y", "after").await;
        assert_eq!(text(&again.take(1).await[0]), "after");

        // And back on broker-0, its owner, which finds it through broker-2's claim.
        again.disconnect().await;
        publisher.publish1("inbox/z", "queued-on-2").await;
        wait_queued(&nodes[2], &id, 1).await;
        let mut home = connect(nodes[0].mqtt, &id, false).await;
        assert!(home.present);
        assert_eq!(text(&home.take(1).await[0]), "queued-on-2");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_peer_routes_dropped_within_3s_and_clients_served_by_the_next_node() {
    with_cluster(async |mut nodes| {
        let id = id_owned_by(&NAMES, NAMES[2], "victim");
        let sub = connect(nodes[2].mqtt, &id, true).await;
        sub.subscribe("k/#", QoS::AtLeastOnce).await;
        wait_routes(&nodes[0], 1.0).await;

        let killed_at = Instant::now();
        nodes[2].process.signal(Signal::KILL);
        let gone = Duration::from_secs(5);
        for n in &nodes[..2] {
            for (gauge, left) in [
                ("fleetgate_cluster_remote_routes", 0.0),
                ("fleetgate_cluster_peers_up", 1.0),
            ] {
                n.admin.wait_metric(gauge, &[], gone, |v| v == left).await;
            }
        }
        let took = killed_at.elapsed();
        assert!(
            took < Duration::from_millis(3500),
            "routes dropped after {took:?}"
        );
        drop(sub);
        let dead = nodes.pop().unwrap();
        drop(dead);

        // The client reconnects to the next node on the ring (what the LB does) and is served there.
        let next = ring_owner(&NAMES[..2], &id);
        let idx = NAMES.iter().position(|n| *n == next).unwrap();
        assert_delivered(&nodes[idx], &id, &nodes[1 - idx], &NAMES[..2], "k").await;
    })
    .await;
}

/// One persistent QoS 1 subscriber per node's ring share; publishers keep publishing while every node is
/// restarted in turn (SIGTERM: drain and hand over, then a new process with the same name); every client that
/// is disconnected reconnects to the node the ring of the live nodes assigns (what the LB does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_under_qos1_load_loses_nothing() {
    bounded(Duration::from_secs(240), async {
        let mut nodes: Vec<Option<Node>> = start3().await.into_iter().map(Some).collect();
        const PUBLISHERS: usize = 3;
        const PER_PUBLISHER: usize = 200;
        /// Messages received (all subscribers) between two restarts: the restarts happen under load.
        const LOAD_BETWEEN_RESTARTS: usize = 30;
        /// Pause before a client tries the ring's owner again while a node restarts.
        const RETRY_PAUSE: Duration = Duration::from_millis(100);
        /// Bound on a publisher's CONNACK and each PUBACK before it reconnects.
        const ACK_WAIT: Duration = Duration::from_secs(3);
        /// Time between a publisher's messages: about 100 per second each, for the whole rolling restart.
        const PUBLISH_PACE: Duration = Duration::from_millis(10);
        let sub_ids: Vec<String> = NAMES.iter().map(|n| id_owned_by(&NAMES, n, "rr-sub")).collect();
        // Each subscriber starts on its owner with a persistent session.
        for (i, id) in sub_ids.iter().enumerate() {
            let c = connect(nodes[i].as_ref().unwrap().mqtt, id, false).await;
            c.subscribe("load/#", QoS::AtLeastOnce).await;
            c.disconnect().await;
        }
        for n in nodes.iter().flatten() {
            wait_routes(n, 1.0).await;
        }
        let received: Arc<Mutex<BTreeMap<String, HashSet<String>>>> = Default::default();
        let live = |nodes: &Vec<Option<Node>>| -> Vec<(String, SocketAddr)> {
            nodes.iter().flatten().map(|n| (n.name.clone(), n.mqtt)).collect()
        };
        let addrs = Arc::new(Mutex::new(live(&nodes)));
        let stop = tokio_util::sync::CancellationToken::new();
        // Subscribers: reconnect to the ring owner among live nodes whenever disconnected.
        let mut tasks = Vec::new();
        for id in sub_ids.clone() {
            let (addrs, received, stop) = (addrs.clone(), received.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let target = pick(&addrs, &id);
                    let Ok(mut c) = try_connect(target, &id, false).await else {
                        // A retry pause while the node restarts, not a wait for state.
                        tokio::time::sleep(RETRY_PAUSE).await;
                        continue;
                    };
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            p = c.events.next_within(WAIT, v3_publish) => match p {
                                Ok(p) => { received.lock().unwrap().entry(id.clone()).or_default().insert(text(&p)); }
                                Err(Missed::TimedOut) => {}
                                Err(_) => break,
                            },
                        }
                    }
                }
            }));
        }
        // Publishers: QoS 1, clean sessions, reconnecting likewise; a message counts as sent once PUBACKed,
        // and is resent after a reconnect until then.
        let mut pubs = Vec::new();
        for p in 0..PUBLISHERS {
            let addrs = addrs.clone();
            pubs.push(tokio::spawn(async move {
                let id = format!("rr-pub-{p}");
                let mut next = 0;
                while next < PER_PUBLISHER {
                    let target = pick(&addrs, &id);
                    let keep_alive = |o: &mut rumqttc::MqttOptions| {
                        o.set_keep_alive(Duration::from_secs(10));
                    };
                    let connecting = try_v3_client(target, &id, keep_alive);
                    let Ok(Ok((client, mut events, _))) = tokio::time::timeout(ACK_WAIT, connecting).await else {
                        // A retry pause while the node restarts, not a wait for state.
                        tokio::time::sleep(RETRY_PAUSE).await;
                        continue;
                    };
                    while next < PER_PUBLISHER {
                        let payload = format!("{p}-{next}");
                        if client.publish("load/t", QoS::AtLeastOnce, false, payload).await.is_err() {
                            break;
                        }
                        match events.next_within(ACK_WAIT, v3_puback).await {
                            Ok(()) => next += 1,
                            Err(_) => break,
                        }
                        // Paces the load (the restarts must happen while it runs), not a wait for state.
                        tokio::time::sleep(PUBLISH_PACE).await;
                    }
                }
            }));
        }
        // Restart every node in turn under the load: each restart waits until messages flowed since the last one
        // (or the publishers are done).
        let total = || received.lock().unwrap().values().map(HashSet::len).sum::<usize>();
        for i in 0..3 {
            let before = total();
            let flowing = eventually(WAIT, || {
                let moved = total() >= before + LOAD_BETWEEN_RESTARTS;
                let done = pubs.iter().all(|p| p.is_finished());
                async move { (moved || done).then_some(()) }
            })
            .await;
            assert!(flowing.is_ok(), "no load flows before restart {i}");
            let mut old = nodes[i].take().unwrap();
            let (status, killed) = old.process.terminate(Duration::from_secs(15)).await;
            assert!(!killed, "{} drained in time ({status})", old.name);
            *addrs.lock().unwrap() = live(&nodes);
            let peers: Vec<(&str, SocketAddr)> = nodes.iter().flatten().map(|n| (n.name.as_str(), n.cluster())).collect();
            let fresh = start_node(NAMES[i], &peers, "").await;
            fresh.admin.wait_ready(true, WAIT).await;
            nodes[i] = Some(fresh);
            wait_linked(&nodes.iter().flatten().collect::<Vec<_>>(), 2.0, false).await;
            *addrs.lock().unwrap() = live(&nodes);
        }
        for p in pubs {
            p.await.unwrap();
        }
        let want = PUBLISHERS * PER_PUBLISHER;
        let done = eventually(Duration::from_secs(30), || {
            let r = received.lock().unwrap();
            let ok = sub_ids.iter().all(|id| r.get(id).map_or(0, HashSet::len) == want);
            async move { ok.then_some(()) }
        })
        .await;
        stop.cancel();
        let counts: Vec<usize> = {
            let r = received.lock().unwrap();
            sub_ids.iter().map(|id| r.get(id).map_or(0, HashSet::len)).collect()
        };
        let missing: Vec<Vec<String>> = {
            let r = received.lock().unwrap();
            sub_ids
                .iter()
                .map(|id| {
                    let got = r.get(id).cloned().unwrap_or_default();
                    (0..PUBLISHERS)
                        .flat_map(|p| (0..PER_PUBLISHER).map(move |i| format!("{p}-{i}")))
                        .filter(|m| !got.contains(m))
                        .collect()
                })
                .collect()
        };
        assert!(
            done.is_ok(),
            "every subscriber gets all {want} messages: {counts:?}, missing {missing:?}"
        );
        for t in tasks {
            let _ = t.await;
        }
    })
    .await;
}

/// The address of the node the ring of the live nodes in `addrs` assigns `id` to.
fn pick(addrs: &Mutex<Vec<(String, SocketAddr)>>, id: &str) -> SocketAddr {
    let list = addrs.lock().unwrap().clone();
    let names: Vec<&str> = list.iter().map(|(n, _)| n.as_str()).collect();
    let owner = ring_owner(&names, id);
    list.iter().find(|(n, _)| *n == owner).unwrap().1
}

/// A node of a cluster that stores its sessions (`[storage] mode = "disk"`) killed with SIGKILL: restarted on the
/// same directory it has its persistent session back with what was queued — published on it and forwarded by
/// its peer — and its peer routes to the restored subscription again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_that_stores_its_sessions_has_them_back_in_the_cluster() {
    bounded(TEST_LIMIT, async {
        let dir = fleetgate_testkit::scratch_dir();
        let storage = format!(
            "\n[storage]\nmode = \"disk\"\npath = {:?}\n",
            dir.path().join("store").display().to_string()
        );
        let n0 = start_node(NAMES[0], &[], "").await;
        let peers = [(NAMES[0], n0.cluster())];
        let n1 = start_node(NAMES[1], &peers, &storage).await;
        wait_linked(&[&n0, &n1], 1.0, true).await;

        let mut sub = connect(n1.mqtt, "stored-sub", false).await;
        sub.subscribed("stored/#", QoS::AtLeastOnce).await;
        wait_routes(&n0, 1.0).await;
        sub.disconnect().await;
        n1.admin.wait_connected("stored-sub", false, WAIT).await;
        let mut local = connect(n1.mqtt, "stored-pub-1", true).await;
        let mut remote = connect(n0.mqtt, "stored-pub-0", true).await;
        for i in 0..20 {
            local.publish1("stored/local", &format!("l{i}")).await;
            remote.publish1("stored/remote", &format!("r{i}")).await;
        }
        local.events.take(20, "PUBACK", v3_puback).await;
        remote.events.take(20, "PUBACK", v3_puback).await;
        wait_queued(&n1, "stored-sub", 40).await;

        n1.process.signal(Signal::KILL);
        drop(n1);
        let n1 = start_node(NAMES[1], &peers, &storage).await;
        wait_linked(&[&n0, &n1], 1.0, true).await;
        // The restored session's subscription is advertised again: a message published on the peer now reaches it.
        wait_routes(&n0, 1.0).await;
        let mut remote = connect(n0.mqtt, "stored-pub-0b", true).await;
        remote.publish1("stored/after", "after").await;
        remote.events.take(1, "PUBACK", v3_puback).await;

        let mut back = connect(n1.mqtt, "stored-sub", false).await;
        assert!(back.present, "the session was not restored");
        let mut got: Vec<String> = back
            .drain(Duration::from_secs(2))
            .await
            .iter()
            .map(text)
            .collect();
        got.sort();
        let mut want: Vec<String> = (0..20)
            .flat_map(|i| [format!("l{i}"), format!("r{i}")])
            .chain(["after".to_string()])
            .collect();
        want.sort();
        assert_eq!(got, want);
    })
    .await;
}
