//! Authentication policy of one listener and its pure evaluation at CONNECT: what the certificate (as proven by
//! the LB's PROXY identity) and the CONNECT's credentials allow. The password itself is checked outside
//! (asynchronously, [`crate::verify`]); evaluation stops at [`Evaluation::NeedsPassword`] when one is due.
//!
//! Policies combine by conjunction — every configured policy must pass:
//! - `certificate`: a certificate the LB verified (`PeerIdentity::cert_verified`) is required.
//! - `client_id_from_cert`: the client ID must equal the template over the certificate (implies a certificate).
//! - `username_from_cert`: the username is taken from the certificate (implies a certificate); the username in
//!   the CONNECT is ignored, never a fallback.
//! - `password`: username and password must match the password file (with `username_from_cert`, the
//!   certificate's username is the one checked).
//! - `anonymous = true`: a client with no credentials at all gets in as anonymous; allowed alone or with
//!   `password` only (with a certificate policy it would be a bypass, so the config refuses that).
//!
//! The certificate fields are read only when `cert_verified` is set; an unverified identity counts as none.

use std::fmt;

use fleetgate_protocol::proxy::PeerIdentity;

use crate::decision::{AuthDecision, AuthFailure, AuthMethod, Principal};

/// Where a certificate-derived value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertField {
    /// The subject CN.
    Cn,
    /// The first SAN of this kind.
    San(SanKind),
}

/// A SAN kind, as prefixed in `PeerIdentity::sans`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanKind {
    /// `DNS:`
    Dns,
    /// `URI:`
    Uri,
    /// `EMAIL:`
    Email,
    /// `IP:`
    Ip,
}

impl SanKind {
    fn prefix(self) -> &'static str {
        match self {
            SanKind::Dns => "DNS:",
            SanKind::Uri => "URI:",
            SanKind::Email => "EMAIL:",
            SanKind::Ip => "IP:",
        }
    }
}

impl CertField {
    /// Parses `cn`, `san:DNS`, `san:URI`, `san:EMAIL` or `san:IP`.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "cn" => CertField::Cn,
            "san:DNS" => CertField::San(SanKind::Dns),
            "san:URI" => CertField::San(SanKind::Uri),
            "san:EMAIL" => CertField::San(SanKind::Email),
            "san:IP" => CertField::San(SanKind::Ip),
            _ => return None,
        })
    }

    /// The field's value in a verified certificate; `None` when absent or empty.
    pub fn extract<'a>(self, cert: &VerifiedCert<'a>) -> Option<&'a str> {
        let value = match self {
            CertField::Cn => cert.cn?,
            CertField::San(kind) => cert
                .sans
                .iter()
                .find_map(|s| s.strip_prefix(kind.prefix()))?,
        };
        (!value.is_empty()).then_some(value)
    }
}

/// The certificate fields of a PROXY identity, available only when the LB verified the certificate.
#[derive(Debug, Clone, Copy)]
pub struct VerifiedCert<'a> {
    /// Subject CN.
    pub cn: Option<&'a str>,
    /// SANs, kind-prefixed.
    pub sans: &'a [String],
}

impl<'a> VerifiedCert<'a> {
    /// The verified certificate of `identity`, or `None` when it was not verified (whatever else it claims).
    pub fn from_identity(identity: &'a PeerIdentity) -> Option<Self> {
        identity.cert_verified.then(|| VerifiedCert {
            cn: identity.cn.as_deref(),
            sans: &identity.sans,
        })
    }
}

/// A client ID template such as `vehicle-{cn}`; placeholders `{cn}`, `{san:DNS}`, `{san:URI}`, `{san:EMAIL}`,
/// `{san:IP}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdTemplate {
    text: String,
    pieces: Vec<TemplatePiece>,
}

/// Why a client ID template is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientIdTemplateError {
    /// A `{` without its `}`.
    #[error("unclosed `{{` in client ID template {0:?}")]
    Unclosed(String),
    /// A `}` without its `{`.
    #[error("stray `}}` in client ID template {0:?}")]
    StrayClose(String),
    /// A placeholder other than `{cn}` and `{san:DNS|URI|EMAIL|IP}`.
    #[error("unknown placeholder {{{0}}} (use {{cn}} or {{san:DNS|URI|EMAIL|IP}})")]
    UnknownPlaceholder(String),
    /// No placeholder at all: every device would share one client ID.
    #[error("client ID template needs a placeholder such as {{cn}}")]
    NoPlaceholder,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TemplatePiece {
    Text(String),
    Field(CertField),
}

