//! The Kubernetes manifests in `k8s/`, checked offline (`configs`, `security`, `validate`): every config the pods
//! get passes the real `fleetgate check`; the broker StatefulSet's arguments (`--name $(POD_NAME)
//! --advertise-host $(POD_IP)`, the downward API) applied to `node.toml` give each pod its identity, and the peers
//! come from the headless Service's `cluster` SRV records; the grace periods of the manifests cover the drains the
//! configs ask for; both binaries' admin tokens come from the Secret the pods mount, their probes from the probe
//! ports, and the NetworkPolicies admit the admin ports only from this namespace and the monitoring one; and every
//! manifest passes kubernetes-validate (`-k 1.33.0 --strict`, schemas shipped in the PyPI package; installed by
//! `scripts/test`, required under `CI=true`). When `kubectl` is installed, the whole kustomization (`kubectl
//! kustomize k8s/`, with the generated ConfigMaps) is validated too; kustomize alone is not needed.

#[path = "../common/mod.rs"]
mod common;

mod configs;
mod security;
mod validate;

use std::ffi::OsStr;
use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use common::BIN;
use fleetgate_config::node::{NodeConfig, NodeOverrides};
use fleetgate_testkit::{eventually_blocking, scratch_dir};

/// Bound on one external command (`sh`, `fleetgate check`, kubernetes-validate, kubectl): each takes well under
/// a second here; this only stops a hung one from hanging the suite.
const COMMAND_DEADLINE: Duration = Duration::from_secs(120);
/// Kubernetes version the manifests are validated against (schemas shipped by kubernetes-validate).
const KUBERNETES_VERSION: &str = "1.33.0";
/// Least time a pod's terminationGracePeriodSeconds must leave after the binary's own drain deadline, for the
/// process to exit before the kubelet's SIGKILL.
const GRACE_MARGIN: Duration = Duration::from_secs(5);
/// Every file under `k8s/config/`, each checked by a test below; a new one must get a check.
const CONFIG_FILES: [&str; 3] = ["acl.toml", "lb.toml", "node.toml"];
/// The container arguments of the broker StatefulSet: one config file, each pod's identity from the downward API.
const NODE_ARGS: [&str; 7] = [
    "node",
    "--config",
    "/etc/fleetgate/node.toml",
    "--name",
    "$(POD_NAME)",
    "--advertise-host",
    "$(POD_IP)",
];
/// The SRV name the brokers find each other by: the `cluster` port of the headless Service `broker`.
const CLUSTER_SRV: &str = "_cluster._tcp.broker.fleetgate.svc.cluster.local.";

fn k8s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Output of a finished command.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "{}\n--- stdout\n{}--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }

    /// Asserts exit 0, showing `what` and the output otherwise.
    fn assert_success(&self, what: impl std::fmt::Display) {
        assert!(self.status.success(), "{what}: {}", self.describe());
    }
}

/// Runs `command` to completion under [`COMMAND_DEADLINE`], output captured through files (no pipe to fill).
fn run(mut command: Command) -> Run {
    let out = scratch_dir();
    let stdout_path = out.path().join("stdout");
    let stderr_path = out.path().join("stderr");
    let what = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let exited = eventually_blocking(COMMAND_DEADLINE, || {
        child.try_wait().expect("waiting for the child")
    });
    let Ok(status) = exited else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{what} still running after {COMMAND_DEADLINE:?}");
    };
    Run {
        status,
        stdout: read(&stdout_path),
        stderr: read(&stderr_path),
    }
}

/// `fleetgate check FILE`, asserting exit 0 and the kind it reports.
fn check_ok(file: &Path, kind: &str) {
    let mut command = Command::new(BIN);
    command.arg("check").arg(file);
    let out = run(command);
    out.assert_success(format_args!("fleetgate check {}", file.display()));
    assert!(
        out.stdout.contains(&format!("ok ({kind})")),
        "{}",
        out.describe()
    );
}

/// A directory laid out like the pod's `/etc/fleetgate` (node.toml from the broker-config ConfigMap, the
/// broker-acl ConfigMap at `acl/acl.toml`). Returns the node.toml in it.
fn pod_config_dir(dir: &Path) -> PathBuf {
    let config = k8s_dir().join("config");
    fs::create_dir(dir.join("acl")).expect("acl dir");
    fs::copy(config.join("acl.toml"), dir.join("acl/acl.toml")).expect("copy acl.toml");
    let file = dir.join("node.toml");
    fs::copy(config.join("node.toml"), &file).expect("copy node.toml");
    file
}

