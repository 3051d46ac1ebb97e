//! Tests of the admin server on real sockets: built-ins, routes, body limits in size and time, the token, the
//! connection caps, the probe socket, the write deadline.

use super::*;
use fleetgate_testkit::eventually;
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Size of the `/big` route's answer: larger than what loopback socket buffers take from a client that does not
/// read, so such a client is cut by the write deadline.
const BIG: usize = 4 << 20;

struct Echo;

impl AdminRoutes for Echo {
    fn handle(&self, req: AdminRequest) -> RouteFuture<'_> {
        Box::pin(async move {
            match req.path.as_str() {
                "/echo" => Some(AdminResponse::json(
                    200,
                    serde_json::json!({
                        "method": req.method,
                        "query": req.query,
                        "body": String::from_utf8_lossy(&req.body),
                    }),
                )),
                "/big" => Some(AdminResponse::text(200, "x".repeat(BIG))),
                _ => None,
            }
        })
    }
}

/// A running server: its addresses, readiness and shutdown switch.
struct Server {
    addr: SocketAddr,
    probe: Option<SocketAddr>,
    readiness: Readiness,
    shutdown: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(routes: Option<Arc<dyn AdminRoutes>>) -> Server {
    start_with(routes, None, AdminLimits::default(), false).await
}

async fn start_with(
    routes: Option<Arc<dyn AdminRoutes>>,
    token: Option<&str>,
    limits: AdminLimits,
    probe: bool,
) -> Server {
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let config = AdminConfig {
        probe_bind: probe.then_some(local),
        limits,
        ..AdminConfig::local(local)
    };
    let sockets = AdminSockets::bind_with(&config, token.map(AdminToken::new))
        .await
        .unwrap();
    let readiness = Readiness::new();
    // A local recorder: the global one belongs to the telemetry test.
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    ::metrics::with_local_recorder(&recorder, || {
        ::metrics::counter!("fleetgate_admin_test_total").increment(7)
    });
    let state = AdminState {
        readiness: readiness.clone(),
        metrics: handle,
        routes,
    };
    let server = Server {
        addr: sockets.admin_addr(),
        probe: sockets.probe_addr(),
        readiness,
        shutdown: CancellationToken::new(),
    };
    tokio::spawn(sockets.serve(state, server.shutdown.clone()));
    server
}

/// Sends one HTTP/1.1 request with `Connection: close` and returns (status, head, body).
async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    body: &str,
) -> (u16, String, String) {
    request_with(addr, method, target, "", body).await
}

/// Like [`request`], with extra header lines (each ending in `\r\n`).
async fn request_with(
    addr: SocketAddr,
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

/// Connects and asks for `/healthz`: true when the server closed the connection without a byte (what it does at
/// accept beyond a cap), false when it answered.
async fn closed_at_accept(addr: SocketAddr) -> bool {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await;
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw))
        .await
        .expect("the server answers or closes");
    read.is_err() || raw.is_empty()
}

#[tokio::test]
async fn builtins_answer() {
    let server = start(None).await;
    let addr = server.addr;
    assert_eq!(request(addr, "GET", "/healthz", "").await.0, 200);
    let (status, _, body) = request(addr, "GET", "/readyz", "").await;
    assert_eq!((status, body.as_str()), (503, "not ready\n"));
    server.readiness.set(true);
    assert!(server.readiness.is_ready());
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
}

#[tokio::test]
async fn custom_routes_get_the_request() {
    let server = start(Some(Arc::new(Echo))).await;
    let addr = server.addr;
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
}

#[tokio::test]
async fn trickled_body_is_cut_off() {
    let limits = AdminLimits {
        request_timeout: Duration::from_millis(300),
        ..AdminLimits::default()
    };
    let server = start_with(Some(Arc::new(Echo)), None, limits, false).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
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
}

#[tokio::test]
async fn trickled_headers_and_idle_keep_alive_are_cut_off() {
    let limits = AdminLimits {
        request_timeout: Duration::from_millis(300),
        ..AdminLimits::default()
    };
    let server = start_with(None, None, limits, false).await;
    for sent in [&b"GET /healthz HTTP/1.1\r\nHost:"[..], b""] {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(sent).await.unwrap();
        let mut raw = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
            .await
            .expect("the server closes the connection");
        assert!(
            read.is_err() || !raw.starts_with(b"HTTP/1.1 200"),
            "{raw:?}"
        );
    }
}

