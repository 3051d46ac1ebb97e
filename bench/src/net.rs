//! How every load client reaches the server: TCP connect → optional PROXY v2 header → optional TLS handshake →
//! CONNECT/CONNACK. The resulting [`Stream`] is plain or TLS behind one type.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::BytesMut;
use fleetgate_protocol::proxy::{HeaderSpec, PeerIdentity, encode_v2};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

use crate::mqtt::{self, Packet, Version};

/// Bound on one connection's set-up (TCP + PROXY + TLS + CONNACK): a server that stalls longer is counted as failed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// TLS options shared by every subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct TlsArgs {
    /// Connect with TLS.
    #[arg(long)]
    pub tls: bool,
    /// CA certificate (PEM) that signed the server certificate.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Server name to send (SNI) and verify.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
}

/// How every subcommand talks to its target: PROXY header, TLS, MQTT version (flattened into each one's options).
#[derive(Debug, Clone, clap::Args)]
pub struct LinkArgs {
    /// Send a PROXY v2 header first.
    #[arg(long)]
    pub proxy_v2: bool,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// MQTT version.
    #[arg(long, value_enum, default_value = "5")]
    pub mqtt: Version,
    /// Persistent sessions: CONNECT without clean start, sessions kept an hour after their connection (what a
    /// node with `[storage] mode = "disk"` writes to its store).
    #[arg(long)]
    pub persistent: bool,
}

/// Session Expiry Interval of `--persistent` sessions: an hour.
const PERSISTENT_EXPIRY_S: u32 = 3600;

/// Where and how to connect.
#[derive(Clone)]
pub struct Target {
    /// Server address.
    pub addr: SocketAddr,
    /// Send a PROXY v2 header first (for a node listener with `proxy_protocol = "required"`).
    pub proxy_v2: bool,
    /// TLS connector and server name, when TLS is on.
    pub tls: Option<(TlsConnector, ServerName<'static>)>,
    /// MQTT version of CONNECT.
    pub version: Version,
    /// Session Expiry Interval of CONNECT (no clean start), `None` for clean sessions.
    pub persistent: Option<u32>,
}

impl Target {
    /// Builds a target at `addr` reached as `link` says; the TLS client config has session resumption disabled so
    /// every connection pays a full handshake.
    pub fn new(addr: SocketAddr, link: &LinkArgs) -> anyhow::Result<Self> {
        let tls = if link.tls.tls {
            Some(tls_connector(&link.tls)?)
        } else {
            None
        };
        Ok(Self {
            addr,
            proxy_v2: link.proxy_v2,
            tls,
            version: link.mqtt,
            persistent: link.persistent.then_some(PERSISTENT_EXPIRY_S),
        })
    }
}

fn tls_connector(args: &TlsArgs) -> anyhow::Result<(TlsConnector, ServerName<'static>)> {
    let ca = args.ca.as_ref().context("--tls needs --ca")?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))?
    {
        roots.add(cert.with_context(|| format!("parsing {}", ca.display()))?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("reading {}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("reading {}", key.display()))?;
            builder.with_client_auth_cert(chain, key)?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => bail!("--cert and --key go together"),
    };
    config.resumption = rustls::client::Resumption::disabled();
    let name = ServerName::try_from(args.server_name.clone()).context("bad --server-name")?;
    Ok((TlsConnector::from(Arc::new(config)), name))
}

/// A plain (`Left`) or TLS (`Right`) connection.
pub type Stream = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// An MQTT session after CONNACK: the stream plus any bytes read past the CONNACK.
pub struct Session {
    /// The connection.
    pub stream: Stream,
    /// Bytes already read that follow the CONNACK.
    pub read_buf: BytesMut,
}

/// Connects, sends CONNECT and waits for a successful CONNACK, all under [`HANDSHAKE_TIMEOUT`].
pub async fn connect(target: &Target, client_id: &str, keep_alive: u16) -> anyhow::Result<Session> {
    tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        connect_inner(target, client_id, keep_alive),
    )
    .await
    .context("handshake timed out")?
}

async fn connect_inner(
    target: &Target,
    client_id: &str,
    keep_alive: u16,
) -> anyhow::Result<Session> {
    let tcp = TcpStream::connect(target.addr)
        .await
        .context("tcp connect")?;
    tcp.set_nodelay(true)?;
    let mut tcp = tcp;
    if target.proxy_v2 {
        // The broker's own encoder: a plain PROXY/TCP header, no TLVs (the generator is the "balancer" here).
        let header = encode_v2(&HeaderSpec {
            source: tcp.local_addr()?,
            destination: target.addr,
            identity: PeerIdentity::default(),
            crc32c: false,
        });
        tcp.write_all(&header)
            .await
            .context("writing PROXY header")?;
    }
    let mut stream = match &target.tls {
        Some((connector, name)) => Either::Right(Box::new(
            connector
                .connect(name.clone(), tcp)
                .await
                .context("tls handshake")?,
        )),
        None => Either::Left(tcp),
    };
    let mut out = BytesMut::with_capacity(64);
    mqtt::encode_connect_session(
        &mut out,
        target.version,
        client_id,
        keep_alive,
        target.persistent,
    );
    stream.write_all(&out).await.context("writing CONNECT")?;
    let mut read_buf = BytesMut::with_capacity(4096);
    let (code, used) = loop {
        if let Some((packet, used)) = mqtt::decode(&read_buf, target.version)? {
            match packet {
                Packet::ConnAck { code, .. } => break (code, used),
                other => bail!("expected CONNACK, got {other:?}"),
            }
        }
        if stream
            .read_buf(&mut read_buf)
            .await
            .context("reading CONNACK")?
            == 0
        {
            bail!("closed before CONNACK");
        }
    };
    if code != 0 {
        bail!("CONNACK refused with code {code:#04x}");
    }
    let _ = read_buf.split_to(used);
    Ok(Session { stream, read_buf })
}

