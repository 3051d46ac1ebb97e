//! A broker node under test as a child process: [`NodeSpec`] writes a node config (schema: `config/src/node.rs`),
//! alone or in a cluster, into a tempdir; [`Node::start`] runs `fleetgate node --config FILE` on port 0 and
//! discovers its MQTT, admin and cluster addresses from the `listening` log events ([`Node::start_in`] does the same
//! for a config text the test wrote beside its side files). [`ring_owner`] / [`id_owned_by`] pick client IDs by
//! the rendezvous ring the LB and the nodes use, so a cluster test knows which node owns which client.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use fleetgate_protocol::ring::{Ring, RingNode};
use tempfile::TempDir;

use crate::admin::Admin;
use crate::process::{ServerProcess, listening_addr};

/// The `role` of the MQTT listener's `listening` log line.
pub const MQTT_ROLE: &str = "mqtt";
/// The `role` of the admin server's `listening` log line.
pub const ADMIN_ROLE: &str = "admin";
/// The `role` of the probe socket's (`[admin] probe_bind`) `listening` log line.
pub const PROBE_ROLE: &str = "probe";
/// The `role` of the cluster port's `listening` log line.
pub const CLUSTER_ROLE: &str = "cluster";

/// A node config to write: one MQTT listener on `127.0.0.1:0`, the admin server on `127.0.0.1:0`.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// `[node] name`.
    pub name: String,
    /// `proxy_protocol` of the listener: `"off"` or `"required"`.
    pub proxy_protocol: String,
    /// `trusted_proxies` CIDRs.
    pub trusted_proxies: Vec<String>,
    /// `proxy_timeout`, e.g. `"2s"`.
    pub proxy_timeout: Option<String>,
    /// `[limits] connect_timeout`, e.g. `"1s"`.
    pub connect_timeout: Option<String>,
    /// `[limits] max_packet_size` in bytes.
    pub max_packet_size: Option<u32>,
    /// `[node] shutdown_grace`.
    pub shutdown_grace: Option<String>,
    /// Extra TOML lines appended to `[limits]`.
    pub extra_limits: Vec<String>,
    /// Extra TOML lines appended to `[admin]` (`probe_bind`, `token_file`, caps, timeouts).
    pub extra_admin: Vec<String>,
    /// `RUST_LOG` for the node process (default: the node's own default, `info`).
    pub rust_log: Option<String>,
    /// `--worker-threads` for the node process (default: one per CPU).
    pub worker_threads: Option<usize>,
    /// The body of a `[cluster]` section (see [`NodeSpec::clustered`]); `None` for a single node.
    pub cluster: Option<String>,
}

impl NodeSpec {
    /// A node behind a PROXY v2 sender on this host: `proxy_protocol = "required"`, trusting `127.0.0.1/32`.
    pub fn behind_local_proxy() -> Self {
        Self::with_proxy(&["127.0.0.1/32"])
    }

    /// A node whose listener requires a PROXY header from `trusted` networks.
    pub fn with_proxy(trusted: &[&str]) -> Self {
        Self {
            name: "node-test".into(),
            proxy_protocol: "required".into(),
            trusted_proxies: trusted.iter().map(|s| s.to_string()).collect(),
            proxy_timeout: Some("2s".into()),
            connect_timeout: None,
            max_packet_size: None,
            shutdown_grace: Some("2s".into()),
            extra_limits: Vec::new(),
            extra_admin: Vec::new(),
            rust_log: None,
            worker_threads: None,
            cluster: None,
        }
    }

    /// A node with a plain MQTT listener (no PROXY header).
    pub fn plain() -> Self {
        Self {
            proxy_protocol: "off".into(),
            trusted_proxies: Vec::new(),
            proxy_timeout: None,
            ..Self::behind_local_proxy()
        }
    }

