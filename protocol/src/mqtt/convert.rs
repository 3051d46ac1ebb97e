//! MQTT 3.1/3.1.1 ⇄ MQTT 5 packet model conversion, used by the codec right after a v3 decode and right before
//! a v3 encode, so the broker only ever sees the MQTT 5 model.
//!
//! Decode (v3 → v5): clean session → clean start, session expiry 0 when clean, `u32::MAX` (never expires) when
//! not; wills, subscriptions and acks get the MQTT 5 defaults (no properties, no_local = false,
//! retain_as_published = false, retain handling 0, reason code Success). PUBLISH keeps an empty property set.
//!
//! Encode (v5 → v3): properties dropped; CONNACK reason → v3 return code (0x84→1, 0x85→2, 0x86→4, 0x87 and
//! 0x80 unspecified→5, everything else→3 server unavailable); SUBACK failures (≥0x80)→0x80; PUBACK/PUBREC/
//! PUBREL/PUBCOMP reason codes dropped. DISCONNECT has no server-to-client form in MQTT 3 and yields `None`
//! (the codec writes nothing); AUTH yields an error.

use rmqtt_codec::types::Protocol;
use rmqtt_codec::v3;

use super::{
    CodecError, Connect, ConnectAck, ConnectAckReason, LastWill, Packet, ProtocolLevel, PublishAck,
    PublishAck2, PublishProperties, QoS, RetainHandling, Subscribe, SubscribeAck,
    SubscribeAckReason, SubscriptionOptions, Unsubscribe, UnsubscribeAck,
};

/// Session expiry given to an MQTT 3 session with clean session 0: such a session never expires.
pub const V3_PERSISTENT_SESSION_EXPIRY: u32 = u32::MAX;

/// Converts a decoded MQTT 3 packet to the MQTT 5 model.
pub fn v3_to_v5(packet: v3::Packet) -> Packet {
    match packet {
        v3::Packet::Connect(c) => {
            let c = *c;
            Packet::Connect(Box::new(Connect {
                clean_start: c.clean_session,
                keep_alive: c.keep_alive,
                session_expiry_interval_secs: if c.clean_session {
                    0
                } else {
                    V3_PERSISTENT_SESSION_EXPIRY
                },
                last_will: c.last_will.map(|w| LastWill {
                    qos: w.qos,
                    retain: w.retain,
                    topic: w.topic,
                    message: w.message,
                    will_delay_interval_sec: None,
                    correlation_data: None,
                    message_expiry_interval: None,
                    content_type: None,
                    user_properties: Vec::new(),
                    is_utf8_payload: None,
                    response_topic: None,
                }),
                client_id: c.client_id,
                username: c.username,
                password: c.password,
                cert: c.cert,
                ..Connect::default()
            }))
        }
        v3::Packet::ConnectAck(ack) => Packet::ConnectAck(Box::new(ConnectAck {
            session_present: ack.session_present,
            reason_code: connack_v3_to_v5(ack.return_code),
            ..ConnectAck::default()
        })),
        v3::Packet::Publish(mut p) => {
            p.properties = Some(PublishProperties::default());
            Packet::Publish(p)
        }
        v3::Packet::PublishAck { packet_id } => Packet::PublishAck(PublishAck {
            packet_id,
            ..PublishAck::default()
        }),
        v3::Packet::PublishReceived { packet_id } => Packet::PublishReceived(PublishAck {
            packet_id,
            ..PublishAck::default()
        }),
        v3::Packet::PublishRelease { packet_id } => Packet::PublishRelease(PublishAck2 {
            packet_id,
            ..PublishAck2::default()
        }),
        v3::Packet::PublishComplete { packet_id } => Packet::PublishComplete(PublishAck2 {
            packet_id,
            ..PublishAck2::default()
        }),
        v3::Packet::Subscribe {
            packet_id,
            topic_filters,
        } => Packet::Subscribe(Subscribe {
            packet_id,
            id: None,
            user_properties: Vec::new(),
            topic_filters: topic_filters
                .into_iter()
                .map(|(filter, qos)| {
                    let opts = SubscriptionOptions {
                        qos,
                        no_local: false,
                        retain_as_published: false,
                        retain_handling: RetainHandling::AtSubscribe,
                    };
                    (filter, opts)
                })
                .collect(),
        }),
        v3::Packet::SubscribeAck { packet_id, status } => Packet::SubscribeAck(SubscribeAck {
            packet_id,
            properties: Vec::new(),
            reason_string: None,
            status: status
                .into_iter()
                .map(|s| match s {
                    v3::SubscribeReturnCode::Success(QoS::AtMostOnce) => {
                        SubscribeAckReason::GrantedQos0
                    }
                    v3::SubscribeReturnCode::Success(QoS::AtLeastOnce) => {
                        SubscribeAckReason::GrantedQos1
                    }
                    v3::SubscribeReturnCode::Success(QoS::ExactlyOnce) => {
                        SubscribeAckReason::GrantedQos2
                    }
                    v3::SubscribeReturnCode::Failure => SubscribeAckReason::UnspecifiedError,
                })
                .collect(),
        }),
        v3::Packet::Unsubscribe {
            packet_id,
            topic_filters,
        } => Packet::Unsubscribe(Unsubscribe {
            packet_id,
            user_properties: Vec::new(),
            topic_filters,
        }),
        v3::Packet::UnsubscribeAck { packet_id } => Packet::UnsubscribeAck(UnsubscribeAck {
            packet_id,
            properties: Vec::new(),
            reason_string: None,
            status: Vec::new(),
        }),
        v3::Packet::PingRequest => Packet::PingRequest,
        v3::Packet::PingResponse => Packet::PingResponse,
        v3::Packet::Disconnect => Packet::Disconnect(super::Disconnect::default()),
    }
}

