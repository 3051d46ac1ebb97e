//! The node's resource limits under the attacks they exist for, on a real `fleetgate node` with rumqttc clients:
//! an offline session flooded with large messages holds at most `max_queued_bytes`; many sessions together hold
//! at most `memory_budget` (queued and retained messages refused and counted as `memory_budget`, live traffic
//! still flowing); a client asking for more subscriptions, more filters per SUBSCRIBE or longer topics than
//! allowed gets the SUBACK or DISCONNECT reason code for it. In each case the process's memory stays bounded and
//! the node keeps serving other clients.

mod common;

use common::BIN;
use fleetgate_testkit::rumqttc_client::{Events, v3_client, v5_client, v5_publish, v5_subscribe};
use fleetgate_testkit::{Node, NodeSpec, WAIT};
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::mqttbytes::v5::{SubAck, SubscribeReasonCode};

const MIB: u64 = 1024 * 1024;

/// Payload of the flood messages: large enough that a few hundred of them would be noticed in the RSS.
const BIG: usize = 512 * 1024;

/// A plain node with `limits` (lines of its `[limits]` table).
async fn node(limits: &[&str]) -> Node {
    let mut spec = NodeSpec::plain();
    spec.extra_limits = limits.iter().map(|l| l.to_string()).collect();
    Node::start(BIN, &spec).await
}

/// A persistent v5 session `id` subscribed to `filter` at QoS 1, then disconnected (it queues while away).
async fn offline_subscriber(node: &Node, id: &str, filter: &str) {
    let (client, mut events, _) = v5_client(node.mqtt, id, |o| {
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(3600));
        o.set_max_packet_size(Some(4 * MIB as u32));
    })
    .await;
    v5_subscribe(&client, &mut events, filter, QoS5::AtLeastOnce).await;
    client.disconnect().await.expect("queue DISCONNECT");
    node.admin.wait_connected(id, false, WAIT).await;
}

/// Publishes `n` QoS 1 messages of [`BIG`] bytes on `topic` from a v3 client and waits for every PUBACK (the
/// node acknowledges what it took in, whether or not a subscriber could queue it).
async fn flood(node: &Node, id: &str, topic: &str, n: usize, retain: bool) {
    let (client, mut events, _) = v3_client(node.mqtt, id, |o| {
        o.set_max_packet_size(2 * MIB as usize, 2 * MIB as usize);
        o.set_inflight(32);
    })
    .await;
    let payload = vec![b'x'; BIG];
    let sender = {
        let client = client.clone();
        let topic = topic.to_string();
        tokio::spawn(async move {
            for i in 0..n {
                let t = if retain {
                    format!("{topic}/{i}")
                } else {
                    topic.clone()
                };
                client
                    .publish(t, rumqttc::QoS::AtLeastOnce, retain, payload.clone())
                    .await
                    .expect("queue PUBLISH");
            }
        })
    };
    events
        .take(n, "PUBACK", fleetgate_testkit::rumqttc_client::v3_puback)
        .await;
    sender.await.expect("publisher task");
    client.disconnect().await.expect("queue DISCONNECT");
}

/// A QoS 1 round trip between two fresh clients: the node still serves.
async fn assert_serving(node: &Node, tag: &str) {
    let (sub, mut sub_events, _) = v5_client(node.mqtt, &format!("{tag}-sub"), |_| {}).await;
    v5_subscribe(
        &sub,
        &mut sub_events,
        &format!("{tag}/live"),
        QoS5::AtLeastOnce,
    )
    .await;
    let (publisher, _events, _) = v5_client(node.mqtt, &format!("{tag}-pub"), |_| {}).await;
    publisher
        .publish(format!("{tag}/live"), QoS5::AtLeastOnce, false, "alive")
        .await
        .expect("queue PUBLISH");
    let got = sub_events.next_matching("live message", v5_publish).await;
    assert_eq!(&got.payload[..], b"alive");
}

