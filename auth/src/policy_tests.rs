//! Unit tests of policy evaluation: each policy, combinations, and the trust rules for the PROXY identity.

use fleetgate_config::node::{CertField, ClientIdTemplate, PolicyConfig, SanKind};

use super::*;
use crate::binding::{ClientIdBinding, check_template};

fn cert(cn: &str, sans: &[&str]) -> PeerIdentity {
    PeerIdentity {
        tls: true,
        cert_presented: true,
        cert_verified: true,
        cn: Some(cn.to_string()),
        sans: sans.iter().map(|s| s.to_string()).collect(),
        ..PeerIdentity::default()
    }
}

/// An identity that claims a CN but whose certificate was not verified.
fn unverified(cn: &str) -> PeerIdentity {
    PeerIdentity {
        cert_verified: false,
        ..cert(cn, &["DNS:x.example"])
    }
}

fn creds<'a>(
    client_id: &'a str,
    username: Option<&'a str>,
    password: Option<&'a [u8]>,
) -> Credentials<'a> {
    Credentials {
        client_id,
        username,
        password,
    }
}

fn policy(names: &[&str]) -> ListenerPolicy {
    ListenerPolicy::from(config(names))
}

fn config(names: &[&str]) -> PolicyConfig {
    PolicyConfig {
        require_certificate: names.contains(&"certificate"),
        client_id_from_cert: names
            .contains(&"client_id_from_cert")
            .then(|| ClientIdTemplate::parse("{cn}").unwrap()),
        bind_client_id: None,
        username_from_cert: names
            .contains(&"username_from_cert")
            .then_some(CertField::Cn),
        password: names.contains(&"password"),
        anonymous: names.contains(&"anonymous"),
    }
}

