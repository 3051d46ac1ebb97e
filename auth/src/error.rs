//! Errors of the library's fallible operations outside config loading (which reports located
//! [`ConfigError`]s): editing and saving the password file.

use std::path::PathBuf;

use fleetgate_config::load::ConfigError;

/// An error from password-file editing.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The existing file could not be parsed.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The username cannot be stored in the file.
    #[error("invalid username: {0}")]
    InvalidUsername(&'static str),
    /// An empty password was given.
    #[error("the password is empty")]
    EmptyPassword,
    /// argon2 refused to hash (never contains the password).
    #[error("hashing failed: {0}")]
    Hash(String),
    /// Reading or writing the file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}
