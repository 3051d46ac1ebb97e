//! The load balancer config: `lb.toml` → raw [`LbFile`] (serde, `deny_unknown_fields`) → validated [`LbConfig`],
//! every problem reported with `file:line:column`. Certificate and key files are only named here (paths made
//! absolute against the config file's directory); the LB loads them when it builds its runtime snapshot.
//!
//! ```toml
//! [lb]
//! name = "lb-0"
//!
//! [admin]                                # schema in `crate::admin`
//! bind = "127.0.0.1:9200"
//! token_file = "admin.token"             # required off loopback: every route but the probes and /metrics needs it
//!
//! [[listeners]]
//! name = "mqtts"
//! bind = "0.0.0.0:8883"
//! max_connections = 50000
//! accept_proxy_from = ["10.0.0.0/8"]     # a cloud LB in front sends PROXY headers
//! [listeners.tls]
//! certificates = [{ cert = "lb.pem", key = "lb.key", sni = ["mqtt.example.com"] }]
//! client_auth = "optional"               # "none" | "optional" | "required"
//! client_ca = "ca.pem"
//! crls = ["ca.crl"]
//! handshake_timeout = "10s"
//!
//! [[backends]]
//! name = "broker-0"                      # stable ring key
//! address = "10.0.1.10:1883"
//! weight = 1
//! proxy_protocol = "v2"                  # "off" | "v1" | "v2"
//! send_client_cert = false
//! crc32c = false
//!
//! [limits]
//! connect_peek_timeout = "10s"
//! max_connect_size = 65536
//! max_connections = 100000
//! max_connections_per_ip = 1000
//! per_ip_rate = 20.0
//! per_ip_burst = 40
//! tls_handshakes_per_second = 2000
//! idle_grace = "30s"
//! max_idle = "30m"
//! bounded_load_factor = 1.25
//! backend_connect_timeout = "3s"
//! max_buffered_bytes = "64MiB"
//! ```
//!
//! The control-plane tables — `[health]` (and a backend's `health = {...}`, `drain = true`), `[drain]` and
//! `[discovery]` — are in [`control`]'s docs.
//!
//! One submodule per concern, each with its raw and validated types and its validation: `listeners`, `tls`,
//! `backends`, `limits`, `control`; this file holds the whole-file types, the [`Checker`] they share and
//! [`LbConfig::load`]. Everything is re-exported here (`fleetgate_config::lb::*`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::admin::{AdminConfig, AdminFile, validate_admin};
use crate::duration::ConfigDuration;
pub use crate::load::Secret;
use crate::load::{ConfigError, Problem, parse_toml, read_file};

mod backends;
mod control;
mod limits;
mod listeners;
mod tls;

#[cfg(test)]
mod tests;

pub use backends::{BackendConfig, ProxyVersion};
pub use control::{DiscoverySettings, DrainConfig, HealthConfig, HealthKind};
pub use limits::{
    DEFAULT_MAX_BUFFERED_BYTES, DEFAULT_MAX_CONNECTIONS_PER_IP, LimitsConfig,
    MIN_MAX_BUFFERED_BYTES,
};
pub use listeners::ListenerConfig;
pub use tls::{CertificateConfig, ClientAuth, DEFAULT_HANDSHAKE_TIMEOUT, TlsConfig};

use backends::{BackendFile, validate_backend, validate_discovery};
use control::{DiscoverySectionFile, DrainFile, HealthFile};
use limits::{LimitsFile, validate_limits};
use listeners::{ListenerFile, validate_listener};

/// Default time to wait for connections to drain after shutdown starts.
pub(crate) const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Shortest accepted timeout (`handshake_timeout`, `connect_peek_timeout`, `backend_connect_timeout`, health
/// `timeout`): a `"0s"` deadline fails every attempt at once, which is never what an operator meant.
pub(crate) const MIN_TIMEOUT: Duration = Duration::from_millis(1);

/// Raw `lb.toml` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LbFile {
    /// `[lb]`: identity and process-wide settings.
    pub(crate) lb: LbSectionFile,
    /// `[admin]`: the admin HTTP server.
    pub(crate) admin: Option<AdminFile>,
    /// `[[listeners]]`: client-facing listeners.
    #[serde(default)]
    pub(crate) listeners: Vec<ListenerFile>,
    /// `[[backends]]`: broker nodes.
    #[serde(default)]
    pub(crate) backends: Vec<BackendFile>,
    /// `[limits]`: time, size and admission limits.
    #[serde(default)]
    pub(crate) limits: LimitsFile,
    /// `[health]`: the default health check of every backend.
    pub(crate) health: Option<HealthFile>,
    /// `[drain]`: how connections are moved off at shutdown or when a draining backend leaves.
    pub(crate) drain: Option<DrainFile>,
    /// `[discovery]`: backends found by fleetgate-discovery.
    pub(crate) discovery: Option<DiscoverySectionFile>,
}

/// Raw `[lb]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LbSectionFile {
    /// Name of this LB instance (logs).
    pub(crate) name: Spanned<String>,
    /// How long shutdown waits for connections to close.
    pub(crate) shutdown_grace: Option<ConfigDuration>,
}

