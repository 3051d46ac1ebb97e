//! Admin HTTP server: what probes, scrapers and operators talk to — `/healthz`, `/readyz`, `/metrics`, plus routes a
//! binary adds (the node's `/clients/{id}`, the LB's `/backends`, `/reload`, `/drain`, ...) through [`AdminRoutes`].
//! Both binaries bind it from their `[admin]` table ([`fleetgate_config::admin`]) with [`AdminSockets::bind`] at
//! start and run it with [`AdminSockets::serve`].
//!
//! Plain HTTP/1.1 with hyper; one task per connection, spawned at once. Bounds, each with its default in
//! [`fleetgate_config::admin`]:
//! - per socket, `max_connections` open and `max_connections_per_ip` per source address (IPv6: per /64,
//!   [`crate::sources`]); a connection beyond either is closed at once, before a byte is read;
//! - `request_timeout` for a request's headers (and for an idle keep-alive connection) and its body; bodies are
//!   capped at [`MAX_BODY_BYTES`];
//! - `write_timeout`: once the socket is full, the client has that long to take what was written to it
//!   ([`deadline`]), so a client that pipelines requests and never reads is cut.
//!
//! Probes are never starved by other admin traffic: with `probe_bind`, `/healthz` and `/readyz` are also served on
//! a socket of their own that serves nothing else (why: `fleetgate_config::admin`'s docs), on a thread of its own
//! ([`probe`]); `/healthz` fails when the serving runtime stops running tasks (its heartbeat). With a token
//! (`token_file`), every request but `/healthz`, `/readyz` and `/metrics` needs `Authorization: Bearer <token>`,
//! else 401 ([`respond`]).

mod deadline;
mod probe;
mod respond;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use fleetgate_config::ConfigError;
use fleetgate_config::admin::{AdminConfig, AdminLimits};
use fleetgate_config::load::Secret;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::sources::SourceCounts;
use deadline::WriteDeadline;
use probe::{Heartbeat, ProbeThread};
use respond::Responder;
pub use respond::{AdminToken, percent_decode};

/// Largest request body accepted: admin requests are small JSON documents; anything bigger is refused with 413
/// rather than buffered.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Kernel send buffer of an admin connection (Linux doubles it for its bookkeeping). Without a cap the kernel
/// grows it to megabytes for a client that does not read, and we would render thousands of `/metrics` answers for
/// it before a write ever waits; with it, a few dozen, then the write deadline runs. A scraper that reads as the
/// answer arrives needs no more.
const SEND_BUFFER: usize = 32 * 1024;

/// Largest buffer hyper keeps per connection, each way (request heads read ahead, answers queued): admin requests
/// are a few hundred bytes of head; a client pipelining requests gets no more read ahead than this.
const CONNECTION_BUFFER: usize = 16 * 1024;

/// After an accept error (e.g. out of file descriptors), pause before accepting again instead of spinning.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Content type of the Prometheus text exposition format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// The `role` of the admin socket's `listening` log line.
pub const ADMIN_ROLE: &str = "admin";
/// The `role` of the probe socket's `listening` log line.
pub const PROBE_ROLE: &str = "probe";

/// Metric names of the admin server, the same in both binaries.
pub mod metrics {
    use super::Lane;

    /// Admin connections open now, by `listener` (`admin`, `probe`).
    pub const CONNECTIONS_OPEN: &str = "fleetgate_admin_connections_open";
    /// Admin connections closed at accept, by `listener` and `reason` (`max_connections`, `per_ip`).
    pub const CONNECTIONS_REFUSED: &str = "fleetgate_admin_connections_refused_total";
    /// Admin connections cut by a deadline, by `listener` and `reason` (`request_timeout`: headers, body or an
    /// idle keep-alive; `write_timeout`: the client did not take its responses).
    pub const CONNECTIONS_CUT: &str = "fleetgate_admin_connections_cut_total";
    /// Requests refused 401 for a missing or wrong bearer token.
    pub const UNAUTHORIZED: &str = "fleetgate_admin_unauthorized_total";

    pub(super) fn refused(lane: Lane, reason: &'static str) {
        metrics::counter!(CONNECTIONS_REFUSED, "listener" => lane.label(), "reason" => reason)
            .increment(1);
    }

    pub(super) fn cut(lane: Lane, reason: &'static str) {
        metrics::counter!(CONNECTIONS_CUT, "listener" => lane.label(), "reason" => reason)
            .increment(1);
    }

