//! MQTT listeners: bind (logging `event="listening"`), then accept and spawn one task per connection at once
//! ([`crate::conn::serve`]); nothing is read in the accept loop.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fleetgate_config::node::{ListenerConfig, ProxyMode};
use fleetgate_protocol::proxy::{ProxyPolicy, TrustedProxies};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::Access;
use crate::broker::Broker;
use crate::cluster::Cluster;
use crate::conn::{self, Context};
use crate::events;

/// After an accept error (e.g. out of file descriptors), pause instead of spinning.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// A bound MQTT listener and what its connections share.
#[derive(Debug)]
pub(crate) struct Listener {
    socket: TcpListener,
    /// The bound address.
    pub(crate) local_addr: SocketAddr,
    context: Arc<Context>,
}

impl Listener {
    /// Binds `config.bind` and logs the bound address.
    pub(crate) async fn bind(
        config: &ListenerConfig,
        access: Arc<Access>,
        broker: Arc<Broker>,
        cluster: Option<Arc<Cluster>>,
    ) -> io::Result<Listener> {
        let socket = TcpListener::bind(config.bind).await?;
        let local_addr = socket.local_addr()?;
        let proxy = match config.proxy_protocol {
            ProxyMode::Off => None,
            ProxyMode::Required => Some(ProxyPolicy {
                timeout: config.proxy_timeout,
                ..ProxyPolicy::new(TrustedProxies::new(config.trusted_proxies.clone()))
            }),
        };
        events::listening("mqtt", local_addr);
        let context = Arc::new(Context {
            proxy,
            listener: config.name.clone().unwrap_or_default(),
            access,
            broker,
            cluster,
        });
        Ok(Listener {
            socket,
            local_addr,
            context,
        })
    }

    /// Accepts until `shutdown`; each connection runs in its own task on `tracker` and ends at `conns` (later
    /// than `shutdown` in a cluster, which first hands the sessions to other nodes).
    pub(crate) async fn accept_loop(
        self,
        tracker: TaskTracker,
        shutdown: CancellationToken,
        conns: CancellationToken,
    ) {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = self.socket.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    tracker.spawn(conn::serve(
                        stream,
                        peer,
                        self.context.clone(),
                        conns.clone(),
                    ));
                }
                Err(e) => {
                    tracing::warn!(event = "accept_failed", role = "mqtt", error = %e, "accept failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => {}
                    }
                }
            }
        }
    }
}
