//! The password file: `username:$argon2id$v=19$m=...,t=...,p=...$salt$hash` lines (PHC strings, in the spirit of
//! `mosquitto_passwd`), `#` comments and blank lines kept as written. Loaded into the auth snapshot; edited by
//! `fleetgate passwd FILE USER` through [`set_password`]. Hashes and passwords never reach a log: `Debug` shows
//! only the number of users.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::Path;

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};
use fleetgate_config::load::{ConfigError, Problem, read_file};

use crate::error::AuthError;

/// Memory cost of new hashes, in KiB (19 MiB), with [`HASH_T_COST`] passes and [`HASH_P_COST`] lane: the OWASP
/// minimum for argon2id. Measured on the 2-core build machine with argon2 optimized (opt-level 3) while other builds
/// ran: 21 ms minimum, 33 ms median per verify (46 MiB/t=1 was ~60 ms, too slow for a reconnect storm). An
/// unoptimized (debug) build takes ~1.2 s per hash. The CONNECT-storm cost is bounded by the verifier's
/// concurrency limit, not by this constant.
pub(crate) const HASH_M_COST_KIB: u32 = 19 * 1024;
/// Passes over memory for new hashes; see [`HASH_M_COST_KIB`].
pub(crate) const HASH_T_COST: u32 = 2;
/// Lanes for new hashes; one, because the verifier already runs several checks in parallel.
pub(crate) const HASH_P_COST: u32 = 1;

/// Largest memory cost accepted in a loaded hash (64 MiB): a hand-edited `m=4194304` would make every CONNECT for
/// that user allocate 4 GiB.
pub(crate) const MAX_M_COST_KIB: u32 = 64 * 1024;
/// Largest time cost accepted in a loaded hash; beyond this one CONNECT costs seconds of CPU.
pub(crate) const MAX_T_COST: u32 = 10;
/// Largest parallelism accepted in a loaded hash.
pub(crate) const MAX_P_COST: u32 = 4;
/// Longest username accepted (the MQTT string limit).
pub(crate) const MAX_USERNAME_LEN: usize = 65_535;

/// A hash with the default cost of a password nobody knows: verified against when the username is unknown and the
/// file has no entry to borrow parameters from, so "no such user" costs as much as "wrong password".
/// `dummy_hash_has_default_cost` keeps it in step with the constants above.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$ZmxlZXRnYXRlLWR1bW15LXNhbHQ$Z1n2uXd7nlWqpIVpS+HsrqrHKM0cmyJRLAh4LtR9C6U";

/// One line of the file, kept so that saving preserves comments and order.
#[derive(Clone, PartialEq, Eq)]
enum Line {
    Other(String),
    Entry(String),
}

/// A parsed password file.
#[derive(Clone, PartialEq, Eq, Default)]
pub(crate) struct PasswordFile {
    lines: Vec<Line>,
    hashes: BTreeMap<String, String>,
}

impl fmt::Debug for PasswordFile {
    // By hand: hashes are offline-crackable and must not reach logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordFile")
            .field("users", &self.hashes.len())
            .finish()
    }
}

/// The argon2id hasher with the bounded default cost.
fn hasher() -> Result<Argon2<'static>, AuthError> {
    let params = Params::new(HASH_M_COST_KIB, HASH_T_COST, HASH_P_COST, None)
        .map_err(|e| AuthError::Hash(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Why a stored hash is refused. The messages name the problem, never the hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HashError {
    /// Not a PHC string (`$alg$v=..$params$salt$hash`); holds the parser's description.
    #[error("not a PHC hash string: {0}")]
    NotPhc(String),
    /// A PHC string of another algorithm.
    #[error("algorithm {0:?} is not supported (use argon2id)")]
    Algorithm(String),
    /// argon2 parameters that do not parse; holds the parser's description.
    #[error("invalid argon2 parameters: {0}")]
    Params(String),
    /// Costs above [`MAX_M_COST_KIB`], [`MAX_T_COST`] or [`MAX_P_COST`].
    #[error(
        "cost m={m},t={t},p={p} is above the limit m={MAX_M_COST_KIB},t={MAX_T_COST},p={MAX_P_COST}"
    )]
    CostTooHigh {
        /// Memory cost (KiB).
        m: u32,
        /// Time cost.
        t: u32,
        /// Parallelism.
        p: u32,
    },
    /// No salt or no hash output.
    #[error("hash string has no salt or no output")]
    Incomplete,
}

