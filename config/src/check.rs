//! `fleetgate check`: decides which kind of config a file is (a top-level `[node]` or `[lb]` table, else an ACL
//! file) and runs that kind's full loader, so every problem is reported the same way the running binary would
//! report it. The files a node's `[auth]` names are read by `fleetgate_auth` when it builds the node's snapshot.
//! A valid node config then gets [`node_warnings`]: settings that work but leave a hole open.

use std::path::Path;

use crate::acl::{AclConfig, Match};
use crate::lb::LbConfig;
use crate::load::{ConfigError, Problem, parse_toml, read_file};
use crate::node::NodeConfig;

/// Most unbound usernames a warning names; the rest are counted.
const MAX_NAMED_USERS: usize = 5;

/// Which binary a config file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigKind {
    /// A broker node config (`[node]`).
    Node,
    /// A load balancer config (`[lb]`).
    Lb,
    /// An ACL file (`[auth] acl_file`): neither table.
    Acl,
}

impl ConfigKind {
    /// The name printed by `fleetgate check`, e.g. `node config`.
    pub fn describe(self) -> &'static str {
        match self {
            ConfigKind::Node => "node config",
            ConfigKind::Lb => "lb config",
            ConfigKind::Acl => "acl file",
        }
    }
}

/// A validated config of either kind.
#[derive(Debug, Clone)]
pub enum AnyConfig {
    /// A broker node config.
    Node(Box<NodeConfig>),
    /// A load balancer config.
    Lb(Box<LbConfig>),
    /// An ACL file.
    Acl(AclConfig),
}

impl AnyConfig {
    /// Which kind this is.
    pub fn kind(&self) -> ConfigKind {
        match self {
            AnyConfig::Node(_) => ConfigKind::Node,
            AnyConfig::Lb(_) => ConfigKind::Lb,
            AnyConfig::Acl(_) => ConfigKind::Acl,
        }
    }
}

/// Validates the config file at `path`, whatever its kind, reporting every problem found. A file with neither a
/// `[node]` nor an `[lb]` table is tried as an ACL file, so every file an operator edits can be checked; when it
/// is not one either, the problems say what makes it neither, then why it is not an ACL.
pub fn check(path: &Path) -> Result<AnyConfig, ConfigError> {
    match tables(path)? {
        Tables::Node => NodeConfig::load(path).map(|c| AnyConfig::Node(Box::new(c))),
        Tables::Lb => LbConfig::load(path).map(|c| AnyConfig::Lb(Box::new(c))),
        Tables::Neither(neither) => AclConfig::load(path).map(AnyConfig::Acl).map_err(|acl| {
            ConfigError::from(
                std::iter::once(neither)
                    .chain(acl.problems)
                    .collect::<Vec<_>>(),
            )
        }),
    }
}

/// Warnings for the valid node config `node` read from `file`, each a [`Problem`] whose message starts with
/// `warning:`: today, a listener that admits password users with no client-ID binding while the ACL grants topics
/// by client ID (`%c`, or `match = { client_id }`) — any password user could then connect with another device's
/// client ID and get its rights. `password_users` are the users of the password file (`fleetgate_auth` reads it);
/// users bound by an ACL `[[client_ids]]` entry are not counted. Reads the ACL file again.
pub fn node_warnings(
    file: &Path,
    node: &NodeConfig,
    password_users: &[String],
) -> Result<Vec<Problem>, ConfigError> {
    let Some(auth) = &node.auth else {
        return Ok(Vec::new());
    };
    // Without an ACL file every client may use every non-`$` topic: nothing is granted by client ID.
    let Some(acl_path) = &auth.acl_file else {
        return Ok(Vec::new());
    };
    let acl = AclConfig::load(acl_path)?;
    // A user is bound when a `[[client_ids]]` entry can select a password user of that name (certificate
    // entries cannot: a password user need not present a certificate).
    let binds = |user: Option<&str>| {
        acl.client_ids.iter().any(|e| match &e.matcher {
            Match::Username(u) => user == Some(u.as_str()),
            Match::AnyAuthenticated(_) | Match::Anyone(_) => true,
            Match::Cn(_) | Match::ClientId(_) => false,
        })
    };
    let unbound: Vec<&str> = password_users
        .iter()
        .map(String::as_str)
        .filter(|u| !binds(Some(u)))
        .collect();
    // An empty password file: the warning is about the users still to come, unless every user is bound.
    let future_users = password_users.is_empty() && !binds(None);
    if unbound.is_empty() && !future_users {
        return Ok(Vec::new());
    }
    let grants = acl.grants_by_client_id(|m| match m {
        Match::Username(u) => future_users || unbound.contains(&u.as_str()),
        Match::AnyAuthenticated(_) | Match::Anyone(_) | Match::ClientId(_) => true,
        Match::Cn(_) => false,
    });
    if !grants {
        return Ok(Vec::new());
    }
    let mut warnings = Vec::new();
    for listener in &node.listeners {
        let name = listener.name.as_deref();
        let policy = name
            .and_then(|n| auth.listeners.get(n))
            .unwrap_or(&auth.default_policy);
        if !policy.password || policy.binds_client_id() {
            continue;
        }
        let which = name.map_or_else(|| listener.bind.to_string(), |n| format!("{n:?}"));
        let users = if future_users {
            "no users yet".to_string()
        } else {
            let mut named = unbound[..unbound.len().min(MAX_NAMED_USERS)].join(", ");
            if unbound.len() > MAX_NAMED_USERS {
                named.push_str(&format!(" and {} more", unbound.len() - MAX_NAMED_USERS));
            }
            format!("unbound: {named}")
        };
        warnings.push(Problem::whole_file(
            file,
            format!(
                "warning: listener {which} admits password users without a client-ID binding ({users}) while {} \
                 grants topics by client ID (`%c` or `match = {{ client_id }}`): any password user can connect with \
                 another device's client ID and get its rights. Bind client IDs: policies = [\"password\", \
                 \"bind_client_id\"] with client_id_template = \"{{username}}-*\", or [[client_ids]] entries in the ACL",
                acl_path.display()
            ),
        ));
    }
    Ok(warnings)
}

