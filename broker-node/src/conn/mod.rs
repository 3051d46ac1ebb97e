//! One client connection, end to end — the file to read first. The stages:
//!
//! 1. accept (in [`crate::listener`]), one task per connection at once;
//! 2. the PROXY header, when the listener requires one (under its own timeout and size cap);
//! 3. CONNECT under `connect_timeout` (nothing else is read before it);
//! 4. client ID (assigned when empty), authentication from the CONNECT and the PROXY identity
//!    ([`crate::access`]; a refusal is a CONNACK with the reason and an `auth_failed` event), limits
//!    ([`ConnLimits`]);
//! 5. the session — fetched from the cluster when another node holds it, then attached: new, resumed, or
//!    taken over from another connection ([`Broker::attach`]);
//! 6. CONNACK, then the unacknowledged messages of a resumed session again (DUP, PUBREL);
//! 7. the packet loop: read and handle packets ([`inbound`]), drain the session queue into the socket
//!    ([`outbound`]), keep alive, takeover and shutdown;
//! 8. the end ([`End`]): a v5 DISCONNECT with the reason when we close, then detach (will, session expiry).
//!
//! Stages 2–6 are [`handshake`]; [`wire`] is the socket with its transient buffers.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use fleetgate_protocol::mqtt::{ByteString, CodecError, Disconnect, Packet, ProtocolLevel};
use fleetgate_protocol::proxy::ProxyPolicy;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::access::{Access, ClientAccess};
use crate::broker::{Broker, ForwardMemo, SessionStore, StoreFailed, wait_committed};
use crate::cluster::Cluster;
use crate::limits::{self, CLOSE_FLUSH_TIMEOUT, ConnLimits, MAX_DEFERRED_ACKS, WRITE_HIGH_WATER};
use crate::metrics::DropReason;
use crate::state::session::Session;
use crate::wakeup::{Wake, Wakeup};
use crate::{events, metrics};

mod end;
mod handshake;
mod inbound;
mod outbound;
mod wire;

pub(crate) use end::{End, Violation};
use inbound::InboundAliases;
use outbound::OutboundAliases;
use wire::{Ready, Wire};

/// What every connection of one listener shares: the listener's PROXY policy and name, and the node's broker,
/// cluster and access control.
#[derive(Debug)]
pub(crate) struct Context {
    /// The PROXY policy when the listener requires a header.
    pub(crate) proxy: Option<ProxyPolicy>,
    /// The listener's configured name (`""` when unnamed): selects its `[auth.listeners.<name>]` policy.
    pub(crate) listener: String,
    /// Authentication and ACL state shared by every listener.
    pub(crate) access: Arc<Access>,
    /// The node's broker.
    pub(crate) broker: Arc<Broker>,
    /// The cluster, when the node is part of one.
    pub(crate) cluster: Option<Arc<Cluster>>,
}

/// A connection past CONNECT: everything the packet loop and its handlers use.
struct Conn {
    /// Socket, codec and buffers.
    wire: Wire,
    /// Shared broker state.
    broker: Arc<Broker>,
    /// This client's session.
    session: Arc<Session>,
    /// Wake-ups and takeover.
    wakeup: Arc<Wakeup>,
    /// Negotiated limits.
    limits: ConnLimits,
    /// Protocol level.
    level: ProtocolLevel,
    /// Session expiry from CONNECT (v5: a DISCONNECT may not raise 0 to non-zero).
    connect_expiry: u32,
    /// Topic aliases the client set.
    inbound_aliases: InboundAliases,
    /// Topic aliases we set.
    outbound_aliases: OutboundAliases,
    /// The client sent something since the keep-alive timer last ticked (set per read: cheaper than reading
    /// the clock for every packet).
    heard: bool,
    /// Who the client authenticated as, and its ACL.
    access: ClientAccess,
    /// Where this client's last message went in the cluster.
    forward_memo: ForwardMemo,
    /// Acknowledgements (PUBACK, PUBREC, SUBACK, ...) waiting for the session store to commit what their packet
    /// changed, with the ticket each waits for; sent in order.
    deferred: VecDeque<(u64, Packet)>,
    /// How many of `deferred` are PUBLISHes (QoS 2 ones waiting for the store to have their packet ID, and
    /// every later one behind them).
    deferred_publishes: usize,
}

