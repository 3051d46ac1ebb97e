//! One client connection, end to end — the file to read first:
//!
//! 1. accept (in [`listener`]) and `TCP_NODELAY`;
//! 2. the PROXY header, when the listener requires one ([`listener::read_proxy`], under its own timeout);
//! 3. CONNECT under `connect_timeout` (nothing else is read before it);
//! 4. client ID (assigned when empty), authentication from the CONNECT and the PROXY identity ([`auth`]; a
//!    refusal is a CONNACK with the reason and an `auth_failed` event), limits ([`ConnLimits`]);
//! 5. attach to the session — new, resumed, or taken over from another connection ([`Broker::attach`]);
//! 6. CONNACK, then the unacknowledged messages of a resumed session again (DUP, PUBREL);
//! 7. the packet loop: read and handle packets ([`inbound`]), drain the session queue into the socket
//!    ([`outbound`]), keep alive, takeover and shutdown;
//! 8. the end: a v5 DISCONNECT with the reason when we close, then detach (will, session expiry).

use std::net::SocketAddr;
use std::sync::Arc;

use fleetgate_protocol::mqtt::{
    ByteString, Codec, CodecError, ConnectAck, ConnectAckReason, Disconnect, DisconnectReasonCode,
    Packet, ProtocolLevel,
};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::auth::ConnAuth;
use crate::broker::{AttachRequest, Broker};
use crate::cluster::relay::ForwardCache;
use crate::inbound::InboundAliases;
use crate::limits::{self, CLOSE_FLUSH_TIMEOUT, ConnLimits, WRITE_HIGH_WATER};
use crate::listener::{self, ClientOrigin, ListenerCtx};
use crate::outbound::OutboundAliases;
use crate::session::Session;
use crate::signal::{ConnSignal, Wake};
use crate::wire::{ReadError, Ready, Wire};
use crate::{auth, events, inbound, metrics, outbound, will};

/// How a connection ended; decides the log/metric reason, the v5 DISCONNECT we send and the will.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client sent DISCONNECT; `with_will` for reason 0x04; `expiry` from its properties.
    Graceful {
        /// DISCONNECT with Will Message (0x04).
        with_will: bool,
        /// Session expiry update.
        expiry: Option<u32>,
    },
    /// The socket closed or failed without DISCONNECT.
    Ungraceful,
    /// Nothing received for 1.5 × keep alive.
    KeepAliveTimeout,
    /// Another connection with the same client ID took the session.
    Takeover,
    /// The session moved to another node (this one is draining): v5 DISCONNECT 0x9C, use another server.
    Moved,
    /// The node is shutting down.
    ServerShutdown,
    /// A packet above our maximum packet size.
    TooLarge,
    /// A 3.1.1 PUBLISH the ACL denied, with `[auth] v3_disconnect_on_denied_publish` on.
    NotAuthorized,
    /// A protocol violation: `detail` is the codec reason, `code` the v5 reason code to send.
    Protocol {
        /// Label for the log.
        detail: &'static str,
        /// v5 DISCONNECT reason code.
        code: u8,
    },
}

impl End {
    /// A protocol error from the codec.
    pub fn codec(e: CodecError) -> End {
        match e {
            CodecError::PacketTooLarge => End::TooLarge,
            CodecError::Io(_) => End::Ungraceful,
            e => End::Protocol {
                detail: e.reason(),
                code: e.v5_disconnect_reason(),
            },
        }
    }

