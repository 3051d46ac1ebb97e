//! The v2 TLV layer shared by the decoder and the encoder: type numbers, size caps, the raw walk and the value
//! rules (see the table in the module root).

use super::error::ProxyError;

pub(crate) const PP2_TYPE_ALPN: u8 = 0x01;
pub(crate) const PP2_TYPE_AUTHORITY: u8 = 0x02;
pub(crate) const PP2_TYPE_CRC32C: u8 = 0x03;
pub(crate) const PP2_TYPE_UNIQUE_ID: u8 = 0x05;
pub(crate) const PP2_TYPE_SSL: u8 = 0x20;
pub(crate) const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
pub(crate) const PP2_SUBTYPE_SSL_CN: u8 = 0x22;
pub(crate) const PP2_SUBTYPE_SSL_CIPHER: u8 = 0x23;
pub(crate) const PP2_SUBTYPE_SSL_SIG_ALG: u8 = 0x24;
pub(crate) const PP2_SUBTYPE_SSL_KEY_ALG: u8 = 0x25;
pub(crate) const PP2_SUBTYPE_SSL_GROUP: u8 = 0x26;
pub(crate) const PP2_SUBTYPE_SSL_SIG_SCHEME: u8 = 0x27;
pub(crate) const PP2_SUBTYPE_SSL_CLIENT_CERT: u8 = 0x28;
/// Fleetgate: the MQTT client ID the LB read from the CONNECT.
pub(crate) const FLEETGATE_TYPE_CLIENT_ID: u8 = 0xE0;
/// Fleetgate: one SAN of the verified client certificate (repeatable).
pub(crate) const FLEETGATE_TYPE_SAN: u8 = 0xE1;

pub(crate) const PP2_CLIENT_SSL: u8 = 0x01;
pub(crate) const PP2_CLIENT_CERT_CONN: u8 = 0x02;

/// Cap on every string TLV (SNI, CN, cipher, client ID, one SAN, ...): real values are far shorter, and each ends
/// up in logs, metrics labels or ACL lookups.
pub const MAX_TLV_STRING: usize = 256;
/// Cap on the client certificate DER: a leaf certificate is 1–2 KiB; 16 KiB leaves room for big RSA keys and
/// many extensions without letting one header pin 64 KiB per connection.
pub const MAX_CLIENT_CERT: usize = 16 * 1024;
/// Cap on SAN entries: keeps a full header (16 KiB certificate included) under the default 32 KiB header cap.
pub const MAX_SANS: usize = 32;
/// Cap on ALPN bytes (a protocol list from the TLS ClientHello is tiny).
pub const MAX_ALPN: usize = 256;
/// The PROXY v2 spec limits the unique ID to 128 bytes.
pub const MAX_UNIQUE_ID: usize = 128;

/// One TLV as it sits in the header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawTlv<'a> {
    pub kind: u8,
    /// Offset of the value within the buffer given to [`split`].
    pub offset: usize,
    pub value: &'a [u8],
}

/// Splits a TLV area into its entries; a length running past the end is [`ProxyError::BadTlv`].
pub(crate) fn split(mut buf: &[u8]) -> Result<Vec<RawTlv<'_>>, ProxyError> {
    let mut out = Vec::new();
    let mut offset = 0;
    while let [kind, hi, lo, rest @ ..] = buf {
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        let Some((value, tail)) = rest.split_at_checked(len) else {
            return Err(bad(*kind, "length runs past the end of the header"));
        };
        out.push(RawTlv {
            kind: *kind,
            offset: offset + 3,
            value,
        });
        offset += 3 + len;
        buf = tail;
    }
    if !buf.is_empty() {
        return Err(bad(buf[0], "truncated TLV"));
    }
    Ok(out)
}

/// Shorthand for [`ProxyError::BadTlv`].
pub(crate) fn bad(kind: u8, why: &'static str) -> ProxyError {
    ProxyError::BadTlv { kind, why }
}

/// Checks a string value against the rules (size, UTF-8, no control character) and returns it.
pub(crate) fn check_str(kind: u8, value: &[u8]) -> Result<String, ProxyError> {
    if value.len() > MAX_TLV_STRING {
        return Err(bad(kind, "string too long"));
    }
    let s = std::str::from_utf8(value).map_err(|_| bad(kind, "not UTF-8"))?;
    if !is_clean(s) {
        return Err(bad(kind, "control character"));
    }
    Ok(s.to_owned())
}

/// True when `s` passes the decoder's string rules; the encoder omits values that don't.
pub(crate) fn str_ok(s: &str) -> bool {
    s.len() <= MAX_TLV_STRING && is_clean(s)
}

/// No C0 control (< 0x20), DEL (0x7f) or C1 control (U+0080–U+009F): they can forge log lines or terminals.
fn is_clean(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

/// Checks a byte value against a size cap.
pub(crate) fn check_bytes(kind: u8, value: &[u8], max: usize) -> Result<Vec<u8>, ProxyError> {
    if value.len() > max {
        return Err(bad(kind, "value too long"));
    }
    Ok(value.to_vec())
}

/// Appends one TLV. Callers keep values within the caps above, all far below the u16 length limit.
pub(crate) fn put(buf: &mut Vec<u8>, kind: u8, value: &[u8]) {
    debug_assert!(value.len() <= usize::from(u16::MAX));
    let len = u16::try_from(value.len()).unwrap_or(u16::MAX);
    buf.push(kind);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&value[..usize::from(len)]);
}
