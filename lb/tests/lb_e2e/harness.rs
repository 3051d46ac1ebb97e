//! Test harness: a dev PKI (rcgen), a fake backend that decodes the PROXY header and answers CONNACK, an LB
//! started in-process on 127.0.0.1:0, MQTT clients (rumqttc and raw bytes), and a `/metrics` reader.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fleetgate_lb::{Lb, LbConfig, LbHandle};
use fleetgate_protocol::peek::{ConnectSummary, peek_connect};
use fleetgate_protocol::proxy::{ProxiedConnection, ProxyPolicy, TrustedProxies, read_header};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, date_time_ymd,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Every test step is bounded by this.
pub const STEP: Duration = Duration::from_secs(10);

/// A CA, a server certificate for 127.0.0.1 and client certificates, written as PEM files.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub ca_file: PathBuf,
}

/// A client certificate and its key, PEM.
pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
}

type Ca = CertifiedIssuer<'static, KeyPair>;

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(ca: &Ca, cn: &str, sans: Vec<String>, client: bool, expired: bool) -> ClientCert {
    let mut params = CertificateParams::new(sans).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    if expired {
        params.not_before = date_time_ymd(2019, 1, 1);
        params.not_after = date_time_ymd(2020, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    ClientCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// The test PKI: one trusted CA and one unrelated CA.
pub struct TestPki {
    pub files: Pki,
    ca: Ca,
    other_ca: Ca,
}

impl TestPki {
    pub fn new() -> TestPki {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca("Fleetgate Test CA");
        let other_ca = ca_other();
        let server = leaf(
            &ca,
            "lb.test",
            vec!["127.0.0.1".into(), "localhost".into()],
            false,
            false,
        );
        let server_cert = dir.path().join("server.pem");
        let server_key = dir.path().join("server.key");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&server_cert, &server.cert_pem).unwrap();
        std::fs::write(&server_key, &server.key_pem).unwrap();
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let files = Pki {
            ca_pem: ca.pem(),
            dir,
            server_cert,
            server_key,
            ca_file,
        };
        TestPki {
            files,
            ca,
            other_ca,
        }
    }

    pub fn client(&self, cn: &str) -> ClientCert {
        leaf(
            &self.ca,
            cn,
            vec![format!("{cn}.devices.test")],
            true,
            false,
        )
    }

    pub fn expired_client(&self, cn: &str) -> ClientCert {
        leaf(&self.ca, cn, vec![], true, true)
    }

    /// A client certificate with serial `serial`, and a CRL of the test CA that revokes it, written to a file.
    pub fn revoked_client(&self, cn: &str, serial: u64) -> (ClientCert, PathBuf) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let crl = rcgen::CertificateRevocationListParams {
            this_update: date_time_ymd(2024, 1, 1),
            next_update: date_time_ymd(4000, 1, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from(serial),
                revocation_time: date_time_ymd(2024, 1, 1),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            }],
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&self.ca)
        .unwrap();
        let crl_file = self.files.dir.path().join("ca.crl");
        std::fs::write(&crl_file, crl.pem().unwrap()).unwrap();
        (
            ClientCert {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            },
            crl_file,
        )
    }

    pub fn foreign_client(&self, cn: &str) -> ClientCert {
        leaf(&self.other_ca, cn, vec![], true, false)
    }

    /// Writes an extra server certificate for SNI tests; returns (cert, key) paths.
    pub fn server_cert_for(&self, name: &str) -> (PathBuf, PathBuf) {
        let c = leaf(&self.ca, name, vec![name.into()], false, false);
        let cert = self.files.dir.path().join(format!("{name}.pem"));
        let key = self.files.dir.path().join(format!("{name}.key"));
        std::fs::write(&cert, c.cert_pem).unwrap();
        std::fs::write(&key, c.key_pem).unwrap();
        (cert, key)
    }

    /// A rustls client config trusting the test CA, with an optional client certificate.
    pub fn client_config(&self, cert: Option<&ClientCert>) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.files.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let config = match cert {
            Some(c) => {
                let chain = vec![CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).unwrap()];
                let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        Arc::new(config)
    }
}

fn ca_other() -> Ca {
    ca("Some Other CA")
}

/// What the fake backend saw on one connection.
#[derive(Debug)]
pub struct Seen {
    pub backend: String,
    pub header: ProxiedConnection,
    pub connect: ConnectSummary,
}

/// A fake broker node: decodes the PROXY header, reads the CONNECT, answers CONNACK 0 and PINGRESPs.
pub struct FakeBackend {
    pub addr: SocketAddr,
    pub seen: mpsc::UnboundedReceiver<Seen>,
}

impl FakeBackend {
    pub async fn start(name: &str) -> FakeBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, seen) = mpsc::unbounded_channel();
        let backend = name.to_string();
        tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                tokio::spawn(serve_backend_conn(
                    stream,
                    peer,
                    backend.clone(),
                    tx.clone(),
                ));
            }
        });
        FakeBackend { addr, seen }
    }

    /// The next connection this backend saw.
    pub async fn next(&mut self) -> Seen {
        tokio::time::timeout(STEP, self.seen.recv())
            .await
            .expect("backend saw nothing in time")
            .unwrap()
    }

    /// True if no connection arrives within a short while.
    pub fn nothing_yet(&mut self) -> bool {
        self.seen.try_recv().is_err()
    }
}