    /// The `reason` of the disconnect log event and metric.
    pub fn reason(self) -> &'static str {
        match self {
            End::Graceful { .. } => "graceful",
            End::Ungraceful => "ungraceful",
            End::KeepAliveTimeout => "keepalive_timeout",
            End::Takeover => "takeover",
            End::Moved => "server_moved",
            End::ServerShutdown => "server_shutdown",
            End::TooLarge => "too_large",
            End::NotAuthorized => "not_authorized",
            End::Protocol { .. } => "protocol_error",
        }
    }

    /// The v5 DISCONNECT reason code we send, when we are the side closing.
    fn disconnect_code(self) -> Option<DisconnectReasonCode> {
        match self {
            End::Graceful { .. } | End::Ungraceful => None,
            End::KeepAliveTimeout => Some(DisconnectReasonCode::KeepAliveTimeout),
            End::Takeover => Some(DisconnectReasonCode::SessionTakenOver),
            End::Moved => Some(DisconnectReasonCode::UseAnotherServer),
            End::ServerShutdown => Some(DisconnectReasonCode::ServerShuttingDown),
            End::TooLarge => Some(DisconnectReasonCode::PacketTooLarge),
            End::NotAuthorized => Some(DisconnectReasonCode::NotAuthorized),
            End::Protocol { code, .. } => Some(
                DisconnectReasonCode::try_from(code).unwrap_or(DisconnectReasonCode::ProtocolError),
            ),
        }
    }

    /// Whether the will is published: not after DISCONNECT 0x00, not at shutdown (the node is going away, and
    /// takeover handles the will itself).
    fn publishes_will(self) -> bool {
        match self {
            End::Graceful { with_will, .. } => with_will,
            End::ServerShutdown | End::Takeover | End::Moved => false,
            _ => true,
        }
    }
}

/// A connection past CONNECT: everything the packet loop and its handlers use.
pub struct Conn {
    /// Socket, codec and buffers.
    pub wire: Wire,
    /// Shared broker state.
    pub broker: Arc<Broker>,
    /// This client's session.
    pub session: Arc<Session>,
    /// Wake-ups and takeover.
    pub signal: Arc<ConnSignal>,
    /// Negotiated limits.
    pub limits: ConnLimits,
    /// Protocol level.
    pub level: ProtocolLevel,
    /// Session expiry from CONNECT (v5: a DISCONNECT may not raise 0 to non-zero).
    pub connect_expiry: u32,
    /// Topic aliases the client set.
    pub inbound_aliases: InboundAliases,
    /// Topic aliases we set.
    pub outbound_aliases: OutboundAliases,
    /// The client sent something since the keep-alive timer last ticked (set per read: cheaper than reading
    /// the clock for every packet).
    pub heard: bool,
    /// Who the client authenticated as, and its ACL.
    pub auth: ConnAuth,
    /// Where this client's last message went in the cluster.
    pub forward_cache: ForwardCache,
}

/// A connection past CONNACK, as [`handshake`] hands it to the packet loop.
struct Established {
    conn: Conn,
    /// Client address (PROXY source or TCP peer).
    source: SocketAddr,
    /// This connection's generation in the session.
    generation: u64,
    /// Set when the connection already ended (CONNACK could not be encoded).
    ended: Option<End>,
}

/// Serves one accepted TCP connection to its end.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<ListenerCtx>,
    broker: Arc<Broker>,
    shutdown: CancellationToken,
) {
    // Stages 2–6 hold large state (the CONNECT, authentication, the cluster fetch) only until CONNACK: boxed,
    // so it is freed then and the future that lives as long as the connection stays small (memory per idle
    // connection is a product goal; `future_sizes` checks it).
    let Some(established) = Box::pin(handshake(stream, peer, ctx, &broker, &shutdown)).await else {
        return;
    };
    let Established {
        mut conn,
        source,
        generation,
        ended,
    } = established;
    let level = conn.level;
    let end = match ended {
        Some(end) => end,
        // Stage 7: the packet loop.
        None => conn.run(&shutdown).await,
    };

    // Stage 8: the end.
    if let (true, Some(code)) = (level.is_v5(), end.disconnect_code()) {
        // A reason string too: paho-mqtt 1.6 reads a DISCONNECT's reason code only when the packet is longer
        // than two bytes, and an operator reading a client log wants the words anyway.
        let mut disconnect = Disconnect::new(code);
        disconnect.reason_string = Some(ByteString::from_static(end.reason()));
        let _ = conn.wire.encode(Packet::Disconnect(disconnect));
    }
    if end != End::Ungraceful {
        let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, conn.wire.flush()).await;
    }
    let expiry = match end {
        End::Graceful { expiry, .. } => expiry,
        _ => None,
    };
    broker.detach(&conn.session, generation, end.publishes_will(), expiry);
    broker.metrics.connections_current.decrement(1.0);
    metrics::disconnect(end.reason());
    let detail = match end {
        End::Protocol { detail, .. } => Some(detail),
        _ => None,
    };
    events::disconnect(&conn.session.client_id, source, end.reason(), detail);
}

