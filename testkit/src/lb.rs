//! A load balancer under test: [`LbProcess::start`] writes an LB config (schema: `config/src/lb.rs`) into a
//! tempdir and runs `fleetgate lb --config FILE` on port 0, discovering its listener and admin addresses from the
//! `listening` log events; [`Stopped`] freezes a process with SIGSTOP and always resumes it (SIGCONT) on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};
use serde_json::Value;
use tempfile::TempDir;

use crate::http;
use crate::process::ServerProcess;
use crate::wait::eventually;

/// The name (and `listening` role) of the LB's MQTT listener in configs written here.
pub const LB_LISTENER: &str = "mqtt";

/// A running `fleetgate lb`; stopped when dropped.
pub struct LbProcess {
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

impl LbProcess {
    /// Writes `[lb] name`, an admin server and one plain listener on 127.0.0.1:0, followed by `rest` (backends,
    /// `[health]`, `[drain]`, ...), and starts `bin lb --config FILE`.
    pub async fn start(bin: &str, name: &str, rest: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir for the LB config");
        let config = dir.path().join("lb.toml");
        let text = format!(
            "[lb]\nname = {name:?}\n\n[admin]\nbind = \"127.0.0.1:0\"\n\n[[listeners]]\nname = \"{LB_LISTENER}\"\nbind = \"127.0.0.1:0\"\n\n{rest}\n"
        );
        std::fs::write(&config, text).expect("write lb.toml");
        let args = ["lb".as_ref(), "--config".as_ref(), config.as_os_str()];
        let mut process = ServerProcess::spawn(bin, args);
        let mqtt = process.wait_for_listening(LB_LISTENER).await;
        let admin = process.wait_for_listening("admin").await;
        Self {
            process,
            mqtt,
            admin,
            config,
            _dir: dir,
        }
    }

    /// `GET /backends`, the entry of backend `name`.
    pub async fn backend(&self, name: &str) -> Value {
        let r = http::get(self.admin, "/backends").await;
        assert_eq!(r.status, 200, "/backends: {}", r.body);
        let v: Value = serde_json::from_str(&r.body).expect("/backends is JSON");
        v["backends"]
            .as_array()
            .and_then(|list| list.iter().find(|b| b["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no backend {name:?} in {v}"))
    }

    /// The `health` of backend `name` (`"unknown"`, `"up"`, `"down"`).
    pub async fn health(&self, name: &str) -> String {
        self.backend(name).await["health"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Waits until backend `name`'s health is `want`; panics with `/backends` after `deadline`.
    pub async fn wait_health(&self, name: &str, want: &str, deadline: Duration) {
        let ok = eventually(deadline, || async {
            (self.health(name).await == want).then_some(())
        })
        .await;
        if ok.is_err() {
            panic!(
                "backend {name:?} not {want} within {deadline:?}: {}",
                self.backend(name).await
            );
        }
    }

    /// `POST path` on the admin port (e.g. `/drain`, `/reload`); the status code.
    pub async fn post(&self, path: &str) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.admin)
            .await
            .expect("connect to the LB admin port");
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: lb\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.expect("send the request");
        let mut out = Vec::new();
        let _ = tokio::time::timeout(http::HTTP_TIMEOUT, s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out)
            .get(9..12)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }
}

/// A process frozen with SIGSTOP (its sockets stay open, nothing answers); SIGCONT when dropped, always.
pub struct Stopped {
    pid: Pid,
}

impl Stopped {
    /// Sends SIGSTOP to `pid`.
    pub fn stop(pid: u32) -> Self {
        let pid = i32::try_from(pid)
            .ok()
            .and_then(Pid::from_raw)
            .expect("a valid child pid");
        kill_process(pid, Signal::STOP).expect("SIGSTOP");
        Self { pid }
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = kill_process(self.pid, Signal::CONT);
    }
}
