//! What only the LB's in-process tests need (the rest is `fleetgate-testkit`): an LB started in process on
//! 127.0.0.1:0 from a parsed config or a reloadable file ([`TestLb`]), the config text builders, and one fake
//! backend ([`FakeBackend`]) that decodes the PROXY header, answers CONNACK and PINGRESP, and records what it saw
//! per connection and per client ID — or, frozen, accepts and answers nothing like a SIGSTOPped node.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use fleetgate_lb::{Lb, LbConfig, LbHandle};
use fleetgate_protocol::peek::{ConnectSummary, peek_connect};
use fleetgate_protocol::proxy::{ProxiedConnection, ProxyPolicy, TrustedProxies, read_header};
use fleetgate_testkit::raw::{self, Connect, read_packet};
use fleetgate_testkit::rumqttc_client::try_v3_client;
use fleetgate_testkit::{Admin, CertFiles, Pki, WAIT};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A running LB that shuts down on drop.
pub struct TestLb {
    /// The LB (listener addresses, drain, shared state).
    pub handle: LbHandle,
    /// Its admin server.
    pub admin: Admin,
    shutdown: CancellationToken,
}

impl TestLb {
    /// Starts the LB from a parsed config.
    pub async fn start(config: LbConfig) -> TestLb {
        let shutdown = CancellationToken::new();
        let handle = Lb::start(config, shutdown.clone()).await.unwrap();
        Self::running(handle, shutdown)
    }

    /// Starts the LB from a config file, so that it can be reloaded (`POST /reload`, the file watcher).
    pub async fn start_file(path: &Path) -> TestLb {
        let shutdown = CancellationToken::new();
        let handle = Lb::start_file(path, None, shutdown.clone()).await.unwrap();
        Self::running(handle, shutdown)
    }

    fn running(handle: LbHandle, shutdown: CancellationToken) -> TestLb {
        let admin = Admin::new(handle.admin_addr().expect("an [admin] section"));
        TestLb {
            handle,
            admin,
            shutdown,
        }
    }

    /// The address of listener `listener`.
    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.handle.listener_addr(listener).unwrap()
    }
}

/// A fake backend `broker-0` behind an LB with the one listener `listener` and `[limits]` `limits`.
pub async fn lb_with_backend(listener: String, limits: &str) -> (FakeBackend, TestLb) {
    let b = FakeBackend::start("broker-0").await;
    let lb = TestLb::start(config(&[listener, backend(&b, "")], limits)).await;
    (b, lb)
}

/// Connects to `addr`, sends `bytes`, and returns what the LB sent before it closed the connection.
pub async fn sent_before_close(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_until_close(&mut s).await
}

impl Drop for TestLb {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A whole config: `[lb]` with `lb_lines`, an admin server on 127.0.0.1:0, the `parts` (listeners, backends) and
/// `tail` (`[limits]`, `[health]`, `[drain]`, ...). Line numbers of a part are stable: the tests assert the
/// `file:line:column` of a rejected reload.
pub fn lb_text(lb_lines: &str, parts: &[String], tail: &str) -> String {
    format!(
        "[lb]\n{lb_lines}\n[admin]\nbind = \"127.0.0.1:0\"\n{}\n{tail}\n",
        parts.concat()
    )
}

/// Parses a whole config made of `parts` and a `[limits]` table with `limits`.
pub fn config(parts: &[String], limits: &str) -> LbConfig {
    let src = lb_text("name = \"test-lb\"", parts, &format!("[limits]\n{limits}"));
    LbConfig::parse(Path::new("/nonexistent/lb.toml"), &src)
        .unwrap_or_else(|e| panic!("{e}\n---\n{src}"))
}

/// A config file a test rewrites, alone in its own directory (removed when dropped).
pub struct ConfigFile {
    /// The file.
    pub path: PathBuf,
    _dir: TempDir,
}

impl ConfigFile {
    /// Writes `text` as `name` into a fresh directory.
    pub fn new(name: &str, text: &str) -> ConfigFile {
        let dir = tempfile::tempdir().unwrap();
        let file = ConfigFile {
            path: dir.path().join(name),
            _dir: dir,
        };
        file.write(text);
        file
    }