/// Stages 2–6: PROXY header, CONNECT, authentication, attach, CONNACK; `None` when the connection ended there
/// (already logged and counted).
async fn handshake(
    mut stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<ListenerCtx>,
    broker: &Arc<Broker>,
    shutdown: &CancellationToken,
) -> Option<Established> {
    // Latency over throughput for small MQTT packets; batching is done by our own write buffer.
    let _ = stream.set_nodelay(true);

    // Stage 2: PROXY header (listener's timeout and size cap).
    let origin = match listener::read_proxy(&mut stream, peer, &ctx).await {
        Ok(origin) => origin,
        Err(e) => {
            events::proxy_rejected(peer, e.reason(), &e);
            metrics::proxy_rejected(e.reason());
            metrics::connection_result("proxy_rejected");
            return None;
        }
    };

    // Stage 3: CONNECT, under connect_timeout.
    let mut wire = Wire::new(stream, Codec::new(broker.limits.max_packet_size));
    let read = tokio::select! {
        _ = shutdown.cancelled() => return None,
        read = tokio::time::timeout(broker.limits.connect_timeout, wire.read_packet()) => read,
    };
    let mut connect = match read {
        Ok(Ok(Packet::Connect(connect))) => connect,
        Ok(Ok(_)) => {
            refuse_early(wire, &origin, CodecError::ExpectedConnect).await;
            return None;
        }
        Ok(Err(ReadError::Codec(e))) => {
            refuse_early(wire, &origin, e).await;
            return None;
        }
        Ok(Err(ReadError::Closed | ReadError::Io(_))) => {
            end_early(&origin, "ungraceful", None);
            return None;
        }
        Err(_elapsed) => {
            end_early(&origin, "connect_timeout", None);
            return None;
        }
    };
    let level = wire.codec.protocol_level().unwrap_or(ProtocolLevel::V311);

    // Stage 4: client ID, authentication, limits.
    let mut assigned = None;
    if connect.client_id.is_empty() {
        // v5 always gets one assigned; v3.1.1 only with clean session [MQTT-3.1.3-8].
        if !level.is_v5() && !connect.clean_start {
            refuse(
                wire,
                &origin,
                "",
                ConnectAckReason::ClientIdentifierNotValid,
            )
            .await;
            return None;
        }
        let id = broker.assign_client_id();
        connect.client_id = id.clone();
        assigned = Some(id);
    }
    let conn_auth = match ctx.auth.authenticate(&ctx.name, &connect, &origin).await {
        Ok(conn_auth) => conn_auth,
        Err(failure) => {
            auth::refused(&connect.client_id, origin.source, failure);
            let reason = auth::connack_reason(failure, level);
            refuse(wire, &origin, &connect.client_id, reason).await;
            return None;
        }
    };
    let limits = ConnLimits::negotiate(&broker.limits, &connect, level);
    wire.codec.set_outbound_max(limits.outbound_max_packet);

    // Stage 5: attach to the session — first fetched from the node that holds it, when it is elsewhere in
    // the cluster (bounded by the cluster's takeover timeout; nothing to ask in the common case).
    // Copied: the decoded client ID is a slice of the read chunk, which the session would otherwise pin for
    // its whole life.
    let client_id = ByteString::from(&*connect.client_id);
    if let Some(cluster) = broker.cluster() {
        cluster
            .acquire(broker, &client_id, connect.clean_start)
            .await;
        // Draining: a session attached here now could miss the handover; the client goes to another node.
        if cluster.is_leaving() {
            refuse(
                wire,
                &origin,
                &client_id,
                ConnectAckReason::UseAnotherServer,
            )
            .await;
            return None;
        }
    }
    let attached = broker.attach(AttachRequest {
        client_id: client_id.clone(),
        clean_start: connect.clean_start,
        expiry_secs: limits.session_expiry,
        will: will::from_connect(&mut connect, Some(conn_auth.will_permit())),
        protocol: level,
        source: origin.source,
        window: limits.outbound_window,
    });
    events::connect(
        &client_id,
        &level.to_string(),
        origin.source,
        connect.clean_start,
        limits.keep_alive,
        attached.present,
    );
    metrics::connection_result("accepted");
    broker.metrics.connections_current.increment(1.0);

    // Stage 6: CONNACK, then what a resumed session still owes the client.
    let connack = ConnectAck {
        session_present: attached.present,
        session_expiry_interval_secs: (limits.session_expiry
            != connect.session_expiry_interval_secs)
            .then_some(limits.session_expiry),
        receive_max: std::num::NonZeroU16::new(broker.limits.receive_maximum)
            .unwrap_or(std::num::NonZeroU16::MIN),
        max_packet_size: Some(broker.limits.max_packet_size),
        assigned_client_id: assigned,
        topic_alias_max: broker.limits.topic_alias_maximum,
        server_keepalive_sec: limits.server_keep_alive,
        ..ConnectAck::default()
    };
    let mut conn = Conn {
        wire,
        broker: broker.clone(),
        session: attached.session,
        signal: attached.signal,
        limits,
        level,
        connect_expiry: connect.session_expiry_interval_secs,
        inbound_aliases: InboundAliases::new(broker.limits.topic_alias_maximum),
        outbound_aliases: OutboundAliases::new(limits.outbound_alias_max),
        heard: false,
        auth: conn_auth,
        forward_cache: ForwardCache::default(),
    };
    drop(connect);
    let ended = match conn.wire.encode(Packet::ConnectAck(Box::new(connack))) {
        Ok(()) => {
            outbound::resend_inflight(&mut conn);
            None
        }
        Err(e) => Some(End::codec(e)),
    };
    Some(Established {
        conn,
        source: origin.source,
        generation: attached.generation,
        ended,
    })
}

