//! Authentication policy of one listener ([`ListenerPolicy`], built from the `PolicyConfig` that
//! `fleetgate_config::node` validated) and its pure evaluation at CONNECT: what the certificate (as proven by the
//! LB's PROXY identity, [`VerifiedCert`]) and the CONNECT's credentials allow. The password itself is checked outside
//! (asynchronously, [`crate::verify`]); evaluation stops at [`Evaluation::NeedsPassword`] when one is due.
//!
//! Policies combine by conjunction — every configured policy must pass:
//! - `certificate`: a certificate the LB verified (`PeerIdentity::cert_verified`) is required.
//! - `client_id_from_cert`: the client ID must equal the template over the certificate (implies a certificate).
//! - `username_from_cert`: the username is taken from the certificate (implies a certificate); the username in
//!   the CONNECT is ignored, never a fallback.
//! - `password`: username and password must match the password file (with `username_from_cert`, the
//!   certificate's username is the one checked).
//! - `bind_client_id`: an authenticated client's ID must match the template over its identity (`{username}`,
//!   certificate fields, a trailing `*` for a prefix). With a password, a mismatch is reported only once the
//!   password matched, so the refusal never tells whether a user exists.
//! - `anonymous = true`: a client with no credentials at all gets in as anonymous; allowed alone or with
//!   `password` only (with a certificate policy it would be a bypass, so the config refuses that).
//!
//! The certificate fields are read only when `cert_verified` is set; an unverified identity counts as none.

use std::fmt;

use fleetgate_config::node::{CertField, PolicyConfig, SanKind};
use fleetgate_protocol::proxy::PeerIdentity;

use crate::binding::{ClientIdBinding, check_template};
use crate::decision::{AuthDecision, AuthFailure, AuthMethod, Principal};

/// The certificate fields of a PROXY identity, available only when the LB verified the certificate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct VerifiedCert<'a> {
    /// Subject CN.
    pub(crate) cn: Option<&'a str>,
    /// SANs, kind-prefixed (`DNS:`, `URI:`, `EMAIL:`, `IP:`).
    pub(crate) sans: &'a [String],
}

impl<'a> VerifiedCert<'a> {
    /// The verified certificate of `identity`, or `None` when it was not verified (whatever else it claims).
    pub(crate) fn from_identity(identity: &'a PeerIdentity) -> Option<Self> {
        identity.cert_verified.then(|| VerifiedCert {
            cn: identity.cn.as_deref(),
            sans: &identity.sans,
        })
    }

    /// The value of `field` in this certificate; `None` when absent or empty.
    pub(crate) fn field(&self, field: CertField) -> Option<&'a str> {
        let value = match field {
            CertField::Cn => self.cn?,
            CertField::San(kind) => {
                let prefix = match kind {
                    SanKind::Dns => "DNS:",
                    SanKind::Uri => "URI:",
                    SanKind::Email => "EMAIL:",
                    SanKind::Ip => "IP:",
                };
                self.sans.iter().find_map(|s| s.strip_prefix(prefix))?
            }
        };
        (!value.is_empty()).then_some(value)
    }
}

/// The authentication policy of a listener as the authenticator runs it, built from its validated config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListenerPolicy {
    config: PolicyConfig,
}

impl From<PolicyConfig> for ListenerPolicy {
    fn from(config: PolicyConfig) -> Self {
        Self { config }
    }
}

impl ListenerPolicy {
    /// Anonymous access and nothing else (what a node without an `[auth]` section runs).
    pub(crate) fn anonymous_only() -> Self {
        Self::from(PolicyConfig::anonymous_only())
    }

