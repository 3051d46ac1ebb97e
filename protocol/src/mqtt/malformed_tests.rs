//! Regression table of malformed packets a server must reject, each with the error it must produce. Kept as a
//! table so a future swap of the underlying codec is checked against the same corpus.

use super::corpus_tests::{TEST_MAX, cat, connected_server, decode_all, frame, props, s};
use super::*;

/// A topic of `levels` levels (`a/a/...`).
fn deep(levels: usize) -> Vec<u8> {
    vec!["a"; levels].join("/").into_bytes()
}

/// A CONNECT packet with the given name, level, flags and payload (keep alive 60, no v5 properties block).
fn connect_raw(name: &[u8], level: u8, flags: u8, rest: &[u8]) -> Vec<u8> {
    frame(0x10, &cat(&[&s(name), &[level, flags, 0, 60], rest]))
}

/// The first-packet cases: (name, bytes, expected error), decoded by a fresh server codec.
fn connect_cases() -> Vec<(&'static str, Vec<u8>, CodecError)> {
    let cid = s(b"cid");
    let v5 = |flags: u8, props_block: &[u8], rest: &[u8]| {
        frame(
            0x10,
            &cat(&[&s(b"MQTT"), &[5, flags, 0, 60], props_block, rest]),
        )
    };
    vec![
        (
            "first packet pingreq",
            vec![0xC0, 0],
            CodecError::ExpectedConnect,
        ),
        (
            "first packet publish",
            frame(0x30, &cat(&[&s(b"t"), b"x"])),
            CodecError::ExpectedConnect,
        ),
        (
            "first packet connack",
            vec![0x20, 2, 0, 0],
            CodecError::ExpectedConnect,
        ),
        (
            "remaining length 5 bytes",
            vec![0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F],
            CodecError::Malformed,
        ),
        (
            "remaining length 0 in two bytes",
            vec![0x10, 0x80, 0x00],
            CodecError::Malformed,
        ),
        (
            "connect remaining length in more bytes than needed",
            {
                let b = connect_raw(b"MQTT", 4, 0x02, &cid);
                assert!(b[1] < 0x80);
                cat(&[&[0x10, 0x80 | b[1], 0x80, 0x00], &b[2..]])
            },
            CodecError::Malformed,
        ),
        (
            "v5 connect property length in more bytes than needed",
            v5(0x02, &[0x80, 0x00], &cid),
            CodecError::Malformed,
        ),
        (
            "connect fixed header flags",
            {
                let mut b = connect_raw(b"MQTT", 4, 0x02, &cid);
                b[0] = 0x11;
                b
            },
            CodecError::ReservedFlags,
        ),
        (
            "bad protocol name",
            connect_raw(b"MQTX", 4, 0x02, &cid),
            CodecError::InvalidProtocolName,
        ),
        (
            "protocol name case",
            connect_raw(b"mqtt", 4, 0x02, &cid),
            CodecError::InvalidProtocolName,
        ),
        (
            "protocol level 6",
            connect_raw(b"MQTT", 6, 0x02, &cid),
            CodecError::UnsupportedProtocolLevel,
        ),
        (
            "protocol level 3 with MQTT",
            connect_raw(b"MQTT", 3, 0x02, &cid),
            CodecError::UnsupportedProtocolLevel,
        ),
        (
            "MQIsdp with level 4",
            connect_raw(b"MQIsdp", 4, 0x02, &cid),
            CodecError::UnsupportedProtocolLevel,
        ),
        (
            "reserved flag bit 0",
            connect_raw(b"MQTT", 4, 0x03, &cid),
            CodecError::ReservedFlags,
        ),
        (
            "will qos 3",
            connect_raw(b"MQTT", 4, 0x1E, &cat(&[&cid, &s(b"w"), &s(b"m")])),
            CodecError::InvalidQos,
        ),
        (
            "will qos without will",
            connect_raw(b"MQTT", 4, 0x0A, &cid),
            CodecError::InvalidConnectFlags,
        ),
        (
            "will retain without will",
            connect_raw(b"MQTT", 4, 0x22, &cid),
            CodecError::InvalidConnectFlags,
        ),
        (
            "v31 will qos without will",
            connect_raw(b"MQIsdp", 3, 0x0A, &cid),
            CodecError::InvalidConnectFlags,
        ),
        (
            "v5 will qos without will",
            v5(0x0A, &[0], &cid),
            CodecError::InvalidConnectFlags,
        ),
        (
            "v5 will retain without will",
            v5(0x22, &[0], &cid),
            CodecError::InvalidConnectFlags,
        ),
        (
            "v5 will qos 3",
            v5(0x1E, &[0], &cat(&[&cid, &[0], &s(b"w"), &s(b"m")])),
            CodecError::InvalidQos,
        ),
        (
            "password without username",
            connect_raw(b"MQTT", 4, 0x42, &cat(&[&cid, &s(b"pw")])),
            CodecError::PasswordWithoutUsername,
        ),
        (
            "v31 password without username",
            connect_raw(b"MQIsdp", 3, 0x42, &cat(&[&cid, &s(b"pw")])),
            CodecError::PasswordWithoutUsername,
        ),
        (
            "null in client id",
            connect_raw(b"MQTT", 4, 0x02, &s(b"a\0b")),
            CodecError::NullChar,
        ),
        (
            "v5 null in client id",
            v5(0x02, &[0], &s(b"a\0b")),
            CodecError::NullChar,
        ),
        (
            "invalid utf-8 client id",
            connect_raw(b"MQTT", 4, 0x02, &s(&[0xC3, 0x28])),
            CodecError::InvalidUtf8,
        ),
        (
            "null in username",
            connect_raw(b"MQTT", 4, 0x82, &cat(&[&cid, &s(b"us\0r")])),
            CodecError::NullChar,
        ),
        (
            "null in will topic",
            connect_raw(b"MQTT", 4, 0x06, &cat(&[&cid, &s(b"w\0"), &s(b"m")])),
            CodecError::NullChar,
        ),
        (
            "wildcard in will topic",
            connect_raw(b"MQTT", 4, 0x06, &cat(&[&cid, &s(b"w/+"), &s(b"m")])),
            CodecError::WildcardInTopic,
        ),
        (
            "v5 wildcard in will topic",
            v5(0x06, &[0], &cat(&[&cid, &[0], &s(b"w/#"), &s(b"m")])),
            CodecError::WildcardInTopic,
        ),
        (
            "will topic too deep",
            connect_raw(
                b"MQTT",
                4,
                0x06,
                &cat(&[&cid, &s(&deep(topic::MAX_TOPIC_LEVELS + 1)), &s(b"m")]),
            ),
            CodecError::TopicNameTooDeep,
        ),
        (
            "v5 will topic of slashes",
            v5(0x06, &[0], &cat(&[&cid, &[0], &s(&[b'/'; 4096]), &s(b"m")])),
            CodecError::TopicNameTooDeep,
        ),
        (
            "empty will topic",
            connect_raw(b"MQTT", 4, 0x06, &cat(&[&cid, &s(b""), &s(b"m")])),
            CodecError::EmptyTopic,
        ),
        (
            "will flag without will fields",
            connect_raw(b"MQTT", 4, 0x06, &cid),
            CodecError::Malformed,
        ),
        (
            "username flag without username",
            connect_raw(b"MQTT", 4, 0x82, &cid),
            CodecError::Malformed,
        ),
        (
            "trailing bytes after connect",
            connect_raw(b"MQTT", 4, 0x02, &cat(&[&cid, b"xx"])),
            CodecError::Malformed,
        ),
        (
            "empty client id, persistent",
            connect_raw(b"MQTT", 4, 0x00, &s(b"")),
            CodecError::InvalidClientId,
        ),
        (
            "truncated connect",
            frame(0x10, &s(b"MQTT")),
            CodecError::Malformed,
        ),
        (
            "v5 duplicate property",
            v5(
                0x02,
                &props(&[&[0x11, 0, 0, 0, 1], &[0x11, 0, 0, 0, 2]]),
                &cid,
            ),
            CodecError::DuplicateProperty,
        ),
        (
            "v5 unknown property id",
            v5(0x02, &props(&[&[0x7F, 0]]), &cid),
            CodecError::UnknownProperty,
        ),
        (
            "v5 misplaced property",
            v5(0x02, &props(&[&[0x24, 1]]), &cid),
            CodecError::UnknownProperty,
        ),
        (
            "v5 receive maximum 0",
            v5(0x02, &props(&[&[0x21, 0, 0]]), &cid),
            CodecError::InvalidProperty,
        ),
        (
            "v5 maximum packet size 0",
            v5(0x02, &props(&[&[0x27, 0, 0, 0, 0]]), &cid),
            CodecError::InvalidProperty,
        ),
        (
            "v5 request problem info 2",
            v5(0x02, &props(&[&[0x17, 2]]), &cid),
            CodecError::InvalidProperty,
        ),
        (
            "v5 null in user property",
            v5(
                0x02,
                &props(&[&cat(&[&[0x26], &s(b"k\0"), &s(b"v")])]),
                &cid,
            ),
            CodecError::NullChar,
        ),
        (
            "v5 property length beyond packet",
            v5(0x02, &[0x20, 0x11], &cid),
            CodecError::Malformed,
        ),
        (
            "v5 duplicate will property",
            v5(
                0x06,
                &[0],
                &cat(&[&cid, &props(&[&[0x01, 1], &[0x01, 1]]), &s(b"w"), &s(b"m")]),
            ),
            CodecError::DuplicateProperty,
        ),
        (
            "v5 missing properties",
            frame(0x10, &cat(&[&s(b"MQTT"), &[5, 0x02, 0, 60]])),
            CodecError::Malformed,
        ),
    ]
}

