//! Why the LB could not start: the one error type [`crate::Lb::start`] and [`crate::run`] return (a bad config,
//! a certificate that does not load, a socket that does not bind, a discovery source that cannot be set up).
//! Failures after start-up are not errors of the LB: a connection's end is an [`crate::conn::Outcome`], a
//! rejected reload a logged event with the old snapshot left in force.

use std::net::SocketAddr;

use fleetgate_config::ConfigError;

use crate::tls::TlsError;

/// Why the LB could not start.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    /// The config file is invalid.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A certificate, key, CA or CRL could not be loaded.
    #[error("{0}")]
    Tls(#[from] TlsError),
    /// The admin server could not start (its token file, its sockets).
    #[error("{0}")]
    Admin(#[from] fleetgate_ops::admin::AdminError),
    /// A socket could not be bound.
    #[error("cannot bind {role} on {addr}: {source}")]
    Bind {
        /// The listener name.
        role: String,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Discovery could not be set up (resolver configuration).
    #[error("discovery: {0}")]
    Discovery(String),
    /// The LB's supervisor task panicked.
    #[error("load balancer task failed: {0}")]
    Task(String),
}
