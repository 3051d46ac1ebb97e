//! `[limits]`: the LB's time, size and admission limits, every field optional with a default that has its reason.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{Checker, MIN_TIMEOUT};
use crate::bytesize::ByteSize;
use crate::duration::ConfigDuration;

/// Default time a client gets from accept (or TLS handshake end) to a complete CONNECT: a slow-loris guard that
/// still lets a GSM modem on a bad link finish a few hundred bytes.
pub(crate) const DEFAULT_CONNECT_PEEK_TIMEOUT: Duration = Duration::from_secs(10);
/// Default largest first packet the LB buffers: a CONNECT with a will message and v5 properties fits easily;
/// anything larger is not a device's CONNECT and would let a client make the LB hold memory.
pub(crate) const DEFAULT_MAX_CONNECT_SIZE: usize = 64 * 1024;
/// Smallest accepted `max_connect_size`: below this a CONNECT with a modest client ID and credentials does not fit.
pub(crate) const MIN_MAX_CONNECT_SIZE: usize = 128;
/// Largest MQTT packet the remaining-length varint can describe, plus its 5-byte fixed header.
pub(crate) const MAX_MQTT_PACKET: usize = 268_435_455 + 5;
/// Default time added to 1.5 × keep-alive before an idle connection is closed (MQTT itself allows 1.5 ×).
pub(crate) const DEFAULT_IDLE_GRACE: Duration = Duration::from_secs(30);
/// Default idle timeout of a client with keep-alive 0 (which asked for none): long enough for a device that only
/// speaks when it has data, short enough that a silent client cannot hold a connection slot forever.
pub(crate) const DEFAULT_MAX_IDLE: Duration = Duration::from_secs(30 * 60);
/// Default deadline for the TCP connect to a backend; a dead backend is skipped after this.
pub(crate) const DEFAULT_BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default open connections per source address (IPv6: per /64): a site or a small NAT of devices fits; one hostile
/// address holding this many idle TLS connections costs the LB tens of MB, not the pod. Fleets behind a
/// carrier-grade NAT share addresses by the thousand and need it raised.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 1000;
/// Default bytes all relays together may hold in their buffers: 4,096 full 16 KiB buffers, far more than are in
/// use at once (a buffer lives only while bytes are in flight), and a fixed part of a 1 GiB pod whatever the
/// clients do. At the bound, relays stop reading until buffers are written out: nothing is dropped.
pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 64 * 1024 * 1024;
/// Smallest accepted `max_buffered_bytes`: four relay buffers at their largest (16 KiB), so that a single
/// direction can always get one.
pub const MIN_MAX_BUFFERED_BYTES: usize = 64 * 1024;

/// Raw `[limits]` table; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsFile {
    /// Deadline for the first packet.
    pub(crate) connect_peek_timeout: Option<Spanned<ConfigDuration>>,
    /// Largest first packet in bytes.
    pub(crate) max_connect_size: Option<Spanned<usize>>,
    /// Open connections allowed in total.
    pub(crate) max_connections: Option<Spanned<usize>>,
    /// Open connections allowed per source address (IPv6: per /64).
    pub(crate) max_connections_per_ip: Option<Spanned<usize>>,
    /// New connections per second per source IP (token bucket refill rate).
    pub(crate) per_ip_rate: Option<Spanned<f64>>,
    /// Token bucket size per source IP.
    pub(crate) per_ip_burst: Option<Spanned<u32>>,
    /// TLS handshakes started per second, all listeners.
    pub(crate) tls_handshakes_per_second: Option<Spanned<u32>>,
    /// Added to 1.5 × keep-alive for the idle timeout.
    pub(crate) idle_grace: Option<ConfigDuration>,
    /// Idle timeout of a keep-alive 0 client.
    pub(crate) max_idle: Option<Spanned<ConfigDuration>>,
    /// Bounded-load factor (> 1.0): no backend takes more than factor × average connections.
    pub(crate) bounded_load_factor: Option<Spanned<f64>>,
    /// Deadline for the TCP connect to a backend.
    pub(crate) backend_connect_timeout: Option<Spanned<ConfigDuration>>,
    /// Bytes the relays may hold in buffers, all connections together.
    pub(crate) max_buffered_bytes: Option<Spanned<ByteSize>>,
}

