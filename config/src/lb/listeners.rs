//! `[[listeners]]`: the client-facing sockets of the LB (bind address, accepted PROXY peers, connection cap), raw
//! → validated like the rest of [`super`]; each listener's TLS table is in [`super::tls`].

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use super::Checker;
use super::tls::{TlsConfig, TlsFile, validate_tls};

/// Default deadline for an incoming PROXY header from a trusted cloud LB.
pub(crate) const DEFAULT_PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Raw `[[listeners]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenerFile {
    /// Listener name (logs and metric labels).
    pub(crate) name: Spanned<String>,
    /// Socket address to bind (port 0 picks a free port).
    pub(crate) bind: Spanned<String>,
    /// TLS termination; absent = plain TCP.
    pub(crate) tls: Option<TlsFile>,
    /// CIDRs whose connections start with a PROXY header (a cloud LB in front).
    #[serde(default)]
    pub(crate) accept_proxy_from: Vec<Spanned<String>>,
    /// Open connections allowed on this listener.
    pub(crate) max_connections: Option<Spanned<usize>>,
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

pub(super) fn validate_listener(
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

/// Parses `"10.0.0.0/8"`, or a bare address as a host network (`/32`, `/128`).
fn parse_cidr(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}
