//! Unit tests of the ACL: first-match order, substitution safety, and subscription widening (rules written as ACL
//! files, parsed by the config crate).

use std::path::Path;

use super::*;
use crate::decision::AuthMethod;

fn acl(text: &str) -> Acl {
    Acl::new(AclConfig::parse(Path::new("acl.toml"), text).unwrap())
}

fn principal(client_id: &str, username: Option<&str>, cn: Option<&str>) -> Principal {
    Principal {
        username: username.map(str::to_string),
        cn: cn.map(str::to_string),
        client_id: client_id.to_string(),
        method: AuthMethod::Certificate,
    }
}

fn anon(client_id: &str) -> Principal {
    Principal {
        method: AuthMethod::Anonymous,
        ..principal(client_id, None, None)
    }
}

const ALLOW: AclDecision = AclDecision::Allow;
const DEFAULT_DENY: AclDecision = AclDecision::Deny { rule_index: None };
fn denied_by(i: usize) -> AclDecision {
    AclDecision::Deny {
        rule_index: Some(i),
    }
}

const FLEET: &str = r#"
[[rules]]
action = "allow"
access = "both"
match = { any_authenticated = true }
topics = ["fleet/%c/#"]
"#;

#[test]
fn default_deny_without_rules() {
    let a = acl("").bind(&principal("dev-1", None, None));
    assert_eq!(a.check_publish("x"), DEFAULT_DENY);
    assert_eq!(a.check_subscribe("#"), DEFAULT_DENY);
}

#[test]
fn publish_and_subscribe_with_client_id_substitution() {
    let a = acl(FLEET).bind(&principal("dev-1", None, None));
    assert_eq!(a.check_publish("fleet/dev-1/telemetry"), ALLOW);
    assert_eq!(a.check_publish("fleet/dev-1"), ALLOW);
    assert_eq!(a.check_publish("fleet/dev-2/telemetry"), DEFAULT_DENY);
    assert_eq!(a.check_subscribe("fleet/dev-1/#"), ALLOW);
    assert_eq!(a.check_subscribe("fleet/dev-1/+/x"), ALLOW);
    assert_eq!(a.check_subscribe("fleet/dev-2/#"), DEFAULT_DENY);
    // Anonymous clients are not selected by any_authenticated.
    assert_eq!(
        acl(FLEET)
            .bind(&anon("dev-1"))
            .check_publish("fleet/dev-1/t"),
        DEFAULT_DENY
    );
}

#[test]
fn wildcard_widening_attempts_are_denied() {
    let a = acl(FLEET).bind(&principal("dev-1", None, None));
    for wide in [
        "fleet/#",
        "+/+/#",
        "#",
        "fleet/+/#",
        "fleet/+",
        "+/dev-1/#",
        "fleet/+/telemetry",
    ] {
        assert_eq!(a.check_subscribe(wide), DEFAULT_DENY, "{wide}");
    }
    assert_eq!(
        a.check_subscribe("fleet/dev-1/#/x"),
        DEFAULT_DENY,
        "invalid filter"
    );
}

#[test]
fn username_and_cn_substitution() {
    let text = r#"
[[rules]]
action = "allow"
access = "publish"
match = { anyone = true }
topics = ["users/%u/out", "certs/%cn/out"]
"#;
    let a = acl(text).bind(&principal("c", Some("alice"), Some("veh-1")));
    assert_eq!(a.check_publish("users/alice/out"), ALLOW);
    assert_eq!(a.check_publish("certs/veh-1/out"), ALLOW);
    assert_eq!(a.check_publish("users/bob/out"), DEFAULT_DENY);
    assert_eq!(
        a.check_subscribe("users/alice/out"),
        DEFAULT_DENY,
        "publish-only rule"
    );
    // Without a CN the whole allow rule is skipped, including its `%u` topic.
    let b = acl(text).bind(&principal("c", Some("alice"), None));
    assert_eq!(b.check_publish("users/alice/out"), DEFAULT_DENY);
}

