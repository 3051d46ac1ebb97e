//! The admin surfaces on Kubernetes: both binaries bind their admin port off loopback with a bearer token read from
//! the Secret `fleetgate-admin-token` their pods mount, answer the kubelet's probes on the probe port of
//! `[admin] probe_bind` (as the LBs' health checks of the brokers do), and the NetworkPolicies admit the admin ports
//! only from this namespace and the monitoring one, the probe and MQTT ports from wherever they must.

use std::path::Path;

use fleetgate_config::admin::AdminConfig;
use fleetgate_config::lb::LbConfig;
use fleetgate_config::node::NodeConfig;
use fleetgate_testkit::scratch_dir;
use serde_json::{Value, json};

use crate::*;

/// The Secret holding the admin token (key [`TOKEN_KEY`]), shared by the LBs and the brokers.
const TOKEN_SECRET: &str = "fleetgate-admin-token";
/// The key of [`TOKEN_SECRET`] that holds the token.
const TOKEN_KEY: &str = "token";
/// Where both kinds of pod mount [`TOKEN_SECRET`].
const TOKEN_MOUNT: &str = "/etc/fleetgate/admin";
/// The namespace Prometheus runs in, admitted to the admin ports.
const MONITORING_NAMESPACE: &str = "monitoring";

/// The LB config and a broker pod's config, its file laid out in `dir` like the pod's `/etc/fleetgate`.
fn configs(dir: &Path) -> (LbConfig, NodeConfig) {
    let lb = LbConfig::load(&k8s_dir().join("config/lb.toml")).expect("lb.toml");
    let node = pod_config(&pod_config_dir(dir), "broker-0", "10.244.0.5");
    (lb, node)
}

/// The `[admin]` table of a config.
fn admin(table: &Option<AdminConfig>, what: &str) -> AdminConfig {
    table.clone().unwrap_or_else(|| panic!("{what} [admin]"))
}

/// The one container of the pod template in `manifest`.
fn container(python: &Path, manifest: &str) -> (Value, Value) {
    let docs = yaml_documents(python, &k8s_dir().join(manifest));
    let spec = docs[0]["spec"]["template"]["spec"].clone();
    let containers = spec["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "{manifest}: one container");
    (containers[0].clone(), spec)
}

/// The `containerPort` named `name` of `container`.
fn port_named(container: &Value, name: &str) -> u64 {
    container["ports"]
        .as_array()
        .and_then(|ports| ports.iter().find(|p| p["name"] == name))
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no containerPort named {name}: {container}"))
}

#[test]
fn admin_tokens_come_from_the_secret_and_probes_from_the_probe_ports() {
    let dir = scratch_dir();
    let (lb_config, node_config) = configs(dir.path());
    let (lb, node) = (
        admin(&lb_config.admin, "lb"),
        admin(&node_config.admin, "node"),
    );
    let Some(python) =
        python_or_skip("admin_tokens_come_from_the_secret_and_probes_from_the_probe_ports")
    else {
        return;
    };
    let pod_etc = dir.path();
    let mount = Path::new(TOKEN_MOUNT);
    // The LB names the file absolutely; the node relative to /etc/fleetgate (its node.toml's directory).
    let node_token = node
        .token_file
        .as_ref()
        .and_then(|f| f.strip_prefix(pod_etc).ok())
        .map(|rel| Path::new("/etc/fleetgate").join(rel));
    for (what, admin, token_file, manifest) in [
        ("lb", &lb, lb.token_file.clone(), "lb-deployment.yaml"),
        ("node", &node, node_token, "broker-statefulset.yaml"),
    ] {
        assert!(
            !admin.bind.ip().is_loopback(),
            "{what}: the admin port is for Prometheus and operators in the cluster"
        );
        assert_eq!(
            token_file,
            Some(mount.join(TOKEN_KEY)),
            "{what}: token_file is the Secret's key in its mount"
        );
        let (container, spec) = container(&python, manifest);
        let mounted = container["volumeMounts"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["mountPath"] == TOKEN_MOUNT))
            .unwrap_or_else(|| panic!("{manifest}: nothing mounted at {TOKEN_MOUNT}"));
        assert_eq!(mounted["readOnly"], true, "{manifest}");
        let volume = spec["volumes"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == mounted["name"]))
            .unwrap_or_else(|| panic!("{manifest}: no volume {}", mounted["name"]));
        assert_eq!(
            volume["secret"]["secretName"], TOKEN_SECRET,
            "{manifest}: {volume}"
        );
        assert_eq!(
            volume["secret"]["items"],
            json!([{"key": TOKEN_KEY, "path": TOKEN_KEY}]),
            "{manifest}"
        );
        // Readable by the owner and the group only; the pod's fsGroup makes the group its user's.
        assert_eq!(volume["secret"]["defaultMode"], 0o440, "{manifest}");
        let security = &spec["securityContext"];
        assert!(
            security["fsGroup"].is_u64() && security["fsGroup"] == security["runAsGroup"],
            "{manifest}: the token file is readable by the container's group: {security}"
        );

        // The kubelet asks the probe port, which nothing else uses; /metrics stays on the admin port.
        let probe = admin
            .probe_bind
            .unwrap_or_else(|| panic!("{what}: probe_bind"));
        assert_eq!(
            port_named(&container, "probe"),
            u64::from(probe.port()),
            "{manifest}"
        );
        assert_eq!(
            port_named(&container, "admin"),
            u64::from(admin.bind.port()),
            "{manifest}"
        );
        for (kind, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
            assert_eq!(
                container[kind]["httpGet"],
                json!({"path": path, "port": "probe"}),
                "{manifest} {kind}"
            );
        }
    }
    // The LBs' health checks of the brokers ask the brokers' probe port too.
    let health = &lb_config.discovery.expect("[discovery]").template.health;
    assert_eq!(health.http_port, node.probe_bind.map(|p| p.port()));
    assert_eq!(health.http_path, "/readyz");
}

