//! Stages 2–6 of a connection: the PROXY header, CONNECT, authentication and limits, the session (fetched from
//! the cluster first when it is held elsewhere), CONNACK. Everything held here — the CONNECT, the
//! authentication, the cluster fetch — is gone once the connection is established.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::num::NonZeroU16;

use fleetgate_protocol::mqtt::{
    ByteString, Codec, CodecError, ConnectAck, ConnectAckReason, Packet, ProtocolLevel,
};
use fleetgate_protocol::proxy::{self, ProxyCommand, ProxyError};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::inbound::InboundAliases;
use super::outbound::{self, OutboundAliases};
use super::wire::{ReadError, Wire};
use super::{Conn, Context, End};
use crate::access::{self, ClientAccess};
use crate::broker::{AttachRequest, ForwardMemo};
use crate::cluster::frame::Claimant;
use crate::limits::{CLOSE_FLUSH_TIMEOUT, ConnLimits};
use crate::origin::ClientOrigin;
use crate::state::will::{Will, WillPermit};
use crate::{events, metrics};
use fleetgate_auth::{AuthFailure, Principal};

/// A connection past CONNACK, as [`establish`] hands it to the packet loop.
pub(super) struct Established {
    /// The connection.
    pub(super) conn: Conn,
    /// Client address (PROXY source or TCP peer).
    pub(super) source: SocketAddr,
    /// This connection's generation in the session.
    pub(super) generation: u64,
    /// Set when the connection already ended (CONNACK could not be encoded).
    pub(super) ended: Option<End>,
}

/// A connection that ended before CONNACK: how, and what is known of the client.
pub(super) struct Early {
    /// How it ended.
    pub(super) end: End,
    /// Client address (PROXY source or TCP peer).
    pub(super) source: SocketAddr,
    /// The client ID, when the CONNECT was read (empty otherwise).
    pub(super) client_id: ByteString,
}

impl Early {
    fn new(end: End, origin: &ClientOrigin) -> Early {
        Early {
            end,
            source: origin.source,
            client_id: ByteString::new(),
        }
    }

    /// Logs and counts it (a refused PROXY header was logged with its error where it was read).
    pub(super) fn record(&self) {
        let end = self.end;
        if end == End::ServerShutdown {
            // Closed by the shutdown before its CONNECT arrived: not counted as an attempt.
            return;
        }
        metrics::connection_result(end.connection_result());
        if end.counts_as_early_disconnect() {
            metrics::disconnect(end.reason());
        }
        match end {
            End::ProxyRejected => {}
            End::Refused(_) => events::connect_refused(&self.client_id, self.source, end.reason()),
            _ => events::disconnect(&self.client_id, self.source, end.reason(), end.detail()),
        }
    }
}

/// Stages 2–6: PROXY header, CONNECT, authentication, attach, CONNACK.
pub(super) async fn establish(
    mut stream: TcpStream,
    peer: SocketAddr,
    ctx: &Context,
    shutdown: &CancellationToken,
) -> Result<Established, Early> {
    // Latency over throughput for small MQTT packets; batching is done by our own write buffer.
    let _ = stream.set_nodelay(true);

    // Stage 2: PROXY header (listener's timeout and size cap).
    let origin = match read_proxy(&mut stream, peer, ctx).await {
        Ok(origin) => origin,
        Err(e) => {
            events::proxy_rejected(peer, e.reason(), &e);
            metrics::proxy_rejected(e.reason());
            return Err(Early::new(End::ProxyRejected, &ClientOrigin::direct(peer)));
        }
    };

    // Stage 3: CONNECT, under connect_timeout.
    let broker = &ctx.broker;
    let mut wire = Wire::new(stream, Codec::new(broker.limits.max_packet_size));
    let read = tokio::select! {
        _ = shutdown.cancelled() => return Err(Early::new(End::ServerShutdown, &origin)),
        read = tokio::time::timeout(broker.limits.connect_timeout, wire.read_packet()) => read,
    };
    let mut connect = match read {
        Ok(Ok(Packet::Connect(connect))) => connect,
        Ok(Ok(_)) => return Err(refuse_codec(wire, &origin, CodecError::ExpectedConnect).await),
        Ok(Err(ReadError::Codec(e))) => return Err(refuse_codec(wire, &origin, e).await),
        Ok(Err(ReadError::Closed | ReadError::Io(_))) => {
            return Err(Early::new(End::Ungraceful, &origin));
        }
        Err(_elapsed) => return Err(Early::new(End::ConnectTimeout, &origin)),
    };
    let level = wire.codec.protocol_level().unwrap_or(ProtocolLevel::V311);

    // Stage 4: client ID, authentication, limits.
    let mut assigned = None;
    if connect.client_id.is_empty() {
        // v5 always gets one assigned; v3.1.1 only with clean session [MQTT-3.1.3-8].
        if !level.is_v5() && !connect.clean_start {
            let reason = ConnectAckReason::ClientIdentifierNotValid;
            return Err(refuse(wire, &origin, "", reason).await);
        }
        let id = broker.assign_client_id();
        connect.client_id = id.clone();
        assigned = Some(id);
    }
    let client_access = match ctx
        .access
        .authenticate(&ctx.listener, &connect, &origin)
        .await
    {
        Ok(client_access) => client_access,
        Err(failure) => {
            access::refused(&connect.client_id, origin.source, failure);
            let reason = access::connack_reason(failure, level);
            return Err(refuse(wire, &origin, &connect.client_id, reason).await);
        }
    };
    let limits = ConnLimits::negotiate(&broker.limits, &connect, level);
    wire.codec.set_outbound_max(limits.outbound_max_packet);

    // Stage 5: attach to the session — first fetched from the node that holds it, when it is elsewhere in
    // the cluster (bounded by the cluster's takeover timeout; nothing to ask in the common case).
    // Copied: the decoded client ID is a slice of the read chunk, which the session would otherwise pin for
    // its whole life.
    let client_id = ByteString::from(&*connect.client_id);
    if let Some(cluster) = &ctx.cluster {
        let claimant = Claimant {
            principal: Principal::clone(client_access.principal()),
            binding: client_access.binding(),
        };
        if cluster
            .acquire(&client_id, connect.clean_start, &claimant)
            .await
            .is_err()
        {
            // Another node holds the session for another identity: refused there, untouched.
            return Err(refuse_session(wire, &origin, &client_access, &client_id, level).await);
        }
        // Draining: a session attached here now could miss the handover; the client goes to another node.
        if cluster.is_leaving() {
            let reason = ConnectAckReason::UseAnotherServer;
            return Err(refuse(wire, &origin, &client_id, reason).await);
        }
    }
    let permit = WillPermit::for_client(&client_access);
    let attached = broker.attach(AttachRequest {
        client_id: client_id.clone(),
        clean_start: connect.clean_start,
        expiry_secs: limits.session_expiry,
        will: Will::from_connect(&mut connect, Some(permit)),
        protocol: level,
        source: origin.source,
        window: limits.outbound_window,
        principal: client_access.principal().clone(),
        binding: client_access.binding(),
    });
    let Ok(attached) = attached else {
        // The session belongs to another identity: refused like an authentication failure.
        return Err(refuse_session(wire, &origin, &client_access, &client_id, level).await);
    };
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
        receive_max: NonZeroU16::new(broker.limits.receive_maximum).unwrap_or(NonZeroU16::MIN),
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
        wakeup: attached.wakeup,
        limits,
        level,
        connect_expiry: connect.session_expiry_interval_secs,
        inbound_aliases: InboundAliases::new(broker.limits.topic_alias_maximum),
        outbound_aliases: OutboundAliases::new(limits.outbound_alias_max),
        heard: false,
        access: client_access,
        forward_memo: ForwardMemo::default(),
        deferred: VecDeque::new(),
        deferred_publishes: 0,
    };
    drop(connect);
    let ended = match conn.wire.encode(Packet::ConnectAck(Box::new(connack))) {
        Ok(()) => {
            outbound::resend_inflight(&mut conn);
            None
        }
        Err(e) => Some(End::codec(e)),
    };
    Ok(Established {
        conn,
        source: origin.source,
        generation: attached.generation,
        ended,
    })
}

