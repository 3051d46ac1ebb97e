//! `[listeners.tls]`: TLS termination of a listener — server certificates by SNI, client certificate policy, CA and
//! CRLs, handshake deadline. Files are only named here (made absolute); the LB loads them into its snapshot.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{Checker, MIN_TIMEOUT};
use crate::duration::ConfigDuration;

/// Default TLS handshake deadline: a cellular client needs a few round trips; a stalled one must not hold a slot.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Raw `[listeners.tls]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsFile {
    /// Server certificates; the first is the default for unknown or absent SNI.
    pub(crate) certificates: Spanned<Vec<CertificateFile>>,
    /// `"none"` (default), `"optional"` or `"required"`.
    pub(crate) client_auth: Option<Spanned<String>>,
    /// PEM bundle of CAs that sign client certificates.
    pub(crate) client_ca: Option<Spanned<String>>,
    /// PEM or DER CRL files.
    #[serde(default)]
    pub(crate) crls: Vec<Spanned<String>>,
    /// Deadline for the handshake.
    pub(crate) handshake_timeout: Option<Spanned<ConfigDuration>>,
}

/// Raw certificate entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CertificateFile {
    /// PEM certificate chain, leaf first.
    pub(crate) cert: Spanned<String>,
    /// PEM private key.
    pub(crate) key: Spanned<String>,
    /// Server names this certificate answers for.
    #[serde(default)]
    pub(crate) sni: Vec<Spanned<String>>,
}

/// Which client certificates a TLS listener asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificate requested.
    None,
    /// Requested; a presented one must verify, none is fine.
    Optional,
    /// A verified client certificate is required.
    Required,
}

/// A server certificate and the names it answers for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateConfig {
    /// PEM chain file (absolute).
    pub cert: PathBuf,
    /// PEM key file (absolute).
    pub key: PathBuf,
    /// SNI names, lower-cased.
    pub sni: Vec<String>,
}

/// Validated TLS settings of a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// At least one; the first is the default.
    pub certificates: Vec<CertificateConfig>,
    /// Client certificate policy.
    pub client_auth: ClientAuth,
    /// CA bundle for client certificates (set when `client_auth` is not `None`).
    pub client_ca: Option<PathBuf>,
    /// CRL files.
    pub crls: Vec<PathBuf>,
    /// Handshake deadline.
    pub handshake_timeout: Duration,
}

pub(super) fn validate_tls(c: &mut Checker<'_>, t: &TlsFile) -> TlsConfig {
    let mut certificates = Vec::new();
    for cert in t.certificates.get_ref() {
        let sni = cert
            .sni
            .iter()
            .map(|s| s.get_ref().trim_end_matches('.').to_ascii_lowercase())
            .collect();
        certificates.push(CertificateConfig {
            cert: c.path(&cert.cert),
            key: c.path(&cert.key),
            sni,
        });
    }
    if certificates.is_empty() {
        c.problem(
            t.certificates.span(),
            "a TLS listener needs at least one certificate",
        );
    }
    let client_auth = match t.client_auth.as_ref() {
        None => ClientAuth::None,
        Some(v) => {
            match v.get_ref().as_str() {
                "none" => ClientAuth::None,
                "optional" => ClientAuth::Optional,
                "required" => ClientAuth::Required,
                other => {
                    c.problem(v.span(), format!("client_auth must be \"none\", \"optional\" or \"required\", not {other:?}"));
                    ClientAuth::None
                }
            }
        }
    };
    let client_ca = t.client_ca.as_ref().map(|p| c.path(p));
    if client_auth != ClientAuth::None && client_ca.is_none() {
        let span = t
            .client_auth
            .as_ref()
            .map_or(t.certificates.span(), |v| v.span());
        c.problem(
            span,
            "client_auth \"optional\" or \"required\" needs client_ca",
        );
    }
    if client_auth == ClientAuth::None
        && let Some(first) = t.crls.first()
    {
        c.problem(
            first.span(),
            "crls only apply when client_auth is \"optional\" or \"required\"",
        );
    }
    let crls = t.crls.iter().map(|p| c.path(p)).collect();
    TlsConfig {
        certificates,
        client_auth,
        client_ca,
        crls,
        handshake_timeout: t
            .handshake_timeout
            .as_ref()
            .map_or(DEFAULT_HANDSHAKE_TIMEOUT, |v| {
                c.duration_at_least("handshake_timeout", v, MIN_TIMEOUT)
            }),
    }
}
