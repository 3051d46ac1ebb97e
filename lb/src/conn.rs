//! One client connection, end to end: accept → admission → [incoming PROXY] → TLS → peek CONNECT → select
//! backend → PROXY header → relay. Each stage is a call into its own module under its own time and size limit;
//! this file is the order and the bookkeeping (one span per connection, the `accepted` / `routed` / `closed`
//! events, the outcome metric, the registration that `/clients/{id}` and draining use).
//!
//! The connection loads the snapshot once, at accept, and keeps that `Arc` to its end: a reload swaps what new
//! connections see and never touches an established one, even when its backend or listener left the config.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetgate_config::lb::ProxyVersion;
use fleetgate_protocol::peek::{self, ConnectSummary, PeekError, Refusal};
use fleetgate_protocol::proxy::{self, HeaderSpec, PeerIdentity};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{Instrument, field};

use crate::admission::{self, Gauge, Permit, Refused};
use crate::backend::{self, BackendState};
use crate::metrics::{BACKEND_BYTES, RELAYS_ENDED};
use crate::relay::{self, ClientStream, RelayControl, Side};
use crate::shared::Shared;
use crate::snapshot::{ListenerRuntime, Snapshot};
use crate::{identity, sockopt, tls};

/// Bytes requested per read while peeking the CONNECT: a typical CONNECT (client ID, user name, token) fits in
/// one read; the buffer grows up to `max_connect_size` only for clients that send more.
const PEEK_READ_CHUNK: usize = 1024;

/// Clients answered "server busy" at the same time on plain listeners (each holds a socket until its CONNECT
/// arrives or the peek timeout passes); beyond this, refused clients are simply closed.
pub const MAX_CONCURRENT_REFUSALS: usize = 1024;

