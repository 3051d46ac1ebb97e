//! The LB's control-plane tables: `[health]` (and per-backend `health = { ... }` overrides), `[drain]` and
//! `[discovery]`, raw → validated like the rest of [`super`].
//!
//! ```toml
//! [health]                      # default check of every backend; a backend's own `health = {...}` overrides fields
//! kind = "mqtt"                 # "none" (default) | "tcp" | "mqtt" | "http"
//! interval = "2s"
//! timeout = "1s"
//! rise = 2                      # consecutive successes before a down backend is up again
//! fall = 3                      # consecutive failures before an up backend is down
//! client_id = "fleetgate-probe-lb-0"   # mqtt: default "fleetgate-probe-<lb name>"; "-<backend>" is appended
//! username = "probe"            # mqtt: optional credentials
//! password = "secret"
//! http_port = 9100              # http: the node's admin port (default: the backend's port)
//! http_path = "/readyz"
//!
//! [drain]
//! delay = "5s"                  # keep accepting this long after /readyz turns false
//! rate = 200.0                  # then close existing connections at this many per second...
//! jitter = 0.25                 # ...each gap varied by up to ±25 %
//!
//! [discovery]                   # backends found by fleetgate-discovery, beside any [[backends]]
//! endpoints = { dns = { name = "_mqtt._tcp.broker.fleetgate.svc.cluster.local.", type = "srv" } }
//! proxy_protocol = "v2"         # the settings every discovered backend gets
//! weight = 1
//! drain = true
//! health = { kind = "mqtt" }
//! ```
//!
//! The `endpoints` table is the embeddable discovery table of [`crate::discovery`] (what fleetgate-discovery
//! runs), validated in place like everything else.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::discovery::{DiscoveryConfig, DiscoveryFile};
use crate::duration::ConfigDuration;
use crate::load::Secret;

/// Default time between two health checks of a backend.
pub(crate) const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// Default deadline of one check: a broker that takes longer than this to answer a CONNECT is not serving.
pub(crate) const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// Default consecutive successes to mark a down backend up (one lucky answer must not bring back a flapping node).
pub(crate) const DEFAULT_RISE: u32 = 2;
/// Default consecutive failures to mark an up backend down (one lost probe must not move its clients).
pub(crate) const DEFAULT_FALL: u32 = 3;
/// Default readiness path of the `http` check (the node's admin `/readyz`).
pub(crate) const DEFAULT_HTTP_PATH: &str = "/readyz";
/// Shortest accepted check interval: probes are real MQTT sessions on the broker; more often is a load test.
pub(crate) const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(100);
/// Longest accepted `rise`/`fall`: beyond this a backend would take minutes to flip at any sensible interval.
pub(crate) const MAX_THRESHOLD: u32 = 100;
/// Default drain pace: a thousand reconnects a second is what a single broker node absorbs comfortably.
pub(crate) const DEFAULT_DRAIN_RATE: f64 = 1000.0;
/// Default jitter of the drain pace (fraction of each gap).
pub(crate) const DEFAULT_DRAIN_JITTER: f64 = 0.25;

/// Raw `[health]` table, or a backend's `health = { ... }` override.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HealthFile {
    /// `"none"`, `"tcp"`, `"mqtt"` or `"http"`.
    pub(crate) kind: Option<Spanned<String>>,
    /// Time between checks.
    pub(crate) interval: Option<Spanned<ConfigDuration>>,
    /// Deadline of one check.
    pub(crate) timeout: Option<Spanned<ConfigDuration>>,
    /// Consecutive successes to go up.
    pub(crate) rise: Option<Spanned<u32>>,
    /// Consecutive failures to go down.
    pub(crate) fall: Option<Spanned<u32>>,
    /// MQTT probe client ID.
    pub(crate) client_id: Option<Spanned<String>>,
    /// MQTT probe user name.
    pub(crate) username: Option<Spanned<String>>,
    /// MQTT probe password (redacted in `Debug`).
    pub(crate) password: Option<Spanned<Secret>>,
    /// Port of the HTTP readiness endpoint.
    pub(crate) http_port: Option<Spanned<u16>>,
    /// Path of the HTTP readiness endpoint.
    pub(crate) http_path: Option<Spanned<String>>,
}

