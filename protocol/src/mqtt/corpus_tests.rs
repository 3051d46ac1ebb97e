//! Valid-packet corpus for the codec (every packet type in 3.1, 3.1.1 and 5.0, hand-written bytes): every strict
//! prefix is incomplete, the full packet decodes, and packets encode→decode round-trip in both versions.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use super::*;

/// Inbound limit used by the tests.
pub(super) const TEST_MAX: u32 = 64 * 1024;

/// Encodes a Variable Byte Integer (with the shared [`encode_varint`]).
pub(super) fn varint(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    encode_varint(n, &mut out).unwrap();
    out
}

/// Fixed header + body.
pub(super) fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    out.extend(varint(body.len()));
    out.extend_from_slice(body);
    out
}

/// Concatenation of byte pieces.
pub(super) fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A v5 property block: length prefix + the given properties.
pub(super) fn props(parts: &[&[u8]]) -> Vec<u8> {
    let body = parts.concat();
    let mut out = varint(body.len());
    out.extend(body);
    out
}

/// A length-prefixed string/binary field.
pub(super) fn s(v: &[u8]) -> Vec<u8> {
    let mut out = (v.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(v);
    out
}

/// A minimal valid CONNECT for the level.
pub(super) fn connect_bytes(level: ProtocolLevel) -> Vec<u8> {
    let body = match level {
        ProtocolLevel::V31 => cat(&[&s(b"MQIsdp"), &[3, 0x02, 0, 60], &s(b"c31")]),
        ProtocolLevel::V311 => cat(&[&s(b"MQTT"), &[4, 0x02, 0, 60], &s(b"c311")]),
        ProtocolLevel::V5 => cat(&[&s(b"MQTT"), &[5, 0x02, 0, 60, 0], &s(b"c5")]),
    };
    frame(0x10, &body)
}

/// Decodes everything in `bytes`; stops at the first error.
pub(super) fn decode_all(codec: &mut Codec, bytes: &[u8]) -> Result<Vec<Packet>, CodecError> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(p) = codec.decode(&mut buf)? {
        out.push(p);
    }
    Ok(out)
}

/// A server codec that has accepted a CONNECT of `level`.
pub(super) fn connected_server(level: ProtocolLevel) -> Codec {
    let mut codec = Codec::new(TEST_MAX);
    let packets = decode_all(&mut codec, &connect_bytes(level)).unwrap();
    assert!(matches!(packets.as_slice(), [Packet::Connect(_)]));
    assert_eq!(codec.protocol_level(), Some(level));
    codec
}

pub(super) const V3_LEVELS: [ProtocolLevel; 2] = [ProtocolLevel::V31, ProtocolLevel::V311];
pub(super) const ALL_LEVELS: [ProtocolLevel; 3] =
    [ProtocolLevel::V31, ProtocolLevel::V311, ProtocolLevel::V5];

/// Direction of a corpus packet.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Dir {
    /// Client → server (decoded by a server codec).
    ToServer,
    /// Server → client (decoded by a client codec; encoded by the server codec).
    ToClient,
    /// Both directions (PUBLISH, acks).
    Both,
}

