//! Third-party MQTT clients run as processes — `mosquitto_pub`/`mosquitto_sub` and python3 paho scripts from
//! `testkit/py/` — each under a hard timeout so a misbehaving broker fails a test instead of hanging it (rumqttc, the
//! in-process one, is in [`crate::rumqttc_client`]).
//!
//! Python: the paho library comes from the Debian package `python3-paho-mqtt`, which installs into the system
//! interpreter `/usr/bin/python3` (the `python3` first on PATH may be another one, e.g. pyenv's). [`python3`] picks
//! `$FLEETGATE_PYTHON` if set, else the first of `/usr/bin/python3` and `python3` that can `import paho.mqtt`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::process::{Signal, send_signal};
use crate::wait::eventually;

/// Hard bound on one client command: every client is also given its own shorter timeout (`-W`, `--timeout`),
/// this one only catches a client that ignores it.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// The MQTT protocol version a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttVersion {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.0 (protocol level 5).
    V5,
}

impl MqttVersion {
    /// Both versions, for tests that run once per version.
    pub const ALL: [MqttVersion; 2] = [MqttVersion::V311, MqttVersion::V5];

    /// A short tag for client IDs and topics (`v311`, `v5`).
    pub fn tag(self) -> &'static str {
        match self {
            Self::V311 => "v311",
            Self::V5 => "v5",
        }
    }

    /// The value of mosquitto's `-V` flag.
    pub fn mosquitto_flag(self) -> &'static str {
        match self {
            Self::V311 => "mqttv311",
            Self::V5 => "mqttv5",
        }
    }

    /// The value of the paho scripts' `--version` flag.
    pub fn paho_flag(self) -> &'static str {
        match self {
            Self::V311 => "3",
            Self::V5 => "5",
        }
    }
}

/// What a finished command printed and how it ended.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    /// Exit code (`None` when killed by a signal or by our timeout).
    pub code: Option<i32>,
    /// Standard output lines.
    pub stdout: Vec<String>,
    /// Standard error text.
    pub stderr: String,
    /// The command was killed because it outlived [`COMMAND_TIMEOUT`].
    pub timed_out: bool,
}

impl CmdOutput {
    /// Exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// stdout lines that parse as JSON objects (what the paho scripts print).
    pub fn events(&self) -> Vec<Value> {
        self.stdout
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(Value::is_object)
            .collect()
    }

    /// The JSON events whose `ev` field is `kind`.
    pub fn events_of(&self, kind: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["ev"] == kind)
            .collect()
    }

    /// The messages printed by [`mosquitto_sub`] (`MSG ...` lines, format [`MOSQUITTO_SUB_FORMAT`]).
    pub fn mosquitto_messages(&self) -> Vec<MosquittoMessage> {
        MosquittoMessage::parse_all(&self.stdout)
    }
}

/// A running client process whose stdout lines are collected as they arrive.
pub struct RunningCommand {
    what: String,
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
}

impl RunningCommand {
    /// Starts `program` with `args`; the process is killed if this value is dropped.
    pub fn spawn(program: impl Into<PathBuf>, args: &[String]) -> Self {
        Self::spawn_with_env(program, args, &[])
    }

