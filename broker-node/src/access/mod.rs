//! Access control at the node: authentication at CONNECT (stage 4 of [`crate::conn`]) and the ACL checks of
//! PUBLISH, SUBSCRIBE and wills. The decisions themselves are the `fleetgate_auth` crate's; this module holds the
//! process-wide [`Access`] (one `ArcSwap` of an [`AccessGeneration`], swapped whole by [`reload`]), turns a
//! CONNECT plus its PROXY identity into a [`ClientAccess`], and answers ACL checks for one connection.
//!
//! A connection's client ID binding ([`ClientIdBinding`]) travels with its [`ClientAccess`] to the broker, which
//! decides with it whether the connection may take over a session another identity holds
//! (`fleetgate_auth::claim_session`); a refusal is logged and counted here ([`Access::refuse_session`]).
//!
//! Trust: the only certificate identity is the one in the PROXY v2 TLVs of a listener that requires the header
//! from trusted CIDRs (the PROXY stage of [`crate::conn`]); `PeerIdentity::cert_verified` is set by the protocol
//! crate only when CERT_CONN/CERT_SESS is set and verify == 0. A listener without PROXY has no certificate
//! identity.
//!
//! - [`reload`]: hot reload on SIGHUP or when one of the files changes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use fleetgate_auth::{
    AclDecision, AuthDecision, AuthFailure, AuthMethod, AuthSnapshot, Authenticator, ClientAcl,
    ClientIdBinding, Credentials, Principal,
};
use fleetgate_config::load::ConfigError;
use fleetgate_config::node::{AuthConfig, NodeConfig};
use fleetgate_protocol::mqtt::{Connect, ConnectAckReason, ProtocolLevel, topic};
use fleetgate_protocol::proxy::PeerIdentity;

use crate::origin::ClientOrigin;
use crate::{events, metrics};

pub(crate) mod reload;

/// Everything authentication and authorization read, of one configuration generation.
#[derive(Debug)]
pub(crate) struct AccessGeneration {
    /// Policies, ACL and password file.
    pub(crate) snapshot: AuthSnapshot,
    /// False when the node config has no `[auth]` section: anonymous access and no ACL checks at all (the
    /// behaviour of a node before authentication existed).
    pub(crate) enabled: bool,
    /// `[auth] v3_disconnect_on_denied_publish`.
    pub(crate) v3_disconnect_on_denied_publish: bool,
    /// The files this generation was read from; the reload task watches them.
    pub(crate) files: Vec<PathBuf>,
}

impl AccessGeneration {
    fn disabled(files: Vec<PathBuf>) -> AccessGeneration {
        AccessGeneration {
            snapshot: AuthSnapshot::anonymous(),
            enabled: false,
            v3_disconnect_on_denied_publish: false,
            files,
        }
    }
}

/// Process-wide authentication state: the current generation and the authenticator (password verifier and
/// brute-force bans, which outlive reloads).
#[derive(Debug)]
pub(crate) struct Access {
    current: ArcSwap<AccessGeneration>,
    authenticator: Authenticator,
    config_path: Option<PathBuf>,
    listener_names: Vec<String>,
}

impl Access {
    /// No `[auth]` and nothing to reload: every client admitted anonymously (in-process tests, embedders).
    pub(crate) fn disabled() -> Arc<Access> {
        Arc::new(Access {
            current: ArcSwap::from_pointee(AccessGeneration::disabled(Vec::new())),
            authenticator: Authenticator::default(),
            config_path: None,
            listener_names: Vec::new(),
        })
    }

    /// Reads the files named by the `[auth]` section of `node` (the config loaded from `path`); reloads re-read
    /// that section of the same path.
    pub(crate) fn load(path: &Path, node: &NodeConfig) -> Result<Arc<Access>, ConfigError> {
        let listener_names: Vec<String> = node
            .listeners
            .iter()
            .filter_map(|l| l.name.clone())
            .collect();
        let generation = build(path, node.auth.as_ref())?;
        let authenticator = node
            .auth
            .as_ref()
            .map_or_else(Authenticator::default, Authenticator::from_config);
        Ok(Arc::new(Access {
            current: ArcSwap::from_pointee(generation),
            authenticator,
            config_path: Some(path.to_path_buf()),
            listener_names,
        }))
    }

    /// The current generation.
    pub(crate) fn current(&self) -> Arc<AccessGeneration> {
        self.current.load_full()
    }

