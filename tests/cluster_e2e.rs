//! Three `fleetgate node` processes on loopback joined into one cluster: cross-node delivery at every QoS with
//! order kept, wildcard and shared subscriptions across nodes, retained replication, session takeover between
//! nodes with queued QoS 1 messages, a rolling restart under load with zero loss, and a kill -9 whose routes the
//! others drop within 3 s; peers discovered through DNS SRV records (a stub DNS server standing in for a
//! Kubernetes headless Service); cluster links under mutual TLS refusing a node of another CA and a node claiming a
//! name its certificate lacks. Clients are rumqttc (MQTT 3.1.1); client IDs are picked by the same ring the LB and
//! the nodes use, so each test knows which node owns which client.

#![allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING)

mod common;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::BIN;
use fleetgate_testkit::dns::StubDns;
use fleetgate_testkit::rumqttc_client::{
    Events, Missed, try_v3_client, v3_puback, v3_publish, v3_suback,
};
use fleetgate_testkit::{
    CertFiles, Node, NodeSpec, Pki, Signal, WAIT, bounded, eventually, id_owned_by, ring_owner,
};
use rumqttc::{AsyncClient, Event, QoS};

/// Bound of a whole test: process starts and polls share two cores with compilers.
const TEST_LIMIT: Duration = Duration::from_secs(120);
const NAMES: [&str; 3] = ["broker-0", "broker-1", "broker-2"];

/// Starts node `name` of a cluster dialing `peers`; `extra` is appended to its `[cluster]` section.
async fn start_node(name: &str, peers: &[(&str, SocketAddr)], extra: &str) -> Node {
    Node::start(BIN, &NodeSpec::clustered(name, peers, extra)).await
}

/// Waits until each of `nodes` has `peers` links up, and (when `ready`) answers `/readyz`.
async fn wait_linked(nodes: &[&Node], peers: f64, ready: bool) {
    for n in nodes {
        n.admin
            .wait_gauge("fleetgate_cluster_peers_up", &[], peers)
            .await;
        if ready {
            n.admin.wait_ready(true, WAIT).await;
        }
    }
}

/// Starts broker-0..2 as a full mesh and waits until each is ready with two peers up.
async fn start3() -> Vec<Node> {
    let n0 = start_node(NAMES[0], &[], "").await;
    let n1 = start_node(NAMES[1], &[(NAMES[0], n0.cluster())], "").await;
    let n2 = start_node(
        NAMES[2],
        &[(NAMES[0], n0.cluster()), (NAMES[1], n1.cluster())],
        "",
    )
    .await;
    let nodes = vec![n0, n1, n2];
    wait_linked(&nodes.iter().collect::<Vec<_>>(), 2.0, true).await;
    nodes
}

/// Runs `test` on a fresh three-node cluster ([`start3`]) under [`TEST_LIMIT`]. An async closure, so that the
/// nodes are moved into the test's future whole and live until it ends.
async fn with_cluster(test: impl AsyncFnOnce(Vec<Node>)) {
    bounded(TEST_LIMIT, async { test(start3().await).await }).await;
}

/// A connected rumqttc client and its events; dropping it closes the connection without DISCONNECT.
struct Client {
    client: AsyncClient,
    events: Events<Event>,
    /// The CONNACK's session present flag.
    present: bool,
}

/// Connects `id` to `addr` (keep alive 10 s, 100 in flight); the error text when refused or gone.
async fn try_connect(addr: SocketAddr, id: &str, clean: bool) -> Result<Client, String> {
    let (client, events, ack) = try_v3_client(addr, id, |o| {
        o.set_clean_session(clean);
        o.set_keep_alive(Duration::from_secs(10));
        o.set_inflight(100);
    })
    .await?;
    Ok(Client {
        client,
        events,
        present: ack.session_present,
    })
}

/// A clean-session client of `node` whose ID (`{prefix}-{i}`) the ring of [`NAMES`] gives that node.
async fn owned_client(node: &Node, prefix: &str) -> Client {
    connect(node.mqtt, &id_owned_by(&NAMES, &node.name, prefix), true).await
}

async fn connect(addr: SocketAddr, id: &str, clean: bool) -> Client {
    try_connect(addr, id, clean)
        .await
        .unwrap_or_else(|e| panic!("{id}: no CONNACK from {addr}: {e}"))
}

impl Client {
    /// Queues a SUBSCRIBE (tests wait for its effect: a route on the other nodes, or the SUBACK).
    async fn subscribe(&self, filter: &str, qos: QoS) {
        self.client.subscribe(filter, qos).await.unwrap();
    }

