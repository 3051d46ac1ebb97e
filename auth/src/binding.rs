//! Client-ID binding and session ownership. A client ID is *bound* to an identity by the listener's
//! `client_id_template` (policies `client_id_from_cert` and `bind_client_id`, rendered here by [`check_template`])
//! and by the ACL's `[[client_ids]]` entries ([`ClientIdRules`]); how tightly is a [`ClientIdBinding`]. The
//! authenticator refuses a CONNECT whose client ID a binding does not admit (`client_id_mismatch`); the broker asks
//! [`claim_session`] before it attaches a connection to a session another identity holds under the same client
//! ID. Pure, like the rest of the decisions.
//!
//! Same identity ([`Principal::same_identity`]): the same method and the same proven names — the username for a
//! password user, the CN and the username taken from the certificate for a certificate user, all of them for
//! both; every anonymous client is one identity.

use std::collections::HashSet;

use fleetgate_config::acl::{ClientIdPattern, ClientIdRuleConfig, Match};
use fleetgate_config::node::{ClientIdTemplate, TemplatePiece};

use crate::acl::selects;
use crate::decision::{AuthFailure, Principal};
use crate::policy::VerifiedCert;

/// How tightly a configured binding ties a client's ID to its identity; the tightest of all bindings that
/// applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClientIdBinding {
    /// No binding applies: the client may use any client ID.
    Unbound,
    /// A prefix binding (`{username}-*`, `"alice-*"`) admitted the ID; others may share that prefix space.
    Prefix,
    /// An exact binding (`{cn}`, `"truck-17"`) admitted the ID: it is this identity's.
    Exact,
}

/// What a connection may do with the session another connection left (or holds) under its client ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionClaim {
    /// The session is the claimant's own (same identity, or nobody's): resume or take over as usual.
    Own,
    /// Another identity holds the session, but the claimant's binding gives it the client ID: that session ends
    /// (its will is due, nothing of it carries over) and the claimant starts a new one.
    Reclaim,
    /// Another identity holds the session and nothing gives the claimant its client ID: refused
    /// (`session_owner_mismatch`), the session untouched.
    Refused,
}

/// May `claimant`, admitted with `binding`, attach to the session `owner` holds (`None`: a session without a
/// known owner, from before authentication)? An exact binding reclaims the ID from anyone; a prefix binding only
/// from an anonymous client (two users' prefixes can overlap, an anonymous client never owns a bound ID); an
/// anonymous claimant never takes an authenticated identity's session.
pub fn claim_session(
    claimant: &Principal,
    binding: ClientIdBinding,
    owner: Option<&Principal>,
) -> SessionClaim {
    let Some(owner) = owner else {
        return SessionClaim::Own;
    };
    if claimant.same_identity(owner) {
        return SessionClaim::Own;
    }
    if !claimant.is_authenticated() {
        return SessionClaim::Refused;
    }
    match binding {
        ClientIdBinding::Exact => SessionClaim::Reclaim,
        ClientIdBinding::Prefix if !owner.is_authenticated() => SessionClaim::Reclaim,
        _ => SessionClaim::Refused,
    }
}

/// How `template` binds `client_id` for a client with this certificate and proven username: `None` when it does
/// not admit it (or a value the template needs is missing or empty).
pub(crate) fn check_template(
    template: &ClientIdTemplate,
    client_id: &str,
    cert: Option<&VerifiedCert<'_>>,
    username: Option<&str>,
) -> Option<ClientIdBinding> {
    let mut expected = String::new();
    for piece in template.pieces() {
        match piece {
            TemplatePiece::Text(t) => expected.push_str(t),
            TemplatePiece::Field(f) => expected.push_str(cert?.field(*f)?),
            TemplatePiece::Username => expected.push_str(username.filter(|u| !u.is_empty())?),
        }
    }
    if template.is_prefix() {
        client_id
            .starts_with(&expected)
            .then_some(ClientIdBinding::Prefix)
    } else {
        (client_id == expected).then_some(ClientIdBinding::Exact)
    }
}

/// One `[[client_ids]]` entry, ready for lookups: exact IDs in a set (a generated file may list a whole fleet),
/// prefixes in order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ClientIdRule {
    matcher: Match,
    exact: HashSet<String>,
    prefixes: Vec<String>,
}

/// The ACL's `[[client_ids]]` entries: the first whose `match` selects a client decides which IDs it may use.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct ClientIdRules {
    rules: Vec<ClientIdRule>,
}

impl ClientIdRules {
    /// The entries of a validated ACL file.
    pub(crate) fn new(config: Vec<ClientIdRuleConfig>) -> Self {
        let rules = config
            .into_iter()
            .map(|c| {
                let mut rule = ClientIdRule {
                    matcher: c.matcher,
                    exact: HashSet::new(),
                    prefixes: Vec::new(),
                };
                for pattern in c.allow {
                    match pattern {
                        ClientIdPattern::Exact(id) => {
                            rule.exact.insert(id);
                        }
                        ClientIdPattern::Prefix(p) => rule.prefixes.push(p),
                    }
                }
                rule
            })
            .collect();
        Self { rules }
    }

    /// How the entries bind `principal`'s client ID: `Unbound` when no entry selects it, the binding when the
    /// deciding entry admits the ID, `ClientIdMismatch` when it does not.
    pub(crate) fn check(&self, principal: &Principal) -> Result<ClientIdBinding, AuthFailure> {
        let Some(rule) = self.rules.iter().find(|r| selects(&r.matcher, principal)) else {
            return Ok(ClientIdBinding::Unbound);
        };
        let id = principal.client_id.as_str();
        if rule.exact.contains(id) {
            Ok(ClientIdBinding::Exact)
        } else if rule.prefixes.iter().any(|p| id.starts_with(p.as_str())) {
            Ok(ClientIdBinding::Prefix)
        } else {
            Err(AuthFailure::ClientIdMismatch)
        }
    }
}

#[cfg(test)]
#[path = "binding_tests.rs"]
mod tests;
