//! Signals: how an operator (or Kubernetes) talks to a running process — SIGTERM/SIGINT start the shutdown,
//! SIGHUP asks for a config reload.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Capacity of the reload channel: one pending reload is enough, since a reload reads the latest file anyway;
/// further SIGHUPs while one is pending are coalesced into it.
const RELOAD_QUEUE: usize = 1;

/// Listens for signals until `shutdown` is cancelled: SIGTERM or SIGINT cancel `shutdown`; each SIGHUP sends `()`
/// on the returned channel. Must be called inside a tokio runtime.
///
/// If a signal handler cannot be installed, a warning is logged and that signal is simply not handled.
pub fn spawn(shutdown: CancellationToken) -> mpsc::Receiver<()> {
    let (reload_tx, reload_rx) = mpsc::channel(RELOAD_QUEUE);
    for (kind, name) in [
        (SignalKind::terminate(), "SIGTERM"),
        (SignalKind::interrupt(), "SIGINT"),
    ] {
        match signal(kind) {
            Ok(mut stream) => {
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        Some(()) = stream.recv() => {
                            tracing::info!(event = "signal", signal = name, "shutting down");
                            shutdown.cancel();
                        }
                    }
                });
            }
            Err(e) => {
                tracing::warn!(event = "signal", signal = name, error = %e, "cannot install handler")
            }
        }
    }
    match signal(SignalKind::hangup()) {
        Ok(mut stream) => {
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        got = stream.recv() => {
                            if got.is_none() {
                                break;
                            }
                            tracing::info!(event = "signal", signal = "SIGHUP", "reload requested");
                            // Full means a reload is already pending; closed means nobody reloads.
                            let _ = reload_tx.try_send(());
                        }
                    }
                }
            });
        }
        Err(e) => {
            tracing::warn!(event = "signal", signal = "SIGHUP", error = %e, "cannot install handler")
        }
    }
    reload_rx
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING)
mod tests {
    use super::*;
    use std::time::Duration;

    fn send(signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    // The only test in this crate that signals its own process: once tokio has installed a handler, the signal's
    // default action (terminate) no longer applies.
    #[tokio::test]
    async fn hup_reloads_and_term_shuts_down() {
        let shutdown = CancellationToken::new();
        let mut reload = spawn(shutdown.clone());
        send("-HUP");
        tokio::time::timeout(Duration::from_secs(5), reload.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(!shutdown.is_cancelled());
        send("-TERM");
        tokio::time::timeout(Duration::from_secs(5), shutdown.cancelled())
            .await
            .unwrap();
    }
}
