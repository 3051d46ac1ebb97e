//! The accept loop of one listener: accepts sockets and spawns [`conn::handle`] for each at once, so a slow
//! handshake or a slow client never stalls the next accept. Loops are keyed by listener name: a reload keeps a
//! loop whose name and bind address are unchanged, and starts a new socket's loop before stopping the old one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Gauge;
use crate::conn;
use crate::shared::Shared;

/// Pause after an accept error (typically EMFILE: out of file descriptors) so the loop does not spin while
/// connections close and free descriptors.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// A listener's bound socket, not yet accepting.
#[derive(Debug)]
pub(crate) struct Bound {
    /// The listener's name.
    pub(crate) name: String,
    /// The configured address (a reload keeps a loop whose address is unchanged).
    pub(crate) bind: SocketAddr,
    /// The address bound (the port chosen for port 0).
    pub(crate) addr: SocketAddr,
    /// The socket.
    pub(crate) socket: TcpListener,
}

/// Binds `bind` for listener `name` and logs the `listening` event with the bound address.
pub(crate) async fn bind(name: &str, bind: SocketAddr) -> std::io::Result<Bound> {
    let socket = TcpListener::bind(bind).await?;
    let addr = socket.local_addr().unwrap_or(bind);
    tracing::info!(event = "listening", role = %name, addr = %addr, "listening on {name} {addr}");
    Ok(Bound {
        name: name.to_owned(),
        bind,
        addr,
        socket,
    })
}

/// Accepts on `listener` until `stop` is cancelled; connection tasks are tracked by `tracker`.
pub(crate) async fn accept_loop(
    shared: Arc<Shared>,
    name: Arc<str>,
    gauge: Arc<Gauge>,
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
                tracker.spawn(conn::handle(
                    shared.clone(),
                    name.clone(),
                    gauge.clone(),
                    stream,
                    peer,
                ));
            }
            Err(e) => {
                tracing::warn!(event = "accept_failed", error = %e);
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
}
