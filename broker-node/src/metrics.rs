//! Metric names (the contract with dashboards and tests), their descriptions, and the handles the hot path uses
//! so that a publish does not hash metric names per message.

use metrics::{
    Counter, Gauge, counter, describe_counter, describe_gauge, describe_histogram, gauge,
};

/// Open MQTT connections (past CONNECT).
pub(crate) const CONNECTIONS_CURRENT: &str = "fleetgate_connections_current";
/// Connection attempts by `result` (accepted, refused, proxy_rejected, connect_timeout, protocol_error).
pub(crate) const CONNECTIONS_TOTAL: &str = "fleetgate_connections_total";
/// PUBLISH packets received from clients, by `qos`.
pub(crate) const MESSAGES_RECEIVED: &str = "fleetgate_messages_received_total";
/// PUBLISH packets written to clients, by `qos`.
pub(crate) const MESSAGES_DELIVERED: &str = "fleetgate_messages_delivered_total";
/// Sessions held (connected or not).
pub(crate) const SESSIONS_CURRENT: &str = "fleetgate_sessions_current";
/// Retained messages held.
pub(crate) const RETAINED_MESSAGES: &str = "fleetgate_retained_messages";
/// Bytes the retained messages hold (estimate, the one `max_retained_bytes` bounds).
pub(crate) const RETAINED_BYTES: &str = "fleetgate_retained_bytes";
/// Retained deletes kept as tombstones (cluster replication).
pub(crate) const RETAINED_TOMBSTONES: &str = "fleetgate_retained_tombstones";
/// Bytes the session queues, in-flight messages and retained messages hold (what `memory_budget` bounds).
pub(crate) const MEMORY_BUDGET_USED: &str = "fleetgate_memory_budget_used_bytes";
/// The configured `memory_budget`.
pub(crate) const MEMORY_BUDGET_LIMIT: &str = "fleetgate_memory_budget_limit_bytes";
/// Messages dropped, by `reason` ([`DropReason`]).
pub(crate) const DROPPED_MESSAGES: &str = "fleetgate_dropped_messages_total";
/// Disconnects by `reason` (graceful, ungraceful, keepalive_timeout, takeover, ...).
pub(crate) const DISCONNECTS: &str = "fleetgate_disconnects_total";
/// PROXY headers refused, by `reason`.
pub(crate) const PROXY_REJECTED: &str = "fleetgate_proxy_rejected_total";
/// ACL denials, by `access` (publish, subscribe, will).
pub(crate) const ACL_DENIED: &str = "fleetgate_acl_denied_total";
/// Reloads of a configuration, by `result` (ok, error).
pub(crate) const CONFIG_RELOADS: &str = "fleetgate_config_reloads_total";
/// Batches the session store committed (`[storage] mode = "disk"`).
pub(crate) const STORE_COMMITS: &str = "fleetgate_store_commits_total";
/// Ops (writes and deletes) the session store committed.
pub(crate) const STORE_OPS: &str = "fleetgate_store_ops_total";
/// Seconds the session store's commits took (histogram: the fsync dominates).
pub(crate) const STORE_COMMIT_SECONDS: &str = "fleetgate_store_commit_seconds";
/// Bytes of disk the session store uses.
pub(crate) const STORE_DISK_BYTES: &str = "fleetgate_store_disk_bytes";
/// Ops waiting for the session store's writer after it took its last batch.
pub(crate) const STORE_PENDING_OPS: &str = "fleetgate_store_pending_ops";
/// 1 once a commit of the session store failed (the node is then not ready and takes no QoS 1/2 publish).
pub(crate) const STORE_FAILED: &str = "fleetgate_store_failed";
/// The `reason` of [`DROPPED_MESSAGES`] for a PUBLISH or will the ACL denied.
pub(crate) const DROP_REASON_ACL: &str = "acl";

