//! The LB's budget of buffered bytes (`[limits] max_buffered_bytes`) against a real `fleetgate lb` process: eight
//! clients push 6 MiB each at a backend that stops reading; once the kernel's send buffers towards the backend are
//! full (up to 4 MiB each with Linux's autotuning), the relays would hold a 16 KiB buffer each (128 KiB). With a
//! 64 KiB budget they hold at most 64 KiB, further reads wait (counted), and once the backend reads again every
//! byte of every client arrives, in order.
#![allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING)

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::BIN;
use fleetgate_protocol::peek::peek_connect;
use fleetgate_testkit::raw::{self, Connect, read_packet};
use fleetgate_testkit::{LbProcess, WAIT, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Mutex, watch};

/// Clients pushing at once.
const CLIENTS: usize = 8;
/// Bytes of PUBLISH packets each client sends after its CONNECT: more than the kernel buffers between the LB and
/// a backend that does not read take, so that the relays' own buffers fill.
const PER_CLIENT: usize = 6 << 20;
/// The budget under test: the smallest accepted, four full relay buffers.
const BUDGET: usize = 64 * 1024;
/// The backend's socket receive buffer: small, so that the LB's writes to a backend that stopped reading wait
/// at once and its relay buffers stay full.
const BACKEND_RECEIVE_BUFFER: u32 = 4096;

/// What client `id` sends after its CONNECT: QoS 0 PUBLISH packets with a payload pattern of its own.
fn stream_for(id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(PER_CLIENT + 2048);
    let mut n = 0u32;
    while out.len() < PER_CLIENT {
        let payload: Vec<u8> = (0..1000u32)
            .map(|i| (i.wrapping_mul(31) ^ n ^ id.len() as u32) as u8)
            .collect();
        out.extend(raw::publish(4, &format!("load/{id}"), &payload));
        n += 1;
    }
    out
}

/// Per client ID, the bytes a [`SinkBackend`] received after its CONNECT.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A backend that answers each CONNECT, then reads nothing until `open` turns true, then reads everything and
/// records per client ID whether what arrived is exactly [`stream_for`] it.
struct SinkBackend {
    addr: SocketAddr,
    open: watch::Sender<bool>,
    /// Client ID → bytes received after the CONNECT.
    received: Received,
}

impl SinkBackend {
    async fn start() -> SinkBackend {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(BACKEND_RECEIVE_BUFFER).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(64).unwrap();
        let (open, gate) = watch::channel(false);
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = SinkBackend {
            addr: listener.local_addr().unwrap(),
            open,
            received: received.clone(),
        };
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(Self::serve(stream, gate.clone(), received.clone()));
            }
        });
        sink
    }

    async fn serve(mut stream: TcpStream, mut gate: watch::Receiver<bool>, received: Received) {
        let Some((first, body)) = read_packet(&mut stream).await else {
            return;
        };
        let Ok(Some(connect)) = peek_connect(&raw::packet(first, &body), 1 << 16) else {
            return;
        };
        if stream.write_all(&[0x20, 0x02, 0, 0]).await.is_err() {
            return;
        }
        let _ = gate.wait_for(|open| *open).await;
        let mut bytes = Vec::new();
        let _ = stream.read_to_end(&mut bytes).await;
        received.lock().await.push((connect.client_id, bytes));
    }
}

/// A client that connected through `lb` and is pushing its whole stream (the task ends when all is written).
async fn pushing_client(lb: SocketAddr, id: String) -> tokio::task::JoinHandle<()> {
    let mut s = TcpStream::connect(lb).await.unwrap();
    s.write_all(&Connect::new(4, &id).encode()).await.unwrap();
    let (first, body) = read_packet(&mut s).await.expect("CONNACK");
    assert_eq!((first, body), (0x20, vec![0, 0]), "{id}");
    tokio::spawn(async move {
        s.write_all(&stream_for(&id)).await.unwrap();
        // Closing the write side tells the backend the stream is complete.
        s.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_hold_no_more_than_the_budget_and_lose_nothing() {
    let backend = SinkBackend::start().await;
    let rest = format!(
        "[[backends]]\nname = \"sink\"\naddress = \"{}\"\nproxy_protocol = \"off\"\n\n\
         [limits]\nmax_buffered_bytes = \"{}KiB\"\n",
        backend.addr,
        BUDGET / 1024
    );
    let lb = LbProcess::start(BIN, "lb-buffers", &rest).await;
    let mut pushing = Vec::new();
    for i in 0..CLIENTS {
        pushing.push(pushing_client(lb.mqtt, format!("pusher-{i}")).await);
    }

    // The backend reads nothing: the relays fill what the budget allows, and further reads wait.
    let waits = "fleetgate_lb_relay_buffer_waits_total";
    lb.admin.wait_count(waits, &[], 1.0).await;
    let held = "fleetgate_lb_relay_buffered_bytes";
    let to_backend = [("direction", "to_backend")];
    let mut samples = Vec::new();
    for _ in 0..20 {
        samples.push(lb.admin.metric(held, &to_backend).await);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let most = samples.iter().copied().fold(0.0, f64::max);
    eprintln!("buffered bytes while the backend reads nothing: {samples:?}");
    assert!(most <= BUDGET as f64, "{most} > {BUDGET}: {samples:?}");
    assert!(
        most >= (BUDGET / 2) as f64,
        "the relays never filled the budget: {samples:?}"
    );

    // The backend reads again: everything arrives, exactly.
    backend.open.send_replace(true);
    for p in pushing {
        tokio::time::timeout(WAIT, p)
            .await
            .expect("a client could not push its stream")
            .unwrap();
    }
    let all_in = eventually(WAIT, || async {
        (backend.received.lock().await.len() == CLIENTS).then_some(())
    })
    .await;
    assert!(all_in.is_ok(), "not every relay ended");
    for (id, bytes) in backend.received.lock().await.iter() {
        let expected = stream_for(id);
        assert_eq!(bytes.len(), expected.len(), "{id}: bytes lost or added");
        assert!(*bytes == expected, "{id}: bytes changed");
    }
    lb.admin.wait_gauge(held, &[], 0.0).await;
}
