//! Every manifest (and, with `kubectl`, the whole kustomization with its generated ConfigMaps) through
//! kubernetes-validate, strict.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use fleetgate_testkit::scratch_dir;

use crate::*;

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
    out.assert_success("kubernetes-validate");
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
    let Some(python) = python_or_skip("manifests_pass_kubernetes_validate") else {
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
    built.assert_success("kubectl kustomize");
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
