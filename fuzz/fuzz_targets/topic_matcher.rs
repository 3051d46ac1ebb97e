//! Topic matching against a reference written here from MQTT 5 §4.7 in the plainest way (split on `/`, compare
//! level by level): the broker's matcher (`fleetgate_protocol::mqtt::topic::matches`) and its validators, and the
//! ACL (`fleetgate_auth`: rules bound for a client, PUBLISH decided by matching, SUBSCRIBE by `covers` for an
//! allow and `intersects` for a deny, first applicable rule wins, deny by default), including `$` topics, `+`
//! matching an empty level and `#` matching its parent.
//!
//! Input: a byte of rule actions (bit i: rule i allows), a byte of rule accesses (2 bits per rule), then
//! 0xFF-separated UTF-8 strings (0xFF never occurs in UTF-8): a topic, a filter, then up to 3 rule topics.

#![no_main]

use fleetgate_auth::fuzzing::bind_acl;
use fleetgate_auth::{AclDecision, AuthMethod, Principal};
use fleetgate_config::acl::topic::TopicTemplate;
use fleetgate_config::acl::{Access, AclConfig, Action, Match, RuleConfig};
use fleetgate_protocol::mqtt::topic;
use libfuzzer_sys::fuzz_target;

/// Rules per ACL.
const MAX_RULES: usize = 3;
/// Deepest filters whose `covers`/`intersects` the reference decides by enumeration (the topics enumerated
/// grow as 3^levels).
const MAX_ENUMERATED_LEVELS: usize = 4;
/// Longest topic or filter (the MQTT string limit).
const MAX_LEN: usize = 65_535;
/// Most levels the broker accepts in a topic or filter (`topic::MAX_TOPIC_LEVELS`, restated).
const MAX_LEVELS: usize = 128;

