//! The minimal PROXY v2 header the generator sends when it talks straight to a node listener that requires one
//! (`--proxy-v2`): PROXY command, TCP over IPv4 (28 bytes) or IPv6 (52 bytes), no TLVs. Written by hand so the
//! generator does not share the LB's encoder; a test cross-checks the two.

use std::net::{IpAddr, SocketAddr};

/// The 12-byte v2 signature.
const SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

/// Encodes a v2 PROXY header for a TCP connection from `source` to `destination`.
pub fn encode(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(52);
    out.extend_from_slice(&SIGNATURE);
    out.push(0x21); // version 2, PROXY
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11); // AF_INET, STREAM
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x21); // AF_INET6, STREAM
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING)
mod tests {
    use super::*;
    use fleetgate_protocol::proxy::{HeaderSpec, PeerIdentity, encode_v2};

    #[test]
    fn ipv4_header_is_28_bytes() {
        let h = encode(
            "127.0.0.1:40000".parse().unwrap(),
            "127.0.0.1:1883".parse().unwrap(),
        );
        assert_eq!(h.len(), 28);
        assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(&h[16..20], &[127, 0, 0, 1]);
        assert_eq!(&h[24..28], &[0x9C, 0x40, 0x07, 0x5B]);
    }

    #[test]
    fn matches_the_lb_encoder() {
        for (s, d) in [
            ("127.0.0.1:40000", "127.0.0.2:1883"),
            ("[::1]:5", "[::2]:6"),
            ("10.0.0.1:1", "[::1]:2"),
        ] {
            let (source, destination) = (s.parse().unwrap(), d.parse().unwrap());
            let spec = HeaderSpec {
                source,
                destination,
                identity: PeerIdentity::default(),
                crc32c: false,
            };
            assert_eq!(encode(source, destination), encode_v2(&spec), "{s} -> {d}");
        }
    }
}
