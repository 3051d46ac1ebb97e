//! Admin HTTP server: what probes and scrapers talk to — `/healthz`, `/readyz`, `/metrics`, plus routes a binary
//! adds (e.g. the broker's cluster and session endpoints) through [`AdminRoutes`].
//!
//! Plain HTTP/1.1 with hyper; one task per connection, spawned at once; every request body is capped and every
//! header read is bounded in time, so a slow or hostile client only ever ties up its own task.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Largest request body accepted: admin requests are small JSON documents; anything bigger is refused with 413
/// rather than buffered.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Time a client gets to send a request's headers: probes send them at once, so a client that trickles them is
/// either broken or holding a connection open on purpose.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

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
}

/// Serves admin HTTP on `listener` until `shutdown` is cancelled; open connections are then closed gracefully
/// (an in-flight request finishes) and this returns once the accept loop stops.
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: CancellationToken) {
    let state = Arc::new(state);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, _peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(event = "accept_error", role = "admin", error = %e, "admin accept failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => continue,
                }
            }
        };
        let state = state.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(&state, req).await) }
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

/// Answers one request: the built-ins first, then the binary's routes, else 404.
async fn respond(state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
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
    let Some(routes) = state.routes.as_ref() else {
        return into_http(not_found());
    };
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
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
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    struct Echo;

    impl AdminRoutes for Echo {
        fn handle(&self, req: AdminRequest) -> RouteFuture<'_> {
            Box::pin(async move {
                (req.path == "/echo").then(|| {
                    AdminResponse::json(
                        200,
                        serde_json::json!({
                            "method": req.method,
                            "query": req.query,
                            "body": String::from_utf8_lossy(&req.body),
                        }),
                    )
                })
            })
        }
    }

    async fn start(
        routes: Option<Arc<dyn AdminRoutes>>,
    ) -> (std::net::SocketAddr, Readiness, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let readiness = Readiness::new();
        // A local recorder: the global one belongs to the telemetry test.
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::counter!("fleetgate_admin_test_total").increment(7)
        });
        let state = AdminState {
            readiness: readiness.clone(),
            metrics: handle,
            routes,
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(listener, state, shutdown.clone()));
        (addr, readiness, shutdown)
    }

    /// Sends one HTTP/1.1 request with `Connection: close` and returns (status, head, body).
    async fn request(
        addr: std::net::SocketAddr,
        method: &str,
        target: &str,
        body: &str,
    ) -> (u16, String, String) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "{method} {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
            .await
            .unwrap()
            .unwrap();
        let raw = String::from_utf8(raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, head.to_string(), body.to_string())
    }

    #[tokio::test]
    async fn builtins_answer() {
        let (addr, readiness, shutdown) = start(None).await;
        assert_eq!(request(addr, "GET", "/healthz", "").await.0, 200);
        let (status, _, body) = request(addr, "GET", "/readyz", "").await;
        assert_eq!((status, body.as_str()), (503, "not ready\n"));
        readiness.set(true);
        assert!(readiness.is_ready());
        let (status, _, body) = request(addr, "GET", "/readyz", "").await;
        assert_eq!((status, body.as_str()), (200, "ready\n"));
        let (status, head, body) = request(addr, "GET", "/metrics", "").await;
        assert_eq!(status, 200);
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert!(body.contains("fleetgate_admin_test_total 7"), "{body}");
        assert_eq!(request(addr, "GET", "/nope", "").await.0, 404);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn custom_routes_get_the_request() {
        let (addr, _readiness, shutdown) = start(Some(Arc::new(Echo))).await;
        let (status, head, body) = request(addr, "POST", "/echo?x=1", "hello").await;
        assert_eq!(status, 200);
        assert!(
            head.to_ascii_lowercase().contains("application/json"),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"method": "POST", "query": "x=1", "body": "hello"})
        );
        assert_eq!(request(addr, "GET", "/other", "").await.0, 404);
        let big = "x".repeat(MAX_BODY_BYTES + 1);
        assert_eq!(request(addr, "POST", "/echo", &big).await.0, 413);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn stops_accepting_on_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let state = AdminState {
            readiness: Readiness::new(),
            metrics: PrometheusBuilder::new().build_recorder().handle(),
            routes: None,
        };
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, state, shutdown.clone()));
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
    }
}