/// Serves one accepted TCP connection to its end.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<Context>,
    shutdown: CancellationToken,
) {
    // Stages 2–6 hold large state (the CONNECT, authentication, the cluster fetch) only until CONNACK: boxed,
    // so it is freed then and the future that lives as long as the connection stays small (memory per idle
    // connection is a product goal; `future_sizes` checks it).
    let established = match Box::pin(handshake::establish(stream, peer, &ctx, &shutdown)).await {
        Ok(established) => established,
        Err(early) => {
            early.record();
            return;
        }
    };
    let handshake::Established {
        mut conn,
        source,
        generation,
        ended,
    } = established;
    let end = match ended {
        Some(end) => end,
        // Stage 7: the packet loop.
        None => conn.run(&shutdown).await,
    };

    // Stage 8: the end.
    if let (true, Some(code)) = (conn.level.is_v5(), end.disconnect_code()) {
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
    let broker = &conn.broker;
    broker.detach(&conn.session, generation, end.publishes_will(), expiry);
    broker.metrics.connections_current.decrement(1.0);
    metrics::disconnect(end.reason());
    events::disconnect(&conn.session.client_id, source, end.reason(), end.detail());
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
            // Likewise a client whose acknowledgements wait for the store is not read from beyond a bound.
            let want_read = pending < WRITE_HIGH_WATER && self.deferred.len() < MAX_DEFERRED_ACKS;
            let waiting_for = self.deferred.front().map(|(ticket, _)| *ticket);
            // Drained up to the high-water mark and the socket took it all: more is queued, and no signal comes
            // for it (only the queue's empty → non-empty edge signals). Go again, within the task's budget.
            let drain_again = more && !want_write;
            tokio::select! {
                biased;
                wake = std::future::poll_fn(|cx| self.wakeup.poll_wake(cx)) => match wake {
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
                committed = wait_until_committed(self.broker.store(), waiting_for.unwrap_or(0)), if waiting_for.is_some() => {
                    if committed.is_err() {
                        return End::StoreUnavailable;
                    }
                    if let Err(end) = self.send_committed() {
                        return end;
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

impl Conn {
    /// Sends the waiting acknowledgements whose writes are now durable, in order.
    fn send_committed(&mut self) -> Result<(), End> {
        let committed = self.broker.store().map_or(u64::MAX, |s| s.committed());
        while self
            .deferred
            .front()
            .is_some_and(|(ticket, _)| *ticket <= committed)
        {
            let Some((_, packet)) = self.deferred.pop_front() else {
                break;
            };
            let Packet::Publish(publish) = packet else {
                self.wire.encode(packet).map_err(End::codec)?;
                continue;
            };
            self.deferred_publishes -= 1;
            let packet_id = publish.packet_id;
            match self.wire.encode(Packet::Publish(publish)) {
                Err(CodecError::OutboundTooLarge) => {
                    // Larger than the client takes: dropped like one sent at once (and forgotten).
                    self.broker.metrics.dropped(DropReason::TooLarge);
                    let mut st = self.session.state.lock();
                    let pos = st
                        .inflight
                        .iter()
                        .position(|e| Some(e.packet_id) == packet_id);
                    if let Some(e) = pos.and_then(|pos| st.inflight.remove(pos)) {
                        self.broker
                            .persist_forget(&self.session.client_id, e.delivery.seq);
                    }
                }
                other => other.map_err(End::codec)?,
            }
        }
        Ok(())
    }
}

/// Waits until `store` committed `ticket` (at once without a store).
async fn wait_until_committed(
    store: Option<&dyn SessionStore>,
    ticket: u64,
) -> Result<(), StoreFailed> {
    match store {
        Some(store) => wait_committed(store, ticket).await,
        None => Ok(()),
    }
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
        let broker = Arc::new(Broker::new(
            "n".into(),
            LimitsConfig::default(),
            crate::metrics::Metrics::register(),
            CancellationToken::new(),
            None,
        ));
        let ctx = Arc::new(Context {
            proxy: None,
            listener: String::new(),
            access: Access::disabled(),
            broker,
            cluster: None,
        });
        let shutdown = CancellationToken::new();
        let serve = serve(stream, addr, ctx, shutdown);
        let size = std::mem::size_of_val(&serve);
        eprintln!(
            "serve future: {size} B, Conn: {} B",
            std::mem::size_of::<Conn>()
        );
        assert!(size <= SERVE_FUTURE_MAX, "serve future is {size} B");
    }
}
