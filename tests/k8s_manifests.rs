//! The Kubernetes manifests in `k8s/`, checked offline: every config the pods get passes the real
//! `fleetgate check`; the broker StatefulSet's arguments (`--name $(POD_NAME) --advertise-host $(POD_IP)`, the
//! downward API) applied to `node.toml` give each pod its identity, and the peers come from the headless Service's
//! `cluster` SRV records; the grace periods of the manifests cover the drains the configs ask for; and every
//! manifest passes kubernetes-validate (`-k 1.33.0 --strict`, schemas shipped in the PyPI package; installed by
//! `scripts/test`, required under `CI=true`). When `kubectl` is installed, the whole kustomization (`kubectl
//! kustomize k8s/`, with the generated ConfigMaps) is validated too; kustomize alone is not needed.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use common::BIN;
use fleetgate_config::discovery::{DiscoverySource, SrvNaming};
use fleetgate_config::lb::LbConfig;
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
    assert!(
        out.status.success(),
        "fleetgate check {}: {}",
        file.display(),
        out.describe()
    );
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

#[test]
fn kustomization_lists_every_manifest_and_config_file() {
    let kustomization = read(&k8s_dir().join("kustomization.yaml"));
    let listed: Vec<&str> = kustomization
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .collect();
    for manifest in manifests() {
        let name = manifest.file_name().and_then(OsStr::to_str).expect("name");
        assert!(
            listed.contains(&name),
            "{name} is not in k8s/kustomization.yaml"
        );
    }
    let configs: BTreeSet<String> = fs::read_dir(k8s_dir().join("config"))
        .expect("k8s/config/")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let expected: BTreeSet<String> = CONFIG_FILES.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        configs, expected,
        "k8s/config/ changed: give every file a check in this test"
    );
    for file in CONFIG_FILES {
        let entry = format!("config/{file}");
        assert!(
            listed.contains(&entry.as_str()),
            "{entry} is not in a configMapGenerator of k8s/kustomization.yaml"
        );
    }
}

#[test]
fn node_config_checks_and_each_pod_gets_its_identity_from_its_arguments() {
    let dir = scratch_dir();
    let file = pod_config_dir(dir.path());
    check_ok(&file, "node config");
    assert_eq!(container_args("broker-statefulset.yaml"), NODE_ARGS);
    let statefulset = read(&k8s_dir().join("broker-statefulset.yaml"));
    for (var, field) in [("POD_NAME", "metadata.name"), ("POD_IP", "status.podIP")] {
        let env = format!(
            "- name: {var}\n              valueFrom:\n                fieldRef:\n                  fieldPath: {field}\n"
        );
        assert!(
            statefulset.contains(&env),
            "{var} from the downward API ({field})"
        );
    }
    assert!(!statefulset.contains("initContainers"), "nothing to render");

    let config = pod_config(&file, "broker-1", "10.244.1.7");
    assert_eq!(config.name, "broker-1");
    let cluster = config.cluster.as_ref().expect("[cluster]");
    assert_eq!(cluster.advertise, Some(socket("10.244.1.7:7000")));
    assert_eq!(cluster.bind.port(), 7000);
    assert!(cluster.peers.is_empty(), "peers come from DNS");
    let discovery = cluster.peers_from.as_ref().expect("[cluster] peers_from");
    assert_eq!(
        discovery.source,
        DiscoverySource::DnsSrv {
            name: CLUSTER_SRV.into(),
            name_from: SrvNaming::FirstLabel
        },
        "SRV target broker-N.broker... names the peer broker-N, its pod name and its --name"
    );
    // The SRV name is the headless Service's `cluster` port on that port.
    let service = read(&k8s_dir().join("broker-service.yaml"));
    assert!(service.contains("  name: broker\n  namespace: fleetgate\n"));
    assert!(
        service.contains("  clusterIP: None\n")
            && service.contains("publishNotReadyAddresses: true")
    );
    assert!(
        service.contains("    - name: cluster\n      port: 7000\n"),
        "{service}"
    );

    // IPv6 pod network.
    let config = pod_config(&file, "broker-3", "fd00:10:244::7");
    assert_eq!(
        config.cluster.as_ref().and_then(|c| c.advertise),
        Some(socket("[fd00:10:244::7]:7000"))
    );
}

