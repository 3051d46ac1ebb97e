//! Hot reload of authentication and authorization, beside the connection pipeline: on SIGHUP or when the node
//! config, the password file or the ACL file changes on disk (watched through their directories by
//! `fleetgate_config::watch`), [`Access::reload`] builds a new generation off the hot path and swaps it with
//! one store. A broken file keeps the old generation; the error names every problem as `file:line:column`.

use std::sync::Arc;
use std::time::Duration;

use fleetgate_config::watch::{self, ConfigWatcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Access;
use crate::{events, metrics};

/// Quiet time after the last file event before reloading: one editor save or one ConfigMap swap is several
/// events, and reading a half-written file would only produce a spurious error.
pub(crate) const WATCH_DEBOUNCE: Duration = Duration::from_millis(200);

/// Starts the reload task: it runs until `shutdown`. `sighup` is the receiver of `fleetgate_ops::signals::spawn`.
pub(crate) fn spawn(
    state: Arc<Access>,
    sighup: Option<mpsc::Receiver<()>>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(run(state, sighup, shutdown))
}

async fn run(
    state: Arc<Access>,
    mut sighup: Option<mpsc::Receiver<()>>,
    shutdown: CancellationToken,
) {
    let mut watcher = start_watcher(&state);
    loop {
        let trigger = tokio::select! {
            _ = shutdown.cancelled() => return,
            () = next_signal(&mut sighup) => "sighup",
            () = next_change(&mut watcher) => "file_changed",
        };
        match state.reload() {
            Ok(generation) => {
                events::config_reload("auth", trigger, None);
                metrics::config_reload("ok");
                // A reload may name new files (another ACL path); watch those too.
                if let Some(w) = watcher.as_mut() {
                    for f in &generation.files {
                        if let Err(e) = w.add(f) {
                            tracing::warn!(event = "watch_error", error = %e, "cannot watch an auth file");
                        }
                    }
                }
            }
            Err(e) => {
                events::config_reload("auth", trigger, Some(&e));
                metrics::config_reload("error");
            }
        }
    }
}

/// Watches every file of the current generation; `None` (reload on SIGHUP only) when nothing can be watched.
fn start_watcher(state: &Access) -> Option<ConfigWatcher> {
    let files = state.current().files.clone();
    let (first, rest) = files.split_first()?;
    let mut watcher = match watch::watch(first, WATCH_DEBOUNCE) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(event = "watch_error", error = %e, "auth files are reloaded on SIGHUP only");
            return None;
        }
    };
    for f in rest {
        if let Err(e) = watcher.add(f) {
            tracing::warn!(event = "watch_error", error = %e, "cannot watch an auth file");
        }
    }
    Some(watcher)
}

/// The next SIGHUP; never resolves once the sender is gone (or without one).
async fn next_signal(rx: &mut Option<mpsc::Receiver<()>>) {
    if let Some(r) = rx {
        if r.recv().await.is_some() {
            return;
        }
        *rx = None;
    }
    std::future::pending().await
}

/// The next debounced file change; never resolves once the watcher stopped (or without one).
async fn next_change(watcher: &mut Option<ConfigWatcher>) {
    if let Some(w) = watcher {
        if w.changed().await.is_some() {
            return;
        }
        *watcher = None;
    }
    std::future::pending().await
}
