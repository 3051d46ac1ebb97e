//! PROXY protocol v1/v2: the first thing read on a broker listener behind the LB ([`read_header`], with a
//! trusted-CIDR [`ProxyPolicy`]) and the first thing the LB writes to a backend ([`encode_v2`]). Parsing of the
//! fixed part, addresses and typed TLVs is done by the `proxy-header` crate; the byte-exact reading from the
//! socket, CRC32C, size/character rules and the identity mapping are ours.
//!
//! # TLVs (v2)
//!
//! | type | name | value | in [`PeerIdentity`] |
//! |---|---|---|---|
//! | `0x01` | `PP2_TYPE_ALPN` | bytes, ≤ 256 | `alpn` |
//! | `0x02` | `PP2_TYPE_AUTHORITY` | string (SNI) | `authority` |
//! | `0x03` | `PP2_TYPE_CRC32C` | u32 BE, CRC32C of the whole header with this field zeroed | checked, then dropped |
//! | `0x04` | `PP2_TYPE_NOOP` | padding | ignored |
//! | `0x05` | `PP2_TYPE_UNIQUE_ID` | bytes, ≤ 128 | `unique_id` |
//! | `0x20` | `PP2_TYPE_SSL` | `client` u8, `verify` u32 BE, sub-TLVs | `tls`, `cert_presented`, `cert_verified` |
//! | `0x21` | ↳ `PP2_SUBTYPE_SSL_VERSION` | string | `tls_version` |
//! | `0x22` | ↳ `PP2_SUBTYPE_SSL_CN` | string | `cn` (only if `cert_verified`) |
//! | `0x23` | ↳ `PP2_SUBTYPE_SSL_CIPHER` | string | `cipher` |
//! | `0x24` | ↳ `PP2_SUBTYPE_SSL_SIG_ALG` | string | `sig_alg` |
//! | `0x25` | ↳ `PP2_SUBTYPE_SSL_KEY_ALG` | string | `key_alg` |
//! | `0x26` | ↳ `PP2_SUBTYPE_SSL_GROUP` | string | `group` |
//! | `0x27` | ↳ `PP2_SUBTYPE_SSL_SIG_SCHEME` | string | `sig_scheme` |
//! | `0x28` | ↳ `PP2_SUBTYPE_SSL_CLIENT_CERT` | DER, ≤ 16 KiB | `client_cert_der` (only if `cert_verified`) |
//! | `0x30` | `PP2_TYPE_NETNS` | string | ignored |
//! | `0xE0` | Fleetgate: MQTT client ID as read by the LB | string | `lb_client_id` |
//! | `0xE1` | Fleetgate: one certificate SAN, repeatable (`DNS:host`, `URI:spiffe://x`, `EMAIL:a@b`, `IP:1.2.3.4`) | string | `sans` (only if `cert_verified`) |
//!
//! `SSL client` flags: `PP2_CLIENT_SSL` 0x01, `PP2_CLIENT_CERT_CONN` 0x02, `PP2_CLIENT_CERT_SESS` 0x04;
//! `verify` is 0 when a presented certificate was verified.
//!
//! # Decoder rules (enforced, each unit-tested)
//! - A string value is at most [`MAX_TLV_STRING`] bytes, valid UTF-8 and free of control characters (C0, DEL and
//!   C1), else [`ProxyError::BadTlv`]; the client certificate is at most [`MAX_CLIENT_CERT`] bytes; at most
//!   [`MAX_SANS`] SAN entries. A singleton TLV that appears twice is rejected. Unknown TLVs are ignored.
//! - `cert_verified` = (`CERT_CONN` or `CERT_SESS`) and `verify == 0`. The certificate identity (`cn`, `sans`,
//!   `client_cert_der`) is only filled in when `cert_verified`: a header claiming `verify == 0` without a
//!   certificate flag, or an unverified certificate, yields `cn == None`, no SANs and no DER.
//! - Addresses are canonicalised (`::ffff:a.b.c.d` → `a.b.c.d`). A v2 PROXY over UDP is rejected (`Malformed`);
//!   `AF_UNSPEC`/`AF_UNIX` and v1 `UNKNOWN` give `source == None`: use the socket's own addresses.

mod encode;
mod error;
mod identity;
mod policy;
mod read;
mod tlv;

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING)
mod tests_encode;
#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING)
mod tests_read;

pub use encode::{HeaderSpec, encode_v1, encode_v2, encode_v2_local};
pub use error::ProxyError;
pub use identity::{PeerIdentity, ProxiedConnection, ProxyCommand};
pub use policy::{DEFAULT_HEADER_TIMEOUT, DEFAULT_MAX_HEADER_LEN, ProxyPolicy, TrustedProxies};
pub use read::read_header;
pub use tlv::{MAX_ALPN, MAX_CLIENT_CERT, MAX_SANS, MAX_TLV_STRING, MAX_UNIQUE_ID};