/// Cases after a successful CONNECT: (name, levels, bytes, expected error).
fn packet_cases() -> Vec<(&'static str, &'static [ProtocolLevel], Vec<u8>, CodecError)> {
    use ProtocolLevel::{V5, V31, V311};
    const ALL: &[ProtocolLevel] = &[V31, V311, V5];
    const V3: &[ProtocolLevel] = &[V31, V311];
    const ONLY5: &[ProtocolLevel] = &[V5];
    // v3 and v5 bodies differ by the property block; `p` is empty for v3 cases.
    let pub3 = |first: u8, topic: &[u8], rest: &[u8]| frame(first, &cat(&[&s(topic), rest]));
    let pub5 = |first: u8, topic: &[u8], id: &[u8], props_block: &[u8]| {
        frame(first, &cat(&[&s(topic), id, props_block, b"x"]))
    };
    let sub3 = |filter: &[u8], opts: u8| frame(0x82, &cat(&[&[0, 1], &s(filter), &[opts]]));
    let sub5 = |filter: &[u8], opts: u8| frame(0x82, &cat(&[&[0, 1], &[0], &s(filter), &[opts]]));
    vec![
        (
            "remaining length 5 bytes",
            ALL,
            vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            CodecError::Malformed,
        ),
        (
            "pingreq remaining length 0 in two bytes",
            ALL,
            vec![0xC0, 0x80, 0x00],
            CodecError::Malformed,
        ),
        (
            "publish remaining length in more bytes than needed",
            ALL,
            {
                let b = pub3(0x30, b"t", b"x");
                cat(&[&[0x30, 0x80 | b[1], 0x00], &b[2..]])
            },
            CodecError::Malformed,
        ),
        (
            "v5 publish property length in more bytes than needed",
            ONLY5,
            pub5(0x30, b"t", &[], &[0x80, 0x00]),
            CodecError::Malformed,
        ),
        (
            "v5 property identifier in more bytes than needed",
            ONLY5,
            pub5(0x30, b"t", &[], &[3, 0x81, 0x00, 1]),
            CodecError::Malformed,
        ),
        (
            "v5 subscription identifier in more bytes than needed",
            ONLY5,
            frame(
                0x82,
                &cat(&[&[0, 1], &[3, 0x0B, 0x81, 0x00], &s(b"a"), &[1]]),
            ),
            CodecError::Malformed,
        ),
        (
            "reserved packet type 0",
            ALL,
            vec![0x00, 0],
            CodecError::Malformed,
        ),
        ("auth in v3", V3, vec![0xF0, 0], CodecError::Malformed),
        (
            "v3 publish wildcard +",
            V3,
            pub3(0x30, b"a/+", b"x"),
            CodecError::WildcardInTopic,
        ),
        (
            "v3 publish wildcard #",
            V3,
            pub3(0x30, b"a/#", b"x"),
            CodecError::WildcardInTopic,
        ),
        (
            "v3 publish topic too deep",
            V3,
            pub3(0x30, &deep(topic::MAX_TOPIC_LEVELS + 1), b"x"),
            CodecError::TopicNameTooDeep,
        ),
        (
            "v5 publish topic of slashes",
            ONLY5,
            pub5(0x30, &[b'/'; 20_000], &[], &[0]),
            CodecError::TopicNameTooDeep,
        ),
        (
            "v3 publish null",
            V3,
            pub3(0x30, b"a\0", b"x"),
            CodecError::NullChar,
        ),
        (
            "v3 publish invalid utf-8",
            V3,
            pub3(0x30, &[0xFF, 0xFE], b"x"),
            CodecError::InvalidUtf8,
        ),
        (
            "v3 publish empty topic",
            V3,
            pub3(0x30, b"", b"x"),
            CodecError::EmptyTopic,
        ),
        (
            "v3 publish qos 3",
            V3,
            pub3(0x36, b"t", &[0, 1]),
            CodecError::InvalidQos,
        ),
        (
            "v3 publish qos1 packet id 0",
            V3,
            pub3(0x32, b"t", &[0, 0]),
            CodecError::PacketIdZero,
        ),
        (
            "v3 publish qos1 without packet id",
            V3,
            frame(0x32, &s(b"t")),
            CodecError::Malformed,
        ),
        (
            "v5 publish wildcard",
            ONLY5,
            pub5(0x30, b"a/+", &[], &[0]),
            CodecError::WildcardInTopic,
        ),
        (
            "v5 publish null",
            ONLY5,
            pub5(0x30, b"\0", &[], &[0]),
            CodecError::NullChar,
        ),
        (
            "v5 publish invalid utf-8",
            ONLY5,
            pub5(0x30, &[0xED, 0xA0, 0x80], &[], &[0]),
            CodecError::InvalidUtf8,
        ),
        (
            "v5 publish empty topic no alias",
            ONLY5,
            pub5(0x30, b"", &[], &[0]),
            CodecError::EmptyTopic,
        ),
        (
            "v5 publish qos 3",
            ONLY5,
            pub5(0x36, b"t", &[0, 1], &[0]),
            CodecError::InvalidQos,
        ),
        (
            "v5 publish packet id 0",
            ONLY5,
            pub5(0x34, b"t", &[0, 0], &[0]),
            CodecError::PacketIdZero,
        ),
        (
            "v5 publish topic alias 0",
            ONLY5,
            pub5(0x30, b"t", &[], &props(&[&[0x23, 0, 0]])),
            CodecError::InvalidProperty,
        ),
        (
            "v5 publish subscription id from client",
            ONLY5,
            pub5(0x30, b"t", &[], &props(&[&[0x0B, 1]])),
            CodecError::InvalidProperty,
        ),
        (
            "v5 publish unknown property",
            ONLY5,
            pub5(0x30, b"t", &[], &props(&[&[0x7F, 0]])),
            CodecError::UnknownProperty,
        ),
        (
            "v5 publish duplicate property",
            ONLY5,
            pub5(0x30, b"t", &[], &props(&[&[0x01, 1], &[0x01, 0]])),
            CodecError::DuplicateProperty,
        ),
        (
            "v5 publish payload format 2",
            ONLY5,
            pub5(0x30, b"t", &[], &props(&[&[0x01, 2]])),
            CodecError::InvalidProperty,
        ),
        (
            "v5 publish null in content type",
            ONLY5,
            pub5(0x30, b"t", &[], &props(&[&cat(&[&[0x03], &s(b"a\0")])])),
            CodecError::NullChar,
        ),
        (
            "v5 publish null in response topic",
            ONLY5,
            pub5(0x30, b"t", &[], &props(&[&cat(&[&[0x08], &s(b"a\0")])])),
            CodecError::NullChar,
        ),
        (
            "pingreq with body",
            ALL,
            vec![0xC0, 1, 0],
            CodecError::InvalidLength,
        ),
        (
            "v3 disconnect with body",
            V3,
            vec![0xE0, 1, 0],
            CodecError::InvalidLength,
        ),
        (
            "pingreq flags",
            ALL,
            vec![0xC1, 0],
            CodecError::ReservedFlags,
        ),
        (
            "subscribe flags 0",
            ALL,
            sub3(b"a", 0),
            CodecError::ReservedFlags,
        )
            .with_first(0x80),
        (
            "unsubscribe flags 0",
            ALL,
            frame(0xA0, &cat(&[&[0, 1], &s(b"a")])),
            CodecError::ReservedFlags,
        ),
        (
            "pubrel flags 0",
            ALL,
            vec![0x60, 2, 0, 1],
            CodecError::ReservedFlags,
        ),
        (
            "puback flags",
            ALL,
            vec![0x42, 2, 0, 1],
            CodecError::ReservedFlags,
        ),
        (
            "puback packet id 0",
            ALL,
            vec![0x40, 2, 0, 0],
            CodecError::PacketIdZero,
        ),
        (
            "v3 puback extra byte",
            V3,
            vec![0x40, 3, 0, 1, 0],
            CodecError::Malformed,
        ),
        ("puback short", ALL, vec![0x40, 1, 0], CodecError::Malformed),
        (
            "v3 subscribe no filters",
            V3,
            vec![0x82, 2, 0, 1],
            CodecError::NoTopicFilters,
        ),
        (
            "v5 subscribe no filters",
            ONLY5,
            vec![0x82, 3, 0, 1, 0],
            CodecError::NoTopicFilters,
        ),
        (
            "v3 subscribe packet id 0",
            V3,
            frame(0x82, &cat(&[&[0, 0], &s(b"a"), &[0]])),
            CodecError::PacketIdZero,
        ),
        (
            "v5 subscribe packet id 0",
            ONLY5,
            frame(0x82, &cat(&[&[0, 0, 0], &s(b"a"), &[0]])),
            CodecError::PacketIdZero,
        ),
        (
            "v3 subscribe options reserved",
            V3,
            sub3(b"a", 0x04),
            CodecError::InvalidSubscriptionOptions,
        ),
        (
            "v3 subscribe options high bits",
            V3,
            sub3(b"a", 0x80),
            CodecError::InvalidSubscriptionOptions,
        ),
        (
            "v3 subscribe qos 3",
            V3,
            sub3(b"a", 3),
            CodecError::InvalidQos,
        ),
        (
            "v5 subscribe options reserved",
            ONLY5,
            sub5(b"a", 0x40),
            CodecError::InvalidSubscriptionOptions,
        ),
        (
            "v5 subscribe retain handling 3",
            ONLY5,
            sub5(b"a", 0x30),
            CodecError::InvalidSubscriptionOptions,
        ),
        (
            "v5 subscribe qos 3",
            ONLY5,
            sub5(b"a", 3),
            CodecError::InvalidQos,
        ),
        (
            "v3 subscribe missing options",
            V3,
            frame(0x82, &cat(&[&[0, 1], &s(b"a")])),
            CodecError::Malformed,
        ),
        (
            "v3 subscribe filter a/b#",
            V3,
            sub3(b"a/b#", 0),
            CodecError::InvalidTopicFilter,
        ),
        (
            "v3 subscribe filter a/+b",
            V3,
            sub3(b"a/+b", 0),
            CodecError::InvalidTopicFilter,
        ),
        (
            "v3 subscribe filter #/a",
            V3,
            sub3(b"#/a", 0),
            CodecError::InvalidTopicFilter,
        ),
        (
            "v3 subscribe empty filter",
            V3,
            sub3(b"", 0),
            CodecError::InvalidTopicFilter,
        ),
        (
            "v5 subscribe empty filter",
            ONLY5,
            sub5(b"", 0),
            CodecError::InvalidTopicFilter,
        ),
        (
            "v3 subscribe filter too deep",
            V3,
            sub3(&deep(topic::MAX_TOPIC_LEVELS + 1), 0),
            CodecError::TopicFilterTooDeep,
        ),
        (
            "v5 subscribe filter of slashes",
            ONLY5,
            sub5(&[b'/'; 20_000], 0),
            CodecError::TopicFilterTooDeep,
        ),
        (
            "v5 subscribe shared filter too deep",
            ONLY5,
            sub5(&cat(&[b"$share/g/", &deep(topic::MAX_TOPIC_LEVELS)]), 0),
            CodecError::TopicFilterTooDeep,
        ),
        (
            "v3 subscribe null in filter",
            V3,
            sub3(b"a\0", 0),
            CodecError::NullChar,
        ),
        (
            "v3 subscribe bad share",
            V3,
            sub3(b"$share//a", 0),
            CodecError::InvalidTopicFilter,
        ),
        (
            "v5 subscribe filter a/b#",
            ONLY5,
            sub5(b"a/b#", 0),
            CodecError::InvalidTopicFilter,
        ),
        (
            "v5 subscribe share without filter",
            ONLY5,
            sub5(b"$share/g", 0),
            CodecError::InvalidTopicFilter,
        ),
        (
            "v5 subscribe share name wildcard",
            ONLY5,
            sub5(b"$share/g+/a", 0),
            CodecError::InvalidTopicFilter,
        ),
        (
            "v5 subscribe no local shared",
            ONLY5,
            sub5(b"$share/g/a", 0x04),
            CodecError::NoLocalOnSharedSubscription,
        ),
        (
            "v5 subscription identifier 0",
            ONLY5,
            frame(
                0x82,
                &cat(&[&[0, 1], &props(&[&[0x0B, 0]]), &s(b"a"), &[0]]),
            ),
            CodecError::InvalidProperty,
        ),
        (
            "v5 subscription identifier twice",
            ONLY5,
            frame(
                0x82,
                &cat(&[&[0, 1], &props(&[&[0x0B, 1], &[0x0B, 2]]), &s(b"a"), &[0]]),
            ),
            CodecError::DuplicateProperty,
        ),
        (
            "v3 unsubscribe no filters",
            V3,
            vec![0xA2, 2, 0, 1],
            CodecError::NoTopicFilters,
        ),
        (
            "v5 unsubscribe no filters",
            ONLY5,
            vec![0xA2, 3, 0, 1, 0],
            CodecError::NoTopicFilters,
        ),
        (
            "v3 unsubscribe packet id 0",
            V3,
            frame(0xA2, &cat(&[&[0, 0], &s(b"a")])),
            CodecError::PacketIdZero,
        ),
        (
            "v3 unsubscribe bad filter",
            V3,
            frame(0xA2, &cat(&[&[0, 1], &s(b"a/b#")])),
            CodecError::InvalidTopicFilter,
        ),
        (
            "v5 unsubscribe filter too deep",
            ONLY5,
            frame(
                0xA2,
                &cat(&[&[0, 1, 0], &s(&deep(topic::MAX_TOPIC_LEVELS + 1))]),
            ),
            CodecError::TopicFilterTooDeep,
        ),
        (
            "connack from client",
            ALL,
            vec![0x20, 2, 0, 0],
            CodecError::UnexpectedPacket,
        ),
        (
            "suback from client",
            V3,
            vec![0x90, 3, 0, 1, 0],
            CodecError::UnexpectedPacket,
        ),
        (
            "unsuback from client",
            V3,
            vec![0xB0, 2, 0, 1],
            CodecError::UnexpectedPacket,
        ),
        (
            "pingresp from client",
            ALL,
            vec![0xD0, 0],
            CodecError::UnexpectedPacket,
        ),
        (
            "v5 disconnect bad reason code",
            ONLY5,
            vec![0xE0, 1, 0x03],
            CodecError::Malformed,
        ),
        (
            "v5 disconnect misplaced property",
            ONLY5,
            frame(0xE0, &cat(&[&[0], &props(&[&[0x23, 0, 1]])])),
            CodecError::UnknownProperty,
        ),
        (
            "v5 puback duplicate reason string",
            ONLY5,
            frame(
                0x40,
                &cat(&[
                    &[0, 1, 0],
                    &props(&[&cat(&[&[0x1F], &s(b"a")]), &cat(&[&[0x1F], &s(b"b")])]),
                ]),
            ),
            CodecError::DuplicateProperty,
        ),
        (
            "v5 puback bad reason code",
            ONLY5,
            vec![0x40, 3, 0, 1, 0x05],
            CodecError::Malformed,
        ),
        (
            "v5 auth null in method",
            ONLY5,
            frame(
                0xF0,
                &cat(&[&[0x18], &props(&[&cat(&[&[0x15], &s(b"a\0")])])]),
            ),
            CodecError::NullChar,
        ),
    ]
}

