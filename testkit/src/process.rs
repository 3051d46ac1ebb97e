//! A running `fleetgate` child process: its stdout/stderr lines captured into a shared buffer, port discovery from
//! the `listening on <role> <addr>` log events (servers are started on port 0), signals (SIGTERM, SIGHUP, SIGKILL,
//! SIGSTOP with [`Frozen`]), SIGTERM then SIGKILL when dropped; and the scan of its logs for secrets.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The signals a test sends to a child ([`ServerProcess::signal`]).
pub use rustix::process::Signal;
use rustix::process::{Pid, kill_process};
use serde_json::Value;
use tempfile::TempDir;

use crate::wait::{WAIT, eventually, eventually_blocking};

/// How long a dropped process gets to exit after SIGTERM before SIGKILL: the node drains connections on SIGTERM,
/// and a test that did not wait for that must not leave a process behind.
pub const DROP_GRACE: Duration = Duration::from_secs(5);

/// How many of the last log lines are printed when a test panics while the process runs.
const LOG_TAIL_ON_PANIC: usize = 200;

/// A `fleetgate` child process with its log lines captured.
pub struct ServerProcess {
    name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl ServerProcess {
    /// Starts `bin` (pass `env!("CARGO_BIN_EXE_fleetgate")`) with `args`, JSON logs at `info` unless `RUST_LOG`
    /// is set in the test's environment.
    pub fn spawn<I, S>(bin: impl AsRef<Path>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::spawn_with_env(bin, args, std::iter::empty::<(String, String)>())
    }

    /// Like [`ServerProcess::spawn`], with extra environment variables.
    pub fn spawn_with_env<I, S, E, K, V>(bin: impl AsRef<Path>, args: I, env: E) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
        E: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let bin = bin.as_ref();
        let mut command = Command::new(bin);
        command
            .args(args)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(stdout) = child.stdout.take() {
            capture(stdout, lines.clone());
        }
        if let Some(stderr) = child.stderr.take() {
            capture(stderr, lines.clone());
        }
        let name = format!(
            "{} (pid {})",
            bin.file_name().unwrap_or_default().to_string_lossy(),
            child.id()
        );
        Self { name, child, lines }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every line printed so far (stdout and stderr interleaved as they arrived).
    pub fn logs(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The JSON log lines whose `event` field is `event`.
    pub fn events(&self, event: &str) -> Vec<Value> {
        self.json_logs()
            .into_iter()
            .filter(|v| v["event"] == event)
            .collect()
    }

    /// The lines printed so far that parse as JSON objects.
    pub fn json_logs(&self) -> Vec<Value> {
        self.logs()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(Value::is_object)
            .collect()
    }

    /// All log lines joined, for `contains` checks and failure messages.
    pub fn logs_text(&self) -> String {
        self.logs().join("\n")
    }

    /// Whether the child has exited (and with what status).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for the `"event":"listening"` line of `role` and returns its address; panics with the logs if the
    /// process exits first or nothing comes within [`WAIT`].
    pub async fn wait_for_listening(&mut self, role: &str) -> SocketAddr {
        let found = eventually(WAIT, || {
            let exited = self.child.try_wait().ok().flatten();
            let addr = self
                .logs()
                .iter()
                .find_map(|line| listening_addr(line, role));
            async move {
                match (addr, exited) {
                    (Some(addr), _) => Some(Ok(addr)),
                    (None, Some(status)) => Some(Err(status)),
                    (None, None) => None,
                }
            }
        })
        .await;
        match found {
            Ok(Ok(addr)) => addr,
            Ok(Err(status)) => panic!(
                "{} exited ({status}) before listening on {role:?}; logs:\n{}",
                self.name,
                self.logs_text()
            ),
            Err(e) => panic!(
                "{}: no listening line for {role:?}: {e}; logs:\n{}",
                self.name,
                self.logs_text()
            ),
        }
    }

    /// Waits until a JSON log line satisfies `matches` and returns it; panics with the logs after `deadline`.
    pub async fn wait_for_log(
        &self,
        deadline: Duration,
        what: &str,
        matches: impl Fn(&Value) -> bool,
    ) -> Value {
        let found = eventually(deadline, || {
            let hit = self.json_logs().into_iter().find(|v| matches(v));
            async move { hit }
        })
        .await;
        found.unwrap_or_else(|e| {
            panic!(
                "{}: no log line {what}: {e}; logs:\n{}",
                self.name,
                self.logs_text()
            )
        })
    }

    /// Sends SIGTERM and waits (asynchronously, so relays in the same runtime keep running) for the exit, up to
    /// `deadline`; SIGKILL after that. Returns the exit status and whether SIGKILL was needed.
    pub async fn terminate(&mut self, deadline: Duration) -> (ExitStatus, bool) {
        self.signal(Signal::TERM);
        let exited = eventually(deadline, || {
            let status = self.child.try_wait().ok().flatten();
            async move { status }
        })
        .await;
        match exited {
            Ok(status) => (status, false),
            Err(_) => {
                let _ = self.child.kill();
                let status = self
                    .child
                    .wait()
                    .unwrap_or_else(|e| panic!("{}: wait after SIGKILL: {e}", self.name));
                (status, true)
            }
        }
    }

    /// The process's resident memory (VmRSS) in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_else(|e| panic!("reading /proc/{}/status: {e}", self.pid()));
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or_else(|| panic!("no VmRSS for pid {}", self.pid()))
    }

    /// Sends `signal` to the child (`HUP` reloads, `KILL` is a crash without any goodbye).
    pub fn signal(&self, signal: Signal) {
        send_signal(self.child.id(), signal);
    }

    /// Freezes the child with SIGSTOP (its sockets stay open, nothing answers) until the [`Frozen`] is dropped.
    pub fn freeze(&self) -> Frozen {
        self.signal(Signal::STOP);
        Frozen {
            pid: self.child.id(),
        }
    }
}

/// A process frozen with SIGSTOP; SIGCONT when dropped, always (even when the test panics).
#[derive(Debug)]
pub struct Frozen {
    pid: u32,
}

impl Drop for Frozen {
    fn drop(&mut self) {
        send_signal(self.pid, Signal::CONT);
    }
}

/// Sends `signal` to `pid`; ESRCH (already exited, not yet reaped) is fine.
pub fn send_signal(pid: u32, signal: Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = kill_process(pid, signal);
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = self.logs();
            let tail = &logs[logs.len().saturating_sub(LOG_TAIL_ON_PANIC)..];
            eprintln!(
                "---- last {} log lines of {} ----\n{}",
                tail.len(),
                self.name,
                tail.join("\n")
            );
        }
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        self.signal(Signal::TERM);
        let child = &mut self.child;
        if eventually_blocking(DROP_GRACE, || child.try_wait().ok().flatten()).is_err() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads `stream` line by line into `lines` on its own thread (ends at EOF, when the child exits).
fn capture(stream: impl Read + Send + 'static, lines: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if std::env::var_os("FLEETGATE_TEST_ECHO").is_some() {
                eprintln!("{line}");
            }
            if let Ok(mut all) = lines.lock() {
                all.push(line);
            }
        }
    });
}

