//! The discovery config table that the LB (`backends`) and node (`cluster.peers`) configs embed: raw
//! [`DiscoveryFile`] (serde, `deny_unknown_fields`) → validated [`DiscoveryConfig`], every problem located.
//!
//! ```toml
//! # a fixed list (name defaults to the address)
//! static = [{ name = "broker-0", address = "10.0.1.10:1883" }, { address = "10.0.1.11:1883" }]
//!
//! # or every A/AAAA address of a name, each on `port`, named "<ip>:<port>"
//! dns = { name = "broker.ns.svc.cluster.local.", port = 1883, type = "a", interval = "10s" }
//!
//! # or the SRV records of a headless Service: stable names (the target's first label, e.g. "broker-0")
//! dns = { name = "_mqtt._tcp.broker.ns.svc.cluster.local.", type = "srv", name_from = "first_label" }
//! # optional in `dns`: nameserver = "127.0.0.1:5353" (default: /etc/resolv.conf), timeout = "2s" (per query)
//! ```
//!
//! Names are always absolute: a missing trailing dot is added, and no search domain is tried.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use fleetgate_config::ConfigDuration;
use fleetgate_config::load::{ConfigError, Problem, parse_toml};
use serde::Deserialize;
use toml::Spanned;

use crate::discovery::{
    DEFAULT_QUERY_TIMEOUT, DEFAULT_ROUND_TIMEOUT, DiscoveryOptions, MIN_REFRESH,
};
use crate::endpoint::{Endpoint, NameFrom, Source};
use crate::resolve::{Nameserver, parse_name};

/// Longest accepted `interval`: beyond a day a moved member would stay unreachable for longer than anyone
/// would wait; it is almost certainly a typo.
pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// Longest accepted per-query `timeout`: a round must stay well inside any refresh interval.
pub const MAX_QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Port of a `nameserver` given without one.
pub const DNS_PORT: u16 = 53;

/// Raw discovery table as written: exactly one of `static` or `dns`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryFile {
    /// `static = [...]`: a fixed list.
    #[serde(rename = "static")]
    pub static_list: Option<Spanned<Vec<StaticEndpointFile>>>,
    /// `dns = { ... }`: DNS discovery.
    pub dns: Option<Spanned<DnsFile>>,
}

/// Raw entry of a static list.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticEndpointFile {
    /// Stable name; defaults to the address text.
    pub name: Option<Spanned<String>>,
    /// `"ip:port"`.
    pub address: Spanned<String>,
}

/// Raw `dns = { ... }` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsFile {
    /// Name to look up (A/AAAA owner or SRV owner).
    pub name: Spanned<String>,
    /// `"a"` (A and AAAA, the default) or `"srv"`.
    #[serde(rename = "type")]
    pub record_type: Option<Spanned<String>>,
    /// Port of every address (`type = "a"` only; SRV records carry their own).
    pub port: Option<Spanned<u16>>,
    /// `"first_label"` (default) or `"target"` (`type = "srv"` only).
    pub name_from: Option<Spanned<String>>,
    /// Longest time between refreshes (default 10 s, at least 1 s).
    pub interval: Option<Spanned<ConfigDuration>>,
    /// Deadline of one query attempt (default 2 s).
    pub timeout: Option<Spanned<ConfigDuration>>,
    /// `"ip:port"` or `"ip"` (port 53) of the nameserver; default: the system configuration.
    pub nameserver: Option<Spanned<String>>,
}

/// A validated discovery config: what to pass to [`crate::Discovery::spawn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// Where the members come from.
    pub source: Source,
    /// How often and where to ask.
    pub options: DiscoveryOptions,
}

impl DiscoveryConfig {
    /// Parses a standalone discovery table (e.g. a test fixture) read from `file`.
    pub fn parse(file: &Path, source: &str) -> Result<Self, ConfigError> {
        let raw: DiscoveryFile = parse_toml(file, source)?;
        raw.validate(file, source, None).map_err(ConfigError::from)
    }
}

impl DiscoveryFile {
    /// Validates this table, read from `file` whose text is `source`. `at` is the span of the table itself (from
    /// the embedding config's `Spanned<DiscoveryFile>`), used when a problem concerns the table as a whole.
    pub fn validate(
        &self,
        file: &Path,
        source: &str,
        at: Option<Range<usize>>,
    ) -> Result<DiscoveryConfig, Vec<Problem>> {
        let mut c = Checker {
            file,
            source,
            problems: Vec::new(),
        };
        let config = match (&self.static_list, &self.dns) {
            (Some(list), None) => Some(DiscoveryConfig {
                source: Source::Static(c.static_list(list)),
                options: DiscoveryOptions::default(),
            }),
            (None, Some(dns)) => c.dns(dns.get_ref()),
            (Some(_), Some(dns)) => {
                c.problem(Some(dns.span()), "set either `static` or `dns`, not both");
                None
            }
            (None, None) => {
                c.problem(at, "discovery needs `static = [...]` or `dns = { ... }`");
                None
            }
        };
        match config {
            Some(config) if c.problems.is_empty() => Ok(config),
            _ => Err(c.problems),
        }
    }
}