#[test]
fn unsafe_identities_never_match_a_substituted_allow() {
    for evil in ["+", "#", "a/b", "x\0y", "", "dev+1", "$SYS"] {
        let a = acl(FLEET).bind(&principal(evil, None, None));
        for topic in ["fleet/x/y", "fleet/+/y", "fleet/#"] {
            assert_eq!(a.check_publish(topic), DEFAULT_DENY, "{evil:?} {topic}");
            assert_eq!(a.check_subscribe(topic), DEFAULT_DENY, "{evil:?} {topic}");
        }
        assert_eq!(a.check_subscribe("fleet/a/b/#"), DEFAULT_DENY, "{evil:?}");
    }
    // `%c/#` with client ID `$SYS` must not grant `$SYS/#`.
    let dollar = acl(r#"
[[rules]]
action = "allow"
access = "both"
match = { anyone = true }
topics = ["%c/#"]
"#);
    let a = dollar.bind(&anon("$SYS"));
    assert_eq!(a.check_subscribe("$SYS/#"), DEFAULT_DENY);
    assert_eq!(a.check_publish("$SYS/broker/x"), DEFAULT_DENY);
    assert_eq!(dollar.bind(&anon("ok")).check_publish("ok/x"), ALLOW);
}

#[test]
fn unsafe_identity_widens_a_substituted_deny_instead_of_skipping_it() {
    let text = r#"
[[rules]]
action = "deny"
access = "both"
match = { anyone = true }
topics = ["fleet/%c/secret"]

[[rules]]
action = "allow"
access = "both"
match = { anyone = true }
topics = ["fleet/#"]
"#;
    let normal = acl(text).bind(&anon("dev-1"));
    assert_eq!(normal.check_publish("fleet/dev-1/secret"), denied_by(0));
    assert_eq!(normal.check_publish("fleet/dev-2/secret"), ALLOW);
    let evil = acl(text).bind(&anon("a/b"));
    assert_eq!(evil.check_publish("fleet/dev-2/secret"), denied_by(0));
    assert_eq!(evil.check_publish("fleet/dev-2/other"), ALLOW);
}

#[test]
fn first_match_wins_in_file_order() {
    let text = r#"
[[rules]]
action = "deny"
access = "publish"
match = { client_id = "dev-1" }
topics = ["fleet/dev-1/cmd/#"]

[[rules]]
action = "allow"
access = "both"
match = { anyone = true }
topics = ["fleet/%c/#"]

[[rules]]
action = "deny"
access = "both"
match = { anyone = true }
topics = ["fleet/dev-1/telemetry"]
"#;
    let a = acl(text).bind(&anon("dev-1"));
    assert_eq!(a.check_publish("fleet/dev-1/cmd/reboot"), denied_by(0));
    assert_eq!(
        a.check_publish("fleet/dev-1/telemetry"),
        ALLOW,
        "the later deny never decides"
    );
    // Subscribing is not covered by the publish-only deny.
    assert_eq!(a.check_subscribe("fleet/dev-1/cmd/#"), ALLOW);
    // Another client is not selected by rule 0.
    let b = acl(text).bind(&anon("dev-2"));
    assert_eq!(b.check_publish("fleet/dev-2/cmd/x"), ALLOW);
}

#[test]
fn deny_that_overlaps_a_subscription_decides_before_a_covering_allow() {
    let text = r#"
[[rules]]
action = "deny"
access = "subscribe"
match = { anyone = true }
topics = ["fleet/+/secret"]

[[rules]]
action = "allow"
access = "subscribe"
match = { anyone = true }
topics = ["fleet/#"]
"#;
    let a = acl(text).bind(&anon("x"));
    assert_eq!(
        a.check_subscribe("fleet/#"),
        denied_by(0),
        "would deliver fleet/a/secret"
    );
    assert_eq!(a.check_subscribe("fleet/a/+"), denied_by(0));
    assert_eq!(a.check_subscribe("fleet/a/public"), ALLOW);
    assert_eq!(
        a.check_subscribe("fleet/a/public/#"),
        ALLOW,
        "no topic of it is x/secret"
    );
}

#[test]
fn an_allow_that_only_overlaps_does_not_decide() {
    let text = r#"
[[rules]]
action = "allow"
access = "subscribe"
match = { anyone = true }
topics = ["a/b"]

[[rules]]
action = "deny"
access = "subscribe"
match = { anyone = true }
topics = ["a/c"]
"#;
    let a = acl(text).bind(&anon("x"));
    assert_eq!(a.check_subscribe("a/b"), ALLOW);
    assert_eq!(a.check_subscribe("a/+"), denied_by(1));
    assert_eq!(a.check_subscribe("a/d"), DEFAULT_DENY);
}

#[test]
fn dollar_topics_need_a_literal_dollar_rule() {
    let text = r##"
[[rules]]
action = "allow"
access = "both"
match = { anyone = true }
topics = ["#", "+/#"]
"##;
    let a = acl(text).bind(&anon("x"));
    assert_eq!(a.check_subscribe("$SYS/#"), DEFAULT_DENY);
    assert_eq!(a.check_subscribe("$SYS/broker/load"), DEFAULT_DENY);
    assert_eq!(a.check_publish("$SYS/broker/load"), DEFAULT_DENY);
    assert_eq!(
        a.check_subscribe("#"),
        ALLOW,
        "`#` itself never delivers `$` topics"
    );

    let sys = r#"
[[rules]]
action = "allow"
access = "subscribe"
match = { username = "ops" }
topics = ["$SYS/broker/#"]
"#;
    let ops = acl(sys).bind(&principal("c", Some("ops"), None));
    assert_eq!(ops.check_subscribe("$SYS/broker/#"), ALLOW);
    assert_eq!(ops.check_subscribe("$SYS/broker/clients/+"), ALLOW);
    assert_eq!(ops.check_subscribe("$SYS/#"), DEFAULT_DENY);
    let other = acl(sys).bind(&principal("c", Some("dev"), None));
    assert_eq!(other.check_subscribe("$SYS/broker/#"), DEFAULT_DENY);
}

#[test]
fn identity_matchers_select_the_right_clients() {
    let text = r#"
[[rules]]
action = "allow"
access = "publish"
match = { cn = "veh-1" }
topics = ["by-cn"]

[[rules]]
action = "allow"
access = "publish"
match = { username = "alice" }
topics = ["by-user"]

[[rules]]
action = "allow"
access = "publish"
match = { client_id = "dev-9" }
topics = ["by-id"]
"#;
    let acl = acl(text);
    assert_eq!(
        acl.bind(&principal("x", None, Some("veh-1")))
            .check_publish("by-cn"),
        ALLOW
    );
    assert_eq!(
        acl.bind(&principal("x", None, Some("veh-2")))
            .check_publish("by-cn"),
        DEFAULT_DENY
    );
    assert_eq!(
        acl.bind(&principal("x", Some("alice"), None))
            .check_publish("by-user"),
        ALLOW
    );
    assert_eq!(
        acl.bind(&principal("x", None, None))
            .check_publish("by-user"),
        DEFAULT_DENY
    );
    assert_eq!(
        acl.bind(&principal("dev-9", None, None))
            .check_publish("by-id"),
        ALLOW
    );
}

#[test]
fn allow_all_excludes_dollar_topics() {
    let a = Acl::new(AclConfig::allow_all()).bind(&anon("x"));
    assert_eq!(a.check_publish("any/thing"), ALLOW);
    assert_eq!(a.check_subscribe("#"), ALLOW);
    assert_eq!(a.check_subscribe("$SYS/#"), DEFAULT_DENY);
}

#[test]
fn example_acl_parses_and_behaves() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/acl.toml");
    let acl = Acl::new(AclConfig::load(&path).unwrap());
    assert!(!acl.rules().is_empty());
    let dev = acl.bind(&principal("vehicle-42", None, Some("vehicle-42")));
    assert_eq!(dev.check_publish("fleet/vehicle-42/telemetry"), ALLOW);
    assert_eq!(dev.check_subscribe("fleet/vehicle-42/cmd/#"), ALLOW);
    assert_eq!(dev.check_subscribe("fleet/#"), DEFAULT_DENY);
    assert_eq!(
        dev.check_publish("fleet/vehicle-43/telemetry"),
        DEFAULT_DENY
    );
    assert_eq!(dev.check_subscribe("$SYS/#"), DEFAULT_DENY);
    assert_eq!(
        dev.check_publish("fleet/vehicle-42/cmd/reboot"),
        denied_by(1)
    );
    let backend = acl.bind(&principal("backend-1", Some("backend"), None));
    assert_eq!(backend.check_publish("fleet/vehicle-42/cmd/reboot"), ALLOW);
    assert_eq!(backend.check_subscribe("fleet/+/telemetry"), ALLOW);
    assert_eq!(backend.check_subscribe("fleet/#"), DEFAULT_DENY);
    let ops = acl.bind(&Principal {
        method: AuthMethod::Password,
        ..principal("ops-1", Some("ops"), None)
    });
    assert_eq!(ops.check_subscribe("$SYS/broker/#"), ALLOW);
    let visitor = acl.bind(&anon("visitor"));
    assert_eq!(visitor.check_subscribe("public/#"), ALLOW);
    assert_eq!(visitor.check_publish("fleet/visitor/x"), DEFAULT_DENY);
}