impl HealthFile {
    /// This table with every field it leaves out taken from `base`.
    pub(crate) fn over(&self, base: &HealthFile) -> HealthFile {
        HealthFile {
            kind: self.kind.clone().or_else(|| base.kind.clone()),
            interval: self.interval.clone().or_else(|| base.interval.clone()),
            timeout: self.timeout.clone().or_else(|| base.timeout.clone()),
            rise: self.rise.clone().or_else(|| base.rise.clone()),
            fall: self.fall.clone().or_else(|| base.fall.clone()),
            client_id: self.client_id.clone().or_else(|| base.client_id.clone()),
            username: self.username.clone().or_else(|| base.username.clone()),
            password: self.password.clone().or_else(|| base.password.clone()),
            http_port: self.http_port.clone().or_else(|| base.http_port.clone()),
            http_path: self.http_path.clone().or_else(|| base.http_path.clone()),
        }
    }
}

/// Raw `[drain]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DrainFile {
    /// Time to keep accepting after readiness turns false.
    pub(crate) delay: Option<ConfigDuration>,
    /// Connections closed per second.
    pub(crate) rate: Option<Spanned<f64>>,
    /// Fraction by which each gap varies.
    pub(crate) jitter: Option<Spanned<f64>>,
}

/// Raw `[discovery]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DiscoverySectionFile {
    /// The discovery table (`static = [...]` or `dns = { ... }`).
    pub(crate) endpoints: Spanned<DiscoveryFile>,
    /// Ring weight of every discovered backend.
    pub(crate) weight: Option<u32>,
    /// PROXY header version sent to them.
    pub(crate) proxy_protocol: Option<Spanned<String>>,
    /// Send the client certificate in the PROXY v2 SSL TLV.
    pub(crate) send_client_cert: Option<Spanned<bool>>,
    /// Add a CRC32C TLV.
    pub(crate) crc32c: Option<Spanned<bool>>,
    /// Move clients off a discovered backend that disappears, at the drain pace.
    pub(crate) drain: Option<bool>,
    /// Health check override for discovered backends.
    pub(crate) health: Option<HealthFile>,
}

/// How a backend's health is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthKind {
    /// Not checked: always up (only passive failure marks steer traffic away).
    None,
    /// A TCP connect.
    Tcp,
    /// PROXY LOCAL header (if the backend speaks PROXY), CONNECT, CONNACK accepted, DISCONNECT.
    Mqtt,
    /// `GET http://<backend host>:<http_port><http_path>` answered 200.
    Http,
}

impl HealthKind {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthKind::None => "none",
            HealthKind::Tcp => "tcp",
            HealthKind::Mqtt => "mqtt",
            HealthKind::Http => "http",
        }
    }
}

/// A validated health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// What is checked.
    pub kind: HealthKind,
    /// Time between checks.
    pub interval: Duration,
    /// Deadline of one check.
    pub timeout: Duration,
    /// Consecutive successes to go up.
    pub rise: u32,
    /// Consecutive failures to go down.
    pub fall: u32,
    /// MQTT probe client ID prefix (unique per LB replica; the probe appends `-<backend name>`).
    pub client_id: String,
    /// MQTT probe credentials.
    pub credentials: Option<(String, Secret)>,
    /// HTTP readiness port (`None` = the backend's own port).
    pub http_port: Option<u16>,
    /// HTTP readiness path.
    pub http_path: String,
}

impl HealthConfig {
    /// No check: always up.
    pub fn none(lb_name: &str) -> Self {
        Self {
            kind: HealthKind::None,
            interval: DEFAULT_HEALTH_INTERVAL,
            timeout: DEFAULT_HEALTH_TIMEOUT,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
            client_id: default_probe_client_id(lb_name),
            credentials: None,
            http_port: None,
            http_path: DEFAULT_HTTP_PATH.into(),
        }
    }
}

/// The probe's client ID when none is configured: one per LB replica, so two LBs' probes never take over each
/// other's session on the broker.
pub(crate) fn default_probe_client_id(lb_name: &str) -> String {
    format!("fleetgate-probe-{lb_name}")
}

