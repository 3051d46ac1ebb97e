//! The cluster wire format as the fuzz target `fuzz/fuzz_targets/cluster_frame.rs` drives it (re-exported as
//! `fleetgate_broker::fuzzing`; not an API): frames taken off a buffer as a link's reader takes them, checked as a
//! link checks a peer's frames, and each one encoded again and decoded again to the same frame.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use fleetgate_config::node::LimitsConfig;

use super::{FRAME_OVERHEAD, Frame};
use crate::cluster::validate::check_frame;
use crate::state::message::Message;

/// How far apart the time left of a message's expiry may be after a round trip: it is sent as milliseconds left
/// and counted from the decode, so the clock moves between the two (more so under a sanitizer on a busy machine).
const EXPIRY_SLACK: Duration = Duration::from_secs(1);

/// Decodes every frame in `bytes` with the node's default frame limit (default `max_packet_size` plus
/// `FRAME_OVERHEAD`), runs the peer-frame validation on each, and round-trips each: encoded, decoded again, the
/// same frame (field by field through `Debug`, a message's expiry within [`EXPIRY_SLACK`]) and the same bytes
/// when encoded once more. `Ok(n)`: `n` whole frames and then an incomplete one or nothing; `Err`: the decode
/// error that stopped it, as text.
///
/// # Panics
/// When a decoded frame does not survive the round trip: that is the bug the fuzz target looks for.
pub fn decode_cluster_frame(bytes: &[u8]) -> Result<usize, String> {
    let max_packet_size = LimitsConfig::default().max_packet_size as usize;
    let max_len = max_packet_size + FRAME_OVERHEAD;
    let mut buf = BytesMut::from(bytes);
    let mut frames = 0;
    // Each frame takes at least its 4-byte length prefix off the buffer: the loop ends.
    loop {
        match Frame::decode(&mut buf, max_len) {
            Ok(Some(frame)) => {
                // Accepting or refusing are both fine here; it must only not panic.
                let _ = check_frame(&frame, max_packet_size);
                round_trip(frame, max_len);
                frames += 1;
            }
            Ok(None) => return Ok(frames),
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn round_trip(mut first: Frame, max_len: usize) {
    let mut encoded = BytesMut::new();
    first.encode(&mut encoded);
    let mut buf = encoded.clone();
    let mut second = match Frame::decode(&mut buf, max_len) {
        Ok(Some(frame)) => frame,
        other => panic!("{first:?} encoded as {encoded:?} decodes as {other:?}"),
    };
    assert!(buf.is_empty(), "{first:?}: {} bytes left", buf.len());
    let (left_first, left_second) = (take_expiries(&mut first), take_expiries(&mut second));
    assert_eq!(format!("{first:?}"), format!("{second:?}"));
    assert_eq!(left_first.len(), left_second.len());
    for (a, b) in left_first.iter().zip(&left_second) {
        match (a, b) {
            (None, None) => {}
            (Some(a), Some(b)) => assert!(
                a.abs_diff(*b) <= EXPIRY_SLACK,
                "{first:?}: expiry {a:?} came back as {b:?}"
            ),
            _ => panic!("{first:?}: expiry {a:?} came back as {b:?}"),
        }
    }
    // Without the clock in them, both encode to the same bytes.
    let (mut once, mut twice) = (BytesMut::new(), BytesMut::new());
    first.encode(&mut once);
    second.encode(&mut twice);
    assert_eq!(once, twice, "{first:?}");
}

/// The time left of every message's expiry in `frame`, taken out of the messages (so that two decodes of one
/// frame compare equal).
fn take_expiries(frame: &mut Frame) -> Vec<Option<Duration>> {
    let now = Instant::now();
    let take = |msg: &mut Arc<Message>| {
        // A frame just decoded holds the only reference to each of its messages.
        let msg = Arc::get_mut(msg).expect("a decoded message is not shared");
        msg.expires_at
            .take()
            .map(|at| at.saturating_duration_since(now))
    };
    match frame {
        Frame::Publish { msg, .. } | Frame::SessionMsg { msg, .. } => vec![take(msg)],
        Frame::Retain { msg: Some(msg), .. }
        | Frame::SessionBegin {
            will: Some((msg, _)),
            ..
        } => vec![take(msg)],
        _ => Vec::new(),
    }
}
