//! Fleetgate discovery: finding the members of a set of named endpoints — the LB's backends, a node's cluster
//! peers — from a static list or DNS, and publishing the current set as it changes.
//!
//! - [`endpoint`]: [`Endpoint`] (stable name + address), [`Source`] (static, DNS A/AAAA, DNS SRV), set
//!   normalisation and diffing.
//! - [`config`]: the embeddable `discovery` table: raw [`DiscoveryFile`] → validated [`DiscoveryConfig`].
//! - [`resolve`]: one DNS round through hickory-resolver (no cache, bounded timeouts), failures classified.
//! - [`discovery`]: [`Discovery::spawn`], the TTL-aware refresh loop publishing through a `watch` channel, with
//!   its metrics and logs.
//!
//! Stable names need a static list or SRV records: A/AAAA discovery names each endpoint `"<ip>:<port>"`.

pub mod config;
pub mod discovery;
pub mod endpoint;
pub mod resolve;

#[cfg(test)]
mod stub_dns;
#[cfg(test)]
mod tests;

pub use config::{DiscoveryConfig, DiscoveryFile};
pub use discovery::{Discovery, DiscoveryOptions, DiscoveryStats, EndpointSet};
pub use endpoint::{Endpoint, NameFrom, Source};
pub use resolve::{FailureReason, Nameserver, ResolveError};
