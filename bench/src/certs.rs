//! `gen-certs DIR`: a throwaway ECDSA P-256 PKI for the TLS benchmarks — a CA, a server certificate for
//! `localhost`/127.0.0.1, a client certificate (CN `bench-client`), and the cert+key bundle HAProxy's `crt` wants.

use std::path::Path;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};

/// Writes `ca.pem`, `server.pem`, `server.key`, `server-combined.pem`, `client.pem` and `client.key` into `dir`.
pub fn generate(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;

    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = name("fleetgate bench CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?)?;

    let server_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut server_params = CertificateParams::new(vec!["localhost".to_string()])?;
    server_params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse()?));
    server_params.distinguished_name = name("localhost");
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server = server_params.signed_by(&server_key, &ca)?;

    let client_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut client_params = CertificateParams::new(vec!["bench-client.example".to_string()])?;
    client_params.distinguished_name = name("bench-client");
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client = client_params.signed_by(&client_key, &ca)?;

    let write = |file: &str, contents: String| {
        let path = dir.join(file);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))
    };
    write("ca.pem", ca.pem())?;
    write("server.pem", server.pem())?;
    write("server.key", server_key.serialize_pem())?;
    write(
        "server-combined.pem",
        format!("{}{}", server.pem(), server_key.serialize_pem()),
    )?;
    write("client.pem", client.pem())?;
    write("client.key", client_key.serialize_pem())?;
    Ok(())
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING)
mod tests {
    #[test]
    fn writes_every_file() {
        let dir = std::env::temp_dir().join(format!("fgb-certs-{}", std::process::id()));
        super::generate(&dir).unwrap();
        for f in [
            "ca.pem",
            "server.pem",
            "server.key",
            "server-combined.pem",
            "client.pem",
            "client.key",
        ] {
            assert!(std::fs::metadata(dir.join(f)).unwrap().len() > 100, "{f}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