    /// A plain node named `name` in a cluster: its cluster port on `127.0.0.1:0`, dialing `peers` (name, cluster
    /// address); `extra` is appended to `[cluster]` (discovery, `[cluster.tls]`).
    pub fn clustered(name: &str, peers: &[(&str, SocketAddr)], extra: &str) -> Self {
        let list: Vec<String> = peers
            .iter()
            .map(|(n, a)| format!("{{ name = {n:?}, addr = \"{a}\" }}"))
            .collect();
        Self {
            name: name.to_string(),
            shutdown_grace: Some("10s".into()),
            cluster: Some(format!(
                "bind = \"127.0.0.1:0\"\npeers = [{}]\n{extra}\n",
                list.join(", ")
            )),
            ..Self::plain()
        }
    }

    /// The TOML text.
    pub fn to_toml(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "[node]\nname = {:?}", self.name);
        if let Some(g) = &self.shutdown_grace {
            let _ = writeln!(t, "shutdown_grace = {g:?}");
        }
        let _ = writeln!(
            t,
            "\n[[listeners]]\nbind = \"127.0.0.1:0\"\nproxy_protocol = {:?}",
            self.proxy_protocol
        );
        if !self.trusted_proxies.is_empty() {
            let nets: Vec<String> = self
                .trusted_proxies
                .iter()
                .map(|n| format!("{n:?}"))
                .collect();
            let _ = writeln!(t, "trusted_proxies = [{}]", nets.join(", "));
        }
        if let Some(p) = &self.proxy_timeout {
            let _ = writeln!(t, "proxy_timeout = {p:?}");
        }
        let _ = writeln!(t, "\n[admin]\nbind = \"127.0.0.1:0\"");
        for line in &self.extra_admin {
            let _ = writeln!(t, "{line}");
        }
        let _ = writeln!(t, "\n[limits]");
        if let Some(c) = &self.connect_timeout {
            let _ = writeln!(t, "connect_timeout = {c:?}");
        }
        if let Some(m) = self.max_packet_size {
            let _ = writeln!(t, "max_packet_size = {m}");
        }
        for line in &self.extra_limits {
            let _ = writeln!(t, "{line}");
        }
        if let Some(cluster) = &self.cluster {
            let _ = writeln!(t, "\n[cluster]\n{cluster}");
        }
        t
    }

    /// Writes the config as `node.toml` into `dir` and returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("node.toml");
        std::fs::write(&path, self.to_toml()).expect("write node.toml");
        path
    }
}

/// A running `fleetgate node` with its discovered addresses; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Node {
    /// Node name (`[node] name`).
    pub name: String,
    /// The child process (logs, signals, terminate).
    pub process: ServerProcess,
    /// The first MQTT listener's address.
    pub mqtt: SocketAddr,
    /// Every MQTT listener's address, in config order.
    pub listeners: Vec<SocketAddr>,
    /// The admin HTTP server.
    pub admin: Admin,
    /// The config file.
    pub config: PathBuf,
    cluster: Option<SocketAddr>,
    _dir: Option<TempDir>,
}

impl Node {
    /// Writes `spec` and starts `bin node --config FILE` (pass `env!("CARGO_BIN_EXE_fleetgate")`), waiting for every
    /// `listening` line.
    pub async fn start(bin: &str, spec: &NodeSpec) -> Self {
        let dir = tempfile::tempdir().expect("tempdir for the node config");
        let config = spec.write(dir.path());
        let mut args: Vec<String> = Vec::new();
        if let Some(n) = spec.worker_threads {
            args.extend(["--worker-threads".into(), n.to_string()]);
        }
        let env: Vec<(&str, &str)> = spec
            .rust_log
            .iter()
            .map(|f| ("RUST_LOG", f.as_str()))
            .collect();
        let process = spawn(bin, &config, &args, env);
        Self::discover(
            process,
            &spec.name,
            config,
            Some(dir),
            spec.cluster.is_some(),
        )
        .await
    }

