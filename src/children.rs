//! Child processes of `fleetgate up`: each node (and the LB) runs as `fleetgate <role> --config FILE` in its own
//! process group; its log lines are forwarded to our stderr (tagged with the child's name) and scanned for the
//! `event="listening"` lines that tell us the ports it bound; [`admin_get`] asks a child's admin port whether it is
//! ready.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use rustix::process::{Pid, Signal, kill_process};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// How long to wait for a stopped child's remaining log lines.
const FORWARD_DRAIN: Duration = Duration::from_secs(1);
/// Bound of one request to a child's admin port (connect to the end of the answer): loopback answers in
/// milliseconds; a child that does not is polled again.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest admin answer read: `/metrics` of a fresh node is a few KiB.
const ADMIN_MAX_RESPONSE: u64 = 1024 * 1024;

/// One running child.
pub struct ChildProcess {
    /// Name used in logs and forwarded lines (e.g. `broker-0`).
    pub name: String,
    child: Child,
    listening: watch::Receiver<Vec<(String, SocketAddr)>>,
    forwarder: Option<tokio::task::JoinHandle<()>>,
}

impl ChildProcess {
    /// Starts `fleetgate <subcommand> --config <config>` with JSON logs; Ctrl-C in the terminal reaches only us
    /// (the child gets its own process group), so shutdown order stays ours to decide.
    pub fn spawn(name: &str, subcommand: &str, config: &Path) -> Result<Self> {
        let exe = std::env::current_exe().context("locating the fleetgate executable")?;
        let mut child = Command::new(exe)
            .args(["--log-format", "json", subcommand, "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        // The pid is logged so that an operator (and the `up` process test) can tell the children apart.
        tracing::info!(event = "child_started", process = %name, pid = child.id(), "started {name}");
        let (tx, listening) = watch::channel(Vec::new());
        let forwarder = child
            .stderr
            .take()
            .map(|stderr| tokio::spawn(forward(name.to_string(), BufReader::new(stderr), tx)));
        Ok(Self {
            name: name.to_string(),
            child,
            listening,
            forwarder,
        })
    }

    /// Waits until the child logged that it listens as `role`, and returns the address.
    pub async fn wait_listening(&mut self, role: &str, deadline: Duration) -> Result<SocketAddr> {
        let found = tokio::time::timeout(
            deadline,
            self.listening
                .wait_for(|l| l.iter().any(|(r, _)| r == role)),
        )
        .await;
        match found {
            Ok(Ok(list)) => list
                .iter()
                .find_map(|(r, a)| (r == role).then_some(*a))
                .ok_or_else(|| anyhow!("{}: listening address vanished", self.name)),
            // The sender is dropped when the child's stderr closes, i.e. it exited.
            Ok(Err(_)) => bail!("{} exited before listening on {role}", self.name),
            Err(_) => bail!(
                "{} did not report listening on {role} within {deadline:?}",
                self.name
            ),
        }
    }

    /// Resolves when the child exits.
    pub async fn exited(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// Sends SIGTERM (the child drains and exits).
    pub fn terminate(&self) {
        let pid = self
            .child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(Pid::from_raw);
        if let Some(pid) = pid {
            // ESRCH (already exited, not yet reaped) is fine.
            let _ = kill_process(pid, Signal::TERM);
        }
    }

    /// Waits up to `grace` for the child to exit, then kills it; returns how it ended. Its last log lines are
    /// forwarded before this returns.
    pub async fn wait_or_kill(&mut self, grace: Duration) -> String {
        let how = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) => status.to_string(),
            Ok(Err(e)) => format!("wait failed: {e}"),
            Err(_) => {
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
                format!("killed after {grace:?}")
            }
        };
        if let Some(forwarder) = self.forwarder.take() {
            // The pipe closes when the child (and anything it spawned) is gone; do not hang on a grandchild.
            let _ = tokio::time::timeout(FORWARD_DRAIN, forwarder).await;
        }
        how
    }
}

/// Forwards each line of `stderr` to our stderr and records `listening` events. JSON lines get a leading
/// `"process"` field (inserted as text, so the child's field order is kept); other lines a `[name]` prefix.
async fn forward<R>(
    name: String,
    stderr: BufReader<R>,
    tx: watch::Sender<Vec<(String, SocketAddr)>>,
) where
    R: tokio::io::AsyncRead + Unpin,
{
    let mut lines = stderr.lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let object = match serde_json::from_str::<Value>(&line) {
            Ok(Value::Object(map)) => Some(map),
            _ => None,
        };
        let rest = line.trim_start().strip_prefix('{');
        match (object, rest) {
            (Some(map), Some(rest)) => {
                if let Some(found) = listening(&map) {
                    tx.send_modify(|l| l.push(found));
                }
                let tag = Value::String(name.clone());
                let sep = if rest.trim_start().starts_with('}') {
                    ""
                } else {
                    ","
                };
                eprintln!("{{\"process\":{tag}{sep}{rest}");
            }
            _ => eprintln!("[{name}] {line}"),
        }
    }
}

/// `GET path` on a child's admin port: `(status, body)`, or `None` when it does not answer within
/// [`ADMIN_TIMEOUT`].
pub async fn admin_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let request = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        stream
            .take(ADMIN_MAX_RESPONSE)
            .read_to_end(&mut answer)
            .await
            .ok()?;
        let text = String::from_utf8_lossy(&answer);
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, body.to_string()))
    };
    tokio::time::timeout(ADMIN_TIMEOUT, request)
        .await
        .ok()
        .flatten()
}

/// Sum of the samples of `name` (any labels) in Prometheus text, `None` when there is none.
pub fn gauge(metrics: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// `(role, addr)` of an `event="listening"` log line.
fn listening(map: &serde_json::Map<String, Value>) -> Option<(String, SocketAddr)> {
    (map.get("event")?.as_str()? == "listening").then_some(())?;
    let role = map.get("role")?.as_str()?.to_string();
    let addr = map.get("addr")?.as_str()?.parse().ok()?;
    Some((role, addr))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING)
mod tests {
    use super::*;

    #[test]
    fn listening_lines_are_recognised() {
        let line = r#"{"level":"INFO","event":"listening","role":"mqtt","addr":"127.0.0.1:4242"}"#;
        let Value::Object(map) = serde_json::from_str(line).unwrap() else {
            panic!()
        };
        assert_eq!(
            listening(&map),
            Some(("mqtt".into(), "127.0.0.1:4242".parse().unwrap()))
        );
        let Value::Object(map) = serde_json::from_str(r#"{"event":"connect"}"#).unwrap() else {
            panic!()
        };
        assert_eq!(listening(&map), None);
    }

    #[test]
    fn gauges_are_summed_over_labels() {
        let text = "# TYPE fleetgate_cluster_peers_up gauge\nfleetgate_cluster_peers_up 2\n\
                    fleetgate_cluster_peers_up_total 9\nx{a=\"b\"} 1\nx{a=\"c\"} 2.5\n";
        assert_eq!(gauge(text, "fleetgate_cluster_peers_up"), Some(2.0));
        assert_eq!(gauge(text, "x"), Some(3.5));
        assert_eq!(gauge(text, "y"), None);
    }
}
