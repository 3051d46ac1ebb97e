//! A load balancer under test as a child process: [`LbProcess::start`] writes an LB config (schema:
//! `config/src/lb.rs`) into a tempdir and runs `fleetgate lb --config FILE` on port 0, discovering its listener and
//! admin addresses from the `listening` log events.

use std::net::SocketAddr;
use std::path::PathBuf;

use tempfile::TempDir;

use crate::admin::Admin;
use crate::node::ADMIN_ROLE;
use crate::process::ServerProcess;

/// The name (and `listening` role) of the LB's MQTT listener in configs written by [`LbProcess::start`].
pub const LB_LISTENER: &str = "mqtt";

/// A running `fleetgate lb`; stopped when dropped.
pub struct LbProcess {
    /// The child process (logs, signals, terminate).
    pub process: ServerProcess,
    /// The address of the listener the LB was started for.
    pub mqtt: SocketAddr,
    /// The admin HTTP server.
    pub admin: Admin,
    /// The config file.
    pub config: PathBuf,
    _dir: TempDir,
}

impl LbProcess {
    /// Writes `[lb] name`, an admin server and one plain listener ([`LB_LISTENER`]) on 127.0.0.1:0, followed by
    /// `rest` (backends, `[health]`, `[drain]`, ...), and starts `bin lb --config FILE`.
    pub async fn start(bin: &str, name: &str, rest: &str) -> Self {
        let text = format!(
            "[lb]\nname = {name:?}\n\n[admin]\nbind = \"127.0.0.1:0\"\n\n[[listeners]]\nname = \"{LB_LISTENER}\"\nbind = \"127.0.0.1:0\"\n\n{rest}\n"
        );
        Self::start_text(bin, &text, LB_LISTENER).await
    }

    /// Writes the whole config `text` (with an `[admin]` section) and starts `bin lb --config FILE`, waiting for the
    /// listener named `listener` and the admin server.
    pub async fn start_text(bin: &str, text: &str, listener: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir for the LB config");
        let config = dir.path().join("lb.toml");
        std::fs::write(&config, text).expect("write lb.toml");
        let args = ["lb".as_ref(), "--config".as_ref(), config.as_os_str()];
        let mut process = ServerProcess::spawn(bin, args);
        let mqtt = process.wait_for_listening(listener).await;
        let admin = Admin::new(process.wait_for_listening(ADMIN_ROLE).await);
        Self {
            process,
            mqtt,
            admin,
            config,
            _dir: dir,
        }
    }
}
