//! Three `fleetgate node` processes on loopback joined into one cluster: cross-node delivery at every QoS with
//! order kept, wildcard and shared subscriptions across nodes, retained replication, session takeover between
//! nodes with queued QoS 1 messages, a rolling restart under load with zero loss, and a kill -9 whose routes the
//! others drop within 3 s; peers discovered through DNS SRV records (a stub DNS server standing in for a
//! Kubernetes headless Service); cluster links under mutual TLS refusing a node of another CA and a node claiming a name its certificate lacks. Clients are rumqttc (MQTT 3.1.1 and 5); client IDs are picked by the same ring the
//! LB and the nodes use, so each test knows which node owns which client.

#![allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING)

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fleetgate_testkit::cluster::{ClusterNode, id_owned_by, ring_owner};
use fleetgate_testkit::dns::StubDns;
use fleetgate_testkit::{CertFiles, Pki, eventually};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const BIN: &str = env!("CARGO_BIN_EXE_fleetgate");
/// Bound of a whole test: process starts and polls share two cores with compilers.
const TEST_LIMIT: Duration = Duration::from_secs(120);
/// Bound of one wait inside a test.
const WAIT: Duration = Duration::from_secs(15);
const NAMES: [&str; 3] = ["broker-0", "broker-1", "broker-2"];

/// Starts broker-0..2 as a full mesh and waits until each is ready with two peers up.
async fn start3() -> Vec<ClusterNode> {
    let n0 = ClusterNode::start(BIN, NAMES[0], &[], "").await;
    let n1 = ClusterNode::start(BIN, NAMES[1], &[(NAMES[0], n0.cluster)], "").await;
    let n2 = ClusterNode::start(
        BIN,
        NAMES[2],
        &[(NAMES[0], n0.cluster), (NAMES[1], n1.cluster)],
        "",
    )
    .await;
    let nodes = vec![n0, n1, n2];
    for n in &nodes {
        n.wait_metric("fleetgate_cluster_peers_up", &[], WAIT, |v| v == 2.0)
            .await;
        n.wait_ready(true, WAIT).await;
    }
    nodes
}

/// A rumqttc client with its event loop on a task; incoming PUBLISHes on `rx`.
struct Client {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<rumqttc::Publish>,
    present: bool,
    task: JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn connect(addr: SocketAddr, id: &str, clean: bool) -> Client {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_clean_session(clean);
    o.set_keep_alive(Duration::from_secs(10));
    o.set_inflight(100);
    let (client, mut el) = AsyncClient::new(o, 1000);
    let (tx, rx) = mpsc::unbounded_channel();
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(a))) => {
                    let _ = ack_tx.send(a.session_present);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(p);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    let present = tokio::time::timeout(WAIT, ack_rx.recv())
        .await
        .unwrap_or_else(|_| panic!("{id}: no CONNACK from {addr}"))
        .unwrap_or_else(|| panic!("{id}: connection to {addr} failed"));
    Client {
        client,
        rx,
        present,
        task,
    }
}

impl Client {
    async fn subscribe(&self, filter: &str, qos: QoS) {
        self.client.subscribe(filter, qos).await.unwrap();
    }

    async fn publish(&self, topic: &str, qos: QoS, retain: bool, payload: &str) {
        self.client
            .publish(topic, qos, retain, payload.as_bytes().to_vec())
            .await
            .unwrap();
    }

    /// The next `n` messages, panicking after `WAIT`.
    async fn take(&mut self, n: usize) -> Vec<rumqttc::Publish> {
        let mut out = Vec::new();
        while out.len() < n {
            match tokio::time::timeout(WAIT, self.rx.recv()).await {
                Ok(Some(p)) => out.push(p),
                _ => panic!("got {} of {n} messages: {out:?}", out.len()),
            }
        }
        out
    }

    /// Whatever arrives within `quiet`.
    async fn drain(&mut self, quiet: Duration) -> Vec<rumqttc::Publish> {
        let mut out = Vec::new();
        while let Ok(Some(p)) = tokio::time::timeout(quiet, self.rx.recv()).await {
            out.push(p);
        }
        out
    }