    /// Like [`RunningCommand::spawn`] with extra environment variables (a secret kept off the command line).
    pub fn spawn_with_env(
        program: impl Into<PathBuf>,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Self {
        let program = program.into();
        let what = format!("{} {}", program.display(), args.join(" "));
        let mut child = Command::new(&program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {what}: {e} (is it installed? run scripts/test)")
            });
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(tokio::spawn(collect(out, stdout.clone())));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(tokio::spawn(collect(err, stderr.clone())));
        }
        Self {
            what,
            child,
            stdout,
            stderr,
            readers,
        }
    }

    /// The stdout lines so far.
    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The messages printed so far by a [`mosquitto_sub`].
    pub fn mosquitto_messages(&self) -> Vec<MosquittoMessage> {
        MosquittoMessage::parse_all(&self.stdout())
    }

    /// Waits until a stdout line contains `needle`; panics with the output so far after `deadline`.
    pub async fn wait_for_line(&self, needle: &str, deadline: Duration) {
        let found = eventually(deadline, || {
            let hit = self.stdout().iter().any(|l| l.contains(needle));
            async move { hit.then_some(()) }
        })
        .await;
        if found.is_err() {
            let stderr = self.stderr.lock().map(|l| l.join("\n")).unwrap_or_default();
            panic!(
                "{}: no line containing {needle:?} within {deadline:?}; stdout:\n{}\nstderr:\n{stderr}",
                self.what,
                self.stdout().join("\n")
            );
        }
    }

    /// Waits for the exit (killing the process after [`COMMAND_TIMEOUT`]) and returns everything it printed.
    pub async fn finish(mut self) -> CmdOutput {
        let (code, timed_out) = match tokio::time::timeout(COMMAND_TIMEOUT, self.child.wait()).await
        {
            Ok(status) => (status.ok().and_then(|s| s.code()), false),
            Err(_) => {
                let _ = self.child.kill().await;
                (None, true)
            }
        };
        for reader in self.readers.drain(..) {
            let _ = reader.await;
        }
        let stdout = self.stdout();
        let stderr = self.stderr.lock().map(|l| l.join("\n")).unwrap_or_default();
        CmdOutput {
            code,
            stdout,
            stderr,
            timed_out,
        }
    }

    /// Kills the process at once (SIGKILL: an ungraceful disconnect, no DISCONNECT packet) and returns its output.
    pub async fn kill(mut self) -> CmdOutput {
        let _ = self.child.kill().await;
        self.finish().await
    }

    /// Sends SIGTERM, the signal an operator or init system would send.
    pub fn terminate(&self) {
        if let Some(pid) = self.child.id() {
            send_signal(pid, Signal::TERM);
        }
    }
}

async fn collect(stream: impl AsyncRead + Unpin, into: Arc<Mutex<Vec<String>>>) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Ok(mut all) = into.lock() {
            all.push(line);
        }
    }
}

/// Runs `program` to completion under [`COMMAND_TIMEOUT`].
pub async fn run(program: impl Into<PathBuf>, args: &[String]) -> CmdOutput {
    RunningCommand::spawn(program, args).finish().await
}

/// [`run`] with extra environment variables.
pub async fn run_with_env(
    program: impl Into<PathBuf>,
    args: &[String],
    env: &[(&str, &str)],
) -> CmdOutput {
    RunningCommand::spawn_with_env(program, args, env)
        .finish()
        .await
}

/// `mosquitto_sub -F` format: one `MSG <retain> <qos> <topic> <payload>` line per message, easy to tell apart from
/// the `-d` debug lines.
pub const MOSQUITTO_SUB_FORMAT: &str = "MSG %r %q %t %p";

/// One message printed by `mosquitto_sub` with [`MOSQUITTO_SUB_FORMAT`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MosquittoMessage {
    /// The retain flag as delivered.
    pub retain: bool,
    /// The delivery QoS.
    pub qos: u8,
    /// The topic.
    pub topic: String,
    /// The payload (text).
    pub payload: String,
}

impl MosquittoMessage {
    /// The message a test expects.
    pub fn new(retain: bool, qos: u8, topic: &str, payload: &str) -> Self {
        Self {
            retain,
            qos,
            topic: topic.into(),
            payload: payload.into(),
        }
    }

    /// The messages among `lines` (the `-d` debug lines are skipped).
    fn parse_all(lines: &[String]) -> Vec<Self> {
        lines.iter().filter_map(|l| Self::parse(l)).collect()
    }

