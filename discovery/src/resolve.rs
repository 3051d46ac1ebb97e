//! One DNS round for the refresh loop in [`crate::discovery`]: A/AAAA or SRV lookups through hickory-resolver,
//! turned into endpoints plus the smallest TTL seen, or a classified [`ResolveError`].
//!
//! The resolver is built with `cache_size = 0`: we refresh on our own schedule and want every round to see what
//! DNS says now, not what hickory cached. Names are always absolute (trailing dot), so no search list applies.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use tokio::task::JoinSet;

use crate::endpoint::{Endpoint, NameFrom};

/// Tries per query before a lookup fails: one retry absorbs a lost UDP datagram without doubling a round's
/// worst case more than once.
pub const QUERY_ATTEMPTS: usize = 2;
/// Most SRV targets resolved per round: a headless Service of a few hundred pods fits; a runaway record set
/// must not fan out into thousands of follow-up queries.
pub const MAX_SRV_TARGETS: usize = 512;

/// Which nameserver the resolver asks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Nameserver {
    /// The system configuration (`/etc/resolv.conf`): cluster DNS in Kubernetes.
    #[default]
    System,
    /// One nameserver at this address, over UDP with TCP for truncated answers.
    At(SocketAddr),
}

/// Why a round failed; the `reason` label of `fleetgate_discovery_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum FailureReason {
    /// No answer within the query or round deadline.
    Timeout,
    /// SERVFAIL (or another server-side error code).
    ServFail,
    /// REFUSED: the nameserver will not answer us.
    Refused,
    /// NXDOMAIN: the name does not exist.
    NxDomain,
    /// The name exists but has no records of the asked type, or no usable endpoint came out of them.
    #[default]
    Empty,
    /// The nameserver could not be reached (socket errors).
    Network,
    /// Anything else the resolver reported.
    Other,
}

impl FailureReason {
    /// Every reason, in label order.
    pub const ALL: [FailureReason; 7] = [
        Self::Timeout,
        Self::ServFail,
        Self::Refused,
        Self::NxDomain,
        Self::Empty,
        Self::Network,
        Self::Other,
    ];

    /// The metric label and log value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::ServFail => "servfail",
            Self::Refused => "refused",
            Self::NxDomain => "nxdomain",
            Self::Empty => "empty",
            Self::Network => "network",
            Self::Other => "other",
        }
    }

    /// Classifies a resolver error.
    pub fn of(err: &NetError) -> Self {
        match err {
            NetError::Timeout => Self::Timeout,
            NetError::Io(_) | NetError::NoConnections | NetError::Busy => Self::Network,
            NetError::Dns(DnsError::NoRecordsFound(nr)) => match nr.response_code {
                ResponseCode::NXDomain => Self::NxDomain,
                ResponseCode::ServFail => Self::ServFail,
                ResponseCode::Refused => Self::Refused,
                _ => Self::Empty,
            },
            NetError::Dns(DnsError::ResponseCode(ResponseCode::Refused)) => Self::Refused,
            NetError::Dns(DnsError::ResponseCode(_)) => Self::ServFail,
            _ => Self::Other,
        }
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed discovery round or resolver set-up.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ResolveError {
    /// The system resolver configuration could not be read.
    #[error("cannot read the system DNS configuration: {0}")]
    SystemConfig(String),
    /// The configured name is not a valid DNS name.
    #[error("invalid DNS name {name:?}: {message}")]
    InvalidName {
        /// The name as configured.
        name: String,
        /// What the parser said.
        message: String,
    },
    /// A lookup failed.
    #[error("{record_type} lookup of {name} failed ({reason}): {message}")]
    Lookup {
        /// The name looked up.
        name: String,
        /// The record type asked for.
        record_type: RecordType,
        /// The classified cause.
        reason: FailureReason,
        /// The resolver's error text.
        message: String,
    },
    /// Lookups succeeded but gave no endpoint.
    #[error("no endpoints found for {name} ({reason})")]
    NoEndpoints {
        /// The name looked up.
        name: String,
        /// `Empty` or `NxDomain`.
        reason: FailureReason,
    },
    /// A follow-up lookup task failed (panicked or was cancelled).
    #[error("internal error in a discovery lookup: {0}")]
    Internal(String),
    /// The whole round ran past its deadline.
    #[error("discovery round timed out after {0:?}")]
    RoundTimeout(Duration),
}

impl ResolveError {
    /// The failure reason for metrics and logs.
    pub fn reason(&self) -> FailureReason {
        match self {
            Self::SystemConfig(_) | Self::InvalidName { .. } | Self::Internal(_) => {
                FailureReason::Other
            }
            Self::Lookup { reason, .. } | Self::NoEndpoints { reason, .. } => *reason,
            Self::RoundTimeout(_) => FailureReason::Timeout,
        }
    }
}

/// What one successful round found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Endpoints, not yet sorted or deduplicated.
    pub endpoints: Vec<Endpoint>,
    /// Smallest TTL among the records used; `None` when no record carried one.
    pub min_ttl: Option<Duration>,
}