/// Checks a stored hash: a PHC argon2id string within the cost bounds.
fn check_hash(phc: &str) -> Result<(), HashError> {
    let hash = PasswordHash::new(phc).map_err(|e| HashError::NotPhc(e.to_string()))?;
    if hash.algorithm.as_str() != "argon2id" {
        return Err(HashError::Algorithm(hash.algorithm.as_str().to_string()));
    }
    let params = Params::try_from(&hash).map_err(|e| HashError::Params(e.to_string()))?;
    if params.m_cost() > MAX_M_COST_KIB
        || params.t_cost() > MAX_T_COST
        || params.p_cost() > MAX_P_COST
    {
        return Err(HashError::CostTooHigh {
            m: params.m_cost(),
            t: params.t_cost(),
            p: params.p_cost(),
        });
    }
    if hash.salt.is_none() || hash.hash.is_none() {
        return Err(HashError::Incomplete);
    }
    Ok(())
}

/// Why a username cannot be stored in the file, if it cannot.
fn check_username(user: &str) -> Result<(), &'static str> {
    if user.is_empty() {
        Err("empty")
    } else if user.len() > MAX_USERNAME_LEN {
        Err("longer than 65535 bytes")
    } else if user.contains(':') {
        Err("contains ':'")
    } else if user.starts_with('#') {
        Err("starts with '#'")
    } else if user.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err("contains whitespace or a control character")
    } else {
        Ok(())
    }
}

/// Runs argon2 for `password` against `phc`; true on a match. Blocking (tens of milliseconds).
pub(crate) fn verify_hash(phc: &str, password: &[u8]) -> bool {
    match PasswordHash::new(phc) {
        Ok(hash) => Argon2::default().verify_password(password, &hash).is_ok(),
        Err(_) => false,
    }
}

/// What to run argon2 against for one username: the user's hash, or a stand-in of the same cost.
#[derive(Clone)]
pub(crate) struct HashMaterial {
    pub(crate) phc: String,
    pub(crate) known: bool,
}

impl PasswordFile {
    /// An empty file.
    pub(crate) fn empty() -> Self {
        Self::default()
    }

