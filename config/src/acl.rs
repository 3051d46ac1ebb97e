//! The ACL file (`[auth] acl_file`): TOML → raw `AclFile` (serde, `deny_unknown_fields`) → validated
//! [`AclConfig`], ordered allow/deny rules, every problem located as `file:line:column`. What the rules mean —
//! first match, deny by default, placeholders rendered safely, subscriptions checked against every topic they can
//! deliver — is `fleetgate_auth::acl`'s, which binds an [`AclConfig`] per client at CONNECT.
//!
//! ```toml
//! [[rules]]
//! action = "allow"                          # allow | deny
//! access = "both"                           # publish | subscribe | both
//! match = { any_authenticated = true }      # username | cn | client_id = "...", any_authenticated | anyone = true
//! topics = ["fleet/%c/#"]                   # filters; %c client ID, %u username, %cn certificate CN
//!
//! [[client_ids]]                            # client-ID binding per identity (the first entry that matches decides)
//! match = { username = "backend" }          # username | cn = "...", any_authenticated | anyone = true
//! allow = ["backend-1", "backend-*"]        # exact client IDs, or prefixes ending in `*`
//! ```

use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use crate::load::{ConfigError, Problem, parse_toml, read_file};

pub mod topic;

use topic::TopicTemplate;

/// Most rules an ACL file may hold: every PUBLISH walks the client's applicable rules, so a runaway generated file
/// must not turn each message into a long scan.
pub(crate) const MAX_RULES: usize = 10_000;

/// Raw ACL file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AclFile {
    #[serde(default)]
    rules: Vec<RuleFile>,
    #[serde(default)]
    client_ids: Vec<ClientIdsFile>,
}

/// Raw `[[client_ids]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientIdsFile {
    #[serde(rename = "match")]
    matcher: Spanned<Match>,
    allow: Spanned<Vec<Spanned<String>>>,
}

/// Raw `[[rules]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    action: Action,
    access: Access,
    #[serde(rename = "match")]
    matcher: Spanned<Match>,
    topics: Spanned<Vec<Spanned<String>>>,
}

/// Whether a rule grants or refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Grant.
    Allow,
    /// Refuse.
    Deny,
}

/// Which operations a rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// PUBLISH only.
    Publish,
    /// SUBSCRIBE only.
    Subscribe,
    /// Both.
    Both,
}

/// Which clients a rule is about (exactly one key in the `match` table).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Match {
    /// The authenticated username equals this.
    Username(String),
    /// The verified certificate CN equals this.
    Cn(String),
    /// The client ID equals this.
    ClientId(String),
    /// Any client that authenticated (not anonymous); always `true` once validated.
    AnyAuthenticated(bool),
    /// Every client, anonymous included; always `true` once validated.
    Anyone(bool),
}

/// One validated rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleConfig {
    /// Allow or deny.
    pub action: Action,
    /// Publish, subscribe or both.
    pub access: Access,
    /// Which clients.
    pub matcher: Match,
    /// Topic filters, possibly with placeholders (at least one).
    pub topics: Vec<TopicTemplate>,
}

/// A client ID an identity may use, as a `[[client_ids]]` entry writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientIdPattern {
    /// Exactly this client ID.
    Exact(String),
    /// Any client ID that starts with this (written with a trailing `*`; `*` alone is any client ID).
    Prefix(String),
}

impl ClientIdPattern {
    /// Parses `text`: a trailing `*` makes a prefix; a `*` anywhere else, U+0000 and the empty string are refused.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let (body, prefix) = match text.strip_suffix('*') {
            Some(body) => (body, true),
            None => (text, false),
        };
        if text.is_empty() {
            Err("a client ID pattern is empty")
        } else if text.len() > topic::MAX_FILTER_LEN {
            Err("a client ID pattern is longer than 65535 bytes")
        } else if body.contains('*') {
            Err("`*` may only end a client ID pattern (a prefix)")
        } else if text.contains('\0') {
            Err("a client ID pattern contains U+0000")
        } else if prefix {
            Ok(ClientIdPattern::Prefix(body.to_string()))
        } else {
            Ok(ClientIdPattern::Exact(body.to_string()))
        }
    }
}