/// A validated load balancer config.
#[derive(Debug, Clone, PartialEq)]
pub struct LbConfig {
    /// Instance name.
    pub name: String,
    /// The admin server (`[admin]`), if any; its token file is only named here and read by the LB at start,
    /// like certificate files are loaded there rather than here.
    pub admin: Option<AdminConfig>,
    /// Listeners (at least one).
    pub listeners: Vec<ListenerConfig>,
    /// Backends (at least one).
    pub backends: Vec<BackendConfig>,
    /// Limits.
    pub limits: LimitsConfig,
    /// Shutdown grace period: after accepting stops, how long connections get to drain before the rest are
    /// cut.
    pub shutdown_grace: Duration,
    /// Drain pacing.
    pub drain: DrainConfig,
    /// Backends found by discovery, if configured.
    pub discovery: Option<DiscoverySettings>,
}

impl LbConfig {
    /// Reads and validates an LB config file.
    pub fn load(path: &Path) -> Result<LbConfig, ConfigError> {
        let source = read_file(path)?;
        Self::parse(path, &source)
    }

    /// Validates LB config text read from `file`; relative paths are taken against `file`'s directory.
    pub fn parse(file: &Path, source: &str) -> Result<LbConfig, ConfigError> {
        let raw: LbFile = parse_toml(file, source)?;
        validate(file, source, raw)
    }
}

/// Collects located problems while validating.
struct Checker<'a> {
    file: &'a Path,
    source: &'a str,
    base: PathBuf,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn problem(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.problems
            .push(Problem::at(self.file, self.source, Some(span), message));
    }

    /// A duration that must be at least `min`; a shorter one is a problem at its place (and is returned as is,
    /// since the config is refused anyway).
    fn duration_at_least(
        &mut self,
        field: &str,
        value: &Spanned<ConfigDuration>,
        min: Duration,
    ) -> Duration {
        value.get_ref().at_least(min).unwrap_or_else(|e| {
            self.problem(value.span(), format!("{field} {e}"));
            value.get_ref().get()
        })
    }

    fn addr(&mut self, value: &Spanned<String>) -> Option<SocketAddr> {
        let parsed = value.get_ref().parse::<SocketAddr>().ok();
        if parsed.is_none() {
            self.problem(
                value.span(),
                format!(
                    "invalid socket address {:?} (expected e.g. \"0.0.0.0:1883\")",
                    value.get_ref()
                ),
            );
        }
        parsed
    }

    fn path(&mut self, value: &Spanned<String>) -> PathBuf {
        if value.get_ref().trim().is_empty() {
            self.problem(value.span(), "file path must not be empty");
        }
        self.base.join(value.get_ref())
    }

    fn name(&mut self, value: &Spanned<String>, what: &str, seen: &mut HashSet<String>) -> String {
        let name = value.get_ref().clone();
        if name.is_empty() || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
            self.problem(
                value.span(),
                format!("{what} name must be non-empty without spaces or control characters"),
            );
        } else if !seen.insert(name.clone()) {
            self.problem(value.span(), format!("duplicate {what} name {name:?}"));
        }
        name
    }
}

fn validate(file: &Path, source: &str, raw: LbFile) -> Result<LbConfig, ConfigError> {
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut c = Checker {
        file,
        source,
        base,
        problems: Vec::new(),
    };

    let name = c.name(&raw.lb.name, "lb", &mut HashSet::new());
    let admin = raw.admin.as_ref().and_then(|a| {
        let base = c.base.clone();
        validate_admin(a, &base, &mut |span, message| c.problem(span, message))
    });

    let mut seen = HashSet::new();
    let listeners: Vec<ListenerConfig> = raw
        .listeners
        .iter()
        .filter_map(|l| validate_listener(&mut c, l, &mut seen))
        .collect();

    let default_health = raw.health.clone().unwrap_or_default();
    let mut seen = HashSet::new();
    let backends: Vec<BackendConfig> = raw
        .backends
        .iter()
        .map(|b| validate_backend(&mut c, b, &mut seen, &default_health, &name))
        .collect();
    let discovery = raw
        .discovery
        .as_ref()
        .and_then(|d| validate_discovery(&mut c, d, &default_health, &name));

    let limits = validate_limits(&mut c, &raw.limits);
    let drain = control::drain(&mut c, raw.drain.as_ref().unwrap_or(&DrainFile::default()));

    if raw.listeners.is_empty() {
        c.problems.push(Problem::whole_file(
            file,
            "at least one [[listeners]] entry is required",
        ));
    }
    if raw.backends.is_empty() && raw.discovery.is_none() {
        c.problems.push(Problem::whole_file(
            file,
            "at least one [[backends]] entry or a [discovery] table is required",
        ));
    }
    if !c.problems.is_empty() {
        // A bad `[health]` field is checked once per backend that inherits it: report it once.
        let mut seen = HashSet::new();
        c.problems
            .retain(|p| seen.insert((p.line, p.column, p.message.clone())));
        return Err(ConfigError::from(c.problems));
    }
    Ok(LbConfig {
        name,
        admin,
        listeners,
        backends,
        limits,
        shutdown_grace: raw
            .lb
            .shutdown_grace
            .map_or(DEFAULT_SHUTDOWN_GRACE, ConfigDuration::get),
        drain,
        discovery,
    })
}