/// The ingress rules of the NetworkPolicy in `manifest`, after checking that it selects the pods of `component`.
fn ingress_rules(python: &Path, manifest: &str, component: &str) -> Vec<Value> {
    let docs = yaml_documents(python, &k8s_dir().join(manifest));
    let policy = &docs[0];
    assert_eq!(policy["kind"], "NetworkPolicy", "{manifest}");
    assert_eq!(policy["metadata"]["namespace"], "fleetgate", "{manifest}");
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"],
        json!({"app.kubernetes.io/name": "fleetgate", "app.kubernetes.io/component": component}),
        "{manifest}"
    );
    assert_eq!(
        policy["spec"]["policyTypes"],
        json!(["Ingress"]),
        "{manifest}"
    );
    policy["spec"]["ingress"]
        .as_array()
        .unwrap_or_else(|| panic!("{manifest}: ingress rules"))
        .clone()
}

/// Who a policy's rules admit to TCP `port`: `None` when some rule admits anyone, else every `from` peer of the
/// rules that cover it (empty: nobody). As Kubernetes reads a rule: no `ports` covers every port, no `protocol`
/// is TCP, no `from` is anyone.
fn admitted(rules: &[Value], port: u16) -> Option<Vec<Value>> {
    let mut peers = Vec::new();
    for rule in rules {
        let covers = rule
            .get("ports")
            .and_then(Value::as_array)
            .is_none_or(|ports| {
                ports.iter().any(|p| {
                    p["port"] == port && p.get("protocol").is_none_or(|proto| proto == "TCP")
                })
            });
        if !covers {
            continue;
        }
        match rule.get("from").and_then(Value::as_array) {
            None => return None,
            Some(from) => peers.extend(from.iter().cloned()),
        }
    }
    Some(peers)
}

/// The peers of an admin port: any pod of the policy's own namespace, and the monitoring namespace.
fn this_and_the_monitoring_namespace() -> Vec<Value> {
    vec![
        json!({"podSelector": {}}),
        json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": MONITORING_NAMESPACE}}}),
    ]
}

#[test]
fn network_policies_admit_the_admin_ports_only_from_this_and_the_monitoring_namespace() {
    let dir = scratch_dir();
    let (lb_config, pod) = configs(dir.path());
    let (lb, node) = (admin(&lb_config.admin, "lb"), admin(&pod.admin, "node"));
    let Some(python) = python_or_skip(
        "network_policies_admit_the_admin_ports_only_from_this_and_the_monitoring_namespace",
    ) else {
        return;
    };
    let lb_pods = json!({"podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "fleetgate", "app.kubernetes.io/component": "lb"}}});
    let broker_pods = json!({"podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "fleetgate", "app.kubernetes.io/component": "broker"}}});

    let rules = ingress_rules(&python, "lb-networkpolicy.yaml", "lb");
    for l in &lb_config.listeners {
        assert_eq!(
            admitted(&rules, l.bind.port()),
            None,
            "MQTT listener {} from anywhere",
            l.name
        );
    }
    assert_eq!(
        admitted(&rules, lb.bind.port()),
        Some(this_and_the_monitoring_namespace())
    );
    let probe = lb.probe_bind.expect("lb probe_bind");
    assert_eq!(admitted(&rules, probe.port()), None, "the kubelet's probes");

    let rules = ingress_rules(&python, "broker-networkpolicy.yaml", "broker");
    let mqtt = pod.listeners[0].bind.port();
    assert_eq!(
        admitted(&rules, mqtt),
        Some(vec![lb_pods]),
        "MQTT only from the LBs"
    );
    let cluster = pod.cluster.as_ref().expect("[cluster]").bind.port();
    assert_eq!(
        admitted(&rules, cluster),
        Some(vec![broker_pods]),
        "links only between brokers"
    );
    assert_eq!(
        admitted(&rules, node.bind.port()),
        Some(this_and_the_monitoring_namespace())
    );
    let probe = node.probe_bind.expect("node probe_bind");
    assert_eq!(
        admitted(&rules, probe.port()),
        None,
        "the kubelet's probes and the LBs' checks"
    );

    // A port the policies do not list is closed: the admin ports must not slip into another rule.
    assert_eq!(admitted(&rules, 9), Some(vec![]));
}
