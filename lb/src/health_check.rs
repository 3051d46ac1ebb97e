//! Active health checks, beside selection: one task per backend probes it every `interval` (`tcp` connect;
//! `mqtt` PROXY LOCAL + CONNECT → CONNACK accepted → DISCONNECT; `http` GET of the node's readiness URL) and
//! feeds the result to the backend's [`Health`] ([`crate::health`]), which flips only after `rise` / `fall`
//! consecutive results. Transitions are logged (`event="backend_health"`); every check is counted.
//!
//! [`Checkers`] reconciles the tasks with each new snapshot (called by [`crate::control`]): a backend whose
//! address or check is unchanged keeps its task, and its [`Health`] is carried by name anyway
//! ([`crate::backend::Backends::new`]). This module sits above the backend set and reads it; the backend set
//! never calls back into it.

use std::collections::HashMap;
use std::sync::Arc;

use fleetgate_config::lb::{HealthConfig, HealthKind, ProxyVersion};
use fleetgate_protocol::mqtt::encode_varint;
use fleetgate_protocol::proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::backend::Backends;
use crate::health::Health;
use crate::metrics::HEALTH_CHECKS;
use crate::upstream;

/// Keep-alive announced in the probe's CONNECT: the probe disconnects right after the CONNACK, so this only
/// matters if the DISCONNECT is lost; then the broker drops the session after 1.5 × this.
const PROBE_KEEP_ALIVE_SECS: u16 = 10;
/// Largest HTTP response head read by the `http` check: the status line is all it needs.
const HTTP_HEAD_LIMIT: usize = 1024;

/// What a check task probes; a change restarts the task.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ProbeSpec {
    address: String,
    proxy: ProxyVersion,
    check: HealthConfig,
}

/// Why a probe failed (the log's `reason`).
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    /// Connect, read or write failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// No answer within the timeout.
    #[error("timed out")]
    Timeout,
    /// The broker answered CONNACK with this refusal code.
    #[error("CONNACK refused with code {0:#04x}")]
    Refused(u8),
    /// The answer was not a CONNACK / an HTTP status line.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
    /// The HTTP status was not 200.
    #[error("HTTP status {0}")]
    Status(u16),
}

/// One probe of `address` with `check`, bounded by its timeout.
async fn probe(address: &str, proxy: ProxyVersion, check: &HealthConfig) -> Result<(), ProbeError> {
    let attempt = async {
        match check.kind {
            HealthKind::None => Ok(()),
            HealthKind::Tcp => {
                upstream::dial(address, check.timeout).await?;
                Ok(())
            }
            HealthKind::Mqtt => {
                let mut stream = upstream::dial(address, check.timeout).await?;
                mqtt(&mut stream, proxy, check).await
            }
            HealthKind::Http => http(address, check).await,
        }
    };
    tokio::time::timeout(check.timeout, attempt)
        .await
        .unwrap_or(Err(ProbeError::Timeout))
}

async fn mqtt(
    stream: &mut TcpStream,
    proxy: ProxyVersion,
    check: &HealthConfig,
) -> Result<(), ProbeError> {
    let mut out = match proxy {
        ProxyVersion::Off => Vec::new(),
        ProxyVersion::V1 => b"PROXY UNKNOWN\r\n".to_vec(),
        ProxyVersion::V2 => proxy::encode_v2_local(),
    };
    out.extend(connect_packet(
        &check.client_id,
        check
            .credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.expose())),
    )?);
    stream.write_all(&out).await?;
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).await?;
    if connack[0] != 0x20 || connack[1] != 0x02 {
        return Err(ProbeError::Unexpected(format!("{connack:02x?}")));
    }
    if connack[3] != 0 {
        return Err(ProbeError::Refused(connack[3]));
    }
    // A normal DISCONNECT: the broker ends the probe's session cleanly, no will, nothing kept.
    stream.write_all(&crate::frames::DISCONNECT_NORMAL).await?;
    let _ = stream.shutdown().await;
    Ok(())
}

/// An MQTT 3.1.1 CONNECT, clean session, for the probe.
fn connect_packet(
    client_id: &str,
    credentials: Option<(&str, &str)>,
) -> Result<Vec<u8>, ProbeError> {
    fn put(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&(b.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
        out.extend_from_slice(&b[..b.len().min(usize::from(u16::MAX))]);
    }
    let mut body = Vec::new();
    put(&mut body, b"MQTT");
    body.push(4);
    body.push(if credentials.is_some() { 0xC2 } else { 0x02 });
    body.extend_from_slice(&PROBE_KEEP_ALIVE_SECS.to_be_bytes());
    put(&mut body, client_id.as_bytes());
    if let Some((user, pass)) = credentials {
        put(&mut body, user.as_bytes());
        put(&mut body, pass.as_bytes());
    }
    let mut out = vec![0x10];
    // Three strings of at most 65,535 bytes each: always within the varint range.
    encode_varint(body.len(), &mut out)
        .map_err(|e| ProbeError::Unexpected(format!("probe CONNECT: {e}")))?;
    out.extend(body);
    Ok(out)
}

async fn http(address: &str, check: &HealthConfig) -> Result<(), ProbeError> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| ProbeError::Unexpected(format!("address {address:?} has no port")))?;
    let port = check
        .http_port
        .map_or_else(|| port.to_owned(), |p| p.to_string());
    let target = format!("{host}:{port}");
    let mut stream = upstream::dial(&target, check.timeout).await?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: fleetgate-lb\r\nConnection: close\r\n\r\n",
        check.http_path
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut chunk = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < HTTP_HEAD_LIMIT {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| line.starts_with("HTTP/1."))
        .ok_or_else(|| ProbeError::Unexpected(line.lines().next().unwrap_or("").to_owned()))?;
    if status == 200 {
        Ok(())
    } else {
        Err(ProbeError::Status(status))
    }
}

