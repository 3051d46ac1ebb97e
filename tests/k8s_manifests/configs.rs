//! The configs the pods get and what the manifests give them: `fleetgate check` on every file of `k8s/config/`,
//! each broker pod's identity from its arguments, the cluster certificate per pod, the grace periods and ports.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fleetgate_config::discovery::{DiscoverySource, SrvNaming};
use fleetgate_config::lb::LbConfig;
use fleetgate_testkit::scratch_dir;

use crate::*;

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

    // The LB checks each broker's /readyz on the node's probe port; the probes and the Services use the same
    // ports.
    let health = &lb.discovery.as_ref().expect("[discovery]").template.health;
    let admin = node.admin.as_ref().expect("node [admin]").bind;
    let node_probe = node
        .admin
        .as_ref()
        .and_then(|a| a.probe_bind)
        .expect("node probe_bind");
    assert_eq!(health.http_port, Some(node_probe.port()));
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

/// The memory limit of the one container in `manifest`, in bytes (`Mi` and `Gi` quantities).
fn memory_limit(manifest: &str) -> u64 {
    let text = read(&k8s_dir().join(manifest));
    let mut lines = text.lines().skip_while(|l| l.trim() != "limits:").skip(1);
    let value = lines
        .find_map(|l| l.trim().strip_prefix("memory:"))
        .unwrap_or_else(|| panic!("{manifest}: no memory limit"))
        .trim();
    quantity(manifest, value)
}

/// A Kubernetes quantity in `Mi` or `Gi`, in bytes.
fn quantity(manifest: &str, value: &str) -> u64 {
    let (number, unit) = value.split_at(value.len() - 2);
    let number: u64 = number
        .parse()
        .unwrap_or_else(|_| panic!("{manifest}: memory {value}"));
    match unit {
        "Mi" => number << 20,
        "Gi" => number << 30,
        _ => panic!("{manifest}: memory {value}: not Mi or Gi"),
    }
}

/// The node's `memory_budget` (queues, in-flight and retained messages) is set in node.toml, not left to the
/// default, and leaves at least half of the pod's memory limit to everything else the node holds.
#[test]
fn node_memory_budget_is_at_most_half_the_pod_limit() {
    let text = read(&k8s_dir().join("config/node.toml"));
    assert!(
        text.lines().any(|l| l.starts_with("memory_budget = ")),
        "k8s/config/node.toml sets [limits] memory_budget explicitly"
    );
    let dir = scratch_dir();
    let node = pod_config(&pod_config_dir(dir.path()), "broker-0", "10.244.0.5");
    let budget = node.limits.memory_budget as u64;
    let limit = memory_limit("broker-statefulset.yaml");
    assert!(
        budget * 2 <= limit,
        "memory_budget {budget} is more than half the pod's memory limit {limit}"
    );
}

/// Each broker stores its sessions on a claim of its own (`volumeClaimTemplates`), mounted where node.toml's
/// `[storage] path` points, and the store's `max_bytes` leaves part of the claim to its journals.
#[test]
fn node_store_is_on_the_pods_own_claim_and_fits_it() {
    let dir = scratch_dir();
    let node = pod_config(&pod_config_dir(dir.path()), "broker-0", "10.244.0.5");
    let fleetgate_config::node::StorageMode::Disk { path, max_bytes } = &node.storage else {
        panic!("k8s/config/node.toml: [storage] mode is not \"disk\"");
    };
    let statefulset = read(&k8s_dir().join("broker-statefulset.yaml"));
    let mount = format!("- name: store\n              mountPath: {}", path.display());
    assert!(
        statefulset.contains(&mount),
        "the `store` claim is not mounted at {}",
        path.display()
    );
    let claim = statefulset
        .split("volumeClaimTemplates:")
        .nth(1)
        .expect("a volumeClaimTemplates section");
    assert!(claim.contains("name: store"), "no claim named store");
    let size = claim
        .lines()
        .find_map(|l| l.trim().strip_prefix("storage:"))
        .map(|v| quantity("broker-statefulset.yaml", v.trim()))
        .expect("the claim's storage request");
    assert!(
        *max_bytes * 10 <= size * 9,
        "[storage] max_bytes {max_bytes} leaves less than a tenth of the {size}-byte claim"
    );
}