    /// Reads and parses a password file.
    pub(crate) fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read_file(path)?;
        Self::parse(path, &text)
    }

    /// Parses password-file `text` read from `file`; every bad line is reported with its line number.
    pub(crate) fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut out = Self::default();
        let mut problems = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let at = |column: usize, message: String| Problem {
                file: file.to_path_buf(),
                line: line_no,
                column,
                message,
            };
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                out.lines.push(Line::Other(raw.to_string()));
                continue;
            }
            let Some((user, phc)) = trimmed.split_once(':') else {
                problems.push(at(1, "expected `username:$argon2id$...`".to_string()));
                continue;
            };
            if let Err(why) = check_username(user) {
                problems.push(at(1, format!("invalid username: {why}")));
                continue;
            }
            if let Err(why) = check_hash(phc) {
                // The message names the problem, never the hash itself.
                problems.push(at(user.chars().count() + 2, why.to_string()));
                continue;
            }
            if out
                .hashes
                .insert(user.to_string(), phc.to_string())
                .is_some()
            {
                problems.push(at(1, format!("duplicate user {user:?}")));
                continue;
            }
            out.lines.push(Line::Entry(user.to_string()));
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(ConfigError::from(problems))
        }
    }

    /// The usernames, in order.
    pub(crate) fn users(&self) -> impl Iterator<Item = &str> {
        self.hashes.keys().map(String::as_str)
    }

    /// Number of users.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.hashes.len()
    }

    /// True when `user` has an entry.
    #[cfg(test)]
    pub(crate) fn contains(&self, user: &str) -> bool {
        self.hashes.contains_key(user)
    }

    /// Sets (adds or replaces) `user`'s password, hashed with argon2id at the default bounded cost. Blocking.
    pub(crate) fn set(&mut self, user: &str, password: &str) -> Result<(), AuthError> {
        self.set_with(&hasher()?, user, password)
    }

    /// Like [`Self::set`] with a tiny cost, so that tests in debug builds stay fast. Never for real files.
    #[cfg(test)]
    pub(crate) fn set_with_cost_for_tests(&mut self, user: &str, password: &str) {
        let params = Params::new(64, 1, 1, None).unwrap();
        self.set_with(
            &Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
            user,
            password,
        )
        .unwrap();
    }

    fn set_with(
        &mut self,
        hasher: &Argon2<'_>,
        user: &str,
        password: &str,
    ) -> Result<(), AuthError> {
        check_username(user).map_err(AuthError::InvalidUsername)?;
        if password.is_empty() {
            return Err(AuthError::EmptyPassword);
        }
        let phc = hasher
            .hash_password(password.as_bytes())
            .map_err(|e| AuthError::Hash(e.to_string()))?
            .to_string();
        if self.hashes.insert(user.to_string(), phc).is_none() {
            self.lines.push(Line::Entry(user.to_string()));
        }
        Ok(())
    }

    /// Checks `password` for `user`, synchronously (tens of milliseconds; the broker uses
    /// [`crate::verify::PasswordVerifier`] instead). An unknown user costs the same as a wrong password.
    #[cfg(test)]
    pub(crate) fn verify_blocking(&self, user: &str, password: &[u8]) -> bool {
        let material = self.material(user);
        verify_hash(&material.phc, password) && material.known
    }

    /// The hash to check `user` against; for an unknown user, another user's hash (same cost, result ignored) or
    /// the built-in dummy.
    pub(crate) fn material(&self, user: &str) -> HashMaterial {
        match self.hashes.get(user) {
            Some(phc) => HashMaterial {
                phc: phc.clone(),
                known: true,
            },
            None => HashMaterial {
                phc: self
                    .hashes
                    .values()
                    .next()
                    .map_or_else(|| DUMMY_HASH.to_string(), Clone::clone),
                known: false,
            },
        }
    }

    /// The file's text: kept comments and blank lines, entries in their original order, new ones at the end.
    fn render(&self) -> String {
        let mut out = String::new();
        for line in &self.lines {
            match line {
                Line::Other(text) => out.push_str(text),
                Line::Entry(user) => {
                    let Some(phc) = self.hashes.get(user) else {
                        continue;
                    };
                    out.push_str(user);
                    out.push(':');
                    out.push_str(phc);
                }
            }
            out.push('\n');
        }
        out
    }

    /// Writes the file atomically: a temporary file (mode 0600) in the same directory, synced, then renamed over
    /// `path`, so a reader (the broker's reload) never sees half a file.
    pub(crate) fn save(&self, path: &Path) -> Result<(), AuthError> {
        let io = |source| AuthError::Io {
            path: path.to_path_buf(),
            source,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        // tempfile creates the file with mode 0600 on Unix.
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        tmp.write_all(self.render().as_bytes()).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        Ok(())
    }
}

/// `fleetgate passwd FILE USER`: sets `user`'s password in the file at `path` (created if missing), keeping the
/// other lines, and saves it atomically with mode 0600. Blocking (one argon2 hash).
pub fn set_password(path: &Path, user: &str, password: &str) -> Result<(), AuthError> {
    let mut file = match std::fs::metadata(path) {
        Ok(_) => PasswordFile::load(path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => PasswordFile::empty(),
        Err(source) => {
            return Err(AuthError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    file.set(user, password)?;
    file.save(path)
}

#[cfg(test)]
#[path = "passwd_tests.rs"]
mod tests;