fn refused(e: Evaluation) -> AuthFailure {
    match e {
        Evaluation::Decided(AuthDecision::Refuse { reason }) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn allowed(e: Evaluation) -> Principal {
    match e {
        Evaluation::Decided(AuthDecision::Allow(p, _)) => p,
        other => panic!("expected an allow, got {other:?}"),
    }
}

fn needs_password(e: Evaluation) -> PasswordCheck {
    match e {
        Evaluation::NeedsPassword(c) => c,
        other => panic!("expected a password check, got {other:?}"),
    }
}

#[test]
fn certificate_policy_requires_a_verified_certificate() {
    let p = policy(&["certificate"]);
    let ok = allowed(p.evaluate(&creds("anything", Some("typed"), None), &cert("dev-1", &[])));
    assert_eq!(ok.method, AuthMethod::Certificate);
    assert_eq!(ok.cn.as_deref(), Some("dev-1"));
    assert_eq!(ok.username, None, "a typed username is not proven");
    assert_eq!(ok.client_id, "anything");
    assert_eq!(
        refused(p.evaluate(&creds("c", None, None), &PeerIdentity::default())),
        AuthFailure::CertificateRequired
    );
    assert_eq!(
        refused(p.evaluate(&creds("c", None, None), &unverified("dev-1"))),
        AuthFailure::CertificateRequired
    );
    assert_eq!(AuthFailure::CertificateRequired.v5_code(), 0x87);
    assert_eq!(AuthFailure::CertificateRequired.v3_code(), 0x05);
}

#[test]
fn client_id_must_match_the_template() {
    let p = policy(&["client_id_from_cert"]);
    assert_eq!(
        allowed(p.evaluate(&creds("dev-1", None, None), &cert("dev-1", &[]))).client_id,
        "dev-1"
    );
    let mismatch = refused(p.evaluate(&creds("dev-2", None, None), &cert("dev-1", &[])));
    assert_eq!(mismatch, AuthFailure::ClientIdMismatch);
    assert_eq!((mismatch.v5_code(), mismatch.v3_code()), (0x85, 0x02));
    assert_eq!(
        refused(p.evaluate(&creds("", None, None), &cert("dev-1", &[]))),
        AuthFailure::ClientIdMismatch
    );
    // Without verification the claimed CN gives nothing.
    assert_eq!(
        refused(p.evaluate(&creds("dev-1", None, None), &unverified("dev-1"))),
        AuthFailure::CertificateRequired
    );

    let vehicle = ListenerPolicy::from(PolicyConfig {
        client_id_from_cert: Some(ClientIdTemplate::parse("vehicle-{cn}").unwrap()),
        ..config(&[])
    });
    assert!(matches!(
        vehicle.evaluate(&creds("vehicle-7", None, None), &cert("7", &[])),
        Evaluation::Decided(AuthDecision::Allow(_, _))
    ));
    assert_eq!(
        refused(vehicle.evaluate(&creds("7", None, None), &cert("7", &[]))),
        AuthFailure::ClientIdMismatch
    );

    let by_dns = ListenerPolicy::from(PolicyConfig {
        client_id_from_cert: Some(ClientIdTemplate::parse("{san:DNS}").unwrap()),
        ..config(&[])
    });
    let id = cert("cn", &["URI:spiffe://x", "DNS:car-9.fleet"]);
    assert!(matches!(
        by_dns.evaluate(&creds("car-9.fleet", None, None), &id),
        Evaluation::Decided(AuthDecision::Allow(_, _))
    ));
    assert_eq!(
        refused(by_dns.evaluate(&creds("cn", None, None), &cert("cn", &[]))),
        AuthFailure::ClientIdMismatch
    );
}

#[test]
fn username_from_cert_ignores_the_clients_username() {
    let p = policy(&["username_from_cert"]);
    let got = allowed(p.evaluate(&creds("c", Some("admin"), None), &cert("dev-1", &[])));
    assert_eq!(got.username.as_deref(), Some("dev-1"));
    assert_eq!(got.method, AuthMethod::Certificate);
    // No fallback to the typed username when the certificate lacks the field.
    let san = ListenerPolicy::from(PolicyConfig {
        username_from_cert: Some(CertField::San(SanKind::Email)),
        ..config(&[])
    });
    assert_eq!(
        refused(san.evaluate(&creds("c", Some("admin"), None), &cert("dev-1", &["DNS:a"]))),
        AuthFailure::CertificateIdentityMissing
    );
    let with_email = cert("dev-1", &["DNS:a", "EMAIL:ops@example.com"]);
    assert_eq!(
        allowed(san.evaluate(&creds("c", None, None), &with_email))
            .username
            .as_deref(),
        Some("ops@example.com")
    );
    assert_eq!(
        refused(p.evaluate(&creds("c", Some("admin"), None), &unverified("admin"))),
        AuthFailure::CertificateRequired
    );
    // An empty CN is no username.
    assert_eq!(
        refused(p.evaluate(&creds("c", None, None), &cert("", &[]))),
        AuthFailure::CertificateIdentityMissing
    );
}

#[test]
fn password_policy_asks_for_a_check_of_the_right_user() {
    let p = policy(&["password"]);
    let check = needs_password(p.evaluate(
        &creds("c", Some("alice"), Some(b"pw")),
        &PeerIdentity::default(),
    ));
    assert_eq!(check.username(), "alice");
    let ok = check.clone().finish(true);
    let AuthDecision::Allow(principal, _) = ok else {
        panic!()
    };
    assert_eq!(principal.username.as_deref(), Some("alice"));
    assert_eq!(principal.method, AuthMethod::Password);
    assert_eq!(
        check.finish(false),
        AuthDecision::refuse(AuthFailure::BadCredentials)
    );
    for (u, pw) in [
        (None, Some(&b"pw"[..])),
        (Some("alice"), None),
        (None, None),
    ] {
        assert_eq!(
            refused(p.evaluate(&creds("c", u, pw), &PeerIdentity::default())),
            AuthFailure::BadCredentials
        );
    }
    assert_eq!(
        (
            AuthFailure::BadCredentials.v5_code(),
            AuthFailure::BadCredentials.v3_code()
        ),
        (0x86, 0x04)
    );
}

#[test]
fn certificate_and_password_combine() {
    let p = policy(&["certificate", "client_id_from_cert", "password"]);
    let check = needs_password(p.evaluate(
        &creds("dev-1", Some("alice"), Some(b"pw")),
        &cert("dev-1", &[]),
    ));
    let AuthDecision::Allow(principal, _) = check.finish(true) else {
        panic!()
    };
    assert_eq!(principal.method, AuthMethod::CertificateAndPassword);
    assert_eq!(principal.cn.as_deref(), Some("dev-1"));
    // The certificate checks come first: no password is checked for a wrong client ID.
    assert_eq!(
        refused(p.evaluate(
            &creds("dev-2", Some("alice"), Some(b"pw")),
            &cert("dev-1", &[])
        )),
        AuthFailure::ClientIdMismatch
    );
    assert_eq!(
        refused(p.evaluate(
            &creds("dev-1", Some("alice"), Some(b"pw")),
            &PeerIdentity::default()
        )),
        AuthFailure::CertificateRequired
    );
    // With username_from_cert the certificate's username is the one whose password is checked.
    let q = policy(&["username_from_cert", "password"]);
    let check =
        needs_password(q.evaluate(&creds("c", Some("admin"), Some(b"pw")), &cert("dev-1", &[])));
    assert_eq!(check.username(), "dev-1");
}

#[test]
fn anonymous_is_off_unless_enabled() {
    let off = policy(&[]);
    assert_eq!(
        refused(off.evaluate(&creds("c", None, None), &PeerIdentity::default())),
        AuthFailure::NotAuthorized
    );
    let on = policy(&["anonymous"]);
    let p = allowed(on.evaluate(
        &creds("c", Some("typed"), Some(b"x")),
        &PeerIdentity::default(),
    ));
    assert_eq!(p.method, AuthMethod::Anonymous);
    assert_eq!(p.username, None);
    assert!(!p.is_authenticated());
    // With a password policy, anonymous admits only clients without any credentials.
    let both = policy(&["password", "anonymous"]);
    assert_eq!(
        allowed(both.evaluate(&creds("c", None, None), &PeerIdentity::default())).method,
        AuthMethod::Anonymous
    );
    needs_password(both.evaluate(
        &creds("c", Some("alice"), Some(b"pw")),
        &PeerIdentity::default(),
    ));
    assert_eq!(
        refused(both.evaluate(&creds("c", Some("alice"), None), &PeerIdentity::default())),
        AuthFailure::BadCredentials
    );
}

#[test]
fn a_verified_cn_is_carried_even_on_a_password_listener() {
    let p = policy(&["password"]);
    let check =
        needs_password(p.evaluate(&creds("c", Some("alice"), Some(b"pw")), &cert("dev-1", &[])));
    let AuthDecision::Allow(principal, _) = check.finish(true) else {
        panic!()
    };
    assert_eq!(principal.cn.as_deref(), Some("dev-1"));
    let check = needs_password(p.evaluate(
        &creds("c", Some("alice"), Some(b"pw")),
        &unverified("dev-1"),
    ));
    let AuthDecision::Allow(principal, _) = check.finish(true) else {
        panic!()
    };
    assert_eq!(principal.cn, None, "an unverified CN is never carried");
}

#[test]
fn client_id_templates_render_over_the_verified_certificate() {
    for bad in ["static", "{cn", "x}", "{san:FOO}", "{}", "{user}"] {
        assert!(ClientIdTemplate::parse(bad).is_err(), "{bad}");
    }
    let t = ClientIdTemplate::parse("v-{cn}-{san:URI}").unwrap();
    assert_eq!(t.as_str(), "v-{cn}-{san:URI}");
    let id = cert("a", &["URI:b"]);
    let c = VerifiedCert::from_identity(&id).unwrap();
    assert_eq!(
        check_template(&t, "v-a-b", Some(&c), None),
        Some(ClientIdBinding::Exact)
    );
    assert_eq!(check_template(&t, "v-a-c", Some(&c), None), None);
    assert_eq!(check_template(&t, "v-a-b", None, None), None);
    assert!(VerifiedCert::from_identity(&unverified("a")).is_none());
}

/// A password listener whose users are bound by `bind_client_id` with `template`.
fn bound_password(template: &str) -> ListenerPolicy {
    ListenerPolicy::from(PolicyConfig {
        bind_client_id: Some(ClientIdTemplate::parse(template).unwrap()),
        ..config(&["password", "anonymous"])
    })
}

#[test]
fn bind_client_id_binds_password_users_after_their_password() {
    let p = bound_password("{username}-*");
    let none = PeerIdentity::default();
    let login = |id| needs_password(p.evaluate(&creds(id, Some("alice"), Some(b"pw")), &none));
    for id in ["alice-1", "alice-", "alice-x-y"] {
        let AuthDecision::Allow(principal, binding) = login(id).finish(true) else {
            panic!("{id}")
        };
        assert_eq!(
            (principal.client_id.as_str(), binding),
            (id, ClientIdBinding::Prefix)
        );
    }
    // Another user's ID (or no prefix at all) is refused — but only once the password matched, so the answer to
    // a wrong password is the same whatever the client ID.
    for id in ["bob-1", "alice", "xalice-1", ""] {
        assert_eq!(
            login(id).finish(true),
            AuthDecision::refuse(AuthFailure::ClientIdMismatch),
            "{id}"
        );
        assert_eq!(
            login(id).finish(false),
            AuthDecision::refuse(AuthFailure::BadCredentials),
            "{id}"
        );
    }
    // Anonymous clients (the listener allows them) are never bound.
    let anon = p.evaluate(&creds("alice-1", None, None), &none);
    assert!(
        matches!(anon, Evaluation::Decided(AuthDecision::Allow(ref p, ClientIdBinding::Unbound)) if !p.is_authenticated()),
        "{anon:?}"
    );

    let exact = bound_password("{username}");
    let check = needs_password(exact.evaluate(&creds("alice", Some("alice"), Some(b"pw")), &none));
    assert!(matches!(
        check.finish(true),
        AuthDecision::Allow(_, ClientIdBinding::Exact)
    ));
    // `{cn}` on a password listener: the verified certificate the LB passed on, else nothing matches.
    let by_cn = bound_password("{cn}");
    let with_cert = needs_password(by_cn.evaluate(
        &creds("dev-1", Some("alice"), Some(b"pw")),
        &cert("dev-1", &[]),
    ));
    assert!(matches!(
        with_cert.finish(true),
        AuthDecision::Allow(_, ClientIdBinding::Exact)
    ));
    let without =
        needs_password(by_cn.evaluate(&creds("dev-1", Some("alice"), Some(b"pw")), &none));
    assert_eq!(
        without.finish(true),
        AuthDecision::refuse(AuthFailure::ClientIdMismatch)
    );
}

#[test]
fn bind_client_id_binds_certificate_users_at_once() {
    let p = ListenerPolicy::from(PolicyConfig {
        bind_client_id: Some(ClientIdTemplate::parse("{username}/{cn}-*").unwrap()),
        ..config(&["username_from_cert"])
    });
    let id = cert("dev-1", &[]);
    let Evaluation::Decided(AuthDecision::Allow(principal, binding)) =
        p.evaluate(&creds("dev-1/dev-1-a", None, None), &id)
    else {
        panic!()
    };
    assert_eq!(
        (principal.method, binding),
        (AuthMethod::Certificate, ClientIdBinding::Prefix)
    );
    assert_eq!(
        refused(p.evaluate(&creds("dev-2/dev-1-a", None, None), &id)),
        AuthFailure::ClientIdMismatch
    );
    // `client_id_from_cert` is an exact binding.
    let from_cert = policy(&["client_id_from_cert"]);
    assert!(matches!(
        from_cert.evaluate(&creds("dev-1", None, None), &id),
        Evaluation::Decided(AuthDecision::Allow(_, ClientIdBinding::Exact))
    ));
    assert!(matches!(
        policy(&["certificate"]).evaluate(&creds("x", None, None), &id),
        Evaluation::Decided(AuthDecision::Allow(_, ClientIdBinding::Unbound))
    ));
}

#[test]
fn credentials_debug_hides_the_password() {
    let c = creds("dev-1", Some("alice"), Some(b"hunter2"));
    let printed = format!("{c:?}");
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(
        !printed.contains("104"),
        "no password bytes either: {printed}"
    );
    assert!(
        printed.contains("alice") && printed.contains("***"),
        "{printed}"
    );
    let none = format!("{:?}", creds("dev-1", None, None));
    assert!(none.contains("password: None"), "{none}");
}
