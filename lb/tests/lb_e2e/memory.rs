//! A rough measurement of the LB's memory per idle connection (run by hand, see the `#[ignore]` reasons): the
//! LB runs in a child process (this test binary re-executed), the clients and the fake backend in this one, and
//! the child's VmRSS is read before and after N idle connections are established.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use fleetgate_testkit::Pki;

use crate::harness::*;

const CHILD_ENV: &str = "FLEETGATE_LB_MEMORY_CHILD_CONFIG";
/// Idle connections opened per listener kind.
const CONNECTIONS: usize = 1000;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
#[ignore = "child process of rss_per_idle_connection"]
async fn lb_child_process() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let cfg = fleetgate_lb::LbConfig::load(std::path::Path::new(&path)).unwrap();
    let lb = TestLb::start(cfg).await;
    println!(
        "PORTS {} {}",
        lb.addr("plain").port(),
        lb.addr("tls").port()
    );
    // Runs until the parent kills it.
    std::future::pending::<()>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, run by hand: cargo test -p fleetgate-lb --test lb_e2e rss -- --ignored --nocapture"]
async fn rss_per_idle_connection() {
    let pki = Pki::new();
    let mut b = FakeBackend::start("broker-0").await;
    let parts = [
        plain_listener("plain", ""),
        tls_listener("tls", &pki, "none", ""),
        backend(&b, ""),
    ];
    // Every client is 127.0.0.1: the per-address cap must admit all of them.
    let limits = format!("[limits]\nmax_connections_per_ip = {}\n", 4 * CONNECTIONS);
    let src = lb_text("name = \"mem\"", &parts, &limits);
    let path = pki.dir().join("lb.toml");
    std::fs::write(&path, src).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "memory::lb_child_process",
            "--nocapture",
        ])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ports = loop {
        let line = lines.next().unwrap().unwrap();
        if let Some(rest) = line.strip_prefix("PORTS ") {
            break rest
                .split(' ')
                .map(|p| p.parse::<u16>().unwrap())
                .collect::<Vec<_>>();
        }
    };
    let (plain, tls) = (ports[0], ports[1]);
    let connector = tokio_rustls::TlsConnector::from(pki.client_config(None));

    // Warm up (allocator arenas, first handshakes), then measure.
    let mut keep: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
    for kind in ["warmup-plain", "warmup-tls"] {
        keep.push(open(kind, 0, plain, tls, &connector).await);
        b.next().await;
    }
    for kind in ["plain", "tls"] {
        let before = rss_kib(pid);
        for i in 0..CONNECTIONS {
            keep.push(open(kind, i, plain, tls, &connector).await);
            b.next().await;
        }
        // Lets the LB's last allocations settle before the reading: part of the measurement, not a wait for state.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = rss_kib(pid);
        println!(
            "{kind}: {CONNECTIONS} idle connections, LB RSS {before} KiB -> {after} KiB = {:.1} KiB per connection",
            (after - before) as f64 / CONNECTIONS as f64
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

async fn open(
    kind: &str,
    i: usize,
    plain: u16,
    tls: u16,
    connector: &tokio_rustls::TlsConnector,
) -> Box<dyn std::any::Any + Send> {
    let connect = raw_connect(4, &format!("{kind}-{i}"), 60);
    let mut ack = [0u8; 4];
    if kind.ends_with("tls") {
        let tcp = TcpStream::connect(("127.0.0.1", tls)).await.unwrap();
        let mut s = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        s.write_all(&connect).await.unwrap();
        s.read_exact(&mut ack).await.unwrap();
        Box::new(s)
    } else {
        let mut s = TcpStream::connect(("127.0.0.1", plain)).await.unwrap();
        s.write_all(&connect).await.unwrap();
        s.read_exact(&mut ack).await.unwrap();
        Box::new(s)
    }
}
