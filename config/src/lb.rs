//! The load balancer config: `lb.toml` → raw [`LbFile`] (serde, `deny_unknown_fields`) → validated [`LbConfig`],
//! every problem reported with `file:line:column`. Certificate and key files are only named here (paths made
//! absolute against the config file's directory); the LB loads them when it builds its runtime snapshot.
//!
//! ```toml
//! [lb]
//! name = "lb-0"
//!
//! [admin]
//! bind = "127.0.0.1:9200"
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
//! per_ip_rate = 20.0
//! per_ip_burst = 40
//! tls_handshakes_per_second = 2000
//! idle_grace = "30s"
//! bounded_load_factor = 1.25
//! backend_connect_timeout = "3s"
//! ```
//!
//! The control-plane tables — `[health]` (and a backend's `health = {...}`, `drain = true`), `[drain]` and
//! `[discovery]` — are in [`control`]'s docs.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::duration::ConfigDuration;
use crate::load::{ConfigError, Problem, parse_toml, read_file};

mod control;

pub use control::{
    DEFAULT_DRAIN_JITTER, DEFAULT_DRAIN_RATE, DEFAULT_FALL, DEFAULT_HEALTH_INTERVAL,
    DEFAULT_HEALTH_TIMEOUT, DEFAULT_HTTP_PATH, DEFAULT_RISE, DiscoverySectionFile,
    DiscoverySettings, DrainConfig, DrainFile, HealthConfig, HealthFile, HealthKind, Secret,
    default_probe_client_id,
};

/// Default time a client gets from accept (or TLS handshake end) to a complete CONNECT: a slow-loris guard that
/// still lets a GSM modem on a bad link finish a few hundred bytes.
pub const DEFAULT_CONNECT_PEEK_TIMEOUT: Duration = Duration::from_secs(10);
/// Default largest first packet the LB buffers: a CONNECT with a will message and v5 properties fits easily;
/// anything larger is not a device's CONNECT and would let a client make the LB hold memory.
pub const DEFAULT_MAX_CONNECT_SIZE: usize = 64 * 1024;
/// Smallest accepted `max_connect_size`: below this a CONNECT with a modest client ID and credentials does not fit.
pub const MIN_MAX_CONNECT_SIZE: usize = 128;
/// Largest MQTT packet the remaining-length varint can describe, plus its 5-byte fixed header.
pub const MAX_MQTT_PACKET: usize = 268_435_455 + 5;
/// Default TLS handshake deadline: a cellular client needs a few round trips; a stalled one must not hold a slot.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time added to 1.5 × keep-alive before an idle connection is closed (MQTT itself allows 1.5 ×).
pub const DEFAULT_IDLE_GRACE: Duration = Duration::from_secs(30);
/// Default deadline for the TCP connect to a backend; a dead backend is skipped after this.
pub const DEFAULT_BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default time to wait for connections to drain after shutdown starts.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Default deadline for an incoming PROXY header from a trusted cloud LB.
pub const DEFAULT_PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Raw `lb.toml` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbFile {
    /// `[lb]`: identity and process-wide settings.
    pub lb: LbSectionFile,
    /// `[admin]`: the admin HTTP server.
    pub admin: Option<AdminFile>,
    /// `[[listeners]]`: client-facing listeners.
    #[serde(default)]
    pub listeners: Vec<ListenerFile>,
    /// `[[backends]]`: broker nodes.
    #[serde(default)]
    pub backends: Vec<BackendFile>,
    /// `[limits]`: time, size and admission limits.
    #[serde(default)]
    pub limits: LimitsFile,
    /// `[health]`: the default health check of every backend.
    pub health: Option<HealthFile>,
    /// `[drain]`: how connections are moved off at shutdown or when a draining backend leaves.
    pub drain: Option<DrainFile>,
    /// `[discovery]`: backends found by fleetgate-discovery.
    pub discovery: Option<DiscoverySectionFile>,
}

/// Raw `[lb]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbSectionFile {
    /// Name of this LB instance (logs).
    pub name: Spanned<String>,
    /// How long shutdown waits for connections to close.
    pub shutdown_grace: Option<ConfigDuration>,
}

/// Raw `[admin]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// Socket address of the admin HTTP server.
    pub bind: Spanned<String>,
}

