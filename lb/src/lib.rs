//! Fleetgate's load balancer: an MQTT-aware L4 proxy. It terminates TLS (or not), reads the client's CONNECT,
//! pins the client ID to a broker node with rendezvous hashing, writes a PROXY header carrying the client's
//! address and TLS identity, forwards the CONNECT unchanged and relays bytes both ways.
//!
//! Read [`conn`] first: it is the whole per-connection pipeline, each stage a call into its own module.
//!
//! - [`server`]: [`Lb::start`] / [`run`]: binds the sockets, runs accept loops and the admin server, shutdown.
//! - [`listener`]: the accept loop of one listener (spawns [`conn`] at once per socket).
//! - [`conn`]: accept → admission → [incoming PROXY] → TLS → peek CONNECT → select backend → PROXY header → relay.
//! - [`admission`]: connection caps, per-source-IP token buckets, the TLS handshake budget.
//! - [`tls`]: rustls server configs from the listener config (SNI certificates, client-cert verification, CRLs).
//! - [`identity`]: the client's TLS identity (version, cipher, CN, SANs) for the PROXY v2 TLVs.
//! - [`backend`]: backend state (load, suspect marks, the health seam) and ring selection with fail-over.
//! - [`relay`]: the byte relay that holds no buffer while a connection is idle.
//! - [`snapshot`]: the immutable runtime view built from an [`LbConfig`] (certificates loaded, ring built).
//! - [`sockopt`]: TCP options for long-lived mobile connections.
//! - [`stats`]: metric names and the few helpers that record them.
//! - [`admin`]: the LB's admin routes (`GET /clients/{client_id}`).

pub mod admin;
pub mod admission;
pub mod backend;
pub mod conn;
pub mod identity;
pub mod listener;
pub mod relay;
pub mod server;
pub mod snapshot;
pub mod sockopt;
pub mod stats;
pub mod tls;

pub use fleetgate_config::lb::LbConfig;
pub use server::{Lb, LbError, LbHandle, run};
