//! Config files through the real loaders (`NodeConfig::parse`, `LbConfig::parse`, `AclConfig::parse`: what
//! `load` runs on a file's text; the one `fleetgate check` would pick for the text): never a panic, and every error carries a location — the file, and a line and
//! column inside the text (0:0 only for a problem of the whole file, such as a missing table); a TOML syntax
//! error always has its line.
//!
//! Input: the file's text (UTF-8; other inputs are skipped, as `read_file` refuses them).

#![no_main]

use std::path::Path;

use fleetgate_config::ConfigError;
use fleetgate_config::acl::AclConfig;
use fleetgate_config::lb::LbConfig;
use fleetgate_config::node::NodeConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("/etc/fleetgate/fuzz.toml");
    // The loader `fleetgate check` picks (config::check): a `[node]` table, an `[lb]` table, else the ACL's.
    let table = toml::from_str::<toml::Table>(text);
    let is_table = |key: &str| {
        table
            .as_ref()
            .is_ok_and(|t| t.get(key).is_some_and(toml::Value::is_table))
    };
    let (loader, error) = match (is_table("node"), is_table("lb")) {
        (true, _) => ("node", NodeConfig::parse(file, text).err()),
        (false, true) => ("lb", LbConfig::parse(file, text).err()),
        (false, false) => ("acl", AclConfig::parse(file, text).err()),
    };
    match error {
        Some(e) => check_located(&e, file, text, table.is_err(), loader),
        None => assert!(table.is_ok(), "{loader}: accepted text that is not TOML"),
    }
});

fn check_located(e: &ConfigError, file: &Path, text: &str, syntax_error: bool, loader: &str) {
    assert!(
        !e.problems.is_empty(),
        "{loader}: an error without a problem"
    );
    let lines: Vec<&str> = text.split('\n').collect();
    let shown = e.to_string();
    for p in &e.problems {
        assert_eq!(p.file, file, "{loader}: {p}");
        assert!(!p.message.trim().is_empty(), "{loader}: {p:?}");
        assert!(
            shown.contains(&p.message),
            "{loader}: {p:?} not in {shown:?}"
        );
        if p.line == 0 {
            assert_eq!(p.column, 0, "{loader}: {p:?}");
            assert!(
                !syntax_error,
                "{loader}: a syntax error without a line: {p}"
            );
            continue;
        }
        let line = lines
            .get(p.line - 1)
            .unwrap_or_else(|| panic!("{loader}: line {} of {}: {p}", p.line, lines.len()));
        let columns = line.chars().count() + 1;
        assert!(
            (1..=columns).contains(&p.column),
            "{loader}: column {} of {columns}: {p}",
            p.column
        );
    }
}
