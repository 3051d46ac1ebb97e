//! What a PROXY header tells the broker about the client: addresses and the TLS identity the LB saw. Built from
//! the TLV area after the header has been read and its checksum checked.

use std::fmt;
use std::net::SocketAddr;

use proxy_header::Tlv;

use super::error::ProxyError;
use super::tlv::{self, RawTlv, bad, check_bytes, check_str};

/// The v2 command (v1 headers are always `Proxy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyCommand {
    /// Sent by the proxy on its own behalf (health check): use the socket's addresses.
    Local,
    /// Relayed on behalf of a client.
    Proxy,
}

/// A successfully read PROXY header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxiedConnection {
    /// LOCAL or PROXY.
    pub command: ProxyCommand,
    /// The client's address (canonical: IPv4-mapped IPv6 shown as IPv4); `None` for LOCAL, `AF_UNSPEC`,
    /// `AF_UNIX` and v1 `UNKNOWN`, where the socket's peer address applies.
    pub source: Option<SocketAddr>,
    /// The address the client connected to (the LB's listener), canonical like `source`.
    pub destination: Option<SocketAddr>,
    /// TLS identity and the other TLVs.
    pub identity: PeerIdentity,
}

/// The client as the LB saw it. Certificate fields (`cn`, `sans`, `client_cert_der`) are only set when
/// `cert_verified`; check `cert_verified` before authenticating on anything here.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The client connected over TLS (`PP2_CLIENT_SSL`).
    pub tls: bool,
    /// A client certificate was presented on this connection or session (`CERT_CONN` or `CERT_SESS`).
    pub cert_presented: bool,
    /// A certificate was presented and `verify == 0`.
    pub cert_verified: bool,
    /// TLS version, e.g. `TLSv1.3`.
    pub tls_version: Option<String>,
    /// Subject CN of the verified client certificate.
    pub cn: Option<String>,
    /// Cipher suite name.
    pub cipher: Option<String>,
    /// Signature algorithm of the frontend's certificate.
    pub sig_alg: Option<String>,
    /// Key algorithm of the frontend's certificate.
    pub key_alg: Option<String>,
    /// Key-exchange group, e.g. `X25519`.
    pub group: Option<String>,
    /// Signature scheme of the handshake, e.g. `ecdsa_secp256r1_sha256`.
    pub sig_scheme: Option<String>,
    /// DER of the verified client certificate (never log it).
    pub client_cert_der: Option<Vec<u8>>,
    /// SANs of the verified client certificate, `DNS:`, `URI:`, `EMAIL:` or `IP:` prefixed.
    pub sans: Vec<String>,
    /// SNI / authority the client asked for.
    pub authority: Option<String>,
    /// Opaque connection ID from the proxy.
    pub unique_id: Option<Vec<u8>>,
    /// Negotiated ALPN protocol.
    pub alpn: Option<Vec<u8>>,
    /// MQTT client ID the LB read from the CONNECT (the broker still reads its own).
    pub lb_client_id: Option<String>,
}

impl fmt::Debug for PeerIdentity {
    // By hand so that a `{:?}` of a connection never dumps a whole certificate into a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerIdentity")
            .field("tls", &self.tls)
            .field("cert_presented", &self.cert_presented)
            .field("cert_verified", &self.cert_verified)
            .field("tls_version", &self.tls_version)
            .field("cn", &self.cn)
            .field("cipher", &self.cipher)
            .field("sig_alg", &self.sig_alg)
            .field("key_alg", &self.key_alg)
            .field("group", &self.group)
            .field("sig_scheme", &self.sig_scheme)
            .field(
                "client_cert_der_len",
                &self.client_cert_der.as_ref().map(Vec::len),
            )
            .field("sans", &self.sans)
            .field("authority", &self.authority)
            .field("unique_id", &self.unique_id)
            .field("alpn", &self.alpn)
            .field("lb_client_id", &self.lb_client_id)
            .finish()
    }
}

/// Stores a singleton field, rejecting a second occurrence.
fn once<T>(slot: &mut Option<T>, kind: u8, value: T) -> Result<(), ProxyError> {
    if slot.is_some() {
        return Err(bad(kind, "duplicate TLV"));
    }
    *slot = Some(value);
    Ok(())
}

/// Typed view of one TLV through `proxy-header`; its decode errors (bad UTF-8, short SSL/CRC) become `BadTlv`.
fn typed<'a>(raw: &RawTlv<'a>) -> Result<Tlv<'a>, ProxyError> {
    Tlv::decode(raw.kind, raw.value)
        .map_err(|_| bad(raw.kind, "invalid value (not UTF-8 or too short)"))
}

