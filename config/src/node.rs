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
//! [admin]
//! bind = "127.0.0.1:9100"
//!
//! [limits]
//! max_packet_size = 1048576
//!
//! [auth]                               # optional (absent: anonymous access); schema in `fleetgate_auth::config`
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

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::duration::ConfigDuration;
use crate::load::{ConfigError, Problem, parse_toml, read_file};

mod cluster;

pub use cluster::*;

/// Default largest MQTT packet either side may send: 1 MiB is far above telemetry payloads and small enough
/// that one connection cannot make the node buffer much.
pub const DEFAULT_MAX_PACKET_SIZE: u32 = 1024 * 1024;
/// Smallest accepted `max_packet_size`: below this a CONNECT with a modest client ID and will does not fit.
pub const MIN_MAX_PACKET_SIZE: u32 = 128;
/// Default receive maximum (our inbound window and the cap on unacknowledged QoS 1/2 messages per client).
pub const DEFAULT_RECEIVE_MAXIMUM: u16 = 32;
/// Default bound on messages queued per session (online backlog or offline persistent session).
pub const DEFAULT_MAX_QUEUED_MESSAGES: usize = 1000;
/// Default time a client gets from TCP accept to a complete CONNECT; a slow-loris guard.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default topic alias maximum we announce to v5 clients (inbound aliases).
pub const DEFAULT_TOPIC_ALIAS_MAXIMUM: u16 = 16;
/// Default cap on the session expiry interval a client may ask for: one day of offline queueing.
pub const DEFAULT_SESSION_EXPIRY_MAXIMUM: Duration = Duration::from_secs(24 * 3600);
/// Default time to wait for connections to close after shutdown starts.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Default time a trusted proxy gets to deliver its PROXY header.
pub const DEFAULT_PROXY_TIMEOUT: Duration = Duration::from_secs(5);
/// Raw `node.toml` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    /// `[node]`: identity and process-wide settings.
    pub node: NodeSectionFile,
    /// `[[listeners]]`: MQTT listeners.
    #[serde(default)]
    pub listeners: Vec<ListenerFile>,
    /// `[admin]`: the admin HTTP server.
    pub admin: Option<AdminFile>,
    /// `[limits]`: protocol and resource limits.
    #[serde(default)]
    pub limits: LimitsFile,
    /// `[cluster]`: node-to-node links.
    pub cluster: Option<ClusterFile>,
    /// `[auth]`: authentication and ACL. Passed through here and validated by `fleetgate_auth::AuthConfig`, which
    /// depends on this crate (so this crate cannot name its types); `None` keeps anonymous access.
    pub auth: Option<toml::Table>,
}

/// Raw `[node]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSectionFile {
    /// Stable node name (used by the cluster ring and in logs).
    pub name: Spanned<String>,
    /// How long shutdown waits for connections to close.
    pub shutdown_grace: Option<ConfigDuration>,
}

/// Raw `[[listeners]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerFile {
    /// Name for per-listener settings (`[auth.listeners.<name>]`); unique within the file.
    pub name: Option<Spanned<String>>,
    /// Socket address to bind (`"0.0.0.0:1883"`; port 0 picks a free port).
    pub bind: Spanned<String>,
    /// `"off"` (default) or `"required"`.
    #[serde(default)]
    pub proxy_protocol: Option<Spanned<String>>,
    /// CIDRs allowed to send a PROXY header.
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    /// Deadline for the PROXY header.
    pub proxy_timeout: Option<ConfigDuration>,
}

/// Raw `[admin]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// Socket address of the admin HTTP server.
    pub bind: Spanned<String>,
}

/// Raw `[limits]` table; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Largest MQTT packet in bytes, both directions.
    pub max_packet_size: Option<Spanned<u32>>,
    /// Receive maximum / inflight window.
    pub receive_maximum: Option<Spanned<u16>>,
    /// Messages queued per session.
    pub max_queued_messages: Option<Spanned<usize>>,
    /// Deadline for the CONNECT packet.
    pub connect_timeout: Option<ConfigDuration>,
    /// Topic alias maximum announced to v5 clients (0 disables inbound aliases).
    pub topic_alias_maximum: Option<u16>,
    /// Cap on the session expiry interval clients ask for.
    pub session_expiry_maximum: Option<ConfigDuration>,
    /// When set, overrides the client's keep alive and is announced in CONNACK.
    pub server_keep_alive: Option<Spanned<ConfigDuration>>,
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

