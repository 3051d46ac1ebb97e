//! Unit tests of the `[auth]` section: validation, inheritance, located problems, and its checks against the
//! node's listeners.

use std::time::Duration;

use super::*;
use crate::node::NodeConfig;

/// Listener names the sections below may override.
const LISTENERS: [&str; 3] = ["internal", "a", "b"];

fn parse(text: &str) -> Result<Option<AuthConfig>, ConfigError> {
    let names: Vec<String> = LISTENERS.iter().map(|n| n.to_string()).collect();
    AuthConfig::parse(Path::new("/etc/fleetgate/node.toml"), text, &names)
}

#[test]
fn no_section_is_none_and_other_tables_are_ignored() {
    assert_eq!(parse("[node]\nname = \"a\"\n").unwrap(), None);
}

#[test]
fn full_section_validates() {
    let text = r#"
[node]
name = "broker-0"

[auth]
policies = ["certificate", "client_id_from_cert", "username_from_cert"]
client_id_template = "vehicle-{cn}"
username_from = "san:DNS"
password_file = "passwd"
acl_file = "/abs/acl.toml"
max_concurrent_verifications = 4
max_waiting_verifications = 10

[auth.brute_force]
max_failures = 3
window = "30s"
ban = "2m"
max_tracked = 50

[auth.listeners.internal]
policies = ["password"]
anonymous = true
"#;
    let c = parse(text).unwrap().unwrap();
    assert!(c.default_policy.require_certificate);
    assert_eq!(
        c.default_policy
            .client_id_from_cert
            .as_ref()
            .unwrap()
            .as_str(),
        "vehicle-{cn}"
    );
    assert_eq!(
        c.default_policy.username_from_cert,
        Some(CertField::parse("san:DNS").unwrap())
    );
    assert!(!c.default_policy.anonymous);
    let internal = &c.listeners["internal"];
    assert!(internal.password && internal.anonymous && !internal.needs_certificate());
    assert_eq!(
        c.password_file.as_deref(),
        Some(Path::new("/etc/fleetgate/passwd"))
    );
    assert_eq!(c.acl_file.as_deref(), Some(Path::new("/abs/acl.toml")));
    assert_eq!(
        c.brute_force,
        BruteForceConfig {
            max_failures: 3,
            window: Duration::from_secs(30),
            ban: Duration::from_secs(120),
            max_entries: 50
        }
    );
    assert_eq!(
        (c.max_concurrent_verifications, c.max_waiting_verifications),
        (4, 10)
    );
}

#[test]
fn defaults_for_template_and_username_field() {
    let c = parse("[auth]\npolicies = [\"client_id_from_cert\", \"username_from_cert\"]\n")
        .unwrap()
        .unwrap();
    assert_eq!(
        c.default_policy.client_id_from_cert.unwrap().as_str(),
        "{cn}"
    );
    assert_eq!(c.default_policy.username_from_cert, Some(CertField::Cn));
    assert_eq!(c.brute_force, BruteForceConfig::default());
    assert!(c.acl_file.is_none());
}

#[test]
fn problems_are_all_reported_and_located() {
    let text = "[auth]\npolicies = [\"certificate\", \"pasword\", \"certificate\", \"password\"]\nclient_id_template = \"static\"\n";
    let err = parse(text).unwrap_err();
    let messages = err.to_string();
    assert!(
        messages.contains("node.toml:2:28: unknown policy \"pasword\""),
        "{messages}"
    );
    assert!(messages.contains("listed twice"), "{messages}");
    assert!(messages.contains("needs `password_file`"), "{messages}");

    let err =
        parse("[auth]\npolicies = [\"client_id_from_cert\"]\nclient_id_template = \"static\"\n")
            .unwrap_err();
    assert_eq!(err.problems[0].line, 3, "{err}");

    let err = parse("[auth]\npolicies = [\"certificate\"]\nanonymous = true\n").unwrap_err();
    assert!(err.to_string().contains("skip the certificate"), "{err}");

    let err = parse("[auth]\nanonymous = false\n").unwrap_err();
    assert!(err.to_string().contains("refuse every client"), "{err}");
    assert!(
        parse("[auth]\n").is_err(),
        "an empty section refuses everyone"
    );

    let err = parse("[auth]\nanonymous = true\nusername_form = \"cn\"\n").unwrap_err();
    assert_eq!(err.problems[0].line, 3, "{err}");

    let err = parse("[auth]\nanonymous = true\nmax_concurrent_verifications = 0\n[auth.brute_force]\nmax_failures = 0\nwindow = \"soon\"\n")
        .unwrap_err();
    assert!(!err.problems.is_empty(), "{err}");
    let err = parse("[auth]\nanonymous = true\nmax_concurrent_verifications = 0\n[auth.brute_force]\nmax_failures = 0\n").unwrap_err();
    assert_eq!(err.problems.len(), 2, "{err}");
}