    pub(super) fn open(lane: Lane, delta: f64) {
        metrics::gauge!(CONNECTIONS_OPEN, "listener" => lane.label()).increment(delta);
    }

    pub(super) fn unauthorized() {
        metrics::counter!(UNAUTHORIZED).increment(1);
    }
}

/// Whether the process is ready for traffic (what `/readyz` answers); cheap to clone, shared with the server.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// A readiness flag, initially not ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the process ready (`true`) or not ready (`false`).
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    /// Whether the process is currently ready.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// One admin request, read in full (body capped at [`MAX_BODY_BYTES`]).
#[derive(Debug, Clone)]
pub struct AdminRequest {
    /// HTTP method, e.g. `"GET"`.
    pub method: String,
    /// Path without the query, e.g. `"/cluster"`.
    pub path: String,
    /// The query string without `?`, if any.
    pub query: Option<String>,
    /// The request body.
    pub body: Bytes,
}

/// An admin response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminResponse {
    /// HTTP status code.
    pub status: u16,
    /// `Content-Type` header value.
    pub content_type: &'static str,
    /// Response body.
    pub body: String,
}

impl AdminResponse {
    /// A JSON response.
    pub fn json(status: u16, value: serde_json::Value) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: value.to_string(),
        }
    }

    /// A plain-text response.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// Future returned by [`AdminRoutes::handle`].
pub type RouteFuture<'a> = Pin<Box<dyn Future<Output = Option<AdminResponse>> + Send + 'a>>;

/// Extra routes a binary adds to the admin server; consulted for every request the built-ins do not answer (after
/// the token check, when a token is set).
pub trait AdminRoutes: Send + Sync + 'static {
    /// Answers `req`, or `None` when the route is not one of these (the server then answers 404).
    fn handle(&self, req: AdminRequest) -> RouteFuture<'_>;
}

/// What the admin server serves from.
#[derive(Clone)]
pub struct AdminState {
    /// Answered by `/readyz`.
    pub readiness: Readiness,
    /// Rendered by `/metrics`.
    pub metrics: PrometheusHandle,
    /// Routes beyond the built-ins.
    pub routes: Option<Arc<dyn AdminRoutes>>,
}

/// Why the admin server could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// `token_file` could not be read, or is empty.
    #[error("{0}")]
    Token(ConfigError),
    /// The probe socket's thread or its runtime could not be started.
    #[error("cannot start the probe thread: {0}")]
    ProbeThread(std::io::Error),
    /// A socket could not be bound.
    #[error("cannot bind {role} on {addr}: {source}")]
    Bind {
        /// [`ADMIN_ROLE`] or [`PROBE_ROLE`].
        role: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Which socket a connection came in on: the admin socket serves everything, the probe socket only the probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    Admin,
    Probe,
}

impl Lane {
    /// The `listener` label and the `listening` role.
    fn label(self) -> &'static str {
        match self {
            Lane::Admin => ADMIN_ROLE,
            Lane::Probe => PROBE_ROLE,
        }
    }
}

/// A bound socket and its address.
#[derive(Debug)]
struct Bound {
    listener: TcpListener,
    addr: SocketAddr,
}

/// The admin server's sockets (and its token), bound at start so that errors surface there; [`AdminSockets::serve`]
/// runs them.
#[derive(Debug)]
pub struct AdminSockets {
    admin: Bound,
    probe: Option<ProbeThread>,
    token: Option<AdminToken>,
    limits: AdminLimits,
}

impl AdminSockets {
    /// Reads `config.token_file` and binds `config.bind` and `config.probe_bind`, each logging `listening` (roles
    /// [`ADMIN_ROLE`], [`PROBE_ROLE`]). The token is read once: a new one applies at the next start.
    pub async fn bind(config: &AdminConfig) -> Result<AdminSockets, AdminError> {
        let token = match &config.token_file {
            Some(path) => Some(read_token(path)?),
            None => None,
        };
        Self::bind_with(config, token).await
    }

    /// Like [`AdminSockets::bind`], with the token given rather than read from `config.token_file`.
    pub async fn bind_with(
        config: &AdminConfig,
        token: Option<AdminToken>,
    ) -> Result<AdminSockets, AdminError> {
        let admin = bind(ADMIN_ROLE, config.bind).await?;
        let probe = match config.probe_bind {
            Some(addr) => Some(ProbeThread::start(addr)?),
            None => None,
        };
        Ok(AdminSockets {
            admin,
            probe,
            token,
            limits: config.limits,
        })
    }

