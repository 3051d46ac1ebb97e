//! End-to-end tests of `fleetgate node` with MQTT clients we did not write — mosquitto_pub/sub, python paho and
//! rumqttc, in 3.1.1 and 5 — talking to a real node process whose listener requires PROXY v2, through a
//! [`ProxySender`] standing in for the LB: retained messages, QoS levels, wills, shared subscriptions, secrets in
//! logs. Sessions (persistence, takeover, keep alive) are in `node_sessions.rs`, rejections in
//! `node_rejections.rs`.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{BIN, PASSWORD, assert_no_password, start, wait_disconnects};
use fleetgate_testkit::clients::{RunningCommand, mosquitto_pub, mosquitto_sub, paho};
use fleetgate_testkit::raw::Connect;
use fleetgate_testkit::rumqttc_client::v3_client;
use fleetgate_testkit::{
    MosquittoMessage, MqttVersion, Node, NodeSpec, ProxySender, RawClient, WAIT, eventually,
};

#[tokio::test]
async fn admin_endpoints_answer() {
    let (node, _px) = start().await;
    assert_eq!(node.admin.get("/healthz").await.status, 200);
    assert_eq!(node.admin.get("/readyz").await.status, 200);
    let metrics = node.admin.get("/metrics").await;
    assert!(metrics.body.contains("fleetgate_"), "{}", metrics.body);
    assert_eq!(node.admin.client("nobody-has-this-id").await, None);
}

#[tokio::test]
async fn worker_threads_follow_the_command_line() {
    for n in [1, 3] {
        let spec = NodeSpec {
            worker_threads: Some(n),
            ..NodeSpec::plain()
        };
        let node = Node::start(BIN, &spec).await;
        assert_eq!(
            node.admin.metric("fleetgate_worker_threads", &[]).await,
            n as f64,
            "--worker-threads {n}"
        );
        // And the node serves with that many.
        let out = mosquitto_pub(
            node.mqtt,
            MqttVersion::V5,
            &["-t", "t", "-m", "m", "-q", "1"],
        )
        .await;
        assert!(out.success(), "--worker-threads {n}: {out:?}");
    }
}

#[tokio::test]
async fn retained_messages_with_mosquitto() {
    let (node, px) = start().await;
    for v in MqttVersion::ALL {
        let topic = format!("retained/{}", v.tag());
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
            vec![MosquittoMessage::new(true, 1, &topic, "kept")],
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
            vec![MosquittoMessage::new(false, 0, &topic, "live")],
            "{v:?} after delete: {got:?}"
        );
    }
    // Every retained message was deleted.
    node.admin
        .wait_gauge("fleetgate_retained_messages", &[], 0.0)
        .await;
    assert_no_password(&node);
}

#[tokio::test]
async fn qos_levels_and_retained_with_paho() {
    let (node, px) = start().await;
    for v in MqttVersion::ALL {
        let t = v.tag();
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
    for v in MqttVersion::ALL {
        let topic = format!("will/{}", v.tag());
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
        let id = format!("will-killed-{}", v.tag());
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
        node.admin.wait_connected(&id, true, WAIT).await;
        doomed.kill().await;

        let got = watcher.finish().await;
        assert_eq!(
            got.mosquitto_messages(),
            vec![MosquittoMessage::new(false, 0, &topic, "ungraceful")],
            "{v:?}: {got:?}"
        );
    }
    wait_disconnects(&node, "ungraceful", 2.0).await;
}

#[tokio::test]
async fn shared_subscription_splits_messages_between_members() {
    use rumqttc::QoS;
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

    let (client, _events, _) = v3_client(px.addr(), "share-pub", |_| {}).await;
    for i in 0..N {
        client
            .publish("shared/t", QoS::AtLeastOnce, false, format!("m{i}"))
            .await
            .expect("queue PUBLISH");
    }
    let payloads = |sub: &RunningCommand| -> Vec<String> {
        sub.mosquitto_messages()
            .into_iter()
            .map(|m| m.payload)
            .collect()
    };
    let all = eventually(WAIT, || {
        let (pa, pb) = (payloads(&a), payloads(&b));
        async move { (pa.len() + pb.len() >= N).then_some((pa, pb)) }
    })
    .await;
    let _ = client.disconnect().await;
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
    for v in MqttVersion::ALL {
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
