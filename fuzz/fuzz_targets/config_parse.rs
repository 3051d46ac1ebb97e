//! Config files through the real loaders (`NodeConfig::parse`, `LbConfig::parse`, `AclConfig::parse`: what
//! `load` runs on a file's text; the one the text's tables call for): never a panic, and every error carries a
//! location — the file, and a line and column inside the text (0:0 only for a problem of the whole file, such as
//! a missing table, and never for a TOML syntax error).
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
    // The loader for what the text looks like (`fleetgate check` asks the parsed tables; one parse per input
    // here keeps the target fast): a `[node]` table, an `[lb]` table, else the ACL's.
    let (loader, error) = if text.contains("[node]") {
        ("node", NodeConfig::parse(file, text).err())
    } else if text.contains("[lb]") {
        ("lb", LbConfig::parse(file, text).err())
    } else {
        ("acl", AclConfig::parse(file, text).err())
    };
    if let Some(e) = error {
        check_located(&e, file, text, loader);
    }
});

fn check_located(e: &ConfigError, file: &Path, text: &str, loader: &str) {
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
            // Only a file that is TOML may have a problem without a line (a missing table, say).
            let toml = toml::from_str::<toml::Table>(text);
            assert!(toml.is_ok(), "{loader}: a syntax error without a line: {p}");
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
