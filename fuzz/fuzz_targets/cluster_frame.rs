//! The cluster wire format on whatever a peer sends: frames decoded off one buffer as a link's reader does,
//! validated as a peer's frames are, and each decoded frame encoded and decoded again to the same frame
//! (`fleetgate_broker::fuzzing::decode_cluster_frame` asserts the round trip; a decode error is fine).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = fleetgate_broker::fuzzing::decode_cluster_frame(data);
});
