//! Helpers for the authentication and ACL tests (`tests/tests/auth_e2e.rs`): a node started from a full config
//! text with its side files (ACL, password file) in one directory, the LB in front of it with mutual TLS, a raw
//! MQTT client over TCP or TLS that reads exact reason codes, a hand-built PROXY v2 header, `fleetgate passwd`, and
//! the scan of every log line for secrets.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

use crate::clients::{self, CmdOutput};
use crate::pki::{CertFiles, Pki};
use crate::process::{ServerProcess, listening_addr};
use crate::raw;

/// How long a raw client waits for one packet.
pub const PACKET_DEADLINE: Duration = Duration::from_secs(5);

/// A `fleetgate node` started from a config file in a directory the test prepared (ACL, password file beside it).
pub struct AuthNode {
    /// The child process.
    pub process: ServerProcess,
    /// Every MQTT listener, in config order.
    pub mqtt: Vec<SocketAddr>,
    /// The admin server.
    pub admin: SocketAddr,
}

impl AuthNode {
    /// Writes `config` as `dir/node.toml` and starts `bin node --config dir/node.toml`.
    pub async fn start(bin: &str, dir: &Path, config: &str) -> Self {
        let path = dir.join("node.toml");
        std::fs::write(&path, config).expect("write node.toml");
        let args = ["node".as_ref(), "--config".as_ref(), path.as_os_str()];
        let mut process = ServerProcess::spawn(bin, args);
        // Listeners are bound (and logged) in config order before the admin server.
        let admin = process.wait_for_listening("admin").await;
        let mqtt = process
            .logs()
            .iter()
            .filter_map(|l| listening_addr(l, "mqtt"))
            .collect();
        Self {
            process,
            mqtt,
            admin,
        }
    }
    /// The sum of a metric's samples matching `labels`, from `/metrics`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let r = crate::http::get(self.admin, "/metrics").await;
        crate::http::metric_sum(&crate::http::parse_metrics(&r.body), name, labels)
    }

    /// The JSON log lines whose `event` is `event`.
    pub fn events(&self, event: &str) -> Vec<serde_json::Value> {
        self.process
            .json_logs()
            .into_iter()
            .filter(|v| v["event"] == event)
            .collect()
    }
}