    /// Replaces the file like an editor or a ConfigMap swap does (write, then rename): the watcher never sees a
    /// half-written file.
    pub fn write(&self, text: &str) {
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }
}

/// A `[[listeners]]` entry named `name` on `bind`.
pub fn listener(name: &str, bind: &str) -> String {
    format!("[[listeners]]\nname = \"{name}\"\nbind = \"{bind}\"\n")
}

/// A plain `[[listeners]]` entry on 127.0.0.1:0 with extra lines.
pub fn plain_listener(name: &str, extra: &str) -> String {
    format!("{}{extra}\n", listener(name, "127.0.0.1:0"))
}

/// A TLS `[[listeners]]` entry on 127.0.0.1:0 serving `pki`'s server certificate.
pub fn tls_listener(name: &str, pki: &Pki, client_auth: &str, extra_tls: &str) -> String {
    format!(
        "{}[listeners.tls]\ncertificates = [{{ cert = {:?}, key = {:?} }}]\nclient_auth = \"{client_auth}\"\nclient_ca = {:?}\n{extra_tls}\n",
        listener(name, "127.0.0.1:0"),
        pki.server().cert.display().to_string(),
        pki.server().key.display().to_string(),
        pki.ca_cert().display().to_string(),
    )
}

/// A `[[backends]]` entry.
pub fn backend_toml(name: &str, addr: SocketAddr, extra: &str) -> String {
    format!("[[backends]]\nname = \"{name}\"\naddress = \"{addr}\"\n{extra}\n")
}

/// The `[[backends]]` entry of `fake`, with extra lines.
pub fn backend(fake: &FakeBackend, extra: &str) -> String {
    backend_toml(&fake.name, fake.addr, extra)
}

/// A port that refuses connections (bound, then closed).
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

/// What a [`FakeBackend`] counts.
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

/// What the fake backend saw on one client connection.
#[derive(Debug)]
pub struct Seen {
    /// The name of the backend that saw it.
    pub backend: String,
    /// The PROXY header the LB sent.
    pub header: ProxiedConnection,
    /// The client's CONNECT.
    pub connect: ConnectSummary,
}

/// A fake broker node: PROXY header, CONNECT → CONNACK 0, PINGREQ → PINGRESP, the rest swallowed and counted.
/// While `frozen`, it accepts TCP connections and then answers nothing (like a SIGSTOPped process).
pub struct FakeBackend {
    /// Its backend name in configs.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it counted.
    pub stats: Arc<FakeStats>,
    /// Set to answer nothing (a SIGSTOPped node).
    pub frozen: Arc<AtomicBool>,
    /// Client ID → how many times it connected here.
    clients: Arc<Mutex<HashMap<String, usize>>>,
    seen: mpsc::UnboundedReceiver<Seen>,
}

/// What a connection task of a [`FakeBackend`] records into.
#[derive(Clone)]
struct Record {
    name: String,
    stats: Arc<FakeStats>,
    frozen: Arc<AtomicBool>,
    clients: Arc<Mutex<HashMap<String, usize>>>,
    seen: mpsc::UnboundedSender<Seen>,
}

impl FakeBackend {
    /// Listens on 127.0.0.1:0 as backend `name`.
    pub async fn start(name: &str) -> FakeBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (tx, seen) = mpsc::unbounded_channel();
        let fake = FakeBackend {
            name: name.into(),
            addr: listener.local_addr().unwrap(),
            stats: Arc::default(),
            frozen: Arc::default(),
            clients: Arc::default(),
            seen,
        };
        let record = Record {
            name: fake.name.clone(),
            stats: fake.stats.clone(),
            frozen: fake.frozen.clone(),
            clients: fake.clients.clone(),
            seen: tx,
        };
        tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                tokio::spawn(record.clone().serve(stream, peer));
            }
        });
        fake
    }

    /// How many times `client_id` connected here.
    pub fn count(&self, client_id: &str) -> usize {
        self.clients
            .lock()
            .unwrap()
            .get(client_id)
            .copied()
            .unwrap_or(0)
    }

    /// The next client connection this backend saw.
    pub async fn next(&mut self) -> Seen {
        tokio::time::timeout(WAIT, self.seen.recv())
            .await
            .expect("backend saw nothing in time")
            .unwrap()
    }

    /// True if no client connection has arrived (yet).
    pub fn nothing_yet(&mut self) -> bool {
        self.seen.try_recv().is_err()
    }
}

