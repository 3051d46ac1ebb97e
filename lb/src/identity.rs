//! The client's TLS identity after the handshake, as the PROXY v2 TLVs carry it to the backend: protocol
//! version, cipher, key-exchange group, the LB's handshake signature scheme, SNI, ALPN and, for a verified client
//! certificate, its CN, SANs, signature and key algorithms (parsed with x509-parser; never by hand).

use fleetgate_protocol::proxy::PeerIdentity;
use rustls::{ProtocolVersion, ServerConnection, SignatureScheme};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
use x509_parser::public_key::PublicKey;

/// Fills the TLS part of a [`PeerIdentity`] from a finished handshake. `verified` is true when the listener's
/// verifier checked client certificates (it fails the handshake otherwise, so a presented one is verified).
/// `sig_scheme` is the scheme the LB signed the handshake with ([`crate::tls::with_sig_scheme`]).
pub(crate) fn from_tls(
    conn: &ServerConnection,
    verified: bool,
    send_client_cert: bool,
    sig_scheme: Option<SignatureScheme>,
) -> PeerIdentity {
    let mut id = PeerIdentity {
        tls: true,
        tls_version: conn.protocol_version().map(version_name),
        cipher: conn
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .map(str::to_owned),
        group: conn
            .negotiated_key_exchange_group()
            .and_then(|g| g.name().as_str())
            .map(str::to_owned),
        sig_scheme: sig_scheme.map(sig_scheme_name),
        authority: conn.server_name().map(str::to_owned),
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        ..PeerIdentity::default()
    };
    if let Some(leaf) = conn.peer_certificates().and_then(|c| c.first()) {
        id.cert_presented = true;
        id.cert_verified = verified;
        let fields = CertFields::parse(leaf.as_ref());
        id.cn = fields.cn;
        id.sans = fields.sans;
        id.sig_alg = fields.sig_alg;
        id.key_alg = fields.key_alg;
        if send_client_cert {
            id.client_cert_der = Some(leaf.as_ref().to_vec());
        }
    }
    id
}

/// `TLSv1.3` / `TLSv1.2`, the names OpenSSL and HAProxy use.
fn version_name(v: ProtocolVersion) -> String {
    match v {
        ProtocolVersion::TLSv1_3 => "TLSv1.3".into(),
        ProtocolVersion::TLSv1_2 => "TLSv1.2".into(),
        other => format!("{other:?}"),
    }
}

/// The IANA TLS SignatureScheme name (`ecdsa_secp256r1_sha256`, `rsa_pss_rsae_sha256`, ...), the form the PROXY
/// protocol's `PP2_SUBTYPE_SSL_SIG_SCHEME` and OpenSSL/HAProxy use; `0x%04x` for a code point without one.
fn sig_scheme_name(scheme: SignatureScheme) -> String {
    let name = match scheme {
        SignatureScheme::RSA_PKCS1_SHA1 => "rsa_pkcs1_sha1",
        SignatureScheme::ECDSA_SHA1_Legacy => "ecdsa_sha1",
        SignatureScheme::RSA_PKCS1_SHA256 => "rsa_pkcs1_sha256",
        SignatureScheme::ECDSA_NISTP256_SHA256 => "ecdsa_secp256r1_sha256",
        SignatureScheme::RSA_PKCS1_SHA384 => "rsa_pkcs1_sha384",
        SignatureScheme::ECDSA_NISTP384_SHA384 => "ecdsa_secp384r1_sha384",
        SignatureScheme::RSA_PKCS1_SHA512 => "rsa_pkcs1_sha512",
        SignatureScheme::ECDSA_NISTP521_SHA512 => "ecdsa_secp521r1_sha512",
        SignatureScheme::RSA_PSS_SHA256 => "rsa_pss_rsae_sha256",
        SignatureScheme::RSA_PSS_SHA384 => "rsa_pss_rsae_sha384",
        SignatureScheme::RSA_PSS_SHA512 => "rsa_pss_rsae_sha512",
        SignatureScheme::ED25519 => "ed25519",
        SignatureScheme::ED448 => "ed448",
        SignatureScheme::ML_DSA_44 => "mldsa44",
        SignatureScheme::ML_DSA_65 => "mldsa65",
        SignatureScheme::ML_DSA_87 => "mldsa87",
        other => return format!("0x{:04x}", u16::from(other)),
    };
    name.to_owned()
}

