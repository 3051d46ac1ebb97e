//! TLS termination setup: turns a listener's [`TlsConfig`] into a rustls [`ServerConfig`] (aws-lc-rs provider,
//! TLS 1.2 and 1.3, ALPN `mqtt`, certificates picked by SNI, client certificates verified against a CA bundle
//! and CRLs). Runs when the runtime snapshot is built, off the hot path; every error names the file at fault.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fleetgate_config::lb::{ClientAuth, TlsConfig};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, version};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

/// ALPN protocol offered to clients ("mqtt", the IANA-registered ID); clients without ALPN are accepted too.
pub const ALPN_MQTT: &[u8] = b"mqtt";

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate, key, CA or CRL file could not be read or parsed.
    #[error("{}: {message}", path.display())]
    File {
        /// The file at fault.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// rustls refused the assembled configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn file_error(path: &Path, message: impl fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// The crypto provider used everywhere in the LB: aws-lc-rs only.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Builds the server config of one TLS listener.
pub fn server_config(cfg: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let resolver = SniResolver::load(cfg, &provider)?;
    let verifier = client_verifier(cfg, &provider)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&version::TLS13, &version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![ALPN_MQTT.to_vec()];
    Ok(Arc::new(config))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate found"));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| file_error(path, format!("no usable PEM private key: {e}")))
}

fn load_crl(path: &Path) -> Result<CertificateRevocationListDer<'static>, TlsError> {
    match CertificateRevocationListDer::from_pem_file(path) {
        Ok(crl) => Ok(crl),
        // Not PEM: take the file as DER (what `openssl ca -gencrl -outform DER` writes).
        Err(_) => std::fs::read(path)
            .map(CertificateRevocationListDer::from)
            .map_err(|e| file_error(path, e)),
    }
}

fn client_verifier(
    cfg: &TlsConfig,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    if cfg.client_auth == ClientAuth::None {
        return Ok(WebPkiClientVerifier::no_client_auth());
    }
    let Some(ca_path) = cfg.client_ca.as_deref() else {
        return Err(TlsError::Config("client_auth needs client_ca".into()));
    };
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca_path)? {
        roots.add(cert).map_err(|e| file_error(ca_path, e))?;
    }
    let crls = cfg
        .crls
        .iter()
        .map(|p| load_crl(p))
        .collect::<Result<Vec<_>, _>>()?;
    // A loaded CRL that lists a certificate rejects it; a certificate whose issuer has no CRL here is accepted
    // (webpki's default would reject every certificate of a CA without a CRL, intermediates included).
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .with_crls(crls)
            .allow_unknown_revocation_status();
    if cfg.client_auth == ClientAuth::Optional {
        builder = builder.allow_unauthenticated();
    }
    builder.build().map_err(|e| file_error(ca_path, e))
}

/// Picks the server certificate by SNI; an unknown or absent name gets the first (default) certificate. Names are
/// matched case-insensitively: stored lowercased here, and rustls lowercases the client's SNI before it reaches
/// [`ResolvesServerCert::resolve`], so a handshake looks its name up without allocating.
#[derive(Debug)]
pub struct SniResolver {
    default: Arc<CertifiedKey>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
}

impl SniResolver {
    /// Loads every certificate and key of `cfg`.
    pub fn load(cfg: &TlsConfig, provider: &CryptoProvider) -> Result<Self, TlsError> {
        let mut default = None;
        let mut by_name = HashMap::new();
        for entry in &cfg.certificates {
            let chain = load_certs(&entry.cert)?;
            let key = load_key(&entry.key)?;
            let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
                file_error(
                    &entry.key,
                    format!("does not match {}: {e}", entry.cert.display()),
                )
            })?;
            let certified = Arc::new(certified);
            for name in &entry.sni {
                by_name
                    .entry(name.to_ascii_lowercase())
                    .or_insert_with(|| certified.clone());
            }
            default.get_or_insert(certified);
        }
        let default = default.ok_or_else(|| {
            TlsError::Config("a TLS listener needs at least one certificate".into())
        })?;
        Ok(Self { default, by_name })
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let by_sni = hello.server_name().and_then(|name| self.by_name.get(name));
        Some(by_sni.unwrap_or(&self.default).clone())
    }
}