impl Record {
    async fn serve(self, mut stream: TcpStream, peer: SocketAddr) {
        if self.frozen.load(Ordering::SeqCst) {
            // Hold the socket, answer nothing.
            let mut sink = [0u8; 1024];
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            return;
        }
        let policy = ProxyPolicy::new(TrustedProxies::new(vec!["127.0.0.0/8".parse().unwrap()]));
        let Ok(header) = read_header(&mut stream, peer, &policy).await else {
            return;
        };
        let Some((first, body)) = read_packet(&mut stream).await else {
            return;
        };
        let whole = raw::packet(first, &body);
        let Ok(Some(connect)) = peek_connect(&whole, 1 << 20) else {
            return;
        };
        let connack: &[u8] = if connect.protocol_level == 5 {
            &[0x20, 0x03, 0, 0, 0]
        } else {
            &[0x20, 0x02, 0, 0]
        };
        let probe = connect.client_id.starts_with("fleetgate-probe-");
        // Recorded before the CONNACK, so a client that has its CONNACK finds itself counted.
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
            let _ = self.seen.send(Seen {
                backend: self.name.clone(),
                header,
                connect,
            });
        }
        if stream.write_all(connack).await.is_err() {
            return;
        }
        let ended = loop {
            match read_packet(&mut stream).await {
                None => break &self.stats.ungraceful,
                Some((0xE0, _)) => break &self.stats.graceful,
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
        };
        if !probe {
            ended.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Connects with rumqttc (MQTT 3.1.1), over TLS with `tls`, and returns the outcome of the first CONNACK.
pub async fn rumqttc_connect(
    addr: SocketAddr,
    client_id: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<(), String> {
    use rumqttc::{TlsConfiguration, Transport};
    let (client, _events, _) = try_v3_client(addr, client_id, |o| {
        if let Some(config) = tls {
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
        }
    })
    .await?;
    let _ = client.try_disconnect();
    Ok(())
}

/// [`rumqttc_connect`] over TLS trusting `pki`, presenting `cert` when given.
pub async fn tls_connect(
    addr: SocketAddr,
    client_id: &str,
    pki: &Pki,
    cert: Option<&CertFiles>,
) -> Result<(), String> {
    rumqttc_connect(addr, client_id, Some(pki.client_config(cert))).await
}

/// A raw MQTT CONNECT (3.1.1 when `level` is 4, 5.0 when 5, clean session) with the given client ID.
pub fn raw_connect(level: u8, client_id: &str, keep_alive: u16) -> Vec<u8> {
    Connect {
        keep_alive,
        ..Connect::new(level, client_id)
    }
    .encode()
}

/// Connects to `addr`, sends CONNECT (keep alive 0), returns the stream once CONNACK 0 arrived.
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
    tokio::time::timeout(WAIT, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("{client_id}: CONNACK timed out")))
}

/// Fills `buf` from `stream` within [`WAIT`]; panics otherwise.
pub async fn read_exactly(stream: &mut TcpStream, buf: &mut [u8]) {
    tokio::time::timeout(WAIT, stream.read_exact(buf))
        .await
        .expect("read in time")
        .expect("read");
}

/// Reads until EOF (bounded); what the LB sent before closing.
pub async fn read_until_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut out))
        .await
        .expect("LB did not close in time");
    out
}
