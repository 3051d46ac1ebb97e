//! End-to-end tests of MQTT sessions on a real `fleetgate node` behind a PROXY v2 sender, with mosquitto, paho,
//! rumqttc and raw bytes: persistent sessions queueing QoS 1/2 while offline, redelivery with DUP, takeover,
//! keep-alive expiry with its will.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{PASSWORD, assert_no_password, start, wait_disconnects};
use fleetgate_testkit::clients::{mosquitto_pub, mosquitto_sub, paho};
use fleetgate_testkit::raw::{self, Connect};
use fleetgate_testkit::rumqttc_client::{
    Events, v3_client, v3_publish, v3_suback, v5_client, v5_publish, v5_suback,
};
use fleetgate_testkit::{Closed, MosquittoMessage, MqttVersion, RawClient, WAIT};
use serde_json::Value;

#[tokio::test]
async fn persistent_session_queues_qos1_and_qos2_for_mosquitto() {
    let (node, px) = start().await;
    for v in MqttVersion::ALL {
        let id = format!("mosq-persist-{}", v.tag());
        let topic = format!("persist/{}", v.tag());
        // v5 needs a session expiry for the session to outlive the connection.
        let mut session = vec!["-c", "-i", &id, "-q", "2", "-t", &topic];
        if v == MqttVersion::V5 {
            session.extend(["-x", "300"]);
        }
        let first = mosquitto_sub(px.addr(), v, 10, &[&session[..], &["-E"]].concat())
            .finish()
            .await;
        assert!(first.success(), "{v:?} subscribe and leave: {first:?}");
        node.admin.wait_connected(&id, false, WAIT).await;

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
            MosquittoMessage::new(false, 1, &topic, "one"),
            MosquittoMessage::new(false, 1, &topic, "three"),
            MosquittoMessage::new(false, 2, &topic, "two"),
        ];
        assert_eq!(got, want, "{v:?}: {back:?}");
    }
}

#[tokio::test]
async fn persistent_session_queues_for_paho() {
    let (node, px) = start().await;
    for v in MqttVersion::ALL {
        let id = format!("paho-persist-{}", v.tag());
        let filter = format!("ppersist/{}@2", v.tag());
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
        node.admin.wait_connected(&id, false, WAIT).await;

        let p1 = format!("1,0,ppersist/{},q1", v.tag());
        let p2 = format!("2,0,ppersist/{},q2", v.tag());
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
    };
    assert!(first.mqtt_connect(&connect).await.is_some(), "CONNACK");
    first.subscribe(1, "redeliver/t").await;

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
    node.admin
        .wait_connected("raw-redeliver", false, WAIT)
        .await;

    let mut second = RawClient::connect(px.addr()).await;
    second.send(&connect.encode()).await;
    let (present, _) = second.read_connack().await.expect("CONNACK");
    assert!(present, "CONNACK with session present");
    let (header, body) = second.read_packet(WAIT).await.expect("redelivered PUBLISH");
    assert_eq!(header, 0x3A, "QoS 1 PUBLISH with DUP set, got {header:#x}");
    assert!(body.ends_with(b"m1"));
    let packet_id =
        u16::from_be_bytes([body[2 + "redeliver/t".len()], body[3 + "redeliver/t".len()]]);
    second.send(&raw::puback(packet_id)).await;
}

/// What a persistent rumqttc session waits for after its CONNACK.
enum Seen {
    SubAck,
    Message(String),
}

