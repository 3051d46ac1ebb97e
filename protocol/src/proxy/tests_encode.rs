//! Tests of the encoders: roundtrips through the decoder and byte-identity with proxy-header's own builder.

use std::net::SocketAddr;

use proxy_header::{ProxiedAddress, ProxyHeader, SslInfo, Tlv};

use super::read::decode_v2;
use super::*;

pub(crate) fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Every identity field set, certificate verified.
pub(crate) fn full_identity() -> PeerIdentity {
    PeerIdentity {
        tls: true,
        cert_presented: true,
        cert_verified: true,
        tls_version: Some("TLSv1.3".into()),
        cn: Some("device-17".into()),
        cipher: Some("TLS_AES_256_GCM_SHA384".into()),
        sig_alg: Some("ecdsa-with-SHA256".into()),
        key_alg: Some("EC256".into()),
        group: Some("X25519".into()),
        sig_scheme: Some("ecdsa_secp256r1_sha256".into()),
        client_cert_der: Some((0..1500u32).map(|i| (i % 251) as u8).collect()),
        sans: vec![
            "DNS:device-17.example".into(),
            "URI:spiffe://fleet/d17".into(),
            "IP:10.1.2.3".into(),
        ],
        authority: Some("mqtt.example.com".into()),
        unique_id: Some(b"conn-0001".to_vec()),
        alpn: Some(b"mqtt".to_vec()),
        lb_client_id: Some("sensor/ü-17".into()),
    }
}

fn spec(source: &str, destination: &str, identity: PeerIdentity, crc32c: bool) -> HeaderSpec {
    HeaderSpec {
        source: addr(source),
        destination: addr(destination),
        identity,
        crc32c,
    }
}

#[test]
fn roundtrip_full_identities() {
    let no_cert = PeerIdentity {
        tls: true,
        tls_version: Some("TLSv1.2".into()),
        cipher: Some("ECDHE-RSA-AES128-GCM-SHA256".into()),
        authority: Some("broker.local".into()),
        ..PeerIdentity::default()
    };
    for identity in [full_identity(), no_cert, PeerIdentity::default()] {
        for (src, dst) in [
            ("192.0.2.1:50000", "10.0.0.1:8883"),
            ("[2001:db8::1]:50000", "[2001:db8::2]:8883"),
        ] {
            for crc in [false, true] {
                let header = encode_v2(&spec(src, dst, identity.clone(), crc));
                let got = decode_v2(&header).unwrap();
                assert_eq!(got.command, ProxyCommand::Proxy);
                assert_eq!(got.source, Some(addr(src)));
                assert_eq!(got.destination, Some(addr(dst)));
                assert_eq!(got.identity, identity, "{src} crc={crc}");
            }
        }
    }
}

