//! Resyncing after a link loss: a node frozen past `dead_after` (SIGSTOP) comes back with an incremental sync both
//! ways (only what changed while it was away), a restarted node (a new process) with a full one; either way
//! every retained message ends up on every node and every pair of nodes delivers again. A peer reachable but not
//! yet synced keeps `/readyz` false.

use std::time::Duration;

use fleetgate_testkit::{Node, Poll, WAIT, id_owned_by};
use rumqttc::QoS;
use serde_json::Value;

use crate::harness::*;
use crate::peer::{self, Peer};

/// How long broker-2 stays frozen after its peers dropped it and the changes were made: long enough for
/// redials to time out in its backlog (the Hello timeout is 2 s).
const FROZEN_LONGER: Duration = Duration::from_secs(5);

/// Retained messages published on `node` on `r/{range}` (an empty payload deletes).
async fn retain(node: &Node, range: std::ops::Range<usize>, payload: &str) {
    let p = owned_client(node, "retainer").await;
    for i in range {
        p.publish(&format!("r/{i}"), QoS::AtLeastOnce, true, payload)
            .await;
    }
    p.disconnect().await;
}

/// Waits until every node holds `n` retained messages.
async fn wait_retained_everywhere(nodes: &[&Node], n: f64) {
    for node in nodes {
        node.admin
            .wait_gauge("fleetgate_retained_messages", &[], n)
            .await;
    }
}

/// The `cluster_sync_sent` events `from` logged for syncs to `peer` of `kind`.
fn syncs_sent(from: &Node, peer: &str, kind: &str) -> Vec<Value> {
    from.process
        .json_logs()
        .into_iter()
        .filter(|v| v["event"] == "cluster_sync_sent" && v["peer"] == peer && v["kind"] == kind)
        .collect()
}

/// Waits until `from` has sent `peer` at least `n` syncs of `kind`.
async fn wait_syncs(from: &Node, peer: &str, kind: &str, n: usize) {
    from.process
        .wait_for_log(WAIT, &format!("{kind} sync to {peer}"), |v| {
            v["event"] == "cluster_sync_sent" && v["peer"] == peer && v["kind"] == kind
        })
        .await;
    wait_until_count(from, peer, kind, n).await;
}

async fn wait_until_count(from: &Node, peer: &str, kind: &str, n: usize) {
    let reached = fleetgate_testkit::eventually(WAIT, || async {
        (syncs_sent(from, peer, kind).len() >= n).then_some(())
    })
    .await;
    assert!(
        reached.is_ok(),
        "{} sent {peer} fewer than {n} {kind} syncs",
        from.name
    );
}

