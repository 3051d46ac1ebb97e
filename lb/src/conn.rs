//! One client connection, end to end — the file to read first. The stages, each a call into its own module under
//! its own time and size limit:
//!
//! 1. accept ([`crate::listener`] spawns [`handle`] at once per socket);
//! 2. admission: connection caps, and the per-IP cap and rate for direct clients ([`crate::admission`]);
//! 3. incoming PROXY header, from a trusted proxy in front (`fleetgate_protocol::proxy::read_header`); the per-IP
//!    cap and rate then apply to the client it names;
//! 4. TLS, under the handshake budget and timeout ([`crate::tls`], identity by [`crate::identity`]);
//! 5. peek CONNECT: a whole CONNECT within the peek timeout and size cap (`fleetgate_protocol::peek`);
//! 6. select a backend by client ID and connect, failing over to the next-ranked one ([`crate::backend`]);
//! 7. PROXY header and the CONNECT to the backend, in one write;
//! 8. relay both ways until either side ends it, the idle timeout, a drain or an abort ([`crate::relay`]).
//!
//! This file is the order and the bookkeeping: one span per connection, the `accepted` / `routed` / `closed`
//! events, the registration that `/clients/{id}` and draining use, and one typed [`Outcome`] per connection
//! (the `outcome` label of `fleetgate_lb_connections_total`, and the side it is put down to). A client turned
//! away is answered in one place ([`Conn::answer_refusal`]).
//!
//! The connection loads the snapshot once, at accept, and keeps that `Arc` to its end: a reload swaps what new
//! connections see and never touches an established one, even when its backend or listener left the config.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetgate_ops::sources::SourceSlot;
use fleetgate_protocol::peek::{self, ConnectSummary, PeekError, Refusal};
use fleetgate_protocol::proxy::{self, HeaderSpec, PeerIdentity, ProxyPolicy};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{Instrument, field};

use crate::admission::{self, Gauge, Permit, Refused};
use crate::backend::BackendState;
use crate::relay::{self, RelayControl, RelayEnd, RelayOutcome, Side};
use crate::shared::Shared;
use crate::snapshot::{ListenerRuntime, Snapshot};
use crate::stream::ClientStream;
use crate::{identity, sockopt, tls, upstream};

/// Bytes requested per read while peeking the CONNECT: a typical CONNECT (client ID, user name, token) fits in
/// one read; the buffer grows up to `max_connect_size` only for clients that send more.
const PEEK_READ_CHUNK: usize = 1024;

/// Clients answered "server busy" at the same time on plain listeners (each holds a socket until its CONNECT
/// arrives or the peek timeout passes); beyond this, refused clients are simply closed.
pub(crate) const MAX_CONCURRENT_REFUSALS: usize = 1024;

/// Deadline for closing a client we turned away: a TLS close_notify (or a FIN behind unread data) waits on a client
/// that does not read, and such a client must not hold the task and its slot.
const CLIENT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// How one connection ended: the `outcome` label of `fleetgate_lb_connections_total`, and the side it is put
/// down to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Relayed to a backend until the relay ended.
    Routed(RelayEnd),
    /// Turned away by admission control (answered "server busy" on a plain listener when a slot is free).
    Refused(Refused),
    /// The trusted proxy in front sent no valid PROXY header.
    ProxyFailed,
    /// The TLS handshake failed or timed out.
    TlsFailed,
    /// No whole, valid CONNECT within the peek timeout and size cap.
    PeekFailed,
    /// No backend could be reached; the client was answered "server unavailable".
    BackendUnavailable,
}

impl Outcome {
    /// `routed`, `refused`, `proxy_failed`, `tls_failed`, `peek_failed` or `backend_unavailable`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Outcome::Routed(_) => "routed",
            Outcome::Refused(_) => "refused",
            Outcome::ProxyFailed => "proxy_failed",
            Outcome::TlsFailed => "tls_failed",
            Outcome::PeekFailed => "peek_failed",
            Outcome::BackendUnavailable => "backend_unavailable",
        }
    }

    /// The side that ended a relay; for a connection that never reached one, the side at fault (the LB's own
    /// limits count as internal).
    pub(crate) fn side(self) -> Side {
        match self {
            Outcome::Routed(end) => end.side(),
            Outcome::Refused(_) => Side::Internal,
            Outcome::ProxyFailed | Outcome::TlsFailed | Outcome::PeekFailed => Side::Client,
            Outcome::BackendUnavailable => Side::Backend,
        }
    }
}

