//! A session stays with its identity across nodes: two clustered nodes with password authentication and an ACL
//! that grants `fleet/%c/#`; a client ID's session held on one node for alice is refused to bob connecting on the
//! other (CONNACK 0x87 / 0x05), before the holder kicks alice or ends her session (even for bob's clean start),
//! while alice herself takes it over from either node.

use std::net::SocketAddr;
use std::path::Path;

use fleetgate_testkit::raw::Connect;
use fleetgate_testkit::rumqttc_client::try_v3_client;
use fleetgate_testkit::{Node, RawClient, WAIT, bounded, id_owned_by, scratch_dir};
use rumqttc::QoS;

use crate::common::passwd;
use crate::harness::{Client, TEST_LIMIT, start_node, text, wait_linked, wait_queued};

const PW_ALICE: &str = "Alice-cluster-pw";
const PW_BOB: &str = "Bob-cluster-pw";

const ACL: &str = r#"
[[rules]]
action = "allow"
access = "both"
match = { any_authenticated = true }
topics = ["fleet/%c/#"]

[[rules]]
action = "allow"
access = "publish"
match = { username = "bob" }
topics = ["fleet/+/cmd"]
"#;

/// Connects `id` as `user` with rumqttc (3.1.1, clean session off); the error text when refused.
async fn login(addr: SocketAddr, id: &str, user: &str, pw: &str) -> Result<Client, String> {
    let (client, events, ack) = try_v3_client(addr, id, |o| {
        o.set_credentials(user, pw);
        o.set_clean_session(false);
    })
    .await?;
    Ok(Client {
        client,
        events,
        present: ack.session_present,
    })
}

/// The CONNACK code a raw client gets for bob as `id` at `level` (`clean` start or not).
async fn bob_raw(addr: SocketAddr, level: u8, id: &str, clean: bool) -> Option<u8> {
    let mut c = RawClient::connect_from(addr, None, &[]).await;
    let mut connect = Connect::new(level, id);
    connect.clean = clean;
    connect.credentials = Some(("bob", PW_BOB));
    c.mqtt_connect(&connect).await
}

/// The `[auth]` section both nodes run, appended after their `[cluster]` body (files in `dir`).
fn auth_section(dir: &Path) -> String {
    let path = |name: &str| dir.join(name).display().to_string();
    format!(
        "\n[auth]\npolicies = [\"password\"]\npassword_file = {:?}\nacl_file = {:?}\n",
        path("passwd"),
        path("acl.toml")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_held_on_another_node_is_refused_to_another_identity() {
    bounded(TEST_LIMIT, async {
        let dir = scratch_dir();
        for (user, pw) in [("alice", PW_ALICE), ("bob", PW_BOB)] {
            let out = passwd(&dir.path().join("passwd"), user, pw).await;
            assert_eq!(out.code, Some(0), "fleetgate passwd {user}: {out:?}");
        }
        std::fs::write(dir.path().join("acl.toml"), ACL).unwrap();
        let auth = auth_section(dir.path());
        let names = ["broker-0", "broker-1"];
        let n0 = start_node(names[0], &[], &auth).await;
        let n1 = start_node(names[1], &[(names[0], n0.cluster())], &auth).await;
        wait_linked(&[&n0, &n1], 1.0, true).await;
        let nodes: [&Node; 2] = [&n0, &n1];

        // alice holds `id` on broker-0, its ring owner, subscribed to its commands.
        let id = id_owned_by(&names, names[0], "dev");
        let cmd = format!("fleet/{id}/cmd");
        let mut alice = login(n0.mqtt, &id, "alice", PW_ALICE).await.unwrap();
        alice.subscribed(&cmd, QoS::AtLeastOnce).await;

        // bob asks for it on broker-1: broker-0 refuses the takeover, broker-1 the CONNECT — a resume and a
        // clean start alike, 3.1.1 and 5 — and alice is neither kicked nor loses her session.
        for (level, clean, code) in [(4, false, 0x05), (4, true, 0x05), (5, true, 0x87)] {
            assert_eq!(
                bob_raw(n1.mqtt, level, &id, clean).await,
                Some(code),
                "v{level} clean {clean}"
            );
        }
        let refused = login(n1.mqtt, &id, "bob", PW_BOB).await.err();
        assert!(
            refused
                .as_deref()
                .is_some_and(|e| e.contains("NotAuthorized")),
            "{refused:?}"
        );
        alice.publish1(&cmd, "still-here").await;
        assert_eq!(text(&alice.take(1).await[0]), "still-here");
        assert!(n0.admin.is_connected(&id).await, "alice was not kicked");

        // Offline, with a command queued by bob (who may publish to it): still refused, still queued.
        alice.disconnect().await;
        n0.admin.wait_connected(&id, false, WAIT).await;
        let bob_id = id_owned_by(&names, names[1], "bob");
        let bob = login(n1.mqtt, &bob_id, "bob", PW_BOB).await.unwrap();
        bob.publish1(&cmd, "queued").await;
        wait_queued(&n0, &id, 1).await;
        assert_eq!(bob_raw(n1.mqtt, 5, &id, true).await, Some(0x87));
        wait_queued(&n0, &id, 1).await;

        // alice on broker-1: the same identity takes her session over from broker-0, queued command included.
        let mut back = login(n1.mqtt, &id, "alice", PW_ALICE).await.unwrap();
        assert!(back.present, "alice's session moved to broker-1");
        assert_eq!(text(&back.take(1).await[0]), "queued");

        // Events and metrics on both sides.
        n0.process
            .wait_for_log(WAIT, "cluster_takeover_refused", |e| {
                e["event"] == "cluster_takeover_refused" && e["client_id"] == id.as_str()
            })
            .await;
        let failed = n1.process.events("auth_failed");
        assert!(
            failed
                .iter()
                .any(|e| e["reason"] == "session_owner_mismatch" && e["client_id"] == id.as_str()),
            "{failed:?}"
        );
        let refusals = n1
            .admin
            .metric(
                "fleetgate_auth_refusals_total",
                &[("reason", "session_owner_mismatch")],
            )
            .await;
        assert!(refusals >= 5.0, "{refusals}");
        for n in nodes {
            fleetgate_testkit::assert_no_secrets(&n.process.logs(), &[PW_ALICE, PW_BOB]);
        }
    })
    .await;
}
