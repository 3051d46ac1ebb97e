//! The `[auth]` section: TOML → raw [`AuthSectionFile`] (serde, `deny_unknown_fields`) → validated
//! [`AuthConfig`], every problem located as `file:line:column`. The section is read from whatever file holds it
//! (the node's `node.toml`, or a separate file); other top-level tables of that file are ignored here.
//!
//! ```toml
//! [auth]
//! policies = ["certificate", "client_id_from_cert"]   # certificate | client_id_from_cert | username_from_cert | password
//! client_id_template = "vehicle-{cn}"                 # {cn}, {san:DNS}, {san:URI}, {san:EMAIL}, {san:IP}; default "{cn}"
//! username_from = "cn"                                # cn | san:DNS | san:URI | san:EMAIL | san:IP; default "cn"
//! anonymous = false                                   # admit clients without credentials
//! password_file = "passwd"                            # relative to this file's directory
//! acl_file = "acl.toml"                               # absent: every non-`$` topic allowed
//! max_concurrent_verifications = 2
//! max_waiting_verifications = 64
//! v3_disconnect_on_denied_publish = false            # MQTT 3.1.1 cannot refuse a PUBLISH; close instead of drop
//!
//! [auth.brute_force]
//! max_failures = 5
//! window = "60s"
//! ban = "5m"
//! max_tracked = 100000
//!
//! # Per-listener override, keyed by the listener's name as the broker passes it; unset fields inherit [auth].
//! [auth.listeners.internal]
//! policies = ["password"]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fleetgate_config::duration::ConfigDuration;
use fleetgate_config::load::{ConfigError, Problem, parse_toml, read_file};
use serde::Deserialize;
use toml::Spanned;

use crate::failures::FailureLimits;
use crate::policy::{CertField, ClientIdTemplate, ListenerPolicy};
use crate::verify::{DEFAULT_MAX_CONCURRENT, DEFAULT_MAX_WAITING};

/// Upper bound on `max_concurrent_verifications`: each check holds ~19 MiB while it runs.
pub const MAX_CONCURRENT_VERIFICATIONS: usize = 64;
/// Default client ID template for `client_id_from_cert`.
pub const DEFAULT_CLIENT_ID_TEMPLATE: &str = "{cn}";

/// The file around the section; every other table is someone else's.
#[derive(Debug, Deserialize)]
struct HostFile {
    auth: Option<AuthSectionFile>,
}

/// Raw `[auth]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSectionFile {
    /// Policies of every listener without an override.
    pub policies: Option<Spanned<Vec<Spanned<String>>>>,
    /// Template for `client_id_from_cert`.
    pub client_id_template: Option<Spanned<String>>,
    /// Certificate field for `username_from_cert`.
    pub username_from: Option<Spanned<String>>,
    /// Admit clients without credentials.
    pub anonymous: Option<Spanned<bool>>,
    /// Password file path.
    pub password_file: Option<Spanned<String>>,
    /// ACL file path.
    pub acl_file: Option<Spanned<String>>,
    /// Password checks at once.
    pub max_concurrent_verifications: Option<Spanned<usize>>,
    /// CONNECTs queued for a password check.
    pub max_waiting_verifications: Option<usize>,
    /// Close a 3.1.1 connection whose PUBLISH the ACL denies (instead of dropping the message).
    pub v3_disconnect_on_denied_publish: Option<bool>,
    /// `[auth.brute_force]`.
    pub brute_force: Option<BruteForceFile>,
    /// `[auth.listeners.<name>]` overrides.
    #[serde(default)]
    pub listeners: BTreeMap<String, PolicyFile>,
}

/// Raw per-listener override.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Policies.
    pub policies: Option<Spanned<Vec<Spanned<String>>>>,
    /// Template for `client_id_from_cert`.
    pub client_id_template: Option<Spanned<String>>,
    /// Certificate field for `username_from_cert`.
    pub username_from: Option<Spanned<String>>,
    /// Admit clients without credentials.
    pub anonymous: Option<Spanned<bool>>,
}

