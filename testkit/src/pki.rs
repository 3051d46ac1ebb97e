//! The one throwaway PKI of the workspace, made with rcgen and written as PEM files into a tempdir: a CA, a server
//! certificate for `localhost`/`127.0.0.1`, client certificates with a chosen CN (and SANs), an expired one, one
//! from another CA, a revoked one with its CRL, cluster node certificates, extra server certificates for SNI; and
//! the rustls client configs that trust it. Used by the tests of every crate and by `fleetgate-bench gen-certs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair,
    KeyUsagePurpose, RevocationReason, RevokedCertParams, SerialNumber, date_time_ymd,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tempfile::TempDir;

/// Common name of the default CA.
pub const CA_NAME: &str = "Fleetgate Test CA";

/// Common name of the CA nobody trusts (foreign certificates).
const OTHER_CA_NAME: &str = "Some Other CA";

/// Common name of the default server certificate (also a DNS SAN, beside the IP SAN `127.0.0.1`).
pub const SERVER_CN: &str = "localhost";

/// A certificate and its private key, as PEM text, as DER and as files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// Certificate PEM.
    pub cert_pem: String,
    /// Private key PEM (PKCS#8).
    pub key_pem: String,
    /// Certificate DER.
    pub cert_der: Vec<u8>,
    /// Private key DER (PKCS#8).
    pub key_der: Vec<u8>,
    /// Path of the certificate PEM file.
    pub cert: PathBuf,
    /// Path of the key PEM file.
    pub key: PathBuf,
}

/// A CA with a server certificate, able to issue client certificates; files live until the value is dropped.
pub struct Pki {
    dir: TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
    ca_cert: PathBuf,
    server: CertFiles,
}

impl Pki {
    /// Makes a CA named [`CA_NAME`] and a server certificate for `localhost` and `127.0.0.1`.
    pub fn new() -> Self {
        Self::with_ca_name(CA_NAME)
    }

    /// Like [`Pki::new`] with another CA common name.
    pub fn with_ca_name(ca_name: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir for the test PKI");
        let ca = new_ca(ca_name);
        let ca_cert = dir.path().join("ca.pem");
        std::fs::write(&ca_cert, ca.pem()).expect("write ca.pem");
        let server = issue(dir.path(), "server", server_params(SERVER_CN), &ca);
        Self {
            dir,
            ca,
            ca_cert,
            server,
        }
    }

    /// The directory holding every file of this PKI.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of the CA certificate PEM (the trust anchor for servers and clients).
    pub fn ca_cert(&self) -> &Path {
        &self.ca_cert
    }

    /// CA certificate PEM text.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// CA certificate DER.
    pub fn ca_der(&self) -> Vec<u8> {
        self.ca.der().to_vec()
    }

    /// The server certificate ([`SERVER_CN`], `127.0.0.1`).
    pub fn server(&self) -> &CertFiles {
        &self.server
    }

    /// Another server certificate, for `name` only (SNI tests, certificate rotation).
    pub fn server_for(&self, name: &str) -> CertFiles {
        self.issue(name, "server", server_params(name))
    }

    /// A valid client certificate with common name `cn` (also a DNS SAN when `cn` is a valid DNS name).
    pub fn client(&self, cn: &str) -> CertFiles {
        self.issue(cn, "client", client_params(cn))
    }

    /// A valid client certificate with common name `cn` and exactly the DNS SANs `sans`.
    pub fn client_with_sans(&self, cn: &str, sans: &[&str]) -> CertFiles {
        let mut params = leaf_params(cn, sans);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(cn, "client-sans", params)
    }

    /// A client certificate with common name `cn` whose validity ended in 2001.
    pub fn expired_client(&self, cn: &str) -> CertFiles {
        let mut params = client_params(cn);
        params.not_before = date_time_ymd(2000, 1, 1);
        params.not_after = date_time_ymd(2001, 1, 1);
        self.issue(cn, "expired", params)
    }

    /// A client certificate with common name `cn` issued by another CA, which nobody trusts.
    pub fn foreign_client(&self, cn: &str) -> CertFiles {
        self.issue_foreign(cn, "foreign", client_params(cn))
    }

