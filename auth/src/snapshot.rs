//! Everything authentication and authorization read per connection, built from a validated `[auth]` section
//! (`fleetgate_config::node::AuthConfig`) and the files it names in one go, so that a reload is one
//! `ArcSwap::store` of an `Arc<AuthSnapshot>`: a connection never sees a new ACL with an old password file. Built
//! off the hot path; a reload that fails keeps the old snapshot.

use std::collections::BTreeMap;

use fleetgate_config::acl::AclConfig;
use fleetgate_config::load::{ConfigError, Problem};
use fleetgate_config::node::AuthConfig;

use crate::acl::Acl;
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
    /// Reads the password and ACL files of `config` (the ACL through its schema in `fleetgate_config::acl`),
    /// reporting the problems of both at once. What `fleetgate check` runs for a node config's `[auth]`.
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
            Some(path) => AclConfig::load(path).map_or_else(
                |e| {
                    problems.extend(e.problems);
                    Acl::default()
                },
                Acl::new,
            ),
            None => Acl::new(AclConfig::allow_all()),
        };
        if !problems.is_empty() {
            return Err(ConfigError::from(problems));
        }
        Ok(Self {
            default_policy: ListenerPolicy::from(config.default_policy.clone()),
            listeners: config
                .listeners
                .iter()
                .map(|(name, policy)| (name.clone(), ListenerPolicy::from(policy.clone())))
                .collect(),
            acl,
            passwords,
        })
    }

    /// Anonymous access on every listener and every non-`$` topic allowed: what a node without `[auth]` runs.
    pub fn anonymous() -> Self {
        Self {
            default_policy: ListenerPolicy::anonymous_only(),
            listeners: BTreeMap::new(),
            acl: Acl::new(AclConfig::allow_all()),
            passwords: PasswordFile::empty(),
        }
    }

    /// A snapshot from parts already built (tests).
    #[cfg(test)]
    pub(crate) fn from_parts(policy: ListenerPolicy, acl: Acl, passwords: PasswordFile) -> Self {
        Self {
            default_policy: policy,
            listeners: BTreeMap::new(),
            acl,
            passwords,
        }
    }

    /// The policy of the listener named `listener` (its `[auth.listeners.<name>]` override, else `[auth]`).
    pub(crate) fn policy(&self, listener: &str) -> &ListenerPolicy {
        self.listeners.get(listener).unwrap_or(&self.default_policy)
    }

    /// The ACL.
    pub fn acl(&self) -> &Acl {
        &self.acl
    }

    /// The password file.
    pub(crate) fn passwords(&self) -> &PasswordFile {
        &self.passwords
    }

    /// The usernames of the password file, in order (what `fleetgate check` weighs its warnings against).
    pub fn password_users(&self) -> Vec<String> {
        self.passwords.users().map(str::to_string).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_loads_files_and_reports_problems_of_both() {
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("node.toml");
        std::fs::write(
            &node,
            "[auth]\npolicies = [\"password\"]\npassword_file = \"passwd\"\nacl_file = \"acl.toml\"\n[auth.listeners.edge]\npolicies = [\"certificate\"]\n",
        )
        .unwrap();
        let mut pw = crate::passwd::PasswordFile::empty();
        pw.set_with_cost_for_tests("alice", "pw");
        pw.save(&dir.path().join("passwd")).unwrap();
        std::fs::write(
            dir.path().join("acl.toml"),
            "[[rules]]\naction = \"allow\"\naccess = \"both\"\nmatch = { username = \"alice\" }\ntopics = [\"u/%u/#\"]\n",
        )
        .unwrap();
        let config = AuthConfig::load(&node, &["edge".to_string()])
            .unwrap()
            .unwrap();
        let snap = AuthSnapshot::load(&config).unwrap();
        assert!(snap.passwords().contains("alice"));
        assert_eq!(snap.password_users(), ["alice"]);
        assert_eq!(snap.acl().rules().len(), 1);
        assert!(snap.policy("edge").config().require_certificate);
        assert!(snap.policy("other").config().password);

        std::fs::write(dir.path().join("passwd"), "broken\n").unwrap();
        std::fs::write(
            dir.path().join("acl.toml"),
            "[[rules]]\naction = \"maybe\"\n",
        )
        .unwrap();
        let err = AuthSnapshot::load(&config).unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
        assert!(err.to_string().contains("passwd:1:1:"), "{err}");
        assert!(err.to_string().contains("acl.toml:2:"), "{err}");

        std::fs::remove_file(dir.path().join("passwd")).unwrap();
        let err = AuthSnapshot::load(&config).unwrap_err();
        assert!(err.to_string().contains("cannot read"), "{err}");
    }
}
