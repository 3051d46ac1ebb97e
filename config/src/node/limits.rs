//! The `[limits]` table of a node config: raw [`LimitsFile`] → validated [`LimitsConfig`] (protocol and
//! resource limits, defaults filled in).
//!
//! ```toml
//! [limits]
//! max_packet_size = 1048576
//! receive_maximum = 32
//! max_queued_messages = 1000
//! connect_timeout = "10s"
//! max_queued_bytes = "16MiB"        # bytes one session's queue and in-flight messages may hold
//! max_retained_messages = 1000000   # retained messages held at most; more are refused (and counted)
//! max_retained_bytes = "512MiB"     # bytes they may hold (topics, payloads, properties, tombstones)
//! memory_budget = "1GiB"            # bytes all queues, in-flight messages and retained messages may hold
//! max_subscriptions = 10000         # subscriptions one session may hold
//! max_filters_per_subscribe = 256   # filters one SUBSCRIBE may carry (more: refused one by one)
//! max_topic_length = 1024           # bytes of a topic name or filter
//! ```

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::bytesize::ByteSize;
use crate::duration::ConfigDuration;

/// Default largest MQTT packet either side may send: 1 MiB is far above telemetry payloads and small enough
/// that one connection cannot make the node buffer much.
pub(crate) const DEFAULT_MAX_PACKET_SIZE: u32 = 1024 * 1024;
/// Smallest accepted `max_packet_size`: below this a CONNECT with a modest client ID and will does not fit.
pub(crate) const MIN_MAX_PACKET_SIZE: u32 = 128;
/// Default receive maximum (our inbound window and the cap on unacknowledged QoS 1/2 messages per client).
pub(crate) const DEFAULT_RECEIVE_MAXIMUM: u16 = 32;
/// Default bound on messages queued per session (online backlog or offline persistent session).
pub(crate) const DEFAULT_MAX_QUEUED_MESSAGES: usize = 1000;
/// Default time a client gets from TCP accept to a complete CONNECT; a slow-loris guard.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default topic alias maximum we announce to v5 clients (inbound aliases).
pub(crate) const DEFAULT_TOPIC_ALIAS_MAXIMUM: u16 = 16;
/// Default cap on the session expiry interval a client may ask for: one day of offline queueing.
pub(crate) const DEFAULT_SESSION_EXPIRY_MAXIMUM: Duration = Duration::from_secs(24 * 3600);
/// Default bound on retained messages: a million devices each with a retained status topic.
pub(crate) const DEFAULT_MAX_RETAINED_MESSAGES: usize = 1_000_000;
/// Default bound on the bytes retained messages hold: room for a million small ones (~500 bytes each with
/// overhead), and a ceiling on what a flood of retained publishes can make a node hold.
pub(crate) const DEFAULT_MAX_RETAINED_BYTES: usize = 512 << 20;
/// Default bound on the bytes one session holds (queue and in-flight): sixteen 1 MiB messages, or thousands
/// of telemetry ones; one offline session cannot hold more whatever its message count.
pub(crate) const DEFAULT_MAX_QUEUED_BYTES: usize = 16 << 20;
/// Default node-wide memory budget for queues, in-flight and retained messages: half of a 2 GiB pod, the rest
/// left to connections, subscriptions and the runtime.
pub(crate) const DEFAULT_MEMORY_BUDGET: usize = 1 << 30;
/// Smallest accepted `memory_budget`.
pub(crate) const MIN_MEMORY_BUDGET: usize = 16 << 20;
/// Default bound on subscriptions per session: far beyond a device's few, and ~15 MB of router state at most.
pub(crate) const DEFAULT_MAX_SUBSCRIPTIONS: usize = 10_000;
/// Default bound on filters in one SUBSCRIBE.
pub(crate) const DEFAULT_MAX_FILTERS_PER_SUBSCRIBE: usize = 256;
/// Default bound on the length of a topic name or filter, in bytes (MQTT allows 65,535).
pub(crate) const DEFAULT_MAX_TOPIC_LENGTH: usize = 1024;

