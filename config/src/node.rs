//! The broker node config: `node.toml` → raw [`NodeFile`] (serde, `deny_unknown_fields`) → validated
//! [`NodeConfig`], every problem reported with `file:line:column`.
//!
//! ```toml
//! [node]
//! name = "broker-0"
//! shutdown_grace = "10s"
//!
//! [[listeners]]
//! name = "lb"                          # optional; selects `[auth.listeners.lb]`
//! bind = "0.0.0.0:1883"
//! proxy_protocol = "required"          # "off" | "required"
//! trusted_proxies = ["10.0.0.0/8"]
//!
//! [admin]                              # schema in `crate::admin`
//! bind = "127.0.0.1:9100"
//!
//! [limits]
//! max_packet_size = 1048576
//!
//! [auth]                               # optional (absent: anonymous access); schema in `auth`
//! policies = ["certificate", "client_id_from_cert"]
//! acl_file = "acl.toml"
//!
//! [cluster]                            # optional: join other nodes into one broker (schema in `cluster`)
//! bind = "0.0.0.0:7001"
//! peers = [{ name = "broker-1", addr = "10.0.0.11:7001" }]
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::admin::{AdminConfig, AdminFile, validate_admin};
use crate::duration::ConfigDuration;
use crate::load::{ConfigError, Problem, parse_toml, read_file};

mod auth;
mod cluster;
mod limits;
mod listeners;
mod storage;

pub use auth::{
    AuthConfig, BruteForceConfig, CertField, ClientIdTemplate, ClientIdTemplateError,
    DEFAULT_MAX_CONCURRENT_VERIFICATIONS, DEFAULT_MAX_WAITING_VERIFICATIONS, PolicyConfig, SanKind,
    TemplatePiece,
};
use auth::{AuthSectionFile, validate_auth};
pub use cluster::{ClusterConfig, ClusterTlsConfig, PeerConfig};
use cluster::{ClusterFile, validate_cluster};
pub use limits::LimitsConfig;
use limits::{LimitsFile, validate_limits};
use listeners::{DEFAULT_PROXY_TIMEOUT, ListenerFile, validate_listeners};
pub use listeners::{ListenerConfig, ProxyMode};
pub use storage::StorageMode;
use storage::{StorageFile, validate_storage};

/// Default time to wait for connections to close after shutdown starts.
pub(crate) const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Raw `node.toml` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NodeFile {
    /// `[node]`: identity and process-wide settings.
    pub(crate) node: NodeSectionFile,
    /// `[[listeners]]`: MQTT listeners.
    #[serde(default)]
    pub(crate) listeners: Vec<ListenerFile>,
    /// `[admin]`: the admin HTTP server.
    pub(crate) admin: Option<AdminFile>,
    /// `[limits]`: protocol and resource limits.
    #[serde(default)]
    pub(crate) limits: LimitsFile,
    /// `[cluster]`: node-to-node links.
    pub(crate) cluster: Option<ClusterFile>,
    /// `[auth]`: authentication and ACL; `None` keeps anonymous access.
    pub(crate) auth: Option<AuthSectionFile>,
    /// `[storage]`: memory only, or also on disk.
    pub(crate) storage: Option<StorageFile>,
}

/// Raw `[node]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NodeSectionFile {
    /// Stable node name (used by the cluster ring and in logs).
    pub(crate) name: Spanned<String>,
    /// How long shutdown waits for connections to close.
    pub(crate) shutdown_grace: Option<ConfigDuration>,
}

/// A validated broker node config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Node name.
    pub name: String,
    /// MQTT listeners (at least one).
    pub listeners: Vec<ListenerConfig>,
    /// The admin server (`[admin]`), if any.
    pub admin: Option<AdminConfig>,
    /// Limits.
    pub limits: LimitsConfig,
    /// Shutdown grace period.
    pub shutdown_grace: Duration,
    /// Cluster links, when the node is part of a cluster.
    pub cluster: Option<ClusterConfig>,
    /// Authentication and ACL; `None`: every client admitted anonymously, nothing checked.
    pub auth: Option<AuthConfig>,
    /// Where sessions and retained messages are kept.
    pub storage: StorageMode,
}

