//! The values one authentication policy is made of, as `[auth]` (or `[auth.listeners.<name>]`) validates them:
//! [`PolicyConfig`] (which policies a listener runs), [`CertField`] (`cn`, `san:DNS`, ...) and
//! [`ClientIdTemplate`] (`vehicle-{cn}`). Parsed here; evaluated at CONNECT by `fleetgate_auth` against the
//! certificate identity the LB proved.

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

/// One piece of a [`ClientIdTemplate`], in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePiece {
    /// Text copied as written.
    Text(String),
    /// A certificate field's value.
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

    /// The pieces, in order (at least one is a [`TemplatePiece::Field`]).
    pub fn pieces(&self) -> &[TemplatePiece] {
        &self.pieces
    }
}

/// The validated authentication policy of a listener: policies combine by conjunction (every one configured must
/// pass; `fleetgate_auth::policy` says what each checks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
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

impl PolicyConfig {
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
        for bad in ["static", "{cn", "x}", "{san:FOO}", "{}", "{username}"] {
            assert!(ClientIdTemplate::parse(bad).is_err(), "{bad}");
        }
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
