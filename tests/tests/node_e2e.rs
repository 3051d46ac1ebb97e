//! End-to-end tests of `fleetgate node` with MQTT clients we did not write — mosquitto_pub/sub, python paho and
//! rumqttc, in 3.1.1 and 5 — talking to a real node process whose listener requires PROXY v2, through a
//! [`ProxySender`] standing in for the LB. The rejection paths live in `node_rejections.rs`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fleetgate_tests::clients::{MosquittoMessage, mosquitto_pub, mosquitto_sub, paho};
use fleetgate_tests::raw::{self, Closed, Connect, RawClient};
use fleetgate_tests::{MqttVersion, Node, NodeSpec, ProxySender, eventually, http};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_fleetgate");

/// A password every client here sends; no log line may ever contain it.
const PASSWORD: &str = "e2e-S3cret-pa55word";

/// Bound on waits for a client to be connected/subscribed/delivered.
const WAIT: Duration = Duration::from_secs(15);

const BOTH: [MqttVersion; 2] = [MqttVersion::V311, MqttVersion::V5];

/// A node behind a PROXY v2 sender, as the LB would put it.
async fn start() -> (Node, ProxySender) {
    let node = Node::start(BIN, &NodeSpec::behind_local_proxy()).await;
    let sender = ProxySender::start(node.mqtt).await;
    (node, sender)
}

fn assert_no_password(node: &Node) {
    for line in node.process.logs() {
        assert!(
            !line.contains(PASSWORD),
            "a log line contains the password: {line}"
        );
    }
}

fn tag(v: MqttVersion) -> &'static str {
    match v {
        MqttVersion::V311 => "v311",
        MqttVersion::V5 => "v5",
    }
}

fn msg(retain: bool, qos: u8, topic: &str, payload: &str) -> MosquittoMessage {
    MosquittoMessage {
        retain,
        qos,
        topic: topic.into(),
        payload: payload.into(),
    }
}

#[tokio::test]
async fn admin_endpoints_answer() {
    let (node, _px) = start().await;
    assert_eq!(http::get(node.admin, "/healthz").await.status, 200);
    assert_eq!(http::get(node.admin, "/readyz").await.status, 200);
    let metrics = http::get(node.admin, "/metrics").await;
    assert!(metrics.body.contains("fleetgate_"), "{}", metrics.body);
    assert_eq!(node.client("nobody-has-this-id").await, None);
}

#[tokio::test]
async fn retained_messages_with_mosquitto() {
    let (node, px) = start().await;
    for v in BOTH {
        let topic = format!("retained/{}", tag(v));
        let auth = ["-u", "alice", "-P", PASSWORD];
        let out = mosquitto_pub(
            px.addr(),
            v,
            &[&["-t", &topic, "-m", "kept", "-r", "-q", "1"][..], &auth].concat(),
        )
        .await;
        assert!(out.success(), "{v:?} retained publish: {out:?}");

        // A later subscriber gets it, flagged retained.
        let got = mosquitto_sub(px.addr(), v, 10, &["-t", &topic, "-q", "1", "-C", "1"])
            .finish()
            .await;
        assert_eq!(
            got.mosquitto_messages(),
            vec![msg(true, 1, &topic, "kept")],
            "{v:?}: {got:?}"
        );

        // An empty retained payload deletes it: the next subscriber's first message is a live one.
        let out = mosquitto_pub(px.addr(), v, &["-t", &topic, "-n", "-r", "-q", "1"]).await;
        assert!(out.success(), "{v:?} delete: {out:?}");
        let sub = mosquitto_sub(px.addr(), v, 10, &["-t", &topic, "-C", "1"]);
        sub.wait_for_line("SUBACK", WAIT).await;
        let out = mosquitto_pub(px.addr(), v, &["-t", &topic, "-m", "live"]).await;
        assert!(out.success(), "{out:?}");
        let got = sub.finish().await;
        assert_eq!(
            got.mosquitto_messages(),
            vec![msg(false, 0, &topic, "live")],
            "{v:?} after delete: {got:?}"
        );
    }
    let gone = eventually(WAIT, || async {
        (node.metric("fleetgate_retained_messages", &[]).await == 0.0).then_some(())
    })
    .await;
    assert!(
        gone.is_ok(),
        "fleetgate_retained_messages stays above 0 after deleting every retained message"
    );
    assert_no_password(&node);
}

