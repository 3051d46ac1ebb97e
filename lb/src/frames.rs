//! MQTT packet boundaries over a relayed byte stream, for draining: the relay feeds every byte it forwards
//! through a [`PacketTracker`] (a fixed header and remaining-length parser, no decoding), so that a drain can stop
//! a direction exactly between two packets and inject a DISCONNECT there instead of cutting a packet in half.

/// The DISCONNECT a v5 client gets when the LB moves it: reason 0x8B "server shutting down", no properties.
pub(crate) const DISCONNECT_V5_SERVER_SHUTTING_DOWN: [u8; 4] = [0xE0, 0x02, 0x8B, 0x00];

/// The DISCONNECT the backend gets for a drained client: a normal disconnection (0x00, valid in 3.1.1 and 5.0),
/// so the node publishes no will and keeps a persistent session for the client's prompt reconnect.
pub(crate) const DISCONNECT_NORMAL: [u8; 2] = [0xE0, 0x00];

/// Longest remaining-length field (MQTT: four bytes).
const MAX_LENGTH_BYTES: u8 = 4;

/// Where a byte stream stands relative to MQTT packet boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum PacketTracker {
    /// Between two packets.
    #[default]
    Boundary,
    /// Inside a fixed header: the remaining length read so far.
    Header {
        /// Value accumulated.
        len: usize,
        /// Length bytes read.
        bytes: u8,
    },
    /// Inside a packet body: bytes left.
    Body(usize),
    /// The stream is not MQTT framing any more (a bad length): no boundary will be found.
    Broken,
}

impl PacketTracker {
    /// Advances over `data`.
    pub(crate) fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match *self {
                PacketTracker::Broken => return,
                PacketTracker::Boundary => {
                    *self = PacketTracker::Header { len: 0, bytes: 0 };
                    data = &data[1..];
                }
                PacketTracker::Header { len, bytes } => {
                    let b = data[0];
                    data = &data[1..];
                    let len = len | (usize::from(b & 0x7F) << (7 * u32::from(bytes)));
                    *self = if b & 0x80 == 0 {
                        if len == 0 {
                            PacketTracker::Boundary
                        } else {
                            PacketTracker::Body(len)
                        }
                    } else if bytes + 1 >= MAX_LENGTH_BYTES {
                        PacketTracker::Broken
                    } else {
                        PacketTracker::Header {
                            len,
                            bytes: bytes + 1,
                        }
                    };
                }
                PacketTracker::Body(left) => {
                    let take = left.min(data.len());
                    data = &data[take..];
                    *self = if take == left {
                        PacketTracker::Boundary
                    } else {
                        PacketTracker::Body(left - take)
                    };
                }
            }
        }
    }

    /// Bytes to read before the next boundary can be known: `Some(0)` at a boundary, the body left inside a
    /// body, 1 inside a header (its length is only known byte by byte); `None` when the framing is broken.
    pub(crate) fn until_boundary(&self) -> Option<usize> {
        match *self {
            PacketTracker::Boundary => Some(0),
            PacketTracker::Header { .. } => Some(1),
            PacketTracker::Body(left) => Some(left),
            PacketTracker::Broken => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_boundaries_across_any_split() {
        // PINGRESP, a PUBLISH with a 200-byte body (two length bytes), a CONNACK.
        let mut stream = vec![0xD0, 0x00, 0x30, 0xC8, 0x01];
        stream.extend(std::iter::repeat_n(7u8, 200));
        stream.extend([0x20, 0x02, 0x00, 0x00]);
        let boundaries = [0, 2, 205, 209];
        for split in 0..stream.len() {
            let mut t = PacketTracker::default();
            t.feed(&stream[..split]);
            assert_eq!(
                t.until_boundary() == Some(0),
                boundaries.contains(&split),
                "after {split} bytes: {t:?}"
            );
            t.feed(&stream[split..]);
            assert_eq!(t, PacketTracker::Boundary);
        }
        let mut byte_by_byte = PacketTracker::default();
        for (i, b) in stream.iter().enumerate() {
            byte_by_byte.feed(std::slice::from_ref(b));
            assert_eq!(
                byte_by_byte.until_boundary() == Some(0),
                boundaries.contains(&(i + 1))
            );
        }
    }

    #[test]
    fn needs_and_broken() {
        let mut t = PacketTracker::default();
        t.feed(&[0x30]);
        assert_eq!(t.until_boundary(), Some(1));
        t.feed(&[0x05, 1, 2]);
        assert_eq!(t.until_boundary(), Some(3));
        let mut bad = PacketTracker::default();
        bad.feed(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]);
        assert_eq!(bad.until_boundary(), None);
    }
}
