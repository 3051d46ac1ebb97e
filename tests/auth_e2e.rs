//! End-to-end tests of authentication and authorization: a real `fleetgate node` whose listener requires PROXY v2
//! from 127.0.0.1 only, behind a real `fleetgate lb` terminating mutual TLS, with clients we did not write
//! (mosquitto_pub, rumqttc) and a raw client for exact reason codes. Certificate identity, client ID binding,
//! ACL allow/deny (including wildcard widening and wildcards in the client ID), wills under the ACL, spoofed PROXY
//! headers, passwords set with `fleetgate passwd`, brute-force bans, hot reload, and no secret in any log line.
//! The README "Security" table lists each bad input tried here and its outcome.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::{BIN, passwd, tls_lb};
use fleetgate_protocol::proxy::PeerIdentity;
use fleetgate_testkit::clients::mosquitto_pub;
use fleetgate_testkit::proxy::{proxy_v2_verify_zero_without_cert, proxy_v2_with_identity};
use fleetgate_testkit::raw::Connect;
use fleetgate_testkit::rumqttc_client::{Events, v3_client, v3_publish, v3_suback};
use fleetgate_testkit::{
    MqttVersion, Node, Pki, Poll, RawClient, Signal, WAIT, assert_no_secrets, bounded, eventually,
    scratch_dir,
};

/// Bound on each whole test.
const TEST_DEADLINE: Duration = Duration::from_secs(120);

const CERT_NODE: &str = "[node]\nname = \"auth-node\"\nshutdown_grace = \"2s\"\n\n\
[[listeners]]\nname = \"lb\"\nbind = \"127.0.0.1:0\"\nproxy_protocol = \"required\"\n\
trusted_proxies = [\"127.0.0.1/32\"]\nproxy_timeout = \"2s\"\n\n\
[admin]\nbind = \"127.0.0.1:0\"\n\n\
[auth]\npolicies = [\"certificate\", \"client_id_from_cert\"]\nclient_id_template = \"{cn}\"\nacl_file = \"acl.toml\"\n";

const CERT_ACL: &str = r#"
[[rules]]
action = "allow"
access = "both"
match = { any_authenticated = true }
topics = ["fleet/%c/#"]

[[rules]]
action = "allow"
access = "subscribe"
match = { cn = "monitor" }
topics = ["fleet/#"]
"#;

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).expect("write a test file");
}

/// rumqttc (3.1.1) over TLS through the LB as `monitor`, subscribed to `fleet/#`.
async fn monitor(lb: SocketAddr, pki: &Pki) -> (rumqttc::AsyncClient, Events<rumqttc::Event>) {
    use rumqttc::{QoS, TlsConfiguration, Transport};
    let cert = pki.client("monitor");
    let tls = pki.client_config(Some(&cert));
    let (client, mut events, _) = v3_client(lb, "monitor", |o| {
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    })
    .await;
    client
        .subscribe("fleet/#", QoS::AtLeastOnce)
        .await
        .expect("queue the monitor SUBSCRIBE");
    let ack = events.next_matching("monitor SUBACK", v3_suback).await;
    let codes = format!("{:?}", ack.return_codes);
    assert!(codes.contains("Success"), "monitor SUBACK {codes}");
    (client, events)
}

