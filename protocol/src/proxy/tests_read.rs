//! Tests of `read_header`: exact reads, every error class, the identity rules and a bounded fuzz run.

use std::net::SocketAddr;
use std::time::Duration;

use proxy_header::{ProxiedAddress, ProxyHeader, SslInfo, Tlv};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::tests_encode::{addr, full_identity};
use super::*;

const MQTT_CONNECT: &[u8] = b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04abcd";

fn policy() -> ProxyPolicy {
    ProxyPolicy::new(TrustedProxies(vec![
        "127.0.0.0/8".parse().unwrap(),
        "fd00::/8".parse().unwrap(),
    ]))
}

fn trusted_peer() -> SocketAddr {
    addr("127.0.0.1:40000")
}

/// Runs `read_header` on a byte slice; returns the result and what was left unread.
async fn read(bytes: &[u8]) -> (Result<ProxiedConnection, ProxyError>, &[u8]) {
    let mut rest = bytes;
    let result = read_header(&mut rest, trusted_peer(), &policy()).await;
    (result, rest)
}

fn valid_v2(crc32c: bool) -> Vec<u8> {
    encode_v2(&HeaderSpec {
        source: addr("192.0.2.1:50000"),
        destination: addr("10.0.0.1:8883"),
        identity: full_identity(),
        crc32c,
    })
}

/// A v2 header built with proxy-header's builder, for TLVs our encoder refuses to write.
fn raw_v2(tlvs: Vec<Tlv<'_>>) -> Vec<u8> {
    let header = ProxyHeader::with_tlvs(
        Some(ProxiedAddress::stream(
            addr("192.0.2.1:1"),
            addr("10.0.0.1:2"),
        )),
        tlvs,
    );
    let mut buf = Vec::new();
    header.encode_v2(&mut buf).unwrap();
    buf
}

fn ssl(client_ssl: bool, conn: bool, sess: bool, verify: u32, subs: Vec<Tlv<'_>>) -> Tlv<'static> {
    let mut info = SslInfo::new(client_ssl, conn, sess, verify);
    for sub in subs {
        info.append_tlv(sub);
    }
    Tlv::Ssl(info.into_owned())
}

fn reason(result: Result<ProxiedConnection, ProxyError>) -> &'static str {
    result.err().map(|e| e.reason()).unwrap_or("ok")
}

#[tokio::test]
async fn leaves_the_mqtt_bytes_unread() {
    let v1 = encode_v1(addr("192.0.2.1:50000"), addr("10.0.0.1:1883"));
    for header in [valid_v2(false), valid_v2(true), encode_v2_local(), v1] {
        let stream = [header.as_slice(), MQTT_CONNECT].concat();
        let (result, rest) = read(&stream).await;
        result.unwrap();
        assert_eq!(rest, MQTT_CONNECT);
    }
}

#[tokio::test]
async fn real_socket_reads_exactly_the_header() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    let client = tokio::spawn(async move {
        let mut s = tokio::net::TcpStream::connect(target).await.unwrap();
        // Header and MQTT bytes in one write: they arrive together, as from a real LB.
        s.write_all(&[valid_v2(true).as_slice(), MQTT_CONNECT].concat())
            .await
            .unwrap();
        s.shutdown().await.unwrap();
    });
    let (mut sock, peer) = listener.accept().await.unwrap();
    let got = read_header(&mut sock, peer, &policy()).await.unwrap();
    assert_eq!(got.identity, full_identity());
    let mut rest = Vec::new();
    sock.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, MQTT_CONNECT);
    client.await.unwrap();
}

#[tokio::test]
async fn every_strict_prefix_is_truncated() {
    let v1 = encode_v1(addr("[2001:db8::1]:50000"), addr("[2001:db8::2]:1883"));
    for header in [valid_v2(true), encode_v2_local(), v1] {
        for len in 0..header.len() {
            let (result, _) = read(&header[..len]).await;
            assert_eq!(reason(result), "truncated", "prefix of {len} bytes");
        }
    }
}

#[tokio::test]
async fn garbage_is_missing() {
    for input in [
        MQTT_CONNECT,
        b"GET / HTTP/1.1\r\n",
        b"\r\n\r\nX",
        b"PROXX TCP4",
        b"PROXYTCP4 1.2.3.4",
    ] {
        let (result, _) = read(input).await;
        assert_eq!(reason(result), "missing", "{input:?}");
    }
    // The first byte of an MQTT CONNECT is enough to refuse it.
    let (_, rest) = read(MQTT_CONNECT).await;
    assert_eq!(rest, &MQTT_CONNECT[1..]);
}