    /// Builds a new generation from the files and swaps it in with one store; on error the old one stays.
    pub(crate) fn reload(&self) -> Result<Arc<AccessGeneration>, ConfigError> {
        let Some(path) = &self.config_path else {
            return Ok(self.current());
        };
        let config = AuthConfig::load(path, &self.listener_names)?;
        let generation = build(path, config.as_ref())?;
        if let Some(c) = &config {
            self.authenticator.set_failure_limits(c.brute_force);
        }
        let generation = Arc::new(generation);
        self.current.store(generation.clone());
        Ok(generation)
    }

    /// Decides a CONNECT that arrived on listener `listener` (its configured name, `""` when unnamed).
    pub(crate) async fn authenticate(
        self: &Arc<Self>,
        listener: &str,
        connect: &Connect,
        origin: &ClientOrigin,
    ) -> Result<ClientAccess, AuthFailure> {
        let generation = self.current();
        if !generation.enabled {
            let principal = Principal {
                username: None,
                cn: None,
                client_id: connect.client_id.to_string(),
                method: AuthMethod::Anonymous,
            };
            return Ok(self.conn_auth(principal, ClientIdBinding::Unbound, generation));
        }
        let no_identity = PeerIdentity::default();
        let identity = origin.identity.as_deref().unwrap_or(&no_identity);
        let creds = Credentials {
            client_id: &connect.client_id,
            username: connect.username.as_deref(),
            password: connect.password.as_deref(),
        };
        let decision = self
            .authenticator
            .authenticate(
                &generation.snapshot,
                listener,
                &creds,
                identity,
                Some(origin.source.ip()),
            )
            .await;
        match decision {
            AuthDecision::Allow(principal, binding) => {
                Ok(self.conn_auth(principal, binding, generation))
            }
            AuthDecision::Refuse { reason } => Err(reason),
        }
    }

    fn conn_auth(
        self: &Arc<Self>,
        principal: Principal,
        binding: ClientIdBinding,
        generation: Arc<AccessGeneration>,
    ) -> ClientAccess {
        let acl = generation
            .enabled
            .then(|| generation.snapshot.acl().bind(&principal));
        ClientAccess {
            state: self.clone(),
            principal: Arc::new(principal),
            binding,
            generation,
            acl,
        }
    }

    /// Logs and counts a CONNECT refused because its client ID's session belongs to another identity
    /// (`auth_failed reason="session_owner_mismatch"`, with the other refusals' metric).
    pub(crate) fn refuse_session(&self, client_id: &str, source: SocketAddr) {
        let failure = AuthFailure::SessionOwnerMismatch;
        self.authenticator.record_refusal(failure);
        refused(client_id, source, failure);
    }
}

/// The generation of the `[auth]` section `config` of the node config at `path`: reads the files it names,
/// reporting the problems of both at once.
fn build(path: &Path, config: Option<&AuthConfig>) -> Result<AccessGeneration, ConfigError> {
    let Some(config) = config else {
        return Ok(AccessGeneration::disabled(vec![path.to_path_buf()]));
    };
    let snapshot = AuthSnapshot::load(config)?;
    let mut files = vec![path.to_path_buf()];
    files.extend(config.password_file.iter().cloned());
    files.extend(config.acl_file.iter().cloned());
    Ok(AccessGeneration {
        snapshot,
        enabled: true,
        v3_disconnect_on_denied_publish: config.v3_disconnect_on_denied_publish,
        files,
    })
}

/// The CONNACK reason for a refused CONNECT. MQTT 3.1.1 codes come from [`AuthFailure::v3_code`]: the v5 reason
/// is chosen so that the codec's v5 → v3 conversion yields exactly that code.
pub(crate) fn connack_reason(failure: AuthFailure, level: ProtocolLevel) -> ConnectAckReason {
    if level.is_v5() {
        return ConnectAckReason::try_from(failure.v5_code())
            .unwrap_or(ConnectAckReason::NotAuthorized);
    }
    match failure.v3_code() {
        // 3.1.1 "Identifier rejected"
        0x02 => ConnectAckReason::ClientIdentifierNotValid,
        // 3.1.1 "Bad user name or password"
        0x04 => ConnectAckReason::BadUserNameOrPassword,
        // 3.1.1 "Not authorized"
        0x05 => ConnectAckReason::NotAuthorized,
        // 3.1.1 "Server unavailable"
        _ => ConnectAckReason::ServerUnavailable,
    }
}

/// What an ACL check is about (log field and metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AccessKind {
    /// A PUBLISH from the client.
    Publish,
    /// A SUBSCRIBE filter.
    Subscribe,
    /// The client's will, at the moment it would be published.
    Will,
}

