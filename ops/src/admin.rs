//! Admin HTTP server: what probes and scrapers talk to — `/healthz`, `/readyz`, `/metrics`, plus routes a binary
//! adds (e.g. the broker's cluster and session endpoints) through [`AdminRoutes`].
//!
//! Plain HTTP/1.1 with hyper; one task per connection, spawned at once; at most [`MAX_ADMIN_CONNECTIONS`] open at
//! once; every request body is capped in size and in time and every header read is bounded in time, so a slow or
//! hostile client only ever ties up its own task. With [`AdminState::token`] set, every request that is not a
//! `GET`/`HEAD` (reload, drain, ...) needs `Authorization: Bearer <token>`, else 401.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{
    AUTHORIZATION, CONNECTION, CONTENT_TYPE, HeaderMap, HeaderValue, WWW_AUTHENTICATE,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Largest request body accepted: admin requests are small JSON documents; anything bigger is refused with 413
/// rather than buffered.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Time a client gets to send a request's headers: probes send them at once, so a client that trickles them is
/// either broken or holding a connection open on purpose.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Time a client gets to send a request's body once its headers are in: admin bodies are a few small JSON
/// documents sent at once; a body trickled in byte by byte is holding the connection open on purpose.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Most admin connections open at once: probes, scrapers and an operator need a handful; beyond this a client is
/// hoarding connections (each costs a task and its buffers), and new ones are closed at once until some end.
pub const MAX_ADMIN_CONNECTIONS: usize = 64;

/// After an accept error (e.g. out of file descriptors), pause before accepting again instead of spinning.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Content type of the Prometheus text exposition format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

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

/// Extra routes a binary adds to the admin server; consulted for every request the built-ins do not answer.
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
    /// Bearer token every non-`GET`/`HEAD` request must carry (`Authorization: Bearer <token>`); `None` = no
    /// check (an admin port bound to loopback only).
    pub token: Option<String>,
}

/// The bounds one server applies; tests shorten them.
#[derive(Debug, Clone, Copy)]
struct Limits {
    body_timeout: Duration,
    max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            body_timeout: BODY_READ_TIMEOUT,
            max_connections: MAX_ADMIN_CONNECTIONS,
        }
    }
}

/// Serves admin HTTP on `listener` until `shutdown` is cancelled; open connections are then closed gracefully
/// (an in-flight request finishes) and this returns once the accept loop stops.
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: CancellationToken) {
    serve_with(listener, state, shutdown, Limits::default()).await;
}

async fn serve_with(
    listener: TcpListener,
    state: AdminState,
    shutdown: CancellationToken,
    limits: Limits,
) {
    let state = Arc::new(state);
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, _peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(event = "accept_failed", role = "admin", error = %e, "admin accept failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => continue,
                }
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            // Closing at once keeps the accept loop free; the client may retry once others have ended.
            tracing::debug!(
                event = "admin_conn_rejected",
                reason = "too_many_connections",
                "admin connection closed: {} already open",
                limits.max_connections
            );
            drop(stream);
            continue;
        };
        let state = state.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(&state, limits.body_timeout, req).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(event = "admin_conn_error", error = %e, "admin connection ended with an error");
            }
        });
    }
}

/// Answers one request: the built-ins first, then (after the token check) the binary's routes, else 404.
async fn respond(
    state: &AdminState,
    body_timeout: Duration,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let method = parts.method.as_str().to_string();
    let path = parts.uri.path().to_string();
    let builtin = match (method.as_str(), path.as_str()) {
        ("GET" | "HEAD", "/healthz") => Some(AdminResponse::text(200, "ok\n")),
        ("GET" | "HEAD", "/readyz") => Some(if state.readiness.is_ready() {
            AdminResponse::text(200, "ready\n")
        } else {
            AdminResponse::text(503, "not ready\n")
        }),
        ("GET" | "HEAD", "/metrics") => Some(AdminResponse {
            status: 200,
            content_type: PROMETHEUS_CONTENT_TYPE,
            body: state.metrics.render(),
        }),
        _ => None,
    };
    if let Some(resp) = builtin {
        return into_http(resp);
    }
    let read_only = matches!(method.as_str(), "GET" | "HEAD");
    if !read_only
        && let Some(token) = &state.token
        && !bearer_matches(&parts.headers, token)
    {
        // Refused before the body is read.
        tracing::warn!(event = "admin_unauthorized", method = %method, path = %path, "admin request without a valid token");
        let mut out = closing(into_http(AdminResponse::text(401, "unauthorized\n")));
        out.headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return out;
    }
    let Some(routes) = state.routes.as_ref() else {
        return into_http(not_found());
    };
    let collected =
        tokio::time::timeout(body_timeout, Limited::new(body, MAX_BODY_BYTES).collect()).await;
    let body = match collected {
        Err(_elapsed) => {
            return closing(into_http(AdminResponse::text(
                408,
                "request body not received in time\n",
            )));
        }
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) => {
            // Limited reports an oversized body as its own error type; anything else is a broken connection.
            let status = if e.is::<http_body_util::LengthLimitError>() {
                413
            } else {
                400
            };
            return into_http(AdminResponse::text(status, "request body rejected\n"));
        }
    };
    let req = AdminRequest {
        method,
        path,
        query: parts.uri.query().map(str::to_string),
        body,
    };
    into_http(routes.handle(req).await.unwrap_or_else(not_found))
}

/// True when `headers` carry `Authorization: Bearer <token>` (scheme case-insensitive, compared in constant time).
fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    let Some((scheme, given)) = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
    else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && constant_time_eq(given.trim().as_bytes(), token.as_bytes())
}

/// Byte equality whose time depends only on the lengths, so the token cannot be guessed byte by byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Marks a response as the connection's last (its request body may be unread).
fn closing(mut resp: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    resp.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Decodes the `%XX` escapes of a URL path segment (client IDs may hold `/`, spaces, ...), for the routes of
/// every binary. `None` when a `%` is not followed by two hex digits or the result is not UTF-8: answer 400.
pub fn percent_decode(text: &str) -> Option<String> {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = hex(*bytes.get(i + 1)?)?;
            let lo = hex(*bytes.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn not_found() -> AdminResponse {
    AdminResponse::text(404, "not found\n")
}

fn into_http(resp: AdminResponse) -> Response<Full<Bytes>> {
    let mut out = Response::new(Full::new(Bytes::from(resp.body)));
    *out.status_mut() =
        StatusCode::from_u16(resp.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    out.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(resp.content_type));
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING)
#[path = "admin_tests.rs"]
mod tests;