#[tokio::test]
async fn untrusted_peer_is_refused_before_reading() {
    let stream = valid_v2(false);
    let mut rest = stream.as_slice();
    for peer in ["192.0.2.9:1", "[2001:db8::1]:1", "[::ffff:10.0.0.1]:1"] {
        let err = read_header(&mut rest, addr(peer), &policy())
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "untrusted_peer");
        assert_eq!(rest.len(), stream.len(), "nothing consumed");
    }
}

#[test]
fn trusted_proxies_handle_mapped_addresses() {
    let v4 = TrustedProxies(vec!["10.0.0.0/8".parse().unwrap()]);
    assert!(v4.contains("10.1.2.3".parse().unwrap()));
    assert!(v4.contains("::ffff:10.1.2.3".parse().unwrap()));
    assert!(!v4.contains("11.0.0.1".parse().unwrap()));
    assert!(!v4.contains("::ffff:11.0.0.1".parse().unwrap()));
    let mapped = TrustedProxies(vec!["::ffff:10.0.0.0/104".parse().unwrap()]);
    assert!(mapped.contains("10.1.2.3".parse().unwrap()));
    assert!(mapped.contains("::ffff:10.1.2.3".parse().unwrap()));
    assert!(!TrustedProxies::default().contains("127.0.0.1".parse().unwrap()));
}

#[tokio::test]
async fn timeout_bounds_a_stalled_header() {
    let (mut client, mut server) = tokio::io::duplex(1024);
    let header = valid_v2(false);
    client.write_all(&header[..20]).await.unwrap();
    let policy = ProxyPolicy {
        timeout: Duration::from_millis(50),
        ..policy()
    };
    let err = read_header(&mut server, trusted_peer(), &policy)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "timeout");
    drop(client);
}

#[tokio::test]
async fn too_large_is_refused_before_reading_the_body() {
    let header = valid_v2(false);
    let policy = ProxyPolicy {
        max_header_len: header.len() - 1,
        ..policy()
    };
    let mut rest = header.as_slice();
    let err = read_header(&mut rest, trusted_peer(), &policy)
        .await
        .unwrap_err();
    assert!(matches!(err, ProxyError::TooLarge { len, .. } if len == header.len()));
    assert_eq!(
        rest.len(),
        header.len() - 16,
        "only the fixed part was read"
    );
}

#[tokio::test]
async fn bad_checksum() {
    let mut header = valid_v2(true);
    let last = header.len() - 1;
    header[last] ^= 0x01;
    assert_eq!(reason(read(&header).await.0), "bad_checksum");
    // A wrong CRC value itself.
    let mut header = valid_v2(true);
    header[16 + 12 + 3] ^= 0x80;
    assert_eq!(reason(read(&header).await.0), "bad_checksum");
}

#[tokio::test]
async fn control_characters_and_bad_utf8_are_rejected() {
    let cases = vec![
        raw_v2(vec![ssl(
            true,
            true,
            false,
            0,
            vec![Tlv::SslCn("dev\r\nice".into())],
        )]),
        raw_v2(vec![ssl(
            true,
            true,
            false,
            0,
            vec![Tlv::SslCn("a\u{7f}".into())],
        )]),
        raw_v2(vec![ssl(
            true,
            true,
            false,
            0,
            vec![Tlv::SslCn("a\u{85}".into())],
        )]),
        raw_v2(vec![ssl(
            true,
            true,
            false,
            0,
            vec![Tlv::Custom(0x22, b"\xff\xfe"[..].into())],
        )]),
        raw_v2(vec![Tlv::Authority("host\0name".into())]),
        raw_v2(vec![Tlv::Custom(0x02, b"\xc3\x28"[..].into())]),
        raw_v2(vec![Tlv::Custom(0xE0, b"client\x1b[2J"[..].into())]),
        raw_v2(vec![Tlv::Custom(0xE1, b"DNS:a\tb"[..].into())]),
        raw_v2(vec![ssl(
            true,
            false,
            false,
            1,
            vec![Tlv::Custom(0x26, b"X25519\n"[..].into())],
        )]),
    ];
    for header in cases {
        assert_eq!(reason(read(&header).await.0), "bad_tlv", "{header:?}");
    }
}