/// The cluster links are mutual TLS with a certificate per pod: node.toml reads it from the `cluster-tls` mount,
/// the StatefulSet fills that mount from cert-manager's csi-driver with the pod name (the node name, `--name
/// $(POD_NAME)`) as DNS SAN, from the Issuer that k8s/cert-manager/cluster-ca.yaml makes a CA issuer.
#[test]
fn cluster_links_use_a_certificate_per_pod_of_the_cluster_ca() {
    let dir = scratch_dir();
    let file = pod_config_dir(dir.path());
    let config = pod_config(&file, "broker-1", "10.244.1.7");
    let cluster = config.cluster.as_ref().expect("[cluster]");
    assert!(!cluster.insecure_plaintext);
    let tls = cluster
        .tls
        .as_ref()
        .expect("[cluster.tls]: links off loopback need it");
    let mount = Path::new("/etc/fleetgate/cluster-tls");
    let in_mount = |p: &Path| {
        p.strip_prefix(file.parent().expect("dir"))
            .map(|rel| mount.join(rel.strip_prefix("cluster-tls").expect("under cluster-tls/")))
    };
    assert_eq!(in_mount(&tls.cert).ok(), Some(mount.join("tls.crt")));
    assert_eq!(in_mount(&tls.key).ok(), Some(mount.join("tls.key")));
    assert_eq!(in_mount(&tls.ca).ok(), Some(mount.join("ca.crt")));

    let statefulset = read(&k8s_dir().join("broker-statefulset.yaml"));
    assert!(
        statefulset.contains(
            "            - name: cluster-tls\n              mountPath: /etc/fleetgate/cluster-tls\n"
        ),
        "cluster-tls mounted where node.toml reads it"
    );
    let volume = statefulset
        .split("\n        - name: cluster-tls\n")
        .nth(1)
        .expect("a cluster-tls volume");
    for line in [
        "driver: csi.cert-manager.io",
        "csi.cert-manager.io/issuer-name: fleetgate-cluster-ca",
        "csi.cert-manager.io/issuer-kind: Issuer",
        // The first DNS SAN is the pod name: the node name its Hello claims and its peers check.
        "csi.cert-manager.io/dns-names: ${POD_NAME},",
        "csi.cert-manager.io/key-usages: digital signature,server auth,client auth",
        "csi.cert-manager.io/fs-group: \"65532\"",
    ] {
        assert!(volume.contains(line), "cluster-tls volume lacks {line:?}");
    }
    assert!(statefulset.contains("runAsUser: 65532"));

    let ca = read(&k8s_dir().join("cert-manager/cluster-ca.yaml"));
    let docs: Vec<&str> = ca.split("\n---\n").collect();
    let kind = |d: &str, k: &str| d.lines().any(|l| l == format!("kind: {k}"));
    let issuer = docs
        .iter()
        .find(|d| kind(d, "Issuer") && d.contains("\n  name: fleetgate-cluster-ca\n"))
        .expect("the CA Issuer fleetgate-cluster-ca");
    assert!(
        issuer.contains("  ca:\n    secretName: fleetgate-cluster-ca\n"),
        "{issuer}"
    );
    let certificate = docs
        .iter()
        .find(|d| kind(d, "Certificate"))
        .expect("the CA certificate");
    assert!(
        certificate.contains("  isCA: true\n")
            && certificate.contains("  secretName: fleetgate-cluster-ca\n"),
        "{certificate}"
    );
    for doc in docs {
        assert!(
            doc.contains("apiVersion: cert-manager.io/v1\n")
                && doc.contains("  namespace: fleetgate\n"),
            "{doc}"
        );
    }
}