/// Handles one accepted socket until it closes. Never fails: every outcome is logged and counted.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    listener_name: Arc<str>,
    gauge: Arc<Gauge>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let conn_id = shared.ids.next();
    let snapshot = shared.snapshot.load_full();
    // A listener removed by a reload between this accept and the load: nothing to serve it with.
    let Some(listener) = snapshot.listener(&listener_name).cloned() else {
        return;
    };
    let span = tracing::info_span!(
        "conn",
        conn.id = %conn_id,
        client.addr = %peer,
        listener = %listener.name,
        sni = field::Empty,
        mqtt.client_id = field::Empty,
        backend = field::Empty,
    );
    let conn = Conn {
        shared: &shared,
        snapshot: &snapshot,
        listener: &listener,
        gauge: &gauge,
        conn_id,
        peer,
    };
    let outcome = conn.run(stream).instrument(span).await;
    crate::metrics::connection_outcome(&listener.name, outcome.label());
}

/// What one connection carries through the stages.
struct Conn<'a> {
    shared: &'a Shared,
    snapshot: &'a Snapshot,
    listener: &'a ListenerRuntime,
    gauge: &'a Arc<Gauge>,
    conn_id: String,
    peer: SocketAddr,
}

impl Conn<'_> {
    /// Runs the stages in order; returns how the connection ended.
    async fn run(&self, mut stream: TcpStream) -> Outcome {
        let started = Instant::now();
        let local = stream.local_addr().unwrap_or(self.peer);
        tracing::info!(event = "accepted", tls = self.listener.tls.is_some());

        // 2. Admission, before any byte is read: connection caps and, for direct clients, the per-IP cap and rate.
        let proxied_peer = self
            .listener
            .proxy_policy
            .as_ref()
            .filter(|p| p.trusted.contains(self.peer.ip()));
        let (permit, mut source_slot) =
            match self.admit(proxied_peer.is_none().then_some(self.peer)) {
                Ok(admitted) => admitted,
                Err(refused) => return self.refuse(stream, refused).await,
            };
        sockopt::tune(&stream);

        // 3. A cloud LB in front of us tells us who the client is; the per-IP cap and rate are then that client's.
        let (source, destination) = match proxied_peer {
            None => (self.peer, local),
            Some(policy) => {
                let Some(addrs) = self.read_proxy_header(&mut stream, policy, local).await else {
                    return Outcome::ProxyFailed;
                };
                match self.admit_ip(addrs.0) {
                    Ok(slot) => source_slot = Some(slot),
                    Err(refused) => return self.refuse(stream, refused).await,
                }
                addrs
            }
        };

        // 4. TLS, under the handshake budget and timeout.
        let (mut client, mut identity) = match self.listener.tls.as_ref() {
            None => (ClientStream::Plain(stream), PeerIdentity::default()),
            Some(acceptor) => {
                if let Some(budget) = &self.snapshot.handshakes
                    && !budget.allow(Instant::now())
                {
                    return self.refuse(stream, Refused::TlsBudget).await;
                }
                match self.handshake(acceptor, stream).await {
                    Some(done) => done,
                    None => return Outcome::TlsFailed,
                }
            }
        };

        // 5. The first packet: a complete CONNECT within the peek timeout and size cap.
        let Some((summary, first_bytes)) = self.peek(&mut client).await else {
            return Outcome::PeekFailed;
        };
        let ip_key;
        let key = if summary.client_id.is_empty() {
            ip_key = source.ip().to_string();
            ip_key.as_bytes()
        } else {
            summary.client_id.as_bytes()
        };
        tracing::Span::current().record("mqtt.client_id", summary.client_id.as_str());

        // 6, 7. A backend, then the PROXY header and the CONNECT, in one write.
        identity.unique_id = Some(self.conn_id.clone().into_bytes());
        identity.lb_client_id = Some(summary.client_id.clone());
        let mut spec = HeaderSpec {
            source,
            destination,
            identity,
            crc32c: false,
        };
        let backends = &self.snapshot.backends;
        let timeout = self.snapshot.config.limits.backend_connect_timeout;
        let Some((backend, mut upstream)) =
            upstream::connect(backends, key, &mut spec, &first_bytes, timeout).await
        else {
            self.answer_refusal(
                &mut client,
                summary.protocol_level,
                Refusal::ServerUnavailable,
            )
            .await;
            tracing::warn!(event = "refused", reason = "no_backend", mqtt.client_id = %summary.client_id);
            return Outcome::BackendUnavailable;
        };
        // Only what the client pipelined behind its CONNECT is kept (usually nothing: no allocation), to start the
        // packet tracking of the relay; the peek buffer itself is freed before the long idle life of the relay.
        let pipelined = first_bytes
            .get(summary.packet_len..)
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        drop(first_bytes);
        sockopt::tune(&upstream);
        tracing::Span::current().record("backend", backend.name());
        tracing::info!(
            event = "routed",
            client_id = %summary.client_id,
            backend = %backend.name(),
            conn_id = %self.conn_id,
            protocol_level = summary.protocol_level,
            tls_version = spec.identity.tls_version.as_deref().unwrap_or(""),
            cn = spec.identity.cn.as_deref().unwrap_or(""),
        );
        drop(spec);

        // 8. The relay, counted against the backend and registered for `/clients/{id}` and drains.
        let _active = backend.track();
        let (_registration, drain) = self
            .shared
            .registry
            .register(&summary.client_id, backend.name());
        let limits = &self.snapshot.config.limits;
        let ctl = RelayControl {
            idle: Some(relay::idle_timeout(
                summary.keep_alive,
                limits.idle_grace,
                limits.max_idle,
            )),
            abort: &self.shared.abort,
            drain: &drain,
            protocol_level: summary.protocol_level,
            sent_after_connect: &pipelined,
            buffers: &self.shared.buffers,
        };
        let out = relay::relay(&mut client, &mut upstream, ctl).await;
        let outcome = relay_ended(&backend, summary.packet_len as u64, started, out);
        drop((permit, source_slot));
        outcome
    }

    /// Connection caps, then the per-IP cap and bucket for `direct` (a client not behind a trusted proxy).
    fn admit(&self, direct: Option<SocketAddr>) -> Result<(Permit, Option<SourceSlot>), Refused> {
        let permit = admission::acquire(
            (self.gauge, self.listener.max_connections),
            (
                &self.shared.total,
                self.snapshot.config.limits.max_connections,
            ),
        )?;
        let slot = direct.map(|addr| self.admit_ip(addr)).transpose()?;
        Ok((permit, slot))
    }

    /// The client at `addr`: one more open connection from its source (IPv6: its /64) if under
    /// `max_connections_per_ip`, then a token of its per-IP bucket. The slot counts the connection until dropped.
    fn admit_ip(&self, addr: SocketAddr) -> Result<SourceSlot, Refused> {
        let max = self.snapshot.config.limits.max_connections_per_ip;
        let slot = self
            .shared
            .sources
            .try_acquire(addr.ip(), max)
            .ok_or(Refused::PerIpConnections)?;
        match &self.snapshot.per_ip {
            Some(limiter) if !limiter.allow(addr.ip(), Instant::now()) => Err(Refused::PerIpRate),
            _ => Ok(slot),
        }
    }

    /// Reads the PROXY header of a trusted proxy in front: the client's source and destination addresses
    /// (`local` and the peer when the header has none). `None` when it is missing or invalid (counted and logged
    /// as the refusal `proxy_header`).
    async fn read_proxy_header(
        &self,
        stream: &mut TcpStream,
        policy: &ProxyPolicy,
        local: SocketAddr,
    ) -> Option<(SocketAddr, SocketAddr)> {
        match proxy::read_header(stream, self.peer, policy).await {
            Ok(header) => {
                let source = header.source.unwrap_or(self.peer);
                tracing::Span::current().record("client.addr", field::display(source));
                Some((source, header.destination.unwrap_or(local)))
            }
            Err(e) => {
                crate::metrics::admission_refused("proxy_header");
                tracing::info!(event = "refused", reason = "proxy_header", error = %e);
                None
            }
        }
    }

    /// Turns a client away: on a TLS listener by closing at once (cheaper than a handshake we would only use to
    /// say "busy"); on a plain one by reading its CONNECT and answering "server busy", so a well-behaved device
    /// backs off instead of retrying at once. Those answers are themselves capped ([`MAX_CONCURRENT_REFUSALS`]).
    async fn refuse(&self, stream: TcpStream, refused: Refused) -> Outcome {
        crate::metrics::admission_refused(refused.reason());
        tracing::info!(event = "refused", reason = refused.reason());
        if self.listener.tls.is_some() {
            return Outcome::Refused(refused);
        }
        // One slot per answer (taking it twice from the same gauge halved the cap).
        let Some(_slot) = self
            .shared
            .refusing
            .try_acquire(Some(MAX_CONCURRENT_REFUSALS))
        else {
            return Outcome::Refused(refused);
        };
        let mut client = ClientStream::Plain(stream);
        if let Some((summary, _)) = self.peek(&mut client).await {
            self.answer_refusal(&mut client, summary.protocol_level, Refusal::ServerBusy)
                .await;
        }
        Outcome::Refused(refused)
    }

    /// The one way a client whose CONNECT was read is turned away: a refusing CONNACK in its protocol version,
    /// then the close, each under its deadline (a client that does not read must not hold the task).
    async fn answer_refusal(
        &self,
        client: &mut ClientStream,
        protocol_level: u8,
        refusal: Refusal,
    ) {
        let connack = peek::connack_refusal(protocol_level, refusal);
        let _ = tokio::time::timeout(
            self.snapshot.config.limits.connect_peek_timeout,
            client.write_all(&connack),
        )
        .await;
        let _ = tokio::time::timeout(CLIENT_SHUTDOWN_TIMEOUT, client.shutdown()).await;
    }

    /// The TLS handshake under the listener's timeout; the client's identity when it succeeds.
    async fn handshake(
        &self,
        acceptor: &tokio_rustls::TlsAcceptor,
        stream: TcpStream,
    ) -> Option<(ClientStream, PeerIdentity)> {
        let name = &self.listener.name;
        let timeout = self.listener.handshake_timeout;
        let started = Instant::now();
        let accept = tokio::time::timeout(timeout, acceptor.accept(stream));
        let (result, sig_scheme) = tls::with_sig_scheme(accept).await;
        match result {
            Ok(Ok(tls)) => {
                crate::metrics::tls_handshake(name, started.elapsed());
                let send_cert = self.snapshot.backends.any_sends_client_cert();
                let identity = identity::from_tls(
                    tls.get_ref().1,
                    self.listener.verifies_clients,
                    send_cert,
                    sig_scheme,
                );
                if let Some(sni) = &identity.authority {
                    tracing::Span::current().record("sni", sni.as_str());
                }
                Some((ClientStream::Tls(Box::new(tls)), identity))
            }
            Ok(Err(e)) => {
                crate::metrics::tls_failure(name, "error");
                tracing::info!(event = "tls_failed", reason = "error", error = %e);
                None
            }
            Err(_) => {
                crate::metrics::tls_failure(name, "timeout");
                tracing::info!(event = "tls_failed", reason = "timeout");
                None
            }
        }
    }

    /// Reads until a whole CONNECT is buffered; the summary and every byte read (CONNECT first, then anything
    /// the client pipelined behind it). Counts and logs every outcome.
    async fn peek(&self, client: &mut ClientStream) -> Option<(ConnectSummary, Vec<u8>)> {
        let limits = &self.snapshot.config.limits;
        let result = tokio::time::timeout(
            limits.connect_peek_timeout,
            read_connect(client, limits.max_connect_size),
        )
        .await;
        let outcome = match &result {
            Ok(Ok((summary, _))) if summary.client_id.is_empty() => "empty_id",
            Ok(Ok(_)) => "valid",
            Ok(Err(ReadError::Peek(e))) => e.reason(),
            Ok(Err(ReadError::Closed)) => "closed",
            Err(_) => "timeout",
        };
        crate::metrics::peek_outcome(outcome);
        match result {
            Ok(Ok(done)) => {
                tracing::debug!(event = "connect_peek", outcome);
                Some(done)
            }
            _ => {
                tracing::info!(event = "connect_peek", outcome);
                None
            }
        }
    }
}