    /// Writes `config` as `dir/node.toml` and starts `bin node --config dir/node.toml`: for configs with side files
    /// (ACL, password file) the test keeps writing into `dir`. No cluster.
    pub async fn start_in(bin: &str, dir: &Path, config: &str) -> Self {
        let path = dir.join("node.toml");
        std::fs::write(&path, config).expect("write node.toml");
        let process = spawn(bin, &path, &[], Vec::new());
        Self::discover(process, "", path, None, false).await
    }

    /// Waits for the `listening` lines: the MQTT listeners are bound (and logged) in config order before the admin
    /// server, the cluster port after it.
    async fn discover(
        mut process: ServerProcess,
        name: &str,
        config: PathBuf,
        dir: Option<TempDir>,
        clustered: bool,
    ) -> Self {
        let mqtt = process.wait_for_listening(MQTT_ROLE).await;
        let admin = Admin::new(process.wait_for_listening(ADMIN_ROLE).await);
        let listeners = process
            .logs()
            .iter()
            .filter_map(|l| listening_addr(l, MQTT_ROLE))
            .collect();
        let cluster = match clustered {
            true => Some(process.wait_for_listening(CLUSTER_ROLE).await),
            false => None,
        };
        Self {
            name: name.to_string(),
            process,
            mqtt,
            listeners,
            admin,
            config,
            cluster,
            _dir: dir,
        }
    }

    /// The cluster port; panics for a node started without a `[cluster]` section.
    pub fn cluster(&self) -> SocketAddr {
        self.cluster
            .unwrap_or_else(|| panic!("node {:?} has no cluster port", self.name))
    }
}

/// `bin node --config FILE ARGS` with `env`.
fn spawn(bin: &str, config: &Path, args: &[String], env: Vec<(&str, &str)>) -> ServerProcess {
    let mut all: Vec<std::ffi::OsString> = vec!["node".into(), "--config".into(), config.into()];
    all.extend(args.iter().map(Into::into));
    ServerProcess::spawn_with_env(bin, all, env)
}

/// The node the ring assigns `client_id` to among `names`.
pub fn ring_owner(names: &[&str], client_id: &str) -> String {
    let ring = Ring::new(names.iter().map(|n| RingNode::new(*n)));
    ring.select(client_id.as_bytes(), |_| true)
        .expect("a non-empty ring")
        .to_string()
}

/// The first `{prefix}-{i}` the ring over `names` assigns to `owner`.
pub fn id_owned_by(names: &[&str], owner: &str, prefix: &str) -> String {
    (0..10_000)
        .map(|i| format!("{prefix}-{i}"))
        .find(|id| ring_owner(names, id) == owner)
        .expect("some id maps to every node")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_config_the_node_schema_accepts() {
        let mut spec = NodeSpec::behind_local_proxy();
        spec.connect_timeout = Some("1s".into());
        spec.max_packet_size = Some(4096);
        let dir = tempfile::tempdir().unwrap();
        let path = spec.write(dir.path());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("proxy_protocol = \"required\""));
        assert!(text.contains("trusted_proxies = [\"127.0.0.1/32\"]"));
        assert!(text.contains("max_packet_size = 4096"));
        let parsed = fleetgate_config::node::NodeConfig::parse(&path, &text).unwrap();
        assert_eq!(parsed.limits.max_packet_size, 4096);
        let plain = NodeSpec::plain().to_toml();
        assert!(plain.contains("proxy_protocol = \"off\"") && !plain.contains("trusted_proxies"));
        let peer: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let clustered = NodeSpec::clustered("broker-1", &[("broker-0", peer)], "").to_toml();
        let parsed = fleetgate_config::node::NodeConfig::parse(&path, &clustered).unwrap();
        assert_eq!(parsed.name, "broker-1");
        assert!(parsed.cluster.is_some());
        assert!(clustered.contains("peers = [{ name = \"broker-0\", addr = \"127.0.0.1:7000\" }]"));
    }
}
