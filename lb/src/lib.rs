//! Fleetgate's load balancer: an MQTT-aware L4 proxy. It terminates TLS (or not), reads the client's CONNECT,
//! pins the client ID to a broker node with rendezvous hashing, writes a PROXY header carrying the client's
//! address and TLS identity, forwards the CONNECT unchanged and relays bytes both ways.
//!
//! Read [`conn`] first: it is the whole per-connection pipeline, each stage a call into its own module.
//!
//! - [`server`]: [`Lb::start`] / [`run`]: first snapshot, sockets, admin server, and the paced drain at shutdown
//!   (with what the broker sees when a relay is drained).
//! - [`control`]: the control plane task: reloads (file watcher, SIGHUP, `POST /reload`), listener rebinding,
//!   discovery updates, health task reconciliation, paced moves off removed backends.
//! - [`reload`]: reading and validating a config file (with its `[discovery]` table) for a (re)load.
//! - [`listener`]: the accept loop of one listener (spawns [`conn`] at once per socket).
//! - [`conn`]: accept → admission → [incoming PROXY] → TLS → peek CONNECT → select backend → PROXY header → relay.
//! - [`admission`]: connection caps, per-source-IP token buckets, the TLS handshake budget.
//! - [`tls`]: rustls server configs from the listener config (SNI certificates, client-cert verification, CRLs).
//! - [`identity`]: the client's TLS identity (version, cipher, CN, SANs) for the PROXY v2 TLVs.
//! - [`backend`]: backend state (load, health, suspect marks; carried by stable name) and ring selection.
//! - [`health`]: active health checks (`tcp`, `mqtt`, `http`) with rise/fall thresholds, beside selection.
//! - [`relay`]: the byte relay that holds no buffer while a connection is idle, and drains at packet boundaries.
//! - [`frames`]: MQTT packet boundary tracking over the relayed bytes; the DISCONNECTs a drain injects.
//! - [`registry`]: the relays open now (client ID → backend, drain switches).
//! - [`drain`]: closing relays at a paced rate with jitter.
//! - [`snapshot`]: the immutable runtime view built from an [`LbConfig`] and the discovered endpoints
//!   (certificates loaded, ring built), swapped with one `ArcSwap::store`.
//! - [`sockopt`]: TCP options for long-lived mobile connections.
//! - [`metrics`]: metric names and the few helpers that record them.
//! - [`admin_routes`]: the LB's admin routes (`GET /clients/{client_id}`, `GET /backends`, `POST /reload`,
//!   `POST /drain`).

mod admin_routes;
mod admission;
mod backend;
mod conn;
mod control;
mod drain;
mod error;
mod frames;
mod health;
mod health_check;
mod identity;
mod listener;
mod metrics;
mod registry;
mod relay;
mod reload;
mod server;
mod shared;
mod snapshot;
mod sockopt;
mod tls;
mod upstream;

pub use error::LbError;
pub use fleetgate_config::lb::LbConfig;
pub use identity::CertFields;
pub use server::{Lb, LbHandle, LbOptions, run};
pub use tls::TlsError;
