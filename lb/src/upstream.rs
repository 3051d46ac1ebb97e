//! The backend side of a connection, stages 6 and 7 of [`crate::conn`]: pick a backend for the client's key
//! ([`crate::backend::Backends::pick`]), connect under the connect timeout, and send the PROXY header (per the
//! backend's `proxy_protocol`) followed by the CONNECT in one write; a backend that fails before any byte of
//! the client was delivered is marked suspect and the next-ranked one is tried. Also the TCP dial the health
//! probes use ([`dial`]).

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetgate_config::lb::ProxyVersion;
use fleetgate_protocol::proxy::{self, HeaderSpec};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::backend::{BackendState, Backends};

/// Picks a backend for `key` and connects, failing over in ring order; sends the PROXY header (from `spec`,
/// whose `crc32c` is set per backend) and `first_bytes`. `None` when no backend could be reached.
pub(crate) async fn connect(
    backends: &Backends,
    key: &[u8],
    spec: &mut HeaderSpec,
    first_bytes: &[u8],
    timeout: Duration,
) -> Option<(Arc<BackendState>, TcpStream)> {
    // Names borrowed from the snapshot; allocated only when a first attempt fails.
    let mut tried: Vec<&str> = Vec::new();
    while tried.len() < backends.all().len() {
        let backend = backends.pick(key, &tried, Instant::now())?;
        tried.push(backend.name());
        let head = header(backend, spec, first_bytes);
        let attempt = async {
            let mut upstream = dial(&backend.config.address, timeout).await?;
            tokio::time::timeout(timeout, upstream.write_all(&head))
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "backend write timed out")
                })??;
            Ok::<_, io::Error>(upstream)
        };
        match attempt.await {
            Ok(upstream) => {
                backend.mark_ok();
                return Some((backend.clone(), upstream));
            }
            Err(e) => {
                backend.mark_failed(Instant::now());
                tracing::warn!(event = "backend_failed", backend = %backend.name(), error = %e);
            }
        }
    }
    None
}

/// The PROXY header for `backend` (per its `proxy_protocol`) followed by the client's first bytes.
fn header(backend: &BackendState, spec: &mut HeaderSpec, first_bytes: &[u8]) -> Vec<u8> {
    let mut out = match backend.config.proxy_protocol {
        ProxyVersion::Off => Vec::with_capacity(first_bytes.len()),
        ProxyVersion::V1 => proxy::encode_v1(spec.source, spec.destination),
        ProxyVersion::V2 => {
            // The certificate goes only to backends that asked for it: lent out of the identity for this
            // encoding and put back (the next backend tried may want it), never copied.
            let withheld = match backend.config.send_client_cert {
                true => None,
                false => spec.identity.client_cert_der.take(),
            };
            spec.crc32c = backend.config.crc32c;
            let out = proxy::encode_v2(spec);
            if withheld.is_some() {
                spec.identity.client_cert_der = withheld;
            }
            out
        }
    };
    out.extend_from_slice(first_bytes);
    out
}

/// Connects to `address` (`host:port`) within `timeout`, name resolution included; the first resolved address
/// is used.
pub(crate) async fn dial(address: &str, timeout: Duration) -> io::Result<TcpStream> {
    let attempt = async {
        let addr = tokio::net::lookup_host(address)
            .await?
            .next()
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "backend address resolved to nothing",
                )
            })?;
        TcpStream::connect(addr).await
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "backend connect timed out",
            ))
        })
}