/// Why a message was not delivered; the `reason` label of [`DROPPED_MESSAGES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    /// QoS 1/2 to a session whose queue is full (offline session, or online with room in the inflight window).
    QueueFull,
    /// QoS 1/2 to an online session whose queue is full because the client does not acknowledge (window full).
    InflightWindow,
    /// QoS 0 to a session with no connection.
    NotConnected,
    /// Bigger than the client's Maximum Packet Size.
    TooLarge,
    /// Message expiry interval ran out while queued.
    Expired,
    /// QoS 0 to an online session whose queue is full.
    Qos0QueueFull,
    /// Refused by an ACL (later issue).
    Acl,
    /// A cluster peer's link queue was full (slow or stuck peer).
    ClusterQueueFull,
    /// Queued for, or still held by, a session that ended (expiry, clean start) or was ending.
    SessionEnded,
    /// Relayed by a cluster peer to a session that is no longer on this node and was not passed on.
    ClusterSessionGone,
    /// A retained message not kept: the retained store is at `max_retained_messages` or `max_retained_bytes`
    /// (the message itself is still delivered).
    RetainedFull,
    /// For a cluster peer (a forward, or a session handed over) whose link went down before it was queued.
    ClusterLinkDown,
    /// The node's memory budget (`[limits] memory_budget`) is spent: not queued, or not retained.
    MemoryBudget,
    /// The session store uses its `[storage] max_bytes` of disk, or failed: a QoS 1/2 message refused (v5
    /// PUBACK/PUBREC 0x97), or not queued for a persistent session.
    StoreFull,
}

impl DropReason {
    /// Every reason, for registration.
    pub(crate) const ALL: [DropReason; 14] = [
        DropReason::QueueFull,
        DropReason::InflightWindow,
        DropReason::NotConnected,
        DropReason::TooLarge,
        DropReason::Expired,
        DropReason::Qos0QueueFull,
        DropReason::Acl,
        DropReason::ClusterQueueFull,
        DropReason::SessionEnded,
        DropReason::ClusterSessionGone,
        DropReason::ClusterLinkDown,
        DropReason::RetainedFull,
        DropReason::MemoryBudget,
        DropReason::StoreFull,
    ];

    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::InflightWindow => "inflight_window",
            DropReason::NotConnected => "not_connected",
            DropReason::TooLarge => "too_large",
            DropReason::Expired => "expired",
            DropReason::Qos0QueueFull => "qos0_queue_full",
            DropReason::Acl => "acl",
            DropReason::ClusterQueueFull => "cluster_queue_full",
            DropReason::SessionEnded => "session_ended",
            DropReason::ClusterSessionGone => "cluster_session_gone",
            DropReason::ClusterLinkDown => "cluster_link_down",
            DropReason::RetainedFull => "retained_full",
            DropReason::MemoryBudget => "memory_budget",
            DropReason::StoreFull => "store_full",
        }
    }
}

/// The retained store's gauges.
#[derive(Debug, Clone)]
pub(crate) struct RetainedGauges {
    /// Retained messages held.
    pub(crate) messages: Gauge,
    /// Bytes held (the estimate the bound applies to).
    pub(crate) bytes: Gauge,
    /// Tombstones held.
    pub(crate) tombstones: Gauge,
}

impl RetainedGauges {
    /// Gauges that record nothing (unit tests).
    #[cfg(test)]
    pub(crate) fn noop() -> RetainedGauges {
        RetainedGauges {
            messages: Gauge::noop(),
            bytes: Gauge::noop(),
            tombstones: Gauge::noop(),
        }
    }
}

/// Pre-registered metric handles (built after the recorder is installed; no-ops without one).
#[derive(Debug)]
pub(crate) struct Metrics {
    /// [`CONNECTIONS_CURRENT`].
    pub(crate) connections_current: Gauge,
    /// [`SESSIONS_CURRENT`].
    pub(crate) sessions_current: Gauge,
    /// [`RETAINED_MESSAGES`], [`RETAINED_BYTES`], [`RETAINED_TOMBSTONES`].
    pub(crate) retained: RetainedGauges,
    /// [`MEMORY_BUDGET_USED`].
    pub(crate) memory_used: Gauge,
    /// [`MEMORY_BUDGET_LIMIT`].
    pub(crate) memory_limit: Gauge,
    received: [Counter; 3],
    delivered: [Counter; 3],
    dropped: [Counter; DropReason::ALL.len()],
}

