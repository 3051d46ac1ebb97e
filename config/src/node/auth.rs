//! The `[auth]` section of a node config: raw [`AuthSectionFile`] (serde, `deny_unknown_fields`) → validated
//! [`AuthConfig`] (a policy per listener, the password and ACL file paths, brute-force limits, password-check
//! bounds), every problem located as `file:line:column`. Validated with the rest of `node.toml` by
//! [`NodeConfig`](super::NodeConfig); a hot reload re-reads this section alone ([`AuthConfig::load`]).
//! `fleetgate_auth` builds the running policies, ACL engine and password store from the result.
//!
//! ```toml
//! [auth]
//! policies = ["certificate", "client_id_from_cert"]   # certificate | client_id_from_cert | username_from_cert | password | bind_client_id
//! client_id_template = "vehicle-{cn}"                 # {cn}, {san:DNS|URI|EMAIL|IP}, {username}; trailing `*` = prefix; default "{cn}"
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
//! # Per-listener override, keyed by a `[[listeners]]` entry's `name`; unset fields inherit [auth].
//! [auth.listeners.internal]
//! policies = ["password", "bind_client_id"]          # password users may use only client IDs `<username>-...`
//! client_id_template = "{username}-*"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::duration::ConfigDuration;
use crate::load::{ConfigError, Problem, parse_toml, read_file};

mod policy;

pub use policy::{
    CertField, ClientIdTemplate, ClientIdTemplateError, PolicyConfig, SanKind, TemplatePiece,
};

/// Upper bound on `max_concurrent_verifications`: each check holds ~19 MiB while it runs.
pub(crate) const MAX_CONCURRENT_VERIFICATIONS: usize = 64;
/// Default password checks run at once: one per core of a small node, leaving the runtime threads room.
pub const DEFAULT_MAX_CONCURRENT_VERIFICATIONS: usize = 2;
/// Default CONNECTs waiting for a password check: ~1 s of queue at ~25 ms per check and two slots.
pub const DEFAULT_MAX_WAITING_VERIFICATIONS: usize = 64;
/// Default client ID template for `client_id_from_cert`.
pub(crate) const DEFAULT_CLIENT_ID_TEMPLATE: &str = "{cn}";
/// Default failures that trigger a ban: enough for a device with a stale password to retry a few times.
pub(crate) const DEFAULT_MAX_FAILURES: u32 = 5;
/// Default window failures are counted in.
pub(crate) const DEFAULT_FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Default ban length: short, because a carrier-grade NAT can put many honest devices behind one address.
pub(crate) const DEFAULT_BAN: Duration = Duration::from_secs(300);
/// Default number of addresses tracked (about 100 bytes each, so ~10 MB at the cap).
pub(crate) const DEFAULT_MAX_TRACKED: usize = 100_000;

/// The file around the section when the section is read alone (a hot reload): every other table belongs to the
/// rest of the node config, which is not reloaded.
#[derive(Debug, Deserialize)]
struct HostFile {
    auth: Option<AuthSectionFile>,
}

/// Raw `[auth]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthSectionFile {
    /// Policies of every listener without an override.
    pub(crate) policies: Option<Spanned<Vec<Spanned<String>>>>,
    /// Template for `client_id_from_cert`.
    pub(crate) client_id_template: Option<Spanned<String>>,
    /// Certificate field for `username_from_cert`.
    pub(crate) username_from: Option<Spanned<String>>,
    /// Admit clients without credentials.
    pub(crate) anonymous: Option<Spanned<bool>>,
    /// Password file path.
    pub(crate) password_file: Option<Spanned<String>>,
    /// ACL file path.
    pub(crate) acl_file: Option<Spanned<String>>,
    /// Password checks at once.
    pub(crate) max_concurrent_verifications: Option<Spanned<usize>>,
    /// CONNECTs queued for a password check.
    pub(crate) max_waiting_verifications: Option<usize>,
    /// Close a 3.1.1 connection whose PUBLISH the ACL denies (instead of dropping the message).
    pub(crate) v3_disconnect_on_denied_publish: Option<bool>,
    /// `[auth.brute_force]`.
    pub(crate) brute_force: Option<BruteForceFile>,
    /// `[auth.listeners.<name>]` overrides.
    #[serde(default)]
    pub(crate) listeners: BTreeMap<Spanned<String>, PolicyFile>,
}

/// Raw per-listener override.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicyFile {
    /// Policies.
    pub(crate) policies: Option<Spanned<Vec<Spanned<String>>>>,
    /// Template for `client_id_from_cert`.
    pub(crate) client_id_template: Option<Spanned<String>>,
    /// Certificate field for `username_from_cert`.
    pub(crate) username_from: Option<Spanned<String>>,
    /// Admit clients without credentials.
    pub(crate) anonymous: Option<Spanned<bool>>,
}

