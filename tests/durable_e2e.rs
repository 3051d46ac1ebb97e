//! Durable sessions (`[storage] mode = "disk"`) on a real `fleetgate node` killed with SIGKILL, with rumqttc
//! clients: every QoS 1 message whose PUBACK the publisher received reaches the persistent subscribers (the one
//! connected when the node died and the one that was away) once the node is back on the same directory; the
//! duplicates QoS 1 allows are counted and reported. A clean restart brings back subscriptions and retained
//! messages; a store at its `max_bytes` refuses QoS 1 publishes with 0x97.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use common::BIN;
use fleetgate_testkit::clients::paho;
use fleetgate_testkit::rumqttc_client::{Events, v5_client, v5_publish, v5_subscribe};
use fleetgate_testkit::{MqttVersion, Node, Signal, WAIT, scratch_dir};
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{PubAckReason, PubRecReason};
use rumqttc::v5::{Event, Incoming};

/// A node config storing its sessions in `dir/store`, with `extra` appended.
fn config(dir: &Path, extra: &str) -> String {
    format!(
        "[node]\nname = \"durable\"\n\n[[listeners]]\nbind = \"127.0.0.1:0\"\n\n[admin]\nbind = \"127.0.0.1:0\"\n\n\
         [storage]\nmode = \"disk\"\npath = {:?}\n{extra}\n",
        dir.join("store").display().to_string()
    )
}

/// A persistent v5 session `id` (expiry one hour) subscribed to `filter` at `qos`.
async fn subscriber(
    node: &Node,
    id: &str,
    filter: &str,
    qos: QoS,
) -> (rumqttc::v5::AsyncClient, Events<Event>) {
    let (client, mut events, _) = v5_client(node.mqtt, id, |o| {
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(3600));
    })
    .await;
    v5_subscribe(&client, &mut events, filter, qos).await;
    (client, events)
}

/// The session `id` back after a restart (session present), without subscribing again.
async fn resume(node: &Node, id: &str) -> (rumqttc::v5::AsyncClient, Events<Event>) {
    let (client, events, connack) = v5_client(node.mqtt, id, |o| {
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(3600));
    })
    .await;
    assert!(
        connack.session_present,
        "{id}: session not present after the restart"
    );
    (client, events)
}

/// What a subscriber's application was given, as MQTT's receiver rules say (rumqttc answers the protocol but
/// hands every PUBLISH on): a QoS 2 PUBLISH under a packet ID still waiting for its PUBREL is the same message
/// again (method B of MQTT 5 §4.3.3) and is not given twice. The state lives as long as the client's session.
#[derive(Debug, Default)]
struct Receiver {
    /// Payloads given to the application, in order.
    given: Vec<String>,
    /// QoS 2 packet IDs received, PUBREL not yet.
    awaiting_release: std::collections::HashSet<u16>,
}

impl Receiver {
    /// Takes what arrives on `events` until nothing has come for two seconds.
    async fn receive(&mut self, events: &mut Events<Event>) {
        let pick = |e: &Event| match e {
            Event::Incoming(Incoming::Publish(p)) => Some(Ok(p.clone())),
            Event::Incoming(Incoming::PubRel(rel)) => Some(Err(rel.pkid)),
            _ => None,
        };
        while let Ok(next) = events.next_within(Duration::from_secs(2), pick).await {
            match next {
                Ok(p) if p.qos == QoS::ExactlyOnce && !self.awaiting_release.insert(p.pkid) => {}
                Ok(p) => self
                    .given
                    .push(String::from_utf8_lossy(&p.payload).into_owned()),
                Err(pkid) => {
                    self.awaiting_release.remove(&pkid);
                }
            }
        }
    }
}

/// Payloads of the messages arriving on `events` until none has come for two seconds.
async fn received(events: &mut Events<Event>) -> Vec<String> {
    let mut r = Receiver::default();
    r.receive(events).await;
    r.given
}

/// What the publisher saw: the payloads acknowledged (PUBACK success) and how many were refused.
#[derive(Debug, Default)]
struct Published {
    acked: Vec<String>,
    refused: usize,
}

/// Publishes QoS 1 messages `p0`, `p1`, ... on `topic` (up to 100 in flight) until the connection fails or
/// `max` were sent, recording which were acknowledged: the n-th PUBLISH written carries payload n, and a PUBACK
/// names the packet ID it was written with.
async fn publish_until_failure(
    node: &Node,
    id: &str,
    topic: &str,
    qos: QoS,
    max: usize,
) -> Published {
    publish_tagged(node, id, topic, qos, max, "p").await
}