/// Runs the checks of one backend until `stop`.
async fn run(name: String, spec: ProbeSpec, health: Arc<Health>, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(spec.check.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let result = tokio::select! {
            () = stop.cancelled() => return,
            r = probe(&spec.address, spec.proxy, &spec.check) => r,
        };
        let ok = result.is_ok();
        metrics::counter!(HEALTH_CHECKS, "backend" => name.clone(), "result" => if ok { "ok" } else { "fail" })
            .increment(1);
        if let Err(e) = &result {
            tracing::debug!(event = "health_check_failed", backend = %name, error = %e);
        }
        if let Some(up) = health.record(ok, spec.check.rise, spec.check.fall) {
            let reason = result.err().map(|e| e.to_string()).unwrap_or_default();
            tracing::info!(
                event = "backend_health",
                backend = %name,
                address = %spec.address,
                kind = spec.check.kind.as_str(),
                healthy = up,
                reason = %reason,
                "backend {name} is {}", if up { "up" } else { "down" }
            );
        }
    }
}

/// The running check tasks, one per checked backend.
#[derive(Debug, Default)]
pub(crate) struct Checkers {
    tasks: HashMap<String, (ProbeSpec, CancellationToken)>,
}

impl Checkers {
    /// Starts, restarts or stops tasks so that every backend of `backends` with a check has exactly one task
    /// probing its current address; tasks are children of `parent`.
    pub(crate) fn reconcile(&mut self, backends: &Backends, parent: &CancellationToken) {
        let mut keep = HashMap::new();
        for b in backends.all() {
            if b.config.health.kind == HealthKind::None {
                continue;
            }
            let mut check = b.config.health.clone();
            // One probe client ID per LB replica *and* backend: in a cluster, a probe of broker-1 with the same ID
            // as the probe of broker-0 would ask broker-0 for that session and take the other probe over.
            check.client_id = format!("{}-{}", check.client_id, b.name());
            let spec = ProbeSpec {
                address: b.config.address.clone(),
                proxy: b.config.proxy_protocol,
                check,
            };
            let name = b.name().to_owned();
            match self.tasks.remove(&name) {
                Some((old, token)) if old == spec => {
                    keep.insert(name, (old, token));
                }
                previous => {
                    if let Some((_, token)) = previous {
                        token.cancel();
                    }
                    let token = parent.child_token();
                    tokio::spawn(run(
                        name.clone(),
                        spec.clone(),
                        b.health.clone(),
                        token.clone(),
                    ));
                    keep.insert(name, (spec, token));
                }
            }
        }
        for (_, (_, token)) in self.tasks.drain() {
            token.cancel();
        }
        self.tasks = keep;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn probe_connect_packet_is_valid() {
        let p = connect_packet("fleetgate-probe-lb-0", Some(("u", "p"))).unwrap();
        let summary = fleetgate_protocol::peek::peek_connect(&p, 1024)
            .unwrap()
            .unwrap();
        assert_eq!(summary.client_id, "fleetgate-probe-lb-0");
        assert_eq!(summary.username.as_deref(), Some("u"));
        assert_eq!(summary.packet_len, p.len());
    }

    #[tokio::test]
    async fn mqtt_and_http_probes_against_fakes() {
        use tokio::net::TcpListener;
        let mqtt = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = mqtt.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            for code in [0u8, 5u8] {
                let (mut s, _) = mqtt.accept().await.unwrap();
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(&[0x20, 0x02, 0, code]).await;
                let _ = s.read(&mut buf).await;
            }
        });
        let mut check = HealthConfig::none("t");
        check.kind = HealthKind::Mqtt;
        check.timeout = Duration::from_secs(5);
        probe(&addr, ProxyVersion::V2, &check).await.unwrap();
        let refused = probe(&addr, ProxyVersion::V2, &check).await.unwrap_err();
        assert!(matches!(refused, ProbeError::Refused(5)), "{refused}");

        let web = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = web.local_addr().unwrap().port();
        tokio::spawn(async move {
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut s, _) = web.accept().await.unwrap();
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        check.kind = HealthKind::Http;
        check.http_port = Some(port);
        probe(&addr, ProxyVersion::V2, &check).await.unwrap();
        assert!(matches!(
            probe(&addr, ProxyVersion::V2, &check).await,
            Err(ProbeError::Status(503))
        ));
    }
}
