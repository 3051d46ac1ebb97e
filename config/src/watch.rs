//! Config watcher: tells a running binary that its config file (or a certificate it loaded) changed on disk, so
//! the reload path can re-read, validate and swap a new snapshot.
//!
//! We watch each file's *directory*, non-recursively, not the file itself: Kubernetes updates a mounted ConfigMap
//! or Secret by writing a fresh timestamped directory and atomically renaming the `..data` symlink onto it, so the
//! watched file's inode never changes and a watch on the file alone would never fire. Editors that save by
//! rename-over behave the same way. Events are filtered to the watched file names (and `..data`), then debounced
//! on a small thread, so one save or one ConfigMap swap (several inotify events) becomes one notification.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Name of the symlink Kubernetes swaps atomically when a mounted ConfigMap or Secret changes.
pub(crate) const CONFIGMAP_DATA_LINK: &str = "..data";

/// Notifications buffered for the reader: one pending change is enough, since a reload reads the latest state.
const CHANGED_QUEUE: usize = 1;

/// Why a watch could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The path has no file name or its directory could not be determined.
    #[error("cannot watch {path}: not a file path")]
    NotAFile {
        /// The path given.
        path: PathBuf,
    },
    /// The operating system watcher failed (directory missing, inotify limits, ...).
    #[error("cannot watch {path}: {source}")]
    Notify {
        /// The directory being watched.
        path: PathBuf,
        /// The underlying error.
        source: notify::Error,
    },
    /// The debounce thread could not be started.
    #[error("cannot start the config watcher thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Watched directories and, in each, the file names whose changes matter.
type Interest = Arc<Mutex<BTreeMap<PathBuf, BTreeSet<OsString>>>>;

/// A running watch; [`ConfigWatcher::changed`] resolves once per (debounced) change. Dropping it stops watching.
pub struct ConfigWatcher {
    watcher: RecommendedWatcher,
    interest: Interest,
    changed: mpsc::Receiver<()>,
}

impl std::fmt::Debug for ConfigWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigWatcher")
            .field("interest", &self.interest)
            .finish_non_exhaustive()
    }
}

/// Starts watching `path` (through its directory), delivering one notification per burst of changes that stays
/// quiet for `debounce`.
pub fn watch(path: &Path, debounce: Duration) -> Result<ConfigWatcher, WatchError> {
    let interest: Interest = Arc::default();
    let (raw_tx, raw_rx) = std::sync::mpsc::channel::<()>();
    let (changed_tx, changed) = mpsc::channel(CHANGED_QUEUE);

    let filter = interest.clone();
    let watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(event) if is_relevant(&event, &filter) => {
                // Err only when the debounce thread is gone, i.e. the watcher is being dropped.
                let _ = raw_tx.send(());
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(event = "config_watch_error", error = %e, "config watcher error")
            }
        })
        .map_err(|source| WatchError::Notify {
            path: path.to_path_buf(),
            source,
        })?;

    std::thread::Builder::new()
        .name("config-watch".into())
        .spawn(move || debounce_loop(raw_rx, changed_tx, debounce))
        .map_err(WatchError::Thread)?;

    let mut watcher = ConfigWatcher {
        watcher,
        interest,
        changed,
    };
    watcher.add(path)?;
    Ok(watcher)
}

impl ConfigWatcher {
    /// Also reports changes to `path` (e.g. a certificate or key file the config refers to).
    pub fn add(&mut self, path: &Path) -> Result<(), WatchError> {
        let not_a_file = || WatchError::NotAFile {
            path: path.to_path_buf(),
        };
        let absolute = std::path::absolute(path).map_err(|_| not_a_file())?;
        let name = absolute.file_name().ok_or_else(not_a_file)?.to_os_string();
        let dir = absolute.parent().ok_or_else(not_a_file)?.to_path_buf();
        let mut interest = self.interest.lock().unwrap_or_else(PoisonError::into_inner);
        if !interest.contains_key(&dir) {
            self.watcher
                .watch(&dir, RecursiveMode::NonRecursive)
                .map_err(|source| WatchError::Notify {
                    path: dir.clone(),
                    source,
                })?;
        }
        interest.entry(dir).or_default().insert(name);
        Ok(())
    }