/// The payloads the monitor receives until none has come for `quiet` (what must not arrive is part of the check).
async fn seen(monitor: &mut Events<rumqttc::Event>, quiet: Duration) -> Vec<String> {
    monitor
        .collect(quiet, |e| {
            v3_publish(e).map(|p| String::from_utf8_lossy(&p.payload).to_string())
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_through_the_lb_bind_the_client_id_and_the_acl_confines_it() {
    bounded(TEST_DEADLINE, async {
        let pki = Pki::new();
        let dir = scratch_dir();
        write(dir.path(), "acl.toml", CERT_ACL);
        let node = Node::start_in(BIN, dir.path(), CERT_NODE).await;
        let lb = tls_lb(&pki, "optional", node.mqtt).await;
        let (_mon, mut rx) = monitor(lb.mqtt, &pki).await;
        let dev1 = pki.client("dev-1");
        let ca = pki.ca_cert().display().to_string();
        let (cert, key) = (
            dev1.cert.display().to_string(),
            dev1.key.display().to_string(),
        );

        let dev1_publish = |v, topic: &'static str, payload: &'static str| {
            let args = [
                "--cafile", &ca, "--cert", &cert, "--key", &key, "-i", "dev-1", "-q", "1", "-t",
                topic, "-m", payload,
            ];
            let addr = lb.mqtt;
            async move { mosquitto_pub(addr, v, &args).await }
        };

        // mosquitto_pub with the device certificate, both protocol versions: allowed on its own subtree.
        for (v, payload) in [
            (MqttVersion::V5, "allowed-v5"),
            (MqttVersion::V311, "allowed-v3"),
        ] {
            let out = dev1_publish(v, "fleet/dev-1/telemetry", payload).await;
            assert!(out.success(), "{v:?} mosquitto_pub dev-1: {out:?}");
        }
        // ... and another device's subtree is denied (mosquitto does not fail on a PUBACK 0x87; the monitor
        // must not see the message).
        let _ = dev1_publish(MqttVersion::V5, "fleet/dev-2/telemetry", "denied-mosquitto").await;
        let got = seen(&mut rx, Duration::from_millis(700)).await;
        assert!(got.contains(&"allowed-v5".to_string()), "{got:?}");
        assert!(got.contains(&"allowed-v3".to_string()), "{got:?}");
        assert!(!got.contains(&"denied-mosquitto".to_string()), "{got:?}");

        // Exact codes with a raw client, MQTT 5.
        let mut c = RawClient::connect_tls(lb.mqtt, &pki, Some(&dev1)).await;
        assert_eq!(c.mqtt_connect(&Connect::new(5, "dev-1")).await, Some(0x00));
        assert_eq!(c.publish_qos1(1, "fleet/dev-1/a", b"raw-ok").await, 0x00);
        assert_eq!(
            c.publish_qos1(2, "fleet/dev-2/a", b"raw-denied").await,
            0x87
        );
        assert_eq!(c.publish_qos1(3, "fleet", b"raw-denied").await, 0x87);
        assert_eq!(c.subscribe(4, "fleet/dev-1/#").await, 0x01);
        assert_eq!(c.subscribe(5, "fleet/dev-1/+/x").await, 0x01);
        for (i, wide) in [
            "fleet/#",
            "+/+/#",
            "#",
            "fleet/+/telemetry",
            "$share/g/fleet/#",
            "$SYS/#",
        ]
        .iter()
        .enumerate()
        {
            assert_eq!(
                c.subscribe(10 + i as u16, wide).await,
                0x87,
                "v5 SUBSCRIBE {wide}"
            );
        }
        // MQTT 3.1.1: SUBACK failure 0x80; a denied PUBLISH is acknowledged and dropped.
        let mut c3 = RawClient::connect_tls(lb.mqtt, &pki, Some(&dev1)).await;
        assert_eq!(c3.mqtt_connect(&Connect::new(4, "dev-1")).await, Some(0x00));
        assert!(c.closed().await, "the v5 connection was taken over");
        for wide in ["fleet/#", "+/+/#", "#"] {
            assert_eq!(c3.subscribe(20, wide).await, 0x80, "v3 SUBSCRIBE {wide}");
        }
        assert_eq!(c3.subscribe(21, "fleet/dev-1/cmd").await, 0x01);
        let dropped = node
            .admin
            .metric("fleetgate_dropped_messages_total", &[("reason", "acl")])
            .await;
        assert_eq!(
            c3.publish_qos1(22, "fleet/dev-2/a", b"raw-denied-v3").await,
            0x00
        );
        eventually(WAIT, || async {
            let now = node
                .admin
                .metric("fleetgate_dropped_messages_total", &[("reason", "acl")])
                .await;
            (now > dropped).then_some(())
        })
        .await
        .expect("dropped{reason=acl} counted");
        let got = seen(&mut rx, Duration::from_millis(700)).await;
        assert_eq!(
            got,
            vec!["raw-ok".to_string()],
            "only the allowed raw publish arrives"
        );

        // The certificate's CN is the only acceptable client ID.
        for (level, code) in [(5, 0x85), (4, 0x02)] {
            let mut c = RawClient::connect_tls(lb.mqtt, &pki, Some(&dev1)).await;
            assert_eq!(
                c.mqtt_connect(&Connect::new(level, "dev-2")).await,
                Some(code),
                "level {level}"
            );
        }
        // No certificate on a `certificate` listener (the LB's client_auth is optional).
        for (level, code) in [(5, 0x87), (4, 0x05)] {
            let mut c = RawClient::connect_tls(lb.mqtt, &pki, None).await;
            assert_eq!(
                c.mqtt_connect(&Connect::new(level, "dev-1")).await,
                Some(code),
                "level {level}"
            );
        }
        // `+` and `#` in the client ID (and CN) never widen `fleet/%c/#`.
        for id in ["+", "#"] {
            let cert = pki.client(id);
            let mut c = RawClient::connect_tls(lb.mqtt, &pki, Some(&cert)).await;
            assert_eq!(
                c.mqtt_connect(&Connect::new(5, id)).await,
                Some(0x00),
                "client ID {id}"
            );
            for wide in ["fleet/+/#", "fleet/#", "fleet/x/y"] {
                assert_eq!(
                    c.subscribe(30, wide).await,
                    0x87,
                    "client {id} SUBSCRIBE {wide}"
                );
            }
            assert_eq!(
                c.publish_qos1(31, "fleet/x/y", b"wild").await,
                0x87,
                "client {id}"
            );
        }

        // Wills obey the ACL when they are due: denied topic dropped, own topic published.
        let dev9 = pki.client("dev-9");
        for (topic, payload) in [
            ("fleet/dev-2/will", "will-denied"),
            ("fleet/dev-9/will", "will-allowed"),
        ] {
            let mut c = RawClient::connect_tls(lb.mqtt, &pki, Some(&dev9)).await;
            let mut connect = Connect::new(5, "dev-9");
            connect.will = Some((topic, payload.as_bytes()));
            assert_eq!(c.mqtt_connect(&connect).await, Some(0x00));
            drop(c); // no DISCONNECT: the will is due
        }
        let got = seen(&mut rx, Duration::from_millis(1500)).await;
        assert!(got.contains(&"will-allowed".to_string()), "{got:?}");
        assert!(!got.contains(&"will-denied".to_string()), "{got:?}");

        // Events and metrics.
        let failed = node.process.events("auth_failed");
        for reason in ["client_id_mismatch", "certificate_required"] {
            let e = failed
                .iter()
                .find(|e| e["reason"] == reason)
                .unwrap_or_else(|| panic!("no auth_failed {reason}: {failed:?}"));
            assert!(
                e["source"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("127.0.0.1:"),
                "{e}"
            );
        }
        let denied = node.process.events("acl_denied");
        for (topic, access) in [
            ("fleet/dev-2/a", "publish"),
            ("+/+/#", "subscribe"),
            ("fleet/dev-2/will", "will"),
        ] {
            assert!(
                denied.iter().any(|e| e["topic"] == topic
                    && e["access"] == access
                    && e["client_id"].is_string()),
                "no acl_denied {access} {topic}: {denied:?}"
            );
        }
        assert!(
            node.admin
                .metric(
                    "fleetgate_auth_refusals_total",
                    &[("reason", "client_id_mismatch")]
                )
                .await
                >= 2.0
        );
        assert!(
            node.admin
                .metric("fleetgate_acl_denied_total", &[("access", "subscribe")])
                .await
                >= 9.0
        );
        let mut logs = node.process.logs();
        logs.extend(lb.process.logs());
        assert_no_secrets(&logs, &[]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_proxy_headers_give_no_identity() {
    bounded(TEST_DEADLINE, async {
        let dir = scratch_dir();
        write(dir.path(), "acl.toml", CERT_ACL);
        let node = Node::start_in(BIN, dir.path(), CERT_NODE).await;
        let target = node.mqtt;
        let verified = PeerIdentity {
            tls: true,
            cert_presented: true,
            cert_verified: true,
            cn: Some("dev-1".into()),
            ..PeerIdentity::default()
        };
        let header = |identity: &PeerIdentity| {
            proxy_v2_with_identity(
                "198.51.100.7:4000".parse().unwrap(),
                target,
                identity.clone(),
            )
        };
        // From an untrusted address (127.0.0.2; only 127.0.0.1/32 is trusted): closed before any MQTT byte.
        let from: SocketAddr = "127.0.0.2:0".parse().unwrap();
        let mut c = RawClient::connect_from(target, Some(from), &header(&verified)).await;
        assert_eq!(
            c.mqtt_connect(&Connect::new(5, "dev-1")).await,
            None,
            "no CONNACK for a spoofer"
        );
        node.process
            .wait_for_log(WAIT, "proxy_rejected", |v| v["event"] == "proxy_rejected")
            .await;

        // From the trusted address, a header claiming verify == 0 and a CN but no CERT_CONN/CERT_SESS flag:
        // no identity, so the `certificate` policy refuses.
        for (level, code) in [(5, 0x87), (4, 0x05)] {
            let spoof = proxy_v2_verify_zero_without_cert(
                "198.51.100.7:4000".parse().unwrap(),
                target,
                "dev-1",
            );
            let mut c = RawClient::connect_from(target, None, &spoof).await;
            assert_eq!(
                c.mqtt_connect(&Connect::new(level, "dev-1")).await,
                Some(code),
                "level {level}"
            );
        }
        // Control: the same CN with the flags set, from the trusted address, is accepted.
        let mut c = RawClient::connect_from(target, None, &header(&verified)).await;
        assert_eq!(c.mqtt_connect(&Connect::new(5, "dev-1")).await, Some(0x00));

        // The node logs the refusal as it sends the CONNACK; the line reaches our log reader a moment later.
        node.process
            .wait_for_log(WAIT, "auth_failed certificate_required", |e| {
                e["event"] == "auth_failed"
                    && e["reason"] == "certificate_required"
                    && e["source"] == "198.51.100.7:4000"
            })
            .await;
        assert_no_secrets(&node.process.logs(), &[]);
    })
    .await;
}

const PW_ALICE: &str = "s3cret-Alice-pw";
const PW_ALICE_NEW: &str = "n3w-Alice-pw-2";
const PW_WRONG: &str = "wr0ng-Guess-pw";

const PW_NODE: &str = "[node]\nname = \"pw-node\"\nshutdown_grace = \"2s\"\n\n\
[[listeners]]\nname = \"internal\"\nbind = \"127.0.0.1:0\"\n\n\
[admin]\nbind = \"127.0.0.1:0\"\n\n\
[auth]\npolicies = [\"certificate\"]\npassword_file = \"passwd\"\nacl_file = \"acl.toml\"\n\n\
[auth.brute_force]\nmax_failures = 3\nwindow = \"60s\"\nban = \"3s\"\n\n\
[auth.listeners.internal]\npolicies = [\"password\"]\n";

const PW_ACL: &str = r#"
[[rules]]
action = "allow"
access = "both"
match = { username = "alice" }
topics = ["ops/%u/#"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_bans_and_hot_reload() {
    bounded(TEST_DEADLINE, async {
        let dir = scratch_dir();
        let file = dir.path().join("passwd");
        let out = passwd(&file, "alice", PW_ALICE).await;
        assert_eq!(out.code, Some(0), "fleetgate passwd: {out:?}");
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with("alice:$argon2id$"), "{text}");
        assert!(!text.contains(PW_ALICE));
        write(dir.path(), "acl.toml", PW_ACL);
        let node = Node::start_in(BIN, dir.path(), PW_NODE).await;
        let addr = node.mqtt;
        let login = |level: u8, id: &'static str, user: &'static str, pw: &'static str| async move {
            let mut c = RawClient::connect_from(addr, None, &[]).await;
            let mut connect = Connect::new(level, id);
            connect.credentials = Some((user, pw));
            let code = c.mqtt_connect(&connect).await;
            (c, code)
        };

        // mosquitto_pub with the password: accepted, both versions.
        for v in [MqttVersion::V5, MqttVersion::V311] {
            let out = mosquitto_pub(
                addr,
                v,
                &[
                    "-i",
                    "ops-1",
                    "-u",
                    "alice",
                    "-P",
                    PW_ALICE,
                    "-t",
                    "ops/alice/x",
                    "-m",
                    "hi",
                    "-q",
                    "1",
                ],
            )
            .await;
            assert!(out.success(), "{v:?} password accepted: {out:?}");
        }
        // Wrong password, unknown user, no password at all.
        assert_eq!(login(5, "a", "alice", PW_WRONG).await.1, Some(0x86));
        assert_eq!(login(4, "a", "alice", PW_WRONG).await.1, Some(0x04));
        // A good login in between resets the failure count (3 in a row ban).
        let (mut c, code) = login(5, "ops-live", "alice", PW_ALICE).await;
        assert_eq!(code, Some(0x00));
        assert_eq!(c.publish_qos1(1, "ops/alice/x", b"1").await, 0x00);
        assert_eq!(c.publish_qos1(2, "ops/bob/x", b"1").await, 0x87);

        // Hot reload of the ACL: a broken file keeps the old ACL (error located, counted); a valid one applies to
        // the live connection.
        let errors = node
            .admin
            .metric("fleetgate_config_reloads_total", &[("result", "error")])
            .await;
        write(
            dir.path(),
            "acl.toml",
            "[[rules]]\naction = \"allow\"\naccess = \"bogus\"\n",
        );
        let e = node
            .process
            .wait_for_log(WAIT, "config_reload error", |v| {
                v["event"] == "config_reload" && v["result"] == "error"
            })
            .await;
        assert!(
            e["error"]
                .as_str()
                .unwrap_or_default()
                .contains("acl.toml:"),
            "{e}"
        );
        assert!(
            node.admin
                .metric("fleetgate_config_reloads_total", &[("result", "error")])
                .await
                > errors
        );
        assert_eq!(
            c.publish_qos1(3, "ops/alice/x", b"1").await,
            0x00,
            "old ACL kept"
        );
        write(
            dir.path(),
            "acl.toml",
            &PW_ACL.replace("ops/%u/#", "ops/%u/read-only"),
        );
        // Polled with a deadline ticker rather than `eventually`: the check needs the live connection mutably.
        let mut poll = Poll::new(WAIT);
        let mut packet_id = 10;
        loop {
            packet_id += 1;
            if c.publish_qos1(packet_id, "ops/alice/x", b"1").await == 0x87 {
                break;
            }
            poll.tick()
                .await
                .expect("the reloaded ACL applies to the live connection");
        }

        // SIGHUP reloads too.
        let ok = node
            .admin
            .metric("fleetgate_config_reloads_total", &[("result", "ok")])
            .await;
        node.process.signal(Signal::HUP);
        eventually(WAIT, || async {
            (node
                .admin
                .metric("fleetgate_config_reloads_total", &[("result", "ok")])
                .await
                > ok)
                .then_some(())
        })
        .await
        .expect("SIGHUP reload counted");

        // `fleetgate passwd` changes the password; the node picks up the file by itself.
        let out = passwd(&file, "alice", PW_ALICE_NEW).await;
        assert_eq!(out.code, Some(0), "{out:?}");
        eventually(WAIT, || async {
            (login(5, "ops-2", "alice", PW_ALICE_NEW).await.1 == Some(0)).then_some(())
        })
        .await
        .expect("the new password works after the file changed");

        // Brute force: 3 failures from one address ban it; then even the right password is refused.
        for (level, user, password, code, what) in [
            (5, "alice", PW_ALICE, 0x86, "old password"),
            (5, "mallory", PW_WRONG, 0x86, "unknown user"),
            (4, "alice", PW_WRONG, 0x04, "wrong password"),
            (5, "alice", PW_ALICE_NEW, 0x8A, "banned v5"),
            (4, "alice", PW_ALICE_NEW, 0x05, "banned v3"),
        ] {
            let code_seen = login(level, "a", user, password).await.1;
            assert_eq!(code_seen, Some(code), "{what}");
        }
        node.process
            .wait_for_log(WAIT, "auth_ban", |v| v["event"] == "auth_ban")
            .await;
        assert!(node.admin.metric("fleetgate_auth_bans_total", &[]).await >= 1.0);
        eventually(WAIT, || async {
            (login(5, "ops-3", "alice", PW_ALICE_NEW).await.1 == Some(0)).then_some(())
        })
        .await
        .expect("the ban ends");
        assert!(
            node.admin
                .metric("fleetgate_auth_refusals_total", &[("reason", "banned")])
                .await
                >= 2.0
        );

        // No password, hash or certificate in any log line of this test.
        assert_no_secrets(&node.process.logs(), &[PW_ALICE, PW_ALICE_NEW, PW_WRONG]);
    })
    .await;
}
