//! Unit tests of the `[auth]` section and of loading a whole snapshot from files.

use std::time::Duration;

use super::*;
use crate::snapshot::AuthSnapshot;

fn parse(text: &str) -> Result<Option<AuthConfig>, ConfigError> {
    AuthConfig::parse(Path::new("/etc/fleetgate/node.toml"), text)
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
        c.failure_limits,
        FailureLimits {
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
    assert_eq!(c.failure_limits, FailureLimits::default());
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
fn snapshot_loads_files_and_reports_problems_of_both() {
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("node.toml");
    std::fs::write(
        &node,
        "[auth]\npolicies = [\"password\"]\npassword_file = \"passwd\"\nacl_file = \"acl.toml\"\n[auth.listeners.edge]\npolicies = [\"certificate\"]\n",
    )
    .unwrap();
    let mut pw = crate::passwd::PasswordFile::empty();
    pw.set_with_cost_for_tests("alice", "pw");
    pw.save(&dir.path().join("passwd")).unwrap();
    std::fs::write(
        dir.path().join("acl.toml"),
        "[[rules]]\naction = \"allow\"\naccess = \"both\"\nmatch = { username = \"alice\" }\ntopics = [\"u/%u/#\"]\n",
    )
    .unwrap();
    let config = AuthConfig::load(&node).unwrap().unwrap();
    let snap = AuthSnapshot::load(&config).unwrap();
    assert!(snap.passwords().contains("alice"));
    assert_eq!(snap.acl().rules().len(), 1);
    assert!(snap.policy("edge").require_certificate);
    assert!(snap.policy("other").password);

    std::fs::write(dir.path().join("passwd"), "broken\n").unwrap();
    std::fs::write(
        dir.path().join("acl.toml"),
        "[[rules]]\naction = \"maybe\"\n",
    )
    .unwrap();
    let err = AuthSnapshot::load(&config).unwrap_err();
    assert_eq!(err.problems.len(), 2, "{err}");
    assert!(err.to_string().contains("passwd:1:1:"), "{err}");
    assert!(err.to_string().contains("acl.toml:2:"), "{err}");

    std::fs::remove_file(dir.path().join("passwd")).unwrap();
    let err = AuthSnapshot::load(&config).unwrap_err();
    assert!(err.to_string().contains("cannot read"), "{err}");
}