/// The node's count of messages dropped for `reason`.
async fn dropped_count(node: &Node, reason: &str) -> f64 {
    node.admin
        .metric("fleetgate_dropped_messages_total", &[("reason", reason)])
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_session_holds_at_most_max_queued_bytes() {
    let node = node(&["max_queued_bytes = \"4MiB\""]).await;
    offline_subscriber(&node, "hoarder", "big/#").await;
    let before = node.process.rss_bytes();

    // 200 × 512 KiB = 100 MiB offered to one offline session (its message count limit, 1,000, is no help).
    flood(&node, "flooder", "big/x", 200, false).await;
    let info = node.admin.client("hoarder").await.expect("session held");
    let queued = info["queued"].as_u64().unwrap_or(u64::MAX);
    assert!(
        (6..=8).contains(&queued),
        "4 MiB of 512 KiB messages queued, not {queued}: {info}"
    );
    assert!(dropped_count(&node, "queue_full").await >= (200 - 8) as f64);
    let used = node
        .admin
        .metric("fleetgate_memory_budget_used_bytes", &[])
        .await;
    assert!(
        used <= (4 * MIB) as f64,
        "the budget counts what the queue holds: {used}"
    );
    let grown = node.process.rss_bytes().saturating_sub(before);
    assert!(
        grown < 24 * MIB,
        "RSS grew by {} MiB for a 4 MiB queue",
        grown / MIB
    );

    // What was queued is delivered when the client comes back.
    let (_client, mut events, _) = v5_client(node.mqtt, "hoarder", |o| {
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(3600));
        o.set_max_packet_size(Some(4 * MIB as u32));
    })
    .await;
    let got = events
        .take(queued as usize, "queued message", v5_publish)
        .await;
    assert!(got.iter().all(|p| p.payload.len() == BIG));
    assert_serving(&node, "after-hoard").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_budget_bounds_every_backlog_and_the_retained_store() {
    let node = node(&["memory_budget = \"16MiB\"", "max_queued_bytes = \"8MiB\""]).await;
    for i in 0..4 {
        offline_subscriber(&node, &format!("away-{i}"), "fan/#").await;
    }
    let before = node.process.rss_bytes();
    // 40 × 512 KiB to four offline sessions: each may hold 8 MiB, all of them together 16 MiB.
    flood(&node, "fanner", "fan/x", 40, false).await;
    let queued: u64 = {
        let mut total = 0;
        for i in 0..4 {
            let info = node
                .admin
                .client(&format!("away-{i}"))
                .await
                .expect("session");
            total += info["queued"].as_u64().unwrap_or(0);
        }
        total
    };
    assert!(
        (24..=32).contains(&queued),
        "16 MiB of 512 KiB messages over four sessions, not {queued}"
    );
    assert!(dropped_count(&node, "memory_budget").await > 0.0);
    let used = node
        .admin
        .metric("fleetgate_memory_budget_used_bytes", &[])
        .await;
    assert!(used <= (16 * MIB) as f64, "used {used}");
    assert_eq!(
        node.admin
            .metric("fleetgate_memory_budget_limit_bytes", &[])
            .await,
        (16 * MIB) as f64
    );

    // The retained store shares the budget: a retained flood is refused, counted, and not stored.
    let refused_before = dropped_count(&node, "memory_budget").await;
    flood(&node, "retainer", "kept", 10, true).await;
    assert!(dropped_count(&node, "memory_budget").await >= refused_before + 9.0);
    assert!(node.admin.metric("fleetgate_retained_messages", &[]).await <= 1.0);

    let grown = node.process.rss_bytes().saturating_sub(before);
    assert!(
        grown < 48 * MIB,
        "RSS grew by {} MiB under a 16 MiB budget",
        grown / MIB
    );
    // Live traffic to a connected client with nothing queued still flows with the budget spent.
    assert_serving(&node, "spent").await;
}

/// Waits for the next SUBACK of a v5 client.
async fn suback(events: &mut Events<rumqttc::v5::Event>) -> SubAck {
    events
        .next_matching("SUBACK", |e| match e {
            rumqttc::v5::Event::Incoming(rumqttc::v5::Incoming::SubAck(ack)) => Some(ack.clone()),
            _ => None,
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_quotas_and_topic_lengths_get_their_reason_codes() {
    let node = node(&[
        "max_subscriptions = 300",
        "max_filters_per_subscribe = 100",
        "max_topic_length = 64",
    ])
    .await;
    let before = node.process.rss_bytes();
    let (client, mut events, _) = v5_client(node.mqtt, "greedy", |_| {}).await;
    // 40 SUBSCRIBEs of 150 filters each (6,000 asked): 100 per packet looked at, 300 in all kept.
    let mut granted = 0;
    let mut quota = 0;
    for p in 0..40 {
        let filters = (0..150).map(|i| {
            rumqttc::v5::mqttbytes::v5::Filter::new(format!("q/{p}/{i}"), QoS5::AtMostOnce)
        });
        client
            .subscribe_many(filters)
            .await
            .expect("queue SUBSCRIBE");
        for code in suback(&mut events).await.return_codes {
            match code {
                SubscribeReasonCode::Success(_) => granted += 1,
                SubscribeReasonCode::QuotaExceeded => quota += 1,
                other => panic!("unexpected SUBACK code {other:?}"),
            }
        }
    }
    assert_eq!((granted, quota), (300, 5700));
    let info = node.admin.client("greedy").await.expect("session");
    assert_eq!(info["subscriptions"], 300);

    // A filter longer than max_topic_length: 0x8F, the connection stays.
    let long = format!("long/{}", "x".repeat(60));
    client
        .subscribe(long, QoS5::AtMostOnce)
        .await
        .expect("queue SUBSCRIBE");
    assert_eq!(
        suback(&mut events).await.return_codes,
        vec![SubscribeReasonCode::TopicFilterInvalid]
    );
    // A PUBLISH on a topic longer than it: DISCONNECT 0x90 (Topic Name invalid).
    client
        .publish(
            format!("long/{}", "y".repeat(60)),
            QoS5::AtMostOnce,
            false,
            "x",
        )
        .await
        .expect("queue PUBLISH");
    // rumqttc reports the server's DISCONNECT as the connection's end, with its reason code.
    let closed = events.error().await;
    assert!(closed.contains("'TopicNameInvalid'"), "{closed}");
    let grown = node.process.rss_bytes().saturating_sub(before);
    assert!(grown < 16 * MIB, "RSS grew by {} MiB", grown / MIB);
    assert_serving(&node, "after-greed").await;
}

/// The same quotas for an MQTT 3.1.1 client: SUBACK failure 0x80 for what v5 reports as 0x97.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v3_client_gets_the_failure_code_past_its_quota() {
    let node = node(&["max_subscriptions = 2"]).await;
    let (client, mut events, _) = v3_client(node.mqtt, "greedy-v3", |_| {}).await;
    let filters =
        (0..3).map(|i| rumqttc::SubscribeFilter::new(format!("v3/{i}"), rumqttc::QoS::AtLeastOnce));
    client
        .subscribe_many(filters)
        .await
        .expect("queue SUBSCRIBE");
    let ack = events
        .next_matching("SUBACK", fleetgate_testkit::rumqttc_client::v3_suback)
        .await;
    assert_eq!(
        ack.return_codes,
        vec![
            rumqttc::SubscribeReasonCode::Success(rumqttc::QoS::AtLeastOnce),
            rumqttc::SubscribeReasonCode::Success(rumqttc::QoS::AtLeastOnce),
            rumqttc::SubscribeReasonCode::Failure,
        ]
    );
}

/// Retained deletes of topics nobody holds, flooded into a cluster: each node keeps them as tombstones (so a late
/// older write cannot bring a message back), visible in the gauges and bounded by `max_retained_bytes`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_retained_deletes_is_bounded_and_visible_on_every_node() {
    let limits = ["max_retained_bytes = \"1MiB\"".to_string()];
    let mut spec = NodeSpec::clustered("broker-0", &[], "");
    spec.extra_limits = limits.to_vec();
    let a = Node::start(BIN, &spec).await;
    let mut spec = NodeSpec::clustered("broker-1", &[("broker-0", a.cluster())], "");
    spec.extra_limits = limits.to_vec();
    let b = Node::start(BIN, &spec).await;
    for n in [&a, &b] {
        n.admin
            .wait_gauge("fleetgate_cluster_peers_up", &[], 1.0)
            .await;
    }
    let before = [a.process.rss_bytes(), b.process.rss_bytes()];

    let (client, mut events, _) = v3_client(a.mqtt, "eraser", |o| {
        o.set_inflight(100);
    })
    .await;
    let n = 20_000;
    let sender = tokio::spawn(async move {
        for i in 0..n {
            client
                .publish(
                    format!("gone/{i}"),
                    rumqttc::QoS::AtLeastOnce,
                    true,
                    Vec::new(),
                )
                .await
                .expect("queue PUBLISH");
        }
        client
    });
    events
        .take(n, "PUBACK", fleetgate_testkit::rumqttc_client::v3_puback)
        .await;
    sender.await.expect("publisher task");

    for (node, grown_from) in [(&a, before[0]), (&b, before[1])] {
        // The last delete reached the peer too (replication is ordered per link).
        fleetgate_testkit::eventually(WAIT, || async {
            (node
                .admin
                .metric("fleetgate_retained_tombstones", &[])
                .await
                > 1000.0)
                .then_some(())
        })
        .await
        .expect("tombstones counted");
        let bytes = node.admin.metric("fleetgate_retained_bytes", &[]).await;
        assert!(bytes <= MIB as f64, "{bytes} bytes of tombstones");
        assert_eq!(
            node.admin.metric("fleetgate_retained_messages", &[]).await,
            0.0
        );
        let grown = node.process.rss_bytes().saturating_sub(grown_from);
        assert!(grown < 16 * MIB, "RSS grew by {} MiB", grown / MIB);
    }
    assert_serving(&b, "after-erase").await;
}
