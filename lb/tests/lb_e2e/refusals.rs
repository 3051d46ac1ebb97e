//! Refusals: garbage, slow-loris, oversize, no backend (CONNACK 0x03 / 0x88), admission limits.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::*;

async fn dead_addr() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

#[tokio::test]
async fn garbage_first_packet_is_closed() {
    let mut b = FakeBackend::start("broker-0").await;
    let lb = TestLb::start(config(
        &[
            plain_listener("plain-garbage", ""),
            backend_toml("broker-0", b.addr, ""),
        ],
        "",
    ))
    .await;
    let mut s = TcpStream::connect(lb.addr("plain-garbage")).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_until_close(&mut s).await, b"");
    assert!(
        lb.eventually_metric(
            "fleetgate_lb_connect_peek_total",
            &["outcome=\"not_mqtt\""],
            1.0
        )
        .await
            >= 1.0
    );
    assert!(b.nothing_yet());
}

#[tokio::test]
async fn keep_alive_zero_client_is_closed_after_max_idle() {
    let b = FakeBackend::start("broker-0").await;
    let lb = TestLb::start(config(
        &[
            plain_listener("plain-ka0", ""),
            backend_toml("broker-0", b.addr, ""),
        ],
        "max_idle = \"300ms\"",
    ))
    .await;
    let mut s = TcpStream::connect(lb.addr("plain-ka0")).await.unwrap();
    s.write_all(&raw_connect(4, "silent-ka0", 0)).await.unwrap();
    let started = std::time::Instant::now();
    // The CONNACK, then nothing until the LB closes the silent relay.
    assert_eq!(read_until_close(&mut s).await, [0x20, 0x02, 0, 0]);
    assert!(started.elapsed() < STEP);
    assert!(
        lb.eventually_metric(
            "fleetgate_lb_relays_ended_total",
            &["reason=\"idle_timeout\""],
            1.0
        )
        .await
            >= 1.0
    );
}

#[tokio::test]
async fn slowloris_connect_times_out() {
    let b = FakeBackend::start("broker-0").await;
    let lb = TestLb::start(config(
        &[
            plain_listener("plain-slow", ""),
            backend_toml("broker-0", b.addr, ""),
        ],
        "connect_peek_timeout = \"300ms\"",
    ))
    .await;
    let mut s = TcpStream::connect(lb.addr("plain-slow")).await.unwrap();
    let connect = raw_connect(4, "slow", 30);
    s.write_all(&connect[..5]).await.unwrap();
    let started = std::time::Instant::now();
    assert_eq!(read_until_close(&mut s).await, b"");
    assert!(started.elapsed() < STEP);
    assert!(
        lb.eventually_metric(
            "fleetgate_lb_connect_peek_total",
            &["outcome=\"timeout\""],
            1.0
        )
        .await
            >= 1.0
    );
}

#[tokio::test]
async fn oversized_connect_is_refused_from_its_header() {
    let b = FakeBackend::start("broker-0").await;
    let lb = TestLb::start(config(
        &[
            plain_listener("plain-big", ""),
            backend_toml("broker-0", b.addr, ""),
        ],
        "max_connect_size = 256",
    ))
    .await;
    let mut s = TcpStream::connect(lb.addr("plain-big")).await.unwrap();
    // Announces 10 000 bytes; only the fixed header is sent.
    s.write_all(&[0x10, 0x90, 0x4E]).await.unwrap();
    assert_eq!(read_until_close(&mut s).await, b"");
    assert!(
        lb.eventually_metric(
            "fleetgate_lb_connect_peek_total",
            &["outcome=\"too_large\""],
            1.0
        )
        .await
            >= 1.0
    );
}