/// Panics when any of `lines` contains one of `secrets`, an argon2 hash or a certificate (no log line may).
pub fn assert_no_secrets(lines: &[String], secrets: &[&str]) {
    for line in lines {
        for s in secrets {
            assert!(!line.contains(s), "a log line contains a password: {line}");
        }
        assert!(
            !line.contains("$argon2"),
            "a log line contains a password hash: {line}"
        );
        assert!(
            !line.contains("BEGIN CERTIFICATE"),
            "a log line contains a certificate: {line}"
        );
    }
}

/// A fresh directory for the files a process under test reads (configs, ACL, password file); removed when dropped.
pub fn scratch_dir() -> TempDir {
    tempfile::tempdir().expect("tempdir for the test files")
}

/// The address of a `listening` line for `role`: the JSON event (`event`, `role`, `addr` fields), or the plain
/// text form `listening on <role> <addr>`.
pub fn listening_addr(line: &str, role: &str) -> Option<SocketAddr> {
    if let Ok(v) = serde_json::from_str::<Value>(line) {
        if v.get("event").and_then(Value::as_str) == Some("listening")
            && v.get("role").and_then(Value::as_str) == Some(role)
        {
            return v
                .get("addr")
                .and_then(Value::as_str)
                .and_then(|a| a.parse().ok());
        }
        return None;
    }
    let rest = line.split("listening on ").nth(1)?;
    let mut words = rest.split_whitespace();
    (words.next()? == role).then_some(())?;
    words.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_json_and_text_listening_lines() {
        let json = r#"{"level":"INFO","message":"listening on mqtt 127.0.0.1:4242","event":"listening","role":"mqtt","addr":"127.0.0.1:4242"}"#;
        assert_eq!(
            listening_addr(json, "mqtt"),
            Some("127.0.0.1:4242".parse().unwrap())
        );
        assert_eq!(listening_addr(json, "admin"), None);
        let text =
            "2026-01-01T00:00:00Z INFO listening on admin 127.0.0.1:9000 event=\"listening\"";
        assert_eq!(
            listening_addr(text, "admin"),
            Some("127.0.0.1:9000".parse().unwrap())
        );
    }

    #[tokio::test]
    async fn captures_output_and_terminates() {
        let mut p = ServerProcess::spawn(
            "sh",
            [
                "-c",
                "echo '{\"event\":\"listening\",\"role\":\"x\",\"addr\":\"127.0.0.1:1\"}' >&2; exec sleep 30",
            ],
        );
        assert_eq!(
            p.wait_for_listening("x").await,
            "127.0.0.1:1".parse().unwrap()
        );
        let (status, killed) = p.terminate(Duration::from_secs(5)).await;
        assert!(!killed && !status.success());
    }
}
