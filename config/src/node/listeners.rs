//! The `[[listeners]]` entries of a node config: raw [`ListenerFile`] → validated [`ListenerConfig`] (bind
//! address, PROXY protocol mode and trusted proxies, optional name).
//!
//! ```toml
//! [[listeners]]
//! name = "lb"                          # optional; selects `[auth.listeners.lb]`
//! bind = "0.0.0.0:1883"
//! proxy_protocol = "required"          # "off" | "required"
//! trusted_proxies = ["10.0.0.0/8"]
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use super::parse_addr;
use crate::duration::ConfigDuration;

/// Default time a trusted proxy gets to deliver its PROXY header.
pub(crate) const DEFAULT_PROXY_TIMEOUT: Duration = Duration::from_secs(5);

/// Raw `[[listeners]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenerFile {
    /// Name for per-listener settings (`[auth.listeners.<name>]`); unique within the file.
    pub(crate) name: Option<Spanned<String>>,
    /// Socket address to bind (`"0.0.0.0:1883"`; port 0 picks a free port).
    pub(crate) bind: Spanned<String>,
    /// `"off"` (default) or `"required"`.
    #[serde(default)]
    pub(crate) proxy_protocol: Option<Spanned<String>>,
    /// CIDRs allowed to send a PROXY header.
    #[serde(default)]
    pub(crate) trusted_proxies: Vec<Spanned<String>>,
    /// Deadline for the PROXY header.
    pub(crate) proxy_timeout: Option<ConfigDuration>,
}

/// Whether a listener expects a PROXY protocol header before MQTT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Plain MQTT; a PROXY header is a protocol error.
    Off,
    /// Every connection starts with a PROXY v1/v2 header from a trusted peer.
    Required,
}

/// A validated MQTT listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Address to bind.
    pub bind: SocketAddr,
    /// PROXY protocol mode.
    pub proxy_protocol: ProxyMode,
    /// Peers allowed to send a PROXY header.
    pub trusted_proxies: Vec<IpNet>,
    /// Deadline for the PROXY header.
    pub proxy_timeout: Duration,
    /// The listener's name (`[auth.listeners.<name>]` overrides apply to it), when given.
    pub name: Option<String>,
}

/// Validates the `[[listeners]]` entries, reporting each problem through `problem`; an entry whose bind address
/// is invalid is left out (the config is refused anyway).
pub(crate) fn validate_listeners(
    raw: &[ListenerFile],
    problem: &mut impl FnMut(std::ops::Range<usize>, String),
) -> Vec<ListenerConfig> {
    let mut listeners = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for l in raw {
        if let Some(n) = &l.name {
            let n_str = n.get_ref().as_str();
            if n_str.is_empty() || n_str.chars().any(|c| c.is_control() || c.is_whitespace()) {
                problem(
                    n.span(),
                    "listener name must be non-empty without spaces or control characters".into(),
                );
            } else if names.contains(&n_str) {
                problem(n.span(), format!("listener name {n_str:?} used twice"));
            }
            names.push(n_str);
        }
        let bind = parse_addr(&l.bind, problem);
        let mode = match l.proxy_protocol.as_ref() {
            None => ProxyMode::Off,
            Some(m) => match m.get_ref().as_str() {
                "off" => ProxyMode::Off,
                "required" => ProxyMode::Required,
                other => {
                    problem(
                        m.span(),
                        format!("proxy_protocol must be \"off\" or \"required\", not {other:?}"),
                    );
                    ProxyMode::Off
                }
            },
        };
        let mut trusted = Vec::new();
        for cidr in &l.trusted_proxies {
            match parse_cidr(cidr.get_ref()) {
                Some(net) => trusted.push(net),
                None => problem(
                    cidr.span(),
                    format!(
                        "invalid CIDR {:?} (expected e.g. \"10.0.0.0/8\")",
                        cidr.get_ref()
                    ),
                ),
            }
        }
        if mode == ProxyMode::Required && l.trusted_proxies.is_empty() {
            let span = l
                .proxy_protocol
                .as_ref()
                .map_or(l.bind.span(), |m| m.span());
            problem(
                span,
                "proxy_protocol = \"required\" needs a non-empty trusted_proxies list".into(),
            );
        }
        if let Some(bind) = bind {
            listeners.push(ListenerConfig {
                name: l.name.as_ref().map(|n| n.get_ref().clone()),
                bind,
                proxy_protocol: mode,
                trusted_proxies: trusted,
                proxy_timeout: l
                    .proxy_timeout
                    .map_or(DEFAULT_PROXY_TIMEOUT, ConfigDuration::get),
            });
        }
    }
    listeners
}

/// Parses `"10.0.0.0/8"`, or a bare address as a host network (`/32`, `/128`).
fn parse_cidr(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}
