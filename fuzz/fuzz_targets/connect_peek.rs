//! The LB's CONNECT peek (`fleetgate_protocol::peek::peek_connect`) on whatever a client sends first: never a
//! panic; an answer consistent with itself (a whole CONNECT is found in exactly its bytes, every strict prefix
//! of it needs more); a remaining length in more bytes than needed is malformed; and every CONNECT the node's
//! codec accepts, the peek accepts too, with the same length, level, client ID, user name, keep alive and clean
//! start (the peek checks less than the codec, never more).
//!
//! Input: two bytes of size cap (the LB's `max_connect_size`), then the client's bytes.

#![no_main]

use bytes::BytesMut;
use fleetgate_protocol::mqtt::{Codec, Packet};
use fleetgate_protocol::peek::{PeekError, peek_connect};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let Some((cap, bytes)) = data.split_first_chunk::<2>() else {
        return;
    };
    let max_len = usize::from(u16::from_be_bytes(*cap));
    let peeked = peek_connect(bytes, max_len);
    if let Ok(Some(summary)) = &peeked {
        let len = summary.packet_len;
        assert!(len <= bytes.len() && len <= max_len, "{summary:?}");
        assert_eq!(bytes[0], 0x10);
        assert_eq!(peek_connect(&bytes[..len], max_len), peeked);
        for end in prefix_ends(len) {
            assert_eq!(
                peek_connect(&bytes[..end], max_len),
                Ok(None),
                "prefix {end}"
            );
        }
    }
    if bytes.first() == Some(&0x10) && non_minimal_length(&bytes[1..]) {
        assert_eq!(peeked, Err(PeekError::Malformed));
    }

    let mut codec = Codec::new(u32::MAX);
    let mut buf = BytesMut::from(bytes);
    if let Ok(Some(Packet::Connect(connect))) = codec.decode(&mut buf) {
        let len = bytes.len() - buf.len();
        if len > max_len {
            assert_eq!(peeked, Err(PeekError::TooLarge));
            return;
        }
        let summary = match peeked {
            Ok(Some(summary)) => summary,
            other => panic!("the codec accepts {connect:?}, the peek says {other:?}"),
        };
        assert_eq!(summary.packet_len, len);
        let level = codec.protocol_level().map(|l| l.as_u8());
        assert_eq!(Some(summary.protocol_level), level);
        assert_eq!(summary.client_id, &*connect.client_id);
        assert_eq!(summary.username.as_deref(), connect.username.as_deref());
        assert_eq!(summary.keep_alive, connect.keep_alive);
        assert_eq!(summary.clean_start, connect.clean_start);
    }
});

/// The strict prefixes worth checking: all of a short packet; of a long one, the fixed header and protocol name
/// region, a spread through the middle, and the last bytes.
fn prefix_ends(len: usize) -> Vec<usize> {
    if len <= 64 {
        return (0..len).collect();
    }
    let mut ends: Vec<usize> = (0..16).collect();
    ends.extend((1..16).map(|i| i * len / 16));
    ends.extend(len - 4..len);
    ends
}

/// True when the remaining length starting at `buf[0]` is complete and written in more bytes than needed: a
/// zero last byte after a continuation byte. (Written here from the spec, apart from the code under test.)
fn non_minimal_length(buf: &[u8]) -> bool {
    for (i, &b) in buf.iter().take(4).enumerate() {
        if b & 0x80 == 0 {
            return i > 0 && b == 0;
        }
    }
    false
}