    /// Subscribes and waits for the SUBACK: the subscription is in place on this node.
    async fn subscribed(&mut self, filter: &str, qos: QoS) {
        self.subscribe(filter, qos).await;
        self.events.next_matching("SUBACK", v3_suback).await;
    }

    /// A QoS 1 PUBLISH, not retained.
    async fn publish1(&self, topic: &str, payload: &str) {
        self.publish(topic, QoS::AtLeastOnce, false, payload).await;
    }

    async fn publish(&self, topic: &str, qos: QoS, retain: bool, payload: &str) {
        self.client
            .publish(topic, qos, retain, payload.as_bytes().to_vec())
            .await
            .unwrap();
    }

    /// The next `n` messages, panicking after [`WAIT`].
    async fn take(&mut self, n: usize) -> Vec<rumqttc::Publish> {
        self.events.take(n, "messages", v3_publish).await
    }

    /// Whatever arrives until `quiet` passes with nothing.
    async fn drain(&mut self, quiet: Duration) -> Vec<rumqttc::Publish> {
        self.events.collect(quiet, v3_publish).await
    }

    async fn disconnect(mut self) {
        let _ = self.client.disconnect().await;
        self.events.closed(WAIT).await;
    }
}

fn text(p: &rumqttc::Publish) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}

/// How many of `node`'s cluster links are up.
async fn peers_up(node: &Node) -> f64 {
    node.admin.metric("fleetgate_cluster_peers_up", &[]).await
}

/// Waits until `node` has at least `n` routes from its peers.
async fn wait_routes(node: &Node, n: f64) {
    node.admin
        .wait_count("fleetgate_cluster_remote_routes", &[], n)
        .await;
}

/// Waits until `node` holds `n` queued messages for the offline session `id`.
async fn wait_queued(node: &Node, id: &str, n: u64) {
    let queued = eventually(WAIT, || async {
        let client = node.admin.client(id).await?;
        (client["queued"] == n).then_some(())
    })
    .await;
    assert!(
        queued.is_ok(),
        "{n} messages queued for {id} on {}",
        node.name
    );
}