    /// The policies this runs.
    #[cfg(test)]
    pub(crate) fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// Evaluates a CONNECT against this policy without checking a password.
    pub(crate) fn evaluate(&self, creds: &Credentials<'_>, identity: &PeerIdentity) -> Evaluation {
        let policy = &self.config;
        let cert = VerifiedCert::from_identity(identity);
        let refuse = |f| Evaluation::Decided(AuthDecision::refuse(f));
        if policy.needs_certificate() && cert.is_none() {
            return refuse(AuthFailure::CertificateRequired);
        }
        // The certificate's own binding is decided before any password check: it tells nothing about users.
        let mut binding = ClientIdBinding::Unbound;
        if let Some(template) = &policy.client_id_from_cert {
            match check_template(template, creds.client_id, cert.as_ref(), None) {
                Some(b) => binding = b,
                None => return refuse(AuthFailure::ClientIdMismatch),
            }
        }
        let cert_username = match (policy.username_from_cert, &cert) {
            (Some(field), Some(cert)) => match cert.field(field) {
                Some(u) => Some(u),
                None => return refuse(AuthFailure::CertificateIdentityMissing),
            },
            _ => None,
        };
        // `bind_client_id` for a client authenticated as `username`; `None` when the template does not admit it.
        let bind = |username: Option<&str>| match &policy.bind_client_id {
            Some(template) => check_template(template, creds.client_id, cert.as_ref(), username)
                .map(|b| b.max(binding)),
            None => Some(binding),
        };
        let principal = |username: Option<&str>, method| Principal {
            username: username.map(str::to_string),
            cn: cert.and_then(|c| c.cn).map(str::to_string),
            client_id: creds.client_id.to_string(),
            method,
        };
        // Anonymous clients are never bound: nothing identifies them to bind to.
        let anonymous = || {
            let p = principal(None, AuthMethod::Anonymous);
            Evaluation::Decided(AuthDecision::Allow(p, ClientIdBinding::Unbound))
        };
        if policy.password {
            let no_credentials = creds.username.is_none() && creds.password.is_none();
            if policy.anonymous && no_credentials && !policy.needs_certificate() {
                return anonymous();
            }
            let username = cert_username.or(creds.username);
            let (Some(username), Some(_)) = (username, creds.password) else {
                return refuse(AuthFailure::BadCredentials);
            };
            let method = if policy.needs_certificate() {
                AuthMethod::CertificateAndPassword
            } else {
                AuthMethod::Password
            };
            return Evaluation::NeedsPassword(PasswordCheck {
                principal: principal(Some(username), method),
                binding: bind(Some(username)),
            });
        }
        if policy.needs_certificate() {
            return match bind(cert_username) {
                Some(b) => {
                    let p = principal(cert_username, AuthMethod::Certificate);
                    Evaluation::Decided(AuthDecision::Allow(p, b))
                }
                None => refuse(AuthFailure::ClientIdMismatch),
            };
        }
        if policy.anonymous {
            // Without a password check the CONNECT's username proves nothing, so it is not carried.
            return anonymous();
        }
        refuse(AuthFailure::NotAuthorized)
    }
}

/// The credentials of a CONNECT. `Debug` shows whether a password is present, never the password.
#[derive(Clone, Copy)]
pub struct Credentials<'a> {
    /// The client ID (as the broker will use it).
    pub client_id: &'a str,
    /// The CONNECT's username, if any.
    pub username: Option<&'a str>,
    /// The CONNECT's password, if any (binary in MQTT 5). Never log it.
    pub password: Option<&'a [u8]>,
}

impl fmt::Debug for Credentials<'_> {
    // By hand: a derived Debug would print the password into any log line that shows the credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.map(|_| "***"))
            .finish()
    }
}

/// The outcome of [`ListenerPolicy::evaluate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Evaluation {
    /// Decided without a password.
    Decided(AuthDecision),
    /// Everything else passed; the password of [`PasswordCheck::username`] must be checked.
    NeedsPassword(PasswordCheck),
}

/// A password check still to do, the principal it admits, and how `bind_client_id` decided its client ID
/// (`None`: refused, which is told only once the password matched).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PasswordCheck {
    principal: Principal,
    binding: Option<ClientIdBinding>,
}

impl PasswordCheck {
    /// The username to look up in the password file.
    pub(crate) fn username(&self) -> &str {
        self.principal.username.as_deref().unwrap_or_default()
    }

    /// The decision once the password was checked.
    pub(crate) fn finish(self, password_ok: bool) -> AuthDecision {
        match (password_ok, self.binding) {
            (false, _) => AuthDecision::refuse(AuthFailure::BadCredentials),
            (true, None) => AuthDecision::refuse(AuthFailure::ClientIdMismatch),
            (true, Some(binding)) => AuthDecision::Allow(self.principal, binding),
        }
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