/// Raw `[auth.brute_force]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BruteForceFile {
    /// Failures in `window` that trigger a ban.
    pub max_failures: Option<Spanned<u32>>,
    /// Window failures are counted in.
    pub window: Option<ConfigDuration>,
    /// Ban length.
    pub ban: Option<ConfigDuration>,
    /// Addresses tracked at most.
    pub max_tracked: Option<Spanned<usize>>,
}

/// The validated `[auth]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// The file the section was read from.
    pub source: PathBuf,
    /// Policy of listeners without an override.
    pub default_policy: ListenerPolicy,
    /// Overrides by listener name.
    pub listeners: BTreeMap<String, ListenerPolicy>,
    /// Password file (resolved against the config file's directory).
    pub password_file: Option<PathBuf>,
    /// ACL file (resolved likewise); `None` allows every non-`$` topic.
    pub acl_file: Option<PathBuf>,
    /// Brute-force limits.
    pub failure_limits: FailureLimits,
    /// Password checks at once.
    pub max_concurrent_verifications: usize,
    /// CONNECTs queued for a password check.
    pub max_waiting_verifications: usize,
    /// Close a 3.1.1 connection whose PUBLISH the ACL denies; by default the message is dropped (3.1.1 has no
    /// negative PUBACK).
    pub v3_disconnect_on_denied_publish: bool,
}

/// Fields of one policy, after inheritance.
struct PolicyFields<'a> {
    policies: Option<&'a Spanned<Vec<Spanned<String>>>>,
    template: Option<&'a Spanned<String>>,
    username_from: Option<&'a Spanned<String>>,
    anonymous: Option<&'a Spanned<bool>>,
}

impl AuthConfig {
    /// Reads the `[auth]` section of the file at `path`; `Ok(None)` when it has none.
    pub fn load(path: &Path) -> Result<Option<Self>, ConfigError> {
        let text = read_file(path)?;
        Self::parse(path, &text)
    }

    /// Parses the `[auth]` section of `text` (read from `file`).
    pub fn parse(file: &Path, text: &str) -> Result<Option<Self>, ConfigError> {
        let host: HostFile = parse_toml(file, text)?;
        host.auth.map(|raw| validate(file, text, &raw)).transpose()
    }
}

fn validate(file: &Path, text: &str, raw: &AuthSectionFile) -> Result<AuthConfig, ConfigError> {
    let mut problems = Vec::new();
    let top = PolicyFields {
        policies: raw.policies.as_ref(),
        template: raw.client_id_template.as_ref(),
        username_from: raw.username_from.as_ref(),
        anonymous: raw.anonymous.as_ref(),
    };
    let has_password_file = raw.password_file.is_some();
    let default_policy = policy(file, text, &top, has_password_file, &mut problems);
    let mut listeners = BTreeMap::new();
    for (name, l) in &raw.listeners {
        let fields = PolicyFields {
            policies: l.policies.as_ref().or(top.policies),
            template: l.client_id_template.as_ref().or(top.template),
            username_from: l.username_from.as_ref().or(top.username_from),
            anonymous: l.anonymous.as_ref().or(top.anonymous),
        };
        listeners.insert(
            name.clone(),
            policy(file, text, &fields, has_password_file, &mut problems),
        );
    }
    let base = file.parent().unwrap_or(Path::new(""));
    let resolve = |p: &Spanned<String>| base.join(p.get_ref());

    let mut limits = FailureLimits::default();
    if let Some(bf) = &raw.brute_force {
        if let Some(n) = &bf.max_failures {
            if *n.get_ref() == 0 {
                problems.push(Problem::at(
                    file,
                    text,
                    Some(n.span()),
                    "max_failures must be at least 1",
                ));
            }
            limits.max_failures = *n.get_ref();
        }
        if let Some(w) = bf.window {
            limits.window = w.get();
        }
        if let Some(b) = bf.ban {
            limits.ban = b.get();
        }
        if let Some(m) = &bf.max_tracked {
            if *m.get_ref() == 0 {
                problems.push(Problem::at(
                    file,
                    text,
                    Some(m.span()),
                    "max_tracked must be at least 1",
                ));
            }
            limits.max_entries = *m.get_ref();
        }
    }
    let max_concurrent = match &raw.max_concurrent_verifications {
        Some(n) if *n.get_ref() == 0 || *n.get_ref() > MAX_CONCURRENT_VERIFICATIONS => {
            problems.push(Problem::at(
                file,
                text,
                Some(n.span()),
                format!("max_concurrent_verifications must be between 1 and {MAX_CONCURRENT_VERIFICATIONS}"),
            ));
            DEFAULT_MAX_CONCURRENT
        }
        Some(n) => *n.get_ref(),
        None => DEFAULT_MAX_CONCURRENT,
    };
    if !problems.is_empty() {
        return Err(ConfigError::from(problems));
    }
    Ok(AuthConfig {
        source: file.to_path_buf(),
        default_policy,
        listeners,
        password_file: raw.password_file.as_ref().map(resolve),
        acl_file: raw.acl_file.as_ref().map(resolve),
        failure_limits: limits,
        max_concurrent_verifications: max_concurrent,
        max_waiting_verifications: raw.max_waiting_verifications.unwrap_or(DEFAULT_MAX_WAITING),
        v3_disconnect_on_denied_publish: raw.v3_disconnect_on_denied_publish.unwrap_or(false),
    })
}