struct Checker<'a> {
    file: &'a Path,
    source: &'a str,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn problem(&mut self, span: Option<Range<usize>>, message: impl Into<String>) {
        self.problems
            .push(Problem::at(self.file, self.source, span, message));
    }

    fn static_list(&mut self, list: &Spanned<Vec<StaticEndpointFile>>) -> Vec<Endpoint> {
        if list.get_ref().is_empty() {
            self.problem(Some(list.span()), "`static` needs at least one endpoint");
        }
        let mut seen = HashSet::new();
        let mut endpoints = Vec::new();
        for entry in list.get_ref() {
            let Ok(addr) = entry.address.get_ref().parse::<SocketAddr>() else {
                self.problem(
                    Some(entry.address.span()),
                    format!(
                        "invalid endpoint address {:?} (expected \"ip:port\", e.g. \"10.0.1.10:1883\")",
                        entry.address.get_ref()
                    ),
                );
                continue;
            };
            let (name, span) = match &entry.name {
                Some(name) => (name.get_ref().clone(), name.span()),
                None => (addr.to_string(), entry.address.span()),
            };
            if name.is_empty() || name.chars().any(|ch| ch.is_control() || ch.is_whitespace()) {
                self.problem(
                    Some(span),
                    "endpoint name must be non-empty without spaces or control characters",
                );
            } else if !seen.insert(name.clone()) {
                self.problem(Some(span), format!("duplicate endpoint name {name:?}"));
            }
            endpoints.push(Endpoint::new(name, addr));
        }
        endpoints
    }

    fn dns(&mut self, dns: &DnsFile) -> Option<DiscoveryConfig> {
        let name = match parse_name(dns.name.get_ref()) {
            Ok(name) => Some(name.to_ascii()),
            Err(e) => {
                self.problem(Some(dns.name.span()), e.to_string());
                None
            }
        };
        let options = DiscoveryOptions {
            interval: self.interval(dns),
            min_refresh: MIN_REFRESH,
            nameserver: self.nameserver(dns),
            query_timeout: self.query_timeout(dns),
            round_timeout: DEFAULT_ROUND_TIMEOUT,
        };
        let kind = dns
            .record_type
            .as_ref()
            .map_or("a", |t| t.get_ref().as_str());
        let source = match kind {
            "a" => {
                if let Some(from) = &dns.name_from {
                    self.problem(
                        Some(from.span()),
                        "`name_from` only applies to `type = \"srv\"`",
                    );
                }
                match &dns.port {
                    None => {
                        self.problem(Some(dns.name.span()), "`type = \"a\"` needs a `port`");
                        None
                    }
                    Some(port) if *port.get_ref() == 0 => {
                        self.problem(Some(port.span()), "port must not be 0");
                        None
                    }
                    Some(port) => name.map(|name| Source::DnsA {
                        name,
                        port: *port.get_ref(),
                    }),
                }
            }
            "srv" => {
                if let Some(port) = &dns.port {
                    self.problem(
                        Some(port.span()),
                        "`port` does not apply to `type = \"srv\"`: each SRV record has its own",
                    );
                }
                let name_from = self.name_from(dns);
                name.map(|name| Source::DnsSrv { name, name_from })
            }
            other => {
                let span = dns.record_type.as_ref().map(Spanned::span);
                self.problem(
                    span,
                    format!("unknown DNS record type {other:?} (use \"a\" or \"srv\")"),
                );
                None
            }
        };
        source.map(|source| DiscoveryConfig { source, options })
    }

    fn name_from(&mut self, dns: &DnsFile) -> NameFrom {
        let Some(from) = &dns.name_from else {
            return NameFrom::default();
        };
        match from.get_ref().as_str() {
            "first_label" => NameFrom::FirstLabel,
            "target" => NameFrom::Target,
            other => {
                self.problem(
                    Some(from.span()),
                    format!("unknown name_from {other:?} (use \"first_label\" or \"target\")"),
                );
                NameFrom::default()
            }
        }
    }

    fn interval(&mut self, dns: &DnsFile) -> Duration {
        let Some(interval) = &dns.interval else {
            return crate::discovery::DEFAULT_INTERVAL;
        };
        let value = interval.get_ref().get();
        if value < MIN_REFRESH || value > MAX_INTERVAL {
            self.problem(
                Some(interval.span()),
                format!("interval must be between {MIN_REFRESH:?} and {MAX_INTERVAL:?}"),
            );
        }
        value.clamp(MIN_REFRESH, MAX_INTERVAL)
    }

    fn query_timeout(&mut self, dns: &DnsFile) -> Duration {
        let Some(timeout) = &dns.timeout else {
            return DEFAULT_QUERY_TIMEOUT;
        };
        let value = timeout.get_ref().get();
        if value.is_zero() || value > MAX_QUERY_TIMEOUT {
            self.problem(
                Some(timeout.span()),
                format!("timeout must be above 0 and at most {MAX_QUERY_TIMEOUT:?}"),
            );
            return DEFAULT_QUERY_TIMEOUT;
        }
        value
    }

    fn nameserver(&mut self, dns: &DnsFile) -> Nameserver {
        let Some(text) = &dns.nameserver else {
            return Nameserver::System;
        };
        let text_ref = text.get_ref();
        if let Ok(addr) = text_ref.parse::<SocketAddr>() {
            return Nameserver::At(addr);
        }
        if let Ok(ip) = text_ref.parse::<IpAddr>() {
            return Nameserver::At(SocketAddr::new(ip, DNS_PORT));
        }
        self.problem(
            Some(text.span()),
            format!("invalid nameserver {text_ref:?} (expected \"ip\" or \"ip:port\", e.g. \"10.96.0.10:53\")"),
        );
        Nameserver::System
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<DiscoveryConfig, ConfigError> {
        DiscoveryConfig::parse(Path::new("d.toml"), src)
    }

    #[test]
    fn static_list_defaults_names_to_addresses() {
        let c = parse(
            "static = [{ name = \"broker-0\", address = \"10.0.1.10:1883\" }, { address = \"10.0.1.11:1883\" }]\n",
        )
        .unwrap();
        let Source::Static(list) = c.source else {
            panic!("{c:?}")
        };
        assert_eq!(
            list[0],
            Endpoint::new("broker-0", "10.0.1.10:1883".parse().unwrap())
        );
        assert_eq!(list[1].name, "10.0.1.11:1883");
    }

    #[test]
    fn dns_a_and_srv_tables() {
        let c = parse(
            "dns = { name = \"broker.ns.svc.cluster.local\", port = 1883, interval = \"30s\", \
             nameserver = \"127.0.0.1:5353\" }\n",
        )
        .unwrap();
        assert_eq!(
            c.source,
            Source::DnsA {
                name: "broker.ns.svc.cluster.local.".into(),
                port: 1883
            }
        );
        assert_eq!(c.options.interval, Duration::from_secs(30));
        assert_eq!(
            c.options.nameserver,
            Nameserver::At("127.0.0.1:5353".parse().unwrap())
        );

        let c = parse(concat!(
            r#"dns = { name = "_mqtt._tcp.b.test.", type = "srv", name_from = "target","#,
            r#" nameserver = "10.96.0.10" }"#,
        ))
        .unwrap();
        assert_eq!(
            c.source,
            Source::DnsSrv {
                name: "_mqtt._tcp.b.test.".into(),
                name_from: NameFrom::Target
            }
        );
        assert_eq!(
            c.options.nameserver,
            Nameserver::At("10.96.0.10:53".parse().unwrap())
        );
        assert_eq!(c.options.interval, crate::discovery::DEFAULT_INTERVAL);
    }

    #[test]
    fn every_problem_is_located() {
        let src = concat!(
            r#"dns = { name = "b.test.", type = "srv", port = 1883,"#,
            "\n",
            r#"  name_from = "pod", interval = "100ms", nameserver = "dns.local" }"#,
        );
        let err = parse(src).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.problems.len(), 4, "{text}");
        assert!(text.contains("d.toml:1:"), "{text}");
        assert!(text.contains("port"), "{text}");
        assert!(text.contains("d.toml:2:"), "{text}");
        assert!(
            text.contains("name_from") && text.contains("interval") && text.contains("nameserver"),
            "{text}"
        );
    }

    #[test]
    fn embedded_table_problems_point_into_the_outer_file() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Outer {
            #[allow(dead_code)]
            name: String,
            backends: Spanned<DiscoveryFile>,
        }
        let src = "name = \"lb-0\"\n[backends]\n";
        let outer: Outer = parse_toml(Path::new("lb.toml"), src).unwrap();
        let problems = outer
            .backends
            .get_ref()
            .validate(Path::new("lb.toml"), src, Some(outer.backends.span()))
            .unwrap_err();
        assert_eq!(
            (problems[0].line, problems[0].column),
            (2, 1),
            "{problems:?}"
        );
    }

    #[test]
    fn bad_tables_are_rejected() {
        for (src, needle) in [
            ("", "needs `static"),
            ("static = []\n", "at least one"),
            (
                "static = [{ address = \"10.0.0.1\" }]\n",
                "invalid endpoint address",
            ),
            (
                "static = [{ name = \"a\", address = \"10.0.0.1:1\" }, { name = \"a\", address = \"10.0.0.2:1\" }]\n",
                "duplicate",
            ),
            ("dns = { name = \"b.test.\" }\n", "needs a `port`"),
            (
                "dns = { name = \"b.test.\", port = 1, type = \"mx\" }\n",
                "unknown DNS record type",
            ),
            ("dns = { name = \"10.0.0.1\", port = 1 }\n", "IP address"),
            (
                "dns = { name = \"b.test.\", port = 1, ttl = \"1s\" }\n",
                "ttl",
            ),
            (
                "static = [{ address = \"10.0.0.1:1\" }]\ndns = { name = \"b.test.\", port = 1 }\n",
                "not both",
            ),
        ] {
            let err = parse(src).unwrap_err().to_string();
            assert!(err.contains(needle), "{src:?}: {err}");
        }
    }
}
