//! Structured log events (the `event` field is the contract with operators and the process tests). Passwords and
//! certificates never appear here.

use std::net::SocketAddr;

/// A socket was bound: tests started with port 0 read the address from this line.
pub(crate) fn listening(role: &'static str, addr: SocketAddr) {
    tracing::info!(event = "listening", role, addr = %addr, "listening on {role} {addr}");
}

/// A PROXY header was refused before any MQTT byte was read.
pub(crate) fn proxy_rejected(
    peer: SocketAddr,
    reason: &'static str,
    detail: &dyn std::fmt::Display,
) {
    tracing::warn!(event = "proxy_rejected", reason, peer = %peer, detail = %detail, "PROXY header rejected");
}

/// A client completed CONNECT.
pub(crate) fn connect(
    client_id: &str,
    protocol: &str,
    source: SocketAddr,
    clean_start: bool,
    keep_alive: u16,
    present: bool,
) {
    tracing::info!(
        event = "connect",
        client_id,
        protocol,
        source = %source,
        clean_start,
        keep_alive,
        session_present = present,
        "client connected"
    );
}

/// A CONNECT was refused with a CONNACK reason.
pub(crate) fn connect_refused(client_id: &str, source: SocketAddr, reason: &'static str) {
    tracing::info!(event = "connect_refused", client_id, source = %source, reason, "client refused");
}

/// A connection ended before or after CONNECT. `detail` is the codec reason for protocol errors.
pub(crate) fn disconnect(
    client_id: &str,
    source: SocketAddr,
    reason: &'static str,
    detail: Option<&'static str>,
) {
    match detail {
        Some(detail) => {
            tracing::info!(event = "disconnect", client_id, source = %source, reason, detail, "client disconnected")
        }
        None => {
            tracing::info!(event = "disconnect", client_id, source = %source, reason, "client disconnected")
        }
    }
}

/// A will message was published.
pub(crate) fn will_published(client_id: &str, topic: &str) {
    tracing::debug!(event = "will", client_id, topic, "will published");
}

/// Shutdown started / finished.
pub(crate) fn shutdown(phase: &'static str, open_connections: usize) {
    tracing::info!(
        event = "shutdown",
        phase,
        open_connections,
        "broker shutdown {phase}"
    );
}

/// A CONNECT was refused by authentication: the failure label and the source address, nothing the client sent
/// as a secret.
pub(crate) fn auth_failed(client_id: &str, source: SocketAddr, reason: &'static str) {
    tracing::warn!(event = "auth_failed", client_id, source = %source, reason, "authentication failed");
}

/// The ACL denied a PUBLISH, SUBSCRIBE or will; `rule` is the 0-based index of the deciding deny rule, absent
/// when nothing allowed it (deny by default).
pub(crate) fn acl_denied(client_id: &str, topic: &str, access: &'static str, rule: Option<usize>) {
    match rule {
        Some(rule) => {
            tracing::info!(
                event = "acl_denied",
                client_id,
                topic,
                access,
                rule,
                "denied by ACL rule"
            )
        }
        None => {
            tracing::info!(
                event = "acl_denied",
                client_id,
                topic,
                access,
                "denied by ACL (no rule allows it)"
            )
        }
    }
}

/// A configuration was reloaded (`what`: `auth` for `[auth]` and its password and ACL files, `cluster_tls` for the
/// cluster certificates), or a reload failed and the old one stays (`error` lists every problem).
pub(crate) fn config_reload(
    what: &'static str,
    trigger: &'static str,
    error: Option<&dyn std::fmt::Display>,
) {
    match error {
        None => tracing::info!(
            event = "config_reload",
            what,
            trigger,
            result = "ok",
            "{what} configuration reloaded"
        ),
        Some(e) => tracing::error!(
            event = "config_reload",
            what,
            trigger,
            result = "error",
            error = %e,
            "{what} configuration reload failed; keeping the previous one"
        ),
    }
}

/// The session store was read back at start: how many sessions, messages and retained messages, values skipped
/// (undecodable), sessions without a record (deleted), and how long it took.
pub(crate) fn store_recovered(
    path: &std::path::Path,
    counts: StoreCounts,
    took: std::time::Duration,
) {
    tracing::info!(
        event = "store_recovered",
        path = %path.display(),
        sessions = counts.sessions,
        messages = counts.messages,
        retained = counts.retained,
        skipped = counts.skipped,
        orphans = counts.orphans,
        seconds = took.as_secs_f64(),
        "session store read back"
    );
}

/// What [`store_recovered`] reports.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StoreCounts {
    /// Sessions read back.
    pub(crate) sessions: usize,
    /// Queued and in-flight messages read back.
    pub(crate) messages: usize,
    /// Retained messages read back.
    pub(crate) retained: usize,
    /// Values that did not decode.
    pub(crate) skipped: usize,
    /// Client IDs with keys but no record.
    pub(crate) orphans: usize,
}

/// The session store failed a commit: the node shuts down (its supervisor restarts it).
pub(crate) fn store_failed_shutdown() {
    tracing::error!(
        event = "store_failed_shutdown",
        "the session store cannot commit any more; shutting down so the node can be restarted"
    );
}
