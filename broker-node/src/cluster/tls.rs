//! Mutual TLS on cluster links (`[cluster.tls]`, required off loopback): both sides present a certificate issued
//! by the cluster CA and verify the other's against it (rustls, aws-lc-rs). Sits at the start of every link,
//! between the TCP connect/accept and the Hello ([`super::link`]). The files are read again when they change
//! (a rotated certificate needs no restart): new links use the new certificate, live ones keep theirs.
//!
//! The dialer verifies the peer's certificate for the peer's node name (a DNS SAN such as `broker-1`: the
//! identity the ring uses), or for its IP address when the name is not a DNS name (A-record discovery names
//! endpoints `"<ip>:<port>"`). The acceptor requires a client certificate of the cluster CA and, once the Hello
//! arrived, checks it the same way for the name the peer claims ([`certifies_node`]): a certificate of the cluster
//! CA cannot claim another node's name (and with it that node's clients on the ring).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use fleetgate_config::node::ClusterTlsConfig;
use fleetgate_ops::pem::{load_certs, load_key};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// ALPN of cluster links: a cluster port reached by an MQTT client (or the reverse) fails the handshake.
const ALPN_CLUSTER: &[u8] = b"fleetgate-cluster/1";

/// Why the cluster TLS setup failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or used.
    #[error("cluster tls: {path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("cluster tls: {0}")]
    Config(String),
}

impl From<fleetgate_ops::pem::PemError> for TlsError {
    fn from(e: fleetgate_ops::pem::PemError) -> TlsError {
        TlsError::File {
            path: e.path,
            message: e.message,
        }
    }
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// The rustls configurations of both ends, built from the files together.
#[derive(Debug)]
struct Configs {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
}

/// Both ends of cluster-link TLS: loaded at start, and again whenever the certificate, key or CA files change
/// ([`LinkTls::reload`]); new links use what was loaded last, live links keep theirs.
pub(crate) struct LinkTls {
    files: ClusterTlsConfig,
    current: ArcSwap<Configs>,
}

impl std::fmt::Debug for LinkTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkTls")
    }
}

impl LinkTls {
    /// Loads the certificate, key and CA of `cfg`.
    pub(crate) fn load(cfg: &ClusterTlsConfig) -> Result<LinkTls, TlsError> {
        Ok(LinkTls {
            files: cfg.clone(),
            current: ArcSwap::from_pointee(build(cfg)?),
        })
    }

    /// Reads the files again; on error the configurations in use stay.
    pub(crate) fn reload(&self) -> Result<(), TlsError> {
        self.current.store(Arc::new(build(&self.files)?));
        Ok(())
    }

    /// The certificate, key and CA files.
    pub(crate) fn files(&self) -> [&Path; 3] {
        [&self.files.cert, &self.files.key, &self.files.ca]
    }

    /// For a link we dial.
    pub(crate) fn connector(&self) -> TlsConnector {
        TlsConnector::from(self.current.load().client.clone())
    }

    /// For a link a peer opens to us.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load().server.clone())
    }
}

/// Both configurations from the files of `cfg`.
fn build(cfg: &ClusterTlsConfig) -> Result<Configs, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = load_certs(&cfg.cert)?;
    let key = load_key(&cfg.key)?;
    let mut roots = RootCertStore::empty();
    for cert in load_certs(&cfg.ca)? {
        roots.add(cert).map_err(|e| file_error(&cfg.ca, e))?;
    }
    let roots = Arc::new(roots);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| file_error(&cfg.ca, e))?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| file_error(&cfg.key, e))?;
    server.alpn_protocols = vec![ALPN_CLUSTER.to_vec()];
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| file_error(&cfg.key, e))?;
    client.alpn_protocols = vec![ALPN_CLUSTER.to_vec()];
    Ok(Configs {
        client: Arc::new(client),
        server: Arc::new(server),
    })
}

/// The name a dialed peer's certificate must carry: its node name when that is a DNS name, else its address.
pub(crate) fn server_name(
    peer_name: Option<&str>,
    addr: std::net::SocketAddr,
) -> ServerName<'static> {
    peer_name
        .and_then(|n| ServerName::try_from(n.to_string()).ok())
        .filter(|n| matches!(n, ServerName::DnsName(_)))
        .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()))
}

/// Whether `cert` (the end-entity certificate a peer presented, already verified against the cluster CA) is valid
/// for node `name` as [`server_name`] spells it: a DNS SAN equal to the name, or, when the name is not a DNS name,
/// an IP SAN equal to `addr`'s IP (the address the peer's Hello advertises).
pub(crate) fn certifies_node(
    cert: &CertificateDer<'_>,
    name: &str,
    addr: std::net::SocketAddr,
) -> bool {
    rustls::server::ParsedCertificate::try_from(cert).is_ok_and(|parsed| {
        rustls::client::verify_server_name(&parsed, &server_name(Some(name), addr)).is_ok()
    })
}