    /// A client certificate with serial number `serial`, and the path of a CRL of the CA that revokes it.
    pub fn revoked_client(&self, cn: &str, serial: u64) -> (CertFiles, PathBuf) {
        let mut params = client_params(cn);
        params.serial_number = Some(SerialNumber::from(serial));
        let cert = self.issue(cn, "revoked", params);
        let crl = CertificateRevocationListParams {
            this_update: date_time_ymd(2024, 1, 1),
            next_update: date_time_ymd(4000, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![RevokedCertParams {
                serial_number: SerialNumber::from(serial),
                revocation_time: date_time_ymd(2024, 1, 1),
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            }],
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.ca)
        .expect("sign the CRL");
        let path = self.dir.path().join(format!("{}.crl", file_stem(cn, "ca")));
        std::fs::write(&path, crl.pem().expect("CRL PEM")).expect("write the CRL");
        (cert, path)
    }

    /// A cluster node certificate for node `name` (DNS SAN `name`, both server and client use, as a cluster link
    /// needs both ways).
    pub fn cluster_node(&self, name: &str) -> CertFiles {
        self.issue(name, "node", node_params(name))
    }

    /// A cluster node certificate for `name` from another CA, which the cluster must refuse.
    pub fn foreign_cluster_node(&self, name: &str) -> CertFiles {
        self.issue_foreign(name, "foreign-node", node_params(name))
    }

    /// A rustls client config trusting this CA, presenting `client` when given (TLS 1.2 and 1.3).
    pub fn client_config(&self, client: Option<&CertFiles>) -> Arc<rustls::ClientConfig> {
        self.client_config_with_versions(rustls::DEFAULT_VERSIONS, client)
    }

    /// Like [`Pki::client_config`], limited to the protocol `versions` (e.g. `&[&rustls::version::TLS12]`).
    pub fn client_config_with_versions(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
        client: Option<&CertFiles>,
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.ca_der()))
            .expect("add the test CA");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("TLS versions")
            .with_root_certificates(roots);
        let config = match client {
            Some(c) => {
                let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.key_der.clone()));
                builder
                    .with_client_auth_cert(vec![CertificateDer::from(c.cert_der.clone())], key)
                    .expect("client certificate")
            }
            None => builder.with_no_client_auth(),
        };
        Arc::new(config)
    }
}

impl Pki {
    /// Issues a certificate from `params` signed by this CA, written as files named after `cn` and `kind`.
    fn issue(&self, cn: &str, kind: &str, params: CertificateParams) -> CertFiles {
        issue(self.dir.path(), &file_stem(cn, kind), params, &self.ca)
    }

    /// Like [`Pki::issue`], signed by a fresh CA nobody trusts.
    fn issue_foreign(&self, cn: &str, kind: &str, params: CertificateParams) -> CertFiles {
        issue(
            self.dir.path(),
            &file_stem(cn, kind),
            params,
            &new_ca(OTHER_CA_NAME),
        )
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("generate CA key");
    CertifiedIssuer::self_signed(params, key).expect("self-sign CA")
}

/// `sans` that parse as IP addresses become IP SANs, the others DNS SANs (rcgen's rule).
fn leaf_params(cn: &str, sans: &[&str]) -> CertificateParams {
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(sans).expect("certificate SANs");
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params
}

fn server_params(name: &str) -> CertificateParams {
    let sans: &[&str] = if name == SERVER_CN {
        &[SERVER_CN, "127.0.0.1"]
    } else {
        &[name]
    };
    let mut params = leaf_params(name, sans);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params
}

fn client_params(cn: &str) -> CertificateParams {
    let is_dns = !cn.is_empty()
        && cn
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    let sans: &[&str] = if is_dns { &[cn] } else { &[] };
    let mut params = leaf_params(cn, sans);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

fn node_params(name: &str) -> CertificateParams {
    let mut params = leaf_params(name, &[name]);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params
}

fn issue(
    dir: &Path,
    stem: &str,
    params: CertificateParams,
    ca: &CertifiedIssuer<'static, KeyPair>,
) -> CertFiles {
    let key = KeyPair::generate().expect("generate key");
    let cert = params.signed_by(&key, ca).expect("sign certificate");
    let files = CertFiles {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().to_vec(),
        key_der: key.serialize_der(),
        cert: dir.join(format!("{stem}.pem")),
        key: dir.join(format!("{stem}-key.pem")),
    };
    std::fs::write(&files.cert, &files.cert_pem).expect("write certificate PEM");
    std::fs::write(&files.key, &files.key_pem).expect("write key PEM");
    files
}

/// A file name for `cn` that cannot escape the directory, unique per kind.
fn file_stem(cn: &str, kind: &str) -> String {
    let safe: String = cn
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{kind}-{safe}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_pem_files() {
        let pki = Pki::new();
        assert!(
            std::fs::read_to_string(pki.ca_cert())
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        let client = pki.client("device-1");
        assert!(client.cert.exists() && client.key.exists());
        assert!(client.key_pem.contains("PRIVATE KEY"));
        let expired = pki.expired_client("device-1");
        assert_ne!(expired.cert_der, client.cert_der);
        let foreign = pki.foreign_client("device-1");
        assert!(foreign.cert.exists());
        assert!(pki.server().cert.exists());
    }
}
