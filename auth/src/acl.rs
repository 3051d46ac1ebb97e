//! Authorization: the ACL file (ordered allow/deny rules, deny by default), bound once per client at CONNECT
//! into a [`ClientAcl`] that PUBLISH and SUBSCRIBE checks run against without allocating.
//!
//! # Semantics
//! Rules are tried in file order; a rule *applies* to a client when its `match` selects the client and its
//! `access` includes the operation. The first applicable rule that *decides* wins; if none decides, the answer is
//! deny.
//! - PUBLISH (a concrete topic): a rule decides when one of its topics matches the topic.
//! - SUBSCRIBE (a filter `S`, possibly with wildcards): an allow rule decides when one of its topics *covers* `S`
//!   (every topic `S` can match is matched by it); a deny rule decides when one of its topics *intersects* `S`
//!   (some topic is matched by both). So a subscription is allowed only if every topic it can ever deliver is
//!   allowed by per-topic first-match. The check is conservative in one direction only: an allow is never
//!   assembled from the union of several rules' topics (`a/x` + `a/y` does not allow `a/+` even when those are the
//!   only possible values), which can deny a subscription that per-topic first-match would allow — never the
//!   reverse.
//! - Topics starting with `$` are matched only by rule topics that name a `$` first level literally (MQTT §4.7.2).
//!
//! Placeholders (`%c`, `%u`, `%cn`) are rendered by [`crate::template`]: for a value that is missing, empty or
//! contains `+`, `#`, `/` or NUL, an allow rule is skipped for that client, and a deny rule applies with that
//! level widened to `+` (skipping a deny would grant access).

use std::path::Path;

use fleetgate_config::load::{ConfigError, Problem, parse_toml, read_file};
use serde::Deserialize;
use toml::Spanned;

use crate::decision::Principal;
use crate::template::{Rendered, TopicTemplate, Values};
use crate::topic::Filter;

/// Most rules an ACL file may hold: every PUBLISH walks the client's applicable rules, so a runaway generated file
/// must not turn each message into a long scan.
pub const MAX_RULES: usize = 10_000;

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

impl Access {
    fn includes(self, op: Op) -> bool {
        matches!(
            (self, op),
            (Access::Both, _) | (Access::Publish, Op::Publish) | (Access::Subscribe, Op::Subscribe)
        )
    }
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
    /// Any client that authenticated (not anonymous); must be `true`.
    AnyAuthenticated(bool),
    /// Every client, anonymous included; must be `true`.
    Anyone(bool),
}

impl Match {
    fn selects(&self, p: &Principal) -> bool {
        match self {
            Match::Username(u) => p.username.as_deref() == Some(u.as_str()),
            Match::Cn(c) => p.cn.as_deref() == Some(c.as_str()),
            Match::ClientId(c) => p.client_id == *c,
            Match::AnyAuthenticated(on) => *on && p.is_authenticated(),
            Match::Anyone(on) => *on,
        }
    }
}

/// One validated rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Allow or deny.
    pub action: Action,
    /// Publish, subscribe or both.
    pub access: Access,
    /// Which clients.
    pub matcher: Match,
    /// Topic filters, possibly with placeholders.
    pub topics: Vec<TopicTemplate>,
}

/// The outcome of an ACL check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclDecision {
    /// Go ahead.
    Allow,
    /// Refuse (v5 PUBACK/PUBREC/SUBACK 0x87, v3 SUBACK 0x80); `rule_index` is the 0-based index of the deciding
    /// deny rule in the file, `None` when no rule decided (default deny).
    Deny {
        /// The deny rule that decided, if any.
        rule_index: Option<usize>,
    },
}

/// A parsed ACL: ordered rules, deny by default.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Acl {
    rules: Vec<Rule>,
}

impl Acl {
    /// An ACL from rules already built (tests, embedders).
    pub fn from_rules(rules: Vec<Rule>) -> Self {
        Self { rules }
    }

    /// The ACL used when no `acl_file` is configured: every client may publish and subscribe to every topic
    /// except `$` topics (`#` never matches those).
    pub fn allow_all() -> Self {
        let all = TopicTemplate::parse("#")
            .map(|t| vec![t])
            .unwrap_or_default();
        Self {
            rules: vec![Rule {
                action: Action::Allow,
                access: Access::Both,
                matcher: Match::Anyone(true),
                topics: all,
            }],
        }
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
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
            rules.push(Rule {
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

    /// Prepares the ACL for one client: keeps the rules that select `principal`, with placeholders rendered.
    /// Call once at CONNECT (and again after a reload to apply the new ACL to live connections).
    pub fn bind(&self, principal: &Principal) -> ClientAcl {
        let values = Values {
            client_id: Some(principal.client_id.as_str()),
            username: principal.username.as_deref(),
            cn: principal.cn.as_deref(),
        };
        let mut rules = Vec::new();
        for (index, rule) in self.rules.iter().enumerate() {
            if !rule.matcher.selects(principal) {
                continue;
            }
            let mut filters = Vec::with_capacity(rule.topics.len());
            let mut skip = false;
            for t in &rule.topics {
                match (t.render(&values), rule.action) {
                    (Rendered::Exact(f), _) | (Rendered::Unsafe(f), Action::Deny) => {
                        filters.push(f)
                    }
                    // An unsafe value must not widen a grant: the whole allow rule is skipped for this client.
                    (Rendered::Unsafe(_), Action::Allow) => skip = true,
                }
            }
            if !skip {
                rules.push(BoundRule {
                    index,
                    action: rule.action,
                    access: rule.access,
                    filters,
                });
            }
        }
        ClientAcl { rules }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Publish,
    Subscribe,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct BoundRule {
    index: usize,
    action: Action,
    access: Access,
    filters: Vec<Filter>,
}

/// The ACL for one connected client: the rules that select it, placeholders rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAcl {
    rules: Vec<BoundRule>,
}

impl ClientAcl {
    /// May the client publish to the concrete `topic`?
    pub fn check_publish(&self, topic: &str) -> AclDecision {
        self.first_decision(Op::Publish, |_, f| f.matches(topic))
    }

    /// May the client subscribe to `filter`? An invalid filter is denied.
    pub fn check_subscribe(&self, filter: &str) -> AclDecision {
        let Ok(wanted) = Filter::parse(filter) else {
            return AclDecision::Deny { rule_index: None };
        };
        self.first_decision(Op::Subscribe, |action, f| match action {
            Action::Allow => f.covers(&wanted),
            Action::Deny => f.intersects(&wanted),
        })
    }

    fn first_decision(&self, op: Op, decides: impl Fn(Action, &Filter) -> bool) -> AclDecision {
        for rule in self.rules.iter().filter(|r| r.access.includes(op)) {
            if rule.filters.iter().any(|f| decides(rule.action, f)) {
                return match rule.action {
                    Action::Allow => AclDecision::Allow,
                    Action::Deny => AclDecision::Deny {
                        rule_index: Some(rule.index),
                    },
                };
            }
        }
        AclDecision::Deny { rule_index: None }
    }
}

#[cfg(test)]
#[path = "acl_tests.rs"]
mod tests;
