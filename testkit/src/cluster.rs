//! A cluster of `fleetgate node` processes on loopback: [`ClusterNode`] writes a node config with a `[cluster]`
//! section (cluster port on `127.0.0.1:0`, peers given by name and address), starts the node and discovers its
//! MQTT, admin and cluster ports from the `listening` events; [`ring_owner`] / [`id_owned_by`] pick client IDs
//! by the same rendezvous ring the LB and the nodes use.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use fleetgate_protocol::ring::{Ring, RingNode};
use tempfile::TempDir;

use crate::http;
use crate::node::{ADMIN_ROLE, MQTT_ROLE, NodeSpec};
use crate::process::ServerProcess;
use crate::wait::eventually;

/// The `role` of the cluster port's `listening` log line.
pub const CLUSTER_ROLE: &str = "cluster";

/// A running clustered node; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct ClusterNode {
    /// Node name (`[node] name`).
    pub name: String,
    /// The child process.
    pub process: ServerProcess,
    /// MQTT listener (plain, no PROXY header).
    pub mqtt: SocketAddr,
    /// Admin HTTP.
    pub admin: SocketAddr,
    /// Cluster port.
    pub cluster: SocketAddr,
    /// The config file.
    pub config: PathBuf,
    _dir: TempDir,
}

impl ClusterNode {
    /// Starts node `name` dialing `peers` (name, cluster address); `extra` is appended to `[cluster]`.
    pub async fn start(bin: &str, name: &str, peers: &[(&str, SocketAddr)], extra: &str) -> Self {
        let mut spec = NodeSpec::plain();
        spec.name = name.to_string();
        spec.shutdown_grace = Some("10s".into());
        let mut toml = spec.to_toml();
        let list: Vec<String> = peers
            .iter()
            .map(|(n, a)| format!("{{ name = {n:?}, addr = \"{a}\" }}"))
            .collect();
        toml.push_str(&format!(
            "\n[cluster]\nbind = \"127.0.0.1:0\"\npeers = [{}]\n{extra}\n",
            list.join(", ")
        ));
        let dir = tempfile::tempdir().expect("tempdir for the node config");
        let config = dir.path().join("node.toml");
        std::fs::write(&config, toml).expect("write node.toml");
        let args = ["node".as_ref(), "--config".as_ref(), config.as_os_str()];
        let mut process = ServerProcess::spawn(bin, args);
        let mqtt = process.wait_for_listening(MQTT_ROLE).await;
        let admin = process.wait_for_listening(ADMIN_ROLE).await;
        let cluster = process.wait_for_listening(CLUSTER_ROLE).await;
        Self {
            name: name.to_string(),
            process,
            mqtt,
            admin,
            cluster,
            config,
            _dir: dir,
        }
    }

    /// Whether `/readyz` answers 200.
    pub async fn is_ready(&self) -> bool {
        http::get(self.admin, "/readyz").await.status == 200
    }

    /// Waits for `/readyz` to be `want`; panics after `deadline`.
    pub async fn wait_ready(&self, want: bool, deadline: Duration) {
        let ok = eventually(deadline, || async {
            (self.is_ready().await == want).then_some(())
        })
        .await;
        assert!(
            ok.is_ok(),
            "{}: /readyz != {want} within {deadline:?}",
            self.name
        );
    }

    /// Sum of `name{labels}` in `/metrics`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let r = http::get(self.admin, "/metrics").await;
        http::metric_sum(&http::parse_metrics(&r.body), name, labels)
    }

    /// Waits until `check(value of name{labels})` holds; panics with the value after `deadline`.
    pub async fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        deadline: Duration,
        check: impl Fn(f64) -> bool,
    ) {
        let ok = eventually(deadline, || async {
            check(self.metric(name, labels).await).then_some(())
        })
        .await;
        if ok.is_err() {
            let v = self.metric(name, labels).await;
            panic!(
                "{}: {name}{labels:?} = {v}: condition not met within {deadline:?}",
                self.name
            );
        }
    }
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
