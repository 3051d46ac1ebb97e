//! Round trips and malformed input for the cluster wire format ([`super`]).

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use fleetgate_protocol::mqtt::{PublishProperties, RetainHandling};

use super::*;

fn msg() -> Arc<Message> {
    Arc::new(Message {
        topic: "a/b".into(),
        payload: Bytes::from_static(b"hello"),
        qos: QoS::ExactlyOnce,
        retain: true,
        properties: Some(Box::new(PublishProperties {
            correlation_data: Some(Bytes::from_static(b"c")),
            content_type: Some("text/plain".into()),
            response_topic: Some("r".into()),
            user_properties: vec![("k".into(), "v".into())],
            is_utf8_payload: true,
            message_expiry_interval: NonZeroU32::new(60),
            ..PublishProperties::default()
        })),
        expires_at: Some(Instant::now() + Duration::from_secs(60)),
        origin: 7,
    })
}

fn round_trip(f: &Frame) -> Frame {
    let mut buf = BytesMut::new();
    f.encode(&mut buf);
    f.encode(&mut buf);
    let a = Frame::decode(&mut buf, 1 << 20).unwrap().unwrap();
    let b = Frame::decode(&mut buf, 1 << 20).unwrap().unwrap();
    assert!(buf.is_empty());
    assert_eq!(format!("{a:?}").len(), format!("{b:?}").len());
    a
}

/// One frame of each type (and both kinds of TakeoverReply).
fn one_of_each() -> Vec<Frame> {
    vec![
        Frame::Hello {
            version: PROTOCOL_VERSION,
            name: "broker-0".into(),
            advertise: "127.0.0.1:7001".parse().unwrap(),
            incarnation: 42,
            resume: Some(Watermarks {
                routes: 1,
                claims: 2,
                retained: 3,
            }),
        },
        Frame::Heartbeat,
        Frame::RouteAdd {
            filter: "$share/g/a/#".into(),
            seq: 4,
        },
        Frame::RouteRemove {
            filter: "a/+".into(),
            seq: 5,
        },
        Frame::Claim {
            client_id: "c".into(),
            held: true,
            seq: 6,
        },
        Frame::SyncDone {
            upto: Watermarks {
                routes: 7,
                claims: 8,
                retained: 9,
            },
        },
        Frame::Publish {
            direct: true,
            groups: vec!["$share/g/a/#".into()],
            sessions: vec!["moved-client".into()],
            msg: msg(),
        },
        Frame::Retain {
            stamp: Stamp {
                time: 5,
                node: "n".into(),
            },
            topic: "t".into(),
            msg: None,
            seq: 10,
        },
        Frame::TakeoverRequest {
            req: 9,
            client_id: "c".into(),
            clean_start: false,
            claimant: Claimant {
                principal: HandoffPrincipal {
                    username: Some("alice".into()),
                    cn: Some("laptop".into()),
                    client_id: "c".into(),
                    method: fleetgate_auth::AuthMethod::Password,
                },
                binding: fleetgate_auth::ClientIdBinding::Prefix,
            },
        },
        Frame::TakeoverReply {
            req: 9,
            moved_to: Some("broker-2".into()),
            refused: false,
        },
        Frame::SessionBegin {
            req: 0,
            client_id: "c".into(),
            expiry_secs: 3600,
            protocol: 5,
            next_packet_id: 17,
            inbound_qos2: vec![3, 4],
            will: Some((msg(), 10)),
            principal: Some(HandoffPrincipal {
                username: Some("u".into()),
                cn: None,
                client_id: "c".into(),
                method: fleetgate_auth::AuthMethod::CertificateAndPassword,
            }),
        },
        Frame::SessionSub {
            req: 1,
            filter: "x/#".into(),
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::NoAtSubscribe,
            },
            id: NonZeroU32::new(12),
        },
        Frame::SessionMsg {
            req: 1,
            kind: SlotKind::Released,
            packet_id: 5,
            qos: QoS::ExactlyOnce,
            retain: false,
            sub_ids: vec![NonZeroU32::MIN],
            msg: msg(),
        },
        Frame::SessionEnd { req: 1 },
        Frame::SessionInstalled("c".into()),
        Frame::SessionArrived("c".into()),
        Frame::Leaving,
        Frame::Barrier(3),
        Frame::BarrierAck(3),
        Frame::SyncBegin { full: true },
        Frame::Ack(Watermarks::default()),
        Frame::Progress(Watermarks {
            routes: 1,
            claims: 2,
            retained: 3,
        }),
        Frame::TakeoverReply {
            req: 10,
            moved_to: None,
            refused: true,
        },
    ]
}

#[test]
fn every_frame_round_trips() {
    let frames = one_of_each();
    for f in &frames {
        let back = round_trip(f);
        let (a, b) = (format!("{f:?}"), format!("{back:?}"));
        // Instants are recomputed on decode; compare everything else.
        let strip = |s: &str| s.split("expires_at").next().unwrap_or("").to_string();
        assert_eq!(strip(&a), strip(&b));
    }
    let Frame::Publish { msg: m, .. } = round_trip(&frames[6]) else {
        panic!()
    };
    assert_eq!(m.origin, 0, "origin is node-local");
    let left = m
        .expires_at
        .unwrap()
        .saturating_duration_since(Instant::now());
    assert!(left > Duration::from_secs(55) && left <= Duration::from_secs(60));
    let Frame::SessionSub { options, .. } = round_trip(&frames[11]) else {
        panic!()
    };
    assert!(options.no_local && options.retain_as_published);
    // The fuzz target's entry takes them all off one buffer, validates and round-trips each.
    let mut all = BytesMut::new();
    for f in &frames {
        f.encode(&mut all);
    }
    assert_eq!(fuzzing::decode_cluster_frame(&all), Ok(frames.len()));
    all.truncate(all.len() - 1);
    assert_eq!(fuzzing::decode_cluster_frame(&all), Ok(frames.len() - 1));
    assert!(fuzzing::decode_cluster_frame(&[0, 0, 0, 1, 0xEE]).is_err());
}