/// Raw `[[listeners]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerFile {
    /// Listener name (logs and metric labels).
    pub name: Spanned<String>,
    /// Socket address to bind (port 0 picks a free port).
    pub bind: Spanned<String>,
    /// TLS termination; absent = plain TCP.
    pub tls: Option<TlsFile>,
    /// CIDRs whose connections start with a PROXY header (a cloud LB in front).
    #[serde(default)]
    pub accept_proxy_from: Vec<Spanned<String>>,
    /// Open connections allowed on this listener.
    pub max_connections: Option<Spanned<usize>>,
}

/// Raw `[listeners.tls]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// Server certificates; the first is the default for unknown or absent SNI.
    pub certificates: Spanned<Vec<CertificateFile>>,
    /// `"none"` (default), `"optional"` or `"required"`.
    pub client_auth: Option<Spanned<String>>,
    /// PEM bundle of CAs that sign client certificates.
    pub client_ca: Option<Spanned<String>>,
    /// PEM or DER CRL files.
    #[serde(default)]
    pub crls: Vec<Spanned<String>>,
    /// Deadline for the handshake.
    pub handshake_timeout: Option<ConfigDuration>,
}

/// Raw certificate entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFile {
    /// PEM certificate chain, leaf first.
    pub cert: Spanned<String>,
    /// PEM private key.
    pub key: Spanned<String>,
    /// Server names this certificate answers for.
    #[serde(default)]
    pub sni: Vec<Spanned<String>>,
}

/// Raw `[[backends]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendFile {
    /// Stable ring key (e.g. `broker-0`).
    pub name: Spanned<String>,
    /// `host:port` of the broker node's listener.
    pub address: Spanned<String>,
    /// Relative weight (default 1; 0 = drained).
    pub weight: Option<u32>,
    /// `"off"`, `"v1"` or `"v2"` (default).
    pub proxy_protocol: Option<Spanned<String>>,
    /// Send the client certificate (DER) in the PROXY v2 SSL TLV.
    #[serde(default)]
    pub send_client_cert: Option<Spanned<bool>>,
    /// Add a CRC32C TLV to PROXY v2 headers.
    #[serde(default)]
    pub crc32c: Option<Spanned<bool>>,
    /// When this backend leaves the config, move its clients off at the drain pace (default: they stay until
    /// they close).
    pub drain: Option<bool>,
    /// Overrides of the `[health]` fields for this backend.
    pub health: Option<HealthFile>,
}

/// Raw `[limits]` table; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Deadline for the first packet.
    pub connect_peek_timeout: Option<ConfigDuration>,
    /// Largest first packet in bytes.
    pub max_connect_size: Option<Spanned<usize>>,
    /// Open connections allowed in total.
    pub max_connections: Option<Spanned<usize>>,
    /// New connections per second per source IP (token bucket refill rate).
    pub per_ip_rate: Option<Spanned<f64>>,
    /// Token bucket size per source IP.
    pub per_ip_burst: Option<Spanned<u32>>,
    /// TLS handshakes started per second, all listeners.
    pub tls_handshakes_per_second: Option<Spanned<u32>>,
    /// Added to 1.5 × keep-alive for the idle timeout.
    pub idle_grace: Option<ConfigDuration>,
    /// Bounded-load factor (> 1.0): no backend takes more than factor × average connections.
    pub bounded_load_factor: Option<Spanned<f64>>,
    /// Deadline for the TCP connect to a backend.
    pub backend_connect_timeout: Option<ConfigDuration>,
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

/// A validated listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Unique name.
    pub name: String,
    /// Address to bind.
    pub bind: SocketAddr,
    /// TLS termination, if any.
    pub tls: Option<TlsConfig>,
    /// Peers whose connections start with a PROXY header; empty = none expected.
    pub accept_proxy_from: Vec<IpNet>,
    /// Deadline for that incoming PROXY header.
    pub proxy_header_timeout: Duration,
    /// Open connections allowed on this listener.
    pub max_connections: Option<usize>,
}

/// PROXY protocol version sent to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    /// No header: the backend sees the LB's address.
    Off,
    /// Text header: addresses only.
    V1,
    /// Binary header with identity TLVs.
    V2,
}

