//! The `[storage]` table of a node config: where sessions and retained messages live — in memory only (lost
//! when the process dies) or also on disk (an embedded store, committed before a message is acknowledged).
//!
//! ```toml
//! [storage]
//! mode = "disk"               # "memory" (default) | "disk"
//! path = "/var/lib/fleetgate" # the store's directory (relative: to the config file's directory)
//! max_bytes = "8GiB"          # disk the store may use; beyond it QoS 1/2 publishes are refused (0x97)
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::bytesize::ByteSize;

/// Default disk the store may take: far above a fleet's queued messages (a million 500-byte messages take
/// ~350 MB), far below a typical volume.
pub(crate) const DEFAULT_STORE_MAX_BYTES: u64 = 8 << 30;
/// Smallest accepted `max_bytes`: the store's own files (journal, tables) take a few MiB empty.
pub(crate) const MIN_STORE_MAX_BYTES: u64 = 64 << 20;

/// Raw `[storage]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StorageFile {
    /// `"memory"` or `"disk"`.
    pub(crate) mode: Option<Spanned<String>>,
    /// The store's directory (required for `disk`).
    pub(crate) path: Option<Spanned<String>>,
    /// Disk the store may use.
    pub(crate) max_bytes: Option<Spanned<ByteSize>>,
}

/// Where sessions and retained messages are kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StorageMode {
    /// In memory only: a process that dies loses them.
    #[default]
    Memory,
    /// Also on disk: an embedded store in `path`, written by group commit; a QoS 1/2 message for a persistent
    /// session is acknowledged to its publisher only once committed, and everything is read back at start.
    Disk {
        /// The store's directory.
        path: PathBuf,
        /// Disk the store may use.
        max_bytes: u64,
    },
}

/// Validates `[storage]`; relative paths are taken against `file`'s directory.
pub(crate) fn validate_storage(
    raw: &StorageFile,
    file: &Path,
    problem: &mut impl FnMut(std::ops::Range<usize>, String),
) -> StorageMode {
    let max_bytes = match &raw.max_bytes {
        None => DEFAULT_STORE_MAX_BYTES,
        Some(v) if v.get_ref().get() < MIN_STORE_MAX_BYTES as usize => {
            problem(
                v.span(),
                format!(
                    "max_bytes must be at least {}MiB",
                    MIN_STORE_MAX_BYTES >> 20
                ),
            );
            DEFAULT_STORE_MAX_BYTES
        }
        Some(v) => v.get_ref().get() as u64,
    };
    let mode = raw.mode.as_ref().map_or("memory", |m| m.get_ref().as_str());
    match mode {
        "memory" => {
            if let Some(p) = &raw.path {
                problem(p.span(), "path is only used with mode = \"disk\"".into());
            }
            StorageMode::Memory
        }
        "disk" => {
            let Some(path) = &raw.path else {
                let span = raw.mode.as_ref().map_or(0..0, Spanned::span);
                problem(
                    span,
                    "mode = \"disk\" needs path = \"<directory of the store>\"".into(),
                );
                return StorageMode::Memory;
            };
            if path.get_ref().trim().is_empty() {
                problem(path.span(), "path must not be empty".into());
                return StorageMode::Memory;
            }
            let base = file.parent().unwrap_or(Path::new(""));
            StorageMode::Disk {
                path: base.join(path.get_ref()),
                max_bytes,
            }
        }
        other => {
            let span = raw.mode.as_ref().map_or(0..0, Spanned::span);
            problem(
                span,
                format!("unknown storage mode {other:?} (expected \"memory\" or \"disk\")"),
            );
            StorageMode::Memory
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::node::NodeConfig;
    use std::path::Path;

    use super::StorageMode;

    const BASE: &str = "[node]\nname = \"n\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\n";

    fn parse(storage: &str) -> Result<NodeConfig, String> {
        NodeConfig::parse(
            Path::new("/etc/fleetgate/node.toml"),
            &format!("{BASE}{storage}"),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn memory_is_the_default() {
        assert_eq!(parse("").unwrap().storage, StorageMode::Memory);
    }

    #[test]
    fn disk_paths_are_relative_to_the_config_file() {
        let c =
            parse("[storage]\nmode = \"disk\"\npath = \"data\"\nmax_bytes = \"1GiB\"\n").unwrap();
        assert_eq!(
            c.storage,
            StorageMode::Disk {
                path: "/etc/fleetgate/data".into(),
                max_bytes: 1 << 30
            }
        );
    }

    #[test]
    fn mistakes_are_located() {
        let e = parse("[storage]\nmode = \"disk\"\n").unwrap_err();
        assert!(
            e.contains("node.toml:6:8") && e.contains("needs path"),
            "{e}"
        );
        let e = parse("[storage]\nmode = \"flash\"\n").unwrap_err();
        assert!(e.contains("unknown storage mode"), "{e}");
        let e =
            parse("[storage]\nmode = \"disk\"\npath = \"d\"\nmax_bytes = \"1MiB\"\n").unwrap_err();
        assert!(e.contains("at least 64MiB"), "{e}");
        let e = parse("[storage]\npath = \"d\"\n").unwrap_err();
        assert!(e.contains("only used with mode"), "{e}");
    }
}
