//! Writing the PROXY header the LB sends to a backend before relaying the client's bytes (v2 with identity TLVs,
//! v2 LOCAL for health checks, v1 for backends that only speak it).

use std::net::{IpAddr, SocketAddr};

use super::identity::PeerIdentity;
use super::read::{V2_FIXED_LEN, V2_SIGNATURE};
use super::tlv::{self, put, str_ok};

/// Version 2, command LOCAL.
const V2_LOCAL: u8 = 0x20;
/// Version 2, command PROXY.
const V2_PROXY: u8 = 0x21;
/// AF_INET + STREAM.
const TCP4: u8 = 0x11;
/// AF_INET6 + STREAM.
const TCP6: u8 = 0x21;

/// What the LB puts in a v2 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderSpec {
    /// The client's address.
    pub source: SocketAddr,
    /// The LB listener address the client connected to.
    pub destination: SocketAddr,
    /// TLS identity and other TLVs to send.
    pub identity: PeerIdentity,
    /// Append a CRC32C TLV.
    pub crc32c: bool,
}

/// Encodes a v2 PROXY/TCP header. Mixed IPv4/IPv6 addresses are both sent as IPv6 (IPv4-mapped). Identity values
/// the decoder would reject (string over 256 bytes or with control characters, certificate over 16 KiB, SANs
/// beyond the 32nd, ...) are left out, so the header always decodes.
///
/// The SSL TLV is sent when `tls` or `cert_presented`: `client` = `PP2_CLIENT_SSL` if tls, `| CERT_CONN` if a
/// certificate was presented; `verify` = 0 only when presented and verified.
pub fn encode_v2(spec: &HeaderSpec) -> Vec<u8> {
    let (family, addrs) = addresses(spec.source, spec.destination);
    let mut tlvs = Vec::new();
    let crc_at = spec.crc32c.then(|| {
        put(&mut tlvs, tlv::PP2_TYPE_CRC32C, &[0; 4]);
        V2_FIXED_LEN + addrs.len() + 3
    });
    identity_tlvs(&mut tlvs, &spec.identity);

    let mut out = Vec::with_capacity(V2_FIXED_LEN + addrs.len() + tlvs.len());
    out.extend_from_slice(V2_SIGNATURE);
    out.push(V2_PROXY);
    out.push(family);
    // Bounded by the caps in `tlv` (≈ 16 KiB certificate + 32 SANs + a few strings), far below 64 KiB.
    let len = u16::try_from(addrs.len() + tlvs.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&addrs);
    out.extend_from_slice(&tlvs);
    if let Some(at) = crc_at {
        let crc = crc32c::crc32c(&out);
        out[at..at + 4].copy_from_slice(&crc.to_be_bytes());
    }
    out
}

/// Encodes a v2 LOCAL header (no address, no TLV): what a health check sends.
pub fn encode_v2_local() -> Vec<u8> {
    let mut out = Vec::with_capacity(V2_FIXED_LEN);
    out.extend_from_slice(V2_SIGNATURE);
    out.extend_from_slice(&[V2_LOCAL, 0x00, 0x00, 0x00]);
    out
}

/// Encodes a v1 header (`PROXY TCP4|TCP6 src dst sport dport\r\n`); mixed families are sent as TCP6.
pub fn encode_v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let line = match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => format!("PROXY TCP4 {s} {d}"),
        (s, d) => format!("PROXY TCP6 {} {}", to_v6(s), to_v6(d)),
    };
    format!("{line} {} {}\r\n", source.port(), destination.port()).into_bytes()
}

fn to_v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Family byte and the address block (src addr, dst addr, src port, dst port).
fn addresses(source: SocketAddr, destination: SocketAddr) -> (u8, Vec<u8>) {
    let mut block = Vec::with_capacity(36);
    let family = match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            block.extend_from_slice(&s.octets());
            block.extend_from_slice(&d.octets());
            TCP4
        }
        (s, d) => {
            block.extend_from_slice(&to_v6(s).octets());
            block.extend_from_slice(&to_v6(d).octets());
            TCP6
        }
    };
    block.extend_from_slice(&source.port().to_be_bytes());
    block.extend_from_slice(&destination.port().to_be_bytes());
    (family, block)
}

fn put_str(buf: &mut Vec<u8>, kind: u8, value: Option<&String>) {
    if let Some(v) = value.filter(|v| str_ok(v)) {
        put(buf, kind, v.as_bytes());
    }
}

fn put_bytes(buf: &mut Vec<u8>, kind: u8, value: Option<&Vec<u8>>, max: usize) {
    if let Some(v) = value.filter(|v| v.len() <= max) {
        put(buf, kind, v);
    }
}

/// Identity TLVs in a fixed order: ALPN, AUTHORITY, UNIQUE_ID, SSL (+ sub-TLVs), client ID, SANs.
fn identity_tlvs(buf: &mut Vec<u8>, id: &PeerIdentity) {
    put_bytes(buf, tlv::PP2_TYPE_ALPN, id.alpn.as_ref(), tlv::MAX_ALPN);
    put_str(buf, tlv::PP2_TYPE_AUTHORITY, id.authority.as_ref());
    put_bytes(
        buf,
        tlv::PP2_TYPE_UNIQUE_ID,
        id.unique_id.as_ref(),
        tlv::MAX_UNIQUE_ID,
    );
    if id.tls || id.cert_presented {
        let mut client = 0;
        if id.tls {
            client |= tlv::PP2_CLIENT_SSL;
        }
        if id.cert_presented {
            client |= tlv::PP2_CLIENT_CERT_CONN;
        }
        let verify: u32 = if id.cert_presented && id.cert_verified {
            0
        } else {
            1
        };
        let mut ssl = vec![client];
        ssl.extend_from_slice(&verify.to_be_bytes());
        put_str(
            &mut ssl,
            tlv::PP2_SUBTYPE_SSL_VERSION,
            id.tls_version.as_ref(),
        );
        put_str(&mut ssl, tlv::PP2_SUBTYPE_SSL_CN, id.cn.as_ref());
        put_str(&mut ssl, tlv::PP2_SUBTYPE_SSL_CIPHER, id.cipher.as_ref());
        put_str(&mut ssl, tlv::PP2_SUBTYPE_SSL_SIG_ALG, id.sig_alg.as_ref());
        put_str(&mut ssl, tlv::PP2_SUBTYPE_SSL_KEY_ALG, id.key_alg.as_ref());
        put_str(&mut ssl, tlv::PP2_SUBTYPE_SSL_GROUP, id.group.as_ref());
        put_str(
            &mut ssl,
            tlv::PP2_SUBTYPE_SSL_SIG_SCHEME,
            id.sig_scheme.as_ref(),
        );
        let cert = id.client_cert_der.as_ref();
        put_bytes(
            &mut ssl,
            tlv::PP2_SUBTYPE_SSL_CLIENT_CERT,
            cert,
            tlv::MAX_CLIENT_CERT,
        );
        put(buf, tlv::PP2_TYPE_SSL, &ssl);
    }
    put_str(buf, tlv::FLEETGATE_TYPE_CLIENT_ID, id.lb_client_id.as_ref());
    for san in id.sans.iter().filter(|s| str_ok(s)).take(tlv::MAX_SANS) {
        put(buf, tlv::FLEETGATE_TYPE_SAN, san.as_bytes());
    }
}