#[tokio::test]
async fn all_backends_down_gives_server_unavailable() {
    let dead0 = dead_addr().await;
    let dead1 = dead_addr().await;
    let lb = TestLb::start(config(
        &[
            plain_listener("plain-down", ""),
            backend_toml("d0", dead0, ""),
            backend_toml("d1", dead1, ""),
        ],
        "",
    ))
    .await;
    let addr = lb.addr("plain-down");
    let err = rumqttc_connect(addr, "lonely", None).await.unwrap_err();
    assert!(err.contains("ServiceUnavailable"), "{err}");

    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&raw_connect(5, "lonely-v5", 30)).await.unwrap();
    assert_eq!(
        read_until_close(&mut s).await,
        [0x20, 0x03, 0x00, 0x88, 0x00]
    );
    assert!(
        lb.eventually_metric(
            "fleetgate_lb_connections_total",
            &["plain-down", "backend_unavailable"],
            2.0
        )
        .await
            >= 2.0
    );
}

#[tokio::test]
async fn listener_cap_answers_server_busy() {
    let mut b = FakeBackend::start("broker-0").await;
    let lb = TestLb::start(config(
        &[
            plain_listener("plain-cap", "max_connections = 1"),
            backend_toml("broker-0", b.addr, ""),
        ],
        "",
    ))
    .await;
    let addr = lb.addr("plain-cap");
    let mut first = TcpStream::connect(addr).await.unwrap();
    first.write_all(&raw_connect(4, "first", 30)).await.unwrap();
    let mut ack = [0u8; 4];
    tokio::time::timeout(STEP, first.read_exact(&mut ack))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00]);
    b.next().await;

    let mut second = TcpStream::connect(addr).await.unwrap();
    second
        .write_all(&raw_connect(5, "second", 30))
        .await
        .unwrap();
    assert_eq!(
        read_until_close(&mut second).await,
        [0x20, 0x03, 0x00, 0x89, 0x00]
    );
    assert!(
        lb.eventually_metric(
            "fleetgate_lb_admission_refused_total",
            &["listener_full"],
            1.0
        )
        .await
            >= 1.0
    );

    // The slot comes back when the first client leaves.
    drop(first);
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let mut again = TcpStream::connect(addr).await.unwrap();
        again.write_all(&raw_connect(4, "third", 30)).await.unwrap();
        let mut ack = [0u8; 4];
        if tokio::time::timeout(STEP, again.read_exact(&mut ack))
            .await
            .unwrap()
            .is_ok()
            && ack == [0x20, 0x02, 0, 0]
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "slot never released"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn per_ip_rate_closes_before_the_tls_handshake() {
    let pki = TestPki::new();
    let b = FakeBackend::start("broker-0").await;
    let lb = TestLb::start(config(
        &[
            tls_listener("tls-rate", &pki, "none", ""),
            backend_toml("broker-0", b.addr, ""),
        ],
        "per_ip_rate = 0.01\nper_ip_burst = 1",
    ))
    .await;
    let addr = lb.addr("tls-rate");
    rumqttc_connect(addr, "first", Some(pki.client_config(None)))
        .await
        .unwrap();
    assert!(
        rumqttc_connect(addr, "second", Some(pki.client_config(None)))
            .await
            .is_err()
    );
    assert!(
        lb.eventually_metric(
            "fleetgate_lb_admission_refused_total",
            &["per_ip_rate"],
            1.0
        )
        .await
            >= 1.0
    );
}

#[tokio::test]
async fn tls_handshake_budget_refuses_before_the_handshake() {
    let pki = TestPki::new();
    let b = FakeBackend::start("broker-0").await;
    let lb = TestLb::start(config(
        &[
            tls_listener("tls-budget", &pki, "none", ""),
            backend_toml("broker-0", b.addr, ""),
        ],
        "tls_handshakes_per_second = 1",
    ))
    .await;
    let addr = lb.addr("tls-budget");
    let mut results = Vec::new();
    for i in 0..3 {
        results.push(
            rumqttc_connect(addr, &format!("storm-{i}"), Some(pki.client_config(None)))
                .await
                .is_ok(),
        );
    }
    assert!(results[0], "{results:?}");
    assert!(results.iter().any(|ok| !ok), "{results:?}");
    assert!(
        lb.eventually_metric("fleetgate_lb_admission_refused_total", &["tls_budget"], 1.0)
            .await
            >= 1.0
    );
}