/// A hickory resolver set up for discovery (no cache, bounded timeouts, no hosts file).
#[derive(Clone)]
pub struct DnsResolver {
    inner: TokioResolver,
}

impl fmt::Debug for DnsResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsResolver").finish_non_exhaustive()
    }
}

impl DnsResolver {
    /// Builds a resolver asking `nameserver`, each query bounded by `query_timeout`.
    pub fn new(nameserver: &Nameserver, query_timeout: Duration) -> Result<Self, ResolveError> {
        let mut builder = match nameserver {
            Nameserver::System => TokioResolver::builder_tokio()
                .map_err(|e| ResolveError::SystemConfig(e.to_string()))?,
            Nameserver::At(addr) => {
                let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                for connection in &mut server.connections {
                    connection.port = addr.port();
                }
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![server]),
                    TokioRuntimeProvider::default(),
                )
            }
        };
        let options = builder.options_mut();
        options.cache_size = 0;
        options.timeout = query_timeout;
        options.attempts = QUERY_ATTEMPTS;
        // Discovery asks DNS; a stale /etc/hosts line (answered with a huge TTL) must not shadow it.
        options.use_hosts_file = ResolveHosts::Never;
        let inner = builder
            .build()
            .map_err(|e| ResolveError::SystemConfig(e.to_string()))?;
        Ok(Self { inner })
    }

    /// Every A and AAAA address of `name`, each as an endpoint on `port` named `"<ip>:<port>"`.
    pub async fn resolve_a(&self, name: &str, port: u16) -> Result<Resolved, ResolveError> {
        let fqdn = parse_name(name)?;
        let addresses = self.addresses(&fqdn).await?;
        if addresses.ips.is_empty() {
            return Err(ResolveError::NoEndpoints {
                name: fqdn.to_ascii(),
                reason: addresses.negative,
            });
        }
        let endpoints = addresses
            .ips
            .iter()
            .map(|ip| Endpoint::from_addr(SocketAddr::new(*ip, port)))
            .collect();
        Ok(Resolved {
            endpoints,
            min_ttl: addresses.ttl.get(),
        })
    }

    /// Every target of `name`'s SRV records at its A/AAAA addresses, named per `name_from`. Addresses come from
    /// the answer's additional section when present, else from follow-up lookups. A target whose name no longer
    /// exists is skipped (a stale SRV record for a deleted pod); any other follow-up failure fails the round, so
    /// that a DNS hiccup never shrinks the set.
    pub async fn resolve_srv(
        &self,
        name: &str,
        name_from: NameFrom,
    ) -> Result<Resolved, ResolveError> {
        let fqdn = parse_name(name)?;
        let lookup = self
            .inner
            .lookup(fqdn.clone(), RecordType::SRV)
            .await
            .map_err(|e| lookup_error(&fqdn, RecordType::SRV, &e))?;
        let mut min_ttl = MinTtl::default();
        let mut targets: Vec<(Name, u16)> = Vec::new();
        for record in lookup.answers() {
            let RData::SRV(srv) = &record.data else {
                continue;
            };
            // RFC 2782: a target of "." means "the service is decidedly not available at this domain"; port 0
            // cannot be connected to.
            if srv.target.is_root() || srv.port == 0 {
                continue;
            }
            min_ttl.add(record.ttl);
            targets.push((srv.target.to_lowercase(), srv.port));
        }
        targets.truncate(MAX_SRV_TARGETS);
        if targets.is_empty() {
            return Err(ResolveError::NoEndpoints {
                name: fqdn.to_ascii(),
                reason: FailureReason::Empty,
            });
        }

        let mut glue = glue_addresses(&lookup);
        let mut follow_ups = JoinSet::new();
        for (target, _) in &targets {
            if glue.contains_key(target) {
                continue;
            }
            glue.insert(target.clone(), Addresses::default());
            let resolver = self.clone();
            let target = target.clone();
            follow_ups.spawn(async move {
                let found = resolver.addresses(&target).await;
                (target, found)
            });
        }
        while let Some(joined) = follow_ups.join_next().await {
            // A follow-up that panicked must fail the round, not silently drop its target from the set.
            let (target, found) = joined.map_err(|e| ResolveError::Internal(e.to_string()))?;
            match found {
                Ok(addresses) => {
                    glue.insert(target, addresses);
                }
                Err(ResolveError::NoEndpoints { .. }) => {}
                Err(other) => return Err(other),
            }
        }

        let mut endpoints = Vec::new();
        for (target, port) in &targets {
            let Some(addresses) = glue.get(target) else {
                continue;
            };
            let Some(endpoint_name) = endpoint_name(target, name_from) else {
                continue;
            };
            if let Some(ttl) = addresses.ttl.0 {
                min_ttl.add(ttl);
            }
            for ip in &addresses.ips {
                endpoints.push(Endpoint::new(
                    endpoint_name.clone(),
                    SocketAddr::new(*ip, *port),
                ));
            }
        }
        if endpoints.is_empty() {
            return Err(ResolveError::NoEndpoints {
                name: fqdn.to_ascii(),
                reason: FailureReason::Empty,
            });
        }
        Ok(Resolved {
            endpoints,
            min_ttl: min_ttl.get(),
        })
    }

    /// A and AAAA of `name`, asked at once. "No records" for one family is normal (IPv4-only clusters); any
    /// other failure of either fails the whole lookup.
    async fn addresses(&self, name: &Name) -> Result<Addresses, ResolveError> {
        let (v4, v6) = tokio::join!(
            self.inner.lookup(name.clone(), RecordType::A),
            self.inner.lookup(name.clone(), RecordType::AAAA),
        );
        let mut found = Addresses::default();
        for (result, record_type) in [(v4, RecordType::A), (v6, RecordType::AAAA)] {
            match result {
                Ok(lookup) => found.extend(lookup.answers()),
                Err(e) => match FailureReason::of(&e) {
                    FailureReason::Empty => {}
                    FailureReason::NxDomain => found.negative = FailureReason::NxDomain,
                    _ => return Err(lookup_error(name, record_type, &e)),
                },
            }
        }
        if found.ips.is_empty() {
            return Err(ResolveError::NoEndpoints {
                name: name.to_ascii(),
                reason: found.negative,
            });
        }
        Ok(found)
    }
}