/// A validated backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Stable ring key.
    pub name: String,
    /// `host:port`, resolved at connect time.
    pub address: String,
    /// Ring weight.
    pub weight: u32,
    /// PROXY header version.
    pub proxy_protocol: ProxyVersion,
    /// Include the client certificate DER (v2 only).
    pub send_client_cert: bool,
    /// Include a CRC32C TLV (v2 only).
    pub crc32c: bool,
    /// Move its clients off at the drain pace when it leaves the config.
    pub drain: bool,
    /// How its health is checked.
    pub health: HealthConfig,
}

/// Validated limits, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    /// Deadline for the first packet.
    pub connect_peek_timeout: Duration,
    /// Largest first packet in bytes.
    pub max_connect_size: usize,
    /// Open connections allowed in total (`None` = unlimited).
    pub max_connections: Option<usize>,
    /// Per-source-IP connection rate (per second) and burst (`None` = unlimited).
    pub per_ip_rate: Option<(f64, u32)>,
    /// TLS handshakes per second (`None` = unlimited).
    pub tls_handshakes_per_second: Option<u32>,
    /// Added to 1.5 × keep-alive for the idle timeout.
    pub idle_grace: Duration,
    /// Bounded-load factor (`None` = plain rendezvous).
    pub bounded_load_factor: Option<f64>,
    /// Deadline for the TCP connect to a backend.
    pub backend_connect_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            connect_peek_timeout: DEFAULT_CONNECT_PEEK_TIMEOUT,
            max_connect_size: DEFAULT_MAX_CONNECT_SIZE,
            max_connections: None,
            per_ip_rate: None,
            tls_handshakes_per_second: None,
            idle_grace: DEFAULT_IDLE_GRACE,
            bounded_load_factor: None,
            backend_connect_timeout: DEFAULT_BACKEND_CONNECT_TIMEOUT,
        }
    }
}

/// A validated load balancer config.
#[derive(Debug, Clone, PartialEq)]
pub struct LbConfig {
    /// Instance name.
    pub name: String,
    /// Admin HTTP bind address, if any.
    pub admin_bind: Option<SocketAddr>,
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
    let admin_bind = raw.admin.as_ref().and_then(|a| c.addr(&a.bind));

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
        admin_bind,
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

fn validate_listener(
    c: &mut Checker<'_>,
    l: &ListenerFile,
    seen: &mut HashSet<String>,
) -> Option<ListenerConfig> {
    let name = c.name(&l.name, "listener", seen);
    let bind = c.addr(&l.bind);
    let tls = l.tls.as_ref().map(|t| validate_tls(c, t));
    let mut accept_proxy_from = Vec::new();
    for cidr in &l.accept_proxy_from {
        match parse_cidr(cidr.get_ref()) {
            Some(net) => accept_proxy_from.push(net),
            None => c.problem(
                cidr.span(),
                format!(
                    "invalid CIDR {:?} (expected e.g. \"10.0.0.0/8\")",
                    cidr.get_ref()
                ),
            ),
        }
    }
    if let Some(m) = &l.max_connections
        && *m.get_ref() == 0
    {
        c.problem(m.span(), "max_connections must be at least 1");
    }
    Some(ListenerConfig {
        name,
        bind: bind?,
        tls,
        accept_proxy_from,
        proxy_header_timeout: DEFAULT_PROXY_HEADER_TIMEOUT,
        max_connections: l.max_connections.as_ref().map(|m| *m.get_ref()),
    })
}

fn validate_tls(c: &mut Checker<'_>, t: &TlsFile) -> TlsConfig {
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
            .map_or(DEFAULT_HANDSHAKE_TIMEOUT, ConfigDuration::get),
    }
}

fn validate_backend(
    c: &mut Checker<'_>,
    b: &BackendFile,
    seen: &mut HashSet<String>,
    default_health: &HealthFile,
    lb_name: &str,
) -> BackendConfig {
    let name = c.name(&b.name, "backend", seen);
    let address = b.address.get_ref().clone();
    let port_ok = address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0));
    if !port_ok {
        c.problem(
            b.address.span(),
            format!("invalid backend address {address:?} (expected \"host:port\")"),
        );
    }
    let health = match &b.health {
        Some(own) => own.over(default_health),
        None => default_health.clone(),
    };
    let (proxy_protocol, send_client_cert, crc32c) =
        proxy_settings(c, b.proxy_protocol.as_ref(), &b.send_client_cert, &b.crc32c);
    BackendConfig {
        name,
        address,
        weight: b.weight.unwrap_or(1),
        proxy_protocol,
        send_client_cert,
        crc32c,
        drain: b.drain.unwrap_or(false),
        health: control::health(c, &health, lb_name),
    }
}