#[test]
fn listener_overrides_inherit_unset_fields() {
    let text = "[auth]\npolicies = [\"client_id_from_cert\"]\nclient_id_template = \"car-{cn}\"\n[auth.listeners.a]\nusername_from = \"cn\"\n[auth.listeners.b]\npolicies = [\"username_from_cert\"]\n";
    let c = parse(text).unwrap().unwrap();
    assert_eq!(
        c.listeners["a"]
            .client_id_from_cert
            .as_ref()
            .unwrap()
            .as_str(),
        "car-{cn}"
    );
    assert_eq!(c.listeners["b"].client_id_from_cert, None);
    assert_eq!(c.listeners["b"].username_from_cert, Some(CertField::Cn));
}

#[test]
fn overrides_must_name_a_listener() {
    let err =
        parse("[auth]\nanonymous = true\n[auth.listeners.nope]\npolicies = []\n").unwrap_err();
    assert_eq!(err.problems.len(), 1, "{err}");
    assert!(
        err.to_string().contains(
            "node.toml:3:17: [auth.listeners.nope]: no [[listeners]] entry has name = \"nope\""
        ),
        "{err}"
    );
}

#[test]
fn the_node_config_validates_its_section_with_the_rest() {
    let file = Path::new("/etc/fleetgate/node.toml");
    let ok = "[node]\nname = \"n\"\n[[listeners]]\nname = \"lb\"\nbind = \"127.0.0.1:0\"\n\
              [auth]\npolicies = [\"password\"]\npassword_file = \"passwd\"\n[auth.listeners.lb]\npolicies = [\"certificate\"]\n";
    let auth = NodeConfig::parse(file, ok).unwrap().auth.unwrap();
    assert!(auth.default_policy.password);
    assert!(auth.listeners["lb"].require_certificate);
    assert_eq!(
        auth.password_file.as_deref(),
        Some(Path::new("/etc/fleetgate/passwd"))
    );
    assert_eq!(
        NodeConfig::parse(
            file,
            "[node]\nname = \"n\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\n"
        )
        .unwrap()
        .auth,
        None
    );
    // One report for every problem: a listener's, the section's, and an override of a listener that is not there.
    let bad = "[node]\nname = \"n\"\n[[listeners]]\nbind = \"nowhere\"\n\
               [auth]\npolicies = [\"pasword\"]\n[auth.listeners.x]\nanonymous = true\n";
    let err = NodeConfig::parse(file, bad).unwrap_err();
    let lines: Vec<usize> = err.problems.iter().map(|p| p.line).collect();
    for line in [4, 6, 7] {
        assert!(lines.contains(&line), "line {line}: {err}");
    }
}

#[test]
fn bind_client_id_takes_the_template_over_the_identity() {
    let text = "[auth]\npolicies = [\"certificate\"]\npassword_file = \"passwd\"\n\
                [auth.listeners.internal]\npolicies = [\"password\", \"bind_client_id\"]\nclient_id_template = \"{username}-*\"\n";
    let c = parse(text).unwrap().unwrap();
    let internal = &c.listeners["internal"];
    let bind = internal.bind_client_id.as_ref().unwrap();
    assert!(bind.is_prefix() && bind.uses_username());
    assert!(internal.binds_client_id() && internal.client_id_from_cert.is_none());
    assert!(!c.default_policy.binds_client_id());

    // A certificate user can be bound by its CN with the same policy.
    let cert = parse(
        "[auth]\npolicies = [\"certificate\", \"bind_client_id\"]\nclient_id_template = \"{cn}\"\n",
    )
    .unwrap()
    .unwrap();
    assert!(cert.default_policy.bind_client_id.is_some());
}

#[test]
fn bind_client_id_problems_are_located() {
    let pw = "password_file = \"passwd\"\n";
    let cases = [
        // No template to bind with.
        (
            format!("[auth]\npolicies = [\"password\", \"bind_client_id\"]\n{pw}"),
            2,
            "needs `client_id_template`",
        ),
        // `{username}` where nothing proves a username.
        (
            "[auth]\npolicies = [\"certificate\", \"bind_client_id\"]\nclient_id_template = \"{username}\"\n"
                .to_string(),
            2,
            "needs the password or username_from_cert policy",
        ),
        // `{username}` in the certificate-only policy.
        (
            "[auth]\npolicies = [\"client_id_from_cert\"]\nclient_id_template = \"{username}\"\n".to_string(),
            3,
            "certificate fields only",
        ),
        // Both template policies at once.
        (
            "[auth]\npolicies = [\"client_id_from_cert\", \"bind_client_id\"]\nclient_id_template = \"{cn}\"\n"
                .to_string(),
            2,
            "not both",
        ),
        // Binding anonymous clients only.
        (
            "[auth]\nanonymous = true\npolicies = [\"bind_client_id\"]\nclient_id_template = \"{cn}\"\n"
                .to_string(),
            3,
            "binds authenticated clients",
        ),
        // A star inside the template.
        (
            format!("[auth]\npolicies = [\"password\", \"bind_client_id\"]\nclient_id_template = \"a*{{username}}\"\n{pw}"),
            3,
            "`*` may only end",
        ),
    ];
    for (text, line, message) in cases {
        let err = parse(&text).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{text}: {err}");
        assert_eq!(err.problems[0].line, line, "{text}: {err}");
        assert!(err.to_string().contains(message), "{text}: {err}");
    }
}
