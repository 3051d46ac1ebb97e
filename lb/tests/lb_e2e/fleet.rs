//! Harness for the control-plane tests: an MQTT fake backend that frames packets properly and records, per
//! client ID, where it connected and whether the LB said DISCONNECT before closing; raw MQTT clients; an LB
//! started from a config file so that it can be reloaded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleetgate_lb::{Lb, LbHandle};
use fleetgate_protocol::peek::peek_connect;
use fleetgate_protocol::proxy::{ProxyPolicy, TrustedProxies, read_header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub use fleetgate_testkit::raw::{packet, publish};

use crate::harness::{STEP, admin_request, raw_connect};

/// What a [`MqttFake`] counts.
#[derive(Debug, Default)]
pub struct FakeStats {
    /// Client CONNECTs answered (not counting health probes).
    pub connects: AtomicUsize,
    /// Connections that ended with a DISCONNECT from the LB (graceful for the node).
    pub graceful: AtomicUsize,
    /// Connections that ended without a DISCONNECT.
    pub ungraceful: AtomicUsize,
    /// PUBLISH packets received.
    pub publishes: AtomicUsize,
    /// Probe CONNECTs (client IDs starting with `fleetgate-probe-`).
    pub probes: AtomicUsize,
}

/// A fake broker node: PROXY v2 header, CONNECT → CONNACK 0, PINGREQ → PINGRESP, the rest swallowed. While
/// `frozen`, it accepts TCP connections and then answers nothing (like a SIGSTOPped process).
#[derive(Clone)]
pub struct MqttFake {
    pub name: String,
    pub addr: SocketAddr,
    pub stats: Arc<FakeStats>,
    pub frozen: Arc<AtomicBool>,
    /// Client ID → how many times it connected here.
    pub clients: Arc<Mutex<HashMap<String, usize>>>,
}

impl MqttFake {
    pub async fn start(name: &str) -> MqttFake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = MqttFake {
            name: name.into(),
            addr: listener.local_addr().unwrap(),
            stats: Arc::default(),
            frozen: Arc::default(),
            clients: Arc::default(),
        };
        let f = fake.clone();
        tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                tokio::spawn(f.clone().serve(stream, peer));
            }
        });
        fake
    }

    pub fn count(&self, client_id: &str) -> usize {
        self.clients
            .lock()
            .unwrap()
            .get(client_id)
            .copied()
            .unwrap_or(0)
    }

    async fn serve(self, mut stream: TcpStream, peer: SocketAddr) {
        if self.frozen.load(Ordering::SeqCst) {
            // Hold the socket, answer nothing.
            let mut sink = [0u8; 1024];
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            return;
        }
        let policy = ProxyPolicy::new(TrustedProxies::new(vec!["127.0.0.0/8".parse().unwrap()]));
        if read_header(&mut stream, peer, &policy).await.is_err() {
            return;
        }
        let Some((first, body)) = read_packet(&mut stream).await else {
            return;
        };
        let whole = packet(first, &body);
        let Ok(Some(connect)) = peek_connect(&whole, 1 << 20) else {
            return;
        };
        let connack: &[u8] = if connect.protocol_level == 5 {
            &[0x20, 0x03, 0, 0, 0]
        } else {
            &[0x20, 0x02, 0, 0]
        };
        let probe = connect.client_id.starts_with("fleetgate-probe-");
        if probe {
            self.stats.probes.fetch_add(1, Ordering::SeqCst);
        } else {
            self.stats.connects.fetch_add(1, Ordering::SeqCst);
            *self
                .clients
                .lock()
                .unwrap()
                .entry(connect.client_id.clone())
                .or_default() += 1;
        }
        // Counted before the CONNACK, so a client that has its CONNACK finds itself counted.
        if stream.write_all(connack).await.is_err() {
            return;
        }
        loop {
            match read_packet(&mut stream).await {
                None => {
                    if !probe {
                        self.stats.ungraceful.fetch_add(1, Ordering::SeqCst);
                    }
                    return;
                }
                Some((0xE0, _)) => {
                    if !probe {
                        self.stats.graceful.fetch_add(1, Ordering::SeqCst);
                    }
                    return;
                }
                Some((0xC0, _)) => {
                    if stream.write_all(&[0xD0, 0x00]).await.is_err() {
                        return;
                    }
                }
                Some((first, _)) if first & 0xF0 == 0x30 => {
                    self.stats.publishes.fetch_add(1, Ordering::SeqCst);
                }
                Some(_) => {}
            }
        }
    }
}

/// Reads one MQTT packet: (first byte, body); `None` on EOF or error.
pub async fn read_packet(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let first = stream.read_u8().await.ok()?;
    let mut len = 0usize;
    for shift in 0..4 {
        let b = stream.read_u8().await.ok()?;
        len |= usize::from(b & 0x7F) << (7 * shift);
        if b & 0x80 == 0 {
            let mut body = vec![0; len];
            stream.read_exact(&mut body).await.ok()?;
            return Some((first, body));
        }
    }
    None
}

/// Connects to `addr`, sends CONNECT, returns the stream once CONNACK 0 arrived.
pub async fn mqtt_connect(
    addr: SocketAddr,
    level: u8,
    client_id: &str,
) -> Result<TcpStream, String> {
    let attempt = async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        s.set_nodelay(true).ok();
        s.write_all(&raw_connect(level, client_id, 0))
            .await
            .map_err(|e| e.to_string())?;
        match read_packet(&mut s).await {
            Some((0x20, body)) if body.get(1) == Some(&0) => Ok(s),
            other => Err(format!("{client_id}: no CONNACK 0: {other:?}")),
        }
    };
    tokio::time::timeout(STEP, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("{client_id}: CONNACK timed out")))
}

/// An LB started from a config file (reloadable); shuts down on drop.
pub struct FileLb {
    pub handle: LbHandle,
    pub shutdown: CancellationToken,
}

impl FileLb {
    pub async fn start(path: &Path) -> FileLb {
        let shutdown = CancellationToken::new();
        let handle = Lb::start_file(path, None, shutdown.clone()).await.unwrap();
        FileLb { handle, shutdown }
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.handle.listener_addr(listener).unwrap()
    }

    /// An admin request; (status, body).
    pub async fn admin(&self, method: &str, path: &str) -> (u16, String) {
        admin_request(self.handle.admin_addr().unwrap(), method, path).await
    }

    pub async fn json(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.admin("GET", path).await;
        assert!(status == 200 || status == 503, "{path}: {status} {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The backend `client_id` is pinned to now.
    pub async fn pinned(&self, client_id: &str) -> String {
        self.json(&format!("/clients/{client_id}")).await["backend"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// A metric summed over lines containing every label.
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let (_, body) = self.admin("GET", "/metrics").await;
        body.lines()
            .filter(|l| l.starts_with(name) && labels.iter().all(|lab| l.contains(lab)))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum()
    }
}

impl Drop for FileLb {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Polls `check` every 20 ms until it holds or `deadline` passes; returns whether it held.
pub async fn eventually<F, Fut>(deadline: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A backend entry with extra lines.
pub fn backend(fake: &MqttFake, extra: &str) -> String {
    format!(
        "[[backends]]\nname = \"{}\"\naddress = \"{}\"\n{extra}\n",
        fake.name, fake.addr
    )
}
