//! The runtime snapshot: everything a connection reads from the config, built once off the hot path (TLS
//! certificates and keys loaded, backend set and ring built from the static list and the discovered endpoints,
//! PROXY policies and admission limiters made) and shared behind one `ArcSwap`, so a reload is a single `store`
//! and a connection that loaded the snapshot sees one consistent version from start to end.

use std::sync::Arc;
use std::time::Duration;

use fleetgate_config::lb::{BackendConfig, ClientAuth, DEFAULT_HANDSHAKE_TIMEOUT, LbConfig};
use fleetgate_discovery::Endpoint;
use fleetgate_protocol::proxy::{DEFAULT_MAX_HEADER_LEN, ProxyPolicy, TrustedProxies};
use tokio_rustls::TlsAcceptor;

use crate::admission::{HandshakeBudget, PerIpLimiter};
use crate::backend::Backends;
use crate::tls::{self, TlsError};

/// `source` of backends listed in `[[backends]]`.
pub(crate) const STATIC_SOURCE: &str = "static";

/// A listener's per-connection settings.
pub(crate) struct ListenerRuntime {
    /// Listener name (logs, metric labels).
    pub(crate) name: String,
    /// TLS termination, if any.
    pub(crate) tls: Option<TlsAcceptor>,
    /// TLS handshake deadline.
    pub(crate) handshake_timeout: Duration,
    /// True when client certificates are verified (`optional` or `required`).
    pub(crate) verifies_clients: bool,
    /// Incoming PROXY header policy (peers in `accept_proxy_from`), if any.
    pub(crate) proxy_policy: Option<ProxyPolicy>,
    /// Open connections allowed on this listener.
    pub(crate) max_connections: Option<usize>,
}

impl std::fmt::Debug for ListenerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerRuntime")
            .field("name", &self.name)
            .field("tls", &self.tls.is_some())
            .field("verifies_clients", &self.verifies_clients)
            .finish_non_exhaustive()
    }
}

/// One consistent view of the config for the connections that start while it is current.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// 1 for the first snapshot, +1 for each one swapped in after it.
    pub(crate) generation: u64,
    /// The validated config it was built from.
    pub(crate) config: LbConfig,
    /// Listeners, in config order.
    pub(crate) listeners: Vec<Arc<ListenerRuntime>>,
    /// Backends and the ring.
    pub(crate) backends: Backends,
    /// Per-source-IP rate limit (carried across snapshots while its settings are unchanged).
    pub(crate) per_ip: Option<Arc<PerIpLimiter>>,
    /// TLS handshake budget (carried likewise).
    pub(crate) handshakes: Option<Arc<HandshakeBudget>>,
}

impl Snapshot {
    /// Builds a snapshot from `config` and the discovered `endpoints` (labelled `source`), loading every
    /// certificate again; `previous` carries backend live state by name and the limiters when unchanged.
    pub(crate) fn build(
        config: LbConfig,
        endpoints: &[Endpoint],
        source: &str,
        previous: Option<&Snapshot>,
    ) -> Result<Arc<Snapshot>, TlsError> {
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            let tls = match &l.tls {
                Some(t) => Some(TlsAcceptor::from(tls::server_config(t)?)),
                None => None,
            };
            let proxy_policy = (!l.accept_proxy_from.is_empty()).then(|| ProxyPolicy {
                trusted: TrustedProxies::new(l.accept_proxy_from.clone()),
                timeout: l.proxy_header_timeout,
                max_header_len: DEFAULT_MAX_HEADER_LEN,
            });
            listeners.push(Arc::new(ListenerRuntime {
                name: l.name.clone(),
                tls,
                handshake_timeout: l
                    .tls
                    .as_ref()
                    .map_or(DEFAULT_HANDSHAKE_TIMEOUT, |t| t.handshake_timeout),
                verifies_clients: l
                    .tls
                    .as_ref()
                    .is_some_and(|t| t.client_auth != ClientAuth::None),
                proxy_policy,
                max_connections: l.max_connections,
            }));
        }
        let limits = &config.limits;
        let same_limits = previous.map(|p| &p.config.limits);
        let per_ip = match (previous, limits.per_ip_rate) {
            (Some(p), Some(_))
                if same_limits.map(|l| l.per_ip_rate) == Some(limits.per_ip_rate) =>
            {
                p.per_ip.clone()
            }
            (_, rate) => rate.map(|(rate, burst)| Arc::new(PerIpLimiter::new(rate, burst))),
        };
        let handshakes = match (previous, limits.tls_handshakes_per_second) {
            (Some(p), Some(_))
                if same_limits.map(|l| l.tls_handshakes_per_second)
                    == Some(limits.tls_handshakes_per_second) =>
            {
                p.handshakes.clone()
            }
            (_, rate) => rate.map(|r| Arc::new(HandshakeBudget::new(r))),
        };
        let backends = Backends::new(
            backend_configs(&config, endpoints, source),
            previous.map(|p| &p.backends),
            config.limits.bounded_load_factor,
        );
        Ok(Arc::new(Snapshot {
            generation: previous.map_or(1, |p| p.generation + 1),
            config,
            listeners,
            backends,
            per_ip,
            handshakes,
        }))
    }

    /// The same snapshot with a new discovered set (no certificate is reloaded).
    pub(crate) fn with_endpoints(&self, endpoints: &[Endpoint], source: &str) -> Arc<Snapshot> {
        Arc::new(Snapshot {
            generation: self.generation + 1,
            config: self.config.clone(),
            listeners: self.listeners.clone(),
            backends: Backends::new(
                backend_configs(&self.config, endpoints, source),
                Some(&self.backends),
                self.config.limits.bounded_load_factor,
            ),
            per_ip: self.per_ip.clone(),
            handshakes: self.handshakes.clone(),
        })
    }

    /// The listener called `name`.
    pub(crate) fn listener(&self, name: &str) -> Option<&Arc<ListenerRuntime>> {
        self.listeners.iter().find(|l| l.name == name)
    }
}

/// The backend set: `[[backends]]` first, then each discovered endpoint with the `[discovery]` settings. A
/// discovered name that a static backend already uses is skipped (the static entry wins).
fn backend_configs(
    config: &LbConfig,
    endpoints: &[Endpoint],
    source: &str,
) -> Vec<(BackendConfig, String)> {
    let mut out: Vec<(BackendConfig, String)> = config
        .backends
        .iter()
        .map(|b| (b.clone(), STATIC_SOURCE.to_owned()))
        .collect();
    if let Some(d) = &config.discovery {
        for e in endpoints {
            if config.backends.iter().any(|b| b.name == e.name) {
                tracing::warn!(event = "discovery_name_clash", backend = %e.name, "a static backend has this name; the discovered one is ignored");
                continue;
            }
            let mut b = d.template.clone();
            b.name = e.name.clone();
            b.address = e.addr.to_string();
            out.push((b, source.to_owned()));
        }
    }
    out
}