/// Deadline for closing a client we turned away: a TLS close_notify (or a FIN behind unread data) waits on a client
/// that does not read, and such a client must not hold the task and its slot.
pub const CLIENT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// Handles one accepted socket until it closes. Never fails: every outcome is logged and counted.
pub async fn handle(
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
    crate::metrics::connection_outcome(&listener.name, outcome);
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
    /// Runs the pipeline; returns the outcome label.
    async fn run(&self, mut stream: TcpStream) -> &'static str {
        let started = Instant::now();
        let limits = &self.snapshot.config.limits;
        let local = stream.local_addr().unwrap_or(self.peer);
        tracing::info!(event = "accepted", tls = self.listener.tls.is_some());

        // Admission, before any byte is read: connection caps and, for direct clients, the per-IP rate.
        let proxied_peer = self
            .listener
            .proxy_policy
            .as_ref()
            .filter(|p| p.trusted.contains(self.peer.ip()));
        let permit = match self.admit(proxied_peer.is_none().then_some(self.peer)) {
            Ok(permit) => permit,
            Err(refused) => return self.refuse(stream, refused).await,
        };
        sockopt::tune(&stream);

        // A cloud LB in front of us tells us who the client is.
        let (mut source, mut destination) = (self.peer, local);
        if let Some(policy) = proxied_peer {
            match proxy::read_header(&mut stream, self.peer, policy).await {
                Ok(header) => {
                    source = header.source.unwrap_or(self.peer);
                    destination = header.destination.unwrap_or(local);
                    tracing::Span::current().record("client.addr", field::display(source));
                }
                Err(e) => {
                    crate::metrics::admission_refused("proxy_header");
                    tracing::info!(event = "refused", reason = "proxy_header", error = %e);
                    return "proxy_failed";
                }
            }
            if let Err(refused) = self.admit_ip(source) {
                return self.refuse(stream, refused).await;
            }
        }

        // TLS, under the handshake budget and timeout.
        let (mut client, identity) = match self.listener.tls.as_ref() {
            None => (ClientStream::Plain(stream), PeerIdentity::default()),
            Some(acceptor) => {
                if let Some(budget) = &self.snapshot.handshakes
                    && !budget.allow(Instant::now())
                {
                    return self.refuse(stream, Refused::TlsBudget).await;
                }
                match self.handshake(acceptor, stream).await {
                    Some(done) => done,
                    None => return "tls_failed",
                }
            }
        };

        // The first packet: a complete CONNECT within the peek timeout and size cap.
        let Some((summary, first_bytes)) = self.peek(&mut client).await else {
            return "peek_failed";
        };
        let ip_key;
        let key = if summary.client_id.is_empty() {
            ip_key = source.ip().to_string();
            ip_key.as_bytes()
        } else {
            summary.client_id.as_bytes()
        };
        tracing::Span::current().record("mqtt.client_id", summary.client_id.as_str());

        // A backend, then the PROXY header and the CONNECT, in one write.
        let mut identity = identity;
        identity.unique_id = Some(self.conn_id.clone().into_bytes());
        identity.lb_client_id = Some(summary.client_id.clone());
        let mut spec = HeaderSpec {
            source,
            destination,
            identity,
            crc32c: false,
        };
        let Some((backend, mut upstream)) =
            self.connect_backend(key, &mut spec, &first_bytes).await
        else {
            let refusal = peek::connack_refusal(summary.protocol_level, Refusal::ServerUnavailable);
            let _ =
                tokio::time::timeout(limits.connect_peek_timeout, client.write_all(&refusal)).await;
            let _ = tokio::time::timeout(CLIENT_SHUTDOWN_TIMEOUT, client.shutdown()).await;
            tracing::warn!(event = "refused", reason = "no_backend", mqtt.client_id = %summary.client_id);
            return "backend_unavailable";
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

        let _active = backend.track();
        let (_registration, drain) = self
            .shared
            .registry
            .register(&summary.client_id, backend.name());
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
        };
        let out = relay::relay(&mut client, &mut upstream, ctl).await;
        if (out.closed_by, out.reason) == (Side::Backend, "error") {
            // Passive detection: a backend that resets relays is skipped by new connections for a while.
            backend.mark_failed(Instant::now());
        }
        metrics::counter!(RELAYS_ENDED, "reason" => out.reason).increment(1);
        let name = backend.name().to_owned();
        let connect_len = summary.packet_len as u64;
        metrics::counter!(BACKEND_BYTES, "backend" => name.clone(), "direction" => "to_backend")
            .increment(out.to_backend + connect_len);
        metrics::counter!(BACKEND_BYTES, "backend" => name, "direction" => "to_client")
            .increment(out.to_client);
        tracing::info!(
            event = "closed",
            duration_ms = started.elapsed().as_millis() as u64,
            bytes_to_backend = out.to_backend + connect_len,
            bytes_to_client = out.to_client,
            closed_by = out.closed_by.as_str(),
            reason = out.reason,
        );
        drop(permit);
        "routed"
    }

    /// Connection caps, then the per-IP bucket for `direct` (a client not behind a trusted proxy).
    fn admit(&self, direct: Option<SocketAddr>) -> Result<Permit, Refused> {
        let permit = admission::acquire(
            (self.gauge, self.listener.max_connections),
            (
                &self.shared.total,
                self.snapshot.config.limits.max_connections,
            ),
        )?;
        if let Some(addr) = direct {
            self.admit_ip(addr)?;
        }
        Ok(permit)
    }

    fn admit_ip(&self, addr: SocketAddr) -> Result<(), Refused> {
        match &self.snapshot.per_ip {
            Some(limiter) if !limiter.allow(addr.ip(), Instant::now()) => Err(Refused::PerIpRate),
            _ => Ok(()),
        }
    }

    /// Turns a client away: on a TLS listener by closing at once (cheaper than a handshake we would only use to
    /// say "busy"); on a plain one by reading its CONNECT and answering "server busy", so a well-behaved device
    /// backs off instead of retrying at once. Those answers are themselves capped ([`Shared::refusing`]).
    async fn refuse(&self, stream: TcpStream, refused: Refused) -> &'static str {
        crate::metrics::admission_refused(refused.reason());
        tracing::info!(event = "refused", reason = refused.reason());
        if self.listener.tls.is_some() {
            return "refused";
        }
        // One slot per answer (taking it twice from the same gauge halved the cap).
        let Some(_slot) = self
            .shared
            .refusing
            .try_acquire(Some(MAX_CONCURRENT_REFUSALS))
        else {
            return "refused";
        };
        let mut client = ClientStream::Plain(stream);
        if let Some((summary, _)) = self.peek(&mut client).await {
            let refusal = peek::connack_refusal(summary.protocol_level, Refusal::ServerBusy);
            let _ = tokio::time::timeout(
                self.snapshot.config.limits.connect_peek_timeout,
                client.write_all(&refusal),
            )
            .await;
            let _ = tokio::time::timeout(CLIENT_SHUTDOWN_TIMEOUT, client.shutdown()).await;
        }
        "refused"
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

    /// Picks a backend for `key` and connects; a backend that fails before any byte of the client was delivered
    /// is marked suspect and the next-ranked one is tried. Sends the PROXY header (from `spec`, whose `crc32c` is
    /// set per backend) and the first bytes.
    async fn connect_backend(
        &self,
        key: &[u8],
        spec: &mut HeaderSpec,
        first_bytes: &[u8],
    ) -> Option<(Arc<BackendState>, TcpStream)> {
        let backends = &self.snapshot.backends;
        let timeout = self.snapshot.config.limits.backend_connect_timeout;
        // Names borrowed from the snapshot; allocated only when a first attempt fails.
        let mut tried: Vec<&str> = Vec::new();
        while tried.len() < backends.all().len() {
            let backend = backends.pick(key, &tried, Instant::now())?;
            tried.push(backend.name());
            let head = header(backend, spec, first_bytes);
            let attempt = async {
                let mut upstream = backend::connect(backend, timeout).await?;
                tokio::time::timeout(timeout, upstream.write_all(&head))
                    .await
                    .map_err(|_| {
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "backend write timed out")
                    })??;
                Ok::<_, std::io::Error>(upstream)
            };
            match attempt.await {
                Ok(upstream) => {
                    backend.mark_ok();
                    return Some((backend.clone(), upstream));
                }
                Err(e) => {
                    backend.mark_failed(Instant::now());
                    tracing::warn!(event = "backend_failed", backend = %backend.name(), error = %e);
                }
            }
        }
        None
    }
}

/// The PROXY header for `backend` (per its `proxy_protocol`) followed by the client's first bytes.
fn header(backend: &BackendState, spec: &mut HeaderSpec, first_bytes: &[u8]) -> Vec<u8> {
    let mut out = match backend.config.proxy_protocol {
        ProxyVersion::Off => Vec::with_capacity(first_bytes.len()),
        ProxyVersion::V1 => proxy::encode_v1(spec.source, spec.destination),
        ProxyVersion::V2 => {
            // The certificate goes only to backends that asked for it: lent out of the identity for this
            // encoding and put back (the next backend tried may want it), never copied.
            let withheld = match backend.config.send_client_cert {
                true => None,
                false => spec.identity.client_cert_der.take(),
            };
            spec.crc32c = backend.config.crc32c;
            let out = proxy::encode_v2(spec);
            if withheld.is_some() {
                spec.identity.client_cert_der = withheld;
            }
            out
        }
    };
    out.extend_from_slice(first_bytes);
    out
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
        assert_eq!(outcome, "refused");
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