/// The fields of a client certificate the backend may authorise on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CertFields {
    /// First subject common name.
    pub cn: Option<String>,
    /// SAN entries as `DNS:x`, `URI:x`, `EMAIL:x`, `IP:x`.
    pub sans: Vec<String>,
    /// Signature algorithm short name (e.g. `ecdsa-with-SHA256`).
    pub sig_alg: Option<String>,
    /// Key algorithm and size (e.g. `EC256`, `RSA2048`).
    pub key_alg: Option<String>,
}

impl CertFields {
    /// Parses a DER certificate; an unparsable one yields no fields (the verifier already accepted it, so this
    /// only happens for X.509 features x509-parser lacks).
    pub fn parse(der: &[u8]) -> CertFields {
        let Ok((_, cert)) = X509Certificate::from_der(der) else {
            return CertFields::default();
        };
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for name in &ext.value.general_names {
                match name {
                    GeneralName::DNSName(v) => sans.push(format!("DNS:{v}")),
                    GeneralName::URI(v) => sans.push(format!("URI:{v}")),
                    GeneralName::RFC822Name(v) => sans.push(format!("EMAIL:{v}")),
                    GeneralName::IPAddress(bytes) => {
                        if let Some(ip) = ip_from_bytes(bytes) {
                            sans.push(format!("IP:{ip}"));
                        }
                    }
                    _ => {}
                }
            }
        }
        let registry = x509_parser::objects::oid_registry();
        let sig_alg = x509_parser::objects::oid2sn(&cert.signature_algorithm.algorithm, registry)
            .ok()
            .map(str::to_owned);
        let key_alg = cert.public_key().parsed().ok().and_then(|key| match key {
            PublicKey::RSA(rsa) => Some(format!("RSA{}", rsa.key_size())),
            PublicKey::EC(ec) => Some(format!("EC{}", ec.key_size())),
            _ => x509_parser::objects::oid2sn(&cert.public_key().algorithm.algorithm, registry)
                .ok()
                .map(str::to_owned),
        });
        CertFields {
            cn,
            sans,
            sig_alg,
            key_alg,
        }
    }
}

fn ip_from_bytes(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_of_a_generated_certificate() {
        let mut params =
            rcgen::CertificateParams::new(vec!["dev.example.com".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "device-42");
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("10.1.2.3".parse().unwrap()));
        params.subject_alt_names.push(rcgen::SanType::URI(
            rcgen::string::Ia5String::try_from("spiffe://fleet/dev/42").unwrap(),
        ));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let f = CertFields::parse(cert.der());
        assert_eq!(f.cn.as_deref(), Some("device-42"));
        assert_eq!(
            f.sans,
            vec![
                "DNS:dev.example.com",
                "IP:10.1.2.3",
                "URI:spiffe://fleet/dev/42"
            ]
        );
        assert_eq!(f.key_alg.as_deref(), Some("EC256"));
        assert_eq!(f.sig_alg.as_deref(), Some("ecdsa-with-SHA256"));
    }

    #[test]
    fn signature_schemes_have_their_iana_names() {
        assert_eq!(
            sig_scheme_name(SignatureScheme::ECDSA_NISTP256_SHA256),
            "ecdsa_secp256r1_sha256"
        );
        assert_eq!(
            sig_scheme_name(SignatureScheme::RSA_PSS_SHA256),
            "rsa_pss_rsae_sha256"
        );
        assert_eq!(sig_scheme_name(SignatureScheme::ED25519), "ed25519");
        assert_eq!(sig_scheme_name(SignatureScheme::from(0x0b0a)), "0x0b0a");
    }

    #[test]
    fn garbage_has_no_fields() {
        assert_eq!(
            CertFields::parse(b"not a certificate"),
            CertFields::default()
        );
    }
}
