//! Why reading a PROXY header failed; each variant has a metric/log label.

use thiserror::Error;

/// A PROXY header could not be accepted; the connection must be closed.
#[derive(Debug, Error)]
pub enum ProxyError {
    /// The peer is not in the trusted proxy list; nothing was read.
    #[error("peer is not a trusted proxy")]
    UntrustedPeer,
    /// The stream does not start with a PROXY v1 or v2 signature.
    #[error("no PROXY protocol header")]
    Missing,
    /// The header is syntactically invalid (bad command, family, address, v1 line over 107 bytes, ...).
    #[error("malformed PROXY header")]
    Malformed,
    /// The stream ended inside the header.
    #[error("connection closed inside the PROXY header")]
    Truncated,
    /// The header did not arrive within the policy's timeout.
    #[error("timed out reading the PROXY header")]
    Timeout,
    /// The v2 header announces more bytes than the policy allows.
    #[error("PROXY header of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Total header length announced (16-byte fixed part included).
        len: usize,
        /// The policy's `max_header_len`.
        max: usize,
    },
    /// The CRC32C TLV does not match the header.
    #[error("PROXY header CRC32C mismatch")]
    BadChecksum,
    /// A TLV is malformed, duplicated, oversized, not UTF-8 or holds control characters.
    #[error("bad PROXY TLV 0x{kind:02x}: {why}")]
    BadTlv {
        /// TLV type (sub-TLV type for SSL sub-fields).
        kind: u8,
        /// What was wrong, for logs.
        why: &'static str,
    },
    /// Reading from the socket failed (other than a clean EOF).
    #[error("I/O error reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

impl ProxyError {
    /// Snake-case label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::UntrustedPeer => "untrusted_peer",
            ProxyError::Missing => "missing",
            ProxyError::Malformed => "malformed",
            ProxyError::Truncated => "truncated",
            ProxyError::Timeout => "timeout",
            ProxyError::TooLarge { .. } => "too_large",
            ProxyError::BadChecksum => "bad_checksum",
            ProxyError::BadTlv { .. } => "bad_tlv",
            ProxyError::Io(_) => "io",
        }
    }
}
