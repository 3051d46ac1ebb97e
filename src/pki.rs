//! The development PKI for `fleetgate up`: a CA, a server certificate for `localhost`/`127.0.0.1`/`::1` and a
//! client certificate (`CN=dev-client`), ECDSA P-256, written as PEM files and reused while still valid; and the
//! cluster's own PKI ([`cluster`]): a CA and one certificate per node, made afresh at every start.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, date_time_ymd,
};

/// How long generated certificates are valid: long enough that a dev directory lasts, short enough that a leaked
/// dev key does not stay useful for ever.
const VALIDITY_DAYS: i64 = 365;
/// Existing files are regenerated when any certificate has fewer days than this left, so a running `up` never
/// crosses an expiry.
const REUSE_MIN_DAYS: i64 = 30;
/// Common name of the client certificate.
pub const CLIENT_CN: &str = "dev-client";

/// The PEM files of the development PKI.
#[derive(Debug, Clone)]
pub struct DevPki {
    /// CA certificate (the trust anchor for clients and for client certificates).
    pub ca: PathBuf,
    /// Server certificate for `localhost`, `127.0.0.1` and `::1`.
    pub server_cert: PathBuf,
    /// Server private key.
    pub server_key: PathBuf,
    /// Client certificate (`CN=dev-client`).
    pub client_cert: PathBuf,
    /// Client private key.
    pub client_key: PathBuf,
}

impl DevPki {
    fn paths(dir: &Path) -> Self {
        Self {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client-key.pem"),
        }
    }
}

/// Makes sure `dir` holds a valid development PKI, reusing the files there when they are all present, parse, match
/// their keys, chain to `ca.pem` and have at least [`REUSE_MIN_DAYS`] left; otherwise writes a fresh set.
/// Returns the paths and whether new files were written.
pub fn ensure(dir: &Path) -> Result<(DevPki, bool)> {
    let pki = DevPki::paths(dir);
    match reusable(&pki) {
        Ok(()) => Ok((pki, false)),
        Err(reason) => {
            tracing::info!(event = "dev_pki", dir = %dir.display(), reason = %reason, "generating a development PKI");
            generate(&pki)?;
            Ok((pki, true))
        }
    }
}

/// Why the existing files cannot be reused (a short reason for the log), or `Ok`.
fn reusable(pki: &DevPki) -> std::result::Result<(), String> {
    let ca = read(&pki.ca)?;
    let ca = parse_cert(&pki.ca, &ca)?;
    let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca.contents)
        .map_err(|e| format!("{}: {e}", pki.ca.display()))?;
    for (cert_path, key_path) in [
        (&pki.server_cert, &pki.server_key),
        (&pki.client_cert, &pki.client_key),
    ] {
        let pem = read(cert_path)?;
        let pem = parse_cert(cert_path, &pem)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents)
            .map_err(|e| format!("{}: {e}", cert_path.display()))?;
        if cert.issuer() != ca_cert.subject() {
            return Err(format!(
                "{} was not issued by {}",
                cert_path.display(),
                pki.ca.display()
            ));
        }
        days_left(cert_path, &cert)?;
        let key_text = String::from_utf8(read(key_path)?)
            .map_err(|_| format!("{} is not text", key_path.display()))?;
        let key =
            KeyPair::from_pem(&key_text).map_err(|e| format!("{}: {e}", key_path.display()))?;
        if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
            return Err(format!(
                "{} does not match {}",
                key_path.display(),
                cert_path.display()
            ));
        }
    }
    days_left(&pki.ca, &ca_cert)
}

fn read(path: &Path) -> std::result::Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn parse_cert(path: &Path, pem: &[u8]) -> std::result::Result<x509_parser::pem::Pem, String> {
    x509_parser::pem::parse_x509_pem(pem)
        .map(|(_, pem)| pem)
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn days_left(
    path: &Path,
    cert: &x509_parser::certificate::X509Certificate<'_>,
) -> std::result::Result<(), String> {
    match cert.validity().time_to_expiration() {
        Some(left) if left.whole_days() >= REUSE_MIN_DAYS => Ok(()),
        _ => Err(format!(
            "{} expires within {REUSE_MIN_DAYS} days",
            path.display()
        )),
    }
}

fn generate(pki: &DevPki) -> Result<()> {
    let ca = self_signed_ca(
        "Fleetgate Dev CA",
        vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ],
    )?;

    let sans = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let mut server = CertificateParams::new(sans).context("server certificate names")?;
    server.distinguished_name = name("localhost");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let mut client =
        CertificateParams::new(vec![CLIENT_CN.to_string()]).context("client certificate names")?;
    client.distinguished_name = name(CLIENT_CN);
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];

    write_file(&pki.ca, ca.pem().as_bytes(), 0o644)?;
    for (params, cert_path, key_path) in [
        (server, &pki.server_cert, &pki.server_key),
        (client, &pki.client_cert, &pki.client_key),
    ] {
        issue(params, &ca, cert_path, key_path)?;
    }
    Ok(())
}

