//! TCP options set on both sockets of every relayed connection: MQTT packets are small and latency-bound, and
//! mobile (GSM) links vanish without a FIN, so dead peers must be found by the kernel, not by a buffer filling up.

use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

/// Idle time before the first keep-alive probe: shorter than typical carrier NAT timeouts (often 2–5 min), so
/// probes also keep the NAT mapping alive.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// Interval between unanswered probes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// Unanswered probes before the kernel drops the connection.
const KEEPALIVE_RETRIES: u32 = 4;
/// TCP_USER_TIMEOUT: how long sent data may stay unacknowledged before the kernel gives up; without it a
/// half-open link with data queued retransmits for ~15 minutes.
const USER_TIMEOUT: Duration = Duration::from_secs(120);

/// Sets TCP_NODELAY, keep-alive probes and TCP_USER_TIMEOUT; failures are logged, never fatal.
pub(crate) fn tune(stream: &TcpStream) {
    let sock = SockRef::from(stream);
    if let Err(e) = sock.set_tcp_nodelay(true) {
        tracing::debug!(event = "sockopt", option = "nodelay", error = %e);
    }
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    if let Err(e) = sock.set_tcp_keepalive(&keepalive) {
        tracing::debug!(event = "sockopt", option = "keepalive", error = %e);
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = sock.set_tcp_user_timeout(Some(USER_TIMEOUT)) {
        tracing::debug!(event = "sockopt", option = "user_timeout", error = %e);
    }
}
