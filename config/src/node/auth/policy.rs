//! The values one authentication policy is made of, as `[auth]` (or `[auth.listeners.<name>]`) validates them:
//! [`PolicyConfig`] (which policies a listener runs), [`CertField`] (`cn`, `san:DNS`, ...) and
//! [`ClientIdTemplate`] (`vehicle-{cn}`, `{username}-*`). Parsed here; evaluated at CONNECT by `fleetgate_auth`
//! against the certificate identity the LB proved and the username the password file checked.

/// Where a certificate-derived value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertField {
    /// The subject CN.
    Cn,
    /// The first SAN of this kind.
    San(SanKind),
}

/// A SAN kind (`san:DNS` in the config, `DNS:` in a PROXY identity's SAN list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanKind {
    /// `DNS`
    Dns,
    /// `URI`
    Uri,
    /// `EMAIL`
    Email,
    /// `IP`
    Ip,
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
}

/// A client ID template such as `vehicle-{cn}` or `{username}-*`; placeholders `{cn}`, `{san:DNS}`, `{san:URI}`,
/// `{san:EMAIL}`, `{san:IP}` and `{username}` (the authenticated username). A trailing `*` makes it a prefix: the
/// client ID must start with the rest (`{username}-*` admits `alice-1`, `alice-` and `alice-x` for user `alice`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdTemplate {
    text: String,
    pieces: Vec<TemplatePiece>,
    prefix: bool,
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
    /// A placeholder other than `{cn}`, `{username}` and `{san:DNS|URI|EMAIL|IP}`.
    #[error("unknown placeholder {{{0}}} (use {{cn}}, {{username}} or {{san:DNS|URI|EMAIL|IP}})")]
    UnknownPlaceholder(String),
    /// No placeholder at all: every device would share one client ID.
    #[error("client ID template needs a placeholder such as {{cn}} or {{username}}")]
    NoPlaceholder,
    /// A `*` anywhere but at the very end (where it means "any rest").
    #[error("`*` may only end a client ID template (a prefix), in {0:?}")]
    MisplacedStar(String),
}

/// One piece of a [`ClientIdTemplate`], in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePiece {
    /// Text copied as written.
    Text(String),
    /// A certificate field's value.
    Field(CertField),
    /// The authenticated username (password-checked, or taken from the certificate by `username_from_cert`).
    Username,
}

impl ClientIdTemplate {
    /// Parses a template; it must contain at least one placeholder (otherwise every device would share one ID),
    /// and a `*` only as its last character.
    pub fn parse(text: &str) -> Result<Self, ClientIdTemplateError> {
        let (body, prefix) = match text.strip_suffix('*') {
            Some(body) => (body, true),
            None => (text, false),
        };
        if body.contains('*') {
            return Err(ClientIdTemplateError::MisplacedStar(text.to_string()));
        }
        let mut pieces = Vec::new();
        let mut rest = body;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(TemplatePiece::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| ClientIdTemplateError::Unclosed(text.to_string()))?;
            let name = &after[..close];
            let piece =
                match name {
                    "username" => TemplatePiece::Username,
                    _ => TemplatePiece::Field(CertField::parse(name).ok_or_else(|| {
                        ClientIdTemplateError::UnknownPlaceholder(name.to_string())
                    })?),
                };
            pieces.push(piece);
            rest = &after[close + 1..];
        }
        if rest.contains('}') {
            return Err(ClientIdTemplateError::StrayClose(text.to_string()));
        }
        if !rest.is_empty() {
            pieces.push(TemplatePiece::Text(rest.to_string()));
        }
        if pieces.iter().all(|p| matches!(p, TemplatePiece::Text(_))) {
            return Err(ClientIdTemplateError::NoPlaceholder);
        }
        Ok(Self {
            text: text.to_string(),
            pieces,
            prefix,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The pieces, in order, without the trailing `*` (at least one is a placeholder).
    pub fn pieces(&self) -> &[TemplatePiece] {
        &self.pieces
    }

    /// True when the template ends in `*`: a client ID need only start with the rendered pieces.
    pub fn is_prefix(&self) -> bool {
        self.prefix
    }

    /// True when the template has a `{username}` placeholder.
    pub fn uses_username(&self) -> bool {
        self.pieces.contains(&TemplatePiece::Username)
    }
}

/// The validated authentication policy of a listener: policies combine by conjunction (every one configured must
/// pass; `fleetgate_auth::policy` says what each checks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    /// `certificate`: a verified certificate is required.
    pub require_certificate: bool,
    /// `client_id_from_cert`: the client ID must equal this template over the certificate (certificate fields
    /// only).
    pub client_id_from_cert: Option<ClientIdTemplate>,
    /// `bind_client_id`: the client ID of an authenticated client must match this template over its identity
    /// (`{username}`, certificate fields; a trailing `*` for a prefix).
    pub bind_client_id: Option<ClientIdTemplate>,
    /// `username_from_cert`: the username comes from this certificate field.
    pub username_from_cert: Option<CertField>,
    /// `password`: username and password are checked against the password file.
    pub password: bool,
    /// `anonymous`: a client with no credentials at all is admitted as anonymous.
    pub anonymous: bool,
}

impl PolicyConfig {
    /// Anonymous access and nothing else (what a node without an `[auth]` section runs).
    pub fn anonymous_only() -> Self {
        Self {
            require_certificate: false,
            client_id_from_cert: None,
            bind_client_id: None,
            username_from_cert: None,
            password: false,
            anonymous: true,
        }
    }

