//! From a validated config table to a running discovery: [`from_config`] turns a
//! [`fleetgate_config::discovery::DiscoveryConfig`] (embedded in the LB's `[backends]` and the node's
//! `[cluster] peers`) into the [`Source`] and [`DiscoveryOptions`] that [`Discovery::spawn`] takes.

use fleetgate_config::discovery::{DiscoveryConfig, DiscoverySource, SrvNaming, StaticEndpoint};
use tokio_util::sync::CancellationToken;

use crate::discovery::{Discovery, DiscoveryOptions};
use crate::endpoint::{Endpoint, NameFrom, Source};
use crate::resolve::{Nameserver, ResolveError};

/// The source and options a validated discovery table describes; the min-refresh floor and the round deadline
/// keep their defaults (they are not configurable).
pub fn from_config(cfg: &DiscoveryConfig) -> (Source, DiscoveryOptions) {
    (Source::from(&cfg.source), DiscoveryOptions::from(cfg))
}

impl Discovery {
    /// [`Discovery::spawn`] of what a validated discovery table describes.
    pub fn spawn_from_config(
        cfg: &DiscoveryConfig,
        shutdown: CancellationToken,
    ) -> Result<Self, ResolveError> {
        let (source, options) = from_config(cfg);
        Self::spawn(source, options, shutdown)
    }
}

impl From<&DiscoverySource> for Source {
    fn from(source: &DiscoverySource) -> Self {
        match source {
            DiscoverySource::Static(list) => {
                Self::Static(list.iter().map(Endpoint::from).collect())
            }
            DiscoverySource::DnsA { name, port } => Self::DnsA {
                name: name.clone(),
                port: *port,
            },
            DiscoverySource::DnsSrv { name, name_from } => Self::DnsSrv {
                name: name.clone(),
                name_from: NameFrom::from(*name_from),
            },
        }
    }
}

impl From<&DiscoveryConfig> for DiscoveryOptions {
    fn from(cfg: &DiscoveryConfig) -> Self {
        Self {
            interval: cfg.interval,
            nameserver: cfg.nameserver.map_or(Nameserver::System, Nameserver::At),
            query_timeout: cfg.query_timeout,
            ..Self::default()
        }
    }
}

impl From<&StaticEndpoint> for Endpoint {
    fn from(endpoint: &StaticEndpoint) -> Self {
        Self::new(endpoint.name.clone(), endpoint.addr)
    }
}

impl From<SrvNaming> for NameFrom {
    fn from(naming: SrvNaming) -> Self {
        match naming {
            SrvNaming::FirstLabel => Self::FirstLabel,
            SrvNaming::Target => Self::Target,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::discovery::{DEFAULT_ROUND_TIMEOUT, MIN_REFRESH};

    fn parse(src: &str) -> DiscoveryConfig {
        DiscoveryConfig::parse(Path::new("d.toml"), src).unwrap()
    }

    #[test]
    fn dns_tables_become_sources_and_options() {
        let (source, options) = from_config(&parse(concat!(
            r#"dns = { name = "_mqtt._tcp.b.test", type = "srv", name_from = "target","#,
            r#" nameserver = "10.96.0.10", interval = "30s", timeout = "500ms" }"#,
        )));
        assert_eq!(
            source,
            Source::DnsSrv {
                name: "_mqtt._tcp.b.test.".into(),
                name_from: NameFrom::Target
            }
        );
        assert_eq!(
            options,
            DiscoveryOptions {
                interval: Duration::from_secs(30),
                min_refresh: MIN_REFRESH,
                nameserver: Nameserver::At("10.96.0.10:53".parse().unwrap()),
                query_timeout: Duration::from_millis(500),
                round_timeout: DEFAULT_ROUND_TIMEOUT,
            }
        );

        let (source, options) = from_config(&parse("dns = { name = \"b.test\", port = 1883 }\n"));
        assert_eq!(
            source,
            Source::DnsA {
                name: "b.test.".into(),
                port: 1883
            }
        );
        assert_eq!(options, DiscoveryOptions::default());
    }

    #[tokio::test]
    async fn a_static_table_is_published_at_once() {
        let cfg = parse(
            "static = [{ name = \"broker-0\", address = \"10.0.1.10:1883\" }, { address = \"10.0.1.11:1883\" }]\n",
        );
        let discovery = Discovery::spawn_from_config(&cfg, CancellationToken::new()).unwrap();
        let set = discovery.subscribe().borrow().clone();
        assert_eq!(
            *set,
            vec![
                Endpoint::new("10.0.1.11:1883", "10.0.1.11:1883".parse().unwrap()),
                Endpoint::new("broker-0", "10.0.1.10:1883".parse().unwrap()),
            ]
        );
    }
}