/// Converts an MQTT 5 model packet to MQTT 3 for encoding; `Ok(None)` means "nothing to send" (a server's
/// DISCONNECT). `from_client` is true when a client sends it (then DISCONNECT exists in MQTT 3).
pub fn v5_to_v3(
    packet: Packet,
    level: ProtocolLevel,
    from_client: bool,
) -> Result<Option<v3::Packet>, CodecError> {
    let p = match packet {
        Packet::Connect(c) => {
            let c = *c;
            v3::Packet::Connect(Box::new(v3::Connect {
                protocol: Protocol(level.as_u8()),
                clean_session: c.clean_start,
                keep_alive: c.keep_alive,
                last_will: c.last_will.map(|w| v3::LastWill {
                    qos: w.qos,
                    retain: w.retain,
                    topic: w.topic,
                    message: w.message,
                }),
                client_id: c.client_id,
                username: c.username,
                password: c.password,
                cert: c.cert,
            }))
        }
        Packet::ConnectAck(ack) => {
            let return_code = connack_v5_to_v3(ack.reason_code);
            v3::Packet::ConnectAck(v3::ConnectAck {
                // [MQTT-3.2.2-4]: session present must be 0 with a non-zero return code.
                session_present: ack.session_present
                    && return_code == v3::ConnectAckReason::ConnectionAccepted,
                return_code,
            })
        }
        Packet::Publish(mut p) => {
            if p.topic.is_empty() {
                // A topic alias without a topic has no MQTT 3 form.
                return Err(CodecError::EncodeFailed);
            }
            p.properties = None;
            v3::Packet::Publish(p)
        }
        Packet::PublishAck(a) => v3::Packet::PublishAck {
            packet_id: a.packet_id,
        },
        Packet::PublishReceived(a) => v3::Packet::PublishReceived {
            packet_id: a.packet_id,
        },
        Packet::PublishRelease(a) => v3::Packet::PublishRelease {
            packet_id: a.packet_id,
        },
        Packet::PublishComplete(a) => v3::Packet::PublishComplete {
            packet_id: a.packet_id,
        },
        Packet::Subscribe(s) => v3::Packet::Subscribe {
            packet_id: s.packet_id,
            topic_filters: s
                .topic_filters
                .into_iter()
                .map(|(f, o)| (f, o.qos))
                .collect(),
        },
        Packet::SubscribeAck(s) => v3::Packet::SubscribeAck {
            packet_id: s.packet_id,
            status: s.status.into_iter().map(suback_v5_to_v3).collect(),
        },
        Packet::Unsubscribe(u) => v3::Packet::Unsubscribe {
            packet_id: u.packet_id,
            topic_filters: u.topic_filters,
        },
        Packet::UnsubscribeAck(u) => v3::Packet::UnsubscribeAck {
            packet_id: u.packet_id,
        },
        Packet::PingRequest => v3::Packet::PingRequest,
        Packet::PingResponse => v3::Packet::PingResponse,
        Packet::Disconnect(_) if from_client => v3::Packet::Disconnect,
        Packet::Disconnect(_) => return Ok(None),
        Packet::Auth(_) => return Err(CodecError::NotInProtocolVersion),
    };
    Ok(Some(p))
}