#[tokio::test]
async fn oversize_and_duplicate_tlvs_are_rejected() {
    let long = "a".repeat(MAX_TLV_STRING + 1);
    let cases = vec![
        raw_v2(vec![ssl(
            true,
            true,
            false,
            0,
            vec![Tlv::SslCn(long.as_str().into())],
        )]),
        raw_v2(vec![Tlv::Authority(long.as_str().into())]),
        raw_v2(vec![Tlv::UniqueId(vec![0; MAX_UNIQUE_ID + 1].into())]),
        raw_v2(vec![ssl(
            true,
            true,
            false,
            0,
            vec![Tlv::Custom(0x28, vec![0; MAX_CLIENT_CERT + 1].into())],
        )]),
        raw_v2(
            (0..=MAX_SANS)
                .map(|_| Tlv::Custom(0xE1, b"DNS:x"[..].into()))
                .collect(),
        ),
        raw_v2(vec![Tlv::Authority("a".into()), Tlv::Authority("b".into())]),
        raw_v2(vec![ssl(
            true,
            true,
            false,
            0,
            vec![Tlv::SslCn("a".into()), Tlv::SslCn("b".into())],
        )]),
        raw_v2(vec![
            ssl(true, false, false, 1, vec![]),
            ssl(true, true, false, 0, vec![]),
        ]),
        raw_v2(vec![Tlv::Custom(0x03, b"\0\0"[..].into())]),
    ];
    let policy = ProxyPolicy {
        max_header_len: 65_551,
        ..policy()
    };
    for header in cases {
        let mut rest = header.as_slice();
        let err = read_header(&mut rest, trusted_peer(), &policy)
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "bad_tlv", "{header:?}");
    }
    // A TLV length running past the end of the header.
    let mut header = raw_v2(vec![Tlv::Authority("abc".into())]);
    let at = header.len() - 4;
    header[at + 2] = 9;
    assert_eq!(reason(read(&header).await.0), "bad_tlv");
}

#[tokio::test]
async fn certificate_identity_requires_flag_and_verify_zero() {
    let subs = || {
        vec![
            Tlv::SslCn("device".into()),
            Tlv::Custom(0x28, b"\x30\x03der"[..].into()),
        ]
    };
    let san = || Tlv::Custom(0xE1, b"DNS:device".as_slice().into());
    // (conn, sess, verify) → verified?
    for (conn, sess, verify, verified) in [
        (true, false, 0, true),
        (false, true, 0, true),
        (false, false, 0, false),
        (true, true, 1, false),
    ] {
        let header = raw_v2(vec![ssl(true, conn, sess, verify, subs()), san()]);
        let id = read(&header).await.0.unwrap().identity;
        assert!(id.tls);
        assert_eq!(id.cert_presented, conn || sess);
        assert_eq!(
            id.cert_verified, verified,
            "conn={conn} sess={sess} verify={verify}"
        );
        if verified {
            assert_eq!(id.cn.as_deref(), Some("device"));
            assert_eq!(id.sans, ["DNS:device"]);
            assert_eq!(id.client_cert_der.as_deref(), Some(&b"\x30\x03der"[..]));
        } else {
            assert_eq!((id.cn, id.sans.len(), id.client_cert_der), (None, 0, None));
        }
    }
    // SANs without any SSL TLV carry no identity either.
    let id = read(&raw_v2(vec![san()])).await.0.unwrap().identity;
    assert!(!id.cert_verified && id.sans.is_empty());
}

#[tokio::test]
async fn unknown_and_noop_tlvs_are_ignored() {
    let header = raw_v2(vec![
        Tlv::Noop(5),
        Tlv::Custom(0xE7, b"\x00\x01"[..].into()),
        Tlv::Netns("ns1".into()),
        Tlv::Authority("ok".into()),
    ]);
    let id = read(&header).await.0.unwrap().identity;
    assert_eq!(id.authority.as_deref(), Some("ok"));
}

