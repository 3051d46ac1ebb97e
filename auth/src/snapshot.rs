//! Everything authentication and authorization read per connection, built from the files in one go so that a
//! reload is one `ArcSwap::store` of an `Arc<AuthSnapshot>`: a connection never sees a new ACL with an old password
//! file. Built off the hot path; a reload that fails keeps the old snapshot.

use std::collections::BTreeMap;

use fleetgate_config::load::{ConfigError, Problem};

use crate::acl::Acl;
use crate::config::AuthConfig;
use crate::passwd::PasswordFile;
use crate::policy::ListenerPolicy;

/// Policies, ACL and passwords of one configuration generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSnapshot {
    default_policy: ListenerPolicy,
    listeners: BTreeMap<String, ListenerPolicy>,
    acl: Acl,
    passwords: PasswordFile,
}

impl AuthSnapshot {
    /// Reads the password and ACL files of `config`, reporting the problems of both at once.
    pub fn load(config: &AuthConfig) -> Result<Self, ConfigError> {
        let mut problems: Vec<Problem> = Vec::new();
        let passwords = match &config.password_file {
            Some(path) => PasswordFile::load(path).unwrap_or_else(|e| {
                problems.extend(e.problems);
                PasswordFile::empty()
            }),
            None => PasswordFile::empty(),
        };
        let acl = match &config.acl_file {
            Some(path) => Acl::load(path).unwrap_or_else(|e| {
                problems.extend(e.problems);
                Acl::default()
            }),
            None => Acl::allow_all(),
        };
        if !problems.is_empty() {
            return Err(ConfigError::from(problems));
        }
        Ok(Self {
            default_policy: config.default_policy.clone(),
            listeners: config.listeners.clone(),
            acl,
            passwords,
        })
    }

    /// Anonymous access on every listener and every non-`$` topic allowed: what a node without `[auth]` runs.
    pub fn anonymous() -> Self {
        Self {
            default_policy: ListenerPolicy::anonymous_only(),
            listeners: BTreeMap::new(),
            acl: Acl::allow_all(),
            passwords: PasswordFile::empty(),
        }
    }

    /// A snapshot from parts already built (tests, embedders).
    pub fn from_parts(policy: ListenerPolicy, acl: Acl, passwords: PasswordFile) -> Self {
        Self {
            default_policy: policy,
            listeners: BTreeMap::new(),
            acl,
            passwords,
        }
    }

    /// The policy of the listener named `listener` (its `[auth.listeners.<name>]` override, else `[auth]`).
    pub fn policy(&self, listener: &str) -> &ListenerPolicy {
        self.listeners.get(listener).unwrap_or(&self.default_policy)
    }

    /// The ACL.
    pub fn acl(&self) -> &Acl {
        &self.acl
    }

    /// The password file.
    pub fn passwords(&self) -> &PasswordFile {
        &self.passwords
    }
}