/// Raw `[auth.brute_force]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BruteForceFile {
    /// Failures in `window` that trigger a ban.
    pub(crate) max_failures: Option<Spanned<u32>>,
    /// Window failures are counted in.
    pub(crate) window: Option<ConfigDuration>,
    /// Ban length.
    pub(crate) ban: Option<ConfigDuration>,
    /// Addresses tracked at most.
    pub(crate) max_tracked: Option<Spanned<usize>>,
}

/// The validated `[auth.brute_force]`: password failures per source address that earn a short ban.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BruteForceConfig {
    /// Failures within `window` that trigger a ban (≥ 1).
    pub max_failures: u32,
    /// How long failures are remembered.
    pub window: Duration,
    /// How long a ban lasts.
    pub ban: Duration,
    /// Most addresses tracked at once (≥ 1).
    pub max_entries: usize,
}

impl Default for BruteForceConfig {
    fn default() -> Self {
        Self {
            max_failures: DEFAULT_MAX_FAILURES,
            window: DEFAULT_FAILURE_WINDOW,
            ban: DEFAULT_BAN,
            max_entries: DEFAULT_MAX_TRACKED,
        }
    }
}

/// The validated `[auth]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// Policy of listeners without an override.
    pub default_policy: PolicyConfig,
    /// Overrides by listener name (each names a `[[listeners]]` entry).
    pub listeners: BTreeMap<String, PolicyConfig>,
    /// Password file (resolved against the config file's directory).
    pub password_file: Option<PathBuf>,
    /// ACL file (resolved likewise); `None` allows every non-`$` topic.
    pub acl_file: Option<PathBuf>,
    /// Brute-force limits.
    pub brute_force: BruteForceConfig,
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
    /// Reads the `[auth]` section of the node config at `path` alone — what a hot reload applies: the rest of the
    /// file is not reloaded, so a mistake elsewhere in it does not hold the auth files back. `listeners` are the
    /// running node's listener names, which `[auth.listeners.<name>]` must name. `Ok(None)` without a section.
    pub fn load(path: &Path, listeners: &[String]) -> Result<Option<AuthConfig>, ConfigError> {
        let source = read_file(path)?;
        Self::parse(path, &source, listeners)
    }

    /// Like [`Self::load`], for text `source` read from `file`.
    pub(crate) fn parse(
        file: &Path,
        source: &str,
        listeners: &[String],
    ) -> Result<Option<AuthConfig>, ConfigError> {
        let host: HostFile = parse_toml(file, source)?;
        let names: Vec<&str> = listeners.iter().map(String::as_str).collect();
        host.auth
            .map(|raw| validate_auth(file, source, &raw, &names).map_err(ConfigError::from))
            .transpose()
    }
}

