//! The discovery table that the LB (`[backends]`) and node (`[cluster] peers`) configs embed: raw
//! [`DiscoveryFile`] (serde, `deny_unknown_fields`) → validated [`DiscoveryConfig`], every problem located. The
//! `fleetgate-discovery` crate turns a [`DiscoveryConfig`] into a running discovery; this crate does not depend
//! on it.
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

use serde::Deserialize;
use toml::Spanned;

use crate::duration::ConfigDuration;
use crate::load::{ConfigError, Problem, parse_toml};

/// Default time between refreshes when TTLs are longer: a rescheduled pod is noticed within this.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Shortest accepted `interval`, and discovery's refresh floor: a TTL of 0 or 1 s (common for headless
/// Services) must not turn discovery into a query storm against cluster DNS.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Longest accepted `interval`: beyond a day a moved member would stay unreachable for longer than anyone
/// would wait; it is almost certainly a typo.
pub(crate) const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// Default deadline of one DNS query attempt: cluster DNS answers in milliseconds; two seconds covers a loaded
/// CoreDNS without letting a dead one stall a round for long.
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest accepted per-query `timeout`: a round must stay well inside any refresh interval.
pub(crate) const MAX_QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Port of a `nameserver` given without one.
pub(crate) const DNS_PORT: u16 = 53;
/// Longest DNS label in octets (RFC 1035 §2.3.4).
const MAX_LABEL_LEN: usize = 63;
/// Longest absolute name as text, trailing dot included: 255 octets on the wire (RFC 1035 §2.3.4) is the text
/// plus one length octet for the first label.
const MAX_NAME_LEN: usize = 254;

/// Raw discovery table as written: exactly one of `static` or `dns`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DiscoveryFile {
    /// `static = [...]`: a fixed list.
    #[serde(rename = "static")]
    pub(crate) static_list: Option<Spanned<Vec<StaticEndpointFile>>>,
    /// `dns = { ... }`: DNS discovery.
    pub(crate) dns: Option<Spanned<DnsFile>>,
}

/// Raw entry of a static list.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StaticEndpointFile {
    /// Stable name; defaults to the address text.
    pub(crate) name: Option<Spanned<String>>,
    /// `"ip:port"`.
    pub(crate) address: Spanned<String>,
}

/// Raw `dns = { ... }` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DnsFile {
    /// Name to look up (A/AAAA owner or SRV owner).
    pub(crate) name: Spanned<String>,
    /// `"a"` (A and AAAA, the default) or `"srv"`.
    #[serde(rename = "type")]
    pub(crate) record_type: Option<Spanned<String>>,
    /// Port of every address (`type = "a"` only; SRV records carry their own).
    pub(crate) port: Option<Spanned<u16>>,
    /// `"first_label"` (default) or `"target"` (`type = "srv"` only).
    pub(crate) name_from: Option<Spanned<String>>,
    /// Longest time between refreshes (default 10 s, at least 1 s).
    pub(crate) interval: Option<Spanned<ConfigDuration>>,
    /// Deadline of one query attempt (default 2 s).
    pub(crate) timeout: Option<Spanned<ConfigDuration>>,
    /// `"ip:port"` or `"ip"` (port 53) of the nameserver; default: the system configuration.
    pub(crate) nameserver: Option<Spanned<String>>,
}

/// A validated discovery table; `fleetgate_discovery::from_config` turns it into a running discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// Where the members come from.
    pub source: DiscoverySource,
    /// Longest time between refreshes ([`DEFAULT_INTERVAL`] for a static list or when not set).
    pub interval: Duration,
    /// Deadline of one DNS query attempt ([`DEFAULT_QUERY_TIMEOUT`] when not set).
    pub query_timeout: Duration,
    /// The nameserver to ask; `None`: the system configuration (`/etc/resolv.conf`).
    pub nameserver: Option<SocketAddr>,
}

/// Where the members of a set come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoverySource {
    /// A fixed list, names unique.
    Static(Vec<StaticEndpoint>),
    /// Every A and AAAA address of `name`, each on `port`.
    DnsA {
        /// The name to resolve: absolute, lowercase (`"broker.ns.svc.cluster.local."`).
        name: String,
        /// The port every address listens on (never 0).
        port: u16,
    },
    /// Every target of the SRV records of `name`.
    DnsSrv {
        /// The SRV owner name: absolute, lowercase (`"_mqtt._tcp.broker.ns.svc.cluster.local."`).
        name: String,
        /// How a target becomes the endpoint name.
        name_from: SrvNaming,
    },
}