/// Raw `[limits]` table; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsFile {
    /// Largest MQTT packet in bytes, both directions.
    pub(crate) max_packet_size: Option<Spanned<u32>>,
    /// Receive maximum / inflight window.
    pub(crate) receive_maximum: Option<Spanned<u16>>,
    /// Messages queued per session.
    pub(crate) max_queued_messages: Option<Spanned<usize>>,
    /// Deadline for the CONNECT packet.
    pub(crate) connect_timeout: Option<ConfigDuration>,
    /// Topic alias maximum announced to v5 clients (0 disables inbound aliases).
    pub(crate) topic_alias_maximum: Option<u16>,
    /// Cap on the session expiry interval clients ask for.
    pub(crate) session_expiry_maximum: Option<ConfigDuration>,
    /// When set, overrides the client's keep alive and is announced in CONNACK.
    pub(crate) server_keep_alive: Option<Spanned<ConfigDuration>>,
    /// Retained messages held at most.
    pub(crate) max_retained_messages: Option<Spanned<usize>>,
    /// Bytes retained messages hold at most.
    pub(crate) max_retained_bytes: Option<Spanned<ByteSize>>,
    /// Bytes one session's queue and in-flight list hold at most.
    pub(crate) max_queued_bytes: Option<Spanned<ByteSize>>,
    /// Bytes all queues, in-flight lists and retained messages hold at most.
    pub(crate) memory_budget: Option<Spanned<ByteSize>>,
    /// Subscriptions per session.
    pub(crate) max_subscriptions: Option<Spanned<usize>>,
    /// Filters per SUBSCRIBE packet.
    pub(crate) max_filters_per_subscribe: Option<Spanned<usize>>,
    /// Bytes of a topic name or filter.
    pub(crate) max_topic_length: Option<Spanned<usize>>,
}

/// Validated limits, defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Largest MQTT packet in bytes, both directions.
    pub max_packet_size: u32,
    /// Receive maximum / inflight window (≥ 1).
    pub receive_maximum: u16,
    /// Messages queued per session (≥ 1).
    pub max_queued_messages: usize,
    /// Deadline for the CONNECT packet.
    pub connect_timeout: Duration,
    /// Topic alias maximum announced to v5 clients.
    pub topic_alias_maximum: u16,
    /// Cap on the session expiry interval.
    pub session_expiry_maximum: Duration,
    /// Keep alive imposed on clients, when set (whole seconds, 1..=65535).
    pub server_keep_alive: Option<u16>,
    /// Retained messages held at most (≥ 1).
    pub max_retained_messages: usize,
    /// Bytes retained messages hold at most.
    pub max_retained_bytes: usize,
    /// Bytes one session's queue and in-flight list hold at most (≥ `max_packet_size`).
    pub max_queued_bytes: usize,
    /// Bytes all queues, in-flight lists and retained messages hold at most.
    pub memory_budget: usize,
    /// Subscriptions per session (≥ 1).
    pub max_subscriptions: usize,
    /// Filters per SUBSCRIBE packet (≥ 1).
    pub max_filters_per_subscribe: usize,
    /// Bytes of a topic name or filter (1..=65535).
    pub max_topic_length: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            receive_maximum: DEFAULT_RECEIVE_MAXIMUM,
            max_queued_messages: DEFAULT_MAX_QUEUED_MESSAGES,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            topic_alias_maximum: DEFAULT_TOPIC_ALIAS_MAXIMUM,
            session_expiry_maximum: DEFAULT_SESSION_EXPIRY_MAXIMUM,
            server_keep_alive: None,
            max_retained_messages: DEFAULT_MAX_RETAINED_MESSAGES,
            max_retained_bytes: DEFAULT_MAX_RETAINED_BYTES,
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            memory_budget: DEFAULT_MEMORY_BUDGET,
            max_subscriptions: DEFAULT_MAX_SUBSCRIPTIONS,
            max_filters_per_subscribe: DEFAULT_MAX_FILTERS_PER_SUBSCRIBE,
            max_topic_length: DEFAULT_MAX_TOPIC_LENGTH,
        }
    }
}