fn validate_discovery(
    c: &mut Checker<'_>,
    d: &DiscoverySectionFile,
    default_health: &HealthFile,
    lb_name: &str,
) -> Option<DiscoverySettings> {
    let endpoints = match d
        .endpoints
        .get_ref()
        .validate(c.file, c.source, Some(d.endpoints.span()))
    {
        Ok(e) => Some(e),
        Err(problems) => {
            c.problems.extend(problems);
            None
        }
    };
    let health = match &d.health {
        Some(own) => own.over(default_health),
        None => default_health.clone(),
    };
    let (proxy_protocol, send_client_cert, crc32c) =
        proxy_settings(c, d.proxy_protocol.as_ref(), &d.send_client_cert, &d.crc32c);
    let template = BackendConfig {
        name: String::new(),
        address: String::new(),
        weight: d.weight.unwrap_or(1),
        proxy_protocol,
        send_client_cert,
        crc32c,
        drain: d.drain.unwrap_or(false),
        health: control::health(c, &health, lb_name),
    };
    Some(DiscoverySettings {
        endpoints: endpoints?,
        template,
    })
}

/// `proxy_protocol`, and the v2-only flags checked against it.
fn proxy_settings(
    c: &mut Checker<'_>,
    proxy_protocol: Option<&Spanned<String>>,
    send_client_cert: &Option<Spanned<bool>>,
    crc32c: &Option<Spanned<bool>>,
) -> (ProxyVersion, bool, bool) {
    let proxy_protocol = match proxy_protocol {
        None => ProxyVersion::V2,
        Some(v) => match v.get_ref().as_str() {
            "off" => ProxyVersion::Off,
            "v1" => ProxyVersion::V1,
            "v2" => ProxyVersion::V2,
            other => {
                c.problem(
                    v.span(),
                    format!("proxy_protocol must be \"off\", \"v1\" or \"v2\", not {other:?}"),
                );
                ProxyVersion::V2
            }
        },
    };
    let mut v2_only = |flag: &Option<Spanned<bool>>, what: &str| -> bool {
        let on = flag.as_ref().is_some_and(|f| *f.get_ref());
        if on
            && proxy_protocol != ProxyVersion::V2
            && let Some(f) = flag
        {
            c.problem(f.span(), format!("{what} needs proxy_protocol = \"v2\""));
        }
        on
    };
    let send_client_cert = v2_only(send_client_cert, "send_client_cert");
    let crc32c = v2_only(crc32c, "crc32c");
    (proxy_protocol, send_client_cert, crc32c)
}

