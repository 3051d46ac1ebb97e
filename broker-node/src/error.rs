//! Why a node could not start.

use std::net::SocketAddr;

use crate::cluster::tls::TlsError;

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The config file is invalid.
    #[error("{0}")]
    Config(#[from] fleetgate_config::ConfigError),
    /// `[cluster.tls]` files could not be loaded.
    #[error("{0}")]
    ClusterTls(#[from] TlsError),
    /// The admin server could not start (its token file, its sockets).
    #[error("{0}")]
    Admin(#[from] fleetgate_ops::admin::AdminError),
    /// Cluster peer discovery could not start.
    #[error("cluster peer discovery: {0}")]
    Discovery(#[from] fleetgate_discovery::ResolveError),
    /// The session store (`[storage] mode = "disk"`) could not be opened.
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    /// A listener could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}
