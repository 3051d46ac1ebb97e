//! MQTT 5 features with rumqttc's v5 client: CONNACK properties, subscription identifiers, No Local, topic
//! aliases both ways, request/response properties passed through.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use fleetgate_config::node::LimitsConfig;
use fleetgate_protocol::mqtt::{self, Connect, Packet, ProtocolLevel, PublishProperties};
use fleetgate_testkit::rumqttc_client::{
    v3_client, v3_publish, v3_subscribe, v5_client, v5_publish, v5_suback, v5_subscribe,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    Filter, PublishProperties as RPublishProperties, SubscribeProperties,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connack_announces_our_limits() {
    let limits = LimitsConfig {
        receive_maximum: 7,
        topic_alias_maximum: 3,
        server_keep_alive: Some(20),
        ..LimitsConfig::default()
    };
    with_node(limits, async |node| {
        let (_c, _ev, connack) = v5_client(node.addr, "props", |_| {}).await;
        let props = connack.properties.unwrap();
        assert_eq!(props.receive_max, Some(7));
        assert_eq!(props.topic_alias_max, Some(3));
        assert_eq!(props.max_packet_size, Some(1024 * 1024));
        assert_eq!(props.server_keep_alive, Some(20));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_identifier_no_local_and_properties() {
    with_node(LimitsConfig::default(), async |node| {
        let (me, mut my_ev, _) = v5_client(node.addr, "me", |_| {}).await;
        let props = SubscribeProperties {
            id: Some(42),
            user_properties: Vec::new(),
        };
        me.subscribe_with_properties("rr/#", QoS::AtLeastOnce, props)
            .await
            .unwrap();
        my_ev.next_matching("SUBACK", v5_suback).await;
        let mut own = Filter::new("mine/#", QoS::AtLeastOnce);
        own.nolocal = true;
        me.subscribe_many(vec![own]).await.unwrap();
        my_ev.next_matching("SUBACK", v5_suback).await;

        // No Local: my own publish does not come back; someone else's does.
        me.publish("mine/x", QoS::AtLeastOnce, false, "self")
            .await
            .unwrap();
        let (other, _oe, _) = v5_client(node.addr, "other", |_| {}).await;
        other
            .publish("mine/x", QoS::AtLeastOnce, false, "other")
            .await
            .unwrap();
        let p = my_ev.next_matching("PUBLISH", v5_publish).await;
        assert_eq!(&p.payload[..], b"other");

        // Subscription identifier, and request/response properties passed through unchanged.
        let props = RPublishProperties {
            response_topic: Some("rr/reply".into()),
            correlation_data: Some(Bytes::from_static(b"c-1")),
            user_properties: vec![("k".into(), "v".into())],
            content_type: Some("text/plain".into()),
            payload_format_indicator: Some(1),
            ..Default::default()
        };
        other
            .publish_with_properties("rr/req", QoS::AtLeastOnce, false, "q", props)
            .await
            .unwrap();
        let p = my_ev.next_matching("PUBLISH", v5_publish).await;
        let got = p.properties.unwrap();
        assert_eq!(got.subscription_identifiers, vec![42]);
        assert_eq!(got.response_topic.as_deref(), Some("rr/reply"));
        assert_eq!(got.correlation_data.as_deref(), Some(&b"c-1"[..]));
        assert_eq!(
            got.user_properties,
            vec![("k".to_string(), "v".to_string())]
        );
        assert_eq!(got.content_type.as_deref(), Some("text/plain"));
        assert_eq!(got.payload_format_indicator, Some(1));
    })
    .await;
}

/// Deliveries with and without properties go out by different encoders (the plain ones straight from the
/// queue): interleaved, they still reach the subscriber in publish order, each with its own properties.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_with_and_without_properties_keep_their_order() {
    with_node(LimitsConfig::default(), async |node| {
        let (sub, mut ev, _) = v5_client(node.addr, "mixed-sub", |_| {}).await;
        v5_subscribe(&sub, &mut ev, "mix/#", QoS::AtLeastOnce).await;
        let (publ, _pe, _) = v5_client(node.addr, "mixed-pub", |_| {}).await;
        const N: usize = 300;
        for i in 0..N {
            // Runs of different lengths, so batches of every mix occur.
            let with_props = (i / (1 + i % 3)) % 2 == 1;
            let qos = if i % 5 == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            };
            let payload = i.to_string();
            if with_props {
                let props = RPublishProperties {
                    user_properties: vec![("i".into(), payload.clone())],
                    ..Default::default()
                };
                publ.publish_with_properties("mix/t", qos, false, payload, props)
                    .await
                    .unwrap();
            } else {
                publ.publish("mix/t", qos, false, payload).await.unwrap();
            }
        }
        for i in 0..N {
            let p = ev.next_matching("PUBLISH", v5_publish).await;
            assert_eq!(std::str::from_utf8(&p.payload).unwrap(), i.to_string());
            let with_props = (i / (1 + i % 3)) % 2 == 1;
            let user = p.properties.map(|p| p.user_properties).unwrap_or_default();
            if with_props {
                assert_eq!(user, vec![("i".to_string(), i.to_string())], "message {i}");
            } else {
                assert!(user.is_empty(), "message {i}: {user:?}");
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_topic_alias() {
    with_node(LimitsConfig::default(), async |node| {
        let (sub, mut ev, _) = v5_client(node.addr, "aliased", |o| {
            o.set_topic_alias_max(Some(2));
        })
        .await;
        v5_subscribe(&sub, &mut ev, "a/#", QoS::AtMostOnce).await;
        let (publ, _pe, _) = v5_client(node.addr, "pub", |_| {}).await;
        for _ in 0..2 {
            publ.publish("a/long/topic", QoS::AtMostOnce, false, "x")
                .await
                .unwrap();
        }
        let first = ev.next_matching("PUBLISH", v5_publish).await;
        let second = ev.next_matching("PUBLISH", v5_publish).await;
        assert_eq!(first.topic, "a/long/topic");
        assert_eq!(first.properties.unwrap().topic_alias, Some(1));
        // The second PUBLISH names the topic by its alias only (rumqttc reports the wire topic).
        assert_eq!(second.properties.unwrap().topic_alias, Some(1));
        assert!(second.topic.is_empty(), "{:?}", second.topic);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_topic_alias_and_assigned_client_id() {
    with_node(LimitsConfig::default(), async |node| {
        let (sub, mut ev, _) = v3_client(node.addr, "watch", |_| {}).await;
        v3_subscribe(&sub, &mut ev, "alias/#", rumqttc::QoS::AtMostOnce).await;

        let mut raw = CodecClient::connect(node.addr, ProtocolLevel::V5).await;
        let ack = raw
            .mqtt_connect(Connect {
                clean_start: true,
                ..Connect::default()
            })
            .await;
        let Packet::ConnectAck(ack) = ack else {
            panic!("{ack:?}")
        };
        let assigned = ack.assigned_client_id.expect("assigned client id");
        assert!(node.handle().broker().client_info(&assigned).is_some());

        let alias = |topic: &str| mqtt::Publish {
            dup: false,
            retain: false,
            qos: mqtt::QoS::AtMostOnce,
            topic: topic.into(),
            packet_id: None,
            payload: Bytes::from_static(b"p"),
            properties: Some(PublishProperties {
                topic_alias: std::num::NonZeroU16::new(1),
                ..Default::default()
            }),
        };
        raw.send(Packet::Publish(Box::new(alias("alias/one"))))
            .await;
        raw.send(Packet::Publish(Box::new(alias("")))).await;
        for _ in 0..2 {
            let p = ev.next_matching("PUBLISH", v3_publish).await;
            assert_eq!(p.topic, "alias/one");
        }
        // An alias above our maximum is a protocol error: DISCONNECT 0x94.
        let mut bad = alias("alias/two");
        bad.properties.as_mut().unwrap().topic_alias = std::num::NonZeroU16::new(500);
        raw.send(Packet::Publish(Box::new(bad))).await;
        let seen = raw.until_closed().await;
        assert!(
            matches!(seen.last(), Some(Packet::Disconnect(d)) if u8::from(d.reason_code) == 0x94),
            "{seen:?}"
        );
        ev.assert_none(Duration::from_millis(100), |e| v3_publish(e).is_some())
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_expiry_drops_and_forwards_the_rest() {
    with_node(LimitsConfig::default(), async |node| {
        let durable = |o: &mut rumqttc::v5::MqttOptions| {
            o.set_clean_start(false);
            o.set_session_expiry_interval(Some(60));
        };
        let (sub, mut ev, _) = v5_client(node.addr, "late", durable).await;
        v5_subscribe(&sub, &mut ev, "exp/#", QoS::AtLeastOnce).await;
        sub.disconnect().await.unwrap();
        node.wait_offline("late").await;

        let (publ, _pe, _) = v5_client(node.addr, "pub", |_| {}).await;
        let expiring = |secs| RPublishProperties {
            message_expiry_interval: Some(secs),
            ..Default::default()
        };
        publ.publish_with_properties("exp/short", QoS::AtLeastOnce, false, "short", expiring(1))
            .await
            .unwrap();
        publ.publish_with_properties("exp/long", QoS::AtLeastOnce, false, "long", expiring(100))
            .await
            .unwrap();
        node.eventually("2 queued", |h| {
            h.broker()
                .client_info("late")
                .is_some_and(|i| i.queued == 2)
        })
        .await;
        // Let the 1 s expiry run out while the session is offline (this wait is the behaviour under test).
        tokio::time::sleep(Duration::from_millis(1100)).await;

        let (_sub, mut ev, connack) = v5_client(node.addr, "late", durable).await;
        assert!(connack.session_present);
        let p = ev.next_matching("PUBLISH", v5_publish).await;
        assert_eq!(&p.payload[..], b"long");
        let left = p.properties.unwrap().message_expiry_interval.unwrap();
        assert!((98..=100).contains(&left), "{left}");
        ev.assert_none(Duration::from_millis(200), |e| v5_publish(e).is_some())
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_handling_and_retain_as_published() {
    with_node(LimitsConfig::default(), async |node| {
        let (publ, _pe, _) = v5_client(node.addr, "pub", |_| {}).await;
        publ.publish("r/t", QoS::AtLeastOnce, true, "kept")
            .await
            .unwrap();
        node.wait_retained(true).await;

        let (sub, mut ev, _) = v5_client(node.addr, "sub", |_| {}).await;
        let filter = |rh, rap| {
            let mut f = Filter::new("r/#", QoS::AtLeastOnce);
            f.retain_forward_rule = rh;
            f.preserve_retain = rap;
            f
        };
        use rumqttc::v5::mqttbytes::v5::RetainForwardRule as R;
        // 2: never send retained.
        sub.subscribe_many(vec![filter(R::Never, false)])
            .await
            .unwrap();
        ev.next_matching("SUBACK", v5_suback).await;
        ev.assert_none(Duration::from_millis(150), |e| v5_publish(e).is_some())
            .await;
        // 1: only for a new subscription — this one exists, so still nothing.
        sub.subscribe_many(vec![filter(R::OnNewSubscribe, false)])
            .await
            .unwrap();
        ev.next_matching("SUBACK", v5_suback).await;
        ev.assert_none(Duration::from_millis(150), |e| v5_publish(e).is_some())
            .await;
        // 0: always, with RETAIN = 1.
        sub.subscribe_many(vec![filter(R::OnEverySubscribe, true)])
            .await
            .unwrap();
        let p = ev.next_matching("retained PUBLISH", v5_publish).await;
        assert!(p.retain);
        // Retain as published: a live retained message keeps RETAIN = 1.
        publ.publish("r/t", QoS::AtLeastOnce, true, "again")
            .await
            .unwrap();
        let p = ev.next_matching("live PUBLISH", v5_publish).await;
        assert!(p.retain && &p.payload[..] == b"again");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_delay_and_disconnect_with_will() {
    with_node(LimitsConfig::default(), async |node| {
        let (watch, mut ev, _) = v5_client(node.addr, "watch", |_| {}).await;
        v5_subscribe(&watch, &mut ev, "w/#", QoS::AtLeastOnce).await;

        // DISCONNECT 0x04: the will is sent although the client disconnected normally.
        let mut raw = CodecClient::connect(node.addr, ProtocolLevel::V5).await;
        let will = |topic: &str, delay| mqtt::LastWill {
            qos: mqtt::QoS::AtLeastOnce,
            retain: false,
            topic: topic.into(),
            message: Bytes::from_static(b"bye"),
            will_delay_interval_sec: delay,
            correlation_data: None,
            message_expiry_interval: None,
            content_type: None,
            user_properties: Vec::new(),
            is_utf8_payload: None,
            response_topic: None,
        };
        let c = Connect {
            client_id: "w1".into(),
            clean_start: true,
            last_will: Some(will("w/1", None)),
            ..Connect::default()
        };
        raw.mqtt_connect(c).await;
        raw.send(Packet::Disconnect(mqtt::Disconnect::new(
            mqtt::DisconnectReasonCode::DisconnectWithWillMessage,
        )))
        .await;
        assert_eq!(ev.next_matching("will w/1", v5_publish).await.topic, "w/1");

        // Will delay 30 s, session expiry 60 s: a reconnect within the delay cancels the will.
        let c = Connect {
            client_id: "w2".into(),
            clean_start: false,
            session_expiry_interval_secs: 60,
            last_will: Some(will("w/2", Some(30))),
            ..Connect::default()
        };
        let raw = node.client(ProtocolLevel::V5, c.clone()).await;
        drop(raw);
        node.wait_offline("w2").await;
        let raw = node
            .client(
                ProtocolLevel::V5,
                Connect {
                    last_will: None,
                    ..c
                },
            )
            .await;
        // Will delay 30 s but session expiry 0: the will goes out when the session ends, i.e. now.
        let c = Connect {
            client_id: "w3".into(),
            clean_start: true,
            last_will: Some(will("w/3", Some(30))),
            ..Connect::default()
        };
        let raw3 = node.client(ProtocolLevel::V5, c).await;
        drop(raw3);
        assert_eq!(ev.next_matching("will w/3", v5_publish).await.topic, "w/3");
        ev.assert_none(Duration::from_millis(200), |e| v5_publish(e).is_some())
            .await;
        drop(raw);
    })
    .await;
}