/// Validated `[drain]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DrainConfig {
    /// Time to keep accepting after readiness turns false.
    pub delay: Duration,
    /// Connections closed per second.
    pub rate: f64,
    /// Fraction (0..=1) by which each gap varies.
    pub jitter: f64,
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self {
            delay: Duration::ZERO,
            rate: DEFAULT_DRAIN_RATE,
            jitter: DEFAULT_DRAIN_JITTER,
        }
    }
}

/// Validated `[discovery]`: where the endpoints come from and the settings every discovered backend gets (its
/// `name` and `address` come from discovery).
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoverySettings {
    /// The discovery source and its refresh settings.
    pub endpoints: DiscoveryConfig,
    /// Template for discovered backends (`name` and `address` empty).
    pub template: super::BackendConfig,
}

/// Validation of the control tables, sharing the parent's located problem list.
pub(super) fn health(c: &mut super::Checker<'_>, raw: &HealthFile, lb_name: &str) -> HealthConfig {
    let mut h = HealthConfig::none(lb_name);
    if let Some(kind) = &raw.kind {
        h.kind = match kind.get_ref().as_str() {
            "none" => HealthKind::None,
            "tcp" => HealthKind::Tcp,
            "mqtt" => HealthKind::Mqtt,
            "http" => HealthKind::Http,
            other => {
                c.problem(
                    kind.span(),
                    format!(
                        "health kind must be \"none\", \"tcp\", \"mqtt\" or \"http\", not {other:?}"
                    ),
                );
                HealthKind::None
            }
        };
    }
    if let Some(v) = &raw.interval {
        h.interval = c.duration_at_least("health interval", v, MIN_HEALTH_INTERVAL);
    }
    if let Some(v) = &raw.timeout {
        h.timeout = c.duration_at_least("health timeout", v, super::MIN_TIMEOUT);
    }
    for (field, value, out) in [
        ("rise", &raw.rise, &mut h.rise),
        ("fall", &raw.fall, &mut h.fall),
    ] {
        if let Some(v) = value {
            *out = *v.get_ref();
            if !(1..=MAX_THRESHOLD).contains(out) {
                c.problem(
                    v.span(),
                    format!("{field} must be between 1 and {MAX_THRESHOLD}"),
                );
            }
        }
    }
    if let Some(id) = &raw.client_id {
        if id.get_ref().is_empty() || id.get_ref().len() > 65_535 {
            c.problem(id.span(), "probe client_id must not be empty");
        }
        h.client_id = id.get_ref().clone();
    }
    match (&raw.username, &raw.password) {
        (Some(user), password) => {
            h.credentials = Some((
                user.get_ref().clone(),
                password
                    .as_ref()
                    .map_or_else(Secret::default, |p| p.get_ref().clone()),
            ));
        }
        (None, Some(password)) => c.problem(password.span(), "password needs username"),
        (None, None) => {}
    }
    if let Some(port) = &raw.http_port {
        if *port.get_ref() == 0 {
            c.problem(port.span(), "http_port must not be 0");
        }
        h.http_port = Some(*port.get_ref());
    }
    if let Some(path) = &raw.http_path {
        if !path.get_ref().starts_with('/') || path.get_ref().contains(char::is_whitespace) {
            c.problem(
                path.span(),
                "http_path must start with '/' and hold no spaces",
            );
        }
        h.http_path = path.get_ref().clone();
    }
    h
}

pub(super) fn drain(c: &mut super::Checker<'_>, raw: &DrainFile) -> DrainConfig {
    let mut d = DrainConfig::default();
    if let Some(v) = raw.delay {
        d.delay = v.get();
    }
    if let Some(v) = &raw.rate {
        d.rate = *v.get_ref();
        if !(d.rate.is_finite() && d.rate > 0.0) {
            c.problem(
                v.span(),
                "drain rate must be a positive number of connections per second",
            );
            d.rate = DEFAULT_DRAIN_RATE;
        }
    }
    if let Some(v) = &raw.jitter {
        d.jitter = *v.get_ref();
        if !(0.0..=1.0).contains(&d.jitter) {
            c.problem(v.span(), "drain jitter must be between 0.0 and 1.0");
            d.jitter = DEFAULT_DRAIN_JITTER;
        }
    }
    d
}
