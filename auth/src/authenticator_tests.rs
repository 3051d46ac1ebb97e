//! Tests of the CONNECT entry point: password outcomes, bans, and that bans never touch certificate clients.

use std::time::Duration;

use fleetgate_config::acl::AclConfig;
use fleetgate_config::node::PolicyConfig;

use super::*;
use crate::acl::Acl;
use crate::binding::ClientIdBinding;
use crate::decision::AuthMethod;
use crate::passwd::PasswordFile;
use crate::policy::ListenerPolicy;

fn snapshot(policy: PolicyConfig) -> AuthSnapshot {
    let mut pw = PasswordFile::empty();
    pw.set_with_cost_for_tests("alice", "s3cret");
    AuthSnapshot::from_parts(
        ListenerPolicy::from(policy),
        Acl::new(AclConfig::allow_all()),
        pw,
    )
}

fn password_policy() -> PolicyConfig {
    PolicyConfig {
        password: true,
        anonymous: false,
        ..PolicyConfig::anonymous_only()
    }
}

fn creds<'a>(user: &'a str, password: &'a [u8]) -> Credentials<'a> {
    Credentials {
        client_id: "c1",
        username: Some(user),
        password: Some(password),
    }
}

fn limits() -> BruteForceConfig {
    BruteForceConfig {
        max_failures: 3,
        window: Duration::from_secs(60),
        ban: Duration::from_secs(300),
        max_entries: 100,
    }
}

#[tokio::test]
async fn password_outcomes() {
    let auth = Authenticator::new(limits(), 2, 8);
    let snap = snapshot(password_policy());
    let none = PeerIdentity::default();
    let ip = Some("192.0.2.1".parse().unwrap());
    let ok = auth
        .authenticate(&snap, "l", &creds("alice", b"s3cret"), &none, ip)
        .await;
    let AuthDecision::Allow(p, _) = ok else {
        panic!("{ok:?}")
    };
    assert_eq!(
        (p.username.as_deref(), p.method),
        (Some("alice"), AuthMethod::Password)
    );
    let wrong = auth
        .authenticate(&snap, "l", &creds("alice", b"nope"), &none, ip)
        .await;
    let unknown = auth
        .authenticate(&snap, "l", &creds("mallory", b"s3cret"), &none, ip)
        .await;
    assert_eq!(wrong, AuthDecision::refuse(AuthFailure::BadCredentials));
    assert_eq!(
        unknown, wrong,
        "unknown user and wrong password are the same refusal"
    );
}

#[tokio::test]
async fn ban_after_repeated_failures_then_right_password_is_refused() {
    let auth = Authenticator::new(limits(), 2, 8);
    let snap = snapshot(password_policy());
    let none = PeerIdentity::default();
    let attacker = Some("198.51.100.9".parse().unwrap());
    for _ in 0..3 {
        let d = auth
            .authenticate(&snap, "l", &creds("alice", b"guess"), &none, attacker)
            .await;
        assert_eq!(d, AuthDecision::refuse(AuthFailure::BadCredentials));
    }
    let d = auth
        .authenticate(&snap, "l", &creds("alice", b"s3cret"), &none, attacker)
        .await;
    assert_eq!(d, AuthDecision::refuse(AuthFailure::Banned));
    // Another address is unaffected, and so is a source-less connection.
    let other = auth
        .authenticate(
            &snap,
            "l",
            &creds("alice", b"s3cret"),
            &none,
            Some("192.0.2.1".parse().unwrap()),
        )
        .await;
    assert!(matches!(other, AuthDecision::Allow(_, _)));
    assert!(matches!(
        auth.authenticate(&snap, "l", &creds("alice", b"s3cret"), &none, None)
            .await,
        AuthDecision::Allow(_, _)
    ));
}