#[test]
fn node_refuses_arguments_that_are_no_pod_identity() {
    let dir = scratch_dir();
    let file = pod_config_dir(dir.path());
    for (flag, value, code) in [
        ("--name", "broker 0", 1),
        ("--name", "", 1),
        ("--advertise-host", "10.0.0.1/8", 2),
        ("--advertise-host", "broker-0", 2),
    ] {
        let mut command = Command::new(BIN);
        command
            .args(["--log-format", "text", "node", "--config"])
            .arg(&file)
            .args([flag, value]);
        let out = run(command);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{flag} {value:?}: {}",
            out.describe()
        );
        assert!(
            out.stderr.contains(flag),
            "{flag} {value:?}: {}",
            out.describe()
        );
    }
}

#[test]
fn lb_config_checks() {
    let file = k8s_dir().join("config/lb.toml");
    check_ok(&file, "lb config");
    let config = LbConfig::load(&file).expect("k8s/config/lb.toml");
    let discovery = config.discovery.expect("[discovery]");
    let shown = format!("{:?}", discovery.endpoints.source);
    assert!(
        shown.contains("_mqtt._tcp.broker.fleetgate.svc.cluster.local."),
        "the SRV name of the headless Service's `mqtt` port: {shown}"
    );
    let tls_paths: Vec<PathBuf> = config
        .listeners
        .iter()
        .filter_map(|l| l.tls.as_ref())
        .flat_map(|t| {
            t.certificates
                .iter()
                .flat_map(|c| [c.cert.clone(), c.key.clone()])
                .chain(t.client_ca.clone())
        })
        .collect();
    assert_eq!(
        tls_paths,
        [
            "/etc/fleetgate/tls/tls.crt",
            "/etc/fleetgate/tls/tls.key",
            "/etc/fleetgate/device-ca/ca.crt"
        ]
        .map(PathBuf::from),
        "the Secret mounts of lb-deployment.yaml"
    );
}

#[test]
fn grace_periods_cover_the_drains_and_ports_agree() {
    let lb = LbConfig::load(&k8s_dir().join("config/lb.toml")).expect("lb.toml");
    let lb_grace = Duration::from_secs(manifest_number(
        "lb-deployment.yaml",
        "terminationGracePeriodSeconds",
    ));
    assert!(
        lb.drain.delay + lb.shutdown_grace + GRACE_MARGIN <= lb_grace,
        "LB: [drain] delay {:?} + shutdown_grace {:?} + {GRACE_MARGIN:?} > terminationGracePeriodSeconds {lb_grace:?}",
        lb.drain.delay,
        lb.shutdown_grace
    );

    let dir = scratch_dir();
    let node = pod_config(&pod_config_dir(dir.path()), "broker-0", "10.244.0.5");
    let node_grace = Duration::from_secs(manifest_number(
        "broker-statefulset.yaml",
        "terminationGracePeriodSeconds",
    ));
    assert!(
        node.shutdown_grace + GRACE_MARGIN <= node_grace,
        "node: shutdown_grace {:?} + {GRACE_MARGIN:?} > terminationGracePeriodSeconds {node_grace:?}",
        node.shutdown_grace
    );

    // The LB checks each broker's /readyz on the node's admin port; the probes and the Services use the same
    // ports.
    let health = &lb.discovery.as_ref().expect("[discovery]").template.health;
    let admin = node.admin.as_ref().expect("node [admin]").bind;
    assert_eq!(health.http_port, Some(admin.port()));
    assert_eq!(health.http_path, "/readyz");
    assert_eq!(node.listeners.len(), 1);
    assert_eq!(node.listeners[0].bind.port(), 1883);
    let statefulset = read(&k8s_dir().join("broker-statefulset.yaml"));
    let lb_deployment = read(&k8s_dir().join("lb-deployment.yaml"));
    for (manifest, text, port) in [
        ("broker-statefulset.yaml", &statefulset, admin.port()),
        ("broker-statefulset.yaml", &statefulset, 1883),
        (
            "broker-statefulset.yaml",
            &statefulset,
            node.cluster.as_ref().expect("[cluster]").bind.port(),
        ),
        (
            "lb-deployment.yaml",
            &lb_deployment,
            lb.admin.as_ref().expect("lb [admin]").bind.port(),
        ),
    ] {
        assert!(
            text.contains(&format!("containerPort: {port}\n")),
            "{manifest} has no containerPort {port}"
        );
    }
    for listener in &lb.listeners {
        let port = listener.bind.port();
        assert!(
            lb_deployment.contains(&format!("containerPort: {port}\n")),
            "lb-deployment.yaml has no containerPort {port} for listener {}",
            listener.name
        );
    }
    assert!(statefulset.contains(&format!("prometheus.io/port: \"{}\"", admin.port())));
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

/// Runs kubernetes-validate (strict, [`KUBERNETES_VERSION`]) over `files`.
fn kubernetes_validate(python: &Path, files: &[PathBuf]) -> Run {
    let mut command = Command::new(python);
    command
        .args([
            "-m",
            "kubernetes_validate",
            "-k",
            KUBERNETES_VERSION,
            "--strict",
        ])
        .args(files);
    run(command)
}

/// Asserts every resource passed: exit 0 and no WARN (an unknown kind or apiVersion only warns), ERROR or FATAL.
fn assert_valid(out: &Run, expected_resources: usize) {
    assert!(
        out.status.success(),
        "kubernetes-validate: {}",
        out.describe()
    );
    let bad: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| !l.starts_with("INFO "))
        .collect();
    assert!(bad.is_empty(), "kubernetes-validate: {}", out.describe());
    let passed = out
        .stdout
        .lines()
        .filter(|l| l.contains(" passed "))
        .count();
    assert_eq!(passed, expected_resources, "{}", out.describe());
}