/// The CONNECT packets (decoded by a fresh server codec).
pub(super) fn connect_corpus() -> Vec<(&'static str, ProtocolLevel, Vec<u8>)> {
    let v3_full = |name: &[u8], level: u8| {
        // username + password + will (QoS 1, retain) + clean session
        let flags = 0x80 | 0x40 | 0x20 | 0x08 | 0x04 | 0x02;
        frame(
            0x10,
            &cat(&[
                &s(name),
                &[level, flags, 0, 60],
                &s(b"cid"),
                &s(b"w/t"),
                &s(b"bye"),
                &s(b"user"),
                &s(b"pass"),
            ]),
        )
    };
    let v5_props = props(&[
        &[0x11, 0, 0, 0, 120],
        &[0x21, 0, 16],
        &[0x27, 0, 0, 0x10, 0],
        &[0x22, 0, 10],
        &[0x19, 1],
        &[0x17, 0],
        &cat(&[&[0x26], &s(b"k"), &s(b"v")]),
        &cat(&[&[0x26], &s(b"k"), &s(b"v2")]),
        &cat(&[&[0x15], &s(b"SCRAM")]),
        &cat(&[&[0x16], &s(&[1, 2, 3])]),
    ]);
    let will_props = props(&[
        &[0x18, 0, 0, 0, 5],
        &[0x01, 1],
        &[0x02, 0, 0, 0, 60],
        &cat(&[&[0x03], &s(b"text/plain")]),
        &cat(&[&[0x08], &s(b"resp/t")]),
        &cat(&[&[0x09], &s(&[0xAB])]),
        &cat(&[&[0x26], &s(b"a"), &s(b"b")]),
    ]);
    vec![
        (
            "v31 minimal",
            ProtocolLevel::V31,
            connect_bytes(ProtocolLevel::V31),
        ),
        ("v31 full", ProtocolLevel::V31, v3_full(b"MQIsdp", 3)),
        (
            "v311 minimal",
            ProtocolLevel::V311,
            connect_bytes(ProtocolLevel::V311),
        ),
        ("v311 full", ProtocolLevel::V311, v3_full(b"MQTT", 4)),
        (
            "v311 persistent, empty password",
            ProtocolLevel::V311,
            frame(
                0x10,
                &cat(&[&s(b"MQTT"), &[4, 0xC0, 0, 0], &s(b"cid"), &s(b"u"), &s(b"")]),
            ),
        ),
        (
            "v311 empty client id, clean",
            ProtocolLevel::V311,
            frame(0x10, &cat(&[&s(b"MQTT"), &[4, 0x02, 0, 0], &s(b"")])),
        ),
        (
            "v5 minimal",
            ProtocolLevel::V5,
            connect_bytes(ProtocolLevel::V5),
        ),
        (
            "v5 full",
            ProtocolLevel::V5,
            frame(
                0x10,
                &cat(&[
                    &s(b"MQTT"),
                    &[5, 0x80 | 0x40 | 0x20 | 0x10 | 0x04, 0, 60],
                    &v5_props,
                    &s(b"c5"),
                    &will_props,
                    &s(b"w/t"),
                    &s(b"bye"),
                    &s(b"user"),
                    &s(b"pass"),
                ]),
            ),
        ),
        (
            "v5 password without username",
            ProtocolLevel::V5,
            frame(
                0x10,
                &cat(&[&s(b"MQTT"), &[5, 0x42, 0, 60, 0], &s(b"c5"), &s(b"pw")]),
            ),
        ),
    ]
}