/// Validated limits, defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Largest MQTT packet in bytes, both directions.
    pub max_packet_size: u32,
    /// Receive maximum / inflight window (≥ 1).
    pub receive_maximum: u16,
    /// Messages queued per session (≥ 1).
    pub max_queued_messages: usize,
    /// Deadline for the CONNECT packet.
    pub connect_timeout: Duration,
    /// Topic alias maximum announced to v5 clients.
    pub topic_alias_maximum: u16,
    /// Cap on the session expiry interval.
    pub session_expiry_maximum: Duration,
    /// Keep alive imposed on clients, when set (whole seconds, 1..=65535).
    pub server_keep_alive: Option<u16>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            receive_maximum: DEFAULT_RECEIVE_MAXIMUM,
            max_queued_messages: DEFAULT_MAX_QUEUED_MESSAGES,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            topic_alias_maximum: DEFAULT_TOPIC_ALIAS_MAXIMUM,
            session_expiry_maximum: DEFAULT_SESSION_EXPIRY_MAXIMUM,
            server_keep_alive: None,
        }
    }
}

/// A validated broker node config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Node name.
    pub name: String,
    /// MQTT listeners (at least one).
    pub listeners: Vec<ListenerConfig>,
    /// Admin HTTP bind address, if any.
    pub admin_bind: Option<SocketAddr>,
    /// Limits.
    pub limits: LimitsConfig,
    /// Shutdown grace period.
    pub shutdown_grace: Duration,
    /// Cluster links, when the node is part of a cluster.
    pub cluster: Option<ClusterConfig>,
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
            admin_bind: None,
            limits: LimitsConfig::default(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            cluster: None,
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

    let mut listeners = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for l in &raw.listeners {
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
        let bind = parse_addr(&l.bind, &mut problem);
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

    let admin_bind = raw
        .admin
        .as_ref()
        .and_then(|a| parse_addr(&a.bind, &mut problem));

    let mut limits = LimitsConfig::default();
    let l = &raw.limits;
    if let Some(v) = &l.max_packet_size {
        if *v.get_ref() < MIN_MAX_PACKET_SIZE || *v.get_ref() > 268_435_455 {
            problem(
                v.span(),
                format!("max_packet_size must be between {MIN_MAX_PACKET_SIZE} and 268435455"),
            );
        }
        limits.max_packet_size = *v.get_ref();
    }
    if let Some(v) = &l.receive_maximum {
        if *v.get_ref() == 0 {
            problem(v.span(), "receive_maximum must be at least 1".into());
        }
        limits.receive_maximum = *v.get_ref();
    }
    if let Some(v) = &l.max_queued_messages {
        if *v.get_ref() == 0 {
            problem(v.span(), "max_queued_messages must be at least 1".into());
        }
        limits.max_queued_messages = *v.get_ref();
    }
    if let Some(v) = l.connect_timeout {
        limits.connect_timeout = v.get();
    }
    if let Some(v) = l.topic_alias_maximum {
        limits.topic_alias_maximum = v;
    }
    if let Some(v) = l.session_expiry_maximum {
        limits.session_expiry_maximum = v.get();
    }
    if let Some(v) = &l.server_keep_alive {
        let secs = v.get_ref().get().as_secs();
        if secs == 0 || secs > u64::from(u16::MAX) {
            problem(
                v.span(),
                "server_keep_alive must be between 1s and 65535s".into(),
            );
        }
        limits.server_keep_alive = u16::try_from(secs).ok();
    }

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
        admin_bind,
        limits,
        shutdown_grace: raw
            .node
            .shutdown_grace
            .map_or(DEFAULT_SHUTDOWN_GRACE, ConfigDuration::get),
        cluster,
    })
}

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
        assert!(cfg.admin_bind.is_some());
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
        let src = "[node]\nname = \"template\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\n[cluster]\nbind = \"0.0.0.0:7000\"\npeers = [{ name = \"broker-1\", addr = \"127.0.0.1:7001\" }]\n";
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
    fn auth_section_passes_through_and_listener_names_are_unique() {
        let ok = "[node]\nname = \"n\"\n[[listeners]]\nname = \"lb\"\nbind = \"127.0.0.1:0\"\n\
                  [auth]\npolicies = [\"certificate\"]\n[auth.listeners.lb]\nanonymous = true\n";
        let cfg = NodeConfig::parse(Path::new("n.toml"), ok).unwrap();
        assert_eq!(cfg.listeners[0].name.as_deref(), Some("lb"));
        let dup = "[node]\nname = \"n\"\n[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:0\"\n\
                   [[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:0\"\n";
        let err = NodeConfig::parse(Path::new("n.toml"), dup).unwrap_err();
        assert!(err.to_string().contains("used twice"), "{err}");
    }
}