/// One validated `[[client_ids]]` entry: the client IDs the identities it selects may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdRuleConfig {
    /// Which clients (never by client ID: that would bind a client ID to itself).
    pub matcher: Match,
    /// What they may use as client ID (at least one).
    pub allow: Vec<ClientIdPattern>,
}

/// A validated ACL file: its rules in file order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AclConfig {
    /// The rules, in order (at most [`MAX_RULES`]).
    pub rules: Vec<RuleConfig>,
    /// The client-ID bindings, in order (at most [`MAX_RULES`]); the first whose `match` selects a client
    /// decides which client IDs it may use. None selects it: the ACL does not bind its client ID.
    pub client_ids: Vec<ClientIdRuleConfig>,
}

impl AclConfig {
    /// The ACL a node runs without `acl_file`: every client may publish and subscribe to every topic except `$`
    /// topics (`#` never matches those).
    pub fn allow_all() -> Self {
        let all = TopicTemplate::parse("#")
            .map(|t| vec![t])
            .unwrap_or_default();
        Self {
            rules: vec![RuleConfig {
                action: Action::Allow,
                access: Access::Both,
                matcher: Match::Anyone(true),
                topics: all,
            }],
            client_ids: Vec::new(),
        }
    }

    /// Reads and validates an ACL file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read_file(path)?;
        Self::parse(path, &text)
    }

    /// Parses ACL TOML `text` read from `file`, reporting every problem with its line and column.
    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        let raw: AclFile = parse_toml(file, text)?;
        let mut problems = Vec::new();
        if raw.rules.len() > MAX_RULES {
            problems.push(Problem::whole_file(
                file,
                format!("more than {MAX_RULES} rules"),
            ));
        }
        let mut rules = Vec::with_capacity(raw.rules.len());
        for r in raw.rules {
            let matcher = r.matcher.get_ref().clone();
            if matches!(
                matcher,
                Match::AnyAuthenticated(false) | Match::Anyone(false)
            ) {
                problems.push(Problem::at(
                    file,
                    text,
                    Some(r.matcher.span()),
                    "only `true` is meaningful here",
                ));
            }
            if r.topics.get_ref().is_empty() {
                problems.push(Problem::at(
                    file,
                    text,
                    Some(r.topics.span()),
                    "a rule needs at least one topic",
                ));
            }
            let mut topics = Vec::new();
            for t in r.topics.into_inner() {
                match TopicTemplate::parse(t.get_ref()) {
                    Ok(tt) => topics.push(tt),
                    Err(e) => problems.push(Problem::at(
                        file,
                        text,
                        Some(t.span()),
                        format!("invalid topic: {e}"),
                    )),
                }
            }
            rules.push(RuleConfig {
                action: r.action,
                access: r.access,
                matcher,
                topics,
            });
        }
        let client_ids = validate_client_ids(file, text, raw.client_ids, &mut problems);
        if problems.is_empty() {
            Ok(Self { rules, client_ids })
        } else {
            Err(ConfigError::from(problems))
        }
    }

    /// True when an allow rule grants topics by client ID — it matches `client_id = "..."`, or it selects a client
    /// `selects` says it may (by its `match`) and its topics use `%c`: a client that picks another's client ID then
    /// gets that client's rights unless client IDs are bound (what `fleetgate check` warns about).
    pub fn grants_by_client_id(&self, selects: impl Fn(&Match) -> bool) -> bool {
        self.rules.iter().any(|r| {
            r.action == Action::Allow
                && (matches!(r.matcher, Match::ClientId(_))
                    || (selects(&r.matcher) && r.topics.iter().any(TopicTemplate::uses_client_id)))
        })
    }
}

