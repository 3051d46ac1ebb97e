//! [`Codec::encode_plain_publish`] writes exactly what the packet encoder writes for the same PUBLISH, and
//! refuses what it refuses.

use std::num::NonZeroU16;

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Encoder;

use super::corpus_tests::{ALL_LEVELS, connected_server};
use super::*;

#[test]
fn plain_publish_matches_the_packet_encoder() {
    let topics = ["t", "a/b/c", &"x".repeat(300)];
    let payloads = [0usize, 1, 64, 127, 128, 16_383, 16_384, 70_000];
    for level in ALL_LEVELS {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            for (retain, dup) in [(false, false), (true, false), (false, true), (true, true)] {
                for topic in topics {
                    for len in payloads {
                        let payload = vec![0xA5u8; len];
                        let packet_id =
                            (qos != QoS::AtMostOnce).then(|| NonZeroU16::new(513).unwrap());
                        let mut fast = BytesMut::from(&b"prefix"[..]);
                        connected_server(level)
                            .encode_plain_publish(
                                PlainPublish {
                                    topic,
                                    payload: &payload,
                                    qos,
                                    retain,
                                    dup,
                                    packet_id,
                                },
                                &mut fast,
                            )
                            .unwrap();
                        let mut slow = BytesMut::from(&b"prefix"[..]);
                        let publish = Publish {
                            dup,
                            retain,
                            qos,
                            topic: topic.into(),
                            packet_id,
                            payload: Bytes::from(payload.clone()),
                            properties: None,
                        };
                        connected_server(level)
                            .encode(Packet::Publish(Box::new(publish)), &mut slow)
                            .unwrap();
                        assert_eq!(
                            fast,
                            slow,
                            "{level:?} {qos:?} retain {retain} dup {dup} topic {} payload {len}",
                            topic.len()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn plain_publish_refuses_what_does_not_fit_and_writes_nothing() {
    for level in ALL_LEVELS {
        let mut codec = connected_server(level);
        codec.set_outbound_max(Some(100));
        let p = |len: usize| vec![0u8; len];
        let mut out = BytesMut::new();
        // 2 + 1 topic + (1 property length in v5) + payload + 2 header bytes.
        let fits = 100 - 2 - 3 - usize::from(level.is_v5());
        fn publish(payload: &[u8]) -> PlainPublish<'_> {
            PlainPublish {
                topic: "t",
                payload,
                qos: QoS::AtMostOnce,
                retain: false,
                dup: false,
                packet_id: None,
            }
        }
        codec
            .encode_plain_publish(publish(&p(fits)), &mut out)
            .unwrap();
        assert_eq!(out.len(), 100, "{level:?}");
        out.clear();
        assert_eq!(
            codec.encode_plain_publish(publish(&p(fits + 1)), &mut out),
            Err(CodecError::OutboundTooLarge)
        );
        assert!(out.is_empty());
        let no_id = PlainPublish {
            qos: QoS::AtLeastOnce,
            ..publish(b"x")
        };
        assert_eq!(
            codec.encode_plain_publish(no_id, &mut out),
            Err(CodecError::EncodeFailed)
        );
        assert!(out.is_empty());
    }
    let mut unknown = Codec::new(1024);
    let mut out = BytesMut::new();
    let publish = PlainPublish {
        topic: "t",
        payload: b"x",
        qos: QoS::AtMostOnce,
        retain: false,
        dup: false,
        packet_id: None,
    };
    assert_eq!(
        unknown.encode_plain_publish(publish, &mut out),
        Err(CodecError::NoProtocolLevel)
    );
}

#[test]
#[ignore = "timing, by hand"]
fn plain_publish_timing() {
    let mut fast_codec = connected_server(ProtocolLevel::V5);
    let mut slow_codec = connected_server(ProtocolLevel::V5);
    let topic: ByteString = "fgb/run/pair/7".into();
    let payload = Bytes::from(vec![0u8; 64]);
    let mut out = BytesMut::with_capacity(1 << 20);
    let n = 1_000_000;
    let t = std::time::Instant::now();
    for _ in 0..n {
        fast_codec
            .encode_plain_publish(
                PlainPublish {
                    topic: &topic,
                    payload: &payload,
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    dup: false,
                    packet_id: NonZeroU16::new(9),
                },
                &mut out,
            )
            .unwrap();
        out.clear();
    }
    let fast = t.elapsed();
    let t = std::time::Instant::now();
    for _ in 0..n {
        let publish = Publish {
            dup: false,
            retain: false,
            qos: QoS::AtLeastOnce,
            topic: topic.clone(),
            packet_id: NonZeroU16::new(9),
            payload: payload.clone(),
            properties: None,
        };
        slow_codec
            .encode(Packet::Publish(Box::new(publish)), &mut out)
            .unwrap();
        out.clear();
    }
    let slow = t.elapsed();
    eprintln!(
        "plain {:.0} ns, packet {:.0} ns per PUBLISH",
        fast.as_nanos() as f64 / n as f64,
        slow.as_nanos() as f64 / n as f64
    );
}