/// Validates one policy, pushing its problems.
fn policy(
    file: &Path,
    text: &str,
    f: &PolicyFields<'_>,
    has_password_file: bool,
    problems: &mut Vec<Problem>,
) -> ListenerPolicy {
    let mut p = ListenerPolicy {
        require_certificate: false,
        client_id_from_cert: None,
        username_from_cert: None,
        password: false,
        anonymous: f.anonymous.is_some_and(|a| *a.get_ref()),
    };
    let at = |span, msg: String| Problem::at(file, text, Some(span), msg);
    let names = f
        .policies
        .map(|p| p.get_ref().as_slice())
        .unwrap_or_default();
    let mut seen = Vec::new();
    for name in names {
        if seen.contains(&name.get_ref()) {
            problems.push(at(
                name.span(),
                format!("policy {:?} listed twice", name.get_ref()),
            ));
            continue;
        }
        seen.push(name.get_ref());
        match name.get_ref().as_str() {
            "certificate" => p.require_certificate = true,
            "client_id_from_cert" => {
                let template = f.template.map_or(DEFAULT_CLIENT_ID_TEMPLATE, |t| t.get_ref().as_str());
                match ClientIdTemplate::parse(template) {
                    Ok(t) => p.client_id_from_cert = Some(t),
                    Err(e) => problems.push(at(f.template.map_or(name.span(), Spanned::span), e.to_string())),
                }
            }
            "username_from_cert" => {
                let field = f.username_from.map_or("cn", |u| u.get_ref().as_str());
                match CertField::parse(field) {
                    Some(c) => p.username_from_cert = Some(c),
                    None => problems.push(at(
                        f.username_from.map_or(name.span(), Spanned::span),
                        format!("unknown certificate field {field:?} (use cn, san:DNS, san:URI, san:EMAIL or san:IP)"),
                    )),
                }
            }
            "password" => {
                p.password = true;
                if !has_password_file {
                    problems.push(at(name.span(), "the password policy needs `password_file`".to_string()));
                }
            }
            "anonymous" => problems.push(at(name.span(), "use `anonymous = true`, not a policy".to_string())),
            other => problems.push(at(
                name.span(),
                format!(
                    "unknown policy {other:?} (use certificate, client_id_from_cert, username_from_cert or password)"
                ),
            )),
        }
    }
    let whole = f
        .policies
        .map(Spanned::span)
        .or(f.anonymous.map(Spanned::span));
    let locate = |msg: &str| match whole.clone() {
        Some(span) => Problem::at(file, text, Some(span), msg),
        None => Problem::whole_file(file, format!("[auth]: {msg}")),
    };
    if p.anonymous && p.needs_certificate() {
        problems.push(locate(
            "`anonymous = true` with a certificate policy would let clients skip the certificate",
        ));
    }
    if !p.anonymous && !p.needs_certificate() && !p.password {
        problems.push(locate(
            "no policy and `anonymous = false` refuse every client; list policies",
        ));
    }
    p
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