/// Validates the `[limits]` table, reporting each problem through `problem`; the value given is kept even when
/// out of range (the config is refused anyway).
pub(crate) fn validate_limits(
    l: &LimitsFile,
    problem: &mut impl FnMut(std::ops::Range<usize>, String),
) -> LimitsConfig {
    let mut limits = LimitsConfig::default();
    if let Some(v) = &l.max_packet_size {
        if *v.get_ref() < MIN_MAX_PACKET_SIZE || *v.get_ref() > 268_435_455 {
            problem(
                v.span(),
                format!("max_packet_size must be between {MIN_MAX_PACKET_SIZE} and 268435455"),
            );
        }
        limits.max_packet_size = *v.get_ref();
    }
    if let Some(v) = &l.receive_maximum {
        if *v.get_ref() == 0 {
            problem(v.span(), "receive_maximum must be at least 1".into());
        }
        limits.receive_maximum = *v.get_ref();
    }
    if let Some(v) = &l.max_queued_messages {
        if *v.get_ref() == 0 {
            problem(v.span(), "max_queued_messages must be at least 1".into());
        }
        limits.max_queued_messages = *v.get_ref();
    }
    if let Some(v) = l.connect_timeout {
        limits.connect_timeout = v.get();
    }
    if let Some(v) = l.topic_alias_maximum {
        limits.topic_alias_maximum = v;
    }
    if let Some(v) = l.session_expiry_maximum {
        limits.session_expiry_maximum = v.get();
    }
    if let Some(v) = &l.server_keep_alive {
        let secs = v.get_ref().get().as_secs();
        if secs == 0 || secs > u64::from(u16::MAX) {
            problem(
                v.span(),
                "server_keep_alive must be between 1s and 65535s".into(),
            );
        }
        limits.server_keep_alive = u16::try_from(secs).ok();
    }
    if let Some(v) = &l.max_retained_messages {
        if *v.get_ref() == 0 {
            problem(v.span(), "max_retained_messages must be at least 1".into());
        }
        limits.max_retained_messages = *v.get_ref();
    }
    if let Some(v) = &l.max_retained_bytes {
        if v.get_ref().get() < 64 << 10 {
            problem(v.span(), "max_retained_bytes must be at least 64KiB".into());
        }
        limits.max_retained_bytes = v.get_ref().get();
    }
    // Unset, it grows with max_packet_size: a message of the largest size must fit.
    limits.max_queued_bytes = limits.max_queued_bytes.max(limits.max_packet_size as usize);
    if let Some(v) = &l.max_queued_bytes {
        limits.max_queued_bytes = v.get_ref().get();
        if limits.max_queued_bytes < limits.max_packet_size as usize {
            problem(
                v.span(),
                format!(
                    "max_queued_bytes must be at least max_packet_size ({} bytes): a message of the largest size must fit",
                    limits.max_packet_size
                ),
            );
        }
    }
    if let Some(v) = &l.memory_budget {
        limits.memory_budget = v.get_ref().get();
        if limits.memory_budget < MIN_MEMORY_BUDGET {
            problem(v.span(), "memory_budget must be at least 16MiB".into());
        }
    }
    let mut at_least_one = |v: &Option<Spanned<usize>>, key: &str, field: &mut usize| {
        if let Some(v) = v {
            if *v.get_ref() == 0 {
                problem(v.span(), format!("{key} must be at least 1"));
            }
            *field = *v.get_ref();
        }
    };
    at_least_one(
        &l.max_subscriptions,
        "max_subscriptions",
        &mut limits.max_subscriptions,
    );
    at_least_one(
        &l.max_filters_per_subscribe,
        "max_filters_per_subscribe",
        &mut limits.max_filters_per_subscribe,
    );
    if let Some(v) = &l.max_topic_length {
        if *v.get_ref() == 0 || *v.get_ref() > 65_535 {
            problem(
                v.span(),
                "max_topic_length must be between 1 and 65535".into(),
            );
        }
        limits.max_topic_length = *v.get_ref();
    }
    limits
}