/// Packets after the CONNECT: (name, levels, direction, bytes).
pub(super) fn packet_corpus() -> Vec<(&'static str, &'static [ProtocolLevel], Dir, Vec<u8>)> {
    const V3: &[ProtocolLevel] = &V3_LEVELS;
    const V5: &[ProtocolLevel] = &[ProtocolLevel::V5];
    let user = cat(&[&[0x26], &s(b"k"), &s(b"v")]);
    vec![
        // MQTT 3.1 / 3.1.1
        (
            "v3 publish qos0",
            V3,
            Dir::Both,
            frame(0x30, &cat(&[&s(b"a/b"), b"hello"])),
        ),
        (
            "v3 publish qos0 empty payload",
            V3,
            Dir::Both,
            frame(0x31, &s(b"a/b")),
        ),
        (
            "v3 publish qos1 dup retain",
            V3,
            Dir::Both,
            frame(0x3B, &cat(&[&s(b"a/b"), &[0, 10], b"x"])),
        ),
        (
            "v3 publish qos2",
            V3,
            Dir::Both,
            frame(0x34, &cat(&[&s(b"$SYS/t"), &[0xFF, 0xFF], &[0u8; 300]])),
        ),
        ("v3 puback", V3, Dir::Both, vec![0x40, 2, 0, 10]),
        ("v3 pubrec", V3, Dir::Both, vec![0x50, 2, 0, 11]),
        ("v3 pubrel", V3, Dir::Both, vec![0x62, 2, 0, 11]),
        ("v3 pubcomp", V3, Dir::Both, vec![0x70, 2, 0, 11]),
        (
            "v3 subscribe",
            V3,
            Dir::ToServer,
            frame(
                0x82,
                &cat(&[
                    &[0, 1],
                    &s(b"a/#"),
                    &[1],
                    &s(b"+"),
                    &[2],
                    &s(b"$share/g/x"),
                    &[0],
                ]),
            ),
        ),
        (
            "v3 unsubscribe",
            V3,
            Dir::ToServer,
            frame(0xA2, &cat(&[&[0, 2], &s(b"a/#"), &s(b"+/b")])),
        ),
        ("v3 pingreq", V3, Dir::ToServer, vec![0xC0, 0]),
        ("v3 disconnect", V3, Dir::ToServer, vec![0xE0, 0]),
        ("v3 connack", V3, Dir::ToClient, vec![0x20, 2, 0, 0]),
        (
            "v3 connack session present",
            V3,
            Dir::ToClient,
            vec![0x20, 2, 1, 0],
        ),
        ("v3 connack refused", V3, Dir::ToClient, vec![0x20, 2, 0, 5]),
        (
            "v3 suback",
            V3,
            Dir::ToClient,
            vec![0x90, 5, 0, 1, 1, 0x80, 2],
        ),
        ("v3 unsuback", V3, Dir::ToClient, vec![0xB0, 2, 0, 2]),
        ("v3 pingresp", V3, Dir::ToClient, vec![0xD0, 0]),
        // MQTT 5
        (
            "v5 publish qos0",
            V5,
            Dir::Both,
            frame(0x30, &cat(&[&s(b"a/b"), &[0], b"hello"])),
        ),
        (
            "v5 publish qos1 properties",
            V5,
            Dir::Both,
            frame(
                0x32,
                &cat(&[
                    &s(b"a/b"),
                    &[0, 10],
                    &props(&[
                        &[0x01, 1],
                        &[0x02, 0, 0, 0, 60],
                        &cat(&[&[0x08], &s(b"r/t")]),
                        &cat(&[&[0x09], &s(&[0xAB, 0xCD])]),
                        &cat(&[&[0x03], &s(b"text")]),
                        &user,
                        &user,
                    ]),
                    b"payload",
                ]),
            ),
        ),
        (
            "v5 publish alias, empty topic",
            V5,
            Dir::Both,
            frame(0x30, &cat(&[&s(b""), &props(&[&[0x23, 0, 5]]), b"x"])),
        ),
        (
            "v5 publish alias + topic",
            V5,
            Dir::Both,
            frame(0x35, &cat(&[&s(b"t"), &[0, 1], &props(&[&[0x23, 0, 5]])])),
        ),
        (
            "v5 publish subscription ids",
            V5,
            Dir::ToClient,
            frame(
                0x30,
                &cat(&[&s(b"t"), &props(&[&[0x0B, 1], &[0x0B, 0x80, 0x01]]), b"x"]),
            ),
        ),
        ("v5 puback short", V5, Dir::Both, vec![0x40, 2, 0, 10]),
        (
            "v5 puback reason",
            V5,
            Dir::Both,
            vec![0x40, 3, 0, 10, 0x10],
        ),
        (
            "v5 puback properties",
            V5,
            Dir::Both,
            frame(
                0x40,
                &cat(&[
                    &[0, 10, 0x87],
                    &props(&[&cat(&[&[0x1F], &s(b"no")]), &user]),
                ]),
            ),
        ),
        (
            "v5 pubrec",
            V5,
            Dir::Both,
            frame(0x50, &cat(&[&[0, 11, 0], &props(&[])])),
        ),
        ("v5 pubrel", V5, Dir::Both, vec![0x62, 2, 0, 11]),
        (
            "v5 pubrel reason",
            V5,
            Dir::Both,
            vec![0x62, 3, 0, 11, 0x92],
        ),
        (
            "v5 pubcomp",
            V5,
            Dir::Both,
            frame(0x70, &cat(&[&[0, 11, 0], &props(&[&user])])),
        ),
        (
            "v5 subscribe",
            V5,
            Dir::ToServer,
            frame(
                0x82,
                &cat(&[
                    &[0, 1],
                    &props(&[&[0x0B, 5], &user]),
                    &s(b"a/#"),
                    &[0x2D],
                    &s(b"$share/g/x/+"),
                    &[0x01],
                    &s(b"+"),
                    &[0x12],
                ]),
            ),
        ),
        (
            "v5 unsubscribe",
            V5,
            Dir::ToServer,
            frame(0xA2, &cat(&[&[0, 2], &props(&[&user]), &s(b"a/#")])),
        ),
        ("v5 pingreq", V5, Dir::ToServer, vec![0xC0, 0]),
        ("v5 disconnect", V5, Dir::Both, vec![0xE0, 0]),
        (
            "v5 disconnect with will",
            V5,
            Dir::Both,
            vec![0xE0, 1, 0x04],
        ),
        (
            "v5 disconnect properties",
            V5,
            Dir::ToServer,
            frame(
                0xE0,
                &cat(&[
                    &[0x00],
                    &props(&[&[0x11, 0, 0, 0, 0], &cat(&[&[0x1F], &s(b"bye")])]),
                ]),
            ),
        ),
        (
            "v5 server disconnect",
            V5,
            Dir::ToClient,
            frame(
                0xE0,
                &cat(&[
                    &[0x8B],
                    &props(&[&cat(&[&[0x1C], &s(b"other")]), &cat(&[&[0x1F], &s(b"bye")])]),
                ]),
            ),
        ),
        (
            "v5 auth",
            V5,
            Dir::Both,
            frame(
                0xF0,
                &cat(&[
                    &[0x18],
                    &props(&[
                        &cat(&[&[0x15], &s(b"SCRAM")]),
                        &cat(&[&[0x16], &s(&[1, 2])]),
                    ]),
                ]),
            ),
        ),
        (
            "v5 connack minimal",
            V5,
            Dir::ToClient,
            vec![0x20, 3, 0, 0, 0],
        ),
        (
            "v5 connack properties",
            V5,
            Dir::ToClient,
            frame(
                0x20,
                &cat(&[
                    &[1, 0],
                    &props(&[
                        &[0x11, 0, 0, 0, 120],
                        &[0x21, 0, 32],
                        &[0x24, 1],
                        &[0x25, 0],
                        &[0x27, 0, 0, 0x10, 0],
                        &cat(&[&[0x12], &s(b"abc")]),
                        &[0x22, 0, 5],
                        &[0x28, 0],
                        &[0x29, 0],
                        &[0x2A, 0],
                        &[0x13, 0, 60],
                        &cat(&[&[0x1F], &s(b"hi")]),
                        &user,
                    ]),
                ]),
            ),
        ),
        (
            "v5 connack refused",
            V5,
            Dir::ToClient,
            vec![0x20, 3, 0, 0x87, 0],
        ),
        (
            "v5 suback",
            V5,
            Dir::ToClient,
            frame(0x90, &cat(&[&[0, 1], &props(&[]), &[0, 1, 2, 0x80, 0x87]])),
        ),
        (
            "v5 unsuback",
            V5,
            Dir::ToClient,
            frame(0xB0, &cat(&[&[0, 2], &props(&[&user]), &[0x00, 0x11]])),
        ),
        ("v5 pingresp", V5, Dir::ToClient, vec![0xD0, 0]),
    ]
}

