//! Unit tests of client-ID binding: the ACL's `[[client_ids]]` entries (parsed by the config crate) and who may
//! take over a session held by another identity.

use std::path::Path;

use fleetgate_config::acl::AclConfig;

use super::*;
use crate::decision::AuthMethod;

fn rules(text: &str) -> ClientIdRules {
    ClientIdRules::new(
        AclConfig::parse(Path::new("acl.toml"), text)
            .unwrap()
            .client_ids,
    )
}

fn principal(method: AuthMethod, username: Option<&str>, cn: Option<&str>, id: &str) -> Principal {
    Principal {
        username: username.map(str::to_string),
        cn: cn.map(str::to_string),
        client_id: id.to_string(),
        method,
    }
}

fn user(name: &str, id: &str) -> Principal {
    principal(AuthMethod::Password, Some(name), None, id)
}

fn anon(id: &str) -> Principal {
    principal(AuthMethod::Anonymous, None, None, id)
}

#[test]
fn the_first_entry_that_selects_a_client_decides_its_client_ids() {
    let r = rules(
        r#"
[[client_ids]]
match = { username = "backend" }
allow = ["backend-1", "backend-2", "svc-*"]

[[client_ids]]
match = { cn = "gateway" }
allow = ["gw-*"]

[[client_ids]]
match = { any_authenticated = true }
allow = ["dev-*"]
"#,
    );
    use ClientIdBinding::*;
    assert_eq!(r.check(&user("backend", "backend-2")), Ok(Exact));
    assert_eq!(r.check(&user("backend", "svc-x")), Ok(Prefix));
    // The first entry decided for `backend`: the catch-all below does not add `dev-*`.
    assert_eq!(
        r.check(&user("backend", "dev-1")),
        Err(AuthFailure::ClientIdMismatch)
    );
    let gw = principal(AuthMethod::Certificate, None, Some("gateway"), "gw-7");
    assert_eq!(r.check(&gw), Ok(Prefix));
    assert_eq!(r.check(&user("alice", "dev-9")), Ok(Prefix));
    assert_eq!(
        r.check(&user("alice", "backend-1")),
        Err(AuthFailure::ClientIdMismatch)
    );
    // Nothing selects an anonymous client here: its client ID is not bound by the ACL.
    assert_eq!(r.check(&anon("backend-1")), Ok(Unbound));
    assert_eq!(ClientIdRules::default().check(&user("a", "b")), Ok(Unbound));
}

#[test]
fn a_lone_star_admits_any_client_id() {
    let r = rules("[[client_ids]]\nmatch = { username = \"admin\" }\nallow = [\"*\"]\n");
    assert_eq!(
        r.check(&user("admin", "anything")),
        Ok(ClientIdBinding::Prefix)
    );
}

#[test]
fn sessions_change_hands_only_within_an_identity_or_by_binding() {
    use ClientIdBinding::*;
    use SessionClaim::*;
    let alice = user("alice", "dev-1");
    let bob = user("bob", "dev-1");
    let dev = principal(AuthMethod::Certificate, None, Some("dev-1"), "dev-1");
    let table = [
        // (claimant, binding, owner, claim)
        (&alice, Unbound, None, Own),
        (&alice, Unbound, Some(&alice), Own),
        (&alice, Unbound, Some(&bob), Refused),
        (&alice, Prefix, Some(&bob), Refused),
        (&alice, Exact, Some(&bob), Reclaim),
        (&alice, Unbound, Some(&anon("dev-1")), Refused),
        (&alice, Prefix, Some(&anon("dev-1")), Reclaim),
        (&dev, Exact, Some(&alice), Reclaim),
        (&anon("dev-1"), Exact, Some(&alice), Refused),
        (&anon("dev-1"), Unbound, Some(&anon("dev-1")), Own),
    ];
    for (claimant, binding, owner, claim) in table {
        assert_eq!(
            claim_session(claimant, binding, owner),
            claim,
            "{claimant:?} {binding:?} over {owner:?}"
        );
    }
}
