//! MQTT listeners: bind (logging `event="listening"`), accept and spawn one task per connection at once, and
//! the first stage of every connection — the PROXY header, when the listener requires one.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fleetgate_config::node::{ListenerConfig, ProxyMode};
use fleetgate_protocol::proxy::{
    self, PeerIdentity, ProxyCommand, ProxyError, ProxyPolicy, TrustedProxies,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::AuthState;
use crate::broker::Broker;
use crate::{conn, events};

/// After an accept error (e.g. out of file descriptors), pause instead of spinning.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// What every connection of one listener shares.
#[derive(Debug)]
pub struct ListenerCtx {
    /// The bound address.
    pub local_addr: SocketAddr,
    /// The PROXY policy when the listener requires a header.
    pub proxy: Option<ProxyPolicy>,
    /// The listener's configured name (`""` when unnamed): selects its `[auth.listeners.<name>]` policy.
    pub name: String,
    /// Authentication and ACL state shared by every listener.
    pub auth: Arc<AuthState>,
}

/// Binds `config.bind` and logs the bound address.
pub async fn bind(
    config: &ListenerConfig,
    auth: Arc<AuthState>,
) -> io::Result<(TcpListener, Arc<ListenerCtx>)> {
    let listener = TcpListener::bind(config.bind).await?;
    let local_addr = listener.local_addr()?;
    let proxy = match config.proxy_protocol {
        ProxyMode::Off => None,
        ProxyMode::Required => Some(ProxyPolicy {
            timeout: config.proxy_timeout,
            ..ProxyPolicy::new(TrustedProxies::new(config.trusted_proxies.clone()))
        }),
    };
    events::listening("mqtt", local_addr);
    let ctx = ListenerCtx {
        local_addr,
        proxy,
        name: config.name.clone().unwrap_or_default(),
        auth,
    };
    Ok((listener, Arc::new(ctx)))
}

/// Accepts until `shutdown`; each connection runs in its own task on `tracker` and ends at `conns` (later than
/// `shutdown` in a cluster, which first hands the sessions to other nodes).
pub async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<ListenerCtx>,
    broker: Arc<Broker>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    conns: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                tracker.spawn(conn::serve(
                    stream,
                    peer,
                    ctx.clone(),
                    broker.clone(),
                    conns.clone(),
                ));
            }
            Err(e) => {
                tracing::warn!(event = "accept_error", role = "mqtt", error = %e, "accept failed");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => {}
                }
            }
        }
    }
}

/// Who the client is, as far as the transport tells.
#[derive(Debug, Clone)]
pub struct ClientOrigin {
    /// The client's address: the PROXY source when present, else the TCP peer.
    pub source: SocketAddr,
    /// The TCP peer (the LB when proxied).
    pub peer: SocketAddr,
    /// Identity from the PROXY header (TLS, certificate), for authentication.
    pub identity: Option<Box<PeerIdentity>>,
}

/// Stage 1: reads the PROXY header when the listener requires one (rejecting untrusted peers before reading);
/// a LOCAL command (LB health check) proceeds with the peer's own address.
pub async fn read_proxy(
    stream: &mut TcpStream,
    peer: SocketAddr,
    ctx: &ListenerCtx,
) -> Result<ClientOrigin, ProxyError> {
    let Some(policy) = &ctx.proxy else {
        return Ok(ClientOrigin {
            source: peer,
            peer,
            identity: None,
        });
    };
    let header = proxy::read_header(stream, peer, policy).await?;
    let source = match header.command {
        ProxyCommand::Local => peer,
        ProxyCommand::Proxy => header.source.unwrap_or(peer),
    };
    Ok(ClientOrigin {
        source,
        peer,
        identity: Some(Box::new(header.identity)),
    })
}
