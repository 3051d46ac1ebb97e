//! The node's modules form layers (the table in `src/lib.rs`): a module imports only from its own layer or the
//! layers below, and no two top-level modules import each other in a circle.

use std::path::Path;

/// Bottom to top.
const LAYERS: &[&[&str]] = &[
    &["limits", "metrics", "events", "origin", "wakeup"],
    &["access"],
    &["state"],
    &["broker"],
    &["cluster", "store"],
    &["conn"],
    &["listener"],
    &["server", "admin_routes", "error"],
];

#[test]
fn modules_form_layers_without_cycles() {
    fleetgate_testkit::layers::assert_layers(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        LAYERS,
    );
}