/// Validates the `[[client_ids]]` entries, pushing their problems.
fn validate_client_ids(
    file: &Path,
    text: &str,
    raw: Vec<ClientIdsFile>,
    problems: &mut Vec<Problem>,
) -> Vec<ClientIdRuleConfig> {
    if raw.len() > MAX_RULES {
        problems.push(Problem::whole_file(
            file,
            format!("more than {MAX_RULES} [[client_ids]] entries"),
        ));
    }
    let mut out = Vec::with_capacity(raw.len());
    for entry in raw {
        let matcher = entry.matcher.get_ref().clone();
        let bad_match = match matcher {
            Match::ClientId(_) => {
                Some("a client-ID binding selects clients by identity, not by client ID")
            }
            Match::AnyAuthenticated(false) | Match::Anyone(false) => {
                Some("only `true` is meaningful here")
            }
            _ => None,
        };
        if let Some(message) = bad_match {
            problems.push(Problem::at(file, text, Some(entry.matcher.span()), message));
        }
        if entry.allow.get_ref().is_empty() {
            problems.push(Problem::at(
                file,
                text,
                Some(entry.allow.span()),
                "a [[client_ids]] entry needs at least one client ID in `allow`",
            ));
        }
        let mut allow = Vec::new();
        for pattern in entry.allow.into_inner() {
            match ClientIdPattern::parse(pattern.get_ref()) {
                Ok(p) => allow.push(p),
                Err(message) => {
                    problems.push(Problem::at(file, text, Some(pattern.span()), message))
                }
            }
        }
        out.push(ClientIdRuleConfig { matcher, allow });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AclConfig, ConfigError> {
        AclConfig::parse(Path::new("acl.toml"), text)
    }

    #[test]
    fn rules_keep_their_order_and_values() {
        let text = "[[rules]]\naction = \"deny\"\naccess = \"publish\"\nmatch = { cn = \"x\" }\ntopics = [\"a/%c\"]\n\
                    [[rules]]\naction = \"allow\"\naccess = \"both\"\nmatch = { anyone = true }\ntopics = [\"#\", \"b\"]\n";
        let acl = parse(text).unwrap();
        assert_eq!(acl.rules.len(), 2);
        let first = &acl.rules[0];
        assert_eq!(
            (first.action, first.access, &first.matcher),
            (Action::Deny, Access::Publish, &Match::Cn("x".into()))
        );
        assert_eq!(first.topics[0].as_str(), "a/%c");
        assert_eq!(acl.rules[1].topics.len(), 2);
        assert_eq!(
            parse("").unwrap(),
            AclConfig::default(),
            "no rules: deny all"
        );
        assert_eq!(AclConfig::allow_all().rules[0].topics[0].as_str(), "#");
    }

    #[test]
    fn parse_errors_are_located() {
        let text = "[[rules]]\naction = \"allow\"\naccess = \"both\"\nmatch = { anyone = true }\ntopics = [\"ok\", \"a/#/b\", \"%q\"]\n";
        let err = parse(text).unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
        assert!(err.problems.iter().all(|p| p.line == 5), "{err}");
        assert!(err.to_string().contains("acl.toml:5:"), "{err}");
        assert!(
            err.to_string().contains("invalid topic: `#` must be"),
            "{err}"
        );

        let bad_action = "[[rules]]\naction = \"permit\"\naccess = \"both\"\nmatch = { anyone = true }\ntopics = [\"x\"]\n";
        let err = parse(bad_action).unwrap_err();
        assert_eq!(err.problems[0].line, 2, "{err}");

        let false_match = "[[rules]]\naction = \"allow\"\naccess = \"both\"\nmatch = { anyone = false }\ntopics = []\n";
        let err = parse(false_match).unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");

        let two_keys = "[[rules]]\naction = \"allow\"\naccess = \"both\"\nmatch = { anyone = true, cn = \"x\" }\ntopics = [\"x\"]\n";
        assert!(parse(two_keys).is_err());

        let unknown = "[[rules]]\naction = \"allow\"\naccess = \"both\"\nmatch = { anyone = true }\ntopics = [\"x\"]\nqos = 1\n";
        assert_eq!(parse(unknown).unwrap_err().problems[0].line, 6);
    }

    #[test]
    fn too_many_rules_is_a_problem() {
        let rule = "[[rules]]\naction = \"allow\"\naccess = \"both\"\nmatch = { anyone = true }\ntopics = [\"x\"]\n";
        let err = parse(&rule.repeat(MAX_RULES + 1)).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("acl.toml: more than {MAX_RULES} rules")),
            "{err}"
        );
    }

    #[test]
    fn client_id_bindings_keep_their_order_and_patterns() {
        let text = "[[client_ids]]\nmatch = { username = \"alice\" }\nallow = [\"alice-1\", \"alice-*\"]\n\
                    [[client_ids]]\nmatch = { any_authenticated = true }\nallow = [\"*\"]\n";
        let acl = parse(text).unwrap();
        assert!(acl.rules.is_empty());
        assert_eq!(acl.client_ids.len(), 2);
        assert_eq!(acl.client_ids[0].matcher, Match::Username("alice".into()));
        assert_eq!(
            acl.client_ids[0].allow,
            [
                ClientIdPattern::Exact("alice-1".into()),
                ClientIdPattern::Prefix("alice-".into())
            ]
        );
        assert_eq!(
            acl.client_ids[1].allow,
            [ClientIdPattern::Prefix(String::new())]
        );
    }

    #[test]
    fn client_id_binding_problems_are_located() {
        let text = "[[client_ids]]\nmatch = { client_id = \"x\" }\nallow = [\"ok\", \"\", \"a*b\"]\n\
                    [[client_ids]]\nmatch = { anyone = false }\nallow = []\n";
        let err = parse(text).unwrap_err();
        let lines: Vec<usize> = err.problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [2, 3, 3, 5, 6], "{err}");
        assert!(
            err.to_string().contains("by identity, not by client ID"),
            "{err}"
        );
        assert!(err.to_string().contains("`*` may only end"), "{err}");
        let unknown = "[[client_ids]]\nmatch = { cn = \"x\" }\nallow = [\"x\"]\nprefix = \"y\"\n";
        assert_eq!(parse(unknown).unwrap_err().problems[0].line, 4);
    }

    #[test]
    fn grants_by_client_id_sees_allow_rules_with_percent_c() {
        let rule = |action: &str, matcher: &str, topic: &str| {
            format!(
                "[[rules]]\naction = \"{action}\"\naccess = \"both\"\nmatch = {matcher}\ntopics = [\"{topic}\"]\n"
            )
        };
        let any = |_: &Match| true;
        let acl = parse(&rule("allow", "{ any_authenticated = true }", "fleet/%c/#")).unwrap();
        assert!(acl.grants_by_client_id(any));
        assert!(!acl.grants_by_client_id(|m| matches!(m, Match::Cn(_))));
        let deny = parse(&rule("deny", "{ anyone = true }", "fleet/%c/#")).unwrap();
        assert!(!deny.grants_by_client_id(any), "a deny grants nothing");
        let user = parse(&rule("allow", "{ anyone = true }", "users/%u/#")).unwrap();
        assert!(!user.grants_by_client_id(any));
        let by_id = parse(&rule("allow", "{ client_id = \"dev-7\" }", "fleet/dev-7/#")).unwrap();
        assert!(
            by_id.grants_by_client_id(|_| false),
            "a rule by client ID is a grant by client ID"
        );
    }

    #[test]
    fn example_acl_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/acl.toml");
        assert!(!AclConfig::load(&path).unwrap().rules.is_empty());
    }
}
