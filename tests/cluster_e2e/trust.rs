//! The cluster port is a trust boundary: a stranger without a certificate of the cluster CA gets a TLS refusal
//! and nothing else (no frame, no dial-back); a second identity for a name already linked is refused; a peer
//! that sends what no client could (a filter or topic too deep, a session beyond our limits) is cut off and the
//! node keeps serving; a session handed over with an absurd expiry gets our maximum instead.

use std::net::SocketAddr;
use std::time::Duration;

use fleetgate_testkit::{Node, NodeSpec, Pki, WAIT, bounded, eventually};
use tokio::net::TcpListener;

use crate::common::BIN;
use crate::harness::*;
use crate::peer::{self, Peer};

/// `[cluster.tls]` lines for `name`'s certificate of `pki`'s CA, and `extra` limits.
fn tls_node_extra(pki: &Pki, name: &str) -> String {
    let cert = pki.cluster_node(name);
    format!(
        "[cluster.tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\n",
        cert.cert,
        cert.key,
        pki.ca_cert()
    )
}

/// A node alone, with mutual TLS on its cluster port and `limits` (lines of its `[limits]` table).
async fn tls_node(pki: &Pki, limits: &[&str]) -> Node {
    let mut spec = NodeSpec::clustered(NAMES[0], &[], &tls_node_extra(pki, NAMES[0]));
    spec.extra_limits = limits.iter().map(|l| l.to_string()).collect();
    Node::start(BIN, &spec).await
}

/// A listener the node would dial back if it took our Hello: the address a fake peer advertises.
async fn trap() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