/// Connects rumqttc (3.1.1 with a password, or 5 with a session expiry) with a persistent session, subscribes to
/// `topic` at QoS 2 and reads until its SUBACK and `want` messages arrived (queued ones may come before the
/// SUBACK), then disconnects; returns (session_present, payloads).
async fn rumqttc_session(
    v: MqttVersion,
    addr: SocketAddr,
    id: &str,
    topic: &str,
    want: usize,
) -> (bool, Vec<String>) {
    let text = |payload: &[u8]| String::from_utf8_lossy(payload).into_owned();
    match v {
        MqttVersion::V311 => {
            use rumqttc::QoS;
            let (client, mut events, ack) = v3_client(addr, id, |o| {
                o.set_clean_session(false)
                    .set_keep_alive(Duration::from_secs(10));
                o.set_credentials("carol", PASSWORD);
            })
            .await;
            client
                .subscribe(topic, QoS::ExactlyOnce)
                .await
                .expect("queue SUBSCRIBE");
            let got = read_session(&mut events, want, |e| match v3_suback(e) {
                Some(_) => Some(Seen::SubAck),
                None => v3_publish(e).map(|p| Seen::Message(text(&p.payload))),
            })
            .await;
            client.disconnect().await.expect("queue DISCONNECT");
            events.closed(WAIT).await;
            (ack.session_present, got)
        }
        MqttVersion::V5 => {
            use rumqttc::v5::mqttbytes::QoS;
            let (client, mut events, ack) = v5_client(addr, id, |o| {
                o.set_clean_start(false)
                    .set_keep_alive(Duration::from_secs(10))
                    .set_session_expiry_interval(Some(300));
            })
            .await;
            client
                .subscribe(topic, QoS::ExactlyOnce)
                .await
                .expect("queue SUBSCRIBE");
            let got = read_session(&mut events, want, |e| match v5_suback(e) {
                Some(()) => Some(Seen::SubAck),
                None => v5_publish(e).map(|p| Seen::Message(text(&p.payload))),
            })
            .await;
            client.disconnect().await.expect("queue DISCONNECT");
            events.closed(WAIT).await;
            (ack.session_present, got)
        }
    }
}

/// The payloads of a session's first `want` messages, read until its SUBACK too.
async fn read_session<E: std::fmt::Debug>(
    events: &mut Events<E>,
    want: usize,
    seen: impl Fn(&E) -> Option<Seen>,
) -> Vec<String> {
    let (mut subscribed, mut got) = (false, Vec::new());
    while !(subscribed && got.len() >= want) {
        match events.next_matching("SUBACK and messages", &seen).await {
            Seen::SubAck => subscribed = true,
            Seen::Message(payload) => got.push(payload),
        }
    }
    got
}

#[tokio::test]
async fn persistent_session_queues_for_rumqttc() {
    let (node, px) = start().await;
    for v in MqttVersion::ALL {
        let id = format!("rumqttc-persist-{}", v.tag());
        let topic = format!("rq/{}", v.tag());
        let (present, _) = rumqttc_session(v, px.addr(), &id, &topic, 0).await;
        assert!(!present, "{v:?}: a fresh session is not present");
        node.admin.wait_connected(&id, false, WAIT).await;
        for (qos, payload) in [("1", "r1"), ("2", "r2")] {
            assert!(
                mosquitto_pub(px.addr(), v, &["-t", &topic, "-q", qos, "-m", payload])
                    .await
                    .success()
            );
        }
        let (present, got) = rumqttc_session(v, px.addr(), &id, &topic, 2).await;
        assert!(present, "{v:?}: the session survived the disconnect");
        assert_eq!(got, vec!["r1", "r2"], "{v:?}");
    }
    assert_no_password(&node);
}

#[tokio::test]
async fn takeover_sends_v5_disconnect_0x8e() {
    let (node, px) = start().await;
    let connect = Connect::new(5, "taken-raw");
    let mut first = RawClient::connect(px.addr()).await;
    assert!(
        first.mqtt_connect(&connect).await.is_some(),
        "first CONNACK"
    );
    let mut second = RawClient::connect(px.addr()).await;
    assert!(
        second.mqtt_connect(&connect).await.is_some(),
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
    wait_disconnects(&node, "takeover", 1.0).await;
    assert!(
        node.admin.is_connected("taken-raw").await,
        "the second connection holds the session"
    );
}

#[tokio::test]
async fn takeover_disconnects_the_first_client() {
    let (node, px) = start().await;
    for v in MqttVersion::ALL {
        let id = format!("taken-{}", v.tag());
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
    wait_disconnects(&node, "takeover", 2.0).await;
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
        assert!(silent.mqtt_connect(&connect).await.is_some(), "CONNACK");
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
            vec![MosquittoMessage::new(false, 0, &topic, "gone")],
            "level {level}: {got:?}"
        );
    }
    wait_disconnects(&node, "keepalive_timeout", 2.0).await;
}
