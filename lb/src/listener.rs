//! The accept loop of one listener: accepts sockets and spawns [`conn::handle`] for each at once, so a slow
//! handshake or a slow client never stalls the next accept.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::conn;
use crate::server::Shared;

/// Pause after an accept error (typically EMFILE: out of file descriptors) so the loop does not spin while
/// connections close and free descriptors.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts on `listener` until `stop` is cancelled; connection tasks are tracked by `tracker`.
pub async fn accept_loop(
    shared: Arc<Shared>,
    index: usize,
    listener: TcpListener,
    tracker: TaskTracker,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                tracker.spawn(conn::handle(shared.clone(), index, stream, peer));
            }
            Err(e) => {
                tracing::warn!(event = "accept_failed", error = %e);
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
}
