//! Fleetgate's configuration: every file an operator writes — schema, validation with located errors — and
//! hot-reload watching. Each file goes TOML → raw `*File` serde structs (`deny_unknown_fields`) → validated
//! `*Config` types; the binaries and `fleetgate_auth` build their runtime state from the validated types.
//!
//! - [`admin`]: the `[admin]` table both binaries share (admin and probe sockets, token file, caps, timeouts).
//! - [`load`]: TOML → raw `*File` structs; [`Problem`]/[`ConfigError`] with `file:line:column`; `Secret`.
//! - [`node`]: the broker node's config (`[node]` table), its `[auth]` section included ([`node::AuthConfig`]).
//! - [`acl`]: the ACL file named by `[auth] acl_file` ([`acl::AclConfig`]); [`acl::topic`]: topic filter and
//!   placeholder syntax.
//! - [`lb`]: the load balancer's config (`[lb]` table).
//! - [`discovery`]: the embeddable discovery table (`static = [...]` or `dns = {...}`) that `lb` and `node` use
//!   for backends and cluster peers; `fleetgate-discovery` runs what it validates to.
//! - [`duration`]: `"10s"`-style durations; [`bytesize`]: `"512MiB"`-style sizes.
//! - [`check`]: validate any config file (what `fleetgate check` runs).
//! - [`watch`]: watch a config file's directory and report debounced changes.

pub mod acl;
pub mod admin;
pub mod bytesize;
pub mod check;
pub mod discovery;
pub mod duration;
pub mod lb;
pub mod load;
pub mod node;
pub mod watch;

pub use bytesize::ByteSize;
pub use load::{ConfigError, Problem};
