//! Refusals: garbage, slow-loris, oversize, no backend (CONNACK 0x03 / 0x88), admission limits.

use std::time::{Duration, Instant};

use fleetgate_testkit::{Pki, WAIT, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

/// First-packet outcomes, by `outcome`.
const PEEK: &str = "fleetgate_lb_connect_peek_total";

/// A client of a plain listener (with `[limits]` `limits`) sends `bytes`: what the LB sent before closing and how
/// long the whole exchange took, once `counter{label}` counted the refusal; the fake backend behind it.
async fn refused(
    limits: &str,
    bytes: &[u8],
    counter: &str,
    label: (&str, &str),
) -> (Vec<u8>, Duration, FakeBackend) {
    let (b, lb) = lb_with_backend(plain_listener("plain", ""), limits).await;
    let started = Instant::now();
    let sent = sent_before_close(lb.addr("plain"), bytes).await;
    let took = started.elapsed();
    lb.admin.wait_count(counter, &[label], 1.0).await;
    (sent, took, b)
}

/// Waits until admission control counted a refusal for `reason`.
async fn wait_refused(lb: &TestLb, reason: &str) {
    let admission = "fleetgate_lb_admission_refused_total";
    lb.admin
        .wait_count(admission, &[("reason", reason)], 1.0)
        .await;
}

#[tokio::test]
async fn garbage_first_packet_is_closed() {
    let garbage = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let (sent, _, mut b) = refused("", garbage, PEEK, ("outcome", "not_mqtt")).await;
    assert_eq!(sent, b"");
    assert!(b.nothing_yet());
}

#[tokio::test]
async fn keep_alive_zero_client_is_closed_after_max_idle() {
    let connect = raw_connect(4, "silent-ka0", 0);
    let ended = "fleetgate_lb_relays_ended_total";
    let idle = ("reason", "idle_timeout");
    let (sent, took, _) = refused("max_idle = \"300ms\"", &connect, ended, idle).await;
    // The CONNACK, then nothing until the LB closes the silent relay.
    assert_eq!(sent, [0x20, 0x02, 0, 0]);
    assert!(took < WAIT);
}

#[tokio::test]
async fn slowloris_connect_times_out() {
    let connect = raw_connect(4, "slow", 30);
    let limits = "connect_peek_timeout = \"300ms\"";
    let (sent, took, _) = refused(limits, &connect[..5], PEEK, ("outcome", "timeout")).await;
    assert_eq!(sent, b"");
    assert!(took < WAIT);
}

#[tokio::test]
async fn oversized_connect_is_refused_from_its_header() {
    // Announces 10 000 bytes; only the fixed header is sent.
    let header = [0x10, 0x90, 0x4E];
    let limits = "max_connect_size = 256";
    let (sent, _, _) = refused(limits, &header, PEEK, ("outcome", "too_large")).await;
    assert_eq!(sent, b"");
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

    let sent = sent_before_close(addr, &raw_connect(5, "lonely-v5", 30)).await;
    assert_eq!(sent, [0x20, 0x03, 0x00, 0x88, 0x00]);
    lb.admin
        .wait_count(
            "fleetgate_lb_connections_total",
            &[
                ("listener", "plain-down"),
                ("outcome", "backend_unavailable"),
            ],
            2.0,
        )
        .await;
}

#[tokio::test]
async fn listener_cap_answers_server_busy() {
    let (mut b, lb) = lb_with_backend(plain_listener("plain-cap", "max_connections = 1"), "").await;
    let addr = lb.addr("plain-cap");
    let mut first = TcpStream::connect(addr).await.unwrap();
    first.write_all(&raw_connect(4, "first", 30)).await.unwrap();
    let mut ack = [0u8; 4];
    read_exactly(&mut first, &mut ack).await;
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00]);
    b.next().await;

    let sent = sent_before_close(addr, &raw_connect(5, "second", 30)).await;
    assert_eq!(sent, [0x20, 0x03, 0x00, 0x89, 0x00]);
    wait_refused(&lb, "listener_full").await;

    // The slot comes back when the first client leaves.
    drop(first);
    let released = eventually(WAIT, || async {
        let mut again = TcpStream::connect(addr).await.unwrap();
        again.write_all(&raw_connect(4, "third", 30)).await.unwrap();
        let mut ack = [0u8; 4];
        let read = tokio::time::timeout(WAIT, again.read_exact(&mut ack))
            .await
            .unwrap();
        (read.is_ok() && ack == [0x20, 0x02, 0, 0]).then_some(())
    })
    .await;
    assert!(released.is_ok(), "slot never released");
}

#[tokio::test]
async fn per_ip_rate_closes_before_the_tls_handshake() {
    let pki = Pki::new();
    let (_b, lb) = lb_with_backend(
        tls_listener("tls-rate", &pki, "none", ""),
        "per_ip_rate = 0.01\nper_ip_burst = 1",
    )
    .await;
    let addr = lb.addr("tls-rate");
    tls_connect(addr, "first", &pki, None).await.unwrap();
    assert!(tls_connect(addr, "second", &pki, None).await.is_err());
    wait_refused(&lb, "per_ip_rate").await;
}

#[tokio::test]
async fn tls_handshake_budget_refuses_before_the_handshake() {
    let pki = Pki::new();
    let (_b, lb) = lb_with_backend(
        tls_listener("tls-budget", &pki, "none", ""),
        "tls_handshakes_per_second = 1",
    )
    .await;
    let addr = lb.addr("tls-budget");
    let mut results = Vec::new();
    for i in 0..3 {
        results.push(
            tls_connect(addr, &format!("storm-{i}"), &pki, None)
                .await
                .is_ok(),
        );
    }
    assert!(results[0], "{results:?}");
    assert!(results.iter().any(|ok| !ok), "{results:?}");
    wait_refused(&lb, "tls_budget").await;
}