/// [`publish_until_failure`] with payloads `{tag}0`, `{tag}1`, ...
async fn publish_tagged(
    node: &Node,
    id: &str,
    topic: &str,
    qos: QoS,
    max: usize,
    tag: &str,
) -> Published {
    let (client, mut events, _) = v5_client(node.mqtt, id, |o| {
        o.set_outgoing_inflight_upper_limit(100);
    })
    .await;
    let sender = {
        let (client, topic, tag) = (client.clone(), topic.to_string(), tag.to_string());
        tokio::spawn(async move {
            for i in 0..max {
                if client
                    .publish(&topic, qos, false, format!("{tag}{i}"))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        })
    };
    let mut out = Published::default();
    let mut written = 0usize;
    let mut in_flight: HashMap<u16, usize> = HashMap::new();
    loop {
        let event = events
            .next_within(WAIT, |e| match e {
                Event::Outgoing(Outgoing::Publish(pkid)) => Some(Ok(*pkid)),
                Event::Incoming(Incoming::PubAck(ack)) => {
                    Some(Err((ack.pkid, ack.reason == PubAckReason::Success)))
                }
                Event::Incoming(Incoming::PubRec(rec)) => {
                    Some(Err((rec.pkid, rec.reason == PubRecReason::Success)))
                }
                _ => None,
            })
            .await;
        match event {
            Ok(Ok(pkid)) => {
                in_flight.insert(pkid, written);
                written += 1;
            }
            Ok(Err((pkid, success))) => {
                let n = in_flight
                    .remove(&pkid)
                    .unwrap_or_else(|| panic!("PUBACK for packet {pkid} never sent"));
                if success {
                    out.acked.push(format!("{tag}{n}"));
                } else {
                    out.refused += 1;
                }
                if out.acked.len() + out.refused == max {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    sender.abort();
    out
}

/// Counts of each payload in `got`.
fn tally(got: &[String]) -> BTreeMap<&str, usize> {
    let mut counts = BTreeMap::new();
    for p in got {
        *counts.entry(p.as_str()).or_insert(0) += 1;
    }
    counts
}

/// Kills the node with SIGKILL while a publisher sends QoS `qos` messages as fast as it is acknowledged, then
/// restarts it on the same directory: every acknowledged message reaches both persistent subscribers (one
/// connected at the kill, one away). Returns the duplicates each was given.
async fn kill_under_load(qos: QoS, tag: &str) -> Vec<usize> {
    let dir = scratch_dir();
    // Room for everything the away subscriber is sent (beyond its queue's bounds messages are dropped and
    // counted, acknowledged or not).
    let cfg = config(dir.path(), "\n[limits]\nmax_queued_messages = 1000000");
    let node = Node::start_in(BIN, dir.path(), &cfg).await;
    let (away_id, online_id) = (format!("{tag}-away"), format!("{tag}-online"));
    let (away, away_events) = subscriber(&node, &away_id, "load/#", qos).await;
    away.disconnect().await.expect("queue DISCONNECT");
    drop(away_events);
    node.admin.wait_connected(&away_id, false, WAIT).await;
    let (_online, mut online_events) = subscriber(&node, &online_id, "load/#", qos).await;

    // The node dies once it has taken in a few thousand messages, while the publisher keeps publishing.
    let killer = {
        let pid = node.process.pid();
        let admin = node.admin;
        let label = if qos == QoS::ExactlyOnce { "2" } else { "1" };
        tokio::spawn(async move {
            admin
                .wait_count(
                    "fleetgate_messages_received_total",
                    &[("qos", label)],
                    3000.0,
                )
                .await;
            fleetgate_testkit::process::send_signal(pid, Signal::KILL);
        })
    };
    let published =
        publish_until_failure(&node, &format!("{tag}-pub"), "load/x", qos, 1_000_000).await;
    killer.await.expect("killer task");
    let mut online = Receiver::default();
    online.receive(&mut online_events).await;
    drop(online_events);
    assert!(
        published.acked.len() >= 2000,
        "too few acknowledged before the kill: {}",
        published.acked.len()
    );
    drop(node);

    let node = Node::start_in(BIN, dir.path(), &cfg).await;
    eprintln!("recovered: {:?}", node.process.events("store_recovered"));
    let mut duplicates = Vec::new();
    for (id, mut receiver) in [(online_id, online), (away_id, Receiver::default())] {
        let (_client, mut events) = resume(&node, &id).await;
        receiver.receive(&mut events).await;
        let got = receiver.given;
        let counts = tally(&got);
        let lost: Vec<&String> = published
            .acked
            .iter()
            .filter(|p| !counts.contains_key(p.as_str()))
            .collect();
        let dup: usize = counts.values().map(|n| n - 1).sum();
        eprintln!(
            "{id}: {} acknowledged, {} received, {dup} duplicates, {} lost",
            published.acked.len(),
            got.len(),
            lost.len()
        );
        assert!(
            lost.is_empty(),
            "{id} never received {} acknowledged messages, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
        duplicates.push(dup);
    }
    duplicates
}

#[tokio::test]
async fn a_node_killed_under_qos1_load_loses_no_acknowledged_message() {
    // Duplicates are allowed at QoS 1 (messages sent, not yet acknowledged, when the node died).
    let duplicates = kill_under_load(QoS::AtLeastOnce, "q1").await;
    eprintln!("QoS 1 duplicates (online, away): {duplicates:?}");
}

#[tokio::test]
async fn a_node_killed_under_qos2_load_loses_nothing_and_duplicates_nothing() {
    // paho (Python) as the subscribers: it keeps its QoS 2 state across a reconnect when the session is not clean
    // and gives a message to the application once, at PUBREL (rumqttc forgets that state and drops the connection
    // on the PUBREL the node resends; libmosquitto 2.0 gives a resent PUBLISH to the application again). The
    // connected one reconnects by itself to the same address: the node listens on a fixed port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dir = scratch_dir();
    let cfg = config(dir.path(), "\n[limits]\nmax_queued_messages = 1000000").replace(
        "127.0.0.1:0\"\n\n[admin]",
        &format!("127.0.0.1:{port}\"\n\n[admin]"),
    );
    let node = Node::start_in(BIN, dir.path(), &cfg).await;
    let session = |id: &'static str| -> Vec<&'static str> {
        vec!["--id", id, "--clean", "0", "--session-expiry", "3600"]
    };
    let away = paho(
        node.mqtt,
        MqttVersion::V5,
        &[&session("q2-away")[..], &["--sub", "load/#@2"]].concat(),
    )
    .finish()
    .await;
    assert!(away.success(), "{away:?}");
    node.admin.wait_connected("q2-away", false, WAIT).await;
    let online = paho(
        node.mqtt,
        MqttVersion::V5,
        &[
            &session("q2-online")[..],
            &[
                "--sub",
                "load/#@2",
                "--hold",
                "--reconnect",
                "--timeout",
                "120",
            ],
        ]
        .concat(),
    );
    online.wait_for_line("\"ready\"", WAIT).await;

    let killer = {
        let (pid, admin) = (node.process.pid(), node.admin);
        tokio::spawn(async move {
            admin
                .wait_count("fleetgate_messages_received_total", &[("qos", "2")], 3000.0)
                .await;
            fleetgate_testkit::process::send_signal(pid, Signal::KILL);
        })
    };
    let published =
        publish_until_failure(&node, "q2-pub", "load/x", QoS::ExactlyOnce, 1_000_000).await;
    killer.await.expect("killer task");
    assert!(published.acked.len() >= 2000, "{}", published.acked.len());
    drop(node);

    let node = Node::start_in(BIN, dir.path(), &cfg).await;
    eprintln!("recovered: {:?}", node.process.events("store_recovered"));
    // The online subscriber reconnects by itself; it is done once nothing new has come for two seconds.
    node.admin.wait_connected("q2-online", true, WAIT).await;
    let mut seen = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = online.stdout().len();
        if now == seen {
            break;
        }
        seen = now;
    }
    online.terminate();
    let online = online.finish().await;
    let away = paho(
        node.mqtt,
        MqttVersion::V5,
        &[&session("q2-away")[..], &["--hold", "--timeout", "4"]].concat(),
    )
    .finish()
    .await;
    for (id, out) in [("q2-online", online), ("q2-away", away)] {
        let got: Vec<String> = out
            .events_of("msg")
            .iter()
            .filter_map(|e| e.get("payload").and_then(|p| p.as_str()).map(String::from))
            .collect();
        let counts = tally(&got);
        let lost = published
            .acked
            .iter()
            .filter(|p| !counts.contains_key(p.as_str()))
            .count();
        let duplicates: usize = counts.values().map(|n| n - 1).sum();
        eprintln!(
            "{id}: {} acknowledged, {} received, {duplicates} duplicates, {lost} lost",
            published.acked.len(),
            got.len()
        );
        assert_eq!((lost, duplicates), (0, 0), "{id}: lost, given twice");
    }
}

#[tokio::test]
async fn twenty_kills_under_load_each_reopen_the_store_with_nothing_acknowledged_lost() {
    let dir = scratch_dir();
    let cfg = config(dir.path(), "\n[limits]\nmax_queued_messages = 1000000");
    let node = Node::start_in(BIN, dir.path(), &cfg).await;
    let (away, away_events) = subscriber(&node, "torn-away", "torn/#", QoS::AtLeastOnce).await;
    away.disconnect().await.expect("queue DISCONNECT");
    drop(away_events);
    node.admin.wait_connected("torn-away", false, WAIT).await;
    drop(node);
    let mut acked = Vec::new();
    for round in 0..20 {
        let node = Node::start_in(BIN, dir.path(), &cfg).await;
        let recovered = node.process.events("store_recovered");
        let messages = recovered
            .first()
            .and_then(|e| e.get("messages"))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        // Everything acknowledged in earlier rounds is still there (nothing has taken it out of the queue).
        assert!(
            messages as usize >= acked.len(),
            "round {round}: {messages} messages read back, {} acknowledged so far",
            acked.len()
        );
        // Killed at a moment that varies from round to round, while the publisher is at full speed.
        let at = 200.0 + f64::from(round * 97 % 500);
        let killer = {
            let (pid, admin) = (node.process.pid(), node.admin);
            tokio::spawn(async move {
                admin
                    .wait_count("fleetgate_messages_received_total", &[("qos", "1")], at)
                    .await;
                fleetgate_testkit::process::send_signal(pid, Signal::KILL);
            })
        };
        let tag = format!("r{round}-");
        let published = publish_tagged(
            &node,
            "torn-pub",
            "torn/x",
            QoS::AtLeastOnce,
            1_000_000,
            &tag,
        )
        .await;
        killer.await.expect("killer task");
        acked.extend(published.acked);
    }
    let node = Node::start_in(BIN, dir.path(), &cfg).await;
    let (_client, mut events) = resume(&node, "torn-away").await;
    let got = received(&mut events).await;
    let counts = tally(&got);
    let lost: Vec<&String> = acked
        .iter()
        .filter(|p| !counts.contains_key(p.as_str()))
        .collect();
    eprintln!(
        "20 kills: {} acknowledged, {} received, {} lost",
        acked.len(),
        got.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "lost after 20 kills: {:?}",
        &lost[..lost.len().min(5)]
    );
}

#[tokio::test]
async fn a_restart_brings_back_subscriptions_queues_and_retained_messages() {
    let dir = scratch_dir();
    let cfg = config(dir.path(), "");
    let mut node = Node::start_in(BIN, dir.path(), &cfg).await;
    let (sub, sub_events) = subscriber(&node, "restart-sub", "r/#", QoS::ExactlyOnce).await;
    sub.disconnect().await.expect("queue DISCONNECT");
    drop(sub_events);
    node.admin.wait_connected("restart-sub", false, WAIT).await;
    let (publisher, mut pub_events, _) = v5_client(node.mqtt, "restart-pub", |_| {}).await;
    publisher
        .publish("r/retained", QoS::AtLeastOnce, true, "kept")
        .await
        .expect("queue PUBLISH");
    publisher
        .publish("r/queued", QoS::ExactlyOnce, false, "waiting")
        .await
        .expect("queue PUBLISH");
    pub_events
        .next_matching("PUBCOMP", |e| {
            matches!(e, Event::Incoming(Incoming::PubComp(_))).then_some(())
        })
        .await;
    drop(pub_events);
    let (status, _) = node.process.terminate(WAIT).await;
    assert!(status.success(), "node exit: {status:?}");
    drop(node);

    // Killed right after its start, too: what the first run stored is read back whole each time.
    let node = Node::start_in(BIN, dir.path(), &cfg).await;
    node.process.signal(Signal::KILL);
    drop(node);
    let node = Node::start_in(BIN, dir.path(), &cfg).await;

    let (_sub, mut events) = resume(&node, "restart-sub").await;
    let mut got = received(&mut events).await;
    got.sort();
    assert_eq!(
        got,
        ["kept", "waiting"],
        "the two queued messages, once each"
    );
    // The subscription came back too: a message published now is routed to it.
    let (publisher, _pub_events, _) = v5_client(node.mqtt, "restart-pub2", |_| {}).await;
    publisher
        .publish("r/after", QoS::AtLeastOnce, false, "after")
        .await
        .expect("queue PUBLISH");
    let next = events.next_matching("PUBLISH", v5_publish).await;
    assert_eq!(&next.payload[..], b"after");
    // And the retained message, for a new subscriber.
    let (fresh, mut fresh_events, _) = v5_client(node.mqtt, "restart-fresh", |_| {}).await;
    v5_subscribe(&fresh, &mut fresh_events, "r/retained", QoS::AtLeastOnce).await;
    let retained = fresh_events
        .next_matching("retained PUBLISH", v5_publish)
        .await;
    assert!(
        retained.retain && &retained.payload[..] == b"kept",
        "{retained:?}"
    );
}

#[tokio::test]
async fn a_full_store_refuses_qos1_publishes_with_quota_exceeded() {
    let dir = scratch_dir();
    // The smallest store allowed, filled by an offline session's queue of incompressible messages.
    let cfg = config(
        dir.path(),
        "max_bytes = \"64MiB\"\n\n[limits]\nmax_queued_messages = 100000\nmax_queued_bytes = \"512MiB\"\nmemory_budget = \"1GiB\"\nmax_packet_size = 2097152",
    );
    let node = Node::start_in(BIN, dir.path(), &cfg).await;
    let (sub, sub_events) = subscriber(&node, "full-sub", "full/#", QoS::AtLeastOnce).await;
    sub.disconnect().await.expect("queue DISCONNECT");
    drop(sub_events);
    node.admin.wait_connected("full-sub", false, WAIT).await;
    let (publisher, mut events, _) = v5_client(node.mqtt, "full-pub", |o| {
        o.set_max_packet_size(Some(4 << 20));
    })
    .await;
    let mut refused = false;
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..200 {
        // 1 MiB that does not compress.
        let payload: Vec<u8> = (0..1 << 20)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        publisher
            .publish("full/x", QoS::AtLeastOnce, false, payload)
            .await
            .expect("queue PUBLISH");
        let reason = events
            .next_matching("PUBACK", |e| match e {
                Event::Incoming(Incoming::PubAck(ack)) => Some(ack.reason),
                _ => None,
            })
            .await;
        if reason == PubAckReason::QuotaExceeded {
            refused = true;
            break;
        }
        assert_eq!(reason, PubAckReason::Success);
    }
    assert!(refused, "200 MiB went into a 64 MiB store");
    let dropped = node
        .admin
        .metric(
            "fleetgate_dropped_messages_total",
            &[("reason", "store_full")],
        )
        .await;
    assert!(dropped >= 1.0, "store_full not counted: {dropped}");
    let disk = node.admin.metric("fleetgate_store_disk_bytes", &[]).await;
    assert!(disk >= 64.0 * 1024.0 * 1024.0, "disk gauge {disk}");
}

#[tokio::test]
async fn a_restored_subscription_the_acl_no_longer_allows_is_dropped() {
    let dir = scratch_dir();
    let allow = |topics: &str| {
        format!(
            "[[rules]]\naction = \"allow\"\naccess = \"both\"\nmatch = {{ anyone = true }}\ntopics = [{topics}]\n"
        )
    };
    std::fs::write(
        dir.path().join("acl.toml"),
        allow("\"open/#\", \"closed/#\""),
    )
    .unwrap();
    let cfg = config(
        dir.path(),
        "\n[auth]\npolicies = []\nanonymous = true\nacl_file = \"acl.toml\"\n",
    );
    let mut node = Node::start_in(BIN, dir.path(), &cfg).await;
    for filter in ["open/#", "closed/#"] {
        let id = format!("acl-{}", &filter[..filter.len() - 2]);
        let (client, events) = subscriber(&node, &id, filter, QoS::AtLeastOnce).await;
        client.disconnect().await.expect("queue DISCONNECT");
        drop(events);
        node.admin.wait_connected(&id, false, WAIT).await;
    }
    let (status, _) = node.process.terminate(WAIT).await;
    assert!(status.success(), "node exit: {status:?}");
    drop(node);

    // While the node was down, the ACL stopped allowing `closed/#`.
    std::fs::write(dir.path().join("acl.toml"), allow("\"open/#\"")).unwrap();
    let node = Node::start_in(BIN, dir.path(), &cfg).await;
    let open = node
        .admin
        .client("acl-open")
        .await
        .expect("acl-open restored");
    let closed = node
        .admin
        .client("acl-closed")
        .await
        .expect("acl-closed restored");
    assert_eq!(open["subscriptions"], 1, "{open}");
    assert_eq!(
        closed["subscriptions"], 0,
        "the denied subscription came back: {closed}"
    );
}
