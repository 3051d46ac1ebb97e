//! What authentication decides at CONNECT: the [`Principal`] a client is allowed in as (and how tightly its client
//! ID is bound to it), or the [`AuthFailure`] it is refused with, and how each failure maps to a CONNACK reason code
//! for MQTT 5 and 3.1.1.

use crate::binding::ClientIdBinding;

/// How a client proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    /// A client certificate verified by the LB (and, where configured, bound to the client ID / username).
    Certificate,
    /// Username and password checked against the password file.
    Password,
    /// Both a verified certificate and a password.
    CertificateAndPassword,
    /// Nothing: the listener allows anonymous clients.
    Anonymous,
}

impl AuthMethod {
    /// Label for logs and metrics.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Certificate => "certificate",
            AuthMethod::Password => "password",
            AuthMethod::CertificateAndPassword => "certificate_and_password",
            AuthMethod::Anonymous => "anonymous",
        }
    }
}

/// The identity a client was admitted with; the ACL is evaluated against it.
///
/// Only proven values are here: `username` is `None` unless it was checked (password) or derived from the
/// certificate, because a username a client merely typed must not select ACL rules or fill `%u`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Authenticated username (password-checked or taken from the certificate).
    pub username: Option<String>,
    /// CN of the certificate, set only when the LB verified it.
    pub cn: Option<String>,
    /// The MQTT client ID of the connection.
    pub client_id: String,
    /// How the client authenticated.
    pub method: AuthMethod,
}

impl Principal {
    /// True unless the client came in anonymously.
    pub(crate) fn is_authenticated(&self) -> bool {
        self.method != AuthMethod::Anonymous
    }

    /// True when `other` is the same identity: the same method and the same proven names (the username of a
    /// password user; the CN and certificate-derived username of a certificate user; all of them when both
    /// apply). Every anonymous client is one identity. The client ID is not part of it.
    pub fn same_identity(&self, other: &Principal) -> bool {
        if self.method != other.method {
            return false;
        }
        match self.method {
            AuthMethod::Anonymous => true,
            // A password user's optional certificate proves nothing more about who logged in.
            AuthMethod::Password => self.username == other.username,
            AuthMethod::Certificate | AuthMethod::CertificateAndPassword => {
                self.username == other.username && self.cn == other.cn
            }
        }
    }
}

/// Why a CONNECT was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthFailure {
    /// A verified client certificate is required and there is none.
    CertificateRequired,
    /// The certificate lacks the field (CN or SAN) the username is taken from.
    CertificateIdentityMissing,
    /// The client ID is not one a binding admits for this identity: the listener's `client_id_template`, or the
    /// ACL's `[[client_ids]]` entry (or a value the template needs is missing).
    ClientIdMismatch,
    /// Missing, unknown or wrong username/password (one failure for all three, so users cannot be enumerated).
    BadCredentials,
    /// The source address is temporarily banned after repeated password failures.
    Banned,
    /// Too many password checks are already waiting; try again later.
    Busy,
    /// No policy admits the client (no credentials and anonymous access is off).
    NotAuthorized,
    /// The password check itself failed (a blocking task panicked or was cancelled).
    Internal,
    /// The client ID's session belongs to another identity and no binding gives this one the ID
    /// ([`crate::claim_session`]); decided when the broker attaches the connection, after authentication.
    SessionOwnerMismatch,
}