    /// Waits for the next change; `None` if the watcher stopped (its thread ended).
    pub async fn changed(&mut self) -> Option<()> {
        self.changed.recv().await
    }
}

/// Whether `event` may change a watched file: a create, write, rename or removal of a watched name or of the
/// ConfigMap `..data` link in a watched directory. Reads (`Access`) are ignored, or every reload would trigger
/// the next one.
fn is_relevant(event: &notify::Event, interest: &Interest) -> bool {
    if matches!(event.kind, EventKind::Access(_)) {
        return false;
    }
    let interest = interest.lock().unwrap_or_else(PoisonError::into_inner);
    event.paths.iter().any(|p| {
        let (Some(dir), Some(name)) = (p.parent(), p.file_name()) else {
            return false;
        };
        interest
            .get(dir)
            .is_some_and(|names| names.contains(name) || name == OsStr::new(CONFIGMAP_DATA_LINK))
    })
}

/// Turns bursts of raw events into single notifications: after the first event, wait until `debounce` passes
/// with no further event, then notify. Ends when the watcher (the only sender) is dropped.
fn debounce_loop(
    raw: std::sync::mpsc::Receiver<()>,
    changed: mpsc::Sender<()>,
    debounce: Duration,
) {
    while raw.recv().is_ok() {
        loop {
            match raw.recv_timeout(debounce) {
                Ok(()) => continue,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
        match changed.try_send(()) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(())) => {}
            Err(mpsc::error::TrySendError::Closed(())) => return,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING)
mod tests {
    use super::*;

    const DEBOUNCE: Duration = Duration::from_millis(100);
    const DEADLINE: Duration = Duration::from_secs(10);

    fn scratch_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("fleetgate-watch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    async fn expect_change(w: &mut ConfigWatcher, what: &str) {
        tokio::time::timeout(DEADLINE, w.changed())
            .await
            .unwrap_or_else(|_| panic!("no notification for {what}"))
            .unwrap();
    }

    /// After a debounced notification, nothing else should arrive for a few debounce periods.
    async fn expect_quiet(w: &mut ConfigWatcher, what: &str) {
        let extra = tokio::time::timeout(DEBOUNCE * 5, w.changed()).await;
        assert!(extra.is_err(), "more than one notification for {what}");
    }

    #[tokio::test]
    async fn write_and_rename_swap_each_notify_once() {
        let dir = scratch_dir("swap");
        let file = dir.join("node.toml");
        let mut w = watch(&file, DEBOUNCE).unwrap();

        std::fs::write(&file, "a = 1\n").unwrap();
        expect_change(&mut w, "write").await;
        expect_quiet(&mut w, "write").await;

        // ConfigMap-style: write elsewhere, then atomically rename over the watched name.
        let tmp = dir.join("node.toml.tmp");
        std::fs::write(&tmp, "a = 2\n").unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        expect_change(&mut w, "rename swap").await;
        expect_quiet(&mut w, "rename swap").await;

        // Reading the file must not count as a change.
        let _ = std::fs::read_to_string(&file).unwrap();
        expect_quiet(&mut w, "read").await;

        // An unrelated file in the same directory is ignored.
        std::fs::write(dir.join("other.txt"), "x").unwrap();
        expect_quiet(&mut w, "unrelated file").await;
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn configmap_data_link_swap_and_added_paths_notify() {
        let dir = scratch_dir("configmap");
        let certs = scratch_dir("configmap-certs");
        let mut w = watch(&dir.join("lb.toml"), DEBOUNCE).unwrap();
        w.add(&certs.join("server.pem")).unwrap();

        let staged = dir.join("..data_tmp");
        std::os::unix::fs::symlink("..2026_01", &staged).unwrap();
        std::fs::rename(&staged, dir.join(CONFIGMAP_DATA_LINK)).unwrap();
        expect_change(&mut w, "..data swap").await;

        std::fs::write(certs.join("server.pem"), "cert").unwrap();
        expect_change(&mut w, "added path").await;
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(&certs).unwrap();
    }

    #[test]
    fn missing_directory_is_an_error() {
        let err = watch(Path::new("/nonexistent/fleetgate/x.toml"), DEBOUNCE).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/fleetgate"), "{err}");
    }
}
