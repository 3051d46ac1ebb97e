//! Size and time limits of the connection pipeline: the named constants (each with its reason) and the
//! per-connection values derived from the config and the client's CONNECT.

use std::time::Duration;

use fleetgate_config::node::LimitsConfig;
use fleetgate_protocol::mqtt::{Connect, ProtocolLevel};

/// Bytes requested per socket read. Small enough that an idle connection that wakes for a PINGREQ allocates
/// little; packets larger than this grow the buffer as the codec asks.
pub(crate) const READ_CHUNK: usize = 4 * 1024;

/// Stop draining the session queue into the write buffer above this many pending bytes: the socket is not
/// keeping up, and further messages are better left in the bounded queue (where they are counted when dropped)
/// than in an unbounded buffer.
pub(crate) const WRITE_HIGH_WATER: usize = 64 * 1024;

/// Payloads below this size are copied when a message is kept for long (retained, queued for an offline
/// session), so they do not pin the inbound read chunk (at least [`READ_CHUNK`]) they were sliced from; the copy
/// of such a payload costs less than the chunk it frees, and larger payloads fill much of their chunk anyway.
pub(crate) const COMPACT_BELOW: usize = 1024;

/// Messages moved from the queue per session-lock hold, so a publisher is never blocked behind a long drain.
pub(crate) const DRAIN_BATCH: usize = 64;

/// Keep alive is enforced at 1.5 times the negotiated interval (MQTT-3.1.2-24).
pub(crate) fn keep_alive_deadline(keep_alive_secs: u16) -> Option<Duration> {
    (keep_alive_secs > 0).then(|| Duration::from_millis(u64::from(keep_alive_secs) * 1500))
}

/// Keep-alive timer ticks per deadline: a silent client is disconnected at most 1/TICKS of the deadline late
/// (1.5 × keep alive becomes at most 1.69 ×), and an idle connection's timer fires every deadline / TICKS.
pub(crate) const KEEP_ALIVE_TICKS: u32 = 8;

/// Time the last bytes may take to reach a client after we decide to close (DISCONNECT with a reason code).
pub(crate) const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// What one connection negotiated.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnLimits {
    /// Keep alive in force (seconds, 0 = none).
    pub(crate) keep_alive: u16,
    /// Keep alive announced in CONNACK when the server overrides the client's.
    pub(crate) server_keep_alive: Option<u16>,
    /// Session expiry granted (seconds).
    pub(crate) session_expiry: u32,
    /// Unacked QoS>0 messages we may have outstanding to the client.
    pub(crate) outbound_window: usize,
    /// Topic aliases we may assign on PUBLISHes to the client.
    pub(crate) outbound_alias_max: u16,
    /// Client's maximum packet size, if it announced one.
    pub(crate) outbound_max_packet: Option<u32>,
}

impl ConnLimits {
    /// Negotiates from our config and the client's CONNECT.
    pub(crate) fn negotiate(
        config: &LimitsConfig,
        connect: &Connect,
        level: ProtocolLevel,
    ) -> ConnLimits {
        let session_cap =
            u32::try_from(config.session_expiry_maximum.as_secs()).unwrap_or(u32::MAX);
        let (session_expiry, server_keep_alive, keep_alive) = if level.is_v5() {
            let ka = config.server_keep_alive.unwrap_or(connect.keep_alive);
            (
                connect.session_expiry_interval_secs.min(session_cap),
                config.server_keep_alive,
                ka,
            )
        } else {
            // MQTT 3.x: clean session 0 means the session outlives the connection; cap it like a v5 request
            // for the maximum. A v3 client cannot be told another keep alive, so its own stays in force.
            let expiry = if connect.clean_start { 0 } else { session_cap };
            (expiry, None, connect.keep_alive)
        };
        let client_receive_max = connect.receive_max.map_or(u16::MAX, |n| n.get());
        ConnLimits {
            keep_alive,
            server_keep_alive,
            session_expiry,
            outbound_window: usize::from(client_receive_max.min(config.receive_maximum).max(1)),
            outbound_alias_max: if level.is_v5() {
                connect.topic_alias_max
            } else {
                0
            },
            outbound_max_packet: connect.max_packet_size.map(|n| n.get()),
        }
    }
}

/// Acknowledgements one connection may have waiting for the session store's commit; beyond it the connection
/// is not read from until commits catch up (a client's own inflight window is usually far smaller).
pub(crate) const MAX_DEFERRED_ACKS: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU16;

    #[test]
    fn window_is_the_smaller_receive_maximum() {
        let config = LimitsConfig::default();
        let connect = Connect {
            receive_max: NonZeroU16::new(5),
            keep_alive: 30,
            ..Connect::default()
        };
        let l = ConnLimits::negotiate(&config, &connect, ProtocolLevel::V5);
        assert_eq!(l.outbound_window, 5);
        assert_eq!(l.keep_alive, 30);
        let connect = Connect::default();
        let l = ConnLimits::negotiate(&config, &connect, ProtocolLevel::V5);
        assert_eq!(l.outbound_window, usize::from(config.receive_maximum));
    }

    #[test]
    fn server_keep_alive_overrides_v5_only() {
        let config = LimitsConfig {
            server_keep_alive: Some(10),
            ..LimitsConfig::default()
        };
        let connect = Connect {
            keep_alive: 60,
            ..Connect::default()
        };
        assert_eq!(
            ConnLimits::negotiate(&config, &connect, ProtocolLevel::V5).keep_alive,
            10
        );
        assert_eq!(
            ConnLimits::negotiate(&config, &connect, ProtocolLevel::V311).keep_alive,
            60
        );
        assert_eq!(keep_alive_deadline(2), Some(Duration::from_secs(3)));
        assert_eq!(keep_alive_deadline(0), None);
    }
}
