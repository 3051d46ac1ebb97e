//! Reading the first CONNECT packet of a connection without consuming it: the load balancer's view of MQTT.
//!
//! The LB buffers the bytes a client sends until [`peek_connect`] says a whole CONNECT is there, learns the client
//! ID (its routing key), then forwards exactly those bytes, unchanged, to the chosen backend. Only what routing and
//! logging need is parsed; the broker's codec does the full validation. When a valid CONNECT cannot be served,
//! [`connack_refusal`] builds the CONNACK that tells the client so instead of a bare reset.

use crate::mqtt::{VarInt, read_varint as read_mqtt_varint};

/// The fixed-header byte of a CONNECT: packet type 1, flags 0 ([MQTT-2.2.2-1]).
const CONNECT_BYTE: u8 = 0x10;

/// What routing and logging need from a client's CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectSummary {
    /// Length of the whole packet, fixed header included: the bytes to forward before relaying.
    pub packet_len: usize,
    /// 3 (MQTT 3.1), 4 (3.1.1) or 5 (5.0).
    pub protocol_level: u8,
    /// The client identifier as sent (may be empty).
    pub client_id: String,
    /// The user name, when the user name flag is set.
    pub username: Option<String>,
    /// Keep-alive in seconds (0 = none).
    pub keep_alive: u16,
    /// Clean session (3.x) / clean start (5.0) flag.
    pub clean_start: bool,
}

/// Why the first bytes of a connection are not a CONNECT the LB accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PeekError {
    /// The first byte is not a CONNECT's, or the protocol name is not `MQTT`/`MQIsdp`.
    #[error("not an MQTT CONNECT")]
    NotMqtt,
    /// The CONNECT breaks the packet format.
    #[error("malformed CONNECT")]
    Malformed,
    /// The CONNECT announces more bytes than the configured maximum (detected from the fixed header).
    #[error("CONNECT larger than allowed")]
    TooLarge,
}

impl PeekError {
    /// A short label for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            PeekError::NotMqtt => "not_mqtt",
            PeekError::Malformed => "malformed",
            PeekError::TooLarge => "too_large",
        }
    }
}

/// Why the LB turns away a client whose CONNECT was valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No backend could take the connection.
    ServerUnavailable,
    /// An admission limit was reached.
    ServerBusy,
}

/// Parses the CONNECT at the start of `buf`.
///
/// `Ok(None)` means more bytes are needed (every strict prefix of a valid CONNECT gives it, even a partial
/// remaining-length). `max_len` bounds the whole packet: a larger announced length is [`PeekError::TooLarge`]
/// as soon as the fixed header is readable, so the caller never buffers it. Errors in the part already received
/// (first byte, protocol name) are reported before the rest arrives.
pub fn peek_connect(buf: &[u8], max_len: usize) -> Result<Option<ConnectSummary>, PeekError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first != CONNECT_BYTE {
        return Err(PeekError::NotMqtt);
    }
    let Some((remaining, varint_len)) = read_varint(&buf[1..])? else {
        return Ok(None);
    };
    let header_len = 1 + varint_len;
    let packet_len = header_len.saturating_add(remaining);
    if packet_len > max_len {
        return Err(PeekError::TooLarge);
    }
    check_protocol_name_prefix(&buf[header_len..buf.len().min(packet_len)])?;
    if buf.len() < packet_len {
        return Ok(None);
    }
    let body = &buf[header_len..packet_len];
    parse_body(body, packet_len).map(Some)
}

/// Reads a Variable Byte Integer with the codec's reader: `Ok(None)` when incomplete, `Malformed` past 4 bytes
/// or when written in more bytes than needed (`0x80 0x00` for 0).
fn read_varint(buf: &[u8]) -> Result<Option<(usize, usize)>, PeekError> {
    match read_mqtt_varint(buf) {
        Ok(VarInt::Done(value, len)) => Ok(Some((value as usize, len))),
        Ok(VarInt::Incomplete) => Ok(None),
        Err(_) => Err(PeekError::Malformed),
    }
}