/// Builds the identity from the top-level TLVs (already split; the CRC32C has been checked by the caller).
pub(crate) fn decode(tlvs: &[RawTlv<'_>]) -> Result<PeerIdentity, ProxyError> {
    let mut id = PeerIdentity::default();
    let mut crc_seen = None;
    let mut ssl_seen = None;
    for raw in tlvs {
        match typed(raw)? {
            Tlv::Alpn(v) => once(
                &mut id.alpn,
                raw.kind,
                check_bytes(raw.kind, &v, tlv::MAX_ALPN)?,
            )?,
            Tlv::Authority(_) => {
                once(&mut id.authority, raw.kind, check_str(raw.kind, raw.value)?)?
            }
            Tlv::Crc32c(_) => once(&mut crc_seen, raw.kind, ())?,
            Tlv::UniqueId(v) => once(
                &mut id.unique_id,
                raw.kind,
                check_bytes(raw.kind, &v, tlv::MAX_UNIQUE_ID)?,
            )?,
            Tlv::Ssl(info) => {
                once(&mut ssl_seen, raw.kind, ())?;
                // proxy-header parsed `client` and `verify`; the sub-TLVs start after those 5 bytes.
                decode_ssl(
                    &mut id,
                    info.client_ssl(),
                    info.client_cert_conn() || info.client_cert_sess(),
                    info.verify(),
                    raw.value.get(5..).unwrap_or_default(),
                )?;
            }
            Tlv::Custom(tlv::FLEETGATE_TYPE_CLIENT_ID, v) => {
                once(&mut id.lb_client_id, raw.kind, check_str(raw.kind, &v)?)?
            }
            Tlv::Custom(tlv::FLEETGATE_TYPE_SAN, v) => {
                if id.sans.len() >= tlv::MAX_SANS {
                    return Err(bad(raw.kind, "too many SAN entries"));
                }
                id.sans.push(check_str(raw.kind, &v)?);
            }
            // NOOP, NETNS, sub-TLV types at top level, other custom types: ignored, as the spec asks.
            _ => {}
        }
    }
    if !id.cert_verified {
        id.sans.clear();
    }
    Ok(id)
}

/// Fills the TLS part of the identity from the SSL TLV.
fn decode_ssl(
    id: &mut PeerIdentity,
    client_ssl: bool,
    cert_flag: bool,
    verify: u32,
    sub_tlvs: &[u8],
) -> Result<(), ProxyError> {
    id.tls = client_ssl;
    id.cert_presented = cert_flag;
    // A verify of 0 without a certificate flag means nothing: no certificate, no identity.
    id.cert_verified = cert_flag && verify == 0;
    let mut cn = None;
    let mut der = None;
    for raw in tlv::split(sub_tlvs)? {
        match typed(&raw)? {
            Tlv::SslVersion(_) => once(
                &mut id.tls_version,
                raw.kind,
                check_str(raw.kind, raw.value)?,
            )?,
            Tlv::SslCn(_) => once(&mut cn, raw.kind, check_str(raw.kind, raw.value)?)?,
            Tlv::SslCipher(_) => once(&mut id.cipher, raw.kind, check_str(raw.kind, raw.value)?)?,
            Tlv::SslSigAlg(_) => once(&mut id.sig_alg, raw.kind, check_str(raw.kind, raw.value)?)?,
            Tlv::SslKeyAlg(_) => once(&mut id.key_alg, raw.kind, check_str(raw.kind, raw.value)?)?,
            // proxy-header 0.1.3 has no type for GROUP, SIG_SCHEME and CLIENT_CERT: they come out as Custom.
            Tlv::Custom(tlv::PP2_SUBTYPE_SSL_GROUP, v) => {
                once(&mut id.group, raw.kind, check_str(raw.kind, &v)?)?
            }
            Tlv::Custom(tlv::PP2_SUBTYPE_SSL_SIG_SCHEME, v) => {
                once(&mut id.sig_scheme, raw.kind, check_str(raw.kind, &v)?)?
            }
            Tlv::Custom(tlv::PP2_SUBTYPE_SSL_CLIENT_CERT, v) => once(
                &mut der,
                raw.kind,
                check_bytes(raw.kind, &v, tlv::MAX_CLIENT_CERT)?,
            )?,
            _ => {}
        }
    }
    if id.cert_verified {
        id.cn = cn;
        id.client_cert_der = der;
    }
    Ok(())
}
