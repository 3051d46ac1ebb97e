//! A broker node under test: [`NodeSpec`] writes a node config (schema: `config/src/node.rs`) into a tempdir,
//! [`Node::start`] runs `fleetgate node --config FILE` on port 0 and discovers its MQTT and admin addresses from the
//! `listening` log events; admin helpers read `/metrics` and `/clients/{id}` as an operator would.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::http::{self, Sample};
use crate::process::ServerProcess;

/// The `role` of the MQTT listener's `listening` log line.
pub const MQTT_ROLE: &str = "mqtt";
/// The `role` of the admin server's `listening` log line.
pub const ADMIN_ROLE: &str = "admin";

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
    /// `RUST_LOG` for the node process (default: the node's own default, `info`).
    pub rust_log: Option<String>,
    /// `--worker-threads` for the node process (default: one per CPU).
    pub worker_threads: Option<usize>,
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
            rust_log: None,
            worker_threads: None,
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
        let _ = writeln!(t, "\n[admin]\nbind = \"127.0.0.1:0\"\n\n[limits]");
        if let Some(c) = &self.connect_timeout {
            let _ = writeln!(t, "connect_timeout = {c:?}");
        }
        if let Some(m) = self.max_packet_size {
            let _ = writeln!(t, "max_packet_size = {m}");
        }
        for line in &self.extra_limits {
            let _ = writeln!(t, "{line}");
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

/// A running `fleetgate node` with its discovered addresses; stopped when dropped.
pub struct Node {
    /// The child process (logs, terminate).
    pub process: ServerProcess,
    /// The MQTT listener's address.
    pub mqtt: SocketAddr,
    /// The admin HTTP server's address.
    pub admin: SocketAddr,
    /// The config file.
    pub config: PathBuf,
    _dir: TempDir,
}

impl Node {
    /// Writes `spec` and starts `bin node --config FILE` (pass `env!("CARGO_BIN_EXE_fleetgate")`), waiting for both
    /// `listening` lines.
    pub async fn start(bin: &str, spec: &NodeSpec) -> Self {
        let dir = tempfile::tempdir().expect("tempdir for the node config");
        let config = spec.write(dir.path());
        let env: Vec<(&str, &str)> = spec
            .rust_log
            .iter()
            .map(|f| ("RUST_LOG", f.as_str()))
            .collect();
        let mut args: Vec<std::ffi::OsString> =
            vec!["node".into(), "--config".into(), config.clone().into()];
        if let Some(n) = spec.worker_threads {
            args.extend(["--worker-threads".into(), n.to_string().into()]);
        }
        let mut process = ServerProcess::spawn_with_env(bin, args, env);
        let mqtt = process.wait_for_listening(MQTT_ROLE).await;
        let admin = process.wait_for_listening(ADMIN_ROLE).await;
        Self {
            process,
            mqtt,
            admin,
            config,
            _dir: dir,
        }
    }

    /// The parsed `/metrics` of the admin port.
    pub async fn metrics(&self) -> Vec<Sample> {
        let r = http::get(self.admin, "/metrics").await;
        assert_eq!(r.status, 200, "/metrics: {}", r.body);
        http::parse_metrics(&r.body)
    }

    /// Sum of `name` samples whose labels include `labels`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        http::metric_sum(&self.metrics().await, name, labels)
    }

    /// Waits until `name{labels}` reaches at least `at_least`; panics with the metrics text otherwise.
    pub async fn wait_for_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        at_least: f64,
        deadline: Duration,
    ) {
        let reached = crate::wait::eventually(deadline, || async {
            (self.metric(name, labels).await >= at_least).then_some(())
        })
        .await;
        if reached.is_err() {
            let body = http::get(self.admin, "/metrics").await.body;
            panic!(
                "{name}{labels:?} did not reach {at_least} within {deadline:?}; /metrics:\n{body}"
            );
        }
    }

    /// `GET /clients/{id}`: `None` on 404, else the JSON body.
    pub async fn client(&self, client_id: &str) -> Option<Value> {
        let r = http::get(self.admin, &format!("/clients/{client_id}")).await;
        match r.status {
            404 => None,
            200 => Some(
                serde_json::from_str(&r.body)
                    .unwrap_or_else(|e| panic!("/clients/{client_id}: {e}: {}", r.body)),
            ),
            other => panic!("/clients/{client_id}: HTTP {other}: {}", r.body),
        }
    }

    /// Whether `/clients/{id}` says the client is connected.
    pub async fn is_connected(&self, client_id: &str) -> bool {
        self.client(client_id)
            .await
            .is_some_and(|c| c["connected"] == Value::Bool(true))
    }

    /// Waits until `/clients/{id}` reports `connected == want`.
    pub async fn wait_connected(&self, client_id: &str, want: bool, deadline: Duration) {
        let ok = crate::wait::eventually(deadline, || async {
            (self.is_connected(client_id).await == want).then_some(())
        })
        .await;
        if ok.is_err() {
            let state = self.client(client_id).await;
            panic!(
                "client {client_id:?}: connected != {want} within {deadline:?}; /clients says {state:?}"
            );
        }
    }
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
    }
}