impl Conn {
    /// The packet loop: returns how the connection ended.
    async fn run(&mut self, shutdown: &CancellationToken) -> End {
        // From here on shutdown arrives through the signal ([`Broker::shutdown_connections`], called after
        // `shutdown` is cancelled): this check covers a connection attached after that sweep.
        if shutdown.is_cancelled() {
            return End::ServerShutdown;
        }
        let keep_alive = limits::keep_alive_deadline(self.limits.keep_alive);
        // One timer for the whole connection, ticking KEEP_ALIVE_TICKS times per keep-alive deadline: the
        // connection ends after that many ticks in a row with nothing heard, i.e. between 1 and 1 + 1/TICKS
        // deadlines after the client's last packet, and receiving a packet costs a flag store.
        let tick = keep_alive.map(|k| k / limits::KEEP_ALIVE_TICKS);
        let mut silent_ticks = 0u32;
        let timer = tokio::time::sleep(tick.unwrap_or_default());
        tokio::pin!(timer);
        loop {
            let more = match outbound::drain(self) {
                Ok(more) => more,
                Err(end) => return end,
            };
            if self.wire.try_flush().is_err() {
                return End::Ungraceful;
            }
            let pending = self.wire.pending();
            let want_write = pending > 0;
            // A client that does not read what we write is not read from either: replies to what it sends
            // (PUBACK, PINGRESP, ...) would otherwise grow the write buffer without bound.
            let want_read = pending < WRITE_HIGH_WATER;
            // Drained up to the high-water mark and the socket took it all: more is queued, and no signal comes
            // for it (only the queue's empty → non-empty edge signals). Go again, within the task's budget.
            let drain_again = more && !want_write;
            tokio::select! {
                biased;
                wake = std::future::poll_fn(|cx| self.signal.poll_wake(cx)) => match wake {
                    Wake::Shutdown => return End::ServerShutdown,
                    Wake::Moved => return End::Moved,
                    Wake::TakenOver => return End::Takeover,
                    Wake::Messages => {}
                },
                // One poll function for both directions rather than `readable()`/`writable()` futures: they would
                // live in this connection's future for its whole life (memory per idle connection).
                ready = std::future::poll_fn(|cx| Wire::poll_ready(&self.wire.stream, cx, want_read, want_write)),
                    if want_read || want_write =>
                {
                    match ready {
                        Ok(Ready::Read) => {
                            if let Err(end) = inbound::read_and_handle(self) {
                                return end;
                            }
                        }
                        Ok(Ready::Write) => {}
                        Err(_) => return End::Ungraceful,
                    }
                }
                () = tokio::task::consume_budget(), if drain_again => {}
                _ = &mut timer, if tick.is_some() => {
                    if std::mem::take(&mut self.heard) {
                        silent_ticks = 0;
                    } else {
                        silent_ticks += 1;
                        if silent_ticks >= limits::KEEP_ALIVE_TICKS {
                            return End::KeepAliveTimeout;
                        }
                    }
                    let next = timer.deadline() + tick.unwrap_or_default();
                    timer.as_mut().reset(next);
                }
            }
        }
    }
}