/// Addresses of one name and the smallest TTL among them.
#[derive(Debug, Clone, Default)]
struct Addresses {
    ips: Vec<IpAddr>,
    ttl: MinTtl,
    /// What to report if no address was found.
    negative: FailureReason,
}

impl Addresses {
    fn extend<'a>(&mut self, records: impl IntoIterator<Item = &'a Record>) {
        for record in records {
            let ip = match &record.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
                _ => continue,
            };
            self.ttl.add(record.ttl);
            self.ips.push(ip);
        }
    }
}

/// Running minimum of record TTLs (seconds).
#[derive(Debug, Clone, Copy, Default)]
struct MinTtl(Option<u32>);

impl MinTtl {
    fn add(&mut self, ttl: u32) {
        self.0 = Some(self.0.map_or(ttl, |m| m.min(ttl)));
    }

    fn get(&self) -> Option<Duration> {
        self.0.map(|s| Duration::from_secs(u64::from(s)))
    }
}

/// A/AAAA records of the additional section, by owner name (lowercased).
fn glue_addresses(lookup: &Lookup) -> HashMap<Name, Addresses> {
    let mut glue: HashMap<Name, Addresses> = HashMap::new();
    for record in lookup.additionals() {
        if matches!(record.record_type(), RecordType::A | RecordType::AAAA) {
            glue.entry(record.name.to_lowercase())
                .or_default()
                .extend(std::iter::once(record));
        }
    }
    glue
}

