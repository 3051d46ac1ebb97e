//! Fleetgate's load balancer: an MQTT-aware L4 proxy. It terminates TLS (or not), reads the client's CONNECT,
//! pins the client ID to a broker node with rendezvous hashing, writes a PROXY header carrying the client's
//! address and TLS identity, forwards the CONNECT unchanged and relays bytes both ways.
//!
//! Read `conn` first: it is the whole per-connection pipeline, each stage a call into its own module. The
//! modules form layers, each importing only modules below it (`scripts/import-graph lb/src` checks it; the
//! picture is in docs/ARCHITECTURE.md, "Inside the load balancer"). From the top:
//!
//! - `server`: [`Lb::start`] / [`run`]: shared state, first snapshot, listener and admin sockets, the controller,
//!   then hands over to `drain`.
//! - `control`: the control plane task, the one writer of the running LB: reloads (file watcher, SIGHUP,
//!   `POST /reload`), listener rebinding, discovery updates, health task reconciliation, paced moves off removed
//!   backends.
//! - `listener`: the accept loop of one listener (spawns `conn` at once per socket).
//! - `conn`: accept → admission → [incoming PROXY] → TLS → peek CONNECT → select backend → PROXY header → relay;
//!   one typed `Outcome` per connection.
//! - `drain`: the three shutdown phases (not ready, paced drain, abort) and the paced closing of relays.
//! - `admin_routes`: the LB's admin routes (`GET /clients/{client_id}`, `GET /backends`, `POST /reload`,
//!   `POST /drain`).
//! - `shared`: the state every connection shares (snapshot in force, gauges, registry, readiness, the mailbox to
//!   the controller).
//! - `health_check`: active health checks (`tcp`, `mqtt`, `http`), one task per backend, feeding `health`.
//! - `upstream`: pick a backend, connect (failing over), send the PROXY header and the CONNECT.
//! - `snapshot`: the immutable runtime view built from an [`LbConfig`] and the discovered endpoints
//!   (certificates loaded, ring built), swapped with one `ArcSwap::store`.
//! - `backend`: the backend set and ring selection; each backend's load and suspect mark, with its health beside
//!   them (all carried by stable name).
//! - `health`: a backend's health state, flipped after rise/fall consecutive results.
//! - `admission`: connection caps (per listener, in total, per source address), per-source-IP token buckets, the
//!   TLS handshake budget.
//! - `relay`: the byte relay that holds no buffer while a connection is idle, and drains at packet boundaries;
//!   how a relay ended (`RelayEnd`, `Side`).
//! - `buffers`: the budget of bytes all relays may hold in buffers; at the bound, reads wait.
//! - `error`: [`LbError`], why the LB could not start.
//! - `frames`: MQTT packet boundary tracking over the relayed bytes; the DISCONNECTs a drain injects.
//! - `registry`: the relays open now (client ID → backend, drain switches).
//! - `reload`: what a (re)load reads from a config besides the snapshot (discovery source, files to watch).
//! - `tls`: rustls server configs from the listener config (SNI certificates, client-cert verification, CRLs).
//! - `identity`: the client's TLS identity (version, cipher, CN, SANs) for the PROXY v2 TLVs ([`CertFields`]).
//! - `stream`: the client's stream (plain or TLS) and readiness without a buffer, what the relay waits on.
//! - `sockopt`: TCP options for long-lived mobile connections.
//! - `metrics`: metric names and the few helpers that record them.

mod admin_routes;
mod admission;
mod backend;
mod buffers;
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
mod stream;
mod tls;
mod upstream;

pub use error::LbError;
pub use fleetgate_config::lb::LbConfig;
pub use identity::CertFields;
pub use server::{Lb, LbHandle, LbOptions, run};
pub use tls::TlsError;