/// The fuzz target's committed seeds (`fuzz/seeds/cluster_frame`, recorded from two nodes by
/// `fuzz/seeds/capture.py`) are frames of the current protocol, and among them is a frame of every type: refresh
/// them (`fuzz/seeds/capture.py target/debug/fleetgate cluster_frame`) after a wire change.
#[test]
fn fuzz_seeds_are_current_and_hold_every_frame_type() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/cluster_frame");
    let max_len =
        fleetgate_config::node::LimitsConfig::default().max_packet_size as usize + FRAME_OVERHEAD;
    let mut seen = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let mut buf = BytesMut::from(&std::fs::read(&path).unwrap()[..]);
        while !buf.is_empty() {
            let kind = buf.get(LEN_PREFIX).copied();
            match Frame::decode(&mut buf, max_len) {
                Ok(Some(Frame::Hello { version, .. })) => {
                    assert_eq!(
                        version,
                        PROTOCOL_VERSION,
                        "{}: a Hello of another protocol",
                        path.display()
                    )
                }
                Ok(Some(_)) => {}
                other => panic!("{}: {other:?}", path.display()),
            }
            seen.extend(kind);
        }
    }
    for f in one_of_each() {
        let mut encoded = BytesMut::new();
        f.encode(&mut encoded);
        assert!(
            seen.contains(&encoded[LEN_PREFIX]),
            "no seed holds a frame like {f:?}"
        );
    }
}

#[test]
fn partial_oversized_and_malformed() {
    let mut buf = BytesMut::new();
    Frame::Barrier(1).encode(&mut buf);
    let mut head = buf.split_to(6);
    assert!(Frame::decode(&mut head, 100).unwrap().is_none());
    head.unsplit(buf);
    assert!(matches!(
        Frame::decode(&mut head, 100),
        Ok(Some(Frame::Barrier(1)))
    ));

    let mut big = BytesMut::from(&[0u8, 1, 0, 0][..]);
    assert!(matches!(
        Frame::decode(&mut big, 1000),
        Err(FrameError::TooLarge)
    ));
    let mut unknown = BytesMut::from(&[0u8, 0, 0, 1, 0x7f][..]);
    assert!(matches!(
        Frame::decode(&mut unknown, 1000),
        Err(FrameError::UnknownType(0x7f))
    ));
    let mut expiry = BytesMut::new();
    Frame::Publish {
        direct: true,
        groups: Vec::new(),
        sessions: Vec::new(),
        msg: msg(),
    }
    .encode(&mut expiry);
    // The message's remaining expiry (u64 ms) sits after the 4-byte length, type, direct, two empty lists and
    // the topic, QoS and retain: set it to u64::MAX, which no Instant can hold.
    let at = 4 + 1 + 1 + 2 + 2 + 2 + 3 + 1 + 1;
    expiry[at..at + 8].copy_from_slice(&u64::MAX.to_be_bytes());
    assert!(matches!(
        Frame::decode(&mut expiry, 1 << 20),
        Err(FrameError::Malformed("message expiry"))
    ));
    let mut truncated = BytesMut::from(&[0u8, 0, 0, 3, ty::ROUTE_ADD, 0, 9][..]);
    assert!(matches!(
        Frame::decode(&mut truncated, 1000),
        Err(FrameError::Malformed(_))
    ));
    let mut trailing = BytesMut::from(&[0u8, 0, 0, 2, ty::HEARTBEAT, 0][..]);
    assert!(matches!(
        Frame::decode(&mut trailing, 1000),
        Err(FrameError::Malformed("trailing bytes"))
    ));
}

#[test]
fn publish_from_parts_decodes_like_the_frame() {
    let m = msg();
    let groups: Vec<ByteString> = vec!["$share/g/a/#".into()];
    let sessions: Vec<ByteString> = vec!["moved".into()];
    let encoded = encode_message(&m);
    let mut buf = BytesMut::new();
    encode_publish(&mut buf, true, &groups, &sessions, PublishBody::Message(&m));
    encode_publish(&mut buf, false, &[], &[], PublishBody::Encoded(&encoded));
    for (direct, g, s) in [(true, 1, 1), (false, 0, 0)] {
        let Some(Frame::Publish {
            direct: d,
            groups,
            sessions,
            msg: back,
        }) = Frame::decode(&mut buf, 1 << 20).unwrap()
        else {
            panic!("not a publish")
        };
        assert_eq!((d, groups.len(), sessions.len()), (direct, g, s));
        assert_eq!(
            (&back.topic, &back.payload, back.qos, back.retain),
            (&m.topic, &m.payload, m.qos, m.retain)
        );
        assert_eq!(back.properties, m.properties);
    }
    assert!(buf.is_empty());
}