/// Every strict prefix is `Ok(None)` without consuming anything, then the whole packet decodes to exactly one.
fn assert_prefixes_then_full(codec: &mut Codec, bytes: &[u8], name: &str) -> Packet {
    for end in 0..bytes.len() {
        let mut buf = BytesMut::from(&bytes[..end]);
        let res = codec.decode(&mut buf);
        assert!(
            matches!(res, Ok(None)),
            "{name}: prefix {end}/{}: {res:?}",
            bytes.len()
        );
        assert_eq!(buf.len(), end, "{name}: prefix consumed bytes");
    }
    let mut buf = BytesMut::from(bytes);
    let packet = codec
        .decode(&mut buf)
        .unwrap_or_else(|e| panic!("{name}: {e:?}"))
        .expect(name);
    assert!(buf.is_empty(), "{name}: left {} bytes", buf.len());
    packet
}

fn encode(codec: &mut Codec, packet: Packet) -> Vec<u8> {
    let mut out = BytesMut::new();
    codec.encode(packet, &mut out).unwrap();
    out.to_vec()
}

#[test]
fn connect_corpus_decodes() {
    for (name, level, bytes) in connect_corpus() {
        let mut codec = Codec::new(TEST_MAX);
        let packet = assert_prefixes_then_full(&mut codec, &bytes, name);
        assert!(matches!(packet, Packet::Connect(_)), "{name}");
        assert_eq!(codec.protocol_level(), Some(level), "{name}");
        // A client codec encodes the same CONNECT back; the server decodes it to the same model.
        let mut client = Codec::client(level, TEST_MAX);
        let reencoded = encode(&mut client, packet.clone());
        if level != ProtocolLevel::V5 {
            assert_eq!(reencoded, bytes, "{name}: v3 CONNECT bytes round-trip");
        }
        let again = decode_all(&mut Codec::new(TEST_MAX), &reencoded).unwrap();
        assert_eq!(again, vec![packet], "{name}");
    }
}

