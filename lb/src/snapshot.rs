//! The runtime snapshot: everything a connection reads from the config, built once off the hot path (TLS
//! certificates and keys loaded, ring built, PROXY policies made) and shared behind one `ArcSwap`, so a reload
//! is a single `store` and a connection that loaded the snapshot sees one consistent version from start to end.

use std::sync::Arc;

use fleetgate_config::lb::{ClientAuth, LbConfig};
use fleetgate_protocol::proxy::{DEFAULT_MAX_HEADER_LEN, ProxyPolicy, TrustedProxies};
use tokio_rustls::TlsAcceptor;

use crate::backend::Backends;
use crate::tls::{self, TlsError};

/// A listener's per-connection settings.
pub struct ListenerRuntime {
    /// Listener name (logs, metric labels).
    pub name: String,
    /// TLS termination, if any.
    pub tls: Option<TlsAcceptor>,
    /// True when client certificates are verified (`optional` or `required`).
    pub verifies_clients: bool,
    /// Incoming PROXY header policy (peers in `accept_proxy_from`), if any.
    pub proxy_policy: Option<ProxyPolicy>,
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
pub struct Snapshot {
    /// The validated config it was built from.
    pub config: LbConfig,
    /// Listeners, in config order.
    pub listeners: Vec<ListenerRuntime>,
    /// Backends and the ring.
    pub backends: Backends,
}

impl Snapshot {
    /// Builds a snapshot; `previous` carries backend state (load, suspect marks) across a reload by name.
    pub fn build(config: LbConfig, previous: Option<&Snapshot>) -> Result<Arc<Snapshot>, TlsError> {
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
            listeners.push(ListenerRuntime {
                name: l.name.clone(),
                tls,
                verifies_clients: l
                    .tls
                    .as_ref()
                    .is_some_and(|t| t.client_auth != ClientAuth::None),
                proxy_policy,
            });
        }
        let backends = Backends::new(
            &config.backends,
            previous.map(|p| &p.backends),
            config.limits.bounded_load_factor,
        );
        Ok(Arc::new(Snapshot {
            config,
            listeners,
            backends,
        }))
    }
}
