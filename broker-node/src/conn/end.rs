//! How a connection ends — [`End`], one value for every way, before CONNECT completed or after — and what each
//! way means: the `reason` label of the log event and the metrics, the v5 DISCONNECT we send when we are the
//! side closing, whether the will is published.

use fleetgate_protocol::mqtt::{CodecError, ConnectAckReason, DisconnectReasonCode};

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The PROXY header was refused (logged and counted with its reason where it was read).
    ProxyRejected,
    /// No CONNECT within `connect_timeout`.
    ConnectTimeout,
    /// The CONNECT was refused with this CONNACK reason.
    Refused(ConnectAckReason),
    /// The client sent DISCONNECT; `with_will` for reason 0x04; `expiry` from its properties.
    Graceful {
        /// DISCONNECT with Will Message (0x04).
        with_will: bool,
        /// Session expiry update.
        expiry: Option<u32>,
    },
    /// The socket closed or failed without DISCONNECT.
    Ungraceful,
    /// Nothing received for 1.5 × keep alive.
    KeepAliveTimeout,
    /// Another connection with the same client ID took the session.
    Takeover,
    /// The session moved to another node (this one is draining): v5 DISCONNECT 0x9C, use another server.
    Moved,
    /// The node is shutting down.
    ServerShutdown,
    /// A packet above our maximum packet size.
    TooLarge,
    /// A 3.1.1 PUBLISH the ACL denied, with `[auth] v3_disconnect_on_denied_publish` on.
    NotAuthorized,
    /// The session store cannot take a QoS 1/2 PUBLISH (full, or failed): a 3.1.1 client has no negative
    /// acknowledgement, so it is closed without one and sends the message again later; a v5 connection whose
    /// acknowledgements wait for a failed store ends too.
    StoreUnavailable,
    /// A protocol violation.
    Protocol(Violation),
}

/// A protocol violation that ends the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Violation {
    /// The codec refused a packet.
    Codec(CodecError),
    /// A PUBLISH with an empty topic and no topic alias.
    EmptyTopic,
    /// A topic alias above our Topic Alias Maximum.
    TopicAliasInvalid,
    /// A PUBLISH naming a topic alias the client never set.
    UnknownTopicAlias,
    /// More QoS 2 PUBLISHes awaiting PUBREL than our Receive Maximum.
    ReceiveMaximumExceeded,
    /// A v5 DISCONNECT raising a session expiry of 0 [MQTT-3.14.2-2].
    SessionExpiryAfterZero,
    /// A second CONNECT.
    SecondConnect,
    /// An AUTH packet without enhanced authentication negotiated.
    AuthNotNegotiated,
    /// A packet a client never sends (CONNACK, SUBACK, ...).
    UnexpectedPacket,
    /// A QoS 1/2 PUBLISH without a packet identifier.
    MissingPacketId,
    /// A topic name longer than `[limits] max_topic_length`.
    TopicTooLong,
}

impl Violation {
    /// The `detail` field of the disconnect log event.
    pub(crate) fn detail(self) -> &'static str {
        match self {
            Violation::Codec(e) => e.reason(),
            Violation::EmptyTopic => "empty_topic",
            Violation::TopicAliasInvalid => "topic_alias_invalid",
            Violation::UnknownTopicAlias => "unknown_topic_alias",
            Violation::ReceiveMaximumExceeded => "receive_maximum_exceeded",
            Violation::SessionExpiryAfterZero => "session_expiry_after_zero",
            Violation::SecondConnect => "second_connect",
            Violation::AuthNotNegotiated => "auth_not_negotiated",
            Violation::UnexpectedPacket => "unexpected_packet",
            Violation::MissingPacketId => "missing_packet_id",
            Violation::TopicTooLong => "topic_too_long",
        }
    }

    /// The v5 DISCONNECT reason code we send for it.
    fn disconnect_code(self) -> DisconnectReasonCode {
        match self {
            Violation::Codec(e) => DisconnectReasonCode::try_from(e.v5_disconnect_reason())
                .unwrap_or(DisconnectReasonCode::ProtocolError),
            Violation::TopicAliasInvalid => DisconnectReasonCode::TopicAliasInvalid,
            Violation::ReceiveMaximumExceeded => DisconnectReasonCode::ReceiveMaximumExceeded,
            Violation::TopicTooLong => DisconnectReasonCode::TopicNameInvalid,
            _ => DisconnectReasonCode::ProtocolError,
        }
    }
}

