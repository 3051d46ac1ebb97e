//! `gen-certs DIR`: a throwaway ECDSA P-256 PKI for the TLS benchmarks — a CA, a server certificate for
//! `localhost`/127.0.0.1, a client certificate (CN `bench-client`), and the cert+key bundle HAProxy's `crt` wants.
//! The certificates come from the workspace's one test PKI (`fleetgate_testkit::Pki`); this module only names
//! the files the way `bench/run` and HAProxy expect them.

use std::path::Path;

use anyhow::Context as _;
use fleetgate_testkit::Pki;

/// Writes `ca.pem`, `server.pem`, `server.key`, `server-combined.pem`, `client.pem` and `client.key` into `dir`.
pub fn generate(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let pki = Pki::with_ca_name("fleetgate bench CA");
    let server = pki.server();
    let client = pki.client_with_sans("bench-client", &["bench-client.example"]);
    let write = |file: &str, contents: &str| {
        let path = dir.join(file);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))
    };
    write("ca.pem", &pki.ca_pem())?;
    write("server.pem", &server.cert_pem)?;
    write("server.key", &server.key_pem)?;
    write(
        "server-combined.pem",
        &format!("{}{}", server.cert_pem, server.key_pem),
    )?;
    write("client.pem", &client.cert_pem)?;
    write("client.key", &client.key_pem)?;
    Ok(())
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