/// Checks as much of the protocol name as has arrived, so a non-MQTT peer is caught early.
fn check_protocol_name_prefix(body: &[u8]) -> Result<(), PeekError> {
    let Some(len_bytes) = body.get(..2) else {
        return match body.first() {
            Some(0) | None => Ok(()),
            Some(_) => Err(PeekError::NotMqtt),
        };
    };
    let expected: &[u8] = match u16::from_be_bytes([len_bytes[0], len_bytes[1]]) {
        4 => b"MQTT",
        6 => b"MQIsdp",
        _ => return Err(PeekError::NotMqtt),
    };
    let got = &body[2..body.len().min(2 + expected.len())];
    if expected.starts_with(got) {
        Ok(())
    } else {
        Err(PeekError::NotMqtt)
    }
}

/// A cursor over the variable header and payload of a complete CONNECT.
struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PeekError> {
        if self.buf.len() < n {
            return Err(PeekError::Malformed);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, PeekError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, PeekError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// Binary data: a u16 length and that many bytes.
    fn binary(&mut self) -> Result<&'a [u8], PeekError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// A UTF-8 string ([MQTT-1.5.3]): valid UTF-8 without U+0000.
    fn string(&mut self) -> Result<String, PeekError> {
        let bytes = self.binary()?;
        let text = std::str::from_utf8(bytes).map_err(|_| PeekError::Malformed)?;
        if text.contains('\0') {
            return Err(PeekError::Malformed);
        }
        Ok(text.to_owned())
    }

    /// Skips a v5 properties block by its varint length.
    fn skip_properties(&mut self) -> Result<(), PeekError> {
        let (len, varint_len) = read_varint(self.buf)?.ok_or(PeekError::Malformed)?;
        self.take(varint_len)?;
        self.take(len)?;
        Ok(())
    }
}

/// Connect-flag bits ([MQTT-3.1.2-3]).
mod flags {
    pub const RESERVED: u8 = 0x01;
    pub const CLEAN_START: u8 = 0x02;
    pub const WILL: u8 = 0x04;
    pub const WILL_QOS: u8 = 0x18;
    pub const WILL_RETAIN: u8 = 0x20;
    pub const PASSWORD: u8 = 0x40;
    pub const USERNAME: u8 = 0x80;
}

fn parse_body(body: &[u8], packet_len: usize) -> Result<ConnectSummary, PeekError> {
    let mut c = Cursor { buf: body };
    let name = c.binary().map_err(|_| PeekError::NotMqtt)?;
    let protocol_level = c.u8()?;
    match (name, protocol_level) {
        (b"MQTT", 4 | 5) | (b"MQIsdp", 3) => {}
        (b"MQTT" | b"MQIsdp", _) => return Err(PeekError::Malformed),
        _ => return Err(PeekError::NotMqtt),
    }
    let v5 = protocol_level == 5;
    let connect_flags = c.u8()?;
    if connect_flags & flags::RESERVED != 0 {
        return Err(PeekError::Malformed);
    }
    let will = connect_flags & flags::WILL != 0;
    let will_qos = (connect_flags & flags::WILL_QOS) >> 3;
    if will_qos == 3 || (!will && connect_flags & (flags::WILL_QOS | flags::WILL_RETAIN) != 0) {
        return Err(PeekError::Malformed);
    }
    let has_username = connect_flags & flags::USERNAME != 0;
    let has_password = connect_flags & flags::PASSWORD != 0;
    // [MQTT-3.1.2-22]: before 5.0 a password requires a user name.
    if !v5 && has_password && !has_username {
        return Err(PeekError::Malformed);
    }
    let keep_alive = c.u16()?;
    if v5 {
        c.skip_properties()?;
    }
    let client_id = c.string()?;
    if will {
        if v5 {
            c.skip_properties()?;
        }
        c.string()?; // will topic
        c.binary()?; // will payload
    }
    let username = if has_username {
        Some(c.string()?)
    } else {
        None
    };
    if has_password {
        c.binary()?;
    }
    if !c.buf.is_empty() {
        return Err(PeekError::Malformed);
    }
    Ok(ConnectSummary {
        packet_len,
        protocol_level,
        client_id,
        username,
        keep_alive,
        clean_start: connect_flags & flags::CLEAN_START != 0,
    })
}

/// The CONNACK that refuses a client whose CONNECT was valid: 3.x return code 3 "server unavailable" (3.x has
/// no "busy"), 5.0 reason 0x88 "server unavailable" or 0x89 "server busy", with an empty property block.
pub fn connack_refusal(protocol_level: u8, refusal: Refusal) -> Vec<u8> {
    if protocol_level >= 5 {
        let reason = match refusal {
            Refusal::ServerUnavailable => 0x88,
            Refusal::ServerBusy => 0x89,
        };
        vec![0x20, 0x03, 0x00, reason, 0x00]
    } else {
        vec![0x20, 0x02, 0x00, 0x03]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::encode_varint;

    const MAX: usize = 64 * 1024;

    fn string(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s);
    }

    fn varint(out: &mut Vec<u8>, n: usize) {
        encode_varint(n, out).unwrap();
    }

    fn packet(body: &[u8]) -> Vec<u8> {
        let mut out = vec![0x10];
        varint(&mut out, body.len());
        out.extend_from_slice(body);
        out
    }

    /// 3.1.1 CONNECT with a user name and password.
    fn v311(client_id: &str) -> Vec<u8> {
        let mut b = Vec::new();
        string(&mut b, b"MQTT");
        b.push(4);
        b.push(0x80 | 0x40 | 0x02);
        b.extend_from_slice(&60u16.to_be_bytes());
        string(&mut b, client_id.as_bytes());
        string(&mut b, b"alice");
        string(&mut b, b"secret");
        packet(&b)
    }

    fn v31() -> Vec<u8> {
        let mut b = Vec::new();
        string(&mut b, b"MQIsdp");
        b.push(3);
        b.push(0x00);
        b.extend_from_slice(&10u16.to_be_bytes());
        string(&mut b, b"old-client");
        packet(&b)
    }

    /// 5.0 CONNECT with properties, a will with properties, and a user name.
    fn v5() -> Vec<u8> {
        let mut b = Vec::new();
        string(&mut b, b"MQTT");
        b.push(5);
        b.push(0x80 | 0x04 | 0x08 | 0x02);
        b.extend_from_slice(&30u16.to_be_bytes());
        // properties: session expiry (0x11, u32) + receive maximum (0x21, u16)
        let props = [0x11, 0, 0, 0x0E, 0x10, 0x21, 0, 10];
        varint(&mut b, props.len());
        b.extend_from_slice(&props);
        string(&mut b, b"dev-5");
        // will properties: will delay (0x18, u32)
        let will_props = [0x18, 0, 0, 0, 5];
        varint(&mut b, will_props.len());
        b.extend_from_slice(&will_props);
        string(&mut b, b"will/topic");
        string(&mut b, b"bye");
        string(&mut b, b"bob");
        packet(&b)
    }

    #[test]
    fn parses_311() {
        let p = v311("sensor-1");
        let s = peek_connect(&p, MAX).unwrap().unwrap();
        assert_eq!(s.packet_len, p.len());
        assert_eq!(s.protocol_level, 4);
        assert_eq!(s.client_id, "sensor-1");
        assert_eq!(s.username.as_deref(), Some("alice"));
        assert_eq!(s.keep_alive, 60);
        assert!(s.clean_start);
    }

    #[test]
    fn parses_31() {
        let p = v31();
        let s = peek_connect(&p, MAX).unwrap().unwrap();
        assert_eq!(
            (s.protocol_level, s.client_id.as_str(), s.keep_alive),
            (3, "old-client", 10)
        );
        assert_eq!(s.username, None);
        assert!(!s.clean_start);
    }

    #[test]
    fn parses_5_with_properties_and_will() {
        let p = v5();
        let s = peek_connect(&p, MAX).unwrap().unwrap();
        assert_eq!(
            (s.protocol_level, s.client_id.as_str(), s.keep_alive),
            (5, "dev-5", 30)
        );
        assert_eq!(s.username.as_deref(), Some("bob"));
        assert_eq!(s.packet_len, p.len());
    }

    #[test]
    fn trailing_bytes_after_the_packet_are_not_part_of_it() {
        let mut p = v311("x");
        let len = p.len();
        p.extend_from_slice(&[0xC0, 0x00]); // a PINGREQ pipelined behind
        assert_eq!(peek_connect(&p, MAX).unwrap().unwrap().packet_len, len);
    }

    #[test]
    fn every_strict_prefix_needs_more() {
        for p in [v311("abc"), v311(""), v31(), v5()] {
            for n in 0..p.len() {
                assert_eq!(peek_connect(&p[..n], MAX), Ok(None), "prefix {n} of {p:?}");
            }
        }
    }

    #[test]
    fn byte_at_a_time_feed() {
        let p = v5();
        let mut buf = Vec::new();
        let mut done = None;
        for &b in &p {
            buf.push(b);
            if let Some(s) = peek_connect(&buf, MAX).unwrap() {
                done = Some((buf.len(), s));
                break;
            }
        }
        let (at, s) = done.unwrap();
        assert_eq!(at, p.len());
        assert_eq!(s.client_id, "dev-5");
    }

    #[test]
    fn long_remaining_length_prefixes() {
        let id = "x".repeat(300);
        let p = v311(&id);
        assert_eq!(p[1] & 0x80, 0x80, "two-byte varint expected");
        assert_eq!(peek_connect(&p[..2], MAX), Ok(None));
        assert_eq!(peek_connect(&p, MAX).unwrap().unwrap().client_id, id);
    }

    #[test]
    fn garbage_is_not_mqtt() {
        assert_eq!(
            peek_connect(b"GET / HTTP/1.1\r\n", MAX),
            Err(PeekError::NotMqtt)
        );
        // A TLS ClientHello on a plain port.
        assert_eq!(
            peek_connect(&[0x16, 0x03, 0x01, 0x02, 0x00], MAX),
            Err(PeekError::NotMqtt)
        );
        // A PUBLISH first.
        assert_eq!(
            peek_connect(&[0x30, 0x02, 0x00, 0x00], MAX),
            Err(PeekError::NotMqtt)
        );
        // Right first byte, wrong protocol name, detected before the packet is complete.
        let mut b = vec![0x10, 0x40, 0x00, 0x04, b'H', b'T'];
        assert_eq!(peek_connect(&b, MAX), Err(PeekError::NotMqtt));
        b.truncate(4);
        b[3] = 9;
        assert_eq!(peek_connect(&b, MAX), Err(PeekError::NotMqtt));
    }

    #[test]
    fn oversize_detected_from_header() {
        // Announces 200 000 bytes; only the fixed header is present.
        let mut b = vec![0x10];
        varint(&mut b, 200_000);
        assert_eq!(peek_connect(&b, MAX), Err(PeekError::TooLarge));
        let p = v311("abc");
        assert_eq!(peek_connect(&p, p.len() - 1), Err(PeekError::TooLarge));
        assert!(peek_connect(&p, p.len()).unwrap().is_some());
    }

    #[test]
    fn malformed_packets() {
        // Five-byte varint.
        assert_eq!(
            peek_connect(&[0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], usize::MAX),
            Err(PeekError::Malformed)
        );
        // Reserved flag set.
        let mut p = v311("a");
        p[9] |= 0x01;
        assert_eq!(peek_connect(&p, MAX), Err(PeekError::Malformed));
        // Unknown level for the MQTT name.
        let mut p = v311("a");
        p[8] = 7;
        assert_eq!(peek_connect(&p, MAX), Err(PeekError::Malformed));
        // Client ID with U+0000 and with invalid UTF-8.
        assert_eq!(peek_connect(&v311("a\0b"), MAX), Err(PeekError::Malformed));
        let mut p = v311("ab");
        let at = p.len() - (2 + 5 + 2 + 6) - 1;
        p[at] = 0xFF;
        assert_eq!(peek_connect(&p, MAX), Err(PeekError::Malformed));
        // Remaining length shorter than the fields.
        let mut p = v311("abc");
        p[1] -= 3;
        p.truncate(p.len() - 3);
        assert_eq!(peek_connect(&p, MAX), Err(PeekError::Malformed));
        // Password without user name in 3.1.1.
        let mut p = v311("a");
        p[9] &= !0x80;
        assert_eq!(peek_connect(&p, MAX), Err(PeekError::Malformed));
        // Bytes left over inside the packet.
        let mut b = Vec::new();
        string(&mut b, b"MQTT");
        b.extend_from_slice(&[4, 0x02, 0, 0]);
        string(&mut b, b"id");
        b.push(0xAA);
        assert_eq!(peek_connect(&packet(&b), MAX), Err(PeekError::Malformed));
    }

    #[test]
    fn remaining_length_in_more_bytes_than_needed_is_malformed() {
        // 0 written in two bytes: refused once the second byte shows it, not before.
        assert_eq!(peek_connect(&[0x10, 0x80], MAX), Ok(None));
        assert_eq!(
            peek_connect(&[0x10, 0x80, 0x00], MAX),
            Err(PeekError::Malformed)
        );
        // A valid CONNECT whose remaining length (< 128) is padded to two and to four bytes.
        let p = v311("padded");
        assert!(p[1] < 0x80);
        for pad in [&[0x80 | p[1], 0x00][..], &[0x80 | p[1], 0x80, 0x80, 0x00]] {
            let padded = [&p[..1], pad, &p[2..]].concat();
            assert_eq!(
                peek_connect(&padded, MAX),
                Err(PeekError::Malformed),
                "{pad:?}"
            );
        }
        // 300 bytes in three instead of two.
        let id = "x".repeat(300);
        let p = v311(&id);
        assert_eq!(p[3..5], [0, 4], "a two-byte length then the protocol name");
        let padded = [&p[..2], &[p[2] | 0x80, 0x00], &p[3..]].concat();
        assert_eq!(peek_connect(&padded, MAX), Err(PeekError::Malformed));
        assert!(peek_connect(&p, MAX).unwrap().is_some());
        // A v5 property length padded the same way.
        let mut b = Vec::new();
        string(&mut b, b"MQTT");
        b.extend_from_slice(&[5, 0x02, 0, 30, 0x80, 0x00]);
        string(&mut b, b"dev");
        assert_eq!(peek_connect(&packet(&b), MAX), Err(PeekError::Malformed));
    }

    #[test]
    fn reasons_are_labels() {
        assert_eq!(PeekError::NotMqtt.reason(), "not_mqtt");
        assert_eq!(PeekError::Malformed.reason(), "malformed");
        assert_eq!(PeekError::TooLarge.reason(), "too_large");
    }

    #[test]
    fn refusals() {
        assert_eq!(
            connack_refusal(4, Refusal::ServerUnavailable),
            [0x20, 0x02, 0x00, 0x03]
        );
        assert_eq!(
            connack_refusal(3, Refusal::ServerBusy),
            [0x20, 0x02, 0x00, 0x03]
        );
        assert_eq!(
            connack_refusal(5, Refusal::ServerUnavailable),
            [0x20, 0x03, 0x00, 0x88, 0x00]
        );
        assert_eq!(
            connack_refusal(5, Refusal::ServerBusy),
            [0x20, 0x03, 0x00, 0x89, 0x00]
        );
    }
}