impl AccessKind {
    /// Label for logs and metrics.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AccessKind::Publish => "publish",
            AccessKind::Subscribe => "subscribe",
            AccessKind::Will => "will",
        }
    }
}

/// One connection's authenticated identity and its ACL, re-bound when a reload swapped the generation.
#[derive(Debug)]
pub(crate) struct ClientAccess {
    state: Arc<Access>,
    principal: Arc<Principal>,
    /// How tightly the client ID is bound to `principal` (at CONNECT; not re-evaluated on reload).
    binding: ClientIdBinding,
    generation: Arc<AccessGeneration>,
    /// `None` when auth is disabled: everything allowed.
    acl: Option<ClientAcl>,
}

impl ClientAccess {
    /// Close a 3.1.1 client whose PUBLISH was denied, per the current generation.
    pub(crate) fn v3_disconnect_on_denied_publish(&self) -> bool {
        self.generation.v3_disconnect_on_denied_publish
    }

    /// Re-binds the ACL when a reload swapped the generation (one pointer compare per check otherwise).
    fn refresh(&mut self) {
        let current = self.state.current.load();
        if !Arc::ptr_eq(&current, &self.generation) {
            self.generation = Arc::clone(&current);
            self.acl = self
                .generation
                .enabled
                .then(|| self.generation.snapshot.acl().bind(&self.principal));
        }
    }

    /// May the client publish to `topic`? A denial is logged and counted.
    pub(crate) fn may_publish(&mut self, topic: &str) -> bool {
        self.refresh();
        let decision = self
            .acl
            .as_ref()
            .map_or(AclDecision::Allow, |acl| acl.check_publish(topic));
        allowed(
            decision,
            &self.principal.client_id,
            topic,
            AccessKind::Publish,
        )
    }

    /// May the client subscribe to `filter` (a `$share/<group>/` prefix is checked as the plain filter)?
    pub(crate) fn may_subscribe(&mut self, filter: &str) -> bool {
        self.refresh();
        let (_, plain) = topic::split_shared(filter);
        let decision = self
            .acl
            .as_ref()
            .map_or(AclDecision::Allow, |acl| acl.check_subscribe(plain));
        allowed(
            decision,
            &self.principal.client_id,
            filter,
            AccessKind::Subscribe,
        )
    }

    /// The client's identity, for checks made after the connection ended (its will).
    pub(crate) fn principal(&self) -> &Arc<Principal> {
        &self.principal
    }

    /// The access state this connection was admitted under.
    pub(crate) fn access(&self) -> &Arc<Access> {
        &self.state
    }

    /// How tightly the client ID is bound to the principal: what the broker weighs when the client ID's session
    /// belongs to another identity.
    pub(crate) fn binding(&self) -> ClientIdBinding {
        self.binding
    }
}

impl Access {
    /// May `principal` hold a subscription to `filter` (a handed-over session's, checked again by this node's
    /// ACL)? A denial is logged and counted.
    pub(crate) fn subscription_allowed(&self, principal: &Principal, filter: &str) -> bool {
        let generation = self.current();
        if !generation.enabled {
            return true;
        }
        let (_, plain) = topic::split_shared(filter);
        let decision = generation
            .snapshot
            .acl()
            .bind(principal)
            .check_subscribe(plain);
        allowed(
            decision,
            &principal.client_id,
            filter,
            AccessKind::Subscribe,
        )
    }

    /// May `principal`'s will go to `topic`, by the ACL current now (not the one of its CONNECT: the ACL may
    /// have been reloaded in between, and a delayed will may be published long after)? A denial is logged and
    /// counted.
    pub(crate) fn will_allowed(&self, principal: &Principal, topic: &str) -> bool {
        let generation = self.current();
        if !generation.enabled {
            return true;
        }
        let decision = generation
            .snapshot
            .acl()
            .bind(principal)
            .check_publish(topic);
        allowed(decision, &principal.client_id, topic, AccessKind::Will)
    }
}

fn allowed(decision: AclDecision, client_id: &str, topic: &str, access: AccessKind) -> bool {
    match decision {
        AclDecision::Allow => true,
        AclDecision::Deny { rule_index } => {
            events::acl_denied(client_id, topic, access.as_str(), rule_index);
            metrics::acl_denied(access.as_str());
            false
        }
    }
}

/// Logs a refused CONNECT: reason and source address only — never the password, and never the username (a
/// client may have typed its password there).
pub(crate) fn refused(client_id: &str, source: SocketAddr, failure: AuthFailure) {
    events::auth_failed(client_id, source, failure.reason());
}

#[cfg(test)]
mod tests;
