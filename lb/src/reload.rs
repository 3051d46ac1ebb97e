//! What a (re)load takes from a config besides the snapshot: the file itself is read once and validated by
//! `LbConfig::load` (the `[discovery]` table included, every problem with `file:line:column`); here its discovery
//! source is picked out for the controller, and the files the snapshot will load (certificates, keys, CAs, CRLs)
//! are listed for the watcher.

use std::path::PathBuf;

use fleetgate_config::discovery::DiscoveryConfig;
use fleetgate_config::lb::LbConfig;

/// Where discovered backends come from, when `[discovery]` is set.
pub(crate) fn discovery_source(config: &LbConfig) -> Option<&DiscoveryConfig> {
    config.discovery.as_ref().map(|d| &d.endpoints)
}

/// Every file a snapshot of `config` loads: watched, so that a rotated certificate or CRL reloads too.
pub(crate) fn referenced_files(config: &LbConfig) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for l in &config.listeners {
        if let Some(t) = &l.tls {
            for c in &t.certificates {
                files.push(c.cert.clone());
                files.push(c.key.clone());
            }
            files.extend(t.client_ca.iter().cloned());
            files.extend(t.crls.iter().cloned());
        }
    }
    files.sort();
    files.dedup();
    files
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const BASE: &str = "[lb]\nname = \"a\"\n[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n";

    #[test]
    fn discovery_endpoints_are_validated_in_place() {
        let ok = format!(
            "{BASE}[discovery]\nendpoints = {{ static = [{{ name = \"b0\", address = \"127.0.0.1:1883\" }}] }}\ndrain = true\n"
        );
        let config = LbConfig::parse(Path::new("lb.toml"), &ok).unwrap();
        assert!(discovery_source(&config).is_some());
        assert!(config.discovery.unwrap().template.drain);

        let bad =
            format!("{BASE}[discovery]\nendpoints = {{ static = [{{ address = \"nope\" }}] }}\n");
        let err = LbConfig::parse(Path::new("lb.toml"), &bad).unwrap_err();
        assert_eq!(err.problems[0].line, 7, "{err}");
        assert!(err.to_string().contains("lb.toml:7:"), "{err}");

        let unknown = format!("{BASE}[discovery]\nendpoints = {{ static = [], dns2 = 1 }}\n");
        assert!(LbConfig::parse(Path::new("lb.toml"), &unknown).is_err());
    }
}
