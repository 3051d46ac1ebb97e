//! The load generator's own minimal MQTT 3.1.1/5.0 client codec: encodes what a load client sends (CONNECT,
//! SUBSCRIBE, PUBLISH QoS 0/1, PUBACK, PINGREQ, DISCONNECT) and decodes what it receives with a borrowing streaming
//! parser, so the hot path allocates nothing per message. Kept independent of the broker's codec on purpose: the
//! generator is a second implementation, not the server's codec talking to itself.

use bytes::{BufMut, BytesMut};

/// Largest packet the generator accepts from a server: the benchmarks use small payloads, so anything bigger is a bug.
pub const MAX_INBOUND_PACKET: usize = 1024 * 1024;

/// MQTT protocol version the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    #[value(name = "3")]
    #[serde(rename = "3.1.1")]
    V311,
    /// MQTT 5.0 (protocol level 5).
    #[value(name = "5")]
    #[serde(rename = "5")]
    V5,
}

impl Version {
    fn level(self) -> u8 {
        match self {
            Version::V311 => 4,
            Version::V5 => 5,
        }
    }
}

/// Why a server's bytes could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The remaining-length varint is longer than four bytes.
    #[error("malformed remaining length")]
    BadLength,
    /// The packet announces more than [`MAX_INBOUND_PACKET`] bytes.
    #[error("packet too large")]
    TooLarge,
    /// A packet's body is shorter than its fields.
    #[error("truncated packet body")]
    Truncated,
}

/// A decoded server packet, borrowing from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    /// CONNACK: `code` is the v3 return code or the v5 reason code (0 = accepted).
    ConnAck { session_present: bool, code: u8 },
    /// SUBACK with the first granted QoS / reason code.
    SubAck { packet_id: u16, code: u8 },
    /// PUBLISH; `packet_id` is set for QoS 1/2.
    Publish {
        qos: u8,
        packet_id: Option<u16>,
        payload: &'a [u8],
    },
    /// PUBACK.
    PubAck { packet_id: u16 },
    /// PINGRESP.
    PingResp,
    /// DISCONNECT from the server (v5), with its reason code.
    Disconnect { code: u8 },
    /// Any other packet type (upper nibble of the first byte).
    Other(u8),
}

fn put_varint(buf: &mut BytesMut, mut n: usize) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if n == 0 {
            break;
        }
    }
}

fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

fn put_str(buf: &mut BytesMut, s: &str) {
    // Every string the generator sends is short (client IDs, topics), far below the 64 KiB field limit.
    buf.put_u16(s.len() as u16);
    buf.put_slice(s.as_bytes());
}

/// Appends a CONNECT without credentials or will: clean start when `persistent` is `None`, else resuming (or
/// starting) a session that outlives the connection by that many seconds (MQTT 5 Session Expiry Interval; an
/// MQTT 3.1.1 session with clean session 0 lasts as long as the server keeps it).
pub fn encode_connect_session(
    buf: &mut BytesMut,
    version: Version,
    client_id: &str,
    keep_alive: u16,
    persistent: Option<u32>,
) {
    let v5 = version == Version::V5;
    let expiry = persistent.filter(|_| v5);
    let props = if v5 { 1 + expiry.map_or(0, |_| 5) } else { 0 };
    let remaining = 6 + 1 + 1 + 2 + props + 2 + client_id.len();
    buf.put_u8(0x10);
    put_varint(buf, remaining);
    put_str(buf, "MQTT");
    buf.put_u8(version.level());
    // clean session / clean start
    buf.put_u8(if persistent.is_some() { 0x00 } else { 0x02 });
    buf.put_u16(keep_alive);
    if v5 {
        match expiry {
            Some(secs) => {
                buf.put_u8(5);
                buf.put_u8(0x11); // Session Expiry Interval
                buf.put_u32(secs);
            }
            None => buf.put_u8(0), // no properties
        }
    }
    put_str(buf, client_id);
}

/// Appends a SUBSCRIBE for one filter at `qos`.
pub fn encode_subscribe(
    buf: &mut BytesMut,
    version: Version,
    packet_id: u16,
    filter: &str,
    qos: u8,
) {
    let props = usize::from(version == Version::V5);
    let remaining = 2 + props + 2 + filter.len() + 1;
    buf.put_u8(0x82);
    put_varint(buf, remaining);
    buf.put_u16(packet_id);
    if version == Version::V5 {
        buf.put_u8(0);
    }
    put_str(buf, filter);
    buf.put_u8(qos & 0x03);
}

