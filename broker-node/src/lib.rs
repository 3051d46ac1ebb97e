//! Fleetgate broker node: an MQTT 3.1/3.1.1/5.0 broker behind the Fleetgate load balancer.
//!
//! Start with [`conn`]: it follows one connection from accept to close and calls into the rest.
//!
//! The modules form layers; each imports only from the layers below it (checked by `tests/layers.rs`):
//!
//! ```text
//!   server, admin_routes      start, supervise, shut down; the admin API          (top)
//!   listener                  bind, accept, one task per connection
//!   conn                      one connection: handshake, inbound, outbound, End
//!   cluster, store            peer links, remote routes, forwarding, session handover; the durable session
//!                             store (`[storage] mode = "disk"`: group-committed writes, read back at start)
//!   broker                    sessions, publish, subscribe; ClusterHooks (what it tells the cluster)
//!   state                     message, session, will, router, retained, the topic trie
//!   access, origin, wakeup,   authentication and ACL, who the client is, how a connection is woken,
//!   limits, metrics, events   constants, metric handles, log events                (bottom)
//! ```
//!
//! - [`server`]: [`Node::start`] / [`run`]: bind listeners and admin, accept, shut down with a grace period.
//! - [`admin_routes`]: `GET /clients/{client_id}`.
//! - [`listener`]: bind, accept loop (one task per connection at once).
//! - [`conn`]: the per-connection pipeline: PROXY → CONNECT → attach → CONNACK → packet loop → end.
//! - [`cluster`]: N nodes as one broker: peer links, remote routes, retained replication, session takeover and
//!   drain handoff (wire protocol documented there).
//! - [`store`]: the durable session store: what the broker writes through [`broker::store_hooks`], one writer
//!   thread committing batches, everything read back at start.
//! - [`broker`]: shared state: sessions by client ID, takeover, expiry, publish fan-out; [`broker::hooks`] is
//!   what it tells the cluster.
//! - [`state`]: what the broker keeps: messages, sessions, wills, the subscription router, retained messages.
//! - [`access`]: authentication at CONNECT from the PROXY v2 identity and ACL checks (`fleetgate_auth` decides),
//!   hot reload of the `[auth]` files.
//! - [`origin`]: the client's address and PROXY identity. [`wakeup`]: how anything wakes a connection's task.
//! - [`limits`]: size/time constants and per-connection negotiated limits.
//! - [`metrics`]: metric names and handles; [`events`]: structured log events.
//! - [`error`]: [`BrokerError`], why a node could not start.
//! - `fuzzing` (hidden): the cluster frame decoder's entry for the fuzz target in `fuzz/`.

mod access;
mod admin_routes;
mod broker;
mod cluster;
mod conn;
mod error;
mod events;
mod limits;
mod listener;
mod metrics;
mod origin;
mod server;
mod state;
mod store;
mod wakeup;

pub use broker::{Broker, ClientInfo};

/// Entry points for the fuzz targets in `fuzz/` (not an API: hidden, no stability promised).
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::cluster::frame::fuzzing::decode_cluster_frame;
}
pub use cluster::tls::TlsError;
pub use error::BrokerError;
pub use server::{Node, NodeHandle, run};