#[tokio::test]
async fn qos_levels_and_retained_with_paho() {
    let (node, px) = start().await;
    for v in BOTH {
        let t = tag(v);
        let id = format!("paho-sub-{t}");
        let filter = format!("paho/{t}/#@2");
        let sub = paho(
            px.addr(),
            v,
            &[
                "--id",
                &id,
                "--sub",
                &filter,
                "--expect",
                "4",
                "--timeout",
                "15",
            ],
        );
        sub.wait_for_line("\"ready\"", WAIT).await;
        let pubs = [
            format!("0,0,paho/{t}/a,zero"),
            format!("1,0,paho/{t}/b,one"),
            format!("2,0,paho/{t}/c,two"),
            format!("1,1,paho/{t}/r,kept"),
        ];
        let mut args = vec![
            "--id".to_string(),
            format!("paho-pub-{t}"),
            "--username".into(),
            "bob".into(),
        ];
        args.extend(["--password".into(), PASSWORD.into()]);
        for p in &pubs {
            args.extend(["--pub".to_string(), p.clone()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = paho(px.addr(), v, &args).finish().await;
        assert!(out.success(), "{v:?} paho publisher: {out:?}");

        let got = sub.finish().await;
        assert!(got.success(), "{v:?} paho subscriber: {got:?}");
        let seen: BTreeSet<(String, u64, bool)> = got
            .events_of("msg")
            .iter()
            .map(|m| {
                (
                    m["payload"].as_str().unwrap_or("").to_string(),
                    m["qos"].as_u64().unwrap_or(9),
                    m["retain"] == true,
                )
            })
            .collect();
        // Delivered to an existing subscription: RETAIN is 0 (3.1.1 [MQTT-3.3.1-9]; 5 without Retain As Published).
        let want: BTreeSet<(String, u64, bool)> = [
            ("zero", 0, false),
            ("one", 1, false),
            ("two", 2, false),
            ("kept", 1, false),
        ]
        .into_iter()
        .map(|(p, q, r)| (p.to_string(), q, r))
        .collect();
        assert_eq!(seen, want, "{v:?}: {got:?}");

        // A late subscriber gets the retained one flagged; after deleting it, nothing is retained.
        let late_filter = format!("paho/{t}/r@1");
        let late = paho(px.addr(), v, &["--sub", &late_filter, "--expect", "1"])
            .finish()
            .await;
        let msgs = late.events_of("msg");
        assert!(
            msgs.len() == 1 && msgs[0]["payload"] == "kept" && msgs[0]["retain"] == true,
            "{v:?} late subscriber: {late:?}"
        );
        let delete = format!("1,1,paho/{t}/r,");
        assert!(
            paho(px.addr(), v, &["--pub", &delete])
                .finish()
                .await
                .success()
        );
    }
    assert_no_password(&node);
}

#[tokio::test]
async fn will_fires_on_ungraceful_disconnect_only() {
    let (node, px) = start().await;
    for v in BOTH {
        let topic = format!("will/{}", tag(v));
        let watcher = mosquitto_sub(px.addr(), MqttVersion::V5, 20, &["-t", &topic, "-C", "1"]);
        watcher.wait_for_line("SUBACK", WAIT).await;

        // A graceful DISCONNECT discards the will.
        let graceful = paho(
            px.addr(),
            v,
            &[
                "--id",
                "will-graceful",
                "--will-topic",
                &topic,
                "--will-payload",
                "graceful",
            ],
        );
        assert!(graceful.finish().await.success());

        // Killing the client (no DISCONNECT) publishes it.
        let id = format!("will-killed-{}", tag(v));
        let doomed = paho(
            px.addr(),
            v,
            &[
                "--id",
                &id,
                "--will-topic",
                &topic,
                "--will-payload",
                "ungraceful",
                "--hold",
                "--timeout",
                "20",
            ],
        );
        doomed.wait_for_line("\"ready\"", WAIT).await;
        node.wait_connected(&id, true, WAIT).await;
        doomed.kill().await;

        let got = watcher.finish().await;
        assert_eq!(
            got.mosquitto_messages(),
            vec![msg(false, 0, &topic, "ungraceful")],
            "{v:?}: {got:?}"
        );
    }
    node.wait_for_metric(
        "fleetgate_disconnects_total",
        &[("reason", "ungraceful")],
        2.0,
        WAIT,
    )
    .await;
}

#[tokio::test]
async fn persistent_session_queues_qos1_and_qos2_for_mosquitto() {
    let (node, px) = start().await;
    for v in BOTH {
        let id = format!("mosq-persist-{}", tag(v));
        let topic = format!("persist/{}", tag(v));
        // v5 needs a session expiry for the session to outlive the connection.
        let mut session = vec!["-c", "-i", &id, "-q", "2", "-t", &topic];
        if v == MqttVersion::V5 {
            session.extend(["-x", "300"]);
        }
        let first = mosquitto_sub(px.addr(), v, 10, &[&session[..], &["-E"]].concat())
            .finish()
            .await;
        assert!(first.success(), "{v:?} subscribe and leave: {first:?}");
        node.wait_connected(&id, false, WAIT).await;

        for (qos, payload) in [("1", "one"), ("2", "two"), ("1", "three")] {
            let out = mosquitto_pub(px.addr(), v, &["-t", &topic, "-q", qos, "-m", payload]).await;
            assert!(out.success(), "{out:?}");
        }
        let back = mosquitto_sub(px.addr(), v, 10, &[&session[..], &["-C", "3"]].concat())
            .finish()
            .await;
        // Order is only guaranteed per topic *and QoS* and per publisher [MQTT-4.6.0-5]; these came from three.
        let mut got = back.mosquitto_messages();
        got.sort_by(|a, b| a.payload.cmp(&b.payload));
        let want = vec![
            msg(false, 1, &topic, "one"),
            msg(false, 1, &topic, "three"),
            msg(false, 2, &topic, "two"),
        ];
        assert_eq!(got, want, "{v:?}: {back:?}");
    }
}

#[tokio::test]
async fn persistent_session_queues_for_paho() {
    let (node, px) = start().await;
    for v in BOTH {
        let id = format!("paho-persist-{}", tag(v));
        let filter = format!("ppersist/{}@2", tag(v));
        let session = [
            "--id",
            &id,
            "--clean",
            "0",
            "--session-expiry",
            "300",
            "--sub",
            &filter,
        ];
        assert!(paho(px.addr(), v, &session).finish().await.success());
        node.wait_connected(&id, false, WAIT).await;

        let p1 = format!("1,0,ppersist/{},q1", tag(v));
        let p2 = format!("2,0,ppersist/{},q2", tag(v));
        assert!(
            paho(px.addr(), v, &["--pub", &p1, "--pub", &p2])
                .finish()
                .await
                .success()
        );

        let back = paho(px.addr(), v, &[&session[..], &["--expect", "2"]].concat())
            .finish()
            .await;
        let connack = back.events_of("connack");
        assert_eq!(
            connack.first().map(|c| c["session_present"].clone()),
            Some(Value::Bool(true)),
            "{v:?}: {back:?}"
        );
        let payloads: Vec<String> = back
            .events_of("msg")
            .iter()
            .filter_map(|m| m["payload"].as_str())
            .map(str::to_string)
            .collect();
        assert_eq!(payloads, vec!["q1", "q2"], "{v:?}: {back:?}");
    }
}

#[tokio::test]
async fn qos1_unacknowledged_is_redelivered_with_dup_after_reconnect() {
    let (node, px) = start().await;
    let mut first = RawClient::connect(px.addr()).await;
    let connect = Connect {
        clean: false,
        ..Connect::new(4, "raw-redeliver")
    }
    .encode();
    first.send(&connect).await;
    assert_eq!(
        first.read_packet(WAIT).await.map(|p| p.0),
        Some(0x20),
        "CONNACK"
    );
    first.send(&raw::subscribe(4, 1, "redeliver/t", 1)).await;
    assert_eq!(
        first.read_packet(WAIT).await.map(|p| p.0),
        Some(0x90),
        "SUBACK"
    );

    let out = mosquitto_pub(
        px.addr(),
        MqttVersion::V311,
        &["-t", "redeliver/t", "-q", "1", "-m", "m1"],
    )
    .await;
    assert!(out.success(), "{out:?}");
    let (header, _) = first.read_packet(WAIT).await.expect("PUBLISH");
    assert_eq!(header & 0xF6, 0x32, "a QoS 1 PUBLISH, got {header:#x}");
    drop(first); // never acknowledged
    node.wait_connected("raw-redeliver", false, WAIT).await;

    let mut second = RawClient::connect(px.addr()).await;
    second.send(&connect).await;
    let (kind, connack) = second.read_packet(WAIT).await.expect("CONNACK");
    assert_eq!(
        (kind, connack.first().map(|f| f & 1)),
        (0x20, Some(1)),
        "CONNACK with session present"
    );
    let (header, body) = second.read_packet(WAIT).await.expect("redelivered PUBLISH");
    assert_eq!(header, 0x3A, "QoS 1 PUBLISH with DUP set, got {header:#x}");
    assert!(body.ends_with(b"m1"));
    let packet_id =
        u16::from_be_bytes([body[2 + "redeliver/t".len()], body[3 + "redeliver/t".len()]]);
    second.send(&raw::puback(packet_id)).await;
}

/// Drives a rumqttc 3.1.1 client until `want` messages arrived; returns (session_present, payloads).
async fn rumqttc_v4_session(
    addr: SocketAddr,
    id: &str,
    topic: &str,
    want: usize,
) -> (bool, Vec<String>) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let mut opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_clean_session(false)
        .set_keep_alive(Duration::from_secs(10));
    opts.set_credentials("carol", PASSWORD);
    let (client, mut events) = AsyncClient::new(opts, 16);
    client
        .subscribe(topic, QoS::ExactlyOnce)
        .await
        .expect("queue SUBSCRIBE");
    let run = async {
        let (mut present, mut got, mut subscribed) = (false, Vec::new(), false);
        while !(subscribed && got.len() >= want) {
            match events.poll().await.expect("rumqttc v4 connection") {
                Event::Incoming(Packet::ConnAck(ack)) => present = ack.session_present,
                Event::Incoming(Packet::SubAck(_)) => subscribed = true,
                Event::Incoming(Packet::Publish(p)) => {
                    got.push(String::from_utf8_lossy(&p.payload).into_owned())
                }
                _ => {}
            }
        }
        client.disconnect().await.expect("queue DISCONNECT");
        while events.poll().await.is_ok() {}
        (present, got)
    };
    tokio::time::timeout(WAIT, run)
        .await
        .expect("rumqttc v4 session timed out")
}

/// The same with rumqttc's MQTT 5 client and a session expiry.
async fn rumqttc_v5_session(
    addr: SocketAddr,
    id: &str,
    topic: &str,
    want: usize,
) -> (bool, Vec<String>) {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let mut opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_clean_start(false)
        .set_keep_alive(Duration::from_secs(10))
        .set_session_expiry_interval(Some(300));
    let (client, mut events) = AsyncClient::new(opts, 16);
    client
        .subscribe(topic, QoS::ExactlyOnce)
        .await
        .expect("queue SUBSCRIBE");
    let run = async {
        let (mut present, mut got, mut subscribed) = (false, Vec::new(), false);
        while !(subscribed && got.len() >= want) {
            match events.poll().await.expect("rumqttc v5 connection") {
                Event::Incoming(Packet::ConnAck(ack)) => present = ack.session_present,
                Event::Incoming(Packet::SubAck(_)) => subscribed = true,
                Event::Incoming(Packet::Publish(p)) => {
                    got.push(String::from_utf8_lossy(&p.payload).into_owned())
                }
                _ => {}
            }
        }
        client.disconnect().await.expect("queue DISCONNECT");
        while events.poll().await.is_ok() {}
        (present, got)
    };
    tokio::time::timeout(WAIT, run)
        .await
        .expect("rumqttc v5 session timed out")
}

#[tokio::test]
async fn persistent_session_queues_for_rumqttc() {
    let (node, px) = start().await;
    for v in BOTH {
        let id = format!("rumqttc-persist-{}", tag(v));
        let topic = format!("rq/{}", tag(v));
        let (addr, id_ref, topic_ref) = (px.addr(), id.as_str(), topic.as_str());
        let session = |want| async move {
            match v {
                MqttVersion::V311 => rumqttc_v4_session(addr, id_ref, topic_ref, want).await,
                MqttVersion::V5 => rumqttc_v5_session(addr, id_ref, topic_ref, want).await,
            }
        };
        let (present, _) = session(0).await;
        assert!(!present, "{v:?}: a fresh session is not present");
        node.wait_connected(&id, false, WAIT).await;
        for (qos, payload) in [("1", "r1"), ("2", "r2")] {
            assert!(
                mosquitto_pub(px.addr(), v, &["-t", &topic, "-q", qos, "-m", payload])
                    .await
                    .success()
            );
        }
        let (present, got) = session(2).await;
        assert!(present, "{v:?}: the session survived the disconnect");
        assert_eq!(got, vec!["r1", "r2"], "{v:?}");
    }
    assert_no_password(&node);
}

#[tokio::test]
async fn takeover_sends_v5_disconnect_0x8e() {
    let (node, px) = start().await;
    let connect = Connect::new(5, "taken-raw").encode();
    let mut first = RawClient::connect(px.addr()).await;
    first.send(&connect).await;
    assert_eq!(
        first.read_packet(WAIT).await.map(|p| p.0),
        Some(0x20),
        "first CONNACK"
    );
    let mut second = RawClient::connect(px.addr()).await;
    second.send(&connect).await;
    assert_eq!(
        second.read_packet(WAIT).await.map(|p| p.0),
        Some(0x20),
        "second CONNACK"
    );
    match first.closed_within(WAIT).await {
        Closed::After(bytes) => assert_eq!(
            (bytes.first(), bytes.get(2)),
            (Some(&0xE0), Some(&0x8E)),
            "{bytes:?}"
        ),
        Closed::StillOpen(bytes) => {
            panic!("the first connection stays open after a takeover ({bytes:?})")
        }
    }
    node.wait_for_metric(
        "fleetgate_disconnects_total",
        &[("reason", "takeover")],
        1.0,
        WAIT,
    )
    .await;
    assert!(
        node.is_connected("taken-raw").await,
        "the second connection holds the session"
    );
}

#[tokio::test]
async fn takeover_disconnects_the_first_client() {
    let (node, px) = start().await;
    for v in BOTH {
        let id = format!("taken-{}", tag(v));
        let first = paho(px.addr(), v, &["--id", &id, "--hold", "--timeout", "20"]);
        first.wait_for_line("\"ready\"", WAIT).await;
        let second = paho(px.addr(), v, &["--id", &id]).finish().await;
        assert_eq!(
            second.events_of("connack").first().map(|c| c["rc"].clone()),
            Some(0.into()),
            "{second:?}"
        );
        first.wait_for_line("\"disconnect\"", WAIT).await;
        let first = first.finish().await;
        let disconnect = &first.events_of("disconnect")[0];
        match v {
            // MQTT 5: DISCONNECT with reason 0x8E Session taken over. paho (1.6 and 2.x) reads a DISCONNECT's
            // reason code only when the remaining length is > 2, i.e. when it carries properties: a bare
            // `E0 02 8E 00` shows up as rc 7 (connection lost). `takeover_sends_v5_disconnect_0x8e` checks the bytes.
            MqttVersion::V5 => assert_eq!(disconnect["rc"], 0x8E, "{first:?}"),
            // 3.1.1 has no server DISCONNECT: the connection is just closed.
            MqttVersion::V311 => assert_ne!(disconnect["rc"], 0, "{first:?}"),
        }
    }
    node.wait_for_metric(
        "fleetgate_disconnects_total",
        &[("reason", "takeover")],
        2.0,
        WAIT,
    )
    .await;
}

#[tokio::test]
async fn keep_alive_expiry_disconnects_a_silent_client_and_fires_its_will() {
    let (node, px) = start().await;
    for level in [4u8, 5] {
        let topic = format!("will/keepalive/{level}");
        let watcher = mosquitto_sub(px.addr(), MqttVersion::V5, 20, &["-t", &topic, "-C", "1"]);
        watcher.wait_for_line("SUBACK", WAIT).await;

        let mut silent = RawClient::connect(px.addr()).await;
        let id = format!("silent-{level}");
        let connect = Connect {
            keep_alive: 1,
            will: Some((&topic, b"gone")),
            ..Connect::new(level, &id)
        };
        silent.send(&connect.encode()).await;
        assert_eq!(
            silent.read_packet(WAIT).await.map(|p| p.0),
            Some(0x20),
            "CONNACK"
        );
        let start = Instant::now();
        // Keep alive 1 s: the server may wait 1.5 × keep alive [MQTT-3.1.2-24]; the slack is for a loaded machine.
        let closed = silent.closed_within(Duration::from_secs(5)).await;
        let elapsed = start.elapsed();
        let Closed::After(bytes) = closed else {
            panic!("level {level}: still connected after 5 s of silence")
        };
        assert!(
            elapsed >= Duration::from_millis(900),
            "level {level}: closed too early ({elapsed:?})"
        );
        assert!(
            elapsed <= Duration::from_millis(3000),
            "level {level}: closed too late ({elapsed:?})"
        );
        if level == 5 {
            // DISCONNECT 0x8D Keep Alive timeout before the close.
            assert_eq!(
                bytes.first(),
                Some(&0xE0),
                "level 5: expected a DISCONNECT, got {bytes:?}"
            );
            assert_eq!(bytes.get(2), Some(&0x8D), "level 5: reason {bytes:?}");
        }
        let got = watcher.finish().await;
        assert_eq!(
            got.mosquitto_messages(),
            vec![msg(false, 0, &topic, "gone")],
            "level {level}: {got:?}"
        );
    }
    node.wait_for_metric(
        "fleetgate_disconnects_total",
        &[("reason", "keepalive_timeout")],
        2.0,
        WAIT,
    )
    .await;
}

#[tokio::test]
async fn shared_subscription_splits_messages_between_members() {
    use rumqttc::{AsyncClient, MqttOptions, QoS};
    const N: usize = 20;
    let (_node, px) = start().await;
    let filter = "$share/g/shared/t";
    let a = mosquitto_sub(
        px.addr(),
        MqttVersion::V5,
        30,
        &["-t", filter, "-q", "1", "-i", "share-a"],
    );
    let b = mosquitto_sub(
        px.addr(),
        MqttVersion::V311,
        30,
        &["-t", filter, "-q", "1", "-i", "share-b"],
    );
    a.wait_for_line("SUBACK", WAIT).await;
    b.wait_for_line("SUBACK", WAIT).await;

    let opts = MqttOptions::new("share-pub", px.addr().ip().to_string(), px.addr().port());
    let (client, mut events) = AsyncClient::new(opts, N + 4);
    let driver = tokio::spawn(async move { while events.poll().await.is_ok() {} });
    for i in 0..N {
        client
            .publish("shared/t", QoS::AtLeastOnce, false, format!("m{i}"))
            .await
            .expect("queue PUBLISH");
    }
    let payloads = |out: &[String]| -> Vec<String> {
        out.iter()
            .filter_map(|l| l.strip_prefix("MSG "))
            .filter_map(|l| l.splitn(4, ' ').nth(3))
            .map(str::to_string)
            .collect()
    };
    let all = eventually(WAIT, || {
        let (pa, pb) = (payloads(&a.stdout()), payloads(&b.stdout()));
        async move { (pa.len() + pb.len() >= N).then_some((pa, pb)) }
    })
    .await;
    let _ = client.disconnect().await;
    driver.abort();
    let (pa, pb) = all.unwrap_or_else(|_| {
        panic!(
            "shared subscribers got {:?} and {:?}",
            a.stdout(),
            b.stdout()
        )
    });
    a.kill().await;
    b.kill().await;
    assert!(
        !pa.is_empty() && !pb.is_empty(),
        "each member gets a share: {pa:?} / {pb:?}"
    );
    let mut union: Vec<String> = pa.iter().chain(&pb).cloned().collect();
    union.sort();
    let mut want: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
    want.sort();
    assert_eq!(union, want, "every message exactly once across the group");
}

#[tokio::test]
async fn no_password_reaches_the_logs_even_at_debug() {
    let mut spec = NodeSpec::behind_local_proxy();
    spec.rust_log = Some("debug".into());
    let node = Node::start(BIN, &spec).await;
    let px = ProxySender::start(node.mqtt).await;
    for v in BOTH {
        let out = mosquitto_pub(
            px.addr(),
            v,
            &["-t", "pw/t", "-m", "x", "-u", "dave", "-P", PASSWORD],
        )
        .await;
        assert!(out.success(), "{out:?}");
        let out = paho(
            px.addr(),
            v,
            &[
                "--username",
                "erin",
                "--password",
                PASSWORD,
                "--pub",
                "1,0,pw/t,y",
            ],
        )
        .finish()
        .await;
        assert!(out.success(), "{out:?}");
    }
    // A CONNECT that fails to decode after the password: the error path must not dump the packet either.
    let mut bad = RawClient::connect(px.addr()).await;
    let mut connect = Connect {
        credentials: Some(("mallory", PASSWORD)),
        ..Connect::new(4, "pw-raw")
    }
    .encode();
    connect.extend_from_slice(&[0x00, 0x00]); // followed by a reserved packet type: a protocol error
    bad.send(&connect).await;
    let _ = bad.closed_within(Duration::from_secs(3)).await;
    node.process
        .wait_for_log(WAIT, "connect event", |l| l["event"] == "connect")
        .await;
    assert_no_password(&node);
}
