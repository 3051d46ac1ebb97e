//! Certificate chains and private keys from PEM files, with the file named in every error: what the LB's TLS
//! and the cluster links' mutual TLS both load (parsing by `rustls-pki-types`).

use std::fmt;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A PEM file that could not be read or used.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct PemError {
    /// The file.
    pub path: PathBuf,
    /// What was wrong with it.
    pub message: String,
}

fn error(path: &Path, message: impl fmt::Display) -> PemError {
    PemError {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Every certificate in `path`; an error when there is none.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(path, e))?;
    if certs.is_empty() {
        return Err(error(path, "no PEM certificate found"));
    }
    Ok(certs)
}

/// The first private key in `path`.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| error(path, format!("no usable PEM private key: {e}")))
}