fuzz_target!(|data: &[u8]| {
    let Some(([actions, accesses], rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let Some(strings) = rest
        .split(|&b| b == 0xFF)
        .map(|s| std::str::from_utf8(s).ok())
        .collect::<Option<Vec<&str>>>()
    else {
        return;
    };
    let [topic, filter, rule_topics @ ..] = strings.as_slice() else {
        return;
    };
    broker_side(topic, filter);
    for rule_topic in rule_topics {
        broker_side(topic, rule_topic);
    }
    if rule_topics.len() <= MAX_RULES && !rule_topics.iter().any(|t| t.contains('%')) {
        acl_side(*actions, *accesses, topic, filter, rule_topics);
    }
});

/// The broker's validators and matcher against the reference.
fn broker_side(topic: &str, filter: &str) {
    let name_ok = valid_name(topic) && within_broker_limits(topic);
    assert_eq!(
        topic::validate_topic_name(topic).is_ok(),
        name_ok,
        "name {topic:?}"
    );
    // `$share/{group}/{filter}`: a group without wildcards, then a filter; the limits count the whole string.
    let whole_ok = !filter.contains('\0') && within_broker_limits(filter);
    let (plain, filter_ok) = match filter.strip_prefix("$share/") {
        Some(rest) => match rest.split_once('/') {
            Some((group, inner)) => {
                let group_ok = !group.is_empty() && !group.contains(['+', '#']);
                (inner, whole_ok && group_ok && valid_filter(inner))
            }
            None => (rest, false),
        },
        None => (filter, whole_ok && valid_filter(filter)),
    };
    assert_eq!(
        topic::validate_topic_filter(filter).is_ok(),
        filter_ok,
        "filter {filter:?}"
    );
    if name_ok && filter_ok {
        assert_eq!(topic::split_shared(filter).1, plain);
        assert_eq!(
            topic::matches(plain, topic),
            matches(plain, topic),
            "{plain:?} vs {topic:?}"
        );
    }
}

/// The ACL's decisions against first-match over the reference relations.
fn acl_side(actions: u8, accesses: u8, topic: &str, filter: &str, rule_topics: &[&str]) {
    let mut rules = Vec::new();
    for (i, text) in rule_topics.iter().enumerate() {
        let parsed = TopicTemplate::parse(text);
        assert_eq!(
            parsed.is_ok(),
            valid_filter(text) && text.len() <= MAX_LEN,
            "{text:?}"
        );
        let Ok(template) = parsed else {
            return;
        };
        rules.push(RuleConfig {
            action: if actions & (1 << i) != 0 {
                Action::Allow
            } else {
                Action::Deny
            },
            access: match (accesses >> (2 * i)) & 0b11 {
                1 => Access::Publish,
                2 => Access::Subscribe,
                _ => Access::Both,
            },
            matcher: Match::Anyone(true),
            topics: vec![template],
        });
    }
    let principal = Principal {
        username: None,
        cn: None,
        client_id: "fuzz".into(),
        method: AuthMethod::Anonymous,
    };
    let acl = bind_acl(
        AclConfig {
            rules: rules.clone(),
            client_ids: Vec::new(),
        },
        &principal,
    );

    let publishable = valid_name(topic) && topic.len() <= MAX_LEN;
    let expected = first_match(&rules, Access::Publish, |rule_filter, _| {
        publishable && matches(rule_filter, topic)
    });
    assert_eq!(
        acl.check_publish(topic),
        expected,
        "publish {topic:?} under {rule_topics:?}"
    );

    if !(valid_filter(filter) && filter.len() <= MAX_LEN) {
        let denied = AclDecision::Deny { rule_index: None };
        assert_eq!(acl.check_subscribe(filter), denied, "subscribe {filter:?}");
        return;
    }
    let deep = |f: &str| f.split('/').count() > MAX_ENUMERATED_LEVELS;
    if deep(filter) || rule_topics.iter().any(|t| deep(t)) {
        return;
    }
    let expected = first_match(
        &rules,
        Access::Subscribe,
        |rule_filter, action| match action {
            Action::Allow => covers(rule_filter, filter),
            Action::Deny => intersects(rule_filter, filter),
        },
    );
    assert_eq!(
        acl.check_subscribe(filter),
        expected,
        "subscribe {filter:?} under {rule_topics:?}"
    );
}

/// The first rule for `op` whose topic `decides` wins; deny when none does.
fn first_match(
    rules: &[RuleConfig],
    op: Access,
    decides: impl Fn(&str, Action) -> bool,
) -> AclDecision {
    for (index, rule) in rules.iter().enumerate() {
        if rule.access != Access::Both && rule.access != op {
            continue;
        }
        if rule.topics.iter().any(|t| decides(t.as_str(), rule.action)) {
            return match rule.action {
                Action::Allow => AclDecision::Allow,
                Action::Deny => AclDecision::Deny {
                    rule_index: Some(index),
                },
            };
        }
    }
    AclDecision::Deny { rule_index: None }
}

// ---- The reference (MQTT 5 §4.7), as plain as it gets. ----

/// A topic name: not empty, no U+0000, no wildcard character.
fn valid_name(t: &str) -> bool {
    !t.is_empty() && !t.contains(['\0', '+', '#'])
}

/// A topic filter: not empty, no U+0000, `+` only as a whole level, `#` only as the whole last level.
fn valid_filter(f: &str) -> bool {
    let levels: Vec<&str> = f.split('/').collect();
    !f.is_empty()
        && !f.contains('\0')
        && levels.iter().enumerate().all(|(i, l)| {
            (!l.contains('+') || *l == "+")
                && (!l.contains('#') || (*l == "#" && i == levels.len() - 1))
        })
}

/// The broker's own bounds: the MQTT string length and at most 128 levels.
fn within_broker_limits(s: &str) -> bool {
    s.len() <= MAX_LEN && s.split('/').count() <= MAX_LEVELS
}

/// Does the valid filter `f` match the valid topic `t`? `+` is one level (maybe empty), `#` the rest (maybe
/// none: the parent too), and a filter starting with a wildcard matches no topic starting with `$`.
fn matches(f: &str, t: &str) -> bool {
    let f: Vec<&str> = f.split('/').collect();
    let t: Vec<&str> = t.split('/').collect();
    matches_levels(&f, &t)
}

/// [`matches`] on levels.
fn matches_levels(f: &[&str], t: &[&str]) -> bool {
    if t[0].starts_with('$') && (f[0] == "+" || f[0] == "#") {
        return false;
    }
    for (i, level) in f.iter().enumerate() {
        if *level == "#" {
            return true;
        }
        if i >= t.len() || (*level != "+" && *level != t[i]) {
            return false;
        }
    }
    f.len() == t.len()
}

/// Every topic matched by `b` is matched by `a`: no counterexample among the [`witnesses`].
fn covers(a: &str, b: &str) -> bool {
    let (a, b) = (levels(a), levels(b));
    !witnesses(&a, &b, |t| matches_levels(&b, t) && !matches_levels(&a, t))
}

/// Some topic is matched by both: one among the [`witnesses`].
fn intersects(a: &str, b: &str) -> bool {
    let (a, b) = (levels(a), levels(b));
    witnesses(&a, &b, |t| matches_levels(&a, t) && matches_levels(&b, t))
}

fn levels(f: &str) -> Vec<&str> {
    f.split('/').collect()
}

/// True when `found` holds for a topic up to one level deeper than the deeper filter whose level i is `a`'s
/// literal at i, `b`'s literal at i, or a fresh value equal to neither. That is enough: at one level, two
/// filters tell apart only their own literals and "anything else" (a fresh value stands for all of those; a `$`
/// value no filter names is matched by neither, so it never decides), and past both filters' depth every
/// deeper topic fares as the first one does.
fn witnesses(a: &[&str], b: &[&str], found: impl Fn(&[&str]) -> bool) -> bool {
    let depth = a.len().max(b.len()) + 1;
    let longest = a.iter().chain(b).map(|l| l.len()).max().unwrap_or(0);
    let fresh = "z".repeat(longest + 1);
    let choices: Vec<Vec<&str>> = (0..depth)
        .map(|i| {
            let mut c = vec![fresh.as_str()];
            for f in [a, b] {
                if let Some(l) = f.get(i).filter(|l| **l != "+" && **l != "#") {
                    c.push(l);
                }
            }
            c
        })
        .collect();
    // Every topic of 1..=depth levels, as an odometer over the choices.
    let mut topic: Vec<&str> = Vec::with_capacity(depth);
    let mut picks = vec![0usize; depth];
    for len in 1..=depth {
        picks[..len].fill(0);
        loop {
            topic.clear();
            topic.extend((0..len).map(|i| choices[i][picks[i]]));
            if found(&topic) {
                return true;
            }
            let Some(i) = (0..len).rev().find(|&i| picks[i] + 1 < choices[i].len()) else {
                break;
            };
            picks[i] += 1;
            picks[i + 1..len].fill(0);
        }
    }
    false
}