impl Metrics {
    /// Describes every metric and registers the labelled series so they show up at 0.
    pub(crate) fn register() -> Metrics {
        describe_gauge!(CONNECTIONS_CURRENT, "Open MQTT connections");
        describe_counter!(CONNECTIONS_TOTAL, "MQTT connection attempts by result");
        describe_counter!(
            MESSAGES_RECEIVED,
            "PUBLISH packets received from clients by QoS"
        );
        describe_counter!(MESSAGES_DELIVERED, "PUBLISH packets sent to clients by QoS");
        describe_gauge!(SESSIONS_CURRENT, "MQTT sessions held, connected or not");
        describe_gauge!(RETAINED_MESSAGES, "Retained messages held");
        describe_gauge!(
            RETAINED_BYTES,
            "Bytes the retained messages hold (estimate; bounded by max_retained_bytes)"
        );
        describe_gauge!(
            RETAINED_TOMBSTONES,
            "Retained deletes kept as tombstones until every peer has them"
        );
        describe_gauge!(
            MEMORY_BUDGET_USED,
            "Bytes held by session queues, in-flight and retained messages (bounded by memory_budget)"
        );
        describe_gauge!(MEMORY_BUDGET_LIMIT, "The configured memory_budget in bytes");
        describe_counter!(DROPPED_MESSAGES, "Messages not delivered, by reason");
        describe_counter!(DISCONNECTS, "Client disconnects by reason");
        describe_counter!(PROXY_REJECTED, "PROXY protocol headers refused, by reason");
        describe_counter!(
            ACL_DENIED,
            "ACL denials by access (publish, subscribe, will)"
        );
        describe_counter!(CONFIG_RELOADS, "Configuration reloads by result");
        describe_counter!(STORE_COMMITS, "Batches the session store committed");
        describe_counter!(STORE_OPS, "Writes and deletes the session store committed");
        describe_histogram!(
            STORE_COMMIT_SECONDS,
            "Seconds a session store commit took (write and fsync)"
        );
        describe_gauge!(STORE_DISK_BYTES, "Bytes of disk the session store uses");
        describe_gauge!(
            STORE_PENDING_OPS,
            "Writes waiting for the session store's writer after its last batch"
        );
        describe_gauge!(
            STORE_FAILED,
            "1 once a session store commit failed (the node is then not ready)"
        );
        let qos = |name: &'static str| {
            [
                counter!(name, "qos" => "0"),
                counter!(name, "qos" => "1"),
                counter!(name, "qos" => "2"),
            ]
        };
        Metrics {
            connections_current: gauge!(CONNECTIONS_CURRENT),
            sessions_current: gauge!(SESSIONS_CURRENT),
            retained: RetainedGauges {
                messages: gauge!(RETAINED_MESSAGES),
                bytes: gauge!(RETAINED_BYTES),
                tombstones: gauge!(RETAINED_TOMBSTONES),
            },
            memory_used: gauge!(MEMORY_BUDGET_USED),
            memory_limit: gauge!(MEMORY_BUDGET_LIMIT),
            received: qos(MESSAGES_RECEIVED),
            delivered: qos(MESSAGES_DELIVERED),
            dropped: DropReason::ALL.map(|r| counter!(DROPPED_MESSAGES, "reason" => r.label())),
        }
    }

    /// Counts received PUBLISHes by QoS (0, 1, 2).
    pub(crate) fn received_n(&self, by_qos: [u64; 3]) {
        for (counter, n) in self.received.iter().zip(by_qos) {
            if n > 0 {
                counter.increment(n);
            }
        }
    }

    /// Counts delivered PUBLISHes by QoS (0, 1, 2).
    pub(crate) fn delivered_n(&self, by_qos: [u64; 3]) {
        for (counter, n) in self.delivered.iter().zip(by_qos) {
            if n > 0 {
                counter.increment(n);
            }
        }
    }

    /// Counts a dropped message.
    pub(crate) fn dropped(&self, reason: DropReason) {
        self.dropped[reason as usize].increment(1);
    }

    /// Counts `n` messages dropped for one reason.
    pub(crate) fn dropped_n(&self, reason: DropReason, n: usize) {
        if n > 0 {
            self.dropped[reason as usize].increment(n as u64);
        }
    }
}

/// Counts a connection attempt's outcome.
pub(crate) fn connection_result(result: &'static str) {
    counter!(CONNECTIONS_TOTAL, "result" => result).increment(1);
}

/// Counts a disconnect.
pub(crate) fn disconnect(reason: &'static str) {
    counter!(DISCONNECTS, "reason" => reason).increment(1);
}

/// Counts a refused PROXY header.
pub(crate) fn proxy_rejected(reason: &'static str) {
    counter!(PROXY_REJECTED, "reason" => reason).increment(1);
}

/// Counts an ACL denial; a denied PUBLISH or will is also a dropped message (`reason="acl"`).
pub(crate) fn acl_denied(access: &'static str) {
    counter!(ACL_DENIED, "access" => access).increment(1);
    if access != "subscribe" {
        counter!(DROPPED_MESSAGES, "reason" => DROP_REASON_ACL).increment(1);
    }
}

/// Counts a configuration reload by `result`.
pub(crate) fn config_reload(result: &'static str) {
    counter!(CONFIG_RELOADS, "result" => result).increment(1);
}