/// A `fleetgate lb` with one TLS listener (`mqtts`) in front of one backend that gets PROXY v2.
pub struct TlsLb {
    /// The child process.
    pub process: ServerProcess,
    /// The TLS listener.
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl TlsLb {
    /// Starts the LB with `client_auth` (`"optional"` or `"required"`) trusting `pki`'s CA, forwarding to
    /// `backend`.
    pub async fn start(bin: &str, pki: &Pki, client_auth: &str, backend: SocketAddr) -> Self {
        let dir = tempfile::tempdir().expect("tempdir for lb.toml");
        let server = pki.server();
        let config = format!(
            "[lb]\nname = \"lb-auth\"\nshutdown_grace = \"2s\"\n\n[admin]\nbind = \"127.0.0.1:0\"\n\n\
             [[listeners]]\nname = \"mqtts\"\nbind = \"127.0.0.1:0\"\n[listeners.tls]\n\
             certificates = [{{ cert = {:?}, key = {:?} }}]\nclient_auth = {client_auth:?}\nclient_ca = {:?}\n\n\
             [[backends]]\nname = \"node\"\naddress = \"{backend}\"\nproxy_protocol = \"v2\"\n\n\
             [limits]\nper_ip_rate = 1000.0\nper_ip_burst = 1000\n",
            server.cert.display().to_string(),
            server.key.display().to_string(),
            pki.ca_cert().display().to_string(),
        );
        let path = dir.path().join("lb.toml");
        std::fs::write(&path, config).expect("write lb.toml");
        let args = ["lb".as_ref(), "--config".as_ref(), path.as_os_str()];
        let mut process = ServerProcess::spawn(bin, args);
        let addr = process.wait_for_listening("mqtts").await;
        Self {
            process,
            addr,
            _dir: dir,
        }
    }
}

/// A rustls client config trusting `pki`'s CA, presenting `client` when given.
pub fn tls_config(pki: &Pki, client: Option<&CertFiles>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(pki.ca_der()))
        .expect("add the test CA");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots);
    let config = match client {
        Some(c) => {
            let key = PrivateKeyDer::try_from(pem_der(&c.key_pem)).expect("client key DER");
            builder
                .with_client_auth_cert(vec![CertificateDer::from(c.cert_der.clone())], key)
                .expect("client certificate")
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// The DER inside a one-block PEM text.
fn pem_der(pem: &str) -> Vec<u8> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64_decode(&b64)
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for v in text.bytes().filter_map(value) {
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// Any byte stream a raw client can run over.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A raw MQTT client over TCP or TLS, for exact reason codes.
pub struct Mqtt {
    stream: Box<dyn Stream>,
    /// Protocol level (4 or 5).
    pub level: u8,
}

impl Mqtt {
    /// Over TLS to `addr` (the LB), presenting `client` when given.
    pub async fn tls(addr: SocketAddr, pki: &Pki, client: Option<&CertFiles>, level: u8) -> Self {
        let tcp = TcpStream::connect(addr).await.expect("connect to the LB");
        let connector = TlsConnector::from(tls_config(pki, client));
        let name = ServerName::try_from("localhost").expect("server name");
        let tls = connector.connect(name, tcp).await.expect("TLS handshake");
        Self {
            stream: Box::new(tls),
            level,
        }
    }

    /// Over plain TCP to `addr`, optionally from the local address `from` and starting with `preamble` (a PROXY
    /// header).
    pub async fn tcp(
        addr: SocketAddr,
        from: Option<SocketAddr>,
        preamble: &[u8],
        level: u8,
    ) -> Self {
        let socket = TcpSocket::new_v4().expect("socket");
        if let Some(from) = from {
            socket.bind(from).expect("bind the client address");
        }
        let mut stream = socket.connect(addr).await.expect("connect to the node");
        stream.write_all(preamble).await.expect("send preamble");
        Self {
            stream: Box::new(stream),
            level,
        }
    }

    /// Sends raw bytes (errors ignored: the server may have closed).
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
        let _ = self.stream.flush().await;
    }

    /// Reads one packet: (first byte, body); `None` on close or after [`PACKET_DEADLINE`].
    pub async fn read(&mut self) -> Option<(u8, Vec<u8>)> {
        raw::read_packet(&mut self.stream, PACKET_DEADLINE).await
    }

    /// Sends `connect` and returns the CONNACK reason/return code; `None` when the server closed without one.
    pub async fn connect(&mut self, connect: &raw::Connect<'_>) -> Option<u8> {
        self.send(&connect.encode()).await;
        let (first, body) = self.read().await?;
        assert_eq!(first, 0x20, "expected CONNACK, got {first:#x} {body:?}");
        body.get(1).copied()
    }

    /// SUBSCRIBE to one filter at QoS 1; returns the SUBACK code.
    pub async fn subscribe(&mut self, packet_id: u16, filter: &str) -> u8 {
        self.send(&raw::subscribe(self.level, packet_id, filter, 1))
            .await;
        let (first, body) = self.read().await.expect("SUBACK");
        assert_eq!(first, 0x90, "expected SUBACK, got {first:#x}");
        // packet id (2), v5 properties length (1, empty), then the codes.
        let at = if self.level == 5 { 3 } else { 2 };
        body[at]
    }

    /// PUBLISH at QoS 1; returns the PUBACK reason (0 when a v5 PUBACK omits it, and always for 3.1.1).
    pub async fn publish_qos1(&mut self, packet_id: u16, topic: &str, payload: &[u8]) -> u8 {
        let mut body = Vec::new();
        put_bytes(&mut body, topic.as_bytes());
        body.extend_from_slice(&packet_id.to_be_bytes());
        if self.level == 5 {
            body.push(0);
        }
        body.extend_from_slice(payload);
        self.send(&raw::packet(0x32, &body)).await;
        let (first, body) = self.read().await.expect("PUBACK");
        assert_eq!(first, 0x40, "expected PUBACK, got {first:#x}");
        body.get(2).copied().unwrap_or(0)
    }

    /// Waits for the server to close the connection; true when it did within [`PACKET_DEADLINE`].
    pub async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 256];
        let end = tokio::time::Instant::now() + PACKET_DEADLINE;
        loop {
            match tokio::time::timeout_at(end, self.stream.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    let len = u16::try_from(b.len()).expect("short string");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(b);
}

/// A PROXY v2 header made by hand (not by our encoder) with an SSL TLV that claims TLS with `verify == 0` and a CN,
/// but sets neither CERT_CONN nor CERT_SESS: a certificate that was never presented, so no identity at all.
pub fn proxy_v2_verify_zero_without_cert(
    source: SocketAddr,
    dest: SocketAddr,
    cn: &str,
) -> Vec<u8> {
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (source, dest) else {
        panic!("IPv4 addresses only");
    };
    let mut ssl = vec![0x01]; // PP2_CLIENT_SSL only
    ssl.extend_from_slice(&0u32.to_be_bytes()); // verify = 0 ("verified")
    ssl.push(0x22); // PP2_SUBTYPE_SSL_CN
    put_bytes(&mut ssl, cn.as_bytes());
    let mut payload = Vec::new();
    payload.extend_from_slice(&s.ip().octets());
    payload.extend_from_slice(&d.ip().octets());
    payload.extend_from_slice(&s.port().to_be_bytes());
    payload.extend_from_slice(&d.port().to_be_bytes());
    payload.push(0x20); // PP2_TYPE_SSL
    put_bytes(&mut payload, &ssl);
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.push(0x21); // v2, PROXY
    header.push(0x11); // TCP over IPv4
    header.extend_from_slice(&u16::try_from(payload.len()).expect("short").to_be_bytes());
    header.extend_from_slice(&payload);
    header
}

/// `echo PASSWORD | bin passwd FILE USER`.
pub async fn passwd(bin: &str, file: &Path, user: &str, password: &str) -> CmdOutput {
    let script = "printf '%s\\n' \"$FG_PW\" | \"$FG_BIN\" passwd \"$FG_FILE\" \"$FG_USER\"";
    let out = tokio::process::Command::new("sh")
        .args(["-c", script])
        .env("FG_PW", password)
        .env("FG_BIN", bin)
        .env("FG_FILE", file)
        .env("FG_USER", user)
        .output();
    let out = tokio::time::timeout(clients::COMMAND_TIMEOUT, out)
        .await
        .expect("fleetgate passwd timed out")
        .expect("run fleetgate passwd");
    CmdOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        timed_out: false,
    }
}

/// Panics when any of `lines` contains one of `secrets` or an argon2 hash.
pub fn assert_no_secrets(lines: &[String], secrets: &[&str]) {
    for line in lines {
        for s in secrets {
            assert!(!line.contains(s), "a log line contains a password: {line}");
        }
        assert!(
            !line.contains("$argon2"),
            "a log line contains a password hash: {line}"
        );
        assert!(
            !line.contains("BEGIN CERTIFICATE"),
            "a log line contains a certificate: {line}"
        );
    }
}

/// A fresh directory for a node config and its side files; removed when dropped.
pub fn scratch_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir for the node files")
}