/// End-of-relay bookkeeping, in one place: passive detection (a backend that failed a relay is skipped by new
/// connections for a while), the relay and byte counters (the CONNECT, sent before the relay, counted too) and
/// the `closed` event.
fn relay_ended(
    backend: &BackendState,
    connect_len: u64,
    started: Instant,
    out: RelayOutcome,
) -> Outcome {
    if out.end == RelayEnd::Error(Side::Backend) {
        backend.mark_failed(Instant::now());
    }
    let to_backend = out.to_backend + connect_len;
    crate::metrics::relay_ended(backend.name(), out.end.reason(), to_backend, out.to_client);
    let outcome = Outcome::Routed(out.end);
    tracing::info!(
        event = "closed",
        duration_ms = started.elapsed().as_millis() as u64,
        bytes_to_backend = to_backend,
        bytes_to_client = out.to_client,
        closed_by = outcome.side().as_str(),
        reason = out.end.reason(),
    );
    outcome
}

/// Why no CONNECT could be read.
enum ReadError {
    Peek(PeekError),
    Closed,
}

/// Reads from `stream` until [`peek::peek_connect`] has a whole CONNECT (any fragmentation tolerated).
async fn read_connect<S: AsyncRead + Unpin>(
    stream: &mut S,
    max_len: usize,
) -> Result<(ConnectSummary, Vec<u8>), ReadError> {
    let mut buf = Vec::new();
    loop {
        if let Some(summary) = peek::peek_connect(&buf, max_len).map_err(ReadError::Peek)? {
            return Ok((summary, buf));
        }
        buf.reserve(PEEK_READ_CHUNK);
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return Err(ReadError::Closed),
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use fleetgate_config::lb::LbConfig;
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    use super::*;
    use crate::snapshot::STATIC_SOURCE;

    const PLAIN: &str = "[lb]\nname = \"a\"\n[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n[[backends]]\nname = \"b0\"\naddress = \"127.0.0.1:1\"\n";

    /// An MQTT 3.1.1 CONNECT, client ID `a`.
    const CONNECT: [u8; 15] = [
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 1, b'a',
    ];

    async fn pair() -> (TcpStream, TcpStream, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, peer) = l.accept().await.unwrap();
        (client, server, peer)
    }

    #[test]
    fn outcomes_have_a_label_and_a_side() {
        let table = [
            (
                Outcome::Routed(RelayEnd::Eof(Side::Client)),
                "routed",
                Side::Client,
            ),
            (
                Outcome::Routed(RelayEnd::Error(Side::Backend)),
                "routed",
                Side::Backend,
            ),
            (Outcome::Routed(RelayEnd::Drained), "routed", Side::Internal),
            (
                Outcome::Refused(Refused::PerIpRate),
                "refused",
                Side::Internal,
            ),
            (Outcome::ProxyFailed, "proxy_failed", Side::Client),
            (Outcome::TlsFailed, "tls_failed", Side::Client),
            (Outcome::PeekFailed, "peek_failed", Side::Client),
            (
                Outcome::BackendUnavailable,
                "backend_unavailable",
                Side::Backend,
            ),
        ];
        for (outcome, label, side) in table {
            assert_eq!(
                (outcome.label(), outcome.side()),
                (label, side),
                "{outcome:?}"
            );
        }
    }

    #[tokio::test]
    async fn every_refusal_slot_answers_busy() {
        let config = LbConfig::parse(Path::new("lb.toml"), PLAIN).unwrap();
        let snapshot = Snapshot::build(config, &[], STATIC_SOURCE, None).unwrap();
        let (control, _commands) = mpsc::channel(1);
        let shared = Shared::new(snapshot.clone(), control);
        let listener = snapshot.listener("l").unwrap().clone();
        let gauge = Gauge::new(None);
        // Every "server busy" slot but the last is taken by refusals in progress.
        let elsewhere = Gauge::new(None);
        let _held: Vec<Permit> = (1..MAX_CONCURRENT_REFUSALS)
            .map(|_| admission::acquire((&elsewhere, None), (&shared.refusing, None)).unwrap())
            .collect();
        assert_eq!(shared.refusing.open(), MAX_CONCURRENT_REFUSALS - 1);

        let (mut client, server, peer) = pair().await;
        client.write_all(&CONNECT).await.unwrap();
        let conn = Conn {
            shared: &shared,
            snapshot: &snapshot,
            listener: &listener,
            gauge: &gauge,
            conn_id: "test-1".into(),
            peer,
        };
        let outcome = conn.refuse(server, Refused::TotalFull).await;
        assert_eq!(outcome, Outcome::Refused(Refused::TotalFull));
        assert_eq!(
            (outcome.label(), outcome.side()),
            ("refused", Side::Internal)
        );
        // A client closed without an answer may see a reset (its CONNECT was never read): no bytes either way.
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answer)).await;
        assert_eq!(
            answer,
            peek::connack_refusal(4, Refusal::ServerBusy),
            "the {MAX_CONCURRENT_REFUSALS}th concurrent refusal is answered, not dropped"
        );
        assert_eq!(shared.refusing.open(), MAX_CONCURRENT_REFUSALS - 1);
    }
}
