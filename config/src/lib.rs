//! Fleetgate's configuration: schema, validation with located errors, and hot-reload watching.
//!
//! - [`load`]: TOML → raw `*File` structs; [`Problem`]/[`ConfigError`] with `file:line:column`.

pub mod load;

pub use load::{ConfigError, Problem};