#[tokio::test]
async fn token_guards_everything_but_probes_and_metrics() {
    let server = start_with(
        Some(Arc::new(Echo)),
        Some("s3cret"),
        AdminLimits::default(),
        false,
    )
    .await;
    let addr = server.addr;
    for (method, target) in [("POST", "/echo"), ("GET", "/echo"), ("GET", "/other")] {
        let (status, head, _) = request(addr, method, target, "x").await;
        assert_eq!(status, 401, "{method} {target}");
        assert!(
            head.to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{head}"
        );
    }
    for wrong in [
        "Bearer s3cre",
        "Bearer s3cretx",
        "Basic s3cret",
        "s3cret",
        "Bearer ",
    ] {
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
        assert_eq!(request_with(addr, "GET", "/echo", &header, "").await.0, 200);
    }
    // Open to all: the probes and the scrape.
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_ne!(request(addr, "GET", path, "").await.0, 401, "{path}");
    }
}

#[tokio::test]
async fn connections_beyond_the_caps_are_closed() {
    let limits = AdminLimits {
        max_connections: 1,
        ..AdminLimits::default()
    };
    let server = start_with(None, None, limits, false).await;
    let addr = server.addr;
    let holder = TcpStream::connect(addr).await.unwrap();
    // Accepted after the holder: closed at once, nothing answered.
    assert!(closed_at_accept(addr).await);
    // Once the holder leaves, its slot is free again.
    drop(holder);
    let freed = eventually(Duration::from_secs(5), || async {
        (!closed_at_accept(addr).await).then_some(())
    })
    .await;
    assert!(freed.is_ok(), "slot never freed");

    // Per source address: 127.0.0.1 holds its two, 127.0.0.2 still gets in.
    let limits = AdminLimits {
        max_connections_per_ip: 2,
        ..AdminLimits::default()
    };
    let server = start_with(None, None, limits, false).await;
    let addr = server.addr;
    let _held = [
        TcpStream::connect(addr).await.unwrap(),
        TcpStream::connect(addr).await.unwrap(),
    ];
    assert!(closed_at_accept(addr).await);
    let other = tokio::net::TcpSocket::new_v4().unwrap();
    other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = other.connect(addr).await.unwrap();
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    other.read_to_end(&mut raw).await.unwrap();
    assert!(raw.starts_with(b"HTTP/1.1 200"), "{raw:?}");
}

/// Opens a connection that pipelines `GET /big` requests and never reads; returns it (still open from the client's
/// side) once the requests are sent.
async fn non_reader(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let requests = "GET /big HTTP/1.1\r\nHost: t\r\n\r\n".repeat(16);
    s.write_all(requests.as_bytes()).await.unwrap();
    s
}

#[tokio::test]
async fn a_client_that_does_not_read_is_cut_by_the_write_deadline() {
    let limits = AdminLimits {
        max_connections: 1,
        write_timeout: Duration::from_millis(300),
        ..AdminLimits::default()
    };
    let server = start_with(Some(Arc::new(Echo)), None, limits, false).await;
    let addr = server.addr;
    let mut stuck = non_reader(addr).await;
    // It holds the only slot until the deadline cuts it; then the slot serves others again.
    let served = eventually(Duration::from_secs(10), || async {
        (!closed_at_accept(addr).await).then_some(())
    })
    .await;
    assert!(served.is_ok(), "the non-reader kept the slot");
    // The stuck client finds its connection cut: what was sent, then an end (not the 16 answers).
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stuck.read_to_end(&mut got)).await;
    assert!(got.len() < 16 * BIG, "cut after {} bytes", got.len());

    // Without the deadline (a day), the same client keeps the slot.
    let limits = AdminLimits {
        write_timeout: Duration::from_secs(86_400),
        ..limits
    };
    let server = start_with(Some(Arc::new(Echo)), None, limits, false).await;
    let _stuck = non_reader(server.addr).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(closed_at_accept(server.addr).await);
}