/// Appends a PUBLISH; `packet_id` is written only for QoS > 0. `fill` writes exactly `payload_len` bytes.
pub fn encode_publish(
    buf: &mut BytesMut,
    version: Version,
    topic: &str,
    qos: u8,
    packet_id: u16,
    payload_len: usize,
    fill: impl FnOnce(&mut BytesMut),
) {
    let props = usize::from(version == Version::V5);
    let id = if qos > 0 { 2 } else { 0 };
    let remaining = 2 + topic.len() + id + props + payload_len;
    buf.reserve(1 + varint_len(remaining) + remaining);
    buf.put_u8(0x30 | ((qos & 0x03) << 1));
    put_varint(buf, remaining);
    put_str(buf, topic);
    if qos > 0 {
        buf.put_u16(packet_id);
    }
    if version == Version::V5 {
        buf.put_u8(0);
    }
    let before = buf.len();
    fill(buf);
    debug_assert_eq!(buf.len() - before, payload_len);
}

/// Appends a PUBACK (v5: the short form, reason 0 implied).
pub fn encode_puback(buf: &mut BytesMut, packet_id: u16) {
    buf.put_u8(0x40);
    buf.put_u8(0x02);
    buf.put_u16(packet_id);
}

/// Appends a PINGREQ.
pub fn encode_pingreq(buf: &mut BytesMut) {
    buf.put_slice(&[0xC0, 0x00]);
}

/// Appends a DISCONNECT (v5: the short form, normal disconnection).
pub fn encode_disconnect(buf: &mut BytesMut) {
    buf.put_slice(&[0xE0, 0x00]);
}

/// Decodes one packet from the start of `buf`. `Ok(None)` = need more bytes; otherwise the packet and the number of
/// bytes it used.
pub fn decode(buf: &[u8], version: Version) -> Result<Option<(Packet<'_>, usize)>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut remaining = 0usize;
    let mut shift = 0;
    let mut at = 1;
    loop {
        let Some(&byte) = buf.get(at) else {
            return Ok(None);
        };
        at += 1;
        remaining |= usize::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if at > 4 {
            return Err(DecodeError::BadLength);
        }
    }
    if remaining > MAX_INBOUND_PACKET {
        return Err(DecodeError::TooLarge);
    }
    let total = at + remaining;
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[at..total];
    let u16_at = |i: usize| -> Result<u16, DecodeError> {
        match body.get(i..i + 2) {
            Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
            None => Err(DecodeError::Truncated),
        }
    };
    let packet = match first >> 4 {
        2 => {
            let flags = *body.first().ok_or(DecodeError::Truncated)?;
            let code = *body.get(1).ok_or(DecodeError::Truncated)?;
            Packet::ConnAck {
                session_present: flags & 1 == 1,
                code,
            }
        }
        9 => {
            let packet_id = u16_at(0)?;
            let mut i = 2;
            if version == Version::V5 {
                let (props, used) = read_varint(&body[i..])?;
                i += used + props;
            }
            let code = *body.get(i).ok_or(DecodeError::Truncated)?;
            Packet::SubAck { packet_id, code }
        }
        3 => {
            let qos = (first >> 1) & 0x03;
            let topic_len = usize::from(u16_at(0)?);
            let mut i = 2 + topic_len;
            let packet_id = if qos > 0 {
                let id = u16_at(i)?;
                i += 2;
                Some(id)
            } else {
                None
            };
            if version == Version::V5 {
                let (props, used) = read_varint(body.get(i..).ok_or(DecodeError::Truncated)?)?;
                i += used + props;
            }
            let payload = body.get(i..).ok_or(DecodeError::Truncated)?;
            Packet::Publish {
                qos,
                packet_id,
                payload,
            }
        }
        4 => Packet::PubAck {
            packet_id: u16_at(0)?,
        },
        13 => Packet::PingResp,
        14 => Packet::Disconnect {
            code: body.first().copied().unwrap_or(0),
        },
        other => Packet::Other(other),
    };
    Ok(Some((packet, total)))
}

