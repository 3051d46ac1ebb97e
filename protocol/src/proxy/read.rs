//! Reading exactly one PROXY header off a fresh connection, before any MQTT byte: trusted-peer check first, then
//! v2 (16 bytes, then the announced length) or v1 (byte by byte up to CRLF), all under one timeout.

use std::io::ErrorKind;
use std::net::SocketAddr;

use proxy_header::{ParseConfig, Protocol, ProxyHeader};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::error::ProxyError;
use super::identity::{self, PeerIdentity, ProxiedConnection, ProxyCommand};
use super::policy::ProxyPolicy;
use super::tlv;

/// The 12-byte v2 signature.
pub(crate) const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family/protocol, length.
pub(crate) const V2_FIXED_LEN: usize = 16;
/// A v1 header starts with these bytes.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The v1 spec's worst case ("PROXY TCP6" + two full IPv6 addresses + ports + CRLF) is 107 bytes.
const V1_MAX_LEN: usize = 107;

/// Reads one PROXY v1/v2 header from `stream` and nothing after it (the next byte is the client's first MQTT
/// byte). `peer` (the socket's peer address) must be in `policy.trusted`, checked before reading anything. The
/// whole read is bounded by `policy.timeout` and `policy.max_header_len`.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    peer: SocketAddr,
    policy: &ProxyPolicy,
) -> Result<ProxiedConnection, ProxyError> {
    if !policy.trusted.contains(peer.ip()) {
        return Err(ProxyError::UntrustedPeer);
    }
    tokio::time::timeout(policy.timeout, read_any(stream, policy.max_header_len))
        .await
        .unwrap_or(Err(ProxyError::Timeout))
}

async fn read_any<S: AsyncRead + Unpin>(
    stream: &mut S,
    max_header_len: usize,
) -> Result<ProxiedConnection, ProxyError> {
    let mut first = [0u8; 1];
    read_signature(stream, &mut first, 0, &[]).await?;
    match first[0] {
        b'\r' => read_v2(stream, max_header_len).await,
        b'P' => read_v1(stream).await,
        _ => Err(ProxyError::Missing),
    }
}

/// Fills `buf[filled..]`, failing with `Missing` as soon as the bytes read diverge from `signature` (so garbage
/// is refused without waiting for more), `Truncated` on EOF.
async fn read_signature<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
    mut filled: usize,
    signature: &[u8],
) -> Result<(), ProxyError> {
    while filled < buf.len() {
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Err(ProxyError::Truncated);
        }
        filled += n;
        let checked = filled.min(signature.len());
        if buf[..checked] != signature[..checked] {
            return Err(ProxyError::Missing);
        }
    }
    Ok(())
}

async fn read_v2<S: AsyncRead + Unpin>(
    stream: &mut S,
    max_header_len: usize,
) -> Result<ProxiedConnection, ProxyError> {
    let mut fixed = [0u8; V2_FIXED_LEN];
    fixed[0] = b'\r';
    read_signature(stream, &mut fixed, 1, V2_SIGNATURE).await?;
    let total = V2_FIXED_LEN + usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if total > max_header_len {
        return Err(ProxyError::TooLarge {
            len: total,
            max: max_header_len,
        });
    }
    let mut buf = vec![0u8; total];
    buf[..V2_FIXED_LEN].copy_from_slice(&fixed);
    stream
        .read_exact(&mut buf[V2_FIXED_LEN..])
        .await
        .map_err(eof_is_truncated)?;
    decode_v2(&buf)
}

