//! What every Fleetgate binary runs for its operators.
//!
//! - [`logging`]: structured JSON (or text) logs through `tracing`.
//! - [`telemetry`]: the process-wide Prometheus recorder and its upkeep.
//! - [`admin`]: the admin HTTP server (`/healthz`, `/readyz`, `/metrics`, plus routes a binary adds), its probe
//!   socket, connection caps, deadlines and bearer token.
//! - [`sources`]: connections open per source address (IPv6 per /64), capped; the admin server and the LB count
//!   clients with it.
//! - [`signals`]: SIGTERM/SIGINT → shutdown, SIGHUP → reload.
//! - [`pem`]: certificate chains and keys from PEM files (LB TLS, cluster mTLS).

pub mod admin;
pub mod logging;
pub mod pem;
pub mod signals;
pub mod sources;
pub mod telemetry;
