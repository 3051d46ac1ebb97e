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

/// A validated ACL file: its rules in file order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AclConfig {
    /// The rules, in order (at most [`MAX_RULES`]).
    pub rules: Vec<RuleConfig>,
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
        if problems.is_empty() {
            Ok(Self { rules })
        } else {
            Err(ConfigError::from(problems))
        }
    }
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
    fn example_acl_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/acl.toml");
        assert!(!AclConfig::load(&path).unwrap().rules.is_empty());
    }
}
