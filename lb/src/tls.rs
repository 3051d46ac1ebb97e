//! TLS termination setup: turns a listener's [`TlsConfig`] into a rustls [`ServerConfig`] (aws-lc-rs provider,
//! TLS 1.2 and 1.3, ALPN `mqtt`, certificates picked by SNI, client certificates verified against a CA bundle
//! and CRLs). Runs when the runtime snapshot is built, off the hot path; every error names the file at fault.
//! Also records, per handshake, the signature scheme the LB signed with ([`with_sig_scheme`]), which rustls does
//! not expose on a server connection: the PROXY v2 `SIG_SCHEME` sub-TLV carries it to the backend.

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fleetgate_config::lb::{ClientAuth, TlsConfig};
use fleetgate_ops::pem::{load_certs, load_key};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{ServerConfig, SignatureAlgorithm, SignatureScheme, version};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateRevocationListDer, SubjectPublicKeyInfoDer};

/// ALPN protocol offered to clients ("mqtt", the IANA-registered ID); clients without ALPN are accepted too.
const ALPN_MQTT: &[u8] = b"mqtt";

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

impl From<fleetgate_ops::pem::PemError> for TlsError {
    fn from(e: fleetgate_ops::pem::PemError) -> TlsError {
        TlsError::File {
            path: e.path,
            message: e.message,
        }
    }
}

fn file_error(path: &Path, message: impl fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// The crypto provider used everywhere in the LB: aws-lc-rs only.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Builds the server config of one TLS listener.
pub(crate) fn server_config(cfg: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
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
struct SniResolver {
    default: Arc<CertifiedKey>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
}

impl SniResolver {
    /// Loads every certificate and key of `cfg`.
    fn load(cfg: &TlsConfig, provider: &CryptoProvider) -> Result<Self, TlsError> {
        let mut default = None;
        let mut by_name = HashMap::new();
        for entry in &cfg.certificates {
            let chain = load_certs(&entry.cert)?;
            let key = load_key(&entry.key)?;
            let mut certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
                file_error(
                    &entry.key,
                    format!("does not match {}: {e}", entry.cert.display()),
                )
            })?;
            certified.key = Arc::new(RecordingKey(certified.key));
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

tokio::task_local! {
    /// The signature scheme of the handshake being polled, set by [`RecordingKey`]; scoped by [`with_sig_scheme`].
    static SIG_SCHEME: Cell<Option<SignatureScheme>>;
}

/// Drives `handshake` (a TLS accept) and returns its output with the signature scheme the LB signed the
/// handshake with (TLS 1.3 CertificateVerify, TLS 1.2 ServerKeyExchange); `None` when nothing was signed (a
/// resumed session) or the handshake failed first.
///
/// rustls is sans-IO: it picks the scheme ([`SigningKey::choose_scheme`]) synchronously inside the poll that
/// feeds it the ClientHello, so a task-local scoped to this future's polls ties the choice to this connection and
/// no other. No allocation, nothing shared between connections, nothing kept after the handshake.
pub(crate) async fn with_sig_scheme<F: Future>(
    handshake: F,
) -> (F::Output, Option<SignatureScheme>) {
    SIG_SCHEME
        .scope(Cell::new(None), async move {
            let out = handshake.await;
            (out, SIG_SCHEME.with(Cell::get))
        })
        .await
}

/// A certificate's signing key that notes the scheme rustls chose for the handshake being polled (outside
/// [`with_sig_scheme`] it only signs).
#[derive(Debug)]
struct RecordingKey(Arc<dyn SigningKey>);

impl SigningKey for RecordingKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let signer = self.0.choose_scheme(offered)?;
        // Err only outside a `with_sig_scheme` scope: nobody asked for the scheme.
        let _ = SIG_SCHEME.try_with(|slot| slot.set(Some(signer.scheme())));
        Some(signer)
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        self.0.public_key()
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        self.0.algorithm()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::PrivateKeyDer;

    fn p256_key() -> Arc<dyn SigningKey> {
        let key = rcgen::KeyPair::generate().unwrap();
        let der = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        provider().key_provider.load_private_key(der).unwrap()
    }

    #[tokio::test]
    async fn records_the_chosen_scheme_only_inside_its_scope() {
        let key = RecordingKey(p256_key());
        let offered = [
            SignatureScheme::RSA_PSS_SHA256,
            SignatureScheme::ECDSA_NISTP256_SHA256,
        ];
        let (signer, seen) = with_sig_scheme(async { key.choose_scheme(&offered) }).await;
        assert!(signer.is_some());
        assert_eq!(seen, Some(SignatureScheme::ECDSA_NISTP256_SHA256));

        // No common scheme: nothing recorded. Outside a scope: signs, records nowhere, no panic.
        let (signer, seen) =
            with_sig_scheme(async { key.choose_scheme(&[SignatureScheme::ED25519]) }).await;
        assert!(signer.is_none() && seen.is_none());
        assert!(key.choose_scheme(&offered).is_some());
        assert_eq!(key.algorithm(), SignatureAlgorithm::ECDSA);
    }
}