/// A new CA, valid from yesterday for [`VALIDITY_DAYS`], with `key_usages`.
fn self_signed_ca(
    common_name: &str,
    key_usages: Vec<KeyUsagePurpose>,
) -> Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = key_usages;
    set_validity(&mut params);
    let key =
        KeyPair::generate().with_context(|| format!("generating the key of {common_name}"))?;
    CertifiedIssuer::self_signed(params, key).with_context(|| format!("self-signing {common_name}"))
}

/// Signs `params` (a leaf: digital signature, valid as long as the CA) with a new key by `ca`, and writes the
/// certificate and its key (0600).
fn issue(
    mut params: CertificateParams,
    ca: &CertifiedIssuer<'static, KeyPair>,
    cert_path: &Path,
    key_path: &Path,
) -> Result<()> {
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    set_validity(&mut params);
    let key = KeyPair::generate().context("generating a dev key")?;
    let cert = params
        .signed_by(&key, ca)
        .with_context(|| format!("signing {}", cert_path.display()))?;
    write_file(key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(cert_path, cert.pem().as_bytes(), 0o644)
}

/// Valid from yesterday (clock skew) to [`VALIDITY_DAYS`] from today.
fn set_validity(params: &mut CertificateParams) {
    let today = days_since_epoch();
    let date = |days| {
        let (y, m, d) = civil_from_days(days);
        date_time_ymd(y, m, d)
    };
    params.not_before = date(today - 1);
    params.not_after = date(today + VALIDITY_DAYS);
}

/// The cluster's PEM files: its CA and each node's certificate and key.
#[derive(Debug, Clone)]
pub struct ClusterPki {
    /// The cluster CA (every node trusts it, and only it, on cluster links).
    pub ca: PathBuf,
    /// Per node, in the order asked: (name, certificate, key).
    pub nodes: Vec<(String, PathBuf, PathBuf)>,
}

/// Writes a fresh cluster PKI into `dir`: a CA whose key is never written (nothing can be issued after this
/// run), and for each of `names` a certificate valid for that node name and 127.0.0.1 (what the nodes check of
/// each other), for both ends of a link.
pub fn cluster(dir: &Path, names: &[String]) -> Result<ClusterPki> {
    let ca = self_signed_ca(
        "Fleetgate Dev Cluster CA",
        vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ],
    )?;
    let pki = ClusterPki {
        ca: dir.join("cluster-ca.pem"),
        nodes: names
            .iter()
            .map(|n| {
                (
                    n.clone(),
                    dir.join(format!("cluster-{n}.pem")),
                    dir.join(format!("cluster-{n}-key.pem")),
                )
            })
            .collect(),
    };
    write_file(&pki.ca, ca.pem().as_bytes(), 0o644)?;
    for (node, cert_path, key_path) in &pki.nodes {
        let mut params = CertificateParams::new(vec![node.clone(), "127.0.0.1".to_string()])
            .context("cluster certificate names")?;
        params.distinguished_name = name(node);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        issue(params, &ca, cert_path, key_path)?;
    }
    Ok(pki)
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// Writes `bytes` to `path` with `mode` (private keys 0600), replacing any previous file.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

fn days_since_epoch() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    i64::try_from(secs / 86_400).unwrap_or(0)
}

/// (year, month, day) of day `days` since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        i32::try_from(year).unwrap_or(i32::MAX),
        u8::try_from(month).unwrap_or(1),
        u8::try_from(day).unwrap_or(1),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING)
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
    }

    #[test]
    fn generates_then_reuses_then_regenerates() {
        let dir = std::env::temp_dir().join(format!("fleetgate-pki-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (pki, fresh) = ensure(&dir).unwrap();
        assert!(fresh);
        let ca = std::fs::read(&pki.ca).unwrap();
        let (_, fresh) = ensure(&dir).unwrap();
        assert!(!fresh, "valid files are reused");
        assert_eq!(std::fs::read(&pki.ca).unwrap(), ca);
        std::fs::write(&pki.client_key, "garbage").unwrap();
        let (_, fresh) = ensure(&dir).unwrap();
        assert!(fresh, "a broken key forces a new set");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