#[tokio::test]
async fn probes_answer_on_their_own_socket_while_the_admin_socket_is_full() {
    let limits = AdminLimits {
        max_connections: 2,
        max_connections_per_ip: 2,
        ..AdminLimits::default()
    };
    let server = start_with(Some(Arc::new(Echo)), Some("t0k"), limits, true).await;
    let probe = server.probe.unwrap();
    server.readiness.set(true);
    // Two connections that send nothing hold the admin socket's two slots (until the request timeout).
    let _held = [
        TcpStream::connect(server.addr).await.unwrap(),
        TcpStream::connect(server.addr).await.unwrap(),
    ];
    assert!(
        closed_at_accept(server.addr).await,
        "the admin socket is full"
    );
    for _ in 0..20 {
        let started = std::time::Instant::now();
        let (status, _, body) = request(probe, "GET", "/readyz", "").await;
        assert_eq!((status, body.as_str()), (200, "ready\n"));
        assert!(started.elapsed() < Duration::from_millis(100));
    }
    assert_eq!(request(probe, "GET", "/healthz", "").await.0, 200);
    // Nothing else is served there, token or not.
    for path in ["/metrics", "/echo", "/big"] {
        let header = "Authorization: Bearer t0k\r\n";
        assert_eq!(request_with(probe, "GET", path, header, "").await.0, 404);
    }
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
async fn a_token_file_is_read_at_bind() {
    let dir = fleetgate_testkit::scratch_dir();
    let path = dir.path().join("token");
    std::fs::write(&path, "").unwrap();
    let config = AdminConfig {
        token_file: Some(path.clone()),
        ..AdminConfig::local("127.0.0.1:0".parse().unwrap())
    };
    let err = AdminSockets::bind(&config).await.unwrap_err();
    assert!(matches!(err, AdminError::Token(_)), "{err}");
    assert!(err.to_string().contains("secret file is empty"), "{err}");
    std::fs::write(&path, "f1le-t0ken\n").unwrap();
    let sockets = AdminSockets::bind(&config).await.unwrap();
    assert_eq!(sockets.token, Some(AdminToken::new("f1le-t0ken")));
    assert!(!format!("{sockets:?}").contains("f1le-t0ken"));
}

#[tokio::test]
async fn stops_accepting_on_shutdown() {
    let config = AdminConfig::local("127.0.0.1:0".parse().unwrap());
    let sockets = AdminSockets::bind(&config).await.unwrap();
    let state = AdminState {
        readiness: Readiness::new(),
        metrics: PrometheusBuilder::new().build_recorder().handle(),
        routes: None,
    };
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(sockets.serve(state, shutdown.clone()));
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn probes_answer_while_the_serving_runtime_is_blocked() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = runtime.block_on(async {
        let server = start_with(None, None, AdminLimits::default(), true).await;
        // Up on both sockets before the runtime is blocked.
        assert_eq!(request(server.addr, "GET", "/healthz", "").await.0, 200);
        assert_eq!(
            request(server.probe.unwrap(), "GET", "/healthz", "")
                .await
                .0,
            200
        );
        server
    });
    server.readiness.set(true);
    let probe = server.probe.unwrap();
    let admin = server.addr;
    let prober = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        let ask = |addr| {
            let started = std::time::Instant::now();
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            std::io::Write::write_all(
                &mut s,
                b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            )
            .unwrap();
            let mut raw = String::new();
            let read = std::io::Read::read_to_string(&mut s, &mut raw);
            (read.is_ok() && raw.ends_with("ready\n"), started.elapsed())
        };
        (ask(probe), ask(admin))
    });
    // The serving runtime's only thread is busy for a second (a handler that blocks, a saturated runtime).
    runtime.block_on(async { std::thread::sleep(Duration::from_secs(1)) });
    let ((probe_ok, probe_took), (admin_ok, _)) = prober.join().unwrap();
    assert!(probe_ok, "the probe socket did not answer");
    assert!(probe_took < Duration::from_millis(250), "{probe_took:?}");
    assert!(
        !admin_ok,
        "the admin socket answered from a blocked runtime"
    );
}