/// The endpoint name for an SRV target; `None` for a target with no labels.
fn endpoint_name(target: &Name, name_from: NameFrom) -> Option<String> {
    let name = match name_from {
        NameFrom::FirstLabel => String::from_utf8_lossy(target.iter().next()?).into_owned(),
        NameFrom::Target => target.to_ascii().trim_end_matches('.').to_string(),
    };
    (!name.is_empty()).then_some(name)
}

/// Parses a configured name as absolute: a trailing dot is added when missing, so no search domain applies.
pub fn parse_name(name: &str) -> Result<Name, ResolveError> {
    let invalid = |message: String| ResolveError::InvalidName {
        name: name.to_string(),
        message,
    };
    if name.is_empty() || name == "." {
        return Err(invalid("empty name".to_string()));
    }
    if name.parse::<IpAddr>().is_ok() {
        return Err(invalid("an IP address, not a DNS name".to_string()));
    }
    let absolute = if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    };
    let parsed = Name::from_ascii(&absolute).map_err(|e| invalid(e.to_string()))?;
    Ok(parsed.to_lowercase())
}

fn lookup_error(name: &Name, record_type: RecordType, err: &NetError) -> ResolveError {
    ResolveError::Lookup {
        name: name.to_ascii(),
        record_type,
        reason: FailureReason::of(err),
        message: err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::net::NoRecords;
    use hickory_resolver::proto::op::Query;

    #[test]
    fn names_become_absolute_and_bad_ones_are_rejected() {
        assert_eq!(
            parse_name("Broker.Test").unwrap().to_ascii(),
            "broker.test."
        );
        assert_eq!(
            parse_name("broker.test.").unwrap().to_ascii(),
            "broker.test."
        );
        assert!(parse_name("").is_err());
        assert!(parse_name("10.0.0.1").is_err());
        assert!(parse_name("a..b").is_err());
    }

    #[test]
    fn srv_targets_name_endpoints() {
        let target = Name::from_ascii("broker-0.broker.ns.svc.cluster.local.").unwrap();
        assert_eq!(
            endpoint_name(&target, NameFrom::FirstLabel).as_deref(),
            Some("broker-0")
        );
        assert_eq!(
            endpoint_name(&target, NameFrom::Target).as_deref(),
            Some("broker-0.broker.ns.svc.cluster.local")
        );
        assert_eq!(endpoint_name(&Name::root(), NameFrom::FirstLabel), None);
    }

    #[test]
    fn errors_are_classified() {
        let query = Query::query(Name::root(), RecordType::A);
        let no_records = |code| {
            NetError::from(DnsError::NoRecordsFound(NoRecords::new(
                query.clone(),
                code,
            )))
        };
        assert_eq!(
            FailureReason::of(&no_records(ResponseCode::NXDomain)),
            FailureReason::NxDomain
        );
        assert_eq!(
            FailureReason::of(&no_records(ResponseCode::NoError)),
            FailureReason::Empty
        );
        let servfail = NetError::from(DnsError::ResponseCode(ResponseCode::ServFail));
        assert_eq!(FailureReason::of(&servfail), FailureReason::ServFail);
        assert_eq!(
            FailureReason::of(&NetError::Timeout),
            FailureReason::Timeout
        );
    }
}