/// Asserts nobody connected to `trap` (the node never dialed the address a refused peer advertised). The node
/// dials back at once when it accepts a Hello, so the refusals already logged plus a short wait are enough.
async fn assert_not_dialed(trap: &TcpListener) {
    let dialed = tokio::time::timeout(Duration::from_millis(500), trap.accept()).await;
    assert!(dialed.is_err(), "the node dialed back a refused peer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_without_a_certificate_gets_a_tls_refusal_and_nothing_else() {
    bounded(TEST_LIMIT, async {
        let pki = Pki::new();
        let node = tls_node(&pki, &[]).await;
        let (trap, advertise) = trap().await;

        // Plain TCP speaking the cluster protocol: what the node answers is a TLS alert (record type 21) or
        // nothing, never a frame.
        let mut stranger = Peer::plain(node.cluster()).await;
        stranger.send(&peer::hello("broker-7", advertise)).await;
        let answer = stranger.read_all(Duration::from_millis(500)).await;
        assert!(
            answer.is_empty() || answer[0] == 21,
            "the node answered a plain Hello with {answer:?}"
        );
        node.admin
            .wait_count(
                "fleetgate_cluster_links_refused_total",
                &[("reason", "tls")],
                1.0,
            )
            .await;
        assert_not_dialed(&trap).await;
        assert_eq!(peers_up(&node).await, 0.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_identity_for_a_linked_name_is_refused_and_the_name_keeps_its_address() {
    bounded(TEST_LIMIT, async {
        let pki = Pki::new();
        let n0 = start_node(NAMES[0], &[], &tls_node_extra(&pki, NAMES[0])).await;
        let n1 = start_node(
            NAMES[1],
            &[(NAMES[0], n0.cluster())],
            &tls_node_extra(&pki, NAMES[1]),
        )
        .await;
        wait_linked(&[&n0, &n1], 1.0, true).await;

        // A valid certificate of the cluster CA for broker-1 — but not broker-1's: another key, another holder.
        let (trap, advertise) = trap().await;
        let twin = pki.cluster_node(NAMES[1]);
        let mut impostor = Peer::tls(&pki, &twin, NAMES[0], n0.cluster()).await;
        assert!(
            !impostor.hello(NAMES[1], advertise).await,
            "the node answered a second identity's Hello"
        );
        let refused = n0
            .process
            .wait_for_log(WAIT, "cluster_peer_rejected name_in_use", |v| {
                v["event"] == "cluster_peer_rejected" && v["reason"] == "name_in_use"
            })
            .await;
        assert_eq!(refused["peer"], NAMES[1]);
        n0.admin
            .wait_count(
                "fleetgate_cluster_links_refused_total",
                &[("reason", "name_in_use")],
                1.0,
            )
            .await;
        assert_not_dialed(&trap).await;
        // The real broker-1 keeps its links both ways, and they carry messages.
        assert_eq!(peers_up(&n0).await, 1.0);
        assert_eq!(peers_up(&n1).await, 1.0);
        let names = &NAMES[..2];
        let sub = fleetgate_testkit::id_owned_by(names, NAMES[1], "twin-sub");
        assert_delivered(&n1, &sub, &n0, names, "after-twin").await;
    })
    .await;
}

/// Each frame breaks one rule client input follows; the node closes the link, logs and counts why, stores
/// nothing of it, and keeps serving its clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_what_no_client_could_is_cut_off_and_the_node_keeps_serving() {
    bounded(TEST_LIMIT, async {
        let pki = Pki::new();
        let node = tls_node(&pki, &["max_queued_messages = 3"]).await;
        let deepest = vec!["a"; 128].join("/");
        let too_deep = vec!["a"; 129].join("/");
        let s = peer::PUSHED | 1;
        let cases: Vec<(&str, Vec<Vec<u8>>, &str)> = vec![
            (
                "a filter one level too deep",
                vec![peer::route_add(&too_deep)],
                "filter",
            ),
            (
                "a topic one level too deep",
                vec![peer::publish(&too_deep)],
                "topic",
            ),
            (
                "a wildcard in a topic",
                vec![peer::publish("a/+/b")],
                "topic",
            ),
            (
                "a session queue longer than max_queued_messages",
                vec![
                    peer::session_begin(s, "queued-dev", 60),
                    peer::session_queued(s, "q"),
                    peer::session_queued(s, "q"),
                    peer::session_queued(s, "q"),
                    peer::session_queued(s, "q"),
                ],
                "session",
            ),
            (
                "part of a session that never began",
                vec![peer::session_queued(s, "q")],
                "session",
            ),
        ];
        let cert = pki.cluster_node("broker-9");
        for (i, (what, frames, reason)) in cases.iter().enumerate() {
            let (_trap, advertise) = trap().await;
            let mut hostile = Peer::tls(&pki, &cert, NAMES[0], node.cluster()).await;
            assert!(
                hostile.hello("broker-9", advertise).await,
                "{what}: no Hello"
            );
            // A filter at the depth limit is fine.
            assert!(hostile.send(&peer::route_add(&deepest)).await);
            for f in frames {
                hostile.send(f).await;
            }
            assert!(hostile.closed().await, "{what}: the link stayed open");
            node.admin
                .wait_count(
                    "fleetgate_cluster_peer_violations_total",
                    &[("reason", reason)],
                    1.0,
                )
                .await;
            // The log line is written after the counter: wait for it (on a loaded machine it can lag).
            node.process
                .wait_for_log(
                    WAIT,
                    &format!("{what}: cluster_peer_violation {reason}"),
                    |v| v["event"] == "cluster_peer_violation" && v["reason"] == *reason,
                )
                .await;
            // The link is gone, and with it every route it advertised.
            node.admin
                .wait_gauge("fleetgate_cluster_remote_routes", &[], 0.0)
                .await;
            assert!(
                node.admin.client("queued-dev").await.is_none(),
                "{what} (case {i}): a session beyond our limits was installed"
            );
        }
        // The node still serves its clients.
        let mut sub = owned_client(&node, "after").await;
        sub.subscribed("after/#", rumqttc::QoS::AtLeastOnce).await;
        let publisher = owned_client(&node, "after-pub").await;
        publisher.publish1("after/1", "still serving").await;
        assert_eq!(text(&sub.take(1).await[0]), "still serving");
    })
    .await;
}

/// A session handed over with a session expiry no client of ours could have (u32::MAX - 1 seconds) gets our
/// `session_expiry_maximum` instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_over_session_gets_no_more_expiry_than_ours() {
    bounded(TEST_LIMIT, async {
        let pki = Pki::new();
        let node = tls_node(&pki, &["session_expiry_maximum = \"1h\""]).await;
        let (_trap, advertise) = trap().await;
        let cert = pki.cluster_node("broker-9");
        let mut peer = Peer::tls(&pki, &cert, NAMES[0], node.cluster()).await;
        assert!(peer.hello("broker-9", advertise).await);
        let req = peer::PUSHED | 2;
        assert!(
            peer.send(&peer::session_begin(req, "forever-dev", u32::MAX - 1))
                .await
        );
        assert!(peer.send(&peer::session_queued(req, "for/you")).await);
        assert!(peer.send(&peer::session_end(req)).await);
        let info = eventually(WAIT, || node.admin.client("forever-dev"))
            .await
            .expect("the session was installed");
        assert_eq!(info["session_expiry"], 3600, "{info}");
        assert_eq!(info["queued"], 1, "{info}");
    })
    .await;
}
