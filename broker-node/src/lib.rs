//! Fleetgate broker node: an MQTT 3.1/3.1.1/5.0 broker behind the Fleetgate load balancer.
//!
//! Start with [`conn`]: it follows one connection from accept to close and calls into the rest.
//!
//! - [`node`]: [`Node::start`] / [`run`]: bind listeners and admin, accept, shut down with a grace period.
//! - [`listener`]: bind, accept loop (one task per connection at once), PROXY header stage.
//! - [`conn`]: the per-connection pipeline: PROXY → CONNECT → attach → CONNACK → packet loop → end.
//! - [`inbound`]: packets from the client (publish routing, acks, subscribe, ping, disconnect, inbound aliases).
//! - [`outbound`]: session queue → PUBLISHes (inflight window, max packet size, outbound aliases, DUP resend).
//! - [`wire`]: socket + codec with buffers held only while bytes are pending.
//! - [`auth`]: authentication at CONNECT from the PROXY v2 identity and ACL checks (`fleetgate_auth` decides).
//! - [`auth_reload`]: hot reload of `[auth]`, password and ACL files (SIGHUP or file change).
//! - [`broker`]: shared state: sessions by client ID, takeover, expiry, publish fan-out.
//! - [`session`]: per-session state: subscriptions, queue, inflight, packet IDs, will.
//! - [`router`]: subscription trie with shared-subscription groups.
//! - [`cluster`]: N nodes as one broker: peer links, remote routes, retained replication, session takeover and
//!   drain handoff (wire protocol documented there).
//! - [`retained`]: retained messages.
//! - [`will`]: will publication and delay.
//! - [`message`]: the shared message and per-session delivery.
//! - [`limits`]: size/time constants and per-connection negotiated limits.
//! - [`metrics`]: metric names and handles; [`events`]: structured log events.
//! - [`admin_routes`]: `GET /clients/{client_id}`.

pub mod admin_routes;
pub mod auth;
pub mod auth_reload;
pub mod broker;
pub mod cluster;
pub mod conn;
pub mod events;
pub mod inbound;
pub mod limits;
pub mod listener;
pub mod message;
pub mod metrics;
pub mod node;
pub mod outbound;
pub mod retained;
pub mod router;
pub mod session;
pub mod signal;
pub mod will;
pub mod wire;

use std::net::SocketAddr;

pub use node::{Node, NodeHandle, run};

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The config file is invalid.
    #[error("{0}")]
    Config(#[from] fleetgate_config::ConfigError),
    /// `[cluster.tls]` files could not be loaded.
    #[error("{0}")]
    ClusterTls(#[from] cluster::tls::TlsError),
    /// Cluster peer discovery could not start.
    #[error("cluster peer discovery: {0}")]
    Discovery(#[from] fleetgate_discovery::ResolveError),
    /// A listener could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}