fn read_varint(buf: &[u8]) -> Result<(usize, usize), DecodeError> {
    let mut value = 0usize;
    for (i, &byte) in buf.iter().enumerate().take(4) {
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(if buf.len() < 4 {
        DecodeError::Truncated
    } else {
        DecodeError::BadLength
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING)
mod tests {
    use super::*;

    #[test]
    fn connect_v311_bytes() {
        let mut b = BytesMut::new();
        encode_connect_session(&mut b, Version::V311, "c1", 60, None);
        assert_eq!(
            &b[..],
            &[
                0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 2, b'c', b'1'
            ]
        );
    }

    #[test]
    fn connect_v5_has_empty_properties() {
        let mut b = BytesMut::new();
        encode_connect_session(&mut b, Version::V5, "c", 300, None);
        assert_eq!(
            &b[..],
            &[
                0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 1, 44, 0, 0, 1, b'c'
            ]
        );
    }

    #[test]
    fn subscribe_bytes() {
        let mut b = BytesMut::new();
        encode_subscribe(&mut b, Version::V311, 7, "a/+", 1);
        assert_eq!(&b[..], &[0x82, 8, 0, 7, 0, 3, b'a', b'/', b'+', 1]);
        let mut b = BytesMut::new();
        encode_subscribe(&mut b, Version::V5, 7, "a", 0);
        assert_eq!(&b[..], &[0x82, 7, 0, 7, 0, 0, 1, b'a', 0]);
    }

    #[test]
    fn publish_round_trips_through_decode() {
        for version in [Version::V311, Version::V5] {
            for qos in [0u8, 1] {
                let mut b = BytesMut::new();
                encode_publish(&mut b, version, "t/1", qos, 42, 200, |b| {
                    b.put_bytes(9, 200)
                });
                let (packet, used) = decode(&b, version).unwrap().unwrap();
                assert_eq!(used, b.len());
                let want_id = (qos > 0).then_some(42);
                assert_eq!(
                    packet,
                    Packet::Publish {
                        qos,
                        packet_id: want_id,
                        payload: &[9; 200]
                    }
                );
            }
        }
    }

    #[test]
    fn decode_waits_for_every_prefix() {
        let mut b = BytesMut::new();
        encode_publish(&mut b, Version::V5, "topic", 1, 1, 300, |b| {
            b.put_bytes(1, 300)
        });
        for cut in 0..b.len() {
            assert_eq!(decode(&b[..cut], Version::V5), Ok(None), "prefix {cut}");
        }
    }

    #[test]
    fn decode_acks() {
        assert_eq!(
            decode(&[0x20, 2, 1, 0], Version::V311).unwrap(),
            Some((
                Packet::ConnAck {
                    session_present: true,
                    code: 0
                },
                4
            ))
        );
        // v5 CONNACK with properties.
        assert_eq!(
            decode(&[0x20, 5, 0, 0x87, 2, 0x21, 0], Version::V5)
                .unwrap()
                .map(|p| p.0),
            Some(Packet::ConnAck {
                session_present: false,
                code: 0x87
            })
        );
        assert_eq!(
            decode(&[0x90, 4, 0, 3, 0, 1], Version::V5)
                .unwrap()
                .map(|p| p.0),
            Some(Packet::SubAck {
                packet_id: 3,
                code: 1
            })
        );
        assert_eq!(
            decode(&[0x90, 3, 0, 3, 0x80], Version::V311)
                .unwrap()
                .map(|p| p.0),
            Some(Packet::SubAck {
                packet_id: 3,
                code: 0x80
            })
        );
        assert_eq!(
            decode(&[0x40, 2, 1, 2], Version::V311)
                .unwrap()
                .map(|p| p.0),
            Some(Packet::PubAck { packet_id: 258 })
        );
        assert_eq!(
            decode(&[0x40, 3, 1, 2, 0x10], Version::V5)
                .unwrap()
                .map(|p| p.0),
            Some(Packet::PubAck { packet_id: 258 })
        );
        assert_eq!(
            decode(&[0xD0, 0], Version::V5).unwrap().map(|p| p.0),
            Some(Packet::PingResp)
        );
    }

    #[test]
    fn decode_rejects_bad_lengths() {
        assert_eq!(
            decode(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 1], Version::V5),
            Err(DecodeError::BadLength)
        );
        assert_eq!(
            decode(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F], Version::V5),
            Err(DecodeError::TooLarge)
        );
        assert_eq!(
            decode(&[0x40, 1, 0], Version::V5),
            Err(DecodeError::Truncated)
        );
    }

    #[test]
    fn small_packets() {
        let mut b = BytesMut::new();
        encode_puback(&mut b, 513);
        encode_pingreq(&mut b);
        encode_disconnect(&mut b);
        assert_eq!(&b[..], &[0x40, 2, 2, 1, 0xC0, 0, 0xE0, 0]);
    }
}