/// Lets a table row override the first byte of its frame.
trait WithFirst {
    fn with_first(self, first: u8) -> Self;
}

impl WithFirst for (&'static str, &'static [ProtocolLevel], Vec<u8>, CodecError) {
    fn with_first(mut self, first: u8) -> Self {
        self.2[0] = first;
        self
    }
}

#[test]
fn malformed_connects_are_rejected() {
    for (name, bytes, expected) in connect_cases() {
        let mut codec = Codec::new(TEST_MAX);
        assert_eq!(decode_all(&mut codec, &bytes), Err(expected), "{name}");
    }
}

#[test]
fn malformed_packets_are_rejected() {
    for (name, levels, bytes, expected) in packet_cases() {
        for &level in levels {
            let mut codec = connected_server(level);
            assert_eq!(
                decode_all(&mut codec, &bytes),
                Err(expected),
                "{name} ({level})"
            );
        }
    }
}

/// Found by the `mqtt_codec` fuzz target: a client's 3.1.1 codec took a CONNACK with 7 bytes after its two
/// fields as a CONNACK, and re-encoded it in 4 bytes.
#[test]
fn client_rejects_v3_packets_a_server_cannot_send() {
    for level in [ProtocolLevel::V31, ProtocolLevel::V311] {
        for bytes in [
            &[0x20, 9, 0, 0, 80, 158, 0, 1, 112, 2, 0][..],
            &[0x20, 3, 0, 0, 0],
            &[0x20, 1, 0],
            &[0xB0, 3, 0, 1, 0],
            &[0xB0, 1, 0],
        ] {
            let mut codec = Codec::client(level, TEST_MAX);
            assert_eq!(
                decode_all(&mut codec, bytes),
                Err(CodecError::InvalidLength),
                "{bytes:?} ({level})"
            );
        }
        let ok = decode_all(
            &mut Codec::client(level, TEST_MAX),
            &[0x20, 2, 0, 0, 0xB0, 2, 0, 1],
        );
        assert_eq!(ok.map(|p| p.len()), Ok(2), "{level}");
        // Also found by it: MQTT 3 has no DISCONNECT from the server (the encoder writes none), so a client
        // refuses one instead of decoding a packet that cannot round-trip.
        let mut codec = Codec::client(level, TEST_MAX);
        assert_eq!(
            decode_all(&mut codec, &[0xE0, 0]),
            Err(CodecError::UnexpectedPacket),
            "{level}"
        );
    }
    let v5 = decode_all(&mut Codec::client(ProtocolLevel::V5, TEST_MAX), &[0xE0, 0]);
    assert!(
        matches!(v5.as_deref(), Ok([Packet::Disconnect(_)])),
        "{v5:?}"
    );
    // And: a refusing CONNACK that says "session present" [MQTT-3.2.2-4], [MQTT-3.2.2-6]; a reserved MQTT 3
    // return code.
    for (level, bytes) in [
        (ProtocolLevel::V31, &[0x20, 2, 1, 4][..]),
        (ProtocolLevel::V311, &[0x20, 2, 1, 5]),
        (ProtocolLevel::V31, &[0x20, 2, 0, 6]),
        (ProtocolLevel::V311, &[0x20, 2, 0, 0xFF]),
        (ProtocolLevel::V5, &[0x20, 3, 1, 0x86, 0]),
    ] {
        let mut codec = Codec::client(level, TEST_MAX);
        assert_eq!(
            decode_all(&mut codec, bytes),
            Err(CodecError::Malformed),
            "{level}"
        );
        let mut accepted = bytes.to_vec();
        accepted[2] = 0;
        if !level.is_v5() {
            accepted[3] = accepted[3].min(5);
        }
        let ok = decode_all(&mut Codec::client(level, TEST_MAX), &accepted);
        assert!(
            matches!(ok.as_deref(), Ok([Packet::ConnectAck(_)])),
            "{ok:?}"
        );
    }
}

#[test]
fn every_error_has_a_reason_and_a_code() {
    let mut seen = std::collections::HashSet::new();
    for (_, _, e) in connect_cases() {
        seen.insert(e);
    }
    for (_, _, _, e) in packet_cases() {
        seen.insert(e);
    }
    for e in seen {
        let reason = e.reason();
        assert!(
            !reason.is_empty()
                && reason
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "{reason}"
        );
        assert!(e.v5_disconnect_reason() >= 0x80, "{e:?}");
    }
    assert_eq!(CodecError::PacketTooLarge.v5_disconnect_reason(), 0x95);
    assert_eq!(CodecError::Malformed.v5_disconnect_reason(), 0x81);
    assert_eq!(CodecError::TopicNameTooDeep.v5_disconnect_reason(), 0x90);
    assert_eq!(CodecError::TopicFilterTooDeep.v5_disconnect_reason(), 0x8F);
    assert_eq!(CodecError::TopicNameTooDeep.reason(), "topic_too_deep");
    assert_eq!(CodecError::TopicFilterTooDeep.reason(), "topic_too_deep");
    assert_eq!(
        CodecError::UnsupportedProtocolLevel.reason(),
        "unsupported_protocol"
    );
}
