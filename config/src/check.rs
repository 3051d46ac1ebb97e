//! `fleetgate check`: decides which kind of config a file is (a top-level `[node]` or `[lb]` table, else an ACL
//! file) and runs that kind's full loader, so every problem is reported the same way the running binary would
//! report it. The files a node's `[auth]` names are read by `fleetgate_auth` when it builds the node's snapshot.

use std::path::Path;

use crate::acl::AclConfig;
use crate::lb::LbConfig;
use crate::load::{ConfigError, Problem, parse_toml, read_file};
use crate::node::NodeConfig;

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

    #[test]
    fn check_runs_the_node_loader() {
        let bad = write("node-bad.toml", "[node]\nname = \"broker-0\"\nbogus = 1\n");
        let err = check(&bad).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }
}