#[tokio::test]
async fn v1_variants() {
    let cases: [(&[u8], Option<&str>, Option<&str>); 4] = [
        (
            b"PROXY TCP4 192.0.2.1 10.0.0.1 50000 1883\r\n",
            Some("192.0.2.1:50000"),
            Some("10.0.0.1:1883"),
        ),
        (
            b"PROXY TCP6 2001:db8::1 ::1 50000 1883\r\n",
            Some("[2001:db8::1]:50000"),
            Some("[::1]:1883"),
        ),
        (
            b"PROXY TCP6 ::ffff:192.0.2.1 ::1 5 6\r\n",
            Some("192.0.2.1:5"),
            Some("[::1]:6"),
        ),
        (
            b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
            None,
            None,
        ),
    ];
    for (line, source, destination) in cases {
        let stream = [line, MQTT_CONNECT].concat();
        let (result, rest) = read(&stream).await;
        let got = result.unwrap();
        assert_eq!(got.command, ProxyCommand::Proxy);
        assert_eq!(got.source, source.map(addr));
        assert_eq!(got.destination, destination.map(addr));
        assert_eq!(got.identity, PeerIdentity::default());
        assert_eq!(rest, MQTT_CONNECT);
    }
    for bad in [
        &b"PROXY TCP4 2001:db8::1 ::1 1 2\r\n"[..],
        b"PROXY TCP4 192.0.2.1 10.0.0.1 50000 1883\n",
        b"PROXY TCP4 192.0.2.1 10.0.0.1 50000 99999\r\n",
        b"PROXY UDP4 192.0.2.1 10.0.0.1 1 2\r\n",
    ] {
        assert_eq!(reason(read(bad).await.0), "malformed", "{bad:?}");
    }
    // No CRLF within 107 bytes: refused without reading further.
    let long = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 200]].concat();
    let (result, rest) = read(&long).await;
    assert_eq!(reason(result), "malformed");
    assert_eq!(rest.len(), long.len() - 107);
}

#[tokio::test]
async fn local_command() {
    let (result, _) = read(&encode_v2_local()).await;
    let got = result.unwrap();
    assert_eq!(got.command, ProxyCommand::Local);
    assert_eq!((got.source, got.destination), (None, None));
    // LOCAL with an address block: the addresses are ignored.
    let mut header = valid_v2(false);
    header[12] = 0x20;
    let got = read(&header).await.0.unwrap();
    assert_eq!((got.command, got.source), (ProxyCommand::Local, None));
}

#[tokio::test]
async fn v2_malformed_fixed_part() {
    let base = valid_v2(false);
    let mut cases = Vec::new();
    for (at, value) in [(12, 0x11), (12, 0x22), (13, 0x12), (13, 0x13), (13, 0x41)] {
        let mut h = base.clone();
        h[at] = value;
        cases.push(h);
    }
    // Announced length shorter than the address block.
    let mut h = encode_v2(&HeaderSpec {
        source: addr("192.0.2.1:1"),
        destination: addr("10.0.0.1:2"),
        identity: PeerIdentity::default(),
        crc32c: false,
    });
    h[15] = 4;
    h.truncate(20);
    cases.push(h);
    for header in cases {
        assert_eq!(reason(read(&header).await.0), "malformed", "{header:?}");
    }
    // PROXY over AF_UNSPEC: accepted, use the socket's addresses.
    let mut unspec = encode_v2_local();
    unspec[12] = 0x21;
    let got = read(&unspec).await.0.unwrap();
    assert_eq!((got.command, got.source), (ProxyCommand::Proxy, None));
}

/// splitmix64: a fixed-seed generator, so a failing input can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// 20,000 random inputs and mutations of valid headers: never a panic, never a read past the header.
#[tokio::test]
async fn fuzz_does_not_panic() {
    let mut rng = Rng(0x00f1_ee79_a7e0);
    let seeds = [
        valid_v2(true),
        valid_v2(false),
        encode_v1(addr("192.0.2.1:1"), addr("[::1]:2")),
    ];
    let prefixes: [&[u8]; 3] = [b"", b"\r\n\r\n\0\r\nQUIT\n", b"PROXY "];
    for i in 0..20_000 {
        let input: Vec<u8> = if i % 2 == 0 {
            let prefix = prefixes[rng.below(prefixes.len())];
            let len = rng.below(300);
            prefix
                .iter()
                .copied()
                .chain((0..len).map(|_| rng.next() as u8))
                .collect()
        } else {
            let mut h = seeds[rng.below(seeds.len())].clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(h.len());
                match rng.below(4) {
                    0 => h[at] = rng.next() as u8,
                    1 => h[at] ^= 1 << rng.below(8),
                    2 => h.truncate(at),
                    _ => h.insert(at, rng.next() as u8),
                }
                if h.is_empty() {
                    break;
                }
            }
            h
        };
        let (result, rest) = read(&input).await;
        let consumed = input.len() - rest.len();
        if result.is_ok() {
            assert!(consumed <= DEFAULT_MAX_HEADER_LEN);
        }
    }
}
