//! Codec errors: one small `Copy` enum for everything the MQTT codec can refuse, with a stable label for logs and
//! metrics and the MQTT 5 reason code the broker sends (CONNACK for a bad CONNECT, DISCONNECT afterwards).

use rmqtt_codec::error::{DecodeError, EncodeError};

use super::topic::TopicError;

/// Why the codec refused to decode (or encode) a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum CodecError {
    /// Structurally invalid packet (bad lengths, bad remaining-length varint, bad enum value, ...).
    #[error("malformed packet")]
    Malformed,
    /// Inbound packet announced a size above our maximum packet size.
    #[error("packet too large")]
    PacketTooLarge,
    /// Outbound packet is bigger than the peer's Maximum Packet Size; nothing was written.
    #[error("outbound packet larger than the client's maximum packet size")]
    OutboundTooLarge,
    /// The first packet of the connection is not a CONNECT.
    #[error("first packet is not CONNECT")]
    ExpectedConnect,
    /// CONNECT protocol name is neither `MQTT` nor `MQIsdp`.
    #[error("bad protocol name")]
    InvalidProtocolName,
    /// CONNECT protocol level is not 3, 4 or 5 (answer CONNACK 0x01 / 0x84).
    #[error("unsupported protocol level")]
    UnsupportedProtocolLevel,
    /// Fixed-header flags or CONNECT reserved flag not as the spec requires, or a reserved packet type.
    #[error("reserved flags set")]
    ReservedFlags,
    /// Will QoS / Will Retain set without the Will flag.
    #[error("invalid CONNECT flags")]
    InvalidConnectFlags,
    /// MQTT 3.x CONNECT with the password flag but no username flag [MQTT-3.1.2-22].
    #[error("password without username")]
    PasswordWithoutUsername,
    /// Empty client ID with clean session 0.
    #[error("invalid client identifier")]
    InvalidClientId,
    /// QoS 3 in a PUBLISH, will or subscription.
    #[error("invalid QoS")]
    InvalidQos,
    /// U+0000 in a UTF-8 string [MQTT-1.5.3-2].
    #[error("U+0000 in a string")]
    NullChar,
    /// A UTF-8 string field is not valid UTF-8.
    #[error("invalid UTF-8")]
    InvalidUtf8,
    /// `+` or `#` in a PUBLISH or will topic [MQTT-3.3.2-2].
    #[error("wildcard in topic name")]
    WildcardInTopic,
    /// Empty PUBLISH topic (without a topic alias in MQTT 5) or empty will topic.
    #[error("empty topic name")]
    EmptyTopic,
    /// PUBLISH or will topic with more than [`super::topic::MAX_TOPIC_LEVELS`] levels.
    #[error("topic name too deep")]
    TopicNameTooDeep,
    /// SUBSCRIBE/UNSUBSCRIBE filter with more than [`super::topic::MAX_TOPIC_LEVELS`] levels.
    #[error("topic filter too deep")]
    TopicFilterTooDeep,
    /// Topic filter breaks the wildcard rules or is an invalid `$share` filter.
    #[error("invalid topic filter")]
    InvalidTopicFilter,
    /// SUBSCRIBE/UNSUBSCRIBE without any topic filter.
    #[error("no topic filters")]
    NoTopicFilters,
    /// Packet identifier 0 where a non-zero one is required.
    #[error("packet identifier 0")]
    PacketIdZero,
    /// Reserved bits set (or retain handling 3) in SUBSCRIBE options.
    #[error("invalid subscription options")]
    InvalidSubscriptionOptions,
    /// No Local set on a shared subscription [MQTT-3.8.3-4].
    #[error("no local on a shared subscription")]
    NoLocalOnSharedSubscription,
    /// MQTT 5 property identifier unknown or not allowed in this packet.
    #[error("unknown or misplaced property")]
    UnknownProperty,
    /// MQTT 5 property that may appear once appears twice.
    #[error("duplicate property")]
    DuplicateProperty,
    /// MQTT 5 property value not allowed (0 subscription identifier, topic alias or receive maximum, ...).
    #[error("invalid property value")]
    InvalidProperty,
    /// Remaining length not as the packet type requires (e.g. PINGREQ with a body).
    #[error("invalid remaining length")]
    InvalidLength,
    /// A packet only a server sends (CONNACK, SUBACK, UNSUBACK, PINGRESP) arrived at the server.
    #[error("unexpected packet type")]
    UnexpectedPacket,
    /// Encode before the protocol level is known (no CONNECT decoded yet).
    #[error("protocol level not known yet")]
    NoProtocolLevel,
    /// The packet has no representation in the connection's protocol version (AUTH on MQTT 3).
    #[error("packet not supported by this protocol version")]
    NotInProtocolVersion,
    /// The packet could not be encoded (missing packet id, string longer than 65535 bytes, ...).
    #[error("packet cannot be encoded")]
    EncodeFailed,
    /// I/O error from the underlying transport (only produced by `Framed`, never by the codec itself).
    #[error("i/o error: {0}")]
    Io(std::io::ErrorKind),
}

