//! The `[cluster]` table of a node config: raw [`ClusterFile`] → validated [`ClusterConfig`] (peers listed or
//! discovered, link timing, optional mutual TLS).
//!
//! ```toml
//! [cluster]
//! bind = "0.0.0.0:7001"
//! peers = [{ name = "broker-1", addr = "10.0.0.11:7001" }]
//! # or, instead of `peers`, the SRV records of a headless Service (endpoint names = pod names = ring keys):
//! # peers_from = { dns = { name = "_cluster._tcp.broker.ns.svc.cluster.local.", type = "srv" } }
//!
//! [cluster.tls]                        # both sides present and verify certificates of this CA
//! cert = "cluster.crt"                 # its DNS SAN is this node's name (or an IP SAN, its address)
//! key = "cluster.key"
//! ca = "cluster-ca.crt"
//! ```
//!
//! A cluster port bound off loopback needs `[cluster.tls]`: without it anyone who reaches the port would be a
//! node. `insecure_plaintext = true` allows plain TCP anyway (a lab behind its own network boundary); the node
//! warns about it at every start.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::parse_addr;
use crate::discovery::{DiscoveryConfig, DiscoveryFile};
use crate::duration::ConfigDuration;
use crate::load::Problem;

/// Placeholder bind address while a problem is reported (the config is refused anyway).
const UNSPECIFIED: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));

/// Default frames queued per cluster peer link: about a second of a busy node's cross-node traffic; beyond it a
/// slow or stuck peer costs dropped QoS 0/1 forwards (counted) instead of unbounded memory.
pub(crate) const DEFAULT_CLUSTER_QUEUE_CAPACITY: usize = 10_000;
/// Default bytes queued per cluster peer link: the frame bound alone would let 10,000 forwards of 1 MiB
/// messages queue 10 GB for one stuck peer.
pub(crate) const DEFAULT_CLUSTER_QUEUE_BYTES: usize = 64 << 20;
/// Default heartbeat period on cluster links.
pub(crate) const DEFAULT_CLUSTER_HEARTBEAT: Duration = Duration::from_millis(500);
/// Default silence after which a peer is declared dead: five missed heartbeats, inside the 3 s the issue allows.
pub(crate) const DEFAULT_CLUSTER_DEAD_AFTER: Duration = Duration::from_millis(2500);
/// Default bound on waiting for a peer to hand a session over on CONNECT.
pub(crate) const DEFAULT_CLUSTER_TAKEOVER_TIMEOUT: Duration = Duration::from_secs(2);

/// Raw `[cluster]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClusterFile {
    /// Address of the cluster port (`"0.0.0.0:7001"`; port 0 picks a free port).
    pub(crate) bind: Spanned<String>,
    /// Address peers dial to reach us; defaults to the bound address.
    pub(crate) advertise: Option<Spanned<String>>,
    /// Peers to dial (any subset of the cluster is enough: peers that dial us are learned).
    #[serde(default)]
    pub(crate) peers: Vec<PeerFile>,
    /// Peers discovered instead of listed: `{ static = [...] }` or `{ dns = { ... } }` (a headless Service's
    /// SRV records name each peer by its pod name, the ring key), refreshed.
    pub(crate) peers_from: Option<Spanned<DiscoveryFile>>,
    /// `[cluster.tls]`: mutual TLS on every cluster link.
    pub(crate) tls: Option<ClusterTlsFile>,
    /// Plain TCP links on a non-loopback address (labs only).
    pub(crate) insecure_plaintext: Option<Spanned<bool>>,
    /// Frames queued per peer link.
    pub(crate) queue_capacity: Option<Spanned<usize>>,
    /// Bytes queued per peer link.
    pub(crate) queue_bytes: Option<Spanned<crate::bytesize::ByteSize>>,
    /// Heartbeat period.
    pub(crate) heartbeat_interval: Option<ConfigDuration>,
    /// Silence after which a peer is dead.
    pub(crate) dead_after: Option<ConfigDuration>,
    /// Bound on a session takeover round trip.
    pub(crate) takeover_timeout: Option<ConfigDuration>,
}

/// Raw entry of `[cluster] peers`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PeerFile {
    /// The peer's node name (its `[node] name`).
    pub(crate) name: Spanned<String>,
    /// Its cluster address.
    pub(crate) addr: Spanned<String>,
}

/// Raw `[cluster.tls]` table: PEM files, relative paths from the config file's directory.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClusterTlsFile {
    /// This node's certificate chain, issued by the cluster CA.
    pub(crate) cert: Spanned<String>,
    /// Its private key.
    pub(crate) key: Spanned<String>,
    /// The cluster CA: a peer must present a certificate it issued, both ways.
    pub(crate) ca: Spanned<String>,
}

/// A configured cluster peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// Node name.
    pub name: String,
    /// Cluster address.
    pub addr: SocketAddr,
}