fn validate_limits(c: &mut Checker<'_>, l: &LimitsFile) -> LimitsConfig {
    let mut limits = LimitsConfig::default();
    if let Some(v) = l.connect_peek_timeout {
        limits.connect_peek_timeout = v.get();
    }
    if let Some(v) = &l.max_connect_size {
        if !(MIN_MAX_CONNECT_SIZE..=MAX_MQTT_PACKET).contains(v.get_ref()) {
            c.problem(
                v.span(),
                format!(
                    "max_connect_size must be between {MIN_MAX_CONNECT_SIZE} and {MAX_MQTT_PACKET}"
                ),
            );
        }
        limits.max_connect_size = *v.get_ref();
    }
    if let Some(v) = &l.max_connections {
        if *v.get_ref() == 0 {
            c.problem(v.span(), "max_connections must be at least 1");
        }
        limits.max_connections = Some(*v.get_ref());
    }
    match (&l.per_ip_rate, &l.per_ip_burst) {
        (Some(rate), burst) => {
            let r = *rate.get_ref();
            if !(r.is_finite() && r > 0.0) {
                c.problem(
                    rate.span(),
                    "per_ip_rate must be a positive number of connections per second",
                );
            }
            // Default burst: one second's worth, at least one connection.
            let b = burst
                .as_ref()
                .map_or(r.ceil().max(1.0) as u32, |b| *b.get_ref());
            if let Some(burst) = burst
                && *burst.get_ref() == 0
            {
                c.problem(burst.span(), "per_ip_burst must be at least 1");
            }
            limits.per_ip_rate = Some((r, b));
        }
        (None, Some(burst)) => c.problem(burst.span(), "per_ip_burst needs per_ip_rate"),
        (None, None) => {}
    }
    if let Some(v) = &l.tls_handshakes_per_second {
        if *v.get_ref() == 0 {
            c.problem(v.span(), "tls_handshakes_per_second must be at least 1");
        }
        limits.tls_handshakes_per_second = Some(*v.get_ref());
    }
    if let Some(v) = l.idle_grace {
        limits.idle_grace = v.get();
    }
    if let Some(v) = &l.bounded_load_factor {
        let f = *v.get_ref();
        if !(f.is_finite() && f > 1.0) {
            c.problem(
                v.span(),
                "bounded_load_factor must be greater than 1.0 (e.g. 1.25)",
            );
        }
        limits.bounded_load_factor = Some(f);
    }
    if let Some(v) = l.backend_connect_timeout {
        limits.backend_connect_timeout = v.get();
    }
    limits
}