/// A subscriber `sub_id` on `sub_node` gets what a publisher on `pub_node` publishes on `{prefix}/1` once
/// `pub_node` has the route (the publisher's ID is one the ring over `names` gives `pub_node`).
async fn assert_delivered(
    sub_node: &Node,
    sub_id: &str,
    pub_node: &Node,
    names: &[&str],
    prefix: &str,
) {
    let mut sub = connect(sub_node.mqtt, sub_id, true).await;
    sub.subscribe(&format!("{prefix}/#"), QoS::AtLeastOnce)
        .await;
    wait_routes(pub_node, 1.0).await;
    let pub_id = id_owned_by(names, &pub_node.name, &format!("{prefix}-pub"));
    let publisher = connect(pub_node.mqtt, &pub_id, true).await;
    publisher.publish1(&format!("{prefix}/1"), prefix).await;
    assert_eq!(text(&sub.take(1).await[0]), prefix);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_qos_levels_order_and_wildcards() {
    with_cluster(async |nodes| {
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
        publisher.publish1("sensors/a/b/temp", "no").await;
        // Per-publisher order across the link.
        for i in 0..100 {
            publisher.publish1("order/x", &i.to_string()).await;
        }
        let got: Vec<String> = sub.take(100).await.iter().map(text).collect();
        let want: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        assert_eq!(got, want);
        assert!(sub.drain(Duration::from_millis(300)).await.is_empty());
        assert!(
            nodes[0]
                .admin
                .metric("fleetgate_cluster_forwarded_total", &[])
                .await
                >= 103.0
        );
    })
    .await;
}

/// One publisher connection keeps publishing on one topic while subscribers on the other nodes come and go: each
/// message reaches exactly the nodes with a matching subscriber at that moment (a connection remembers where its
/// last topic went; route changes must void that).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_topic_follows_subscribers_joining_and_leaving_other_nodes() {
    with_cluster(async |nodes| {
        let publisher = owned_client(&nodes[0], "rpub").await;
        // Nobody subscribes yet: the publisher's topic goes nowhere (counted as received once it is handled).
        publisher.publish1("fleet/7", "m0").await;
        nodes[0]
            .admin
            .wait_count("fleetgate_messages_received_total", &[], 1.0)
            .await;

        let mut b = owned_client(&nodes[1], "rsub").await;
        b.subscribe("fleet/7", QoS::AtLeastOnce).await;
        wait_routes(&nodes[0], 1.0).await;
        publisher.publish1("fleet/7", "m1").await;
        assert_eq!(text(&b.take(1).await[0]), "m1");

        let mut c = owned_client(&nodes[2], "rsub").await;
        c.subscribe("fleet/+", QoS::AtLeastOnce).await;
        wait_routes(&nodes[0], 2.0).await;
        publisher.publish1("fleet/7", "m2").await;
        assert_eq!(text(&b.take(1).await[0]), "m2");
        assert_eq!(text(&c.take(1).await[0]), "m2");

        b.client.unsubscribe("fleet/7").await.unwrap();
        nodes[0]
            .admin
            .wait_gauge("fleetgate_cluster_remote_routes", &[], 1.0)
            .await;
        publisher.publish1("fleet/7", "m3").await;
        assert_eq!(text(&c.take(1).await[0]), "m3");
        assert!(b.drain(Duration::from_millis(300)).await.is_empty());
        assert!(c.drain(Duration::from_millis(300)).await.is_empty());
        // m1 once, m2 twice, m3 once; m0 nowhere.
        assert_eq!(
            nodes[0]
                .admin
                .metric("fleetgate_cluster_forwarded_total", &[])
                .await,
            4.0
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscriptions_deliver_once_cluster_wide_preferring_local() {
    with_cluster(async |nodes| {
        let a_id = id_owned_by(&NAMES, NAMES[1], "share-a");
        let b_id = id_owned_by(&NAMES, NAMES[2], "share-b");
        let mut a = connect(nodes[1].mqtt, &a_id, true).await;
        let mut b = connect(nodes[2].mqtt, &b_id, true).await;
        a.subscribe("$share/g/job/#", QoS::AtLeastOnce).await;
        b.subscribe("$share/g/job/#", QoS::AtLeastOnce).await;
        wait_routes(&nodes[0], 2.0).await;
        let publisher = owned_client(&nodes[0], "sp").await;
        for i in 0..20 {
            publisher
                .publish1(&format!("job/{i}"), &i.to_string())
                .await;
        }
        // The 20 messages, wherever they land (an extra copy would show in the drains at the end).
        let (mut got, mut from_b) = (Vec::new(), Vec::new());
        while got.len() + from_b.len() < 20 {
            tokio::select! {
                p = a.events.next_matching("a's share", v3_publish) => got.push(text(&p)),
                p = b.events.next_matching("b's share", v3_publish) => from_b.push(text(&p)),
            }
        }
        assert!(
            !got.is_empty() && !from_b.is_empty(),
            "a {got:?} b {from_b:?}"
        );
        got.extend(from_b);
        got.sort_by_key(|s| s.parse::<u32>().unwrap_or(0));
        let want: Vec<String> = (0..20).map(|i| i.to_string()).collect();
        assert_eq!(got, want, "each message to exactly one member");

        // A member on the publisher's node is preferred.
        let mut local = owned_client(&nodes[0], "share-c").await;
        local.subscribed("$share/g/job/#", QoS::AtLeastOnce).await;
        for i in 0..10 {
            publisher.publish1(&format!("job/{i}"), "local").await;
        }
        assert_eq!(local.take(10).await.len(), 10);
        // Nothing more reaches the remote members: the quiet period is the check.
        assert!(a.drain(Duration::from_millis(300)).await.is_empty());
        assert!(b.drain(Duration::from_millis(100)).await.is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_set_on_one_node_reaches_a_subscriber_on_another() {
    with_cluster(async |nodes| {
        let publisher = owned_client(&nodes[0], "rp").await;
        publisher
            .publish("ret/1", QoS::AtLeastOnce, true, "kept")
            .await;
        nodes[2]
            .admin
            .wait_gauge("fleetgate_retained_messages", &[], 1.0)
            .await;
        let mut sub = owned_client(&nodes[2], "rs").await;
        sub.subscribe("ret/#", QoS::AtLeastOnce).await;
        let got = sub.take(1).await;
        assert_eq!(text(&got[0]), "kept");
        assert!(got[0].retain);

        // Cleared on another node: gone everywhere. A node started later gets the state in its sync.
        let other = owned_client(&nodes[1], "rc").await;
        other.publish("ret/1", QoS::AtLeastOnce, true, "").await;
        for n in &nodes {
            n.admin
                .wait_gauge("fleetgate_retained_messages", &[], 0.0)
                .await;
        }
        other.publish("ret/2", QoS::AtLeastOnce, true, "late").await;
        nodes[0]
            .admin
            .wait_gauge("fleetgate_retained_messages", &[], 1.0)
            .await;
        let n3 = start_node("broker-3", &[(NAMES[0], nodes[0].cluster())], "").await;
        n3.admin.wait_ready(true, WAIT).await;
        n3.admin
            .wait_gauge("fleetgate_retained_messages", &[], 1.0)
            .await;
    })
    .await;
}

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

/// Three nodes that list no peers: each finds the others in the SRV records of one name, as pods of a
/// StatefulSet find each other through their headless Service, and they serve one subscriber/publisher pair
/// across nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_discovered_through_dns_srv_records_form_one_cluster() {
    bounded(TEST_LIMIT, async {
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
            let node = start_node(name, &[], &extra).await;
            let host = format!("{name}.broker.test.");
            dns.set_addresses(&host, &["127.0.0.1"], 1);
            targets.push((host, node.cluster().port()));
            let srv: Vec<(&str, u16)> = targets.iter().map(|(h, p)| (h.as_str(), *p)).collect();
            dns.set_srv(SRV, &srv, 1, true);
            nodes.push(node);
        }
        wait_linked(&nodes.iter().collect::<Vec<_>>(), 2.0, true).await;
        // broker-0 saw the later pods in DNS (itself included), not only through their dial-back.
        nodes[0]
            .admin.wait_gauge("fleetgate_discovery_endpoints", &[], 3.0)
            .await;
        let sub_id = id_owned_by(&NAMES, NAMES[2], "dns-sub");
        assert_delivered(&nodes[2], &sub_id, &nodes[0], &NAMES, "dns").await;
    })
    .await;
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

/// broker-0 and broker-1 with certificates of `pki`'s CA, linked over mutual TLS and ready.
async fn start_tls_pair(pki: &Pki) -> (Node, Node) {
    let n0 = start_node(
        NAMES[0],
        &[],
        &cluster_tls(pki, &pki.cluster_node(NAMES[0])),
    )
    .await;
    let n1 = start_node(
        NAMES[1],
        &[(NAMES[0], n0.cluster())],
        &cluster_tls(pki, &pki.cluster_node(NAMES[1])),
    )
    .await;
    wait_linked(&[&n0, &n1], 1.0, true).await;
    (n0, n1)
}

/// Two nodes with certificates of the cluster CA link up over mutual TLS and act as one broker; a third node
/// whose certificate comes from another CA is refused (it trusts the cluster CA, so the refusal is the
/// cluster's verification of its certificate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_links_refuse_a_node_of_another_ca() {
    bounded(TEST_LIMIT, async {
        let pki = Pki::new();
        let (n0, n1) = start_tls_pair(&pki).await;
        let names = &NAMES[..2];
        let sub_id = id_owned_by(names, NAMES[1], "tls-sub");
        assert_delivered(&n1, &sub_id, &n0, names, "tls").await;

        let intruder = start_node(
            NAMES[2],
            &[(NAMES[0], n0.cluster())],
            &cluster_tls(&pki, &pki.foreign_cluster_node(NAMES[2])),
        )
        .await;
        for n in [&n0, &intruder] {
            n.process
                .wait_for_log(WAIT, "cluster_tls_failed", |v| {
                    v["event"] == "cluster_tls_failed"
                })
                .await;
        }
        assert_eq!(peers_up(&intruder).await, 0.0);
        assert_eq!(peers_up(&n0).await, 1.0);
        let linked = n0
            .process
            .json_logs()
            .iter()
            .any(|v| v["event"] == "cluster_peer_up" && v["peer"] == NAMES[2]);
        assert!(!linked, "no link with the intruder");
    })
    .await;
}

/// A node whose certificate of the cluster CA is valid for `broker-9` but whose Hello claims `broker-1` (the name
/// of a node already linked) is refused by the accepting side after its Hello: counted, logged, no link, and the
/// real `broker-1` keeps its link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_a_node_claiming_a_name_its_certificate_lacks() {
    bounded(TEST_LIMIT, async {
        let pki = Pki::new();
        let (n0, n1) = start_tls_pair(&pki).await;

        let impostor = start_node(
            NAMES[1],
            &[(NAMES[0], n0.cluster())],
            &cluster_tls(&pki, &pki.cluster_node("broker-9")),
        )
        .await;
        let refused = n0
            .process
            .wait_for_log(WAIT, "cluster_tls_failed for the impostor", |v| {
                v["event"] == "cluster_tls_failed" && v["peer"] == NAMES[1]
            })
            .await;
        assert_eq!(refused["advertise"], impostor.cluster().to_string());
        n0.admin
            .wait_count(
                "fleetgate_cluster_links_refused_total",
                &[("reason", "name_mismatch")],
                1.0,
            )
            .await;
        assert_eq!(peers_up(&impostor).await, 0.0);
        assert_eq!(peers_up(&n0).await, 1.0);
        // The real broker-1 keeps its link both ways.
        assert_eq!(peers_up(&n1).await, 1.0);
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
