//! `gen-certs DIR`: a throwaway ECDSA P-256 PKI for the TLS benchmarks — a CA, a server certificate for
//! `localhost`/127.0.0.1, a client certificate (CN `bench-client`), the cert+key bundle HAProxy's `crt` wants, and
//! cluster certificates for the nodes `cluster-0` to `cluster-2` (mutual TLS on the cluster links).
//! The certificates come from the workspace's one test PKI (`fleetgate_testkit::Pki`); this module only names
//! the files the way `bench/run` and HAProxy expect them.

use std::path::Path;

use anyhow::Context as _;
use fleetgate_testkit::Pki;

/// Cluster nodes the benchmarks start at most.
const CLUSTER_NODES: usize = 3;

/// Writes `ca.pem`, `server.pem`, `server.key`, `server-combined.pem`, `client.pem`, `client.key` and
/// `cluster-N.pem`/`cluster-N.key` into `dir`.
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
    for i in 0..CLUSTER_NODES {
        let name = format!("cluster-{i}");
        let node = pki.cluster_node(&name);
        write(&format!("{name}.pem"), &node.cert_pem)?;
        write(&format!("{name}.key"), &node.key_pem)?;
    }
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
            "cluster-2.pem",
            "cluster-2.key",
        ] {
            assert!(std::fs::metadata(dir.join(f)).unwrap().len() > 100, "{f}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