#[test]
fn manifests_pass_kubernetes_validate() {
    let Some(python) = validator_python() else {
        let message = "kubernetes-validate is not installed (scripts/test installs it: \
                       python3 -m pip install kubernetes-validate)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{message}");
        }
        eprintln!("SKIPPED manifests_pass_kubernetes_validate: {message}");
        return;
    };
    let files = manifests();
    assert!(files.len() >= 8, "{files:?}");
    // One resource per file.
    assert_valid(&kubernetes_validate(&python, &files), files.len());

    // The validator is strict: an unknown field fails (a misspelt key must not pass silently).
    let dir = scratch_dir();
    let service = read(&k8s_dir().join("lb-service.yaml"));
    let misspelt = service.replace(
        "  externalTrafficPolicy: Local\n",
        "  externalTrafficPolicy: Local\n  externalTraficPolicy: Local\n",
    );
    assert_ne!(misspelt, service);
    let bad = dir.path().join("lb-service.yaml");
    fs::write(&bad, misspelt).expect("write");
    let out = kubernetes_validate(&python, &[bad]);
    assert!(
        !out.status.success() && out.stdout.contains("externalTraficPolicy"),
        "a misspelt field passed: {}",
        out.describe()
    );

    // The whole kustomization with its generated ConfigMaps, when kubectl (which embeds kustomize) is here.
    if !on_path("kubectl") {
        eprintln!(
            "kubectl not found: the kustomization build is not validated (each manifest and config was)"
        );
        return;
    }
    let mut command = Command::new("kubectl");
    command.arg("kustomize").arg(k8s_dir());
    let built = run(command);
    assert!(
        built.status.success(),
        "kubectl kustomize: {}",
        built.describe()
    );
    for configmap in [
        "name: broker-config-",
        "name: broker-acl\n",
        "name: lb-config\n",
    ] {
        assert!(
            built.stdout.contains(configmap),
            "kustomize build has no ConfigMap {configmap:?}"
        );
    }
    let rendered = dir.path().join("kustomize-build.yaml");
    fs::write(&rendered, &built.stdout).expect("write build");
    // Every manifest plus the three generated ConfigMaps.
    assert_valid(&kubernetes_validate(&python, &[rendered]), files.len() + 3);
}