/// A validated `[cluster]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Cluster port.
    pub bind: SocketAddr,
    /// Advertised address, when not the bound one.
    pub advertise: Option<SocketAddr>,
    /// Peers to dial (own name skipped).
    pub peers: Vec<PeerConfig>,
    /// Peers to discover (refreshed; our own name skipped at run time), instead of `peers`.
    pub peers_from: Option<DiscoveryConfig>,
    /// Mutual TLS on cluster links.
    pub tls: Option<ClusterTlsConfig>,
    /// Plain TCP links allowed on a non-loopback address (`insecure_plaintext = true`).
    pub insecure_plaintext: bool,
    /// Frames queued per peer link (≥ 1).
    pub queue_capacity: usize,
    /// Bytes queued per peer link (≥ 1 MiB).
    pub queue_bytes: usize,
    /// Heartbeat period.
    pub heartbeat_interval: Duration,
    /// Silence after which a peer is dead (> heartbeat_interval).
    pub dead_after: Duration,
    /// Bound on a session takeover round trip.
    pub takeover_timeout: Duration,
}

impl ClusterConfig {
    /// A cluster section on `bind` with `peers` and defaults elsewhere.
    pub(crate) fn new(bind: SocketAddr, peers: Vec<PeerConfig>) -> ClusterConfig {
        ClusterConfig {
            bind,
            advertise: None,
            peers,
            peers_from: None,
            tls: None,
            insecure_plaintext: false,
            queue_capacity: DEFAULT_CLUSTER_QUEUE_CAPACITY,
            queue_bytes: DEFAULT_CLUSTER_QUEUE_BYTES,
            heartbeat_interval: DEFAULT_CLUSTER_HEARTBEAT,
            dead_after: DEFAULT_CLUSTER_DEAD_AFTER,
            takeover_timeout: DEFAULT_CLUSTER_TAKEOVER_TIMEOUT,
        }
    }
}

/// A validated `[cluster.tls]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTlsConfig {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// Cluster CA certificates (PEM).
    pub ca: PathBuf,
}

