//! Authentication of a CONNECT. This issue accepts every client (`anonymous = true`); the `[auth]` section of a
//! later issue plugs in here, with the PROXY identity (TLS certificate as the LB saw it) at hand.

use fleetgate_protocol::mqtt::{Connect, ConnectAckReason};

use crate::listener::ClientOrigin;

/// Decides whether `connect` from `origin` may proceed; `Err` is the CONNACK reason to refuse with.
pub fn authenticate(connect: &Connect, origin: &ClientOrigin) -> Result<(), ConnectAckReason> {
    // Anonymous access: nothing to check yet. Never log `connect.password`.
    let _ = (connect, origin);
    Ok(())
}
