//! The cluster tests' own helpers: nodes started as a mesh, rumqttc clients whose IDs the ring gives a chosen
//! node, and waits on the cluster's metrics and `/clients`.

use std::net::SocketAddr;
use std::time::Duration;

use fleetgate_testkit::rumqttc_client::{Events, try_v3_client, v3_publish, v3_suback};
use fleetgate_testkit::{Node, NodeSpec, WAIT, bounded, eventually, id_owned_by};
use rumqttc::{AsyncClient, Event, QoS};

use crate::common::BIN;

/// Bound of a whole test: process starts and polls share two cores with compilers.
pub const TEST_LIMIT: Duration = Duration::from_secs(120);
/// The names of the three nodes.
pub const NAMES: [&str; 3] = ["broker-0", "broker-1", "broker-2"];

/// Starts node `name` of a cluster dialing `peers`; `extra` is appended to its `[cluster]` section.
pub async fn start_node(name: &str, peers: &[(&str, SocketAddr)], extra: &str) -> Node {
    Node::start(BIN, &NodeSpec::clustered(name, peers, extra)).await
}

/// Waits until each of `nodes` has `peers` links up, and (when `ready`) answers `/readyz`.
pub async fn wait_linked(nodes: &[&Node], peers: f64, ready: bool) {
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
pub async fn start3() -> Vec<Node> {
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
pub async fn with_cluster(test: impl AsyncFnOnce(Vec<Node>)) {
    bounded(TEST_LIMIT, async { test(start3().await).await }).await;
}

/// A connected rumqttc client and its events; dropping it closes the connection without DISCONNECT.
pub struct Client {
    /// The rumqttc handle (SUBSCRIBE, PUBLISH, ...).
    pub client: AsyncClient,
    /// Its events.
    pub events: Events<Event>,
    /// The CONNACK's session present flag.
    pub present: bool,
}

/// Connects `id` to `addr` (keep alive 10 s, 100 in flight); the error text when refused or gone.
pub async fn try_connect(addr: SocketAddr, id: &str, clean: bool) -> Result<Client, String> {
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
pub async fn owned_client(node: &Node, prefix: &str) -> Client {
    connect(node.mqtt, &id_owned_by(&NAMES, &node.name, prefix), true).await
}

/// [`try_connect`] that panics when the client cannot connect.
pub async fn connect(addr: SocketAddr, id: &str, clean: bool) -> Client {
    try_connect(addr, id, clean)
        .await
        .unwrap_or_else(|e| panic!("{id}: no CONNACK from {addr}: {e}"))
}

impl Client {
    /// Queues a SUBSCRIBE (tests wait for its effect: a route on the other nodes, or the SUBACK).
    pub async fn subscribe(&self, filter: &str, qos: QoS) {
        self.client.subscribe(filter, qos).await.unwrap();
    }

    /// Subscribes and waits for the SUBACK: the subscription is in place on this node.
    pub async fn subscribed(&mut self, filter: &str, qos: QoS) {
        self.subscribe(filter, qos).await;
        self.events.next_matching("SUBACK", v3_suback).await;
    }

    /// A QoS 1 PUBLISH, not retained.
    pub async fn publish1(&self, topic: &str, payload: &str) {
        self.publish(topic, QoS::AtLeastOnce, false, payload).await;
    }

    /// A PUBLISH of `payload` to `topic`.
    pub async fn publish(&self, topic: &str, qos: QoS, retain: bool, payload: &str) {
        self.client
            .publish(topic, qos, retain, payload.as_bytes().to_vec())
            .await
            .unwrap();
    }

    /// The next `n` messages, panicking after [`WAIT`].
    pub async fn take(&mut self, n: usize) -> Vec<rumqttc::Publish> {
        self.events.take(n, "messages", v3_publish).await
    }

    /// Whatever arrives until `quiet` passes with nothing.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<rumqttc::Publish> {
        self.events.collect(quiet, v3_publish).await
    }

    /// DISCONNECT, then waits for the event loop to end.
    pub async fn disconnect(mut self) {
        let _ = self.client.disconnect().await;
        self.events.closed(WAIT).await;
    }
}

/// The payload of `p` as text.
pub fn text(p: &rumqttc::Publish) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}

/// How many of `node`'s cluster links are up.
pub async fn peers_up(node: &Node) -> f64 {
    node.admin.metric("fleetgate_cluster_peers_up", &[]).await
}

/// Waits until `node` has at least `n` routes from its peers.
pub async fn wait_routes(node: &Node, n: f64) {
    node.admin
        .wait_count("fleetgate_cluster_remote_routes", &[], n)
        .await;
}

/// Waits until `node` holds `n` queued messages for the offline session `id`.
pub async fn wait_queued(node: &Node, id: &str, n: u64) {
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
pub async fn assert_delivered(
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