/// Validates a `[cluster]` table of `file` (text `source`) for node `own_name`.
pub(crate) fn validate_cluster(
    c: &ClusterFile,
    own_name: &str,
    file: &Path,
    source: &str,
) -> Result<ClusterConfig, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut extra: Vec<Problem> = Vec::new();
    let mut push = |span: std::ops::Range<usize>, message: String| {
        problems.push(Problem::at(file, source, Some(span), message));
    };
    let problem = &mut push;
    let bind = parse_addr(&c.bind, problem);
    let advertise = c.advertise.as_ref().and_then(|a| parse_addr(a, problem));
    let mut peers = Vec::new();
    for p in &c.peers {
        let name = p.name.get_ref().trim();
        if name.is_empty() || name.chars().any(|ch| ch.is_control() || ch.is_whitespace()) {
            problem(
                p.name.span(),
                "peer name must be non-empty without spaces or control characters".into(),
            );
        } else if peers.iter().any(|q: &PeerConfig| q.name == name) {
            problem(p.name.span(), format!("duplicate peer name {name:?}"));
        }
        if let Some(addr) = parse_addr(&p.addr, problem)
            && name != own_name
        {
            peers.push(PeerConfig {
                name: name.to_string(),
                addr,
            });
        }
    }
    let peers_from = match &c.peers_from {
        Some(d) if !c.peers.is_empty() => {
            problem(
                d.span(),
                "set either `peers` or `peers_from`, not both".into(),
            );
            None
        }
        Some(d) => match d.get_ref().validate(file, source, Some(d.span())) {
            Ok(cfg) => Some(cfg),
            Err(p) => {
                extra.extend(p);
                None
            }
        },
        None => None,
    };
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let tls = c.tls.as_ref().map(|t| {
        let mut path = |v: &Spanned<String>| {
            if v.get_ref().trim().is_empty() {
                problem(v.span(), "path must not be empty".into());
            }
            base.join(v.get_ref())
        };
        ClusterTlsConfig {
            cert: path(&t.cert),
            key: path(&t.key),
            ca: path(&t.ca),
        }
    });
    let insecure_plaintext = c.insecure_plaintext.as_ref().is_some_and(|i| *i.get_ref());
    match (&c.insecure_plaintext, &tls, bind) {
        (Some(i), Some(_), _) if *i.get_ref() => problem(
            i.span(),
            "insecure_plaintext = true and [cluster.tls] exclude each other".into(),
        ),
        (_, None, Some(addr)) if !insecure_plaintext && !addr.ip().is_loopback() => problem(
            c.bind.span(),
            format!(
                "cluster port {addr} is off loopback without [cluster.tls]: anyone who reaches it would be a \
                 node; add [cluster.tls] (or insecure_plaintext = true, for a lab only)"
            ),
        ),
        _ => {}
    }
    let mut config = ClusterConfig::new(bind.unwrap_or(UNSPECIFIED), peers);
    config.advertise = advertise;
    config.peers_from = peers_from;
    config.tls = tls;
    config.insecure_plaintext = insecure_plaintext;
    if let Some(q) = &c.queue_capacity {
        if *q.get_ref() == 0 {
            problem(q.span(), "queue_capacity must be at least 1".into());
        }
        config.queue_capacity = *q.get_ref();
    }
    if let Some(q) = &c.queue_bytes {
        if q.get_ref().get() < 1 << 20 {
            problem(q.span(), "queue_bytes must be at least 1MiB".into());
        }
        config.queue_bytes = q.get_ref().get();
    }
    if let Some(h) = c.heartbeat_interval {
        config.heartbeat_interval = h.get();
    }
    if let Some(d) = c.dead_after {
        config.dead_after = d.get();
    }
    if let Some(t) = c.takeover_timeout {
        config.takeover_timeout = t.get();
    }
    if config.heartbeat_interval.is_zero() || config.dead_after <= config.heartbeat_interval {
        problem(
            c.bind.span(),
            "cluster dead_after must be longer than a non-zero heartbeat_interval".into(),
        );
    }
    problems.extend(extra);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::{DiscoverySource, SrvNaming};
    use crate::node::NodeConfig;

    const HEAD: &str = "[node]\nname = \"broker-0\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\n[cluster]\nbind = \"127.0.0.1:0\"\n";

    #[test]
    fn peers_from_dns_srv() {
        let src = format!(
            "{HEAD}peers_from = {{ dns = {{ name = \"_cluster._tcp.broker.ns.svc.cluster.local\", type = \"srv\", nameserver = \"127.0.0.1:5353\" }} }}\n"
        );
        let cfg = NodeConfig::parse(Path::new("/etc/fg/n.toml"), &src).unwrap();
        let cluster = cfg.cluster.unwrap();
        assert!(cluster.peers.is_empty());
        let d = cluster.peers_from.unwrap();
        assert_eq!(
            d.source,
            DiscoverySource::DnsSrv {
                name: "_cluster._tcp.broker.ns.svc.cluster.local.".into(),
                name_from: SrvNaming::FirstLabel
            }
        );
        assert_eq!(d.nameserver, Some("127.0.0.1:5353".parse().unwrap()));
    }

    #[test]
    fn peers_and_peers_from_conflict_and_discovery_problems_are_located() {
        let both = format!(
            "{HEAD}peers = [{{ name = \"b\", addr = \"127.0.0.1:1\" }}]\npeers_from = {{ static = [{{ address = \"127.0.0.1:2\" }}] }}\n"
        );
        let err = NodeConfig::parse(Path::new("n.toml"), &both).unwrap_err();
        assert!(err.to_string().contains("not both"), "{err}");
        assert_eq!(err.problems[0].line, 8, "{err}");
        let bad = format!("{HEAD}peers_from = {{ dns = {{ name = \"x..y\", type = \"srv\" }} }}\n");
        let err = NodeConfig::parse(Path::new("n.toml"), &bad).unwrap_err();
        assert_eq!(err.problems[0].line, 7, "{err}");
    }

    #[test]
    fn tls_paths_are_relative_to_the_config_file() {
        let src = format!(
            "{HEAD}[cluster.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nca = \"/abs/ca.pem\"\n"
        );
        let cfg = NodeConfig::parse(Path::new("/etc/fg/n.toml"), &src).unwrap();
        let tls = cfg.cluster.unwrap().tls.unwrap();
        assert_eq!(tls.cert, Path::new("/etc/fg/c.pem"));
        assert_eq!(tls.key, Path::new("/etc/fg/k.pem"));
        assert_eq!(tls.ca, Path::new("/abs/ca.pem"));
        let missing = format!("{HEAD}[cluster.tls]\ncert = \"c.pem\"\n");
        assert!(NodeConfig::parse(Path::new("n.toml"), &missing).is_err());
    }

    #[test]
    fn a_cluster_port_off_loopback_needs_tls_or_an_explicit_plaintext_opt_in() {
        let head = "[node]\nname = \"b\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\n[cluster]\n";
        let parse =
            |cluster: &str| NodeConfig::parse(Path::new("n.toml"), &format!("{head}{cluster}"));
        let err = parse("bind = \"0.0.0.0:7000\"\n").unwrap_err();
        assert!(err.to_string().contains("without [cluster.tls]"), "{err}");
        assert_eq!(err.problems[0].line, 6, "{err}");
        let lab = parse("bind = \"0.0.0.0:7000\"\ninsecure_plaintext = true\n").unwrap();
        assert!(lab.cluster.unwrap().insecure_plaintext);
        let tls = "[cluster.tls]\ncert = \"c\"\nkey = \"k\"\nca = \"a\"\n";
        assert!(parse(&format!("bind = \"0.0.0.0:7000\"\n{tls}")).is_ok());
        assert!(
            parse("bind = \"127.0.0.1:7000\"\n").is_ok(),
            "loopback may be plain"
        );
        assert!(
            parse("bind = \"[::1]:7000\"\n").is_ok(),
            "loopback may be plain"
        );
        let both = parse(&format!(
            "bind = \"0.0.0.0:7000\"\ninsecure_plaintext = true\n{tls}"
        ))
        .unwrap_err();
        assert!(both.to_string().contains("exclude each other"), "{both}");
    }
}
