//! `fleetgate check`: decides which kind of config a file is (a top-level `[node]` or `[lb]` table) and runs that
//! kind's full loader, so every problem is reported the same way the running binary would report it.

use std::path::Path;

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
}

impl ConfigKind {
    /// The name printed by `fleetgate check`, e.g. `node config`.
    pub fn describe(self) -> &'static str {
        match self {
            ConfigKind::Node => "node config",
            ConfigKind::Lb => "lb config",
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
}

impl AnyConfig {
    /// Which kind this is.
    pub fn kind(&self) -> ConfigKind {
        match self {
            AnyConfig::Node(_) => ConfigKind::Node,
            AnyConfig::Lb(_) => ConfigKind::Lb,
        }
    }
}

/// Validates the config file at `path`, whatever its kind, reporting every problem found.
pub fn check(path: &Path) -> Result<AnyConfig, ConfigError> {
    match kind(path)? {
        ConfigKind::Node => NodeConfig::load(path).map(|c| AnyConfig::Node(Box::new(c))),
        ConfigKind::Lb => LbConfig::load(path).map(|c| AnyConfig::Lb(Box::new(c))),
    }
}

/// Decides the kind of the config file at `path` from its top-level tables (TOML syntax errors are reported).
pub fn kind(path: &Path) -> Result<ConfigKind, ConfigError> {
    let source = read_file(path)?;
    let table: toml::Table = parse_toml(path, &source)?;
    let is_table = |key: &str| table.get(key).is_some_and(toml::Value::is_table);
    let start = Some(0..0);
    match (is_table("node"), is_table("lb")) {
        (true, false) => Ok(ConfigKind::Node),
        (false, true) => Ok(ConfigKind::Lb),
        (true, true) => Err(ConfigError::single(Problem::at(
            path,
            &source,
            start,
            "both a [node] and an [lb] table: a config file is for one binary",
        ))),
        (false, false) => Err(ConfigError::single(Problem::at(
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
    fn check_runs_the_node_loader() {
        let bad = write("node-bad.toml", "[node]\nname = \"broker-0\"\nbogus = 1\n");
        let err = check(&bad).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }
}