    async fn disconnect(mut self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(WAIT, &mut self.task).await;
    }
}

fn text(p: &rumqttc::Publish) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}

/// Waits until `node` has at least `n` routes from its peers.
async fn wait_routes(node: &ClusterNode, n: f64) {
    node.wait_metric("fleetgate_cluster_remote_routes", &[], WAIT, |v| v >= n)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_qos_levels_order_and_wildcards() {
    tokio::time::timeout(TEST_LIMIT, async {
        let nodes = start3().await;
        let sub_id = id_owned_by(&NAMES, NAMES[1], "sub");
        let pub_id = id_owned_by(&NAMES, NAMES[0], "pub");
        let mut sub = connect(nodes[1].mqtt, &sub_id, true).await;
        sub.subscribe("sensors/+/temp", QoS::ExactlyOnce).await;
        sub.subscribe("order/#", QoS::AtLeastOnce).await;
        wait_routes(&nodes[0], 2.0).await;
        wait_routes(&nodes[2], 2.0).await;

        let publisher = connect(nodes[0].mqtt, &pub_id, true).await;
        for (qos, name) in [
            (QoS::AtMostOnce, "q0"),
            (QoS::AtLeastOnce, "q1"),
            (QoS::ExactlyOnce, "q2"),
        ] {
            publisher.publish("sensors/a/temp", qos, false, name).await;
            let got = sub.take(1).await;
            assert_eq!(text(&got[0]), name);
            assert_eq!(got[0].qos, qos, "{name}");
            assert_eq!(got[0].topic, "sensors/a/temp");
        }
        // Not matching the wildcard: not forwarded.
        publisher
            .publish("sensors/a/b/temp", QoS::AtLeastOnce, false, "no")
            .await;
        // Per-publisher order across the link.
        for i in 0..100 {
            publisher
                .publish("order/x", QoS::AtLeastOnce, false, &i.to_string())
                .await;
        }
        let got: Vec<String> = sub.take(100).await.iter().map(text).collect();
        let want: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        assert_eq!(got, want);
        assert!(sub.drain(Duration::from_millis(300)).await.is_empty());
        assert!(
            nodes[0]
                .metric("fleetgate_cluster_forwarded_total", &[])
                .await
                >= 103.0
        );
    })
    .await
    .expect("test timed out");
}

/// One publisher connection keeps publishing on one topic while subscribers on the other nodes come and go: each
/// message reaches exactly the nodes with a matching subscriber at that moment (a connection remembers where its
/// last topic went; route changes must void that).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_topic_follows_subscribers_joining_and_leaving_other_nodes() {
    tokio::time::timeout(TEST_LIMIT, async {
        let nodes = start3().await;
        let publisher = connect(nodes[0].mqtt, &id_owned_by(&NAMES, NAMES[0], "rpub"), true).await;
        // Nobody subscribes yet: the publisher's topic goes nowhere (counted as received once it is handled).
        publisher
            .publish("fleet/7", QoS::AtLeastOnce, false, "m0")
            .await;
        nodes[0]
            .wait_metric("fleetgate_messages_received_total", &[], WAIT, |v| v >= 1.0)
            .await;

        let mut b = connect(nodes[1].mqtt, &id_owned_by(&NAMES, NAMES[1], "rsub"), true).await;
        b.subscribe("fleet/7", QoS::AtLeastOnce).await;
        wait_routes(&nodes[0], 1.0).await;
        publisher
            .publish("fleet/7", QoS::AtLeastOnce, false, "m1")
            .await;
        assert_eq!(text(&b.take(1).await[0]), "m1");

        let mut c = connect(nodes[2].mqtt, &id_owned_by(&NAMES, NAMES[2], "rsub"), true).await;
        c.subscribe("fleet/+", QoS::AtLeastOnce).await;
        wait_routes(&nodes[0], 2.0).await;
        publisher
            .publish("fleet/7", QoS::AtLeastOnce, false, "m2")
            .await;
        assert_eq!(text(&b.take(1).await[0]), "m2");
        assert_eq!(text(&c.take(1).await[0]), "m2");

        b.client.unsubscribe("fleet/7").await.unwrap();
        nodes[0]
            .wait_metric("fleetgate_cluster_remote_routes", &[], WAIT, |v| v == 1.0)
            .await;
        publisher
            .publish("fleet/7", QoS::AtLeastOnce, false, "m3")
            .await;
        assert_eq!(text(&c.take(1).await[0]), "m3");
        assert!(b.drain(Duration::from_millis(300)).await.is_empty());
        assert!(c.drain(Duration::from_millis(300)).await.is_empty());
        // m1 once, m2 twice, m3 once; m0 nowhere.
        assert_eq!(
            nodes[0]
                .metric("fleetgate_cluster_forwarded_total", &[])
                .await,
            4.0
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscriptions_deliver_once_cluster_wide_preferring_local() {
    tokio::time::timeout(TEST_LIMIT, async {
        let nodes = start3().await;
        let a_id = id_owned_by(&NAMES, NAMES[1], "share-a");
        let b_id = id_owned_by(&NAMES, NAMES[2], "share-b");
        let mut a = connect(nodes[1].mqtt, &a_id, true).await;
        let mut b = connect(nodes[2].mqtt, &b_id, true).await;
        a.subscribe("$share/g/job/#", QoS::AtLeastOnce).await;
        b.subscribe("$share/g/job/#", QoS::AtLeastOnce).await;
        wait_routes(&nodes[0], 2.0).await;
        let publisher = connect(nodes[0].mqtt, &id_owned_by(&NAMES, NAMES[0], "sp"), true).await;
        for i in 0..20 {
            publisher
                .publish(&format!("job/{i}"), QoS::AtLeastOnce, false, &i.to_string())
                .await;
        }
        let mut got: Vec<String> = a
            .drain(Duration::from_secs(2))
            .await
            .iter()
            .map(text)
            .collect();
        let from_b: Vec<String> = b
            .drain(Duration::from_millis(500))
            .await
            .iter()
            .map(text)
            .collect();
        assert!(
            !got.is_empty() && !from_b.is_empty(),
            "a {got:?} b {from_b:?}"
        );
        got.extend(from_b);
        got.sort_by_key(|s| s.parse::<u32>().unwrap_or(0));
        let want: Vec<String> = (0..20).map(|i| i.to_string()).collect();
        assert_eq!(got, want, "each message to exactly one member");

        // A member on the publisher's node is preferred.
        let mut local = connect(
            nodes[0].mqtt,
            &id_owned_by(&NAMES, NAMES[0], "share-c"),
            true,
        )
        .await;
        local.subscribe("$share/g/job/#", QoS::AtLeastOnce).await;
        tokio::time::sleep(Duration::from_millis(200)).await; // SUBACK: the subscription is in place
        for i in 0..10 {
            publisher
                .publish(&format!("job/{i}"), QoS::AtLeastOnce, false, "local")
                .await;
        }
        assert_eq!(local.take(10).await.len(), 10);
        assert!(a.drain(Duration::from_millis(300)).await.is_empty());
        assert!(b.drain(Duration::from_millis(100)).await.is_empty());
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_set_on_one_node_reaches_a_subscriber_on_another() {
    tokio::time::timeout(TEST_LIMIT, async {
        let nodes = start3().await;
        let publisher = connect(nodes[0].mqtt, &id_owned_by(&NAMES, NAMES[0], "rp"), true).await;
        publisher
            .publish("ret/1", QoS::AtLeastOnce, true, "kept")
            .await;
        nodes[2]
            .wait_metric("fleetgate_retained_messages", &[], WAIT, |v| v == 1.0)
            .await;
        let mut sub = connect(nodes[2].mqtt, &id_owned_by(&NAMES, NAMES[2], "rs"), true).await;
        sub.subscribe("ret/#", QoS::AtLeastOnce).await;
        let got = sub.take(1).await;
        assert_eq!(text(&got[0]), "kept");
        assert!(got[0].retain);

        // Cleared on another node: gone everywhere. A node started later gets the state in its sync.
        let other = connect(nodes[1].mqtt, &id_owned_by(&NAMES, NAMES[1], "rc"), true).await;
        other.publish("ret/1", QoS::AtLeastOnce, true, "").await;
        for n in &nodes {
            n.wait_metric("fleetgate_retained_messages", &[], WAIT, |v| v == 0.0)
                .await;
        }
        other.publish("ret/2", QoS::AtLeastOnce, true, "late").await;
        nodes[0]
            .wait_metric("fleetgate_retained_messages", &[], WAIT, |v| v == 1.0)
            .await;
        let n3 = ClusterNode::start(BIN, "broker-3", &[(NAMES[0], nodes[0].cluster)], "").await;
        n3.wait_ready(true, WAIT).await;
        n3.wait_metric("fleetgate_retained_messages", &[], WAIT, |v| v == 1.0)
            .await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_moves_a_persistent_session_with_its_queued_messages() {
    tokio::time::timeout(TEST_LIMIT, async {
        let nodes = start3().await;
        let id = id_owned_by(&NAMES, NAMES[0], "persist");
        let first = connect(nodes[0].mqtt, &id, false).await;
        first.subscribe("inbox/#", QoS::AtLeastOnce).await;
        wait_routes(&nodes[1], 1.0).await;
        first.disconnect().await;

        let publisher = connect(nodes[1].mqtt, &id_owned_by(&NAMES, NAMES[1], "tp"), true).await;
        for i in 0..5 {
            publisher
                .publish("inbox/x", QoS::AtLeastOnce, false, &i.to_string())
                .await;
        }
        let ok = eventually(WAIT, || async {
            let r = fleetgate_testkit::http::get(nodes[0].admin, &format!("/clients/{id}")).await;
            r.body.contains("\"queued\":5").then_some(())
        })
        .await;
        assert!(ok.is_ok(), "5 messages queued on broker-0");

        // The client comes back on broker-2 (not its ring owner): broker-2 fetches the session.
        let mut again = connect(nodes[2].mqtt, &id, false).await;
        assert!(again.present, "session present after takeover");
        let got: Vec<String> = again.take(5).await.iter().map(text).collect();
        assert_eq!(got, vec!["0", "1", "2", "3", "4"]);
        assert!(
            nodes[2]
                .metric(
                    "fleetgate_cluster_takeover_requests_total",
                    &[("direction", "sent")]
                )
                .await
                >= 1.0
        );
        assert!(
            nodes[0]
                .metric(
                    "fleetgate_cluster_takeover_requests_total",
                    &[("direction", "received")]
                )
                .await
                >= 1.0
        );
        // New messages follow the session to broker-2.
        publisher
            .publish("inbox/y", QoS::AtLeastOnce, false, "after")
            .await;
        assert_eq!(text(&again.take(1).await[0]), "after");

        // And back on broker-0, its owner, which finds it through broker-2's claim.
        again.disconnect().await;
        publisher
            .publish("inbox/z", QoS::AtLeastOnce, false, "queued-on-2")
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut home = connect(nodes[0].mqtt, &id, false).await;
        assert!(home.present);
        assert_eq!(text(&home.take(1).await[0]), "queued-on-2");
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_peer_routes_dropped_within_3s_and_clients_served_by_the_next_node() {
    tokio::time::timeout(TEST_LIMIT, async {
        let mut nodes = start3().await;
        let id = id_owned_by(&NAMES, NAMES[2], "victim");
        let sub = connect(nodes[2].mqtt, &id, true).await;
        sub.subscribe("k/#", QoS::AtLeastOnce).await;
        wait_routes(&nodes[0], 1.0).await;

        let pid = rustix::process::Pid::from_raw(nodes[2].process.pid() as i32).unwrap();
        let killed_at = Instant::now();
        rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
        for n in &nodes[..2] {
            n.wait_metric(
                "fleetgate_cluster_remote_routes",
                &[],
                Duration::from_secs(5),
                |v| v == 0.0,
            )
            .await;
            n.wait_metric(
                "fleetgate_cluster_peers_up",
                &[],
                Duration::from_secs(5),
                |v| v == 1.0,
            )
            .await;
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
        let mut sub = connect(nodes[idx].mqtt, &id, true).await;
        sub.subscribe("k/#", QoS::AtLeastOnce).await;
        wait_routes(&nodes[1 - idx], 1.0).await;
        let publisher = connect(
            nodes[1 - idx].mqtt,
            &id_owned_by(&NAMES[..2], NAMES[1 - idx], "kp"),
            true,
        )
        .await;
        publisher
            .publish("k/1", QoS::AtLeastOnce, false, "alive")
            .await;
        assert_eq!(text(&sub.take(1).await[0]), "alive");
    })
    .await
    .expect("test timed out");
}

/// One persistent QoS 1 subscriber per node's ring share; publishers keep publishing while every node is
/// restarted in turn (SIGTERM: drain and hand over, then a new process with the same name); every client that
/// is disconnected reconnects to the node the ring of the live nodes assigns (what the LB does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_under_qos1_load_loses_nothing() {
    tokio::time::timeout(Duration::from_secs(240), async {
        let mut nodes: Vec<Option<ClusterNode>> = start3().await.into_iter().map(Some).collect();
        const PUBLISHERS: usize = 3;
        const PER_PUBLISHER: usize = 200;
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
        let received: std::sync::Arc<std::sync::Mutex<BTreeMap<String, HashSet<String>>>> = Default::default();
        let live = |nodes: &Vec<Option<ClusterNode>>| -> Vec<(String, SocketAddr)> {
            nodes.iter().flatten().map(|n| (n.name.clone(), n.mqtt)).collect()
        };
        let addrs = std::sync::Arc::new(std::sync::Mutex::new(live(&nodes)));
        let stop = tokio_util::sync::CancellationToken::new();
        // Subscribers: reconnect to the ring owner among live nodes whenever disconnected.
        let mut tasks = Vec::new();
        for id in sub_ids.clone() {
            let (addrs, received, stop) = (addrs.clone(), received.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let target = pick(&addrs, &id);
                    let Some(mut c) = try_connect(target, &id, false).await else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            p = c.rx.recv() => match p {
                                Some(p) => { received.lock().unwrap().entry(id.clone()).or_default().insert(text(&p)); }
                                None => break,
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
                    let Some(c) = try_connect_acks(target, &id).await else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    let (client, mut acks) = c;
                    while next < PER_PUBLISHER {
                        let payload = format!("{p}-{next}");
                        if client.publish("load/t", QoS::AtLeastOnce, false, payload).await.is_err() {
                            break;
                        }
                        match tokio::time::timeout(Duration::from_secs(3), acks.recv()).await {
                            Ok(Some(())) => next += 1,
                            _ => break,
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }));
        }
        // Restart every node in turn under the load.
        for i in 0..3 {
            tokio::time::sleep(Duration::from_millis(700)).await;
            let mut old = nodes[i].take().unwrap();
            let (status, killed) = old.process.terminate(Duration::from_secs(15)).await;
            assert!(!killed, "{} drained in time ({status})", old.name);
            *addrs.lock().unwrap() = live(&nodes);
            let peers: Vec<(&str, SocketAddr)> = nodes.iter().flatten().map(|n| (n.name.as_str(), n.cluster)).collect();
            let fresh = ClusterNode::start(BIN, NAMES[i], &peers, "").await;
            fresh.wait_ready(true, WAIT).await;
            nodes[i] = Some(fresh);
            for n in nodes.iter().flatten() {
                n.wait_metric("fleetgate_cluster_peers_up", &[], WAIT, |v| v == 2.0).await;
            }
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
    .await
    .expect("test timed out");
}

/// Three nodes that list no peers: each finds the others in the SRV records of one name, as pods of a
/// StatefulSet find each other through their headless Service, and they serve one subscriber/publisher pair
/// across nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_discovered_through_dns_srv_records_form_one_cluster() {
    tokio::time::timeout(TEST_LIMIT, async {
        const SRV: &str = "_cluster._tcp.broker.test.";
        let dns = StubDns::start().await;
        let extra = format!(
            "peers_from = {{ dns = {{ name = \"{SRV}\", type = \"srv\", nameserver = \"{}\", interval = \"1s\", timeout = \"500ms\" }} }}",
            dns.addr()
        );
        let mut targets: Vec<(String, u16)> = Vec::new();
        let mut nodes = Vec::new();
        // Each pod appears in DNS once it runs (its cluster port is known only then); the first ones learn of
        // the later ones by refreshing.
        for name in NAMES {
            let node = ClusterNode::start(BIN, name, &[], &extra).await;
            let host = format!("{name}.broker.test.");
            dns.set_addresses(&host, &["127.0.0.1"], 1);
            targets.push((host, node.cluster.port()));
            let srv: Vec<(&str, u16)> = targets.iter().map(|(h, p)| (h.as_str(), *p)).collect();
            dns.set_srv(SRV, &srv, 1, true);
            nodes.push(node);
        }
        for n in &nodes {
            n.wait_metric("fleetgate_cluster_peers_up", &[], WAIT, |v| v == 2.0)
                .await;
            n.wait_ready(true, WAIT).await;
        }
        // broker-0 saw the later pods in DNS (itself included), not only through their dial-back.
        nodes[0]
            .wait_metric("fleetgate_discovery_endpoints", &[], WAIT, |v| v == 3.0)
            .await;
        let sub_id = id_owned_by(&NAMES, NAMES[2], "dns-sub");
        let mut sub = connect(nodes[2].mqtt, &sub_id, true).await;
        sub.subscribe("dns/#", QoS::AtLeastOnce).await;
        wait_routes(&nodes[0], 1.0).await;
        let publisher = connect(nodes[0].mqtt, &id_owned_by(&NAMES, NAMES[0], "dns-pub"), true).await;
        publisher
            .publish("dns/1", QoS::AtLeastOnce, false, "found")
            .await;
        assert_eq!(text(&sub.take(1).await[0]), "found");
    })
    .await
    .expect("test timed out");
}

/// `[cluster.tls]` lines for a node certificate of `pki`'s CA or another.
fn cluster_tls(pki: &Pki, cert: &CertFiles) -> String {
    format!(
        "[cluster.tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\n",
        cert.cert,
        cert.key,
        pki.ca_cert()
    )
}

/// Two nodes with certificates of the cluster CA link up over mutual TLS and act as one broker; a third node
/// whose certificate comes from another CA is refused (it trusts the cluster CA, so the refusal is the
/// cluster's verification of its certificate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_links_refuse_a_node_of_another_ca() {
    tokio::time::timeout(TEST_LIMIT, async {
        let pki = Pki::new();
        let n0 = ClusterNode::start(
            BIN,
            NAMES[0],
            &[],
            &cluster_tls(&pki, &pki.cluster_node(NAMES[0])),
        )
        .await;
        let n1 = ClusterNode::start(
            BIN,
            NAMES[1],
            &[(NAMES[0], n0.cluster)],
            &cluster_tls(&pki, &pki.cluster_node(NAMES[1])),
        )
        .await;
        for n in [&n0, &n1] {
            n.wait_metric("fleetgate_cluster_peers_up", &[], WAIT, |v| v == 1.0)
                .await;
            n.wait_ready(true, WAIT).await;
        }
        let names = &NAMES[..2];
        let mut sub = connect(n1.mqtt, &id_owned_by(names, NAMES[1], "tls-sub"), true).await;
        sub.subscribe("tls/#", QoS::AtLeastOnce).await;
        wait_routes(&n0, 1.0).await;
        let publisher = connect(n0.mqtt, &id_owned_by(names, NAMES[0], "tls-pub"), true).await;
        publisher
            .publish("tls/1", QoS::AtLeastOnce, false, "sealed")
            .await;
        assert_eq!(text(&sub.take(1).await[0]), "sealed");

        let intruder = ClusterNode::start(
            BIN,
            NAMES[2],
            &[(NAMES[0], n0.cluster)],
            &cluster_tls(&pki, &pki.foreign_cluster_node(NAMES[2])),
        )
        .await;
        n0.process
            .wait_for_log(WAIT, "cluster_tls_failed", |v| {
                v["event"] == "cluster_tls_failed"
            })
            .await;
        intruder
            .process
            .wait_for_log(WAIT, "cluster_tls_failed", |v| {
                v["event"] == "cluster_tls_failed"
            })
            .await;
        assert_eq!(
            intruder.metric("fleetgate_cluster_peers_up", &[]).await,
            0.0
        );
        assert_eq!(n0.metric("fleetgate_cluster_peers_up", &[]).await, 1.0);
        let linked = n0
            .process
            .json_logs()
            .iter()
            .any(|v| v["event"] == "cluster_peer_up" && v["peer"] == NAMES[2]);
        assert!(!linked, "no link with the intruder");
    })
    .await
    .expect("test timed out");
}

/// A node whose certificate of the cluster CA is valid for `broker-9` but whose Hello claims `broker-1` (the name
/// of a node already linked) is refused by the accepting side after its Hello: counted, logged, no link, and the
/// real `broker-1` keeps its link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_a_node_claiming_a_name_its_certificate_lacks() {
    tokio::time::timeout(TEST_LIMIT, async {
        let pki = Pki::new();
        let n0 = ClusterNode::start(
            BIN,
            NAMES[0],
            &[],
            &cluster_tls(&pki, &pki.cluster_node(NAMES[0])),
        )
        .await;
        let n1 = ClusterNode::start(
            BIN,
            NAMES[1],
            &[(NAMES[0], n0.cluster)],
            &cluster_tls(&pki, &pki.cluster_node(NAMES[1])),
        )
        .await;
        for n in [&n0, &n1] {
            n.wait_metric("fleetgate_cluster_peers_up", &[], WAIT, |v| v == 1.0)
                .await;
        }

        let impostor = ClusterNode::start(
            BIN,
            NAMES[1],
            &[(NAMES[0], n0.cluster)],
            &cluster_tls(&pki, &pki.cluster_node("broker-9")),
        )
        .await;
        let refused = n0
            .process
            .wait_for_log(WAIT, "cluster_tls_failed for the impostor", |v| {
                v["event"] == "cluster_tls_failed" && v["peer"] == NAMES[1]
            })
            .await;
        assert_eq!(refused["advertise"], impostor.cluster.to_string());
        n0.wait_metric(
            "fleetgate_cluster_links_refused_total",
            &[("reason", "name_mismatch")],
            WAIT,
            |v| v >= 1.0,
        )
        .await;
        assert_eq!(
            impostor.metric("fleetgate_cluster_peers_up", &[]).await,
            0.0
        );
        assert_eq!(n0.metric("fleetgate_cluster_peers_up", &[]).await, 1.0);
        // The real broker-1 keeps its link both ways.
        assert_eq!(n1.metric("fleetgate_cluster_peers_up", &[]).await, 1.0);
    })
    .await
    .expect("test timed out");
}

fn pick(addrs: &std::sync::Mutex<Vec<(String, SocketAddr)>>, id: &str) -> SocketAddr {
    let list = addrs.lock().unwrap().clone();
    let names: Vec<&str> = list.iter().map(|(n, _)| n.as_str()).collect();
    let owner = ring_owner(&names, id);
    list.iter().find(|(n, _)| *n == owner).unwrap().1
}

/// Like [`connect`], `None` when the node refuses or is gone.
async fn try_connect(addr: SocketAddr, id: &str, clean: bool) -> Option<Client> {
    let c = tokio::spawn({
        let id = id.to_string();
        async move { connect(addr, &id, clean).await }
    });
    c.await.ok()
}

/// A clean-session publisher whose PUBACKs arrive on the receiver.
async fn try_connect_acks(
    addr: SocketAddr,
    id: &str,
) -> Option<(AsyncClient, mpsc::UnboundedReceiver<()>)> {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(10));
    let (client, mut el) = AsyncClient::new(o, 100);
    let (tx, rx) = mpsc::unbounded_channel();
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = ack_tx.send(());
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    let _ = tx.send(());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    match tokio::time::timeout(Duration::from_secs(3), ack_rx.recv()).await {
        Ok(Some(())) => Some((client, rx)),
        _ => None,
    }
}