#[test]
fn packet_corpus_decodes_and_roundtrips() {
    for (name, levels, dir, bytes) in packet_corpus() {
        for &level in levels {
            let name = &format!("{name} ({level})");
            // Decode in the direction(s) the packet travels.
            let decoded = match dir {
                Dir::ToServer | Dir::Both => {
                    assert_prefixes_then_full(&mut connected_server(level), &bytes, name)
                }
                Dir::ToClient => {
                    assert_prefixes_then_full(&mut Codec::client(level, TEST_MAX), &bytes, name)
                }
            };
            if dir == Dir::Both {
                let by_client =
                    assert_prefixes_then_full(&mut Codec::client(level, TEST_MAX), &bytes, name);
                assert_eq!(by_client, decoded, "{name}: both roles decode alike");
            }
            // Server → client: the server codec encodes, a client codec decodes the same model.
            if dir != Dir::ToServer {
                let encoded = encode(&mut connected_server(level), decoded.clone());
                if level != ProtocolLevel::V5 {
                    assert_eq!(encoded, bytes, "{name}: v3 bytes round-trip");
                }
                let again = decode_all(&mut Codec::client(level, TEST_MAX), &encoded).unwrap();
                assert_eq!(again, vec![decoded.clone()], "{name}: round-trip");
            }
            // Client → server: a client codec encodes, the server decodes the same model.
            if dir != Dir::ToClient {
                let encoded = encode(&mut Codec::client(level, TEST_MAX), decoded.clone());
                let again = decode_all(&mut connected_server(level), &encoded).unwrap();
                assert_eq!(again, vec![decoded], "{name}: client round-trip");
            }
        }
    }
}

#[test]
fn several_packets_in_one_buffer() {
    let mut bytes = connect_bytes(ProtocolLevel::V311);
    bytes.extend([0xC0, 0]);
    bytes.extend(frame(0x30, &cat(&[&s(b"a"), b"x"])));
    bytes.extend([0xE0, 0]);
    let packets = decode_all(&mut Codec::new(TEST_MAX), &bytes).unwrap();
    assert_eq!(packets.len(), 4);
    assert!(matches!(packets[3], Packet::Disconnect(_)));
}

#[test]
fn v3_connect_maps_to_v5_model() {
    let mut codec = Codec::new(TEST_MAX);
    let bytes = frame(
        0x10,
        &cat(&[
            &s(b"MQTT"),
            &[4, 0x0C, 0, 30],
            &s(b"cid"),
            &s(b"w"),
            &s(b"m"),
        ]),
    );
    let Packet::Connect(c) = &decode_all(&mut codec, &bytes).unwrap()[0] else {
        panic!("not a connect")
    };
    assert!(!c.clean_start);
    assert_eq!(
        c.session_expiry_interval_secs,
        convert::V3_PERSISTENT_SESSION_EXPIRY
    );
    assert_eq!(c.keep_alive, 30);
    let will = c.last_will.as_ref().unwrap();
    assert_eq!(
        (will.qos, will.topic.as_ref(), will.message.as_ref()),
        (QoS::AtLeastOnce, "w", b"m".as_ref())
    );

    let Packet::Connect(c) = &decode_all(
        &mut Codec::new(TEST_MAX),
        &connect_bytes(ProtocolLevel::V31),
    )
    .unwrap()[0] else {
        panic!("not a connect")
    };
    assert!(c.clean_start);
    assert_eq!(c.session_expiry_interval_secs, 0);
}

