//! The LB's modules form layers (the picture in docs/ARCHITECTURE.md, "Inside the load balancer"): a module
//! imports only from its own layer or the layers below, and no two top-level modules import each other in a
//! circle.

use std::path::Path;

/// Bottom to top.
const LAYERS: &[&[&str]] = &[
    &[
        "buffers", "frames", "identity", "metrics", "registry", "reload", "sockopt", "stream",
        "tls",
    ],
    &["admission", "error", "health", "relay"],
    &["backend"],
    &["snapshot", "upstream"],
    &["health_check", "shared"],
    &["admin_routes", "conn", "drain"],
    &["listener"],
    &["control"],
    &["server"],
];

#[test]
fn modules_form_layers_without_cycles() {
    fleetgate_testkit::layers::assert_layers(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        LAYERS,
    );
}
