//! Fuzz-ish robustness test: pseudo-random byte strings and mutations of valid packets (fixed-seed PRNG,
//! bounded counts and sizes) must never panic the codec, whatever state it is in.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use super::corpus_tests::{
    ALL_LEVELS, TEST_MAX, connect_bytes, connect_corpus, connected_server, packet_corpus,
};
use super::*;

/// Random inputs per phase.
const RANDOM_INPUTS: usize = 20_000;
/// Mutated inputs derived from the valid corpus.
const MUTATED_INPUTS: usize = 20_000;
/// Longest random input.
const MAX_RANDOM_LEN: usize = 96;
/// Upper bound on packets decoded from one input (each needs ≥ 2 bytes, so this is never reached).
const MAX_PACKETS_PER_INPUT: usize = 256;

/// xorshift64*: tiny, deterministic, good enough to spread bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// Decodes until incomplete or error; decoded packets are re-encoded (must not panic either).
fn exercise(codec: &mut Codec, bytes: &[u8]) {
    let mut buf = BytesMut::from(bytes);
    for _ in 0..MAX_PACKETS_PER_INPUT {
        match codec.decode(&mut buf) {
            Ok(Some(packet)) => {
                let mut out = BytesMut::new();
                let _ = codec.encode(packet, &mut out);
            }
            Ok(None) | Err(_) => return,
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for i in 0..RANDOM_INPUTS {
        let len = rng.below(MAX_RANDOM_LEN + 1);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        // Bias a third of the inputs towards plausible first bytes / small lengths.
        if i % 3 == 0 && bytes.len() >= 2 {
            bytes[0] = [0x10, 0x30, 0x32, 0x82, 0xA2, 0x62, 0xE0, 0xF0][rng.below(8)];
            bytes[1] = (len - 2).min(127) as u8;
        }
        exercise(&mut Codec::new(TEST_MAX), &bytes);
        let mut server = connected_server(ALL_LEVELS[i % 3]);
        // Tiny peer limits too: rmqtt's own limit arithmetic underflows there, ours must not.
        if i % 2 == 0 {
            server.set_outbound_max(Some(rng.below(16) as u32));
        }
        exercise(&mut server, &bytes);
        exercise(&mut Codec::client(ALL_LEVELS[i % 3], TEST_MAX), &bytes);
    }
}

#[test]
fn mutated_packets_never_panic() {
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let mut seeds: Vec<(Option<ProtocolLevel>, Vec<u8>)> = connect_corpus()
        .into_iter()
        .map(|(_, _, b)| (None, b))
        .collect();
    for (_, levels, _, bytes) in packet_corpus() {
        for &level in levels {
            seeds.push((Some(level), bytes.clone()));
        }
    }
    for _ in 0..MUTATED_INPUTS {
        let (level, seed) = &seeds[rng.below(seeds.len())];
        let mut bytes = seed.clone();
        for _ in 0..=rng.below(4) {
            match rng.below(5) {
                0 if !bytes.is_empty() => {
                    let i = rng.below(bytes.len());
                    bytes[i] = rng.byte();
                }
                1 if !bytes.is_empty() => {
                    let i = rng.below(bytes.len());
                    bytes[i] ^= 1 << rng.below(8);
                }
                2 => {
                    let i = rng.below(bytes.len() + 1);
                    bytes.insert(i, rng.byte());
                }
                3 if !bytes.is_empty() => {
                    let i = rng.below(bytes.len());
                    bytes.remove(i);
                }
                _ => {
                    let cut = rng.below(bytes.len() + 1);
                    bytes.truncate(cut);
                }
            }
        }
        match level {
            None => exercise(&mut Codec::new(TEST_MAX), &bytes),
            Some(level) => {
                exercise(&mut connected_server(*level), &bytes);
                exercise(&mut Codec::client(*level, TEST_MAX), &bytes);
            }
        }
        // Also behind a valid CONNECT, in one buffer.
        if let Some(level) = level {
            let mut joined = connect_bytes(*level);
            joined.extend(&bytes);
            exercise(&mut Codec::new(TEST_MAX), &joined);
        }
    }
}
