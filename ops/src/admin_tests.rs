//! Tests of the admin server: built-ins, routes, body limits in size and time, the token, the connection cap.

use super::*;
use fleetgate_testkit::eventually;
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
    start_with(routes, None, Limits::default()).await
}

async fn start_with(
    routes: Option<Arc<dyn AdminRoutes>>,
    token: Option<&str>,
    limits: Limits,
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
        token: token.map(str::to_string),
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(serve_with(listener, state, shutdown.clone(), limits));
    (addr, readiness, shutdown)
}

/// Sends one HTTP/1.1 request with `Connection: close` and returns (status, head, body).
async fn request(
    addr: std::net::SocketAddr,
    method: &str,
    target: &str,
    body: &str,
) -> (u16, String, String) {
    request_with(addr, method, target, "", body).await
}

/// Like [`request`], with extra header lines (each ending in `\r\n`).
async fn request_with(
    addr: std::net::SocketAddr,
    method: &str,
    target: &str,
    headers: &str,
    body: &str,
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
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
async fn trickled_body_is_cut_off() {
    let limits = Limits {
        body_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let (addr, _readiness, shutdown) = start_with(Some(Arc::new(Echo)), None, limits).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\nab")
        .await
        .unwrap();
    // Never sends the other 98 bytes: the server answers 408 and closes.
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
        .await
        .expect("the server closes the connection")
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 408"), "{raw}");
    shutdown.cancel();
}

#[tokio::test]
async fn token_guards_everything_but_reads() {
    let (addr, _readiness, shutdown) =
        start_with(Some(Arc::new(Echo)), Some("s3cret"), Limits::default()).await;
    let (status, head, _) = request(addr, "POST", "/echo", "x").await;
    assert_eq!(status, 401);
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{head}"
    );
    for wrong in ["Bearer s3cre", "Bearer s3cretx", "Basic s3cret", "s3cret"] {
        let header = format!("Authorization: {wrong}\r\n");
        assert_eq!(
            request_with(addr, "POST", "/echo", &header, "x").await.0,
            401,
            "{wrong}"
        );
    }
    for right in ["Bearer s3cret", "bearer s3cret"] {
        let header = format!("Authorization: {right}\r\n");
        assert_eq!(
            request_with(addr, "POST", "/echo", &header, "x").await.0,
            200
        );
    }
    // Reads need no token.
    assert_eq!(request(addr, "GET", "/echo", "").await.0, 200);
    assert_eq!(request(addr, "GET", "/healthz", "").await.0, 200);
    shutdown.cancel();
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed() {
    let limits = Limits {
        max_connections: 1,
        ..Limits::default()
    };
    let (addr, _readiness, shutdown) = start_with(None, None, limits).await;
    let holder = TcpStream::connect(addr).await.unwrap();
    // Accepted after the holder: closed at once, nothing answered.
    let mut second = TcpStream::connect(addr).await.unwrap();
    let _ = second
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), second.read_to_end(&mut raw))
        .await
        .expect("the second connection is closed");
    assert!(read.is_err() || raw.is_empty(), "{raw:?}");
    // Once the holder leaves, its slot is free again.
    drop(holder);
    let freed = eventually(Duration::from_secs(5), || async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let _ = s
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await;
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw)).await;
        raw.starts_with(b"HTTP/1.1 200").then_some(())
    })
    .await;
    assert!(freed.is_ok(), "slot never freed");
    shutdown.cancel();
}

#[test]
fn percent_decoding() {
    assert_eq!(percent_decode("a%2Fb%20c").as_deref(), Some("a/b c"));
    assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
    assert_eq!(percent_decode("%e2%9C%93").as_deref(), Some("\u{2713}"));
    for bad in ["bad%2", "100%", "%zz", "%+5", "%ff", "%"] {
        assert_eq!(percent_decode(bad), None, "{bad}");
    }
}

#[tokio::test]
async fn stops_accepting_on_shutdown() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let state = AdminState {
        readiness: Readiness::new(),
        metrics: PrometheusBuilder::new().build_recorder().handle(),
        routes: None,
        token: None,
    };
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve(listener, state, shutdown.clone()));
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
}
