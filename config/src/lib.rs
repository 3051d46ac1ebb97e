//! Fleetgate's configuration: schema, validation with located errors, and hot-reload watching.
//!
//! - [`load`]: TOML → raw `*File` structs; [`Problem`]/[`ConfigError`] with `file:line:column`.
//! - [`node`]: the broker node's config (`[node]` table).
//! - [`lb`]: the load balancer's config (`[lb]` table).
//! - [`discovery`]: the embeddable discovery table (`static = [...]` or `dns = {...}`) that `lb` and `node` use
//!   for backends and cluster peers; `fleetgate-discovery` runs what it validates to.
//! - [`duration`]: `"10s"`-style durations.
//! - [`check`]: validate any config file (what `fleetgate check` runs).
//! - [`watch`]: watch a config file's directory and report debounced changes.

pub mod check;
pub mod discovery;
pub mod duration;
pub mod lb;
pub mod load;
pub mod node;
pub mod watch;

pub use duration::ConfigDuration;
pub use load::{ConfigError, Problem};
