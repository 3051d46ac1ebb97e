//! `[[backends]]` and the settings every discovered backend gets: address, ring weight, PROXY header version and
//! its v2-only flags, drain on removal, health check (validated by [`super::control`]).

use std::collections::HashSet;

use serde::Deserialize;
use toml::Spanned;

use super::Checker;
use super::control::{self, DiscoverySectionFile, DiscoverySettings, HealthConfig, HealthFile};

/// Raw `[[backends]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BackendFile {
    /// Stable ring key (e.g. `broker-0`).
    pub(crate) name: Spanned<String>,
    /// `host:port` of the broker node's listener.
    pub(crate) address: Spanned<String>,
    /// Relative weight (default 1; 0 = drained).
    pub(crate) weight: Option<u32>,
    /// `"off"`, `"v1"` or `"v2"` (default).
    pub(crate) proxy_protocol: Option<Spanned<String>>,
    /// Send the client certificate (DER) in the PROXY v2 SSL TLV.
    #[serde(default)]
    pub(crate) send_client_cert: Option<Spanned<bool>>,
    /// Add a CRC32C TLV to PROXY v2 headers.
    #[serde(default)]
    pub(crate) crc32c: Option<Spanned<bool>>,
    /// When this backend leaves the config, move its clients off at the drain pace (default: they stay until
    /// they close).
    pub(crate) drain: Option<bool>,
    /// Overrides of the `[health]` fields for this backend.
    pub(crate) health: Option<HealthFile>,
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

pub(super) fn validate_backend(
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

pub(super) fn validate_discovery(
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