/// Refuses a connection whose first packet the codec rejected: a CONNACK with the reason when the protocol
/// level is known (e.g. 0x84 / v3 0x01 for an unsupported level), then close.
async fn refuse_early(wire: Wire, origin: &ClientOrigin, e: CodecError) {
    let reason = match e {
        CodecError::UnsupportedProtocolLevel => Some(ConnectAckReason::UnsupportedProtocolVersion),
        CodecError::InvalidClientId => Some(ConnectAckReason::ClientIdentifierNotValid),
        CodecError::PacketTooLarge => Some(ConnectAckReason::PacketTooLarge),
        _ if wire.codec.protocol_level().is_some() => {
            ConnectAckReason::try_from(e.v5_disconnect_reason()).ok()
        }
        _ => None,
    };
    let mut wire = wire;
    if let (Some(reason), Some(_)) = (reason, wire.codec.protocol_level()) {
        let ack = ConnectAck {
            reason_code: reason,
            ..ConnectAck::default()
        };
        if wire.encode(Packet::ConnectAck(Box::new(ack))).is_ok() {
            let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, wire.flush()).await;
        }
    }
    let reason = if e == CodecError::PacketTooLarge {
        "too_large"
    } else {
        "protocol_error"
    };
    end_early(origin, reason, Some(e.reason()));
}

/// Refuses a decoded CONNECT with a CONNACK reason.
async fn refuse(mut wire: Wire, origin: &ClientOrigin, client_id: &str, reason: ConnectAckReason) {
    let ack = ConnectAck {
        reason_code: reason,
        ..ConnectAck::default()
    };
    if wire.encode(Packet::ConnectAck(Box::new(ack))).is_ok() {
        let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, wire.flush()).await;
    }
    let label = match reason {
        ConnectAckReason::BadUserNameOrPassword | ConnectAckReason::NotAuthorized => "auth",
        _ => "refused",
    };
    events::connect_refused(client_id, origin.source, label);
    metrics::connection_result("refused");
    if label == "auth" {
        metrics::disconnect("auth");
    }
}

/// A connection that ended before CONNECT completed.
fn end_early(origin: &ClientOrigin, reason: &'static str, detail: Option<&'static str>) {
    metrics::connection_result(reason);
    metrics::disconnect(reason);
    events::disconnect("", origin.source, reason, detail);
}

#[cfg(test)]
mod size_tests {
    use super::*;
    use fleetgate_config::node::LimitsConfig;

    /// What an idle connection's task holds: the `serve` future (the handshake is boxed and gone by then).
    const SERVE_FUTURE_MAX: usize = 1536;

    #[tokio::test]
    async fn future_sizes() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let stream = TcpStream::connect(addr).await.unwrap();
        let ctx = Arc::new(ListenerCtx {
            local_addr: addr,
            proxy: None,
            name: String::new(),
            auth: crate::auth::AuthState::disabled(),
        });
        let broker = Arc::new(Broker::new(
            "n".into(),
            LimitsConfig::default(),
            crate::metrics::Metrics::register(),
            CancellationToken::new(),
        ));
        let shutdown = CancellationToken::new();
        let serve = serve(stream, addr, ctx, broker, shutdown);
        let size = std::mem::size_of_val(&serve);
        eprintln!(
            "serve future: {size} B, Conn: {} B",
            std::mem::size_of::<Conn>()
        );
        assert!(size <= SERVE_FUTURE_MAX, "serve future is {size} B");
    }
}