#[test]
fn v5_model_maps_to_v3_bytes() {
    for level in V3_LEVELS {
        let mut codec = connected_server(level);
        let connack = ConnectAck {
            session_present: true,
            reason_code: ConnectAckReason::NotAuthorized,
            reason_string: Some("nope".into()),
            ..ConnectAck::default()
        };
        assert_eq!(encode(&mut codec, connack.into()), [0x20, 2, 0, 5]);
        let connack = ConnectAck {
            session_present: true,
            ..ConnectAck::default()
        };
        assert_eq!(encode(&mut codec, connack.into()), [0x20, 2, 1, 0]);
        let suback = SubscribeAck {
            packet_id: 7.try_into().unwrap(),
            properties: vec![("k".into(), "v".into())],
            reason_string: Some("r".into()),
            status: vec![
                SubscribeAckReason::GrantedQos1,
                SubscribeAckReason::NotAuthorized,
                SubscribeAckReason::TopicFilterInvalid,
                SubscribeAckReason::GrantedQos0,
            ],
        };
        assert_eq!(
            encode(&mut codec, Packet::SubscribeAck(suback)),
            [0x90, 6, 0, 7, 1, 0x80, 0x80, 0]
        );
        let puback = PublishAck {
            packet_id: 9.try_into().unwrap(),
            reason_code: PublishAckReason::NotAuthorized,
            ..PublishAck::default()
        };
        assert_eq!(
            encode(&mut codec, Packet::PublishAck(puback)),
            [0x40, 2, 0, 9]
        );
        // DISCONNECT has no MQTT 3 server form: nothing is written.
        assert_eq!(
            encode(
                &mut codec,
                Packet::Disconnect(Disconnect::new(DisconnectReasonCode::ServerBusy))
            ),
            [0u8; 0]
        );
        let mut out = BytesMut::new();
        assert_eq!(
            codec.encode(Packet::Auth(Auth::default()), &mut out),
            Err(CodecError::NotInProtocolVersion)
        );
        assert!(out.is_empty());
    }
}

#[test]
fn encode_before_connect_is_refused() {
    let mut out = BytesMut::new();
    assert_eq!(
        Codec::new(TEST_MAX).encode(Packet::PingResponse, &mut out),
        Err(CodecError::NoProtocolLevel)
    );
}

#[test]
fn unsupported_level_allows_v3_connack() {
    let mut codec = Codec::new(TEST_MAX);
    let bytes = frame(0x10, &cat(&[&s(b"MQTT"), &[6, 0x02, 0, 60], &s(b"c")]));
    assert_eq!(
        decode_all(&mut codec, &bytes),
        Err(CodecError::UnsupportedProtocolLevel)
    );
    assert_eq!(codec.protocol_level(), Some(ProtocolLevel::V311));
    let connack = ConnectAck {
        reason_code: ConnectAckReason::UnsupportedProtocolVersion,
        ..ConnectAck::default()
    };
    assert_eq!(encode(&mut codec, connack.into()), [0x20, 2, 0, 1]);
}

#[test]
fn bad_v5_connect_still_allows_v5_connack() {
    let mut codec = Codec::new(TEST_MAX);
    // v5 CONNECT with an unknown property: refused, but the level is known for the CONNACK.
    let bytes = frame(
        0x10,
        &cat(&[
            &s(b"MQTT"),
            &[5, 0x02, 0, 60],
            &props(&[&[0x7F, 0]]),
            &s(b"c"),
        ]),
    );
    let err = decode_all(&mut codec, &bytes).unwrap_err();
    assert_eq!(codec.protocol_level(), Some(ProtocolLevel::V5));
    let connack = ConnectAck {
        reason_code: ConnectAckReason::try_from(err.v5_disconnect_reason()).unwrap(),
        ..ConnectAck::default()
    };
    assert_eq!(encode(&mut codec, connack.into()), [0x20, 3, 0, 0x81, 0]);
    // The decoder stays failed.
    assert_eq!(decode_all(&mut codec, &[0xC0, 0]), Err(err));
}