#[tokio::test]
async fn certificate_failures_do_not_ban_and_bans_do_not_block_certificates() {
    let auth = Authenticator::new(limits(), 2, 8);
    let ip = Some("203.0.113.5".parse().unwrap());
    let cert_policy = PolicyConfig {
        require_certificate: true,
        anonymous: false,
        ..PolicyConfig::anonymous_only()
    };
    let cert_snap = snapshot(cert_policy);
    let no_cert = Credentials {
        client_id: "c",
        username: None,
        password: None,
    };
    for _ in 0..10 {
        let d = auth
            .authenticate(&cert_snap, "l", &no_cert, &PeerIdentity::default(), ip)
            .await;
        assert_eq!(d, AuthDecision::refuse(AuthFailure::CertificateRequired));
    }
    let pw_snap = snapshot(password_policy());
    let d = auth
        .authenticate(
            &pw_snap,
            "l",
            &creds("alice", b"s3cret"),
            &PeerIdentity::default(),
            ip,
        )
        .await;
    assert!(matches!(d, AuthDecision::Allow(_, _)), "{d:?}");

    for _ in 0..3 {
        auth.authenticate(
            &pw_snap,
            "l",
            &creds("alice", b"guess"),
            &PeerIdentity::default(),
            ip,
        )
        .await;
    }
    let verified = PeerIdentity {
        cert_verified: true,
        cn: Some("dev".into()),
        ..PeerIdentity::default()
    };
    let d = auth
        .authenticate(&cert_snap, "l", &no_cert, &verified, ip)
        .await;
    assert!(matches!(d, AuthDecision::Allow(_, _)), "{d:?}");
}

#[tokio::test]
async fn anonymous_snapshot_admits_everyone() {
    let auth = Authenticator::default();
    let d = auth
        .authenticate(
            &AuthSnapshot::anonymous(),
            "any",
            &creds("x", b"y"),
            &PeerIdentity::default(),
            None,
        )
        .await;
    let AuthDecision::Allow(p, _) = d else {
        panic!()
    };
    assert_eq!((p.method, p.username), (AuthMethod::Anonymous, None));
}

#[tokio::test]
async fn acl_client_id_entries_bind_after_the_password() {
    let auth = Authenticator::new(limits(), 2, 8);
    let mut pw = PasswordFile::empty();
    pw.set_with_cost_for_tests("alice", "s3cret");
    pw.set_with_cost_for_tests("bob", "s3cret");
    let acl = AclConfig::parse(
        std::path::Path::new("acl.toml"),
        "[[client_ids]]\nmatch = { username = \"alice\" }\nallow = [\"alice-1\", \"alice-*\"]\n",
    )
    .unwrap();
    let snap = AuthSnapshot::from_parts(ListenerPolicy::from(password_policy()), Acl::new(acl), pw);
    let none = PeerIdentity::default();
    let login = |user: &'static str, password: &'static [u8], client_id: &'static str| {
        let creds = Credentials {
            client_id,
            username: Some(user),
            password: Some(password),
        };
        let (auth, snap, none) = (&auth, &snap, &none);
        async move { auth.authenticate(snap, "l", &creds, none, None).await }
    };
    assert!(matches!(
        login("alice", b"s3cret", "alice-1").await,
        AuthDecision::Allow(_, ClientIdBinding::Exact)
    ));
    assert!(matches!(
        login("alice", b"s3cret", "alice-7").await,
        AuthDecision::Allow(_, ClientIdBinding::Prefix)
    ));
    assert_eq!(
        login("alice", b"s3cret", "dev-1").await,
        AuthDecision::refuse(AuthFailure::ClientIdMismatch)
    );
    // A wrong password says nothing about the binding.
    assert_eq!(
        login("alice", b"guess", "dev-1").await,
        AuthDecision::refuse(AuthFailure::BadCredentials)
    );
    // No entry selects bob: unbound.
    assert!(matches!(
        login("bob", b"s3cret", "dev-1").await,
        AuthDecision::Allow(_, ClientIdBinding::Unbound)
    ));
}
