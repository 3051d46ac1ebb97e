//! In-process tests of the MQTT core with an independent client (rumqttc, v3.1.1): publish/subscribe at each
//! QoS, retained messages, wills, persistent sessions, takeover, shared subscriptions.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use fleetgate_config::node::LimitsConfig;
use fleetgate_testkit::rumqttc_client::{v3_client, v3_publish, v3_subscribe};
use rumqttc::{LastWill, QoS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_subscribe_each_qos() {
    with_node(LimitsConfig::default(), async |node| {
        let (sub, mut sub_ev, _) = v3_client(node.addr, "sub", |_| {}).await;
        v3_subscribe(&sub, &mut sub_ev, "sensors/+/temp", QoS::ExactlyOnce).await;
        let (publ, mut pub_ev, _) = v3_client(node.addr, "pub", |_| {}).await;
        for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
            .into_iter()
            .enumerate()
        {
            publ.publish(format!("sensors/{i}/temp"), qos, false, vec![i as u8; 3])
                .await
                .unwrap();
            let p = sub_ev.next_matching("PUBLISH", v3_publish).await;
            assert_eq!(p.topic, format!("sensors/{i}/temp"));
            assert_eq!(p.qos, qos);
            assert_eq!(&p.payload[..], &[i as u8; 3]);
            assert!(!p.retain);
        }
        // The publisher's QoS 2 flow completes (PUBCOMP).
        pub_ev
            .next_matching("PUBCOMP", |e| {
                matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::PubComp(_))).then_some(())
            })
            .await;
        // Not matching: another level, and `$` topics for a leading wildcard.
        v3_subscribe(&sub, &mut sub_ev, "#", QoS::AtMostOnce).await;
        publ.publish("$SYS/x", QoS::AtMostOnce, false, "no")
            .await
            .unwrap();
        publ.publish("other", QoS::AtMostOnce, false, "yes")
            .await
            .unwrap();
        let p = sub_ev.next_matching("PUBLISH", v3_publish).await;
        assert_eq!(p.topic, "other");
        let info = node.handle().broker().client_info("sub").unwrap();
        assert!(info.connected);
        assert_eq!(info.subscriptions, 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_set_get_delete() {
    with_node(LimitsConfig::default(), async |node| {
        let (publ, _pe, _) = v3_client(node.addr, "pub", |_| {}).await;
        publ.publish("state/a", QoS::AtLeastOnce, true, "on")
            .await
            .unwrap();
        node.wait_retained(true).await;
        let (sub, mut ev, _) = v3_client(node.addr, "sub", |_| {}).await;
        sub.subscribe("state/#", QoS::AtLeastOnce).await.unwrap();
        let p = ev.next_matching("retained PUBLISH", v3_publish).await;
        assert_eq!(
            (p.topic.as_str(), &p.payload[..], p.retain),
            ("state/a", &b"on"[..], true)
        );
        // A live message is forwarded with retain = 0 (retain-as-published is off for v3).
        publ.publish("state/a", QoS::AtLeastOnce, true, "off")
            .await
            .unwrap();
        let p = ev.next_matching("live PUBLISH", v3_publish).await;
        assert_eq!((&p.payload[..], p.retain), (&b"off"[..], false));
        // Empty payload deletes.
        publ.publish("state/a", QoS::AtLeastOnce, true, "")
            .await
            .unwrap();
        ev.next_matching("delete PUBLISH", v3_publish).await;
        node.wait_retained(false).await;
        let (sub2, mut ev2, _) = v3_client(node.addr, "sub2", |_| {}).await;
        v3_subscribe(&sub2, &mut ev2, "state/#", QoS::AtLeastOnce).await;
        ev2.assert_none(Duration::from_millis(200), |e| v3_publish(e).is_some())
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_on_ungraceful_close_not_on_disconnect() {
    with_node(LimitsConfig::default(), async |node| {
        let (sub, mut ev, _) = v3_client(node.addr, "watcher", |_| {}).await;
        v3_subscribe(&sub, &mut ev, "wills/#", QoS::AtLeastOnce).await;

        // Graceful DISCONNECT: no will.
        let (polite, _pe, _) = v3_client(node.addr, "polite", |o| {
            o.set_last_will(LastWill::new(
                "wills/polite",
                "gone",
                QoS::AtLeastOnce,
                false,
            ));
        })
        .await;
        polite.disconnect().await.unwrap();
        node.eventually("polite gone", |h| {
            h.broker().client_info("polite").is_none()
        })
        .await;

        // Socket dropped without DISCONNECT: the will is published.
        let (rude, rude_ev, _) = v3_client(node.addr, "rude", |o| {
            o.set_last_will(LastWill::new("wills/rude", "gone", QoS::AtLeastOnce, false));
        })
        .await;
        rude_ev.kill();
        drop(rude);
        let p = ev.next_matching("will", v3_publish).await;
        assert_eq!(p.topic, "wills/rude");
        assert_eq!(&p.payload[..], b"gone");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_queues_and_redelivers() {
    with_node(LimitsConfig::default(), async |node| {
        let (sub, mut ev, _) = v3_client(node.addr, "durable", persistent).await;
        v3_subscribe(&sub, &mut ev, "jobs/#", QoS::AtLeastOnce).await;
        sub.disconnect().await.unwrap();
        node.wait_offline("durable").await;

        let (publ, _pe, _) = v3_client(node.addr, "pub", |_| {}).await;
        for i in 0..3 {
            publ.publish("jobs/x", QoS::AtLeastOnce, false, format!("{i}"))
                .await
                .unwrap();
        }
        publ.publish("jobs/x", QoS::AtMostOnce, false, "qos0-dropped")
            .await
            .unwrap();
        node.eventually("3 queued", |h| {
            h.broker()
                .client_info("durable")
                .is_some_and(|i| i.queued == 3)
        })
        .await;

        let (_sub, mut ev, _) = v3_client(node.addr, "durable", persistent).await;
        for i in 0..3 {
            let p = ev.next_matching("queued PUBLISH", v3_publish).await;
            assert_eq!(&p.payload[..], format!("{i}").as_bytes());
        }
        ev.assert_none(Duration::from_millis(200), |e| v3_publish(e).is_some())
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_messages_are_resent_with_dup() {
    with_node(LimitsConfig::default(), async |node| {
        let opts = |o: &mut rumqttc::MqttOptions| {
            o.set_clean_session(false);
            o.set_manual_acks(true);
        };
        let (sub, mut ev, _) = v3_client(node.addr, "slow", opts).await;
        v3_subscribe(&sub, &mut ev, "q", QoS::AtLeastOnce).await;
        let (publ, _pe, _) = v3_client(node.addr, "pub", |_| {}).await;
        publ.publish("q", QoS::AtLeastOnce, false, "m")
            .await
            .unwrap();
        let first = ev.next_matching("PUBLISH", v3_publish).await;
        assert!(!first.dup);
        // Never acked; the client goes away and comes back.
        ev.kill();
        drop(sub);
        node.wait_offline("slow").await;
        let (sub, mut ev, _) = v3_client(node.addr, "slow", opts).await;
        let again = ev.next_matching("resent PUBLISH", v3_publish).await;
        assert!(again.dup);
        assert_eq!(again.pkid, first.pkid);
        sub.ack(&again).await.unwrap();
        node.eventually("acked", |h| {
            h.broker()
                .client_info("slow")
                .is_some_and(|i| i.inflight == 0)
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_kicks_the_old_connection() {
    with_node(LimitsConfig::default(), async |node| {
        let (first, mut first_ev, _) = v3_client(node.addr, "dup", persistent).await;
        v3_subscribe(&first, &mut first_ev, "t", QoS::AtLeastOnce).await;
        let (_second, mut second_ev, _) = v3_client(node.addr, "dup", persistent).await;
        first_ev.error().await;
        // The subscription came along with the session.
        let (publ, _pe, _) = v3_client(node.addr, "pub", |_| {}).await;
        publ.publish("t", QoS::AtLeastOnce, false, "x")
            .await
            .unwrap();
        second_ev
            .next_matching("PUBLISH on the new connection", v3_publish)
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_round_robin() {
    with_node(LimitsConfig::default(), async |node| {
        let (a, mut a_ev, _) = v3_client(node.addr, "a", |_| {}).await;
        let (b, mut b_ev, _) = v3_client(node.addr, "b", |_| {}).await;
        for (client, events) in [(&a, &mut a_ev), (&b, &mut b_ev)] {
            v3_subscribe(client, events, "$share/workers/job/+", QoS::AtLeastOnce).await;
        }
        let (publ, _pe, _) = v3_client(node.addr, "pub", |_| {}).await;
        for i in 0..4 {
            publ.publish(format!("job/{i}"), QoS::AtLeastOnce, false, "w")
                .await
                .unwrap();
        }
        for _ in 0..2 {
            a_ev.next_matching("a's share", v3_publish).await;
            b_ev.next_matching("b's share", v3_publish).await;
        }
        a_ev.assert_none(Duration::from_millis(200), |e| v3_publish(e).is_some())
            .await;
        b_ev.assert_none(Duration::from_millis(10), |e| v3_publish(e).is_some())
            .await;
    })
    .await;
}