impl AuthFailure {
    /// Metric label (`fleetgate_auth_refusals_total{reason=...}`) and log field.
    pub fn reason(self) -> &'static str {
        match self {
            AuthFailure::CertificateRequired => "certificate_required",
            AuthFailure::CertificateIdentityMissing => "certificate_identity_missing",
            AuthFailure::ClientIdMismatch => "client_id_mismatch",
            AuthFailure::BadCredentials => "bad_credentials",
            AuthFailure::Banned => "banned",
            AuthFailure::Busy => "busy",
            AuthFailure::NotAuthorized => "not_authorized",
            AuthFailure::Internal => "internal",
            AuthFailure::SessionOwnerMismatch => "session_owner_mismatch",
        }
    }

    /// MQTT 5 CONNACK reason code.
    pub fn v5_code(self) -> u8 {
        match self {
            AuthFailure::CertificateRequired
            | AuthFailure::CertificateIdentityMissing
            | AuthFailure::NotAuthorized
            | AuthFailure::SessionOwnerMismatch => 0x87, // Not authorized
            AuthFailure::ClientIdMismatch => 0x85, // Client Identifier not valid
            AuthFailure::BadCredentials => 0x86,   // Bad User Name or Password
            AuthFailure::Banned => 0x8A,           // Banned
            AuthFailure::Busy => 0x89,             // Server busy
            AuthFailure::Internal => 0x80,         // Unspecified error
        }
    }

    /// MQTT 3.1.1 CONNACK return code.
    pub fn v3_code(self) -> u8 {
        match self {
            AuthFailure::CertificateRequired
            | AuthFailure::CertificateIdentityMissing
            | AuthFailure::NotAuthorized
            | AuthFailure::Banned
            | AuthFailure::SessionOwnerMismatch => 0x05, // Not authorized
            AuthFailure::ClientIdMismatch => 0x02, // Identifier rejected
            AuthFailure::BadCredentials => 0x04,   // Bad user name or password
            AuthFailure::Busy | AuthFailure::Internal => 0x03, // Server unavailable
        }
    }

    /// True for failures that count towards a brute-force ban (guessable credentials only; certificate
    /// failures are not guessable, and counting them would let one misconfigured device ban a whole NAT).
    pub(crate) fn counts_towards_ban(self) -> bool {
        self == AuthFailure::BadCredentials
    }
}

/// The outcome of authenticating a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthDecision {
    /// Admit the client as this principal, its client ID bound this tightly (what a session takeover across
    /// identities needs: [`crate::claim_session`]).
    Allow(Principal, ClientIdBinding),
    /// Refuse the CONNECT with a CONNACK carrying `reason`'s code, then close.
    Refuse {
        /// Why.
        reason: AuthFailure,
    },
}

impl AuthDecision {
    /// Shorthand for a refusal.
    pub(crate) fn refuse(reason: AuthFailure) -> Self {
        AuthDecision::Refuse { reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_are_the_spec_values() {
        use AuthFailure::*;
        let table = [
            (CertificateRequired, 0x87, 0x05),
            (CertificateIdentityMissing, 0x87, 0x05),
            (ClientIdMismatch, 0x85, 0x02),
            (BadCredentials, 0x86, 0x04),
            (Banned, 0x8A, 0x05),
            (Busy, 0x89, 0x03),
            (NotAuthorized, 0x87, 0x05),
            (Internal, 0x80, 0x03),
            (SessionOwnerMismatch, 0x87, 0x05),
        ];
        let mut labels = std::collections::HashSet::new();
        for (f, v5, v3) in table {
            assert_eq!((f.v5_code(), f.v3_code()), (v5, v3), "{f:?}");
            assert!(labels.insert(f.reason()), "duplicate label {}", f.reason());
        }
        assert!(BadCredentials.counts_towards_ban());
        assert!(!ClientIdMismatch.counts_towards_ban());
        assert!(!SessionOwnerMismatch.counts_towards_ban());
    }

    fn p(method: AuthMethod, username: Option<&str>, cn: Option<&str>, id: &str) -> Principal {
        Principal {
            username: username.map(str::to_string),
            cn: cn.map(str::to_string),
            client_id: id.to_string(),
            method,
        }
    }

    #[test]
    fn same_identity_is_method_and_proven_names() {
        use AuthMethod::*;
        let alice = p(Password, Some("alice"), None, "a-1");
        assert!(alice.same_identity(&p(Password, Some("alice"), Some("laptop"), "a-2")));
        assert!(!alice.same_identity(&p(Password, Some("bob"), None, "a-1")));
        assert!(!alice.same_identity(&p(CertificateAndPassword, Some("alice"), None, "a-1")));
        let dev = p(Certificate, None, Some("dev-1"), "dev-1");
        assert!(dev.same_identity(&p(Certificate, None, Some("dev-1"), "x")));
        assert!(!dev.same_identity(&p(Certificate, None, Some("dev-2"), "dev-1")));
        assert!(!dev.same_identity(&p(Certificate, Some("u"), Some("dev-1"), "dev-1")));
        assert!(p(Anonymous, None, None, "a").same_identity(&p(Anonymous, None, Some("c"), "b")));
        assert!(!p(Anonymous, None, None, "a").same_identity(&alice));
    }
}