/// Stage 2: reads the PROXY header when the listener requires one (rejecting untrusted peers before reading);
/// a LOCAL command (LB health check) proceeds with the peer's own address.
async fn read_proxy(
    stream: &mut TcpStream,
    peer: SocketAddr,
    ctx: &Context,
) -> Result<ClientOrigin, ProxyError> {
    let Some(policy) = &ctx.proxy else {
        return Ok(ClientOrigin::direct(peer));
    };
    let header = proxy::read_header(stream, peer, policy).await?;
    let source = match header.command {
        ProxyCommand::Local => peer,
        ProxyCommand::Proxy => header.source.unwrap_or(peer),
    };
    Ok(ClientOrigin {
        source,
        identity: Some(Box::new(header.identity)),
    })
}

/// Refuses a connection whose first packet the codec rejected: a CONNACK with the reason when the protocol
/// level is known (e.g. 0x84 / v3 0x01 for an unsupported level), then close.
async fn refuse_codec(mut wire: Wire, origin: &ClientOrigin, e: CodecError) -> Early {
    let reason = match e {
        CodecError::UnsupportedProtocolLevel => Some(ConnectAckReason::UnsupportedProtocolVersion),
        CodecError::InvalidClientId => Some(ConnectAckReason::ClientIdentifierNotValid),
        CodecError::PacketTooLarge => Some(ConnectAckReason::PacketTooLarge),
        _ if wire.codec.protocol_level().is_some() => {
            ConnectAckReason::try_from(e.v5_disconnect_reason()).ok()
        }
        _ => None,
    };
    if let (Some(reason), Some(_)) = (reason, wire.codec.protocol_level()) {
        send_connack_refusal(&mut wire, reason).await;
    }
    Early::new(End::codec(e), origin)
}

/// Refuses a CONNECT whose client ID's session belongs to another identity (logged and counted as an
/// authentication refusal, `session_owner_mismatch`).
async fn refuse_session(
    wire: Wire,
    origin: &ClientOrigin,
    client_access: &ClientAccess,
    client_id: &str,
    level: ProtocolLevel,
) -> Early {
    client_access
        .access()
        .refuse_session(client_id, origin.source);
    let reason = access::connack_reason(AuthFailure::SessionOwnerMismatch, level);
    refuse(wire, origin, client_id, reason).await
}

/// Refuses a decoded CONNECT with a CONNACK reason.
async fn refuse(
    mut wire: Wire,
    origin: &ClientOrigin,
    client_id: &str,
    reason: ConnectAckReason,
) -> Early {
    send_connack_refusal(&mut wire, reason).await;
    Early {
        end: End::Refused(reason),
        source: origin.source,
        client_id: client_id.into(),
    }
}

/// Writes a CONNACK refusing the connection with `reason`, and waits (briefly) for it to leave.
async fn send_connack_refusal(wire: &mut Wire, reason: ConnectAckReason) {
    let ack = ConnectAck {
        reason_code: reason,
        ..ConnectAck::default()
    };
    if wire.encode(Packet::ConnectAck(Box::new(ack))).is_ok() {
        let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, wire.flush()).await;
    }
}