/// The `- ` items of the first `args:` list in `manifest`.
fn container_args(manifest: &str) -> Vec<String> {
    let text = read(&k8s_dir().join(manifest));
    let mut lines = text.lines().skip_while(|l| l.trim() != "args:").skip(1);
    let mut args = Vec::new();
    for line in lines.by_ref() {
        match line.trim().strip_prefix("- ") {
            Some(arg) => args.push(arg.trim_matches('"').to_string()),
            None => break,
        }
    }
    args
}

/// The node config pod `name` with IP `ip` runs: `file` with the StatefulSet's arguments applied, `$(POD_NAME)`
/// and `$(POD_IP)` expanded as the kubelet does.
fn pod_config(file: &Path, name: &str, ip: &str) -> NodeConfig {
    let args = container_args("broker-statefulset.yaml");
    let value = |flag: &str| {
        let at = args.iter().position(|a| a == flag)?;
        let v = args.get(at + 1)?;
        Some(v.replace("$(POD_NAME)", name).replace("$(POD_IP)", ip))
    };
    let overrides = NodeOverrides {
        name: value("--name"),
        advertise_host: value("--advertise-host").map(|h| h.parse::<IpAddr>().expect("an IP")),
    };
    NodeConfig::load(file)
        .expect("k8s/config/node.toml")
        .with_overrides(file, &overrides)
        .unwrap_or_else(|e| panic!("{name} {ip}: {e}"))
}

fn socket(text: &str) -> SocketAddr {
    text.parse().expect("socket address")
}

/// The integer after `key:` in a manifest, from the one line that sets it.
fn manifest_number(file: &str, key: &str) -> u64 {
    let text = read(&k8s_dir().join(file));
    let values: Vec<u64> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix(':'))
        .map(|v| v.trim().parse().expect("a number"))
        .collect();
    assert_eq!(values.len(), 1, "{file}: expected one `{key}:`");
    values[0]
}

/// The manifests `kubectl apply -k` applies besides the generated ConfigMaps: every `*.yaml` in `k8s/` but the
/// kustomization itself.
fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(k8s_dir())
        .expect("k8s/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension() == Some(OsStr::new("yaml")))
        .filter(|p| p.file_name() != Some(OsStr::new("kustomization.yaml")))
        .collect();
    files.sort();
    files
}

/// True when an executable `name` is in one of the `PATH` directories.
fn on_path(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            fs::metadata(dir.join(name)).is_ok_and(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
        })
    })
}

/// An interpreter that can run kubernetes-validate: `$FLEETGATE_PYTHON` (what `scripts/test` installed it for),
/// else the first of `/usr/bin/python3` and `python3` that has it.
fn validator_python() -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = match std::env::var_os("FLEETGATE_PYTHON") {
        Some(p) => vec![PathBuf::from(p)],
        None => vec![PathBuf::from("/usr/bin/python3"), PathBuf::from("python3")],
    };
    candidates.into_iter().find(|python| {
        Command::new(python)
            .args(["-c", "import kubernetes_validate"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// The YAML documents of `file`, as JSON, read by `python`'s PyYAML (a dependency of kubernetes-validate).
fn yaml_documents(python: &Path, file: &Path) -> Vec<serde_json::Value> {
    let mut command = Command::new(python);
    command.args([
        "-c",
        "import json, sys, yaml\nprint(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
    ]);
    command.arg(file);
    let out = run(command);
    out.assert_success(format_args!("YAML of {}", file.display()));
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("YAML of {} as JSON: {e}: {}", file.display(), out.stdout))
}

/// The interpreter for [`yaml_documents`] and kubernetes-validate, or `None` after printing why `test` is skipped
/// (a failure under `CI=true`).
fn python_or_skip(test: &str) -> Option<PathBuf> {
    let python = validator_python();
    if python.is_none() {
        let message = "kubernetes-validate is not installed (scripts/test installs it: \
                       python3 -m pip install kubernetes-validate)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{message}");
        }
        eprintln!("SKIPPED {test}: {message}");
    }
    python
}
