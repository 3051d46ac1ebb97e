//! Telemetry: the process-wide Prometheus recorder every `metrics` macro writes to; the admin server renders it.
//!
//! There is one global recorder per process, so [`install`] runs once and later calls return the same handle.
//! Upkeep (draining histogram buckets, idle-metric expiry) runs on a small dedicated thread rather than a tokio
//! task, so it survives runtimes coming and going (tests create many) and needs no runtime at install time.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// How often the recorder's upkeep runs; the crate's own exporter uses 5 s, and histograms only grow in between.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global Prometheus recorder (once per process) and returns the handle to render it.
///
/// If another global recorder was installed first (outside this function), a detached recorder is returned
/// instead and a warning is logged: its output will be empty, but nothing panics.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle = match PrometheusBuilder::new().install_recorder() {
                Ok(handle) => handle,
                Err(e) => {
                    tracing::warn!(event = "telemetry", error = %e, "cannot install the metrics recorder");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            };
            spawn_upkeep(handle.clone());
            handle
        })
        .clone()
}

/// Runs `handle.run_upkeep()` every [`UPKEEP_INTERVAL`] on a background thread for the rest of the process.
pub fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                handle.run_upkeep();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(event = "telemetry", error = %e, "cannot start the metrics upkeep thread");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING)
mod tests {
    use super::*;

    // The recorder is global: this is the only test in the crate that installs it.
    #[test]
    fn install_is_idempotent_and_records() {
        let first = install();
        let second = install();
        metrics::counter!("fleetgate_test_total", "reason" => "unit").increment(3);
        let text = first.render();
        assert!(
            text.contains("fleetgate_test_total{reason=\"unit\"} 3"),
            "{text}"
        );
        assert_eq!(text, second.render());
    }
}