/// Validated limits, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    /// Deadline for the first packet.
    pub connect_peek_timeout: Duration,
    /// Largest first packet in bytes.
    pub max_connect_size: usize,
    /// Open connections allowed in total (`None` = unlimited).
    pub max_connections: Option<usize>,
    /// Open connections allowed per source address, IPv6 by /64 (the client a trusted PROXY header names).
    pub max_connections_per_ip: usize,
    /// Per-source-IP connection rate (per second) and burst (`None` = unlimited).
    pub per_ip_rate: Option<(f64, u32)>,
    /// TLS handshakes per second (`None` = unlimited).
    pub tls_handshakes_per_second: Option<u32>,
    /// Added to 1.5 × keep-alive for the idle timeout.
    pub idle_grace: Duration,
    /// Idle timeout of a keep-alive 0 client.
    pub max_idle: Duration,
    /// Bounded-load factor (`None` = plain rendezvous).
    pub bounded_load_factor: Option<f64>,
    /// Deadline for the TCP connect to a backend.
    pub backend_connect_timeout: Duration,
    /// Bytes the relays may hold in buffers, all connections together; at the bound they stop reading.
    pub max_buffered_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            connect_peek_timeout: DEFAULT_CONNECT_PEEK_TIMEOUT,
            max_connect_size: DEFAULT_MAX_CONNECT_SIZE,
            max_connections: None,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            per_ip_rate: None,
            tls_handshakes_per_second: None,
            idle_grace: DEFAULT_IDLE_GRACE,
            max_idle: DEFAULT_MAX_IDLE,
            bounded_load_factor: None,
            backend_connect_timeout: DEFAULT_BACKEND_CONNECT_TIMEOUT,
            max_buffered_bytes: DEFAULT_MAX_BUFFERED_BYTES,
        }
    }
}

pub(super) fn validate_limits(c: &mut Checker<'_>, l: &LimitsFile) -> LimitsConfig {
    let mut limits = LimitsConfig::default();
    if let Some(v) = &l.connect_peek_timeout {
        limits.connect_peek_timeout = c.duration_at_least("connect_peek_timeout", v, MIN_TIMEOUT);
    }
    if let Some(v) = &l.max_connect_size {
        if !(MIN_MAX_CONNECT_SIZE..=MAX_MQTT_PACKET).contains(v.get_ref()) {
            c.problem(
                v.span(),
                format!(
                    "max_connect_size must be between {MIN_MAX_CONNECT_SIZE} and {MAX_MQTT_PACKET}"
                ),
            );
        }
        limits.max_connect_size = *v.get_ref();
    }
    if let Some(v) = &l.max_connections {
        if *v.get_ref() == 0 {
            c.problem(v.span(), "max_connections must be at least 1");
        }
        limits.max_connections = Some(*v.get_ref());
    }
    if let Some(v) = &l.max_connections_per_ip {
        if *v.get_ref() == 0 {
            c.problem(v.span(), "max_connections_per_ip must be at least 1");
        }
        limits.max_connections_per_ip = *v.get_ref();
    }
    match (&l.per_ip_rate, &l.per_ip_burst) {
        (Some(rate), burst) => {
            let r = *rate.get_ref();
            if !(r.is_finite() && r > 0.0) {
                c.problem(
                    rate.span(),
                    "per_ip_rate must be a positive number of connections per second",
                );
            }
            // Default burst: one second's worth, at least one connection.
            let b = burst
                .as_ref()
                .map_or(r.ceil().max(1.0) as u32, |b| *b.get_ref());
            if let Some(burst) = burst
                && *burst.get_ref() == 0
            {
                c.problem(burst.span(), "per_ip_burst must be at least 1");
            }
            limits.per_ip_rate = Some((r, b));
        }
        (None, Some(burst)) => c.problem(burst.span(), "per_ip_burst needs per_ip_rate"),
        (None, None) => {}
    }
    if let Some(v) = &l.tls_handshakes_per_second {
        if *v.get_ref() == 0 {
            c.problem(v.span(), "tls_handshakes_per_second must be at least 1");
        }
        limits.tls_handshakes_per_second = Some(*v.get_ref());
    }
    if let Some(v) = l.idle_grace {
        limits.idle_grace = v.get();
    }
    if let Some(v) = &l.max_idle {
        limits.max_idle = c.duration_at_least("max_idle", v, MIN_TIMEOUT);
    }
    if let Some(v) = &l.bounded_load_factor {
        let f = *v.get_ref();
        if !(f.is_finite() && f > 1.0) {
            c.problem(
                v.span(),
                "bounded_load_factor must be greater than 1.0 (e.g. 1.25)",
            );
        }
        limits.bounded_load_factor = Some(f);
    }
    if let Some(v) = &l.backend_connect_timeout {
        limits.backend_connect_timeout =
            c.duration_at_least("backend_connect_timeout", v, MIN_TIMEOUT);
    }
    if let Some(v) = &l.max_buffered_bytes {
        if v.get_ref().get() < MIN_MAX_BUFFERED_BYTES {
            c.problem(
                v.span(),
                format!("max_buffered_bytes must be at least {MIN_MAX_BUFFERED_BYTES} (64KiB)"),
            );
        }
        limits.max_buffered_bytes = v.get_ref().get();
    }
    limits
}