    /// True when some policy ties the client ID to the client's identity (`client_id_from_cert`,
    /// `bind_client_id`); the ACL's `[[client_ids]]` entries can bind it too.
    pub fn binds_client_id(&self) -> bool {
        self.client_id_from_cert.is_some() || self.bind_client_id.is_some()
    }

    /// True when some policy needs a verified certificate.
    pub fn needs_certificate(&self) -> bool {
        self.require_certificate
            || self.client_id_from_cert.is_some()
            || self.username_from_cert.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_id_templates_parse_into_pieces() {
        let t = ClientIdTemplate::parse("v-{cn}-{san:URI}").unwrap();
        assert_eq!(t.as_str(), "v-{cn}-{san:URI}");
        assert_eq!(
            t.pieces(),
            [
                TemplatePiece::Text("v-".into()),
                TemplatePiece::Field(CertField::Cn),
                TemplatePiece::Text("-".into()),
                TemplatePiece::Field(CertField::San(SanKind::Uri)),
            ]
        );
        assert!(!t.is_prefix() && !t.uses_username());
        for bad in [
            "static",
            "{cn",
            "x}",
            "{san:FOO}",
            "{}",
            "{user}",
            "a*{cn}",
            "*",
            "{cn}**",
        ] {
            assert!(ClientIdTemplate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn username_and_a_trailing_star_make_a_prefix_binding() {
        let t = ClientIdTemplate::parse("{username}-*").unwrap();
        assert!(t.is_prefix() && t.uses_username());
        assert_eq!(t.as_str(), "{username}-*");
        assert_eq!(
            t.pieces(),
            [TemplatePiece::Username, TemplatePiece::Text("-".into())]
        );
        let exact = ClientIdTemplate::parse("{username}").unwrap();
        assert!(!exact.is_prefix());
        assert_eq!(
            ClientIdTemplate::parse("x-*{cn}"),
            Err(ClientIdTemplateError::MisplacedStar("x-*{cn}".into()))
        );
    }

    #[test]
    fn client_id_template_errors_are_typed() {
        use ClientIdTemplateError as E;
        assert_eq!(ClientIdTemplate::parse("static"), Err(E::NoPlaceholder));
        assert_eq!(
            ClientIdTemplate::parse("{cn"),
            Err(E::Unclosed("{cn".into()))
        );
        assert_eq!(
            ClientIdTemplate::parse("{cn}}"),
            Err(E::StrayClose("{cn}}".into()))
        );
        let unknown = ClientIdTemplate::parse("{san:FOO}").unwrap_err();
        assert_eq!(unknown, E::UnknownPlaceholder("san:FOO".into()));
        assert!(unknown.to_string().contains("{san:FOO}"), "{unknown}");
    }

    #[test]
    fn cert_fields_parse_by_their_config_names() {
        assert_eq!(CertField::parse("cn"), Some(CertField::Cn));
        assert_eq!(
            CertField::parse("san:EMAIL"),
            Some(CertField::San(SanKind::Email))
        );
        assert_eq!(CertField::parse("san:dns"), None);
    }
}
