//! Authorization: the rules of the ACL file (ordered allow/deny rules, deny by default; read and validated by
//! `fleetgate_config::acl` into an `AclConfig`), bound once per client at CONNECT into a [`ClientAcl`] that PUBLISH
//! and SUBSCRIBE checks run against without allocating.
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
//!
//! The file's `[[client_ids]]` entries (which client IDs an identity may use) are kept here too and checked at
//! CONNECT by [`crate::binding`].

use fleetgate_config::acl::{Access, AclConfig, Action, Match, RuleConfig};

use crate::binding::{ClientIdBinding, ClientIdRules};
use crate::decision::{AuthFailure, Principal};
use crate::template::{Rendered, Values, render};
use crate::topic::Filter;

/// Does `access` cover operation `op`?
fn includes(access: Access, op: Op) -> bool {
    matches!(
        (access, op),
        (Access::Both, _) | (Access::Publish, Op::Publish) | (Access::Subscribe, Op::Subscribe)
    )
}

/// Does `matcher` select the client admitted as `p`?
pub(crate) fn selects(matcher: &Match, p: &Principal) -> bool {
    match matcher {
        Match::Username(u) => p.username.as_deref() == Some(u.as_str()),
        Match::Cn(c) => p.cn.as_deref() == Some(c.as_str()),
        Match::ClientId(c) => p.client_id == *c,
        Match::AnyAuthenticated(on) => *on && p.is_authenticated(),
        Match::Anyone(on) => *on,
    }
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

/// The ACL of one configuration generation: ordered rules, deny by default.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Acl {
    rules: Vec<RuleConfig>,
    client_ids: ClientIdRules,
}

impl Acl {
    /// The ACL of a validated ACL file.
    pub(crate) fn new(config: AclConfig) -> Self {
        Self {
            rules: config.rules,
            client_ids: ClientIdRules::new(config.client_ids),
        }
    }

    /// How the `[[client_ids]]` entries bind the client ID of `principal` (`Unbound` when none selects it), or
    /// `ClientIdMismatch` when the deciding entry does not admit it.
    pub(crate) fn check_client_id(
        &self,
        principal: &Principal,
    ) -> Result<ClientIdBinding, AuthFailure> {
        self.client_ids.check(principal)
    }

    /// The rules, in order.
    #[cfg(test)]
    pub(crate) fn rules(&self) -> &[RuleConfig] {
        &self.rules
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
            if !selects(&rule.matcher, principal) {
                continue;
            }
            let mut filters = Vec::with_capacity(rule.topics.len());
            let mut skip = false;
            for t in &rule.topics {
                match (render(t, &values), rule.action) {
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
        for rule in self.rules.iter().filter(|r| includes(r.access, op)) {
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