/// Parses `"10.0.0.0/8"`, or a bare address as a host network (`/32`, `/128`).
fn parse_cidr(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
[lb]
name = "lb-0"

[admin]
bind = "127.0.0.1:0"

[[listeners]]
name = "mqtt"
bind = "127.0.0.1:0"

[[listeners]]
name = "mqtts"
bind = "0.0.0.0:8883"
accept_proxy_from = ["10.0.0.0/8", "192.168.1.1"]
max_connections = 10
[listeners.tls]
certificates = [
  { cert = "a.pem", key = "a.key" },
  { cert = "/etc/b.pem", key = "/etc/b.key", sni = ["MQTT.example.com."] },
]
client_auth = "required"
client_ca = "ca.pem"
crls = ["ca.crl"]
handshake_timeout = "2s"

[[backends]]
name = "broker-0"
address = "127.0.0.1:1883"

[[backends]]
name = "broker-1"
address = "broker-1.local:1883"
weight = 2
proxy_protocol = "v2"
send_client_cert = true
crc32c = true

[limits]
connect_peek_timeout = "3s"
max_connect_size = 4096
max_connections = 100
per_ip_rate = 5.0
tls_handshakes_per_second = 100
bounded_load_factor = 1.25
"#;

    #[test]
    fn valid_config() {
        let cfg = LbConfig::parse(Path::new("/etc/fg/lb.toml"), VALID).unwrap();
        assert_eq!(cfg.name, "lb-0");
        assert_eq!(cfg.listeners.len(), 2);
        let tls = cfg.listeners[1].tls.as_ref().unwrap();
        assert_eq!(tls.certificates[0].cert, Path::new("/etc/fg/a.pem"));
        assert_eq!(tls.certificates[1].cert, Path::new("/etc/b.pem"));
        assert_eq!(
            tls.certificates[1].sni,
            vec!["mqtt.example.com".to_string()]
        );
        assert_eq!(tls.client_auth, ClientAuth::Required);
        assert_eq!(tls.client_ca.as_deref(), Some(Path::new("/etc/fg/ca.pem")));
        assert_eq!(tls.handshake_timeout, Duration::from_secs(2));
        assert_eq!(cfg.listeners[1].accept_proxy_from.len(), 2);
        assert_eq!(cfg.listeners[1].max_connections, Some(10));
        assert_eq!(cfg.backends[0].proxy_protocol, ProxyVersion::V2);
        assert_eq!(cfg.backends[0].weight, 1);
        assert!(cfg.backends[1].send_client_cert && cfg.backends[1].crc32c);
        assert_eq!(cfg.limits.connect_peek_timeout, Duration::from_secs(3));
        assert_eq!(cfg.limits.max_connect_size, 4096);
        assert_eq!(cfg.limits.per_ip_rate, Some((5.0, 5)));
        assert_eq!(cfg.limits.idle_grace, DEFAULT_IDLE_GRACE);
        assert_eq!(cfg.limits.bounded_load_factor, Some(1.25));
    }

    #[test]
    fn unknown_field_is_located() {
        let src =
            "[lb]\nname = \"a\"\n[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\nport = 3\n";
        let err = LbConfig::parse(Path::new("lb.toml"), src).unwrap_err();
        assert_eq!(err.problems[0].line, 6, "{err}");
        assert!(err.to_string().contains("port"), "{err}");
    }

    #[test]
    fn every_problem_is_reported_in_place() {
        let src = r#"[lb]
name = "a"
[[listeners]]
name = "l"
bind = "nowhere"
accept_proxy_from = ["10.0.0.0/99"]
[listeners.tls]
certificates = []
client_auth = "sometimes"
[[listeners]]
name = "l"
bind = "127.0.0.1:0"
[listeners.tls]
certificates = [{ cert = "c", key = "k" }]
client_auth = "required"
[[backends]]
name = "b"
address = "no-port"
proxy_protocol = "v1"
crc32c = true
[limits]
max_connect_size = 10
bounded_load_factor = 0.5
"#;
        let err = LbConfig::parse(Path::new("lb.toml"), src).unwrap_err();
        let lines: Vec<usize> = err.problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, vec![5, 8, 9, 6, 11, 15, 18, 20, 22, 23], "{err}");
        assert!(
            err.to_string()
                .contains("lb.toml:11:8: duplicate listener name"),
            "{err}"
        );
    }

    #[test]
    fn listeners_and_backends_are_required() {
        let err = LbConfig::parse(Path::new("lb.toml"), "[lb]\nname = \"a\"\n").unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
    }

    #[test]
    fn control_tables() {
        let src = r#"[lb]
name = "lb-7"
[[listeners]]
name = "l"
bind = "127.0.0.1:0"
[health]
kind = "mqtt"
interval = "500ms"
fall = 4
username = "probe"
password = "s3cret"
[[backends]]
name = "b0"
address = "127.0.0.1:1883"
drain = true
health = { kind = "http", http_port = 9100 }
[[backends]]
name = "b1"
address = "127.0.0.1:1884"
[drain]
delay = "2s"
rate = 50.0
jitter = 0.1
[discovery]
endpoints = { static = [{ name = "b9", address = "127.0.0.1:1885" }] }
proxy_protocol = "v1"
"#;
        let cfg = LbConfig::parse(Path::new("lb.toml"), src).unwrap();
        let (b0, b1) = (&cfg.backends[0], &cfg.backends[1]);
        assert!(b0.drain && !b1.drain);
        assert_eq!(b0.health.kind, HealthKind::Http);
        assert_eq!(b0.health.http_port, Some(9100));
        assert_eq!(b0.health.fall, 4, "unset fields come from [health]");
        assert_eq!(b1.health.kind, HealthKind::Mqtt);
        assert_eq!(b1.health.interval, Duration::from_millis(500));
        assert_eq!(b1.health.client_id, "fleetgate-probe-lb-7");
        assert!(
            !format!("{cfg:?}").contains("s3cret"),
            "the password is never printed"
        );
        assert_eq!(cfg.drain.delay, Duration::from_secs(2));
        assert_eq!(cfg.drain.rate, 50.0);
        let d = cfg.discovery.unwrap();
        assert_eq!(d.template.proxy_protocol, ProxyVersion::V1);
        assert_eq!(d.template.health.kind, HealthKind::Mqtt);

        let bad = src
            .replace("fall = 4", "fall = 0")
            .replace("rate = 50.0", "rate = -1.0")
            .replace("kind = \"http\"", "kind = \"icmp\"");
        let err = LbConfig::parse(Path::new("lb.toml"), &bad).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("lb.toml:9:8: fall must be between 1 and 100"),
            "{text}"
        );
        assert!(text.contains("health kind must be"), "{text}");
        assert!(text.contains("drain rate must be"), "{text}");
    }

    #[test]
    fn example_file_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/lb.toml");
        let cfg = LbConfig::load(&path).unwrap();
        assert!(!cfg.listeners.is_empty());
        assert!(!cfg.backends.is_empty());
    }
}