/// Validates a raw `[auth]` table of `file` (text `source`) for a node whose listeners are named `listeners`,
/// collecting every problem.
pub(crate) fn validate_auth(
    file: &Path,
    source: &str,
    raw: &AuthSectionFile,
    listeners: &[&str],
) -> Result<AuthConfig, Vec<Problem>> {
    let mut problems = Vec::new();
    let top = PolicyFields {
        policies: raw.policies.as_ref(),
        template: raw.client_id_template.as_ref(),
        username_from: raw.username_from.as_ref(),
        anonymous: raw.anonymous.as_ref(),
    };
    let has_password_file = raw.password_file.is_some();
    let default_policy = validate_policy(file, source, &top, has_password_file, &mut problems);
    let mut overrides = BTreeMap::new();
    for (name, l) in &raw.listeners {
        if !listeners.contains(&name.get_ref().as_str()) {
            let text = name.get_ref();
            problems.push(Problem::at(
                file,
                source,
                Some(name.span()),
                format!("[auth.listeners.{text}]: no [[listeners]] entry has name = {text:?}"),
            ));
        }
        let fields = PolicyFields {
            policies: l.policies.as_ref().or(top.policies),
            template: l.client_id_template.as_ref().or(top.template),
            username_from: l.username_from.as_ref().or(top.username_from),
            anonymous: l.anonymous.as_ref().or(top.anonymous),
        };
        overrides.insert(
            name.get_ref().clone(),
            validate_policy(file, source, &fields, has_password_file, &mut problems),
        );
    }
    let base = file.parent().unwrap_or(Path::new(""));
    let resolve = |p: &Spanned<String>| base.join(p.get_ref());
    let brute_force = raw
        .brute_force
        .as_ref()
        .map_or_else(BruteForceConfig::default, |bf| {
            validate_brute_force(file, source, bf, &mut problems)
        });
    let max_concurrent = match &raw.max_concurrent_verifications {
        Some(n) if *n.get_ref() == 0 || *n.get_ref() > MAX_CONCURRENT_VERIFICATIONS => {
            problems.push(Problem::at(
                file,
                source,
                Some(n.span()),
                format!("max_concurrent_verifications must be between 1 and {MAX_CONCURRENT_VERIFICATIONS}"),
            ));
            DEFAULT_MAX_CONCURRENT_VERIFICATIONS
        }
        Some(n) => *n.get_ref(),
        None => DEFAULT_MAX_CONCURRENT_VERIFICATIONS,
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(AuthConfig {
        default_policy,
        listeners: overrides,
        password_file: raw.password_file.as_ref().map(resolve),
        acl_file: raw.acl_file.as_ref().map(resolve),
        brute_force,
        max_concurrent_verifications: max_concurrent,
        max_waiting_verifications: raw
            .max_waiting_verifications
            .unwrap_or(DEFAULT_MAX_WAITING_VERIFICATIONS),
        v3_disconnect_on_denied_publish: raw.v3_disconnect_on_denied_publish.unwrap_or(false),
    })
}

/// Validates `[auth.brute_force]`, pushing its problems.
fn validate_brute_force(
    file: &Path,
    source: &str,
    bf: &BruteForceFile,
    problems: &mut Vec<Problem>,
) -> BruteForceConfig {
    let mut limits = BruteForceConfig::default();
    if let Some(n) = &bf.max_failures {
        if *n.get_ref() == 0 {
            problems.push(Problem::at(
                file,
                source,
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
                source,
                Some(m.span()),
                "max_tracked must be at least 1",
            ));
        }
        limits.max_entries = *m.get_ref();
    }
    limits
}

/// Validates one policy, pushing its problems.
fn validate_policy(
    file: &Path,
    source: &str,
    f: &PolicyFields<'_>,
    has_password_file: bool,
    problems: &mut Vec<Problem>,
) -> PolicyConfig {
    let mut p = PolicyConfig {
        require_certificate: false,
        client_id_from_cert: None,
        bind_client_id: None,
        username_from_cert: None,
        password: false,
        anonymous: f.anonymous.is_some_and(|a| *a.get_ref()),
    };
    let at = |span, msg: String| Problem::at(file, source, Some(span), msg);
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
                let span = f.template.map_or(name.span(), Spanned::span);
                let problem = match ClientIdTemplate::parse(template) {
                    Ok(t) if t.uses_username() => Some(
                        "client_id_from_cert takes certificate fields only; for {username} list \"bind_client_id\""
                            .to_string(),
                    ),
                    Ok(t) => {
                        p.client_id_from_cert = Some(t);
                        None
                    }
                    Err(e) => Some(e.to_string()),
                };
                if let Some(message) = problem {
                    problems.push(at(span, message));
                    // The policy implies a certificate all the same: the one mistake is reported once.
                    p.require_certificate = true;
                }
            }
            "bind_client_id" => match f.template {
                None => problems.push(at(
                    name.span(),
                    "bind_client_id needs `client_id_template` (e.g. \"{username}-*\")".to_string(),
                )),
                Some(t) => match ClientIdTemplate::parse(t.get_ref()) {
                    Ok(template) => p.bind_client_id = Some(template),
                    Err(e) => problems.push(at(t.span(), e.to_string())),
                },
            },
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
                    "unknown policy {other:?} (use certificate, client_id_from_cert, username_from_cert, password or bind_client_id)"
                ),
            )),
        }
    }
    let whole = f
        .policies
        .map(Spanned::span)
        .or(f.anonymous.map(Spanned::span));
    let locate = |msg: &str| match whole.clone() {
        Some(span) => Problem::at(file, source, Some(span), msg),
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
    if let Some(bind) = &p.bind_client_id {
        if p.client_id_from_cert.is_some() {
            problems.push(locate(
                "list client_id_from_cert or bind_client_id, not both: they share `client_id_template`",
            ));
        } else if !p.needs_certificate() && !p.password {
            problems.push(locate(
                "bind_client_id binds authenticated clients: list password or a certificate policy",
            ));
        } else if bind.uses_username() && !p.password && p.username_from_cert.is_none() {
            problems.push(locate(
                "{username} in client_id_template needs the password or username_from_cert policy",
            ));
        }
    }
    p
}

#[cfg(test)]
mod tests;