impl ClientIdTemplate {
    /// Parses a template; it must contain at least one placeholder (otherwise every device would share one ID).
    pub fn parse(text: &str) -> Result<Self, ClientIdTemplateError> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(TemplatePiece::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| ClientIdTemplateError::Unclosed(text.to_string()))?;
            let name = &after[..close];
            let field = CertField::parse(name)
                .ok_or_else(|| ClientIdTemplateError::UnknownPlaceholder(name.to_string()))?;
            pieces.push(TemplatePiece::Field(field));
            rest = &after[close + 1..];
        }
        if rest.contains('}') {
            return Err(ClientIdTemplateError::StrayClose(text.to_string()));
        }
        if !rest.is_empty() {
            pieces.push(TemplatePiece::Text(rest.to_string()));
        }
        if !pieces.iter().any(|p| matches!(p, TemplatePiece::Field(_))) {
            return Err(ClientIdTemplateError::NoPlaceholder);
        }
        Ok(Self {
            text: text.to_string(),
            pieces,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The client ID this certificate must use; `None` when a field it needs is missing.
    pub fn render(&self, cert: &VerifiedCert<'_>) -> Option<String> {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                TemplatePiece::Text(t) => out.push_str(t),
                TemplatePiece::Field(f) => out.push_str(f.extract(cert)?),
            }
        }
        Some(out)
    }
}

/// The validated authentication policy of a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerPolicy {
    /// `certificate`: a verified certificate is required.
    pub require_certificate: bool,
    /// `client_id_from_cert`: the client ID must equal this template over the certificate.
    pub client_id_from_cert: Option<ClientIdTemplate>,
    /// `username_from_cert`: the username comes from this certificate field.
    pub username_from_cert: Option<CertField>,
    /// `password`: username and password are checked against the password file.
    pub password: bool,
    /// `anonymous`: a client with no credentials at all is admitted as anonymous.
    pub anonymous: bool,
}

impl ListenerPolicy {
    /// Anonymous access and nothing else (what a node without an `[auth]` section runs).
    pub fn anonymous_only() -> Self {
        Self {
            require_certificate: false,
            client_id_from_cert: None,
            username_from_cert: None,
            password: false,
            anonymous: true,
        }
    }

    /// True when some policy needs a verified certificate.
    pub fn needs_certificate(&self) -> bool {
        self.require_certificate
            || self.client_id_from_cert.is_some()
            || self.username_from_cert.is_some()
    }

    /// Evaluates a CONNECT against this policy without checking a password.
    pub fn evaluate(&self, creds: &Credentials<'_>, identity: &PeerIdentity) -> Evaluation {
        let cert = VerifiedCert::from_identity(identity);
        let refuse = |f| Evaluation::Decided(AuthDecision::refuse(f));
        if self.needs_certificate() && cert.is_none() {
            return refuse(AuthFailure::CertificateRequired);
        }
        if let (Some(template), Some(cert)) = (&self.client_id_from_cert, &cert)
            && template.render(cert).as_deref() != Some(creds.client_id)
        {
            return refuse(AuthFailure::ClientIdMismatch);
        }
        let cert_username = match (self.username_from_cert, &cert) {
            (Some(field), Some(cert)) => match field.extract(cert) {
                Some(u) => Some(u),
                None => return refuse(AuthFailure::CertificateIdentityMissing),
            },
            _ => None,
        };
        let principal = |username: Option<&str>, method| Principal {
            username: username.map(str::to_string),
            cn: cert.and_then(|c| c.cn).map(str::to_string),
            client_id: creds.client_id.to_string(),
            method,
        };
        if self.password {
            let no_credentials = creds.username.is_none() && creds.password.is_none();
            if self.anonymous && no_credentials && !self.needs_certificate() {
                return Evaluation::Decided(AuthDecision::Allow(principal(
                    None,
                    AuthMethod::Anonymous,
                )));
            }
            let username = cert_username.or(creds.username);
            let (Some(username), Some(_)) = (username, creds.password) else {
                return refuse(AuthFailure::BadCredentials);
            };
            let method = if self.needs_certificate() {
                AuthMethod::CertificateAndPassword
            } else {
                AuthMethod::Password
            };
            return Evaluation::NeedsPassword(PasswordCheck {
                principal: principal(Some(username), method),
            });
        }
        if self.needs_certificate() {
            return Evaluation::Decided(AuthDecision::Allow(principal(
                cert_username,
                AuthMethod::Certificate,
            )));
        }
        if self.anonymous {
            // Without a password check the CONNECT's username proves nothing, so it is not carried.
            return Evaluation::Decided(AuthDecision::Allow(principal(
                None,
                AuthMethod::Anonymous,
            )));
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
pub enum Evaluation {
    /// Decided without a password.
    Decided(AuthDecision),
    /// Everything else passed; the password of [`PasswordCheck::username`] must be checked.
    NeedsPassword(PasswordCheck),
}

/// A password check still to do, and the principal it admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordCheck {
    principal: Principal,
}

impl PasswordCheck {
    /// The username to look up in the password file.
    pub fn username(&self) -> &str {
        self.principal.username.as_deref().unwrap_or_default()
    }

    /// The decision once the password was checked.
    pub fn finish(self, password_ok: bool) -> AuthDecision {
        if password_ok {
            AuthDecision::Allow(self.principal)
        } else {
            AuthDecision::refuse(AuthFailure::BadCredentials)
        }
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
