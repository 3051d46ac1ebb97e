//! Who a client is as far as the transport tells: its address (the PROXY source, else the TCP peer) and the
//! identity a trusted balancer put in the PROXY v2 header. Read by the connection's handshake, handed to
//! authentication ([`crate::access`]) and the logs.

use std::net::SocketAddr;

use fleetgate_protocol::proxy::PeerIdentity;

/// Where a connection comes from.
#[derive(Debug, Clone)]
pub(crate) struct ClientOrigin {
    /// The client's address: the PROXY source when present, else the TCP peer.
    pub(crate) source: SocketAddr,
    /// Identity from the PROXY header (TLS, certificate), for authentication; `None` without a header.
    pub(crate) identity: Option<Box<PeerIdentity>>,
}

impl ClientOrigin {
    /// A connection without a PROXY header: the TCP peer is the client.
    pub(crate) fn direct(peer: SocketAddr) -> ClientOrigin {
        ClientOrigin {
            source: peer,
            identity: None,
        }
    }
}
