//! Delivery across nodes: every QoS with order kept, wildcards, a repeated topic following subscribers, shared
//! subscriptions preferring a local member, retained messages replicated.

use std::time::Duration;

use fleetgate_testkit::rumqttc_client::v3_publish;
use fleetgate_testkit::{WAIT, id_owned_by};
use rumqttc::QoS;

use crate::harness::*;

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