    fn parse(line: &str) -> Option<Self> {
        let rest = line.strip_prefix("MSG ")?;
        let mut parts = rest.splitn(4, ' ');
        let retain = parts.next()? == "1";
        let qos = parts.next()?.parse().ok()?;
        let topic = parts.next()?.to_string();
        let payload = parts.next().unwrap_or("").to_string();
        Some(Self {
            retain,
            qos,
            topic,
            payload,
        })
    }
}

fn host_port(addr: SocketAddr) -> Vec<String> {
    vec![
        "-h".into(),
        addr.ip().to_string(),
        "-p".into(),
        addr.port().to_string(),
    ]
}

/// `mosquitto_pub` against `addr` with the given extra arguments (`-t`, `-m`, `-q`, `-r`, `-i`, `-u`, `-P`, ...).
pub async fn mosquitto_pub(addr: SocketAddr, version: MqttVersion, extra: &[&str]) -> CmdOutput {
    let mut args = host_port(addr);
    args.extend(["-V".into(), version.mosquitto_flag().into()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    run("mosquitto_pub", &args).await
}

/// Starts `mosquitto_sub` against `addr` in debug mode (`-d`) with [`MOSQUITTO_SUB_FORMAT`], giving up after
/// `wait_secs` without a message (`-W`); pass `-t`, `-C`, `-q`, `-c`, `-i`, ... in `extra`. Wait for
/// `"SUBACK"` with [`RunningCommand::wait_for_line`] before publishing.
pub fn mosquitto_sub(
    addr: SocketAddr,
    version: MqttVersion,
    wait_secs: u32,
    extra: &[&str],
) -> RunningCommand {
    let mut args = host_port(addr);
    args.extend([
        "-V".into(),
        version.mosquitto_flag().into(),
        "-d".into(),
        "-W".into(),
        wait_secs.to_string(),
        "-F".into(),
        MOSQUITTO_SUB_FORMAT.into(),
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    // mosquitto_sub block-buffers stdout into a pipe: without line buffering the SUBACK line (and messages) would
    // only show up when it exits.
    args.insert(0, "mosquitto_sub".into());
    args.insert(0, "-oL".into());
    RunningCommand::spawn("stdbuf", &args)
}

/// The python interpreter that has paho (see the module docs).
pub fn python3() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("FLEETGATE_PYTHON") {
                return PathBuf::from(p);
            }
            ["/usr/bin/python3", "python3"]
                .into_iter()
                .find(|p| {
                    std::process::Command::new(p)
                        .args(["-c", "import paho.mqtt.client"])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success())
                })
                .map_or_else(|| PathBuf::from("/usr/bin/python3"), PathBuf::from)
        })
        .clone()
}

/// Path of a script in `testkit/py/`.
pub fn py_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("py")
        .join(name)
}

/// Starts `testkit/py/paho_client.py` against `addr` (see the script for its flags; it prints one JSON object per
/// event: `connack`, `suback`, `ready`, `published`, `msg`, `disconnect`, `done`).
pub fn paho(addr: SocketAddr, version: MqttVersion, extra: &[&str]) -> RunningCommand {
    let mut args = vec![
        py_script("paho_client.py").display().to_string(),
        "--host".into(),
        addr.ip().to_string(),
        "--port".into(),
        addr.port().to_string(),
        "--version".into(),
        version.paho_flag().into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    RunningCommand::spawn(python3(), &args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mosquitto_lines() {
        let m = MosquittoMessage::parse("MSG 1 2 a/b hello world").unwrap();
        assert_eq!(m, MosquittoMessage::new(true, 2, "a/b", "hello world"));
        assert!(MosquittoMessage::parse("Client mosq-1 received PUBLISH").is_none());
    }

    #[tokio::test]
    async fn runs_and_times_out_commands() {
        let out = run(
            "sh",
            &["-c".into(), "echo one; echo two >&2; exit 3".into()],
        )
        .await;
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout, vec!["one".to_string()]);
        assert_eq!(out.stderr, "two");
    }
}