/// Connects from `source` (a loopback address of this host) to `addr` and sends a CONNECT for `client_id`; the
/// first packet the LB answers, or an empty vector when it closed.
async fn connect_from(
    source: &str,
    addr: std::net::SocketAddr,
    client_id: &str,
) -> (TcpStream, Vec<u8>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    s.write_all(&raw_connect(4, client_id, 30)).await.unwrap();
    let mut ack = vec![0u8; 4];
    let read = tokio::time::timeout(WAIT, s.read_exact(&mut ack))
        .await
        .unwrap();
    if read.is_err() {
        ack.clear();
    }
    (s, ack)
}

#[tokio::test]
async fn per_ip_connection_cap_answers_server_busy_and_frees_the_slot_on_close() {
    let (mut b, lb) = lb_with_backend(
        plain_listener("plain-per-ip", ""),
        "max_connections_per_ip = 2",
    )
    .await;
    let addr = lb.addr("plain-per-ip");
    let connack_ok = vec![0x20, 0x02, 0x00, 0x00];
    let (first, ack) = connect_from("127.0.0.1", addr, "ip-1").await;
    assert_eq!(ack, connack_ok);
    let (_second, ack) = connect_from("127.0.0.1", addr, "ip-2").await;
    assert_eq!(ack, connack_ok);
    b.next().await;
    b.next().await;

    // The third from the same address: its CONNECT is read and answered "server busy" (3.1.1: 0x03, v5: 0x89), and
    // it never reaches a backend.
    let (_third, ack) = connect_from("127.0.0.1", addr, "ip-3").await;
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x03]);
    let sent = sent_before_close(addr, &raw_connect(5, "ip-3-v5", 30)).await;
    assert_eq!(sent, [0x20, 0x03, 0x00, 0x89, 0x00]);
    wait_refused(&lb, "per_ip_connections").await;
    assert!(b.nothing_yet());
    // Another address has its own count.
    let (_other, ack) = connect_from("127.0.0.2", addr, "ip-other").await;
    assert_eq!(ack, connack_ok);

    // The slot comes back when a client of that address leaves.
    drop(first);
    let released = eventually(WAIT, || async {
        let (s, ack) = connect_from("127.0.0.1", addr, "ip-4").await;
        (ack == connack_ok).then_some(s)
    })
    .await;
    assert!(released.is_ok(), "slot never released");
}

#[tokio::test]
async fn per_ip_connection_cap_counts_the_client_a_trusted_proxy_names_ipv6_by_64() {
    let (_b, lb) = lb_with_backend(
        plain_listener("behind-nlb", "accept_proxy_from = [\"127.0.0.1/32\"]"),
        "max_connections_per_ip = 2",
    )
    .await;
    let addr = lb.addr("behind-nlb");
    let destination: std::net::SocketAddr = "[2001:db8::80]:1883".parse().unwrap();
    let via_proxy = |source: &str, id: &str| {
        let source: std::net::SocketAddr = source.parse().unwrap();
        let mut bytes = fleetgate_testkit::proxy::proxy_v2(source, destination);
        bytes.extend_from_slice(&raw_connect(4, id, 30));
        bytes
    };
    let connected = |bytes: Vec<u8>| async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        let mut ack = [0u8; 4];
        read_exactly(&mut s, &mut ack).await;
        (s, ack)
    };
    // Two hosts of one /64 share its count; the proxy's own address (127.0.0.1) is not what is counted.
    let (_a, ack) = connected(via_proxy("[2001:db8:1:2::1]:40001", "v6-a")).await;
    assert_eq!(ack, [0x20, 0x02, 0, 0]);
    let (_b2, ack) = connected(via_proxy("[2001:db8:1:2:ffff::2]:40002", "v6-b")).await;
    assert_eq!(ack, [0x20, 0x02, 0, 0]);
    let (_c, ack) = connected(via_proxy("[2001:db8:1:2::99]:40003", "v6-c")).await;
    assert_eq!(ack, [0x20, 0x02, 0, 0x03], "a third in the same /64");
    wait_refused(&lb, "per_ip_connections").await;
    let (_d, ack) = connected(via_proxy("[2001:db8:1:3::1]:40004", "v6-d")).await;
    assert_eq!(ack, [0x20, 0x02, 0, 0], "the next /64 has its own count");
    let (_e, ack) = connected(via_proxy("198.51.100.7:40005", "v4-e")).await;
    assert_eq!(ack, [0x20, 0x02, 0, 0]);
}

#[tokio::test]
async fn per_ip_connection_cap_closes_before_the_tls_handshake() {
    let pki = Pki::new();
    let (_b, lb) = lb_with_backend(
        tls_listener("tls-per-ip", &pki, "none", ""),
        "max_connections_per_ip = 1",
    )
    .await;
    let addr = lb.addr("tls-per-ip");
    // rumqttc over TLS: the first holds the address's one slot; the second's handshake is cut before it starts.
    let (client, _events, _) =
        fleetgate_testkit::rumqttc_client::try_v3_client(addr, "tls-1", |o| {
            o.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(pki.client_config(None)),
            ));
        })
        .await
        .unwrap();
    let refused = tls_connect(addr, "tls-2", &pki, None).await;
    assert!(refused.is_err(), "{refused:?}");
    wait_refused(&lb, "per_ip_connections").await;
    drop(client);
}