/// Every ordered pair of `nodes` delivers: a subscriber on each node for each other node's publisher.
async fn assert_every_pair_delivers(nodes: &[&Node], tag: &str) {
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    let mut subs = Vec::new();
    for (i, sub_node) in nodes.iter().enumerate() {
        for (j, _) in nodes.iter().enumerate().filter(|(j, _)| *j != i) {
            let id = id_owned_by(&names, &sub_node.name, &format!("{tag}-s{i}{j}"));
            let mut sub = connect(sub_node.mqtt, &id, true).await;
            sub.subscribed(&format!("{tag}/{i}{j}/#"), QoS::AtLeastOnce)
                .await;
            subs.push((i, j, sub));
        }
    }
    // A publisher on each other node, publishing until its subscriber got one (the routes of this round reach
    // the other nodes after the SUBACK).
    for (i, j, sub) in &mut subs {
        let pub_node = nodes[*j];
        let id = id_owned_by(&names, &pub_node.name, &format!("{tag}-p{i}{j}"));
        let publisher = connect(pub_node.mqtt, &id, true).await;
        let want = format!("{j}->{i}");
        let mut poll = Poll::new(WAIT);
        loop {
            publisher.publish1(&format!("{tag}/{i}{j}/x"), &want).await;
            let got = sub.drain(Duration::from_millis(200)).await;
            if got.iter().any(|m| text(m) == want) {
                break;
            }
            poll.tick().await.unwrap_or_else(|_| {
                panic!("{} never delivered to {}", pub_node.name, nodes[*i].name)
            });
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_node_resyncs_incrementally_and_a_restarted_one_in_full() {
    with_cluster(async |mut nodes| {
        retain(&nodes[0], 0..60, "v1").await;
        wait_retained_everywhere(&nodes.iter().collect::<Vec<_>>(), 60.0).await;
        // broker-1 tells broker-2 how far its tables went (Progress) once per heartbeat interval (500 ms): two of
        // them before the freeze.
        tokio::time::sleep(Duration::from_secs(1)).await;

        // broker-2 frozen past dead_after: its peers drop it; meanwhile 20 retained messages are added and 5
        // deleted on broker-0.
        {
            let _frozen = nodes[2].process.freeze();
            for n in &nodes[..2] {
                n.admin
                    .wait_gauge("fleetgate_cluster_peers_up", &[], 1.0)
                    .await;
            }
            retain(&nodes[0], 60..80, "v2").await;
            retain(&nodes[0], 0..5, "").await;
            // Frozen a while longer, as a stalled node is: the peers' redials wait in its accept backlog, and on
            // the thaw it accepts these dead connections before the live one (each replacing the link before).
            tokio::time::sleep(FROZEN_LONGER).await;
        }
        wait_linked(&nodes.iter().collect::<Vec<_>>(), 2.0, true).await;
        // Both ways between broker-2 and each of the others, only the changes: incremental.
        for other in &nodes[..2] {
            wait_syncs(other, NAMES[2], "incremental", 1).await;
            wait_syncs(&nodes[2], &other.name, "incremental", 1).await;
        }
        wait_retained_everywhere(&nodes.iter().collect::<Vec<_>>(), 75.0).await;
        // Only what changed: 20 added and 5 deleted retained messages (and SyncDone), not the 75 held.
        let sent = syncs_sent(&nodes[0], NAMES[2], "incremental");
        let entries = sent[0]["entries"].as_u64().unwrap_or(u64::MAX);
        assert!(
            (25..60).contains(&entries),
            "the incremental sync sent {entries} entries: {}",
            sent[0]
        );
        // broker-1 holds the same 75, applied from broker-0 (which sent them to broker-2 itself): it resends at
        // most the 25 changes made while broker-2 was away, not the 60 it applied before (its Progress frames
        // moved broker-2's watermark past them).
        let sent = syncs_sent(&nodes[1], NAMES[2], "incremental");
        let entries = sent[0]["entries"].as_u64().unwrap_or(u64::MAX);
        assert!(
            entries < 60,
            "broker-1's incremental sync to broker-2 sent {entries} entries: {}",
            sent[0]
        );
        assert_every_pair_delivers(&nodes.iter().collect::<Vec<_>>(), "after-freeze").await;

        // broker-1 restarted: a new process, so both of the others sync it in full, and it gets every retained
        // message from them.
        let peers = [
            (NAMES[0], nodes[0].cluster()),
            (NAMES[2], nodes[2].cluster()),
        ];
        drop(nodes.remove(1));
        nodes.insert(1, start_node(NAMES[1], &peers, "").await);
        wait_linked(&nodes.iter().collect::<Vec<_>>(), 2.0, true).await;
        for other in [&nodes[0], &nodes[2]] {
            wait_until_count(other, NAMES[1], "full", 2).await;
        }
        wait_retained_everywhere(&nodes.iter().collect::<Vec<_>>(), 75.0).await;
        assert_every_pair_delivers(&nodes.iter().collect::<Vec<_>>(), "after-restart").await;
    })
    .await;
}

/// A peer the node can reach but whose sync has not arrived keeps `/readyz` false (the node would route without
/// its subscriptions); its `SyncDone` makes it true again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reachable_peer_not_yet_synced_keeps_the_node_unready() {
    fleetgate_testkit::bounded(TEST_LIMIT, async {
        let node = start_node(NAMES[0], &[], "").await;
        node.admin.wait_ready(true, WAIT).await;

        // A peer "broker-9": its link to the node (Hello, then nothing), and the node's link back to it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let advertise = listener.local_addr().unwrap();
        let mut inbound = Peer::plain(node.cluster()).await;
        assert!(inbound.hello("broker-9", advertise).await);
        let (dialed, _) = tokio::time::timeout(WAIT, listener.accept())
            .await
            .expect("the node dials the peer back")
            .unwrap();
        let mut outbound = Peer::accepted(dialed);
        assert!(outbound.answer_hello("broker-9", advertise).await);
        node.admin
            .wait_gauge("fleetgate_cluster_peers_up", &[], 1.0)
            .await;
        node.admin.wait_ready(false, WAIT).await;

        assert!(inbound.send(&peer::sync_begin()).await);
        assert!(inbound.send(&peer::sync_done()).await);
        node.admin.wait_ready(true, WAIT).await;
    })
    .await;
}

/// A connection of a peer that waited in the accept backlog (a node frozen while its peers redialed accepts their
/// dead connections after the live one) never replaces the one the peer opened after it: it is closed, counted
/// `superseded`, and the later link stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_connection_of_a_peer_never_replaces_a_later_one() {
    fleetgate_testkit::bounded(TEST_LIMIT, async {
        let node = start_node(NAMES[0], &[], "").await;
        node.admin.wait_ready(true, WAIT).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let advertise = listener.local_addr().unwrap();
        // Accepted first, its Hello sent only after the later connection's link is up.
        let mut older = Peer::plain(node.cluster()).await;
        // The accept order is fixed by the time the later one is accepted.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut later = Peer::plain(node.cluster()).await;
        assert!(
            later.hello("broker-9", advertise).await,
            "the later link came up"
        );
        assert!(
            !older.hello("broker-9", advertise).await,
            "the older connection was answered: it replaced the later link"
        );
        node.admin
            .wait_count(
                "fleetgate_cluster_links_refused_total",
                &[("reason", "superseded")],
                1.0,
            )
            .await;
        // The later link is still the peer's: the node keeps reading it (a frame on it is not refused).
        assert!(later.send(&peer::sync_begin()).await);
        assert!(later.send(&peer::sync_done()).await);
        assert!(
            !later.closed_within_a_moment().await,
            "the later link was closed"
        );
    })
    .await;
}