/// Soundness of the subscription rule against per-topic first-match, over random small rule lists: whenever a
/// subscription is allowed, every topic it can match (up to depth 4 over the alphabet) is allowed for PUBLISH by
/// the same rules with `access = "both"`; and a subscription to a concrete topic agrees exactly with PUBLISH.
#[test]
fn subscribe_allow_implies_every_matched_topic_is_allowed() {
    let levels = ["a", "b", "$x", "+"];
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let random_filter = |next: &mut dyn FnMut(usize) -> usize| {
        let depth = 1 + next(3);
        let mut parts: Vec<&str> = (0..depth).map(|_| levels[next(levels.len())]).collect();
        if next(2) == 0 {
            parts.push("#");
        }
        parts.join("/")
    };
    let alphabet = ["a", "b", "c", "$x"];
    let mut topics = vec![String::new()];
    let mut all_topics = Vec::new();
    for depth in 1..=4 {
        topics = topics
            .iter()
            .flat_map(|p| {
                alphabet.iter().map(move |l| {
                    if depth == 1 {
                        (*l).to_string()
                    } else {
                        format!("{p}/{l}")
                    }
                })
            })
            .collect();
        all_topics.extend(topics.iter().cloned());
    }
    let mut allowed_subs = 0;
    for _ in 0..1500 {
        let mut text = String::new();
        for _ in 0..1 + next(3) {
            let action = if next(2) == 0 { "allow" } else { "deny" };
            let topic = random_filter(&mut next);
            text.push_str(&format!(
                "[[rules]]\naction = \"{action}\"\naccess = \"both\"\nmatch = {{ anyone = true }}\ntopics = [\"{topic}\"]\n"
            ));
        }
        let bound = acl(&text).bind(&anon("x"));
        let sub = random_filter(&mut next);
        let s = Filter::parse(&sub).unwrap();
        if bound.check_subscribe(&sub) == AclDecision::Allow {
            allowed_subs += 1;
            for t in all_topics.iter().filter(|t| s.matches(t)) {
                assert_eq!(
                    bound.check_publish(t),
                    AclDecision::Allow,
                    "{text}\nsubscribe {sub} allowed, topic {t} is not"
                );
            }
        }
        for t in all_topics.iter().take(40) {
            assert_eq!(
                bound.check_subscribe(t),
                bound.check_publish(t),
                "{text}\ntopic {t}"
            );
        }
    }
    assert!(
        allowed_subs > 50,
        "the generator must exercise allowed subscriptions ({allowed_subs})"
    );
}