#[test]
fn outbound_max_drops_big_packets() {
    let publish = |len: usize| {
        Packet::Publish(Box::new(Publish {
            dup: false,
            retain: false,
            qos: QoS::AtMostOnce,
            topic: "t".into(),
            packet_id: None,
            payload: vec![0u8; len].into(),
            properties: Some(PublishProperties::default()),
        }))
    };
    for level in ALL_LEVELS {
        let mut codec = connected_server(level);
        codec.set_outbound_max(Some(100));
        // Fixed header 2 + topic 3 (+ v5 property length 1) + payload.
        let fits = if level.is_v5() { 94 } else { 95 };
        assert_eq!(encode(&mut codec, publish(fits)).len(), 100, "{level}");
        let mut out = BytesMut::from(&b"keep"[..]);
        assert_eq!(
            codec.encode(publish(fits + 1), &mut out),
            Err(CodecError::OutboundTooLarge),
            "{level}"
        );
        assert_eq!(&out[..], b"keep");
        codec.set_outbound_max(None);
        assert_eq!(
            encode(&mut codec, publish(1000)).len(),
            1000 + if level.is_v5() { 7 } else { 6 }
        );
    }
}

#[test]
fn outbound_max_drops_reason_string_first() {
    let mut codec = connected_server(ProtocolLevel::V5);
    codec.set_outbound_max(Some(8));
    let ack = PublishAck {
        packet_id: 1.try_into().unwrap(),
        reason_code: PublishAckReason::QuotaExceeded,
        properties: Vec::new(),
        reason_string: Some("a long explanation".into()),
    };
    let bytes = encode(&mut codec, Packet::PublishAck(ack));
    assert!(bytes.len() <= 8, "{bytes:?}");
    let again = decode_all(&mut Codec::client(ProtocolLevel::V5, TEST_MAX), &bytes).unwrap();
    let [Packet::PublishAck(ack)] = again.as_slice() else {
        panic!("{again:?}")
    };
    assert_eq!(
        (ack.reason_code, ack.reason_string.as_ref()),
        (PublishAckReason::QuotaExceeded, None)
    );
}

#[test]
fn oversize_is_refused_before_buffering() {
    let mut codec = Codec::new(TEST_MAX);
    decode_all(&mut codec, &connect_bytes(ProtocolLevel::V311)).unwrap();
    // Announces 256 MiB - 1: refused from the 5 header bytes alone, nothing reserved.
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F][..]);
    let cap = buf.capacity();
    assert_eq!(codec.decode(&mut buf), Err(CodecError::PacketTooLarge));
    assert_eq!(buf.capacity(), cap);
    // The limit counts the whole packet: a 64-byte limit takes a 62-byte body with its 2-byte header.
    let mut codec = Codec::new(64);
    let mut ok = connect_bytes(ProtocolLevel::V311);
    ok.extend(frame(0x30, &cat(&[&s(b"t"), &[0u8; 59]])));
    assert_eq!(decode_all(&mut codec, &ok).unwrap().len(), 2);
    let too_big = frame(0x30, &cat(&[&s(b"t"), &[0u8; 60]]));
    assert_eq!(
        decode_all(&mut codec, &too_big),
        Err(CodecError::PacketTooLarge)
    );
}

#[test]
fn incomplete_frame_grows_the_buffer_in_steps() {
    const MIB: usize = 1024 * 1024;
    let mut codec = Codec::new(2 * MIB as u32);
    // A CONNECT header announcing 1 MiB, then 10 body bytes: the buffer must not make room for the whole MiB.
    let mut bytes = vec![0x10];
    bytes.extend(varint(MIB));
    bytes.extend_from_slice(&s(b"MQTT"));
    bytes.extend_from_slice(&[4, 0x02, 0, 60]);
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(codec.decode(&mut buf), Ok(None));
    assert!(
        buf.capacity() <= bytes.len() + 2 * super::codec::RESERVE_STEP,
        "capacity {} after {} bytes",
        buf.capacity(),
        bytes.len()
    );
    // The same after a packet is connected: a PUBLISH header announcing 1 MiB.
    let mut codec = Codec::new(2 * MIB as u32);
    decode_all(&mut codec, &connect_bytes(ProtocolLevel::V5)).unwrap();
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[0x30]);
    buf.extend_from_slice(&varint(MIB));
    buf.extend_from_slice(&[0, 1, b't', 0, 1, 2, 3, 4, 5, 6]);
    assert_eq!(codec.decode(&mut buf), Ok(None));
    assert!(buf.capacity() < 64 * 1024, "capacity {}", buf.capacity());
    // A frame fed in small pieces still decodes whole.
    let mut codec = Codec::new(2 * MIB as u32);
    let mut all = connect_bytes(ProtocolLevel::V311);
    all.extend(frame(0x30, &cat(&[&s(b"t"), &vec![7u8; 100_000]])));
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    for chunk in all.chunks(3000) {
        buf.extend_from_slice(chunk);
        while let Some(p) = codec.decode(&mut buf).unwrap() {
            packets.push(p);
        }
    }
    assert!(
        matches!(packets.as_slice(), [Packet::Connect(_), Packet::Publish(p)] if p.payload.len() == 100_000)
    );
}