impl NodeConfig {
    /// Reads and validates a node config file.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let source = read_file(path)?;
        Self::parse(path, &source)
    }

    /// Validates node config text read from `file`.
    pub fn parse(file: &Path, source: &str) -> Result<NodeConfig, ConfigError> {
        let raw: NodeFile = parse_toml(file, source)?;
        validate(file, source, raw)
    }

    /// A config with one plain listener and defaults everywhere; what in-process tests start from.
    pub fn local(name: &str, bind: SocketAddr) -> NodeConfig {
        NodeConfig {
            name: name.to_string(),
            listeners: vec![ListenerConfig {
                bind,
                proxy_protocol: ProxyMode::Off,
                trusted_proxies: Vec::new(),
                proxy_timeout: DEFAULT_PROXY_TIMEOUT,
                name: None,
            }],
            admin: None,
            limits: LimitsConfig::default(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            cluster: None,
            auth: None,
            storage: StorageMode::Memory,
        }
    }
}

/// Command-line overrides of a node config (`fleetgate node --name NAME --advertise-host IP`): one config file
/// serves every pod of a StatefulSet, each pod's identity coming from the downward API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeOverrides {
    /// Replaces `[node] name`.
    pub name: Option<String>,
    /// Replaces the host of `[cluster] advertise` (the port stays: `advertise`'s, else `bind`'s).
    pub advertise_host: Option<IpAddr>,
}