impl CodecError {
    /// Stable snake_case label for logs and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            CodecError::Malformed => "malformed",
            CodecError::PacketTooLarge | CodecError::OutboundTooLarge => "too_large",
            CodecError::ExpectedConnect => "expected_connect",
            CodecError::InvalidProtocolName => "bad_protocol_name",
            CodecError::UnsupportedProtocolLevel => "unsupported_protocol",
            CodecError::ReservedFlags => "reserved_flags",
            CodecError::InvalidConnectFlags => "bad_connect_flags",
            CodecError::PasswordWithoutUsername => "password_without_username",
            CodecError::InvalidClientId => "invalid_client_id",
            CodecError::InvalidQos => "invalid_qos",
            CodecError::NullChar => "null_char",
            CodecError::InvalidUtf8 => "invalid_utf8",
            CodecError::WildcardInTopic => "wildcard_in_topic",
            CodecError::EmptyTopic => "empty_topic",
            CodecError::InvalidTopicFilter => "invalid_topic_filter",
            CodecError::TopicNameTooDeep | CodecError::TopicFilterTooDeep => "topic_too_deep",
            CodecError::NoTopicFilters => "no_topic_filters",
            CodecError::PacketIdZero => "packet_id_zero",
            CodecError::InvalidSubscriptionOptions => "bad_subscription_options",
            CodecError::NoLocalOnSharedSubscription => "no_local_shared",
            CodecError::UnknownProperty => "unknown_property",
            CodecError::DuplicateProperty => "duplicate_property",
            CodecError::InvalidProperty => "invalid_property",
            CodecError::InvalidLength => "bad_length",
            CodecError::UnexpectedPacket => "unexpected_packet",
            CodecError::NoProtocolLevel => "no_protocol_level",
            CodecError::NotInProtocolVersion => "not_in_protocol_version",
            CodecError::EncodeFailed => "encode_failed",
            CodecError::Io(_) => "io",
        }
    }

    /// MQTT 5 reason code to send: in CONNACK when the CONNECT was refused, in DISCONNECT afterwards.
    /// 0x81 malformed, 0x82 protocol error, 0x84 unsupported protocol version, 0x85 client ID not valid,
    /// 0x8F topic filter invalid, 0x90 topic name invalid, 0x95 packet too large, 0x80 otherwise.
    pub fn v5_disconnect_reason(&self) -> u8 {
        match self {
            CodecError::Malformed
            | CodecError::ReservedFlags
            | CodecError::InvalidConnectFlags
            | CodecError::PasswordWithoutUsername
            | CodecError::InvalidQos
            | CodecError::NullChar
            | CodecError::InvalidUtf8
            | CodecError::PacketIdZero
            | CodecError::InvalidSubscriptionOptions
            | CodecError::UnknownProperty
            | CodecError::InvalidLength => 0x81,
            CodecError::ExpectedConnect
            | CodecError::EmptyTopic
            | CodecError::NoTopicFilters
            | CodecError::NoLocalOnSharedSubscription
            | CodecError::DuplicateProperty
            | CodecError::InvalidProperty
            | CodecError::UnexpectedPacket => 0x82,
            CodecError::InvalidProtocolName | CodecError::UnsupportedProtocolLevel => 0x84,
            CodecError::InvalidClientId => 0x85,
            CodecError::InvalidTopicFilter | CodecError::TopicFilterTooDeep => 0x8F,
            CodecError::WildcardInTopic | CodecError::TopicNameTooDeep => 0x90,
            CodecError::PacketTooLarge | CodecError::OutboundTooLarge => 0x95,
            CodecError::NoProtocolLevel
            | CodecError::NotInProtocolVersion
            | CodecError::EncodeFailed
            | CodecError::Io(_) => 0x80,
        }
    }
}

impl From<std::io::Error> for CodecError {
    fn from(e: std::io::Error) -> Self {
        CodecError::Io(e.kind())
    }
}

impl From<TopicError> for CodecError {
    fn from(e: TopicError) -> Self {
        match e {
            TopicError::Empty => CodecError::EmptyTopic,
            TopicError::TooLong => CodecError::Malformed,
            TopicError::NullChar => CodecError::NullChar,
            TopicError::TooDeep => CodecError::TopicNameTooDeep,
            TopicError::WildcardInName => CodecError::WildcardInTopic,
            TopicError::InvalidWildcard | TopicError::InvalidShare => {
                CodecError::InvalidTopicFilter
            }
        }
    }
}

/// Maps rmqtt-codec's decode error onto ours (rmqtt types never leave this module).
pub(crate) fn from_decode(e: DecodeError) -> CodecError {
    match e {
        DecodeError::InvalidProtocol => CodecError::InvalidProtocolName,
        DecodeError::UnsupportedProtocolLevel => CodecError::UnsupportedProtocolLevel,
        DecodeError::ConnectReservedFlagSet => CodecError::ReservedFlags,
        DecodeError::InvalidConnectFlags => CodecError::InvalidConnectFlags,
        DecodeError::InvalidClientId => CodecError::InvalidClientId,
        DecodeError::PacketIdRequired => CodecError::PacketIdZero,
        DecodeError::MaxSizeExceeded { .. } => CodecError::PacketTooLarge,
        DecodeError::InvalidTopicFilter => CodecError::InvalidTopicFilter,
        DecodeError::InvalidTopicName => CodecError::EmptyTopic,
        DecodeError::Utf8Error => CodecError::InvalidUtf8,
        DecodeError::UnsupportedPacketType => CodecError::ReservedFlags,
        DecodeError::InvalidLength
        | DecodeError::MalformedPacket
        | DecodeError::ConnAckReservedFlagSet
        | DecodeError::Io(_) => CodecError::Malformed,
    }
}

/// Maps rmqtt-codec's encode error onto ours.
pub(crate) fn from_encode(e: EncodeError) -> CodecError {
    match e {
        EncodeError::OverMaxPacketSize { .. } => CodecError::OutboundTooLarge,
        EncodeError::UnsupportedVersion => CodecError::NotInProtocolVersion,
        EncodeError::InvalidLength
        | EncodeError::MalformedPacket
        | EncodeError::PacketIdRequired
        | EncodeError::Io(_) => CodecError::EncodeFailed,
    }
}