#[test]
fn varint_encoding() {
    for (n, bytes) in [
        (0usize, &[0x00][..]),
        (127, &[0x7F]),
        (128, &[0x80, 0x01]),
        (16_383, &[0xFF, 0x7F]),
        (16_384, &[0x80, 0x80, 0x01]),
        (MAX_VARINT, &[0xFF, 0xFF, 0xFF, 0x7F]),
    ] {
        let mut out = BytesMut::new();
        encode_varint(n, &mut out).unwrap();
        assert_eq!(&out[..], bytes, "{n}");
        assert!(
            matches!(read_varint(&out), Ok(VarInt::Done(v, len)) if v as usize == n && len == bytes.len())
        );
    }
    let mut out = Vec::new();
    assert_eq!(
        encode_varint(MAX_VARINT + 1, &mut out),
        Err(CodecError::PacketTooLarge)
    );
    assert!(out.is_empty());
}

#[test]
fn second_connect_is_decoded_for_the_broker_to_refuse() {
    let mut codec = connected_server(ProtocolLevel::V311);
    let packets = decode_all(&mut codec, &connect_bytes(ProtocolLevel::V311)).unwrap();
    assert!(matches!(packets.as_slice(), [Packet::Connect(_)]));
}

/// Found by the `mqtt_codec` fuzz target (its oracle was wrong, the codec right): after a 3.1.1 CONNECT, a second
/// CONNECT announcing 3.1 is decoded at the connection's level for the broker to refuse, and leaves that level as
/// it was; alone, to a fresh codec, the same bytes are the same packet at 3.1.
#[test]
fn a_second_connect_of_another_version_keeps_the_connections_level() {
    let stream: &[u8] = &[
        16, 17, 0, 4, 77, 81, 84, 84, 4, 0, 0, 60, 0, 5, 115, 117, 98, 45,
        49, // CONNECT 3.1.1 "sub-1"
        130, 14, 0, 1, 0, 3, 97, 47, 35, 2, 0, 3, 43, 47, 98, 2, // SUBSCRIBE a/# +/b
        80, 2, 0, 3, // PUBREC
        16, 20, 0, 6, 77, 81, 73, 115, 100, 112, 3, 2, 0, 60, 0, 6, 115, 117, 98, 45, 51,
        49, // CONNECT 3.1
        162, 100, 112, 3, 0, // the start of an UNSUBSCRIBE
    ];
    let mut codec = Codec::new(TEST_MAX);
    let packets = decode_all(&mut codec, stream).unwrap();
    let [
        Packet::Connect(_),
        Packet::Subscribe(_),
        Packet::PublishReceived(_),
        second @ Packet::Connect(_),
    ] = packets.as_slice()
    else {
        panic!("{packets:?}")
    };
    assert_eq!(codec.protocol_level(), Some(ProtocolLevel::V311));
    let mut fresh = Codec::new(TEST_MAX);
    assert_eq!(
        decode_all(&mut fresh, &stream[39..61]).unwrap(),
        std::slice::from_ref(second)
    );
    assert_eq!(fresh.protocol_level(), Some(ProtocolLevel::V31));
}

#[test]
fn v31_connect_encodes_level_3() {
    let connect = Connect {
        client_id: "c31".into(),
        clean_start: true,
        keep_alive: 60,
        ..Connect::default()
    };
    let bytes = encode(
        &mut Codec::client(ProtocolLevel::V31, TEST_MAX),
        connect.into(),
    );
    assert_eq!(bytes, connect_bytes(ProtocolLevel::V31));
}
