//! Fleetgate discovery: finding the members of a set of named endpoints — the LB's backends, a node's cluster
//! peers — from a static list or DNS, and publishing the current set as it changes.
//!
//! - [`endpoint`]: [`Endpoint`] (stable name + address), [`Source`] (static, DNS A/AAAA, DNS SRV), set
//!   normalisation and diffing.
//! - [`configured`]: [`from_config`] / [`Discovery::spawn_from_config`]: a validated
//!   [`fleetgate_config::discovery::DiscoveryConfig`] (the embeddable `discovery` table, which lives in
//!   `fleetgate-config` so that the LB and node schemas can embed it) → [`Source`] + [`DiscoveryOptions`].
//! - [`resolve`]: one DNS round through hickory-resolver (no cache, bounded timeouts), failures classified.
//! - [`discovery`]: [`Discovery::spawn`], the TTL-aware refresh loop publishing through a `watch` channel, with
//!   its metrics and logs.
//!
//! Stable names need a static list or SRV records: A/AAAA discovery names each endpoint `"<ip>:<port>"`.

pub mod configured;
pub mod discovery;
pub mod endpoint;
pub mod resolve;

#[cfg(test)]
mod tests;

pub use configured::from_config;
pub use discovery::{Discovery, DiscoveryOptions, DiscoveryStats, EndpointSet};
pub use endpoint::{Endpoint, NameFrom, Source};
pub use resolve::{FailureReason, Nameserver, ResolveError};