/// v3 CONNACK return code for an MQTT 5 CONNACK reason code.
pub fn connack_v5_to_v3(reason: ConnectAckReason) -> v3::ConnectAckReason {
    use v3::ConnectAckReason as V3;
    match reason {
        ConnectAckReason::Success => V3::ConnectionAccepted,
        ConnectAckReason::UnsupportedProtocolVersion => V3::UnacceptableProtocolVersion,
        ConnectAckReason::ClientIdentifierNotValid => V3::IdentifierRejected,
        ConnectAckReason::BadUserNameOrPassword => V3::BadUserNameOrPassword,
        ConnectAckReason::NotAuthorized | ConnectAckReason::UnspecifiedError => V3::NotAuthorized,
        _ => V3::ServiceUnavailable,
    }
}

fn connack_v3_to_v5(code: v3::ConnectAckReason) -> ConnectAckReason {
    use v3::ConnectAckReason as V3;
    match code {
        V3::ConnectionAccepted => ConnectAckReason::Success,
        V3::UnacceptableProtocolVersion => ConnectAckReason::UnsupportedProtocolVersion,
        V3::IdentifierRejected => ConnectAckReason::ClientIdentifierNotValid,
        V3::ServiceUnavailable => ConnectAckReason::ServerUnavailable,
        V3::BadUserNameOrPassword => ConnectAckReason::BadUserNameOrPassword,
        V3::NotAuthorized => ConnectAckReason::NotAuthorized,
        V3::Reserved => ConnectAckReason::UnspecifiedError,
    }
}

fn suback_v5_to_v3(reason: SubscribeAckReason) -> v3::SubscribeReturnCode {
    match reason {
        SubscribeAckReason::GrantedQos0 => v3::SubscribeReturnCode::Success(QoS::AtMostOnce),
        SubscribeAckReason::GrantedQos1 => v3::SubscribeReturnCode::Success(QoS::AtLeastOnce),
        SubscribeAckReason::GrantedQos2 => v3::SubscribeReturnCode::Success(QoS::ExactlyOnce),
        _ => v3::SubscribeReturnCode::Failure,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING)
mod tests {
    use super::*;
    use rmqtt_codec::v3::ConnectAckReason as V3;

    #[test]
    fn connack_mapping() {
        let table = [
            (ConnectAckReason::Success, V3::ConnectionAccepted),
            (ConnectAckReason::UnspecifiedError, V3::NotAuthorized),
            (ConnectAckReason::NotAuthorized, V3::NotAuthorized),
            (
                ConnectAckReason::BadUserNameOrPassword,
                V3::BadUserNameOrPassword,
            ),
            (
                ConnectAckReason::ClientIdentifierNotValid,
                V3::IdentifierRejected,
            ),
            (
                ConnectAckReason::UnsupportedProtocolVersion,
                V3::UnacceptableProtocolVersion,
            ),
            (ConnectAckReason::ServerUnavailable, V3::ServiceUnavailable),
            (ConnectAckReason::ServerBusy, V3::ServiceUnavailable),
            (ConnectAckReason::Banned, V3::ServiceUnavailable),
            (ConnectAckReason::MalformedPacket, V3::ServiceUnavailable),
        ];
        for (v5, v3) in table {
            assert_eq!(connack_v5_to_v3(v5), v3, "{v5:?}");
        }
    }

    #[test]
    fn suback_failures_collapse() {
        assert_eq!(
            suback_v5_to_v3(SubscribeAckReason::NotAuthorized),
            v3::SubscribeReturnCode::Failure
        );
        assert_eq!(
            suback_v5_to_v3(SubscribeAckReason::QuotaExceeded),
            v3::SubscribeReturnCode::Failure
        );
        assert_eq!(
            suback_v5_to_v3(SubscribeAckReason::GrantedQos1),
            v3::SubscribeReturnCode::Success(QoS::AtLeastOnce)
        );
    }
}
