//! The MQTT codec (`fleetgate_protocol::mqtt::Codec`) both ways, on whatever a client sends a broker (server
//! role: a fresh connection, or one past its CONNECT at 3.1, 3.1.1 or 5.0) or a broker sends a client (client
//! role): never a panic; the same packets and the same error whether the bytes arrive at once or in reads of a
//! fuzzed size; and every packet decoded round-trips: the other side's codec encodes it, this side's decodes
//! exactly that packet back, and encodes again to the same bytes (3.1/3.1.1, whose packets have one encoding:
//! the very bytes that came in).
//!
//! Input: one mode byte (which codec), one read-size byte (0: all at once), then the stream.

#![no_main]

use bytes::BytesMut;
use fleetgate_protocol::mqtt::{Codec, CodecError, Packet, ProtocolLevel};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::{Decoder, Encoder};

/// Inbound limit: the node's default `max_packet_size`.
const MAX_PACKET: u32 = 1024 * 1024;
/// Packets round-tripped per input (the rest are only decoded).
const ROUND_TRIPS: usize = 16;

const LEVELS: [ProtocolLevel; 3] = [ProtocolLevel::V31, ProtocolLevel::V311, ProtocolLevel::V5];

/// Which codec decodes the input.
#[derive(Debug, Clone, Copy)]
enum Side {
    /// A broker's, before the CONNECT.
    FreshServer,
    /// A broker's, after a CONNECT at this level.
    Server(ProtocolLevel),
    /// A client's at this level.
    Client(ProtocolLevel),
}

impl Side {
    fn codec(self) -> Codec {
        match self {
            Side::FreshServer => Codec::new(MAX_PACKET),
            Side::Server(level) => connected_server(level),
            Side::Client(level) => Codec::client(level, MAX_PACKET),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(([mode, read_size], stream)) = data.split_first_chunk::<2>() else {
        return;
    };
    let side = match mode % 7 {
        0 => Side::FreshServer,
        m @ 1..=3 => Side::Server(LEVELS[usize::from(m - 1)]),
        m => Side::Client(LEVELS[usize::from(m - 4)]),
    };
    let mut codec = side.codec();
    let (packets, end) = decode_all(&mut codec, stream);
    if *read_size > 0 {
        let mut chunked = side.codec();
        let by_reads = decode_in_reads(&mut chunked, stream, usize::from(*read_size));
        assert_eq!(
            by_reads.0, packets,
            "{side:?}: packets differ when read in pieces"
        );
        assert_eq!(
            by_reads.1, end,
            "{side:?}: the end differs when read in pieces"
        );
    }
    for (packet, frame) in packets.into_iter().take(ROUND_TRIPS) {
        let level = match (side, &packet) {
            // A CONNECT round-trips at the level it announces. A second one (which the broker refuses; after
            // a fresh codec's first CONNECT too) is read at the connection's level whatever it announces: it
            // round-trips at its own level, as a first one, or not at all when a fresh codec would not read it
            // as the same packet.
            (Side::Server(_) | Side::FreshServer, Packet::Connect(_)) => {
                match first_connect_level(&frame, &packet) {
                    Some(level) => level,
                    None => continue,
                }
            }
            (Side::Server(level) | Side::Client(level), _) => level,
            // The level the fresh codec learned from the CONNECT (every packet after it is at that level).
            (Side::FreshServer, _) => codec.protocol_level().expect("a CONNECT was decoded"),
        };
        round_trip(side, level, packet, &frame);
    }
});

/// Encodes `packet` as the other side would and decodes it as `side`: the same packet, and the same bytes when
/// encoded once more; for MQTT 3 the bytes it came in as.
fn round_trip(side: Side, level: ProtocolLevel, packet: Packet, frame: &[u8]) {
    let mut sender = match side {
        Side::FreshServer | Side::Server(_) => Codec::client(level, MAX_PACKET),
        Side::Client(_) => connected_server(level),
    };
    let receiver = |p: &Packet| match (side, p) {
        (Side::Client(_), _) => Codec::client(level, MAX_PACKET),
        (_, Packet::Connect(_)) => Codec::new(MAX_PACKET),
        _ => connected_server(level),
    };
    let encoded = encode(&mut sender, packet.clone());
    let (back, end) = decode_all(&mut receiver(&packet), &encoded);
    assert_eq!(end, Ok(()), "{packet:?} encoded as {encoded:?}");
    let back: Vec<Packet> = back.into_iter().map(|(p, _)| p).collect();
    assert_eq!(back, [packet.clone()], "encoded as {encoded:?}");
    let again = encode(&mut sender, packet.clone());
    assert_eq!(again, encoded, "{packet:?}");
    if level != ProtocolLevel::V5 {
        assert_eq!(encoded, frame, "{packet:?}: MQTT 3 bytes");
    }
}

fn encode(codec: &mut Codec, packet: Packet) -> Vec<u8> {
    let mut out = BytesMut::new();
    match codec.encode(packet.clone(), &mut out) {
        Ok(()) => out.to_vec(),
        Err(e) => panic!("{packet:?} does not encode: {e:?}"),
    }
}

/// Every packet in `bytes` with the frame it came from, and how the stream ended: `Ok` when what is left is
/// incomplete (or nothing), the error otherwise.
fn decode_all(codec: &mut Codec, bytes: &[u8]) -> (Vec<(Packet, Vec<u8>)>, Result<(), CodecError>) {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    loop {
        let before = buf.clone();
        match codec.decode(&mut buf) {
            Ok(Some(p)) => {
                let used = before.len() - buf.len();
                out.push((p, before[..used].to_vec()));
            }
            Ok(None) => return (out, Ok(())),
            Err(e) => return (out, Err(e)),
        }
    }
}

/// The same, the bytes arriving `read_size` at a time, decoding after each read as a connection does.
fn decode_in_reads(
    codec: &mut Codec,
    bytes: &[u8],
    read_size: usize,
) -> (Vec<(Packet, Vec<u8>)>, Result<(), CodecError>) {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut consumed = 0;
    for read in bytes.chunks(read_size) {
        buf.extend_from_slice(read);
        loop {
            let before = buf.len();
            match codec.decode(&mut buf) {
                Ok(Some(p)) => {
                    let used = before - buf.len();
                    out.push((p, bytes[consumed..consumed + used].to_vec()));
                    consumed += used;
                }
                Ok(None) => break,
                Err(e) => return (out, Err(e)),
            }
        }
    }
    (out, Ok(()))
}

/// The level a fresh broker codec learns from `frame`, when it reads it as `packet`.
fn first_connect_level(frame: &[u8], packet: &Packet) -> Option<ProtocolLevel> {
    let mut codec = Codec::new(MAX_PACKET);
    let mut buf = BytesMut::from(frame);
    match codec.decode(&mut buf) {
        Ok(Some(p)) if p == *packet && buf.is_empty() => codec.protocol_level(),
        _ => None,
    }
}

/// A broker's codec past a minimal CONNECT at `level`.
fn connected_server(level: ProtocolLevel) -> Codec {
    let connect: &[u8] = match level {
        ProtocolLevel::V31 => b"\x10\x0f\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x01c",
        ProtocolLevel::V311 => b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01c",
        ProtocolLevel::V5 => b"\x10\x0e\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x01c",
    };
    let mut codec = Codec::new(MAX_PACKET);
    let mut buf = BytesMut::from(connect);
    match codec.decode(&mut buf) {
        Ok(Some(Packet::Connect(_))) if buf.is_empty() => codec,
        other => panic!("the {level} CONNECT does not decode: {other:?}"),
    }
}