/// Subscribes to one filter and waits for its SUBACK; returns the granted code.
pub async fn subscribe(
    session: &mut Session,
    version: Version,
    filter: &str,
    qos: u8,
) -> anyhow::Result<u8> {
    let mut out = BytesMut::with_capacity(64);
    mqtt::encode_subscribe(&mut out, version, 1, filter, qos);
    session
        .stream
        .write_all(&out)
        .await
        .context("writing SUBSCRIBE")?;
    loop {
        if let Some((packet, used)) = mqtt::decode(&session.read_buf, version)? {
            let code = match packet {
                Packet::SubAck { code, .. } => Some(code),
                _ => None,
            };
            let _ = session.read_buf.split_to(used);
            match code {
                Some(code) if code >= 0x80 => bail!("SUBACK refused with code {code:#04x}"),
                Some(code) => return Ok(code),
                None => continue,
            }
        }
        if session
            .stream
            .read_buf(&mut session.read_buf)
            .await
            .context("reading SUBACK")?
            == 0
        {
            bail!("closed before SUBACK");
        }
    }
}

/// Sends DISCONNECT and closes the write side, ignoring errors (the server may already be gone).
pub async fn disconnect(stream: &mut (impl AsyncWrite + Unpin)) {
    let mut out = BytesMut::with_capacity(2);
    mqtt::encode_disconnect(&mut out);
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}

/// Opens one session per client ID, at most `concurrency` handshakes at a time; results keep the IDs' order.
pub async fn connect_all(
    target: &Arc<Target>,
    client_ids: Vec<String>,
    keep_alive: u16,
    concurrency: usize,
) -> Vec<anyhow::Result<Session>> {
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let count = client_ids.len();
    for (index, id) in client_ids.into_iter().enumerate() {
        let (target, permits) = (Arc::clone(target), Arc::clone(&permits));
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            (index, connect(&target, &id, keep_alive).await)
        });
    }
    let mut results: Vec<Option<anyhow::Result<Session>>> = (0..count).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((index, result)) => results[index] = Some(result),
            Err(e) => warn(&format!("connect task failed: {e}")),
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(anyhow::anyhow!("connect task panicked"))))
        .collect()
}

/// The generator's stdout is its JSON result, so diagnostics go to stderr.
pub fn warn(message: &str) {
    eprintln!("fleetgate-bench: {message}");
}

/// Bound on waiting for the server to close after our DISCONNECT.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Ends a session the polite way: DISCONNECT, then wait for the server to close first, so the server side (not the
/// generator's ephemeral port) keeps the TIME_WAIT and thousands of connect/close cycles do not exhaust local ports.
pub async fn close(session: Session) {
    let Session { mut stream, .. } = session;
    let mut out = BytesMut::with_capacity(2);
    mqtt::encode_disconnect(&mut out);
    if stream.write_all(&out).await.is_err() {
        return;
    }
    let mut sink = [0u8; 256];
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Sends PINGREQ and waits (bounded by [`CLOSE_TIMEOUT`]) for PINGRESP: tells whether a held session is still alive.
pub async fn ping(session: &mut Session, version: Version) -> bool {
    let mut out = BytesMut::with_capacity(2);
    mqtt::encode_pingreq(&mut out);
    if session.stream.write_all(&out).await.is_err() {
        return false;
    }
    let wait = async {
        loop {
            while let Ok(Some((packet, used))) = mqtt::decode(&session.read_buf, version) {
                let is_pong = packet == Packet::PingResp;
                let _ = session.read_buf.split_to(used);
                if is_pong {
                    return true;
                }
            }
            match session.stream.read_buf(&mut session.read_buf).await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(CLOSE_TIMEOUT, wait)
        .await
        .unwrap_or(false)
}

/// Waits up to `wait` for the next PUBLISH on `session` and consumes it; `Ok(false)` when none came in time.
pub async fn await_publish(
    session: &mut Session,
    version: Version,
    wait: Duration,
) -> anyhow::Result<bool> {
    let found = tokio::time::timeout(wait, async {
        loop {
            while let Some((packet, used)) = mqtt::decode(&session.read_buf, version)? {
                let is_publish = matches!(packet, Packet::Publish { .. });
                let _ = session.read_buf.split_to(used);
                if is_publish {
                    return Ok::<_, anyhow::Error>(());
                }
            }
            if session.stream.read_buf(&mut session.read_buf).await? == 0 {
                bail!("closed while waiting for a PUBLISH");
            }
        }
    })
    .await;
    match found {
        Ok(Ok(())) => Ok(true),
        Ok(Err(e)) => Err(e),
        Err(_) => Ok(false),
    }
}
