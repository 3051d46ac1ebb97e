//! The shape of the data the node will store: keys (session key + 8-byte sequence), message records (topic, payload
//! and the delivery fields of a queued PUBLISH) and session records, all derived from numbers so that a checker can
//! recompute what a writer wrote; plus the generator's small PRNG.

/// Bytes of a session key: `veh-` and 12 digits, the shape of a fleet client ID.
pub const SESSION_KEY_LEN: usize = 16;
/// Bytes of a message key: session key + big-endian sequence, so one session's queue is one ordered key range.
pub const MSG_KEY_LEN: usize = SESSION_KEY_LEN + 8;

/// A session key.
pub type SessionKey = [u8; SESSION_KEY_LEN];
/// A queued message's key.
pub type MsgKey = [u8; MSG_KEY_LEN];

/// The key of session `n` (`veh-000000000042`).
pub fn session_key(n: u64) -> SessionKey {
    let mut key = [b'0'; SESSION_KEY_LEN];
    key[..4].copy_from_slice(b"veh-");
    let mut rest = n;
    for slot in key[4..].iter_mut().rev() {
        // A digit, so the cast cannot truncate.
        *slot = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    key
}

/// The key of message `seq` of session `n`.
pub fn msg_key(session: u64, seq: u64) -> MsgKey {
    let mut key = [0u8; MSG_KEY_LEN];
    key[..SESSION_KEY_LEN].copy_from_slice(&session_key(session));
    key[SESSION_KEY_LEN..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// Splits a message key into its session key and sequence; `None` if it has the wrong length.
pub fn split_msg_key(key: &[u8]) -> Option<(SessionKey, u64)> {
    let (session, seq) = key.split_at_checked(SESSION_KEY_LEN)?;
    Some((
        session.try_into().ok()?,
        u64::from_be_bytes(seq.try_into().ok()?),
    ))
}

/// The stored record of message `seq` of session `n` with `payload_len` payload bytes: QoS, flags, packet ID,
/// message expiry, receive time, topic, payload — what a queued PUBLISH needs to be sent again. Deterministic in
/// its arguments (the payload bytes are pseudo-random, so compression gains nothing, as with encrypted or
/// binary telemetry).
pub fn message_value(session: u64, seq: u64, payload_len: usize) -> Vec<u8> {
    let topic = format!("fleet/veh-{session:012}/cmd/set");
    let mut v = Vec::with_capacity(24 + topic.len() + payload_len);
    v.push(1); // QoS
    v.push(0); // flags: retain, dup
    v.extend_from_slice(&u16::try_from(seq % 65_535 + 1).unwrap_or(1).to_be_bytes()); // packet ID
    v.extend_from_slice(&3_600u32.to_be_bytes()); // message expiry interval
    v.extend_from_slice(&(1_800_000_000_000 + seq).to_be_bytes()); // received at (ms)
    v.extend_from_slice(&u16::try_from(topic.len()).unwrap_or(0).to_be_bytes());
    v.extend_from_slice(topic.as_bytes());
    v.extend_from_slice(&u32::try_from(payload_len).unwrap_or(0).to_be_bytes());
    let mut rng = Rng::new(session.rotate_left(32) ^ seq);
    while v.len() < 24 + topic.len() + payload_len {
        v.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    v.truncate(24 + topic.len() + payload_len);
    v
}

/// The session record of session `n`: next sequence, expiry, flags and its subscription filter (~70 bytes).
pub fn meta_value(session: u64, next_seq: u64) -> Vec<u8> {
    let filter = format!("fleet/veh-{session:012}/cmd/#");
    let mut v = Vec::with_capacity(32 + filter.len());
    v.extend_from_slice(&next_seq.to_be_bytes());
    v.extend_from_slice(&86_400u32.to_be_bytes()); // session expiry interval
    v.extend_from_slice(&[5, 1, 0, 0]); // protocol level, clean start off, will flags
    v.extend_from_slice(&(1_800_000_000_000 + next_seq).to_be_bytes()); // last seen (ms)
    v.push(1); // one subscription
    v.push(1); // its QoS
    v.extend_from_slice(&u16::try_from(filter.len()).unwrap_or(0).to_be_bytes());
    v.extend_from_slice(filter.as_bytes());
    v
}

/// SplitMix64: small, fast, deterministic; good enough to pick sessions and fill payloads.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// A number in `0..n` (`0` when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

/// SplitMix64's finaliser: a stateless hash of `x`.
pub fn mix(x: u64) -> u64 {
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING)
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_session_then_sequence_and_split_back() {
        assert_eq!(&session_key(42), b"veh-000000000042");
        let (a, b, c) = (msg_key(1, 300), msg_key(1, 2), msg_key(2, 0));
        assert!(b < a && a < c);
        assert_eq!(split_msg_key(&a), Some((session_key(1), 300)));
        assert_eq!(split_msg_key(&a[..5]), None);
    }

    #[test]
    fn records_are_deterministic_and_sized() {
        let v = message_value(7, 9, 100);
        assert_eq!(v, message_value(7, 9, 100));
        assert_ne!(v, message_value(7, 10, 100));
        assert_eq!(v.len(), 24 + "fleet/veh-000000000007/cmd/set".len() + 100);
        assert!(meta_value(7, 1).len() > 50);
    }
}