impl NodeConfig {
    /// Applies `overrides` to a config loaded from `file`; a problem names the option and the file.
    pub fn with_overrides(
        mut self,
        file: &Path,
        overrides: &NodeOverrides,
    ) -> Result<NodeConfig, ConfigError> {
        let mut problems = Vec::new();
        if let Some(name) = &overrides.name {
            if valid_name(name) {
                self.name = name.clone();
                // Peers are listed without our own name; a shared peer list may name us under the new one.
                if let Some(cluster) = self.cluster.as_mut() {
                    cluster.peers.retain(|p| p.name != *name);
                }
            } else {
                problems.push(Problem::whole_file(
                    file,
                    format!("--name {name:?}: a node name must be non-empty without spaces or control characters"),
                ));
            }
        }
        if let Some(host) = overrides.advertise_host {
            match self.cluster.as_mut() {
                None => problems.push(Problem::whole_file(
                    file,
                    "--advertise-host needs a [cluster] section",
                )),
                Some(cluster) => {
                    let port = cluster.advertise.map_or(cluster.bind.port(), |a| a.port());
                    if port == 0 {
                        problems.push(Problem::whole_file(
                            file,
                            "--advertise-host needs a fixed cluster port ([cluster] bind or advertise), not 0",
                        ));
                    } else {
                        cluster.advertise = Some(SocketAddr::new(host, port));
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(self)
        } else {
            Err(ConfigError::from(problems))
        }
    }
}

/// Whether `name` can be a node name (ring key, log field): non-empty, no spaces or control characters.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// Validates a raw node config, collecting every problem before refusing it.
fn validate(file: &Path, source: &str, raw: NodeFile) -> Result<NodeConfig, ConfigError> {
    let mut problems = Vec::new();
    let mut problem = |span: std::ops::Range<usize>, message: String| {
        problems.push(Problem::at(file, source, Some(span), message));
    };

    let name = raw.node.name.get_ref().trim().to_string();
    if !valid_name(&name) {
        problem(
            raw.node.name.span(),
            "node name must be non-empty without spaces or control characters".into(),
        );
    }

    let listeners = validate_listeners(&raw.listeners, &mut problem);

    let base = file.parent().unwrap_or(Path::new(""));
    let admin = raw
        .admin
        .as_ref()
        .and_then(|a| validate_admin(a, base, &mut problem));

    let limits = validate_limits(&raw.limits, &mut problem);

    let storage = raw.storage.as_ref().map_or(StorageMode::Memory, |s| {
        validate_storage(s, file, &mut problem)
    });

    let cluster = match raw.cluster.as_ref() {
        Some(c) => match validate_cluster(c, &name, file, source) {
            Ok(c) => Some(c),
            Err(p) => {
                problems.extend(p);
                None
            }
        },
        None => None,
    };

    let auth = match raw.auth.as_ref() {
        Some(a) => {
            let names: Vec<&str> = raw
                .listeners
                .iter()
                .filter_map(|l| l.name.as_ref().map(|n| n.get_ref().as_str()))
                .collect();
            match validate_auth(file, source, a, &names) {
                Ok(a) => Some(a),
                Err(p) => {
                    problems.extend(p);
                    None
                }
            }
        }
        None => None,
    };

    if raw.listeners.is_empty() {
        problems.push(Problem::whole_file(
            file,
            "at least one [[listeners]] entry is required",
        ));
    }
    if !problems.is_empty() {
        return Err(ConfigError::from(problems));
    }
    Ok(NodeConfig {
        name,
        listeners,
        admin,
        limits,
        shutdown_grace: raw
            .node
            .shutdown_grace
            .map_or(DEFAULT_SHUTDOWN_GRACE, ConfigDuration::get),
        cluster,
        auth,
        storage,
    })
}

/// Parses a socket address, reporting an invalid one (located at `value`) through `problem`.
pub(crate) fn parse_addr(
    value: &Spanned<String>,
    problem: &mut impl FnMut(std::ops::Range<usize>, String),
) -> Option<SocketAddr> {
    match value.get_ref().parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            problem(
                value.span(),
                format!(
                    "invalid socket address {:?} (expected e.g. \"0.0.0.0:1883\")",
                    value.get_ref()
                ),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::limits::DEFAULT_MAX_QUEUED_MESSAGES;
    use super::*;

    const VALID: &str = r#"
[node]
name = "broker-0"
shutdown_grace = "5s"

[[listeners]]
bind = "127.0.0.1:0"

[[listeners]]
bind = "0.0.0.0:1884"
proxy_protocol = "required"
trusted_proxies = ["127.0.0.1/32", "10.0.0.0/8"]

[admin]
bind = "127.0.0.1:0"

[limits]
max_packet_size = 65536
receive_maximum = 10
connect_timeout = "3s"
server_keep_alive = "30s"
"#;

    #[test]
    fn valid_example() {
        let cfg = NodeConfig::parse(Path::new("n.toml"), VALID).unwrap();
        assert_eq!(cfg.name, "broker-0");
        assert_eq!(cfg.listeners.len(), 2);
        assert_eq!(cfg.listeners[1].proxy_protocol, ProxyMode::Required);
        assert_eq!(cfg.listeners[1].trusted_proxies.len(), 2);
        assert_eq!(cfg.limits.max_packet_size, 65536);
        assert_eq!(cfg.limits.receive_maximum, 10);
        assert_eq!(cfg.limits.max_queued_messages, DEFAULT_MAX_QUEUED_MESSAGES);
        assert_eq!(cfg.limits.connect_timeout, Duration::from_secs(3));
        assert_eq!(cfg.limits.server_keep_alive, Some(30));
        assert_eq!(cfg.shutdown_grace, Duration::from_secs(5));
        assert!(cfg.admin.is_some());
    }

    #[test]
    fn unknown_field_is_located() {
        let src = "[node]\nname = \"a\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\nport = 3\n";
        let err = NodeConfig::parse(Path::new("n.toml"), src).unwrap_err();
        assert_eq!(err.problems[0].line, 5, "{err}");
        assert!(err.to_string().contains("port"), "{err}");
    }

    #[test]
    fn bad_cidr_is_located() {
        let src = "[node]\nname = \"a\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\nproxy_protocol = \"required\"\ntrusted_proxies = [\"10.0.0.0/99\"]\n";
        let err = NodeConfig::parse(Path::new("n.toml"), src).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert_eq!(
            (err.problems[0].line, err.problems[0].column),
            (6, 20),
            "{err}"
        );
        assert!(
            err.to_string().starts_with("n.toml:6:20: invalid CIDR"),
            "{err}"
        );
    }

    #[test]
    fn bad_duration_is_located() {
        let src = "[node]\nname = \"a\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\n[limits]\nconnect_timeout = \"10 parsecs\"\n";
        let err = NodeConfig::parse(Path::new("n.toml"), src).unwrap_err();
        assert_eq!(err.problems[0].line, 6, "{err}");
    }

    #[test]
    fn every_problem_is_reported() {
        let src = "[node]\nname = \"a\"\n[[listeners]]\nbind = \"nowhere\"\nproxy_protocol = \"maybe\"\n[limits]\nreceive_maximum = 0\n";
        let err = NodeConfig::parse(Path::new("n.toml"), src).unwrap_err();
        let lines: Vec<usize> = err.problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, vec![4, 5, 7], "{err}");
    }

    #[test]
    fn memory_limits() {
        let base = "[node]\nname = \"a\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\n[limits]\n";
        let cfg = NodeConfig::parse(Path::new("n.toml"), base).unwrap();
        assert_eq!(cfg.limits.memory_budget, 1 << 30);
        assert_eq!(cfg.limits.max_queued_bytes, 16 << 20);
        let src = format!(
            "{base}max_packet_size = 33554432\nmemory_budget = \"64MiB\"\nmax_subscriptions = 5\nmax_topic_length = 100\n"
        );
        let cfg = NodeConfig::parse(Path::new("n.toml"), &src).unwrap();
        assert_eq!(cfg.limits.memory_budget, 64 << 20);
        assert_eq!(
            cfg.limits.max_queued_bytes,
            32 << 20,
            "unset, it grows to the largest packet"
        );
        assert_eq!(cfg.limits.max_subscriptions, 5);
        assert_eq!(cfg.limits.max_topic_length, 100);
        let src = format!(
            "{base}max_queued_bytes = \"64KiB\"\nmemory_budget = \"1MiB\"\nmax_filters_per_subscribe = 0\nmax_topic_length = 70000\n"
        );
        let err = NodeConfig::parse(Path::new("n.toml"), &src).unwrap_err();
        let lines: Vec<usize> = err.problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, vec![6, 7, 8, 9], "{err}");
    }

    #[test]
    fn cluster_section() {
        let src = "[node]\nname = \"broker-0\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\n[cluster]\nbind = \"127.0.0.1:0\"\npeers = [{ name = \"broker-0\", addr = \"127.0.0.1:7000\" }, { name = \"broker-1\", addr = \"127.0.0.1:7001\" }]\ndead_after = \"2s\"\n";
        let cfg = NodeConfig::parse(Path::new("n.toml"), src).unwrap();
        let cluster = cfg.cluster.unwrap();
        assert_eq!(cluster.peers.len(), 1, "own name is skipped");
        assert_eq!(cluster.peers[0].name, "broker-1");
        assert_eq!(cluster.dead_after, Duration::from_secs(2));
        let bad = "[node]\nname = \"a\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\n[cluster]\nbind = \"x\"\npeers = [{ name = \"b\", addr = \"nowhere\" }]\n";
        let err = NodeConfig::parse(Path::new("n.toml"), bad).unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
    }

    #[test]
    fn overrides_replace_name_and_advertise_host() {
        let src = "[node]\nname = \"template\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\n[cluster]\nbind = \"0.0.0.0:7000\"\npeers = [{ name = \"broker-1\", addr = \"127.0.0.1:7001\" }]\n[cluster.tls]\ncert = \"c\"\nkey = \"k\"\nca = \"a\"\n";
        let file = Path::new("n.toml");
        let cfg = NodeConfig::parse(file, src).unwrap();
        let o = NodeOverrides {
            name: Some("broker-1".into()),
            advertise_host: Some("fd00::7".parse().unwrap()),
        };
        let cfg = cfg.clone().with_overrides(file, &o).unwrap();
        assert_eq!(cfg.name, "broker-1");
        let cluster = cfg.cluster.as_ref().unwrap();
        assert!(cluster.peers.is_empty(), "own name dropped from the peers");
        assert_eq!(cluster.advertise, Some("[fd00::7]:7000".parse().unwrap()));
        let bad = NodeOverrides {
            name: Some("a b".into()),
            advertise_host: None,
        };
        let err = cfg.clone().with_overrides(file, &bad).unwrap_err();
        assert!(err.to_string().contains("--name"), "{err}");
        let plain = NodeConfig::local("n", "127.0.0.1:0".parse().unwrap());
        let host = NodeOverrides {
            name: None,
            advertise_host: Some("10.0.0.1".parse().unwrap()),
        };
        let err = plain.with_overrides(file, &host).unwrap_err();
        assert!(err.to_string().contains("[cluster]"), "{err}");
    }

    #[test]
    fn example_file_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/node.toml");
        let cfg = NodeConfig::load(&path).unwrap();
        assert!(!cfg.listeners.is_empty());
    }

    #[test]
    fn auth_overrides_name_listeners_and_listener_names_are_unique() {
        let ok = "[node]\nname = \"n\"\n[[listeners]]\nname = \"lb\"\nbind = \"127.0.0.1:0\"\n\
                  [auth]\npolicies = [\"certificate\"]\n[auth.listeners.lb]\nanonymous = true\npolicies = []\n";
        let cfg = NodeConfig::parse(Path::new("n.toml"), ok).unwrap();
        assert_eq!(cfg.listeners[0].name.as_deref(), Some("lb"));
        let auth = cfg.auth.as_ref().expect("the [auth] section");
        assert!(auth.listeners["lb"].anonymous);
        let dup = "[node]\nname = \"n\"\n[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:0\"\n\
                   [[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:0\"\n";
        let err = NodeConfig::parse(Path::new("n.toml"), dup).unwrap_err();
        assert!(err.to_string().contains("used twice"), "{err}");
    }
}
