//! Hand-made MQTT bytes for the paths a well-behaved client never takes (garbage, oversized packets, a client that
//! goes silent after CONNECT or never sends one) and for exact reason codes, and the one raw packet reader
//! ([`read_packet`]). Encoders here are deliberately independent of our codec; [`crate::RawClient`] sends them.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// A CONNECT to build by hand.
#[derive(Debug, Clone)]
pub struct Connect<'a> {
    /// 4 = MQTT 3.1.1, 5 = MQTT 5.0.
    pub level: u8,
    /// Client identifier.
    pub client_id: &'a str,
    /// Keep alive in seconds.
    pub keep_alive: u16,
    /// Clean session / clean start.
    pub clean: bool,
    /// Will topic and payload (QoS 0, not retained).
    pub will: Option<(&'a str, &'a [u8])>,
    /// Username and password.
    pub credentials: Option<(&'a str, &'a str)>,
}

impl<'a> Connect<'a> {
    /// A clean-session CONNECT for `client_id` at `level`, keep alive 60 s, no will, no credentials.
    pub fn new(level: u8, client_id: &'a str) -> Self {
        Self {
            level,
            client_id,
            keep_alive: 60,
            clean: true,
            will: None,
            credentials: None,
        }
    }

    /// The encoded packet.
    pub fn encode(&self) -> Vec<u8> {
        let v5 = self.level == 5;
        let mut body = Vec::new();
        put_str(&mut body, "MQTT");
        body.push(self.level);
        let mut flags = 0u8;
        if self.clean {
            flags |= 0x02;
        }
        if self.will.is_some() {
            flags |= 0x04;
        }
        if self.credentials.is_some() {
            flags |= 0xC0;
        }
        body.push(flags);
        body.extend_from_slice(&self.keep_alive.to_be_bytes());
        if v5 {
            body.push(0); // no CONNECT properties
        }
        put_str(&mut body, self.client_id);
        if let Some((topic, payload)) = self.will {
            if v5 {
                body.push(0); // no will properties
            }
            put_str(&mut body, topic);
            put_bytes(&mut body, payload);
        }
        if let Some((user, pass)) = self.credentials {
            put_str(&mut body, user);
            put_bytes(&mut body, pass.as_bytes());
        }
        packet(0x10, &body)
    }
}

/// A QoS 0 PUBLISH of `payload` to `topic` (for level 5 an empty property length is added).
pub fn publish(level: u8, topic: &str, payload: &[u8]) -> Vec<u8> {
    publish_packet(level, None, topic, payload)
}

/// A QoS 1 PUBLISH of `payload` to `topic` with `packet_id`.
pub fn publish_qos1(level: u8, packet_id: u16, topic: &str, payload: &[u8]) -> Vec<u8> {
    publish_packet(level, Some(packet_id), topic, payload)
}

/// A PUBLISH at QoS 0 (no packet ID) or QoS 1.
fn publish_packet(level: u8, packet_id: Option<u16>, topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, topic);
    if let Some(id) = packet_id {
        body.extend_from_slice(&id.to_be_bytes());
    }
    if level == 5 {
        body.push(0);
    }
    body.extend_from_slice(payload);
    let first = if packet_id.is_some() { 0x32 } else { 0x30 };
    packet(first, &body)
}

/// A SUBSCRIBE of one `topic` at `qos` with `packet_id`.
pub fn subscribe(level: u8, packet_id: u16, topic: &str, qos: u8) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    if level == 5 {
        body.push(0);
    }
    put_str(&mut body, topic);
    body.push(qos);
    packet(0x82, &body)
}

/// A PUBACK for `packet_id` (success; the short form is valid in 3.1.1 and 5).
pub fn puback(packet_id: u16) -> Vec<u8> {
    packet(0x40, &packet_id.to_be_bytes())
}

/// PINGREQ.
pub const PINGREQ: [u8; 2] = [0xC0, 0x00];

/// A fixed header (`first` byte, remaining length) followed by `body`.
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    out.extend(remaining_length(body.len()));
    out.extend_from_slice(body);
    out
}

/// The variable-length encoding of a remaining length.
pub fn remaining_length(mut len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            return out;
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

/// Appends `b` with its two-byte length prefix (an MQTT binary field; also a PROXY v2 TLV value).
pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    let len = u16::try_from(b.len()).expect("MQTT string longer than 65535 bytes");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(b);
}

/// Reads one MQTT packet (first byte, body) from any stream (TCP, TLS); `None` on EOF, error or a remaining length
/// longer than four bytes. Unbounded: wrap it in a timeout, or use [`read_packet_within`].
pub async fn read_packet<S: AsyncRead + Unpin + ?Sized>(stream: &mut S) -> Option<(u8, Vec<u8>)> {
    let first = stream.read_u8().await.ok()?;
    let mut len = 0usize;
    for shift in 0..4 {
        let b = stream.read_u8().await.ok()?;
        len |= usize::from(b & 0x7F) << (7 * shift);
        if b & 0x80 == 0 {
            let mut body = vec![0; len];
            stream.read_exact(&mut body).await.ok()?;
            return Some((first, body));
        }
    }
    None
}

/// [`read_packet`] within `deadline`; `None` on timeout too.
pub async fn read_packet_within<S: AsyncRead + Unpin + ?Sized>(
    stream: &mut S,
    deadline: Duration,
) -> Option<(u8, Vec<u8>)> {
    tokio::time::timeout(deadline, read_packet(stream))
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_connect_and_lengths() {
        assert_eq!(remaining_length(0), vec![0]);
        assert_eq!(remaining_length(127), vec![0x7F]);
        assert_eq!(remaining_length(128), vec![0x80, 0x01]);
        assert_eq!(remaining_length(16_383), vec![0xFF, 0x7F]);
        let c = Connect::new(4, "a").encode();
        assert_eq!(
            c,
            vec![
                0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 1, b'a'
            ]
        );
        let mut v5 = Connect::new(5, "a");
        v5.will = Some(("w", b"x"));
        let c = v5.encode();
        assert_eq!(c[1] as usize, c.len() - 2);
        assert_eq!(c[9], 0x06);
    }
}
