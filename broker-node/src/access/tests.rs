//! Unit tests of the node's auth wiring: config → generation, CONNACK codes, ACL per connection and reload.

use std::net::SocketAddr;
use std::path::PathBuf;

use fleetgate_protocol::mqtt::ConnectAckReason;
use fleetgate_protocol::proxy::PeerIdentity;

use super::*;

struct Files {
    _dir: tempfile::TempDir,
    node: PathBuf,
    acl: PathBuf,
}

const NODE: &str = "[node]\nname = \"n\"\n[[listeners]]\nname = \"lb\"\nbind = \"127.0.0.1:0\"\n\
                    proxy_protocol = \"required\"\ntrusted_proxies = [\"127.0.0.1/32\"]\n";
const AUTH: &str =
    "[auth]\npolicies = [\"certificate\", \"client_id_from_cert\"]\nacl_file = \"acl.toml\"\n";
const ACL: &str = "[[rules]]\naction = \"allow\"\naccess = \"both\"\nmatch = { any_authenticated = true }\n\
                   topics = [\"fleet/%c/#\"]\n";

fn files(node_extra: &str, acl: &str) -> Files {
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("node.toml");
    std::fs::write(&node, format!("{NODE}{node_extra}")).unwrap();
    let acl_path = dir.path().join("acl.toml");
    std::fs::write(&acl_path, acl).unwrap();
    Files {
        _dir: dir,
        node,
        acl: acl_path,
    }
}

fn state(f: &Files) -> Arc<Access> {
    let config = NodeConfig::load(&f.node).unwrap();
    Access::load(&f.node, &config).unwrap()
}

fn origin(identity: Option<PeerIdentity>) -> ClientOrigin {
    let source: SocketAddr = "192.0.2.7:40000".parse().unwrap();
    ClientOrigin {
        source,
        identity: identity.map(Box::new),
    }
}

fn verified(cn: &str) -> PeerIdentity {
    PeerIdentity {
        tls: true,
        cert_presented: true,
        cert_verified: true,
        cn: Some(cn.into()),
        ..PeerIdentity::default()
    }
}

fn connect(client_id: &str) -> Connect {
    Connect {
        client_id: client_id.into(),
        ..Connect::default()
    }
}

#[tokio::test]
async fn without_auth_section_everyone_is_admitted_and_nothing_is_checked() {
    let f = files("", "");
    let state = state(&f);
    assert!(!state.current().enabled);
    let mut a = state
        .authenticate("lb", &connect("x"), &origin(None))
        .await
        .unwrap();
    assert!(a.may_publish("$SYS/anything"));
    assert!(a.may_subscribe("#"));
}

#[tokio::test]
async fn certificate_binds_client_id_and_acl_confines_it() {
    let f = files(AUTH, ACL);
    let state = state(&f);
    let id = Some(verified("dev-1"));
    let mut a = state
        .authenticate("lb", &connect("dev-1"), &origin(id.clone()))
        .await
        .unwrap();
    assert!(a.may_publish("fleet/dev-1/telemetry"));
    assert!(!a.may_publish("fleet/dev-2/telemetry"));
    assert!(a.may_subscribe("fleet/dev-1/#"));
    assert!(a.may_subscribe("$share/g/fleet/dev-1/+"));
    for wide in ["fleet/#", "+/+/#", "#", "$share/g/fleet/+/x"] {
        assert!(!a.may_subscribe(wide), "{wide}");
    }
    let refused = state
        .authenticate("lb", &connect("dev-2"), &origin(id))
        .await
        .unwrap_err();
    assert_eq!(refused, AuthFailure::ClientIdMismatch);
    let refused = state
        .authenticate("lb", &connect("dev-1"), &origin(None))
        .await
        .unwrap_err();
    assert_eq!(refused, AuthFailure::CertificateRequired);
    // A CN in the TLVs without the verified flag is no identity.
    let unverified = PeerIdentity {
        cert_verified: false,
        ..verified("dev-1")
    };
    let refused = state
        .authenticate("lb", &connect("dev-1"), &origin(Some(unverified)))
        .await
        .unwrap_err();
    assert_eq!(refused, AuthFailure::CertificateRequired);
}

#[tokio::test]
async fn reload_swaps_the_acl_of_live_connections_and_a_broken_file_keeps_the_old_one() {
    let f = files(AUTH, ACL);
    let state = state(&f);
    let mut a = state
        .authenticate("lb", &connect("dev-1"), &origin(Some(verified("dev-1"))))
        .await
        .unwrap();
    assert!(a.may_publish("fleet/dev-1/t"));
    // What a will's permit asks when the will is due: the ACL of that moment.
    let (access, principal) = (a.access().clone(), a.principal().clone());
    let will_allowed = |topic| access.will_allowed(&principal, topic);
    assert!(will_allowed("fleet/dev-1/will"));

    std::fs::write(&f.acl, "[[rules]]\naction = \"allow\"\n").unwrap();
    let err = state.reload().unwrap_err().to_string();
    assert!(err.contains("acl.toml:"), "{err}");
    assert!(a.may_publish("fleet/dev-1/t"), "old generation kept");

    std::fs::write(&f.acl, "").unwrap();
    state.reload().unwrap();
    assert!(
        !a.may_publish("fleet/dev-1/t"),
        "empty ACL denies by default"
    );
    assert!(!will_allowed("fleet/dev-1/will"));
}

#[test]
fn unknown_listener_override_is_reported() {
    // At start-up the node config reports it with its other problems; on reload, the re-read section does.
    let f = files(
        &format!("{AUTH}[auth.listeners.nope]\nanonymous = true\npolicies = []\n"),
        ACL,
    );
    let err = NodeConfig::load(&f.node).unwrap_err().to_string();
    assert!(err.contains("[auth.listeners.nope]"), "{err}");
    let f = files(AUTH, ACL);
    let state = state(&f);
    let broken = format!("{NODE}{AUTH}[auth.listeners.nope]\nanonymous = true\npolicies = []\n");
    std::fs::write(&f.node, broken).unwrap();
    let err = state.reload().unwrap_err().to_string();
    assert!(err.contains("[auth.listeners.nope]"), "{err}");
}

#[test]
fn connack_codes_per_protocol() {
    use AuthFailure::*;
    let v5 = |f| u8::from(connack_reason(f, ProtocolLevel::V5));
    assert_eq!(v5(ClientIdMismatch), 0x85);
    assert_eq!(v5(BadCredentials), 0x86);
    assert_eq!(v5(CertificateRequired), 0x87);
    assert_eq!(v5(Banned), 0x8A);
    // 3.1.1: the v5 reason whose codec conversion (protocol `convert::connack_v5_to_v3`) gives `v3_code`.
    let v3 = |f| u8::from(connack_reason(f, ProtocolLevel::V311));
    assert_eq!(v3(ClientIdMismatch), 0x85, "→ 0x02 identifier rejected");
    assert_eq!(v3(BadCredentials), 0x86, "→ 0x04 bad user name or password");
    assert_eq!(v3(CertificateRequired), 0x87, "→ 0x05 not authorized");
    assert_eq!(v3(NotAuthorized), 0x87, "→ 0x05 not authorized");
    assert_eq!(
        v3(Banned),
        0x87,
        "→ 0x05 not authorized (v3_code of Banned)"
    );
    assert_eq!(v3(Busy), 0x88, "→ 0x03 server unavailable");
    assert_eq!(
        connack_reason(Internal, ProtocolLevel::V311),
        ConnectAckReason::ServerUnavailable
    );
}