/// One entry of a validated static list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticEndpoint {
    /// Stable name: the configured one, or the address text.
    pub name: String,
    /// Where to connect.
    pub addr: SocketAddr,
}

/// How an SRV target becomes an endpoint name (`name_from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SrvNaming {
    /// `"first_label"`: `broker-0.broker.ns.svc.cluster.local.` → `broker-0` (a StatefulSet pod name).
    #[default]
    FirstLabel,
    /// `"target"`: the whole target without its trailing dot.
    Target,
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
    pub(crate) fn validate(
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
                source: DiscoverySource::Static(c.static_list(list)),
                interval: DEFAULT_INTERVAL,
                query_timeout: DEFAULT_QUERY_TIMEOUT,
                nameserver: None,
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

/// Checks a configured DNS name and makes it absolute and lowercase: a trailing dot is added when missing, so
/// no search domain applies. Rejects IP addresses, empty labels, labels over 63 octets or starting with `-`,
/// and characters other than ASCII letters, digits, `-` and `_`.
pub(crate) fn absolute_dns_name(name: &str) -> Result<String, String> {
    let invalid = |message: &str| format!("invalid DNS name {name:?}: {message}");
    if name.is_empty() || name == "." {
        return Err(invalid("empty name"));
    }
    if name.parse::<IpAddr>().is_ok() {
        return Err(invalid("an IP address, not a DNS name"));
    }
    let absolute = if name.ends_with('.') {
        name.to_ascii_lowercase()
    } else {
        format!("{}.", name.to_ascii_lowercase())
    };
    if absolute.len() > MAX_NAME_LEN {
        return Err(invalid(&format!("longer than {MAX_NAME_LEN} characters")));
    }
    for label in absolute[..absolute.len() - 1].split('.') {
        if label.is_empty() {
            return Err(invalid("empty label"));
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(invalid(&format!(
                "label {label:?} is longer than {MAX_LABEL_LEN} characters"
            )));
        }
        if label.starts_with('-')
            || !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(&format!(
                "malformed label {label:?} (letters, digits, '-' and '_' only, not starting with '-')"
            )));
        }
    }
    Ok(absolute)
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

    fn static_list(&mut self, list: &Spanned<Vec<StaticEndpointFile>>) -> Vec<StaticEndpoint> {
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
            endpoints.push(StaticEndpoint { name, addr });
        }
        endpoints
    }

    fn dns(&mut self, dns: &DnsFile) -> Option<DiscoveryConfig> {
        let name = match absolute_dns_name(dns.name.get_ref()) {
            Ok(name) => Some(name),
            Err(message) => {
                self.problem(Some(dns.name.span()), message);
                None
            }
        };
        let interval = self.interval(dns);
        let nameserver = self.nameserver(dns);
        let query_timeout = self.query_timeout(dns);
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
                    Some(port) => name.map(|name| DiscoverySource::DnsA {
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
                name.map(|name| DiscoverySource::DnsSrv { name, name_from })
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
        source.map(|source| DiscoveryConfig {
            source,
            interval,
            query_timeout,
            nameserver,
        })
    }

    fn name_from(&mut self, dns: &DnsFile) -> SrvNaming {
        let Some(from) = &dns.name_from else {
            return SrvNaming::default();
        };
        match from.get_ref().as_str() {
            "first_label" => SrvNaming::FirstLabel,
            "target" => SrvNaming::Target,
            other => {
                self.problem(
                    Some(from.span()),
                    format!("unknown name_from {other:?} (use \"first_label\" or \"target\")"),
                );
                SrvNaming::default()
            }
        }
    }

    fn interval(&mut self, dns: &DnsFile) -> Duration {
        let Some(interval) = &dns.interval else {
            return DEFAULT_INTERVAL;
        };
        let value = interval.get_ref().get();
        if value < MIN_INTERVAL || value > MAX_INTERVAL {
            self.problem(
                Some(interval.span()),
                format!("interval must be between {MIN_INTERVAL:?} and {MAX_INTERVAL:?}"),
            );
        }
        value.clamp(MIN_INTERVAL, MAX_INTERVAL)
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

    fn nameserver(&mut self, dns: &DnsFile) -> Option<SocketAddr> {
        let text = dns.nameserver.as_ref()?;
        let text_ref = text.get_ref();
        if let Ok(addr) = text_ref.parse::<SocketAddr>() {
            return Some(addr);
        }
        if let Ok(ip) = text_ref.parse::<IpAddr>() {
            return Some(SocketAddr::new(ip, DNS_PORT));
        }
        self.problem(
            Some(text.span()),
            format!("invalid nameserver {text_ref:?} (expected \"ip\" or \"ip:port\", e.g. \"10.96.0.10:53\")"),
        );
        None
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
        assert_eq!(
            (c.interval, c.query_timeout, c.nameserver),
            (DEFAULT_INTERVAL, DEFAULT_QUERY_TIMEOUT, None)
        );
        let DiscoverySource::Static(list) = c.source else {
            panic!("{c:?}")
        };
        assert_eq!(
            list[0],
            StaticEndpoint {
                name: "broker-0".into(),
                addr: "10.0.1.10:1883".parse().unwrap()
            }
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
            DiscoverySource::DnsA {
                name: "broker.ns.svc.cluster.local.".into(),
                port: 1883
            }
        );
        assert_eq!(c.interval, Duration::from_secs(30));
        assert_eq!(c.nameserver, Some("127.0.0.1:5353".parse().unwrap()));

        let c = parse(concat!(
            r#"dns = { name = "_mqtt._tcp.b.test.", type = "srv", name_from = "target","#,
            r#" nameserver = "10.96.0.10", timeout = "500ms" }"#,
        ))
        .unwrap();
        assert_eq!(
            c.source,
            DiscoverySource::DnsSrv {
                name: "_mqtt._tcp.b.test.".into(),
                name_from: SrvNaming::Target
            }
        );
        assert_eq!(c.nameserver, Some("10.96.0.10:53".parse().unwrap()));
        assert_eq!(c.interval, DEFAULT_INTERVAL);
        assert_eq!(c.query_timeout, Duration::from_millis(500));
    }

    #[test]
    fn names_become_absolute_and_bad_ones_are_rejected() {
        assert_eq!(absolute_dns_name("Broker.Test").unwrap(), "broker.test.");
        assert_eq!(absolute_dns_name("broker.test.").unwrap(), "broker.test.");
        assert_eq!(
            absolute_dns_name("_mqtt._tcp.b-1.test").unwrap(),
            "_mqtt._tcp.b-1.test."
        );
        for bad in [
            "", ".", "10.0.0.1", "fd00::1", "a..b", "-a.test", "a b.test", "é.test",
        ] {
            assert!(absolute_dns_name(bad).is_err(), "{bad:?}");
        }
        let long_label = "a".repeat(MAX_LABEL_LEN + 1);
        assert!(absolute_dns_name(&long_label).is_err());
        let long_name = vec!["a".repeat(MAX_LABEL_LEN); 4].join(".");
        assert!(absolute_dns_name(&long_name).is_err());
        let longest = format!(
            "{}.{}",
            vec!["a".repeat(MAX_LABEL_LEN); 3].join("."),
            "a".repeat(61)
        );
        assert_eq!(absolute_dns_name(&longest).unwrap().len(), MAX_NAME_LEN);
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
            backends: Spanned<DiscoveryFile>,
        }
        let src = "# lb-0\n[backends]\n";
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
            (
                "static = [{ name = \"a b\", address = \"10.0.0.1:1\" }]\n",
                "without spaces",
            ),
            ("dns = { name = \"b.test.\" }\n", "needs a `port`"),
            ("dns = { name = \"b.test.\", port = 0 }\n", "must not be 0"),
            (
                "dns = { name = \"b.test.\", port = 1, type = \"mx\" }\n",
                "unknown DNS record type",
            ),
            (
                "dns = { name = \"b.test.\", port = 1, name_from = \"target\" }\n",
                "only applies",
            ),
            (
                "dns = { name = \"b.test.\", port = 1, timeout = \"0s\" }\n",
                "timeout must be",
            ),
            ("dns = { name = \"10.0.0.1\", port = 1 }\n", "IP address"),
            ("dns = { name = \"a..b\", port = 1 }\n", "invalid DNS name"),
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