/// What the top-level tables of a file say it is.
enum Tables {
    /// A `[node]` table.
    Node,
    /// An `[lb]` table.
    Lb,
    /// Neither: the problem that says so, for when the file is no ACL either.
    Neither(Problem),
}

/// Reads the top-level tables of the file at `path`; an unreadable file, invalid TOML and both tables are errors.
fn tables(path: &Path) -> Result<Tables, ConfigError> {
    let source = read_file(path)?;
    let table: toml::Table = parse_toml(path, &source)?;
    let is_table = |key: &str| table.get(key).is_some_and(toml::Value::is_table);
    let start = Some(0..0);
    match (is_table("node"), is_table("lb")) {
        (true, false) => Ok(Tables::Node),
        (false, true) => Ok(Tables::Lb),
        (true, true) => Err(ConfigError::single(Problem::at(
            path,
            &source,
            start,
            "both a [node] and an [lb] table: a config file is for one binary",
        ))),
        (false, false) => Ok(Tables::Neither(Problem::at(
            path,
            &source,
            start,
            "neither a [node] nor an [lb] table: cannot tell whether this is a node or an lb config",
        ))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING)
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// The kind of the file at `path` from its top-level tables; neither table is an error here.
    fn kind(path: &Path) -> Result<ConfigKind, ConfigError> {
        match tables(path)? {
            Tables::Node => Ok(ConfigKind::Node),
            Tables::Lb => Ok(ConfigKind::Lb),
            Tables::Neither(problem) => Err(ConfigError::single(problem)),
        }
    }

    fn write(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fleetgate-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn kind_comes_from_the_top_level_table() {
        let node = write("node.toml", "[node]\nname = \"broker-0\"\n");
        assert_eq!(kind(&node).unwrap(), ConfigKind::Node);
        let lb = write("lb.toml", "[lb]\n");
        assert_eq!(kind(&lb).unwrap(), ConfigKind::Lb);
    }

    #[test]
    fn neither_or_both_is_a_located_error() {
        let neither = write("neither.toml", "x = 1\n");
        let err = kind(&neither).unwrap_err();
        assert!(
            err.to_string()
                .contains("neither.toml:1:1: neither a [node]"),
            "{err}"
        );
        let both = write("both.toml", "[node]\n[lb]\n");
        assert!(
            kind(&both)
                .unwrap_err()
                .to_string()
                .contains("both a [node]")
        );
        let not_a_table = write("scalar.toml", "node = 1\n");
        assert!(kind(&not_a_table).is_err());
    }

    #[test]
    fn syntax_and_missing_file_errors_are_reported() {
        let bad = write("bad.toml", "[node]\nname = \n");
        let err = check(&bad).unwrap_err();
        assert!(err.to_string().contains("bad.toml:2:"), "{err}");
        let missing = std::env::temp_dir().join("fleetgate-check-missing/none.toml");
        assert!(
            check(&missing)
                .unwrap_err()
                .to_string()
                .contains("cannot read")
        );
    }

    #[test]
    fn a_file_with_neither_table_is_checked_as_an_acl() {
        let acl = write(
            "acl.toml",
            "[[rules]]\naction = \"allow\"\naccess = \"both\"\nmatch = { anyone = true }\ntopics = [\"#\"]\n",
        );
        let config = check(&acl).unwrap();
        assert_eq!(config.kind().describe(), "acl file");
        let neither = write("neither-acl.toml", "x = 1\n");
        let err = check(&neither).unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
        assert!(
            err.problems[0].message.starts_with("neither a [node]"),
            "{err}"
        );
        assert!(err.problems[1].message.contains('x'), "{err}");
    }

    /// A node config with one password listener (`policies`) and the ACL `acl`, both written to a directory of
    /// their own.
    fn password_node(name: &str, policies: &str, acl: &str) -> (PathBuf, NodeConfig) {
        let dir =
            std::env::temp_dir().join(format!("fleetgate-check-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("acl.toml"), acl).unwrap();
        let path = dir.join("node.toml");
        std::fs::write(
            &path,
            format!(
                "[node]\nname = \"n\"\n[[listeners]]\nname = \"internal\"\nbind = \"127.0.0.1:0\"\n\
                 [[listeners]]\nname = \"edge\"\nbind = \"127.0.0.1:0\"\n\
                 [auth]\npolicies = [\"certificate\"]\npassword_file = \"passwd\"\nacl_file = \"acl.toml\"\n\
                 [auth.listeners.internal]\n{policies}\n"
            ),
        )
        .unwrap();
        let node = NodeConfig::load(&path).unwrap();
        (path, node)
    }

    const PERCENT_C: &str = "[[rules]]\naction = \"allow\"\naccess = \"both\"\nmatch = { any_authenticated = true }\ntopics = [\"fleet/%c/#\"]\n";

    #[test]
    fn unbound_password_users_with_percent_c_are_warned_about() {
        let users = vec!["alice".to_string(), "bob".to_string()];
        let (path, node) = password_node("warn", "policies = [\"password\"]", PERCENT_C);
        let warnings = node_warnings(&path, &node, &users).unwrap();
        assert_eq!(
            warnings.len(),
            1,
            "only the password listener: {warnings:?}"
        );
        let text = warnings[0].to_string();
        assert!(
            text.contains("node.toml: warning: listener \"internal\""),
            "{text}"
        );
        assert!(text.contains("unbound: alice, bob"), "{text}");
        assert!(text.contains("bind_client_id"), "{text}");
        let none_yet = node_warnings(&path, &node, &[]).unwrap();
        assert!(none_yet[0].message.contains("no users yet"), "{none_yet:?}");

        // Bound by the listener's template: no warning.
        let (path, node) = password_node(
            "template",
            "policies = [\"password\", \"bind_client_id\"]\nclient_id_template = \"{username}-*\"",
            PERCENT_C,
        );
        assert!(node_warnings(&path, &node, &users).unwrap().is_empty());

        // Bound per user in the ACL: warned about the one left out, then not at all.
        let alice = format!(
            "{PERCENT_C}[[client_ids]]\nmatch = {{ username = \"alice\" }}\nallow = [\"alice-*\"]\n"
        );
        let (path, node) = password_node("alice", "policies = [\"password\"]", &alice);
        let text = node_warnings(&path, &node, &users).unwrap()[0].to_string();
        assert!(text.contains("unbound: bob)"), "{text}");
        let everyone = format!(
            "{PERCENT_C}[[client_ids]]\nmatch = {{ any_authenticated = true }}\nallow = [\"x-*\"]\n"
        );
        let (path, node) = password_node("everyone", "policies = [\"password\"]", &everyone);
        assert!(node_warnings(&path, &node, &users).unwrap().is_empty());
        assert!(node_warnings(&path, &node, &[]).unwrap().is_empty());

        // No grant by client ID: nothing to take.
        let by_user = PERCENT_C.replace("%c", "%u");
        let (path, node) = password_node("user", "policies = [\"password\"]", &by_user);
        assert!(node_warnings(&path, &node, &users).unwrap().is_empty());
    }

    #[test]
    fn check_runs_the_node_loader() {
        let bad = write("node-bad.toml", "[node]\nname = \"broker-0\"\nbogus = 1\n");
        let err = check(&bad).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }
}