impl End {
    /// The end a codec error means.
    pub(crate) fn codec(e: CodecError) -> End {
        match e {
            CodecError::PacketTooLarge => End::TooLarge,
            CodecError::Io(_) => End::Ungraceful,
            e => End::Protocol(Violation::Codec(e)),
        }
    }

    /// The `reason` of the disconnect log event and metric.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            End::ProxyRejected => "proxy_rejected",
            End::ConnectTimeout => "connect_timeout",
            End::Refused(_) if self.refused_by_auth() => "auth",
            End::Refused(_) => "refused",
            End::Graceful { .. } => "graceful",
            End::Ungraceful => "ungraceful",
            End::KeepAliveTimeout => "keepalive_timeout",
            End::Takeover => "takeover",
            End::Moved => "server_moved",
            End::ServerShutdown => "server_shutdown",
            End::TooLarge => "too_large",
            End::NotAuthorized => "not_authorized",
            End::StoreUnavailable => "store_unavailable",
            End::Protocol(_) => "protocol_error",
        }
    }

    /// The `result` of `fleetgate_connections_total` for a connection that ended before CONNACK.
    pub(crate) fn connection_result(self) -> &'static str {
        match self {
            End::Refused(_) => "refused",
            end => end.reason(),
        }
    }

    /// Whether it counts in `fleetgate_disconnects_total` when it ends a connection before CONNACK (a refused
    /// PROXY header and a CONNACK refusal for any reason but authentication do not).
    pub(crate) fn counts_as_early_disconnect(self) -> bool {
        match self {
            End::ProxyRejected => false,
            End::Refused(_) => self.refused_by_auth(),
            _ => true,
        }
    }

    /// A CONNACK refusal of authentication or authorization.
    fn refused_by_auth(self) -> bool {
        matches!(
            self,
            End::Refused(ConnectAckReason::BadUserNameOrPassword | ConnectAckReason::NotAuthorized)
        )
    }

    /// The `detail` field of the disconnect log event: what the protocol violation was.
    pub(crate) fn detail(self) -> Option<&'static str> {
        match self {
            End::Protocol(v) => Some(v.detail()),
            _ => None,
        }
    }

    /// The v5 DISCONNECT reason code we send, when we are the side closing an established connection.
    pub(crate) fn disconnect_code(self) -> Option<DisconnectReasonCode> {
        match self {
            End::Graceful { .. }
            | End::Ungraceful
            | End::ProxyRejected
            | End::ConnectTimeout
            | End::Refused(_) => None,
            End::KeepAliveTimeout => Some(DisconnectReasonCode::KeepAliveTimeout),
            End::Takeover => Some(DisconnectReasonCode::SessionTakenOver),
            End::Moved => Some(DisconnectReasonCode::UseAnotherServer),
            End::ServerShutdown => Some(DisconnectReasonCode::ServerShuttingDown),
            End::TooLarge => Some(DisconnectReasonCode::PacketTooLarge),
            End::NotAuthorized => Some(DisconnectReasonCode::NotAuthorized),
            End::StoreUnavailable => Some(DisconnectReasonCode::QuotaExceeded),
            End::Protocol(v) => Some(v.disconnect_code()),
        }
    }

    /// Whether the will is published: not after DISCONNECT 0x00, not at shutdown (the node is going away, and
    /// takeover handles the will itself).
    pub(crate) fn publishes_will(self) -> bool {
        match self {
            End::Graceful { with_will, .. } => with_will,
            End::ServerShutdown | End::Takeover | End::Moved => false,
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_codes() {
        let refused_auth = End::Refused(ConnectAckReason::NotAuthorized);
        let refused = End::Refused(ConnectAckReason::UseAnotherServer);
        assert_eq!(
            (refused_auth.reason(), refused_auth.connection_result()),
            ("auth", "refused")
        );
        assert!(refused_auth.counts_as_early_disconnect());
        assert_eq!(
            (refused.reason(), refused.connection_result()),
            ("refused", "refused")
        );
        assert!(!refused.counts_as_early_disconnect());
        assert!(!End::ProxyRejected.counts_as_early_disconnect());
        assert_eq!(End::codec(CodecError::PacketTooLarge), End::TooLarge);
        let alias = End::Protocol(Violation::TopicAliasInvalid);
        assert_eq!(
            alias.disconnect_code(),
            Some(DisconnectReasonCode::TopicAliasInvalid)
        );
        assert_eq!(alias.detail(), Some("topic_alias_invalid"));
        let codec = End::codec(CodecError::Malformed);
        assert_eq!(codec.reason(), "protocol_error");
        assert_eq!(codec.detail(), Some("malformed"));
    }
}