async fn serve_backend_conn(
    mut stream: TcpStream,
    peer: SocketAddr,
    name: String,
    tx: mpsc::UnboundedSender<Seen>,
) {
    let policy = ProxyPolicy::new(TrustedProxies::new(vec!["127.0.0.0/8".parse().unwrap()]));
    let Ok(header) = read_header(&mut stream, peer, &policy).await else {
        return;
    };
    let mut buf = Vec::new();
    let connect = loop {
        if let Ok(Some(c)) = peek_connect(&buf, 1 << 20) {
            break c;
        }
        let mut chunk = [0u8; 1024];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let connack: &[u8] = if connect.protocol_level == 5 {
        &[0x20, 0x03, 0, 0, 0]
    } else {
        &[0x20, 0x02, 0, 0]
    };
    if stream.write_all(connack).await.is_err() {
        return;
    }
    let _ = tx.send(Seen {
        backend: name,
        header,
        connect,
    });
    let mut chunk = [0u8; 1024];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                // PINGREQ → PINGRESP; everything else is swallowed.
                if chunk[..n].windows(2).any(|w| w == [0xC0, 0x00])
                    && stream.write_all(&[0xD0, 0x00]).await.is_err()
                {
                    return;
                }
            }
        }
    }
}

/// A `[[backends]]` entry.
pub fn backend_toml(name: &str, addr: SocketAddr, extra: &str) -> String {
    format!("[[backends]]\nname = \"{name}\"\naddress = \"{addr}\"\n{extra}\n")
}

/// A plain `[[listeners]]` entry.
pub fn plain_listener(name: &str, extra: &str) -> String {
    format!("[[listeners]]\nname = \"{name}\"\nbind = \"127.0.0.1:0\"\n{extra}\n")
}

/// A TLS `[[listeners]]` entry using the test PKI.
pub fn tls_listener(name: &str, pki: &TestPki, client_auth: &str, extra_tls: &str) -> String {
    let f = &pki.files;
    format!(
        "[[listeners]]\nname = \"{name}\"\nbind = \"127.0.0.1:0\"\n[listeners.tls]\ncertificates = [{{ cert = {:?}, key = {:?} }}]\nclient_auth = \"{client_auth}\"\nclient_ca = {:?}\n{extra_tls}\n",
        f.server_cert.display().to_string(),
        f.server_key.display().to_string(),
        f.ca_file.display().to_string(),
    )
}

/// Parses a full config made of the given parts plus an admin server.
pub fn config(parts: &[String], limits: &str) -> LbConfig {
    let src = format!(
        "[lb]\nname = \"test-lb\"\n[admin]\nbind = \"127.0.0.1:0\"\n{}\n[limits]\n{limits}\n",
        parts.concat()
    );
    LbConfig::parse(Path::new("/nonexistent/lb.toml"), &src)
        .unwrap_or_else(|e| panic!("{e}\n---\n{src}"))
}

/// A running LB that shuts down on drop.
pub struct TestLb {
    pub handle: LbHandle,
    shutdown: CancellationToken,
}

impl TestLb {
    pub async fn start(config: LbConfig) -> TestLb {
        let shutdown = CancellationToken::new();
        let handle = Lb::start(config, shutdown.clone()).await.unwrap();
        TestLb { handle, shutdown }
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.handle.listener_addr(listener).unwrap()
    }

    /// `GET path` on the admin port; (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        admin_request(self.handle.admin_addr().unwrap(), "GET", path).await
    }

    /// The value of a metric line that starts with `name{` and contains every label in `labels`.
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let (_, body) = self.admin_get("/metrics").await;
        body.lines()
            .filter(|l| l.starts_with(name) && labels.iter().all(|lab| l.contains(lab)))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum()
    }

    /// Polls a metric until it reaches `at_least` (metrics are recorded after the client sees the close).
    pub async fn eventually_metric(&self, name: &str, labels: &[&str], at_least: f64) -> f64 {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let v = self.metric(name, labels).await;
            if v >= at_least || tokio::time::Instant::now() > deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for TestLb {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Connects with rumqttc (MQTT 3.1.1) and returns the outcome of the first CONNACK.
pub async fn rumqttc_connect(
    addr: SocketAddr,
    client_id: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<(), String> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, TlsConfiguration, Transport};
    let mut opts = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    if let Some(config) = tls {
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 10);
    let result = tokio::time::timeout(STEP, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    return if ack.code == rumqttc::ConnectReturnCode::Success {
                        Ok(())
                    } else {
                        Err(format!("refused: {:?}", ack.code))
                    };
                }
                Ok(_) => continue,
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err("timed out".into()));
    let _ = client.try_disconnect();
    drop(eventloop);
    result
}

/// The one admin HTTP client of these tests: `method path` on `addr`; (status, body). `GET` goes through the
/// workspace's canonical client (`fleetgate_testkit::http`, chunked bodies decoded); it has no other methods yet, so
/// a `POST` is written here with the same framing (`Connection: close`, read to EOF).
pub async fn admin_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    if method == "GET" {
        let r = fleetgate_testkit::http::get(addr, path).await;
        return (r.status, r.body);
    }
    let request = async {
        let mut s = TcpStream::connect(addr).await?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let out = tokio::time::timeout(STEP, request)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: timed out"))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((out.as_str(), ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

/// A raw MQTT CONNECT (3.1.1 when `level` is 4, 5.0 when 5, clean session) with the given client ID.
pub fn raw_connect(level: u8, client_id: &str, keep_alive: u16) -> Vec<u8> {
    fleetgate_testkit::raw::Connect {
        keep_alive,
        ..fleetgate_testkit::raw::Connect::new(level, client_id)
    }
    .encode()
}

/// Reads until EOF (bounded); what the LB sent before closing.
pub async fn read_until_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(STEP, stream.read_to_end(&mut out))
        .await
        .expect("LB did not close in time");
    out
}