/// Decodes a complete v2 header (`buf` is exactly the header).
pub(crate) fn decode_v2(buf: &[u8]) -> Result<ProxiedConnection, ProxyError> {
    let config = ParseConfig {
        include_tlvs: false,
        allow_v1: false,
        allow_v2: true,
    };
    let (header, len) = ProxyHeader::parse(buf, config).map_err(|_| ProxyError::Malformed)?;
    if len != buf.len() {
        return Err(ProxyError::Malformed);
    }
    // proxy-header folds LOCAL and PROXY-with-AF_UNSPEC into "no address": take the command from the byte.
    let command = match buf[12] & 0x0F {
        0x0 => ProxyCommand::Local,
        _ => ProxyCommand::Proxy,
    };
    let addr_len = match buf[13] {
        0x00 => 0,
        0x11 | 0x12 => 12,
        0x21 | 0x22 => 36,
        0x31 | 0x32 => 216,
        _ => return Err(ProxyError::Malformed),
    };
    let (source, destination) = match (command, header.proxied_address()) {
        (ProxyCommand::Proxy, Some(addr)) if addr.protocol == Protocol::Datagram => {
            return Err(ProxyError::Malformed);
        }
        (ProxyCommand::Proxy, Some(addr)) => (
            Some(canonical(addr.source)),
            Some(canonical(addr.destination)),
        ),
        _ => (None, None),
    };
    let area_start = V2_FIXED_LEN + addr_len;
    let area = buf.get(area_start..).ok_or(ProxyError::Malformed)?;
    let tlvs = tlv::split(area)?;
    check_crc(buf, area_start, &tlvs)?;
    let identity = identity::decode(&tlvs)?;
    Ok(ProxiedConnection {
        command,
        source,
        destination,
        identity,
    })
}

/// Verifies the CRC32C TLV if present: CRC32C of the whole header with the 4 value bytes zeroed.
fn check_crc(buf: &[u8], area_start: usize, tlvs: &[tlv::RawTlv<'_>]) -> Result<(), ProxyError> {
    let Some(raw) = tlvs.iter().find(|t| t.kind == tlv::PP2_TYPE_CRC32C) else {
        return Ok(());
    };
    let Ok(stored) = <[u8; 4]>::try_from(raw.value) else {
        return Err(tlv::bad(raw.kind, "CRC32C value is not 4 bytes"));
    };
    let at = area_start + raw.offset;
    let crc = crc32c::crc32c(&buf[..at]);
    let crc = crc32c::crc32c_append(crc, &[0; 4]);
    let crc = crc32c::crc32c_append(crc, &buf[at + 4..]);
    if crc != u32::from_be_bytes(stored) {
        return Err(ProxyError::BadChecksum);
    }
    Ok(())
}

async fn read_v1<S: AsyncRead + Unpin>(stream: &mut S) -> Result<ProxiedConnection, ProxyError> {
    let mut line = Vec::with_capacity(V1_MAX_LEN);
    line.push(b'P');
    let mut byte = [0u8; 1];
    // One byte per read: the line has no length prefix, and reading ahead would swallow MQTT bytes.
    loop {
        let n = stream.read(&mut byte).await?;
        if n == 0 {
            return Err(ProxyError::Truncated);
        }
        line.push(byte[0]);
        if line.len() <= V1_PREFIX.len() && line[line.len() - 1] != V1_PREFIX[line.len() - 1] {
            return Err(ProxyError::Missing);
        }
        if byte[0] == b'\n' {
            break;
        }
        if line.len() >= V1_MAX_LEN {
            return Err(ProxyError::Malformed);
        }
    }
    if !line.ends_with(b"\r\n") {
        return Err(ProxyError::Malformed);
    }
    let config = ParseConfig {
        include_tlvs: false,
        allow_v1: true,
        allow_v2: false,
    };
    let (header, len) = ProxyHeader::parse(&line, config).map_err(|_| ProxyError::Malformed)?;
    if len != line.len() {
        return Err(ProxyError::Malformed);
    }
    let addr = header.proxied_address();
    Ok(ProxiedConnection {
        command: ProxyCommand::Proxy,
        source: addr.map(|a| canonical(a.source)),
        destination: addr.map(|a| canonical(a.destination)),
        identity: PeerIdentity::default(),
    })
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

fn eof_is_truncated(e: std::io::Error) -> ProxyError {
    if e.kind() == ErrorKind::UnexpectedEof {
        ProxyError::Truncated
    } else {
        ProxyError::Io(e)
    }
}
