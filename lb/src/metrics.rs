//! Metric names of the LB (all prefixed `fleetgate_lb_`) and the helpers the pipeline calls to record them.

use std::time::Duration;

/// Connections finished, by `listener` and `outcome` (`routed`, `refused`, `tls_failed`, `proxy_failed`,
/// `peek_failed`, `backend_unavailable`).
pub(crate) const CONNECTIONS_TOTAL: &str = "fleetgate_lb_connections_total";
/// Connections open now, by `listener`.
pub(crate) const CONNECTIONS_OPEN: &str = "fleetgate_lb_connections_open";
/// TLS handshake duration in seconds, by `listener` (successful handshakes).
pub(crate) const TLS_HANDSHAKE_SECONDS: &str = "fleetgate_lb_tls_handshake_duration_seconds";
/// TLS handshakes that failed, by `listener` and `reason` (`timeout`, `error`).
pub(crate) const TLS_HANDSHAKE_FAILURES: &str = "fleetgate_lb_tls_handshake_failures_total";
/// First-packet outcomes, by `outcome` (`valid`, `not_mqtt`, `malformed`, `too_large`, `timeout`, `empty_id`,
/// `closed`).
pub(crate) const CONNECT_PEEK_TOTAL: &str = "fleetgate_lb_connect_peek_total";
/// Connections refused by admission control, by `reason` (`listener_full`, `total_full`, `per_ip_connections`,
/// `per_ip_rate`, `tls_budget`, `untrusted_proxy`, `proxy_header`).
pub(crate) const ADMISSION_REFUSED: &str = "fleetgate_lb_admission_refused_total";
/// Connections relayed to a backend now, by `backend`.
pub(crate) const BACKEND_CONNECTIONS: &str = "fleetgate_lb_backend_connections";
/// Connections relayed to a backend, ever, by `backend`.
pub(crate) const BACKEND_CONNECTIONS_TOTAL: &str = "fleetgate_lb_backend_connections_total";
/// Bytes relayed, by `backend` and `direction` (`to_backend`, `to_client`).
pub(crate) const BACKEND_BYTES: &str = "fleetgate_lb_backend_bytes_total";
/// Failed TCP connects to a backend, by `backend`.
pub(crate) const BACKEND_CONNECT_FAILURES: &str = "fleetgate_lb_backend_connect_failures_total";

/// 1 when a backend is up (or unchecked), 0 when its health check says down, by `backend`.
pub(crate) const BACKEND_UP: &str = "fleetgate_lb_backend_up";
/// Health transitions, by `backend` and `to` (`up`, `down`).
pub(crate) const BACKEND_TRANSITIONS: &str = "fleetgate_lb_backend_health_transitions_total";
/// Health checks run, by `backend` and `result` (`ok`, `fail`).
pub(crate) const HEALTH_CHECKS: &str = "fleetgate_lb_health_checks_total";
/// Backends in the current snapshot.
pub(crate) const BACKENDS: &str = "fleetgate_lb_backends";
/// Relays whose drain switch was flipped, by `reason` (`shutdown`, `backend_removed`).
pub(crate) const DRAINED_TOTAL: &str = "fleetgate_lb_drained_connections_total";
/// Relays that ended, by how (`reason`: `eof`, `error`, `idle_timeout`, `shutdown`, `drained`, `drain_timeout`).
pub(crate) const RELAYS_ENDED: &str = "fleetgate_lb_relays_ended_total";
/// Bytes the relays hold in buffers now, all connections, by `direction`: `to_backend` (clients' bytes, bounded
/// by `[limits] max_buffered_bytes`) and `to_client` (backends' bytes, at most 16 KiB per relay).
pub(crate) const RELAY_BUFFERED_BYTES: &str = "fleetgate_lb_relay_buffered_bytes";
/// Client reads of a relay that waited for buffer bytes because `max_buffered_bytes` was reached.
pub(crate) const RELAY_BUFFER_WAITS: &str = "fleetgate_lb_relay_buffer_waits_total";
/// Config reloads, by `result` (`ok`, `error`).
pub(crate) const CONFIG_RELOADS: &str = "fleetgate_config_reloads_total";
/// Generation of the snapshot in force (1 at start, +1 per swap).
pub(crate) const SNAPSHOT_GENERATION: &str = "fleetgate_lb_snapshot_generation";
/// 1 while the LB is draining (readiness false).
pub(crate) const DRAINING: &str = "fleetgate_lb_draining";

/// Counts one first-packet outcome.
pub(crate) fn peek_outcome(outcome: &'static str) {
    metrics::counter!(CONNECT_PEEK_TOTAL, "outcome" => outcome).increment(1);
}

/// Counts one admission refusal.
pub(crate) fn admission_refused(reason: &'static str) {
    metrics::counter!(ADMISSION_REFUSED, "reason" => reason).increment(1);
}

/// Counts one finished connection.
pub(crate) fn connection_outcome(listener: &str, outcome: &'static str) {
    metrics::counter!(CONNECTIONS_TOTAL, "listener" => listener.to_owned(), "outcome" => outcome)
        .increment(1);
}

/// Counts one ended relay (`reason`) and the bytes it moved each way.
pub(crate) fn relay_ended(backend: &str, reason: &'static str, to_backend: u64, to_client: u64) {
    metrics::counter!(RELAYS_ENDED, "reason" => reason).increment(1);
    metrics::counter!(BACKEND_BYTES, "backend" => backend.to_owned(), "direction" => "to_backend")
        .increment(to_backend);
    metrics::counter!(BACKEND_BYTES, "backend" => backend.to_owned(), "direction" => "to_client")
        .increment(to_client);
}

/// Records a successful TLS handshake's duration.
pub(crate) fn tls_handshake(listener: &str, took: Duration) {
    metrics::histogram!(TLS_HANDSHAKE_SECONDS, "listener" => listener.to_owned())
        .record(took.as_secs_f64());
}

/// Counts a failed TLS handshake.
pub(crate) fn tls_failure(listener: &str, reason: &'static str) {
    metrics::counter!(TLS_HANDSHAKE_FAILURES, "listener" => listener.to_owned(), "reason" => reason).increment(1);
}