    /// The bound address of the admin socket.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.addr
    }

    /// The bound address of the probe socket, if one is configured.
    pub fn probe_addr(&self) -> Option<SocketAddr> {
        self.probe.as_ref().map(|p| p.addr)
    }

    /// Serves both sockets from `state` until `shutdown` is cancelled; open connections are then closed
    /// gracefully (an in-flight request finishes, under its deadlines) and this returns once both accept loops
    /// stopped.
    pub async fn serve(self, state: AdminState, shutdown: CancellationToken) {
        let responder = Arc::new(Responder {
            state,
            token: self.token,
            body_timeout: self.limits.request_timeout,
            heartbeat: Heartbeat::start(shutdown.clone()),
        });
        let probe = self
            .probe
            .map(|p| p.serve(responder.clone(), self.limits, shutdown.clone()));
        accept_loop(
            self.admin.listener,
            Lane::Admin,
            responder,
            self.limits,
            shutdown,
        )
        .await;
        if let Some(probe) = probe {
            let _ = probe.await;
        }
    }
}

/// Reads the token file; its problem names the file, never its content.
fn read_token(path: &std::path::Path) -> Result<AdminToken, AdminError> {
    let secret = Secret::read_file(path).map_err(AdminError::Token)?;
    Ok(AdminToken::new(secret.expose()))
}

/// Binds the admin socket (the probe socket is [`ProbeThread::start`]'s) and logs `listening`.
async fn bind(role: &'static str, addr: SocketAddr) -> Result<Bound, AdminError> {
    let error = |source| AdminError::Bind { role, addr, source };
    let listener = TcpListener::bind(addr).await.map_err(error)?;
    let addr = listener.local_addr().map_err(error)?;
    tracing::info!(event = "listening", role, addr = %addr, "listening on {role} {addr}");
    Ok(Bound { listener, addr })
}

/// Accepts on one socket until `shutdown`: each connection within the caps gets a task at once; one beyond them is
/// closed before a byte is read (it may retry once others ended).
async fn accept_loop(
    listener: TcpListener,
    lane: Lane,
    responder: Arc<Responder>,
    limits: AdminLimits,
    shutdown: CancellationToken,
) {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let sources = SourceCounts::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(event = "accept_failed", role = lane.label(), error = %e, "admin accept failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => continue,
                }
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            refuse(lane, "max_connections", peer);
            continue;
        };
        let Some(slot) = sources.try_acquire(peer.ip(), limits.max_connections_per_ip) else {
            refuse(lane, "per_ip", peer);
            continue;
        };
        let responder = responder.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            metrics::open(lane, 1.0);
            serve_connection(stream, lane, responder, limits, shutdown).await;
            metrics::open(lane, -1.0);
            drop((permit, slot));
        });
    }
}

/// Counts (and logs at debug: a flood must not become a log flood) a connection closed at accept.
fn refuse(lane: Lane, reason: &'static str, peer: SocketAddr) {
    metrics::refused(lane, reason);
    tracing::debug!(
        event = "admin_conn_rejected",
        listener = lane.label(),
        reason,
        client.addr = %peer,
        "admin connection closed at accept"
    );
}

/// Serves one connection's requests until it closes, a deadline cuts it, or `shutdown` (then gracefully).
async fn serve_connection(
    stream: TcpStream,
    lane: Lane,
    responder: Arc<Responder>,
    limits: AdminLimits,
    shutdown: CancellationToken,
) {
    if let Err(e) = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER) {
        tracing::debug!(event = "sockopt", option = "sndbuf", error = %e);
    }
    let io = TokioIo::new(WriteDeadline::new(stream, limits.write_timeout));
    let service = service_fn(move |req| {
        let responder = responder.clone();
        async move { Ok::<_, Infallible>(responder.respond(lane, req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.request_timeout)
        .max_buf_size(CONNECTION_BUFFER)
        .keep_alive(true)
        .serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    let Err(e) = result else { return };
    if e.is_timeout() {
        metrics::cut(lane, "request_timeout");
    } else if timed_out_writing(&e) {
        metrics::cut(lane, "write_timeout");
    }
    tracing::debug!(event = "admin_conn_error", listener = lane.label(), error = %e, "admin connection ended with an error");
}

/// Whether `e` comes from the write deadline ([`deadline::WriteDeadline`]): an I/O error of kind `TimedOut`.
fn timed_out_writing(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::TimedOut;
        }
        source = s.source();
    }
    false
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING)
mod tests;