#[test]
fn mixed_families_are_sent_as_v6_and_decoded_canonical() {
    let header = encode_v2(&spec(
        "192.0.2.1:1",
        "[2001:db8::2]:2",
        PeerIdentity::default(),
        false,
    ));
    assert_eq!(header[13], 0x21, "TCP over IPv6");
    let got = decode_v2(&header).unwrap();
    assert_eq!(got.source, Some(addr("192.0.2.1:1")));
    assert_eq!(got.destination, Some(addr("[2001:db8::2]:2")));

    let v1 = encode_v1(addr("192.0.2.1:1"), addr("[2001:db8::2]:2"));
    assert_eq!(v1, b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::2 1 2\r\n");
}

#[test]
fn crc_is_over_the_whole_header_with_the_field_zeroed() {
    let mut header = encode_v2(&spec("192.0.2.1:1", "10.0.0.1:2", full_identity(), true));
    // The CRC TLV comes right after the 12 address bytes.
    let at = 16 + 12;
    assert_eq!(&header[at..at + 3], &[0x03, 0x00, 0x04]);
    let stored = u32::from_be_bytes(header[at + 3..at + 7].try_into().unwrap());
    header[at + 3..at + 7].fill(0);
    assert_eq!(crc32c::crc32c(&header), stored);
    // proxy-header sees the same value.
    header[at + 3..at + 7].copy_from_slice(&stored.to_be_bytes());
    let (parsed, _) = ProxyHeader::parse(&header, Default::default()).unwrap();
    assert_eq!(parsed.crc32c(), Some(stored));
}

/// Without our custom TLVs (and the sub-TLVs proxy-header has no type for), our bytes are exactly what
/// proxy-header's builder writes for the same content.
#[test]
fn byte_identical_to_proxy_header_builder() {
    let identity = PeerIdentity {
        tls: true,
        cert_presented: true,
        cert_verified: true,
        tls_version: Some("TLSv1.3".into()),
        cn: Some("device-17".into()),
        cipher: Some("TLS_AES_128_GCM_SHA256".into()),
        sig_alg: Some("SHA256".into()),
        key_alg: Some("RSA2048".into()),
        authority: Some("mqtt.example.com".into()),
        unique_id: Some(b"abc".to_vec()),
        alpn: Some(b"mqtt".to_vec()),
        ..PeerIdentity::default()
    };
    for (src, dst) in [
        ("192.0.2.1:50000", "10.0.0.1:8883"),
        ("[2001:db8::1]:50000", "[::1]:8883"),
    ] {
        let ours = encode_v2(&spec(src, dst, identity.clone(), false));

        let mut ssl = SslInfo::new(true, true, false, 0);
        ssl.append_tlv(Tlv::SslVersion("TLSv1.3".into()));
        ssl.append_tlv(Tlv::SslCn("device-17".into()));
        ssl.append_tlv(Tlv::SslCipher("TLS_AES_128_GCM_SHA256".into()));
        ssl.append_tlv(Tlv::SslSigAlg("SHA256".into()));
        ssl.append_tlv(Tlv::SslKeyAlg("RSA2048".into()));
        let theirs = ProxyHeader::with_tlvs(
            Some(ProxiedAddress::stream(addr(src), addr(dst))),
            [
                Tlv::Alpn(b"mqtt"[..].into()),
                Tlv::Authority("mqtt.example.com".into()),
                Tlv::UniqueId(b"abc"[..].into()),
                Tlv::Ssl(ssl),
            ],
        );
        let mut buf = Vec::new();
        theirs.encode_v2(&mut buf).unwrap();
        assert_eq!(ours, buf);
    }

    let mut local = Vec::new();
    ProxyHeader::with_local().encode_v2(&mut local).unwrap();
    assert_eq!(encode_v2_local(), local);

    for (src, dst) in [
        ("192.0.2.1:50000", "10.0.0.1:8883"),
        ("[2001:db8::1]:50000", "[::1]:8883"),
    ] {
        let mut v1 = Vec::new();
        ProxyHeader::with_address(ProxiedAddress::stream(addr(src), addr(dst)))
            .encode_v1(&mut v1)
            .unwrap();
        assert_eq!(encode_v1(addr(src), addr(dst)), v1);
    }
}

#[test]
fn ssl_flags_follow_the_identity() {
    let ssl_bytes = |identity: PeerIdentity| {
        let header = encode_v2(&spec("192.0.2.1:1", "10.0.0.1:2", identity, false));
        let (parsed, _) = ProxyHeader::parse(&header, Default::default()).unwrap();
        parsed
            .ssl()
            .map(|s| (s.client_ssl(), s.client_cert_conn(), s.verify()))
    };
    assert_eq!(ssl_bytes(PeerIdentity::default()), None);
    let tls = PeerIdentity {
        tls: true,
        ..PeerIdentity::default()
    };
    assert_eq!(ssl_bytes(tls.clone()), Some((true, false, 1)));
    let presented = PeerIdentity {
        cert_presented: true,
        ..tls.clone()
    };
    assert_eq!(ssl_bytes(presented.clone()), Some((true, true, 1)));
    let verified = PeerIdentity {
        cert_verified: true,
        ..presented
    };
    assert_eq!(ssl_bytes(verified), Some((true, true, 0)));
    // "verified" without a presented certificate is not sent as verify == 0.
    let bogus = PeerIdentity {
        cert_verified: true,
        ..tls
    };
    assert_eq!(ssl_bytes(bogus), Some((true, false, 1)));
}

#[test]
fn encoder_leaves_out_what_the_decoder_would_reject() {
    let mut identity = full_identity();
    identity.cn = Some("evil\ncn".into());
    identity.authority = Some("a".repeat(MAX_TLV_STRING + 1));
    identity.client_cert_der = Some(vec![0; MAX_CLIENT_CERT + 1]);
    identity.sans = (0..MAX_SANS + 5).map(|i| format!("DNS:h{i}")).collect();
    identity.sans[0] = "DNS:\u{1b}[31m".into();
    let got = decode_v2(&encode_v2(&spec(
        "192.0.2.1:1",
        "10.0.0.1:2",
        identity,
        true,
    )))
    .unwrap();
    assert_eq!(got.identity.cn, None);
    assert_eq!(got.identity.authority, None);
    assert_eq!(got.identity.client_cert_der, None);
    assert_eq!(got.identity.sans.len(), MAX_SANS);
    assert_eq!(got.identity.sans[0], "DNS:h1");
}

#[test]
fn largest_identity_fits_the_default_header_cap() {
    let long = "x".repeat(MAX_TLV_STRING);
    let identity = PeerIdentity {
        tls_version: Some(long.clone()),
        cn: Some(long.clone()),
        cipher: Some(long.clone()),
        sig_alg: Some(long.clone()),
        key_alg: Some(long.clone()),
        group: Some(long.clone()),
        sig_scheme: Some(long.clone()),
        client_cert_der: Some(vec![0x30; MAX_CLIENT_CERT]),
        sans: vec![long.clone(); MAX_SANS],
        authority: Some(long.clone()),
        unique_id: Some(vec![1; MAX_UNIQUE_ID]),
        alpn: Some(vec![b'a'; MAX_ALPN]),
        lb_client_id: Some(long),
        ..full_identity()
    };
    let header = encode_v2(&spec(
        "[2001:db8::1]:1",
        "[2001:db8::2]:2",
        identity.clone(),
        true,
    ));
    assert!(
        header.len() <= DEFAULT_MAX_HEADER_LEN,
        "{} bytes",
        header.len()
    );
    assert_eq!(decode_v2(&header).unwrap().identity, identity);
}

#[test]
fn local_and_v1_shapes() {
    assert_eq!(encode_v2_local(), b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00");
    assert_eq!(
        encode_v1(addr("192.0.2.1:50000"), addr("10.0.0.1:1883")),
        b"PROXY TCP4 192.0.2.1 10.0.0.1 50000 1883\r\n"
    );
}

#[test]
fn debug_never_prints_the_certificate() {
    let text = format!("{:?}", full_identity());
    assert!(text.contains("client_cert_der_len: Some(1500)"));
    assert!(!text.contains("[0, 1, 2"));
}
