//! End-to-end tests of client-ID binding and session ownership (issue #14): a real `fleetgate node` — behind a real
//! `fleetgate lb` terminating mutual TLS where certificates are involved — with clients we did not write
//! (mosquitto_pub/sub, paho, rumqttc) and the raw client for exact reason codes.
//!
//! - Password users bound by `bind_client_id` (`client_id_template = "{username}-*"`) and by the ACL's
//!   `[[client_ids]]`: another client ID gets CONNACK 0x85 / 0x02 and `auth_failed reason=client_id_mismatch`.
//! - Certificate users bound by `{cn}-*` and `[[client_ids]]`, their identity carried by PROXY v2 TLVs.
//! - A session held by another identity is refused (0x87 / 0x05, `session_owner_mismatch`) and left untouched;
//!   a bound client reclaims its client ID from an anonymous squatter.
//!
//! The README "Client-ID binding" table lists each case and its outcome.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{BIN, passwd, tls_lb};
use fleetgate_testkit::clients::{CmdOutput, mosquitto_pub, mosquitto_sub, paho};
use fleetgate_testkit::raw::Connect;
use fleetgate_testkit::rumqttc_client::{try_v3_client, v3_client, v3_publish, v3_subscribe};
use fleetgate_testkit::{
    MqttVersion, Node, Pki, RawClient, WAIT, assert_no_secrets, bounded, scratch_dir,
};

/// Bound on each whole test.
const TEST_DEADLINE: Duration = Duration::from_secs(120);

const PW_ALICE: &str = "Alice-b1nding-pw";
const PW_BOB: &str = "Bob-b1nding-pw";
const PW_BACKEND: &str = "Backend-b1nding-pw";

/// Every authenticated client owns `fleet/<its client ID>/#`: the rights a stolen client ID would give.
const PERCENT_C_ACL: &str = r#"
[[rules]]
action = "allow"
access = "both"
match = { any_authenticated = true }
topics = ["fleet/%c/#"]

[[rules]]
action = "allow"
access = "both"
match = { username = "backend" }
topics = ["fleet/+/cmd"]
"#;

/// [`PERCENT_C_ACL`] with `backend` bound to exactly `backend-1` by a `[[client_ids]]` entry.
fn backend_bound_acl() -> String {
    format!(
        "{PERCENT_C_ACL}\n[[client_ids]]\nmatch = {{ username = \"backend\" }}\nallow = [\"backend-1\"]\n"
    )
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).expect("write a test file");
}

/// Writes the password file `passwd` in `dir` with alice, bob and backend (through `fleetgate passwd`).
async fn users(dir: &Path) {
    let file = dir.join("passwd");
    for (user, pw) in [
        ("alice", PW_ALICE),
        ("bob", PW_BOB),
        ("backend", PW_BACKEND),
    ] {
        let out = passwd(&file, user, pw).await;
        assert_eq!(out.code, Some(0), "fleetgate passwd {user}: {out:?}");
    }
}

/// The CONNACK code a raw client gets for `user`/`pw` with `client_id` at `level` (clean session).
async fn login(
    addr: std::net::SocketAddr,
    level: u8,
    client_id: &str,
    user: &str,
    pw: &str,
) -> Option<u8> {
    let mut c = RawClient::connect_from(addr, None, &[]).await;
    let mut connect = Connect::new(level, client_id);
    connect.credentials = Some((user, pw));
    c.mqtt_connect(&connect).await
}

/// `fleetgate_auth_refusals_total{reason}` of `node`.
async fn refusals(node: &Node, reason: &str) -> f64 {
    node.admin
        .metric("fleetgate_auth_refusals_total", &[("reason", reason)])
        .await
}

/// The connack event of a finished paho run.
fn paho_connack(out: &CmdOutput) -> serde_json::Value {
    out.events_of("connack")
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no connack from paho: {out:?}"))
}

const BOUND_NODE: &str = "[node]\nname = \"bind-node\"\nshutdown_grace = \"2s\"\n\n\
[[listeners]]\nname = \"internal\"\nbind = \"127.0.0.1:0\"\n\n\
[admin]\nbind = \"127.0.0.1:0\"\n\n\
[auth]\npolicies = [\"password\", \"bind_client_id\"]\nclient_id_template = \"{username}-*\"\n\
password_file = \"passwd\"\nacl_file = \"acl.toml\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_users_are_bound_to_their_client_ids() {
    bounded(TEST_DEADLINE, async {
        let dir = scratch_dir();
        users(dir.path()).await;
        // `backend` may use exactly `backend-1`: the ACL's entry narrows the listener's `{username}-*`.
        write(dir.path(), "acl.toml", &backend_bound_acl());
        let node = Node::start_in(BIN, dir.path(), BOUND_NODE).await;
        let addr = node.mqtt;
        let pub_as = |v, id: &'static str, user: &'static str, pw: &'static str| async move {
            let args = [
                "-i",
                id,
                "-u",
                user,
                "-P",
                pw,
                "-q",
                "1",
                "-t",
                "fleet/x/y",
                "-m",
                "m",
            ];
            mosquitto_pub(addr, v, &args).await
        };

        // mosquitto_pub, both versions: alice under her own prefix is admitted; under bob's she is refused with
        // the spec's code, which mosquitto names.
        for v in [MqttVersion::V5, MqttVersion::V311] {
            let out = pub_as(v, "alice-1", "alice", PW_ALICE).await;
            assert!(out.success(), "{v:?} alice-1: {out:?}");
            let out = pub_as(v, "bob-1", "alice", PW_ALICE).await;
            assert!(!out.success(), "{v:?} alice as bob-1: {out:?}");
            let said = out.stderr.to_lowercase();
            assert!(
                said.contains("identifier"),
                "{v:?}: mosquitto names the refusal: {out:?}"
            );
        }
        // paho, both versions: the CONNACK codes 0x85 (133) and 0x02.
        for (v, code) in [(MqttVersion::V5, 133), (MqttVersion::V311, 2)] {
            let args = [
                "--id",
                "bob-7",
                "--username",
                "alice",
                "--password",
                PW_ALICE,
            ];
            let out = paho(addr, v, &args).finish().await;
            assert_eq!(paho_connack(&out)["rc"], code, "{v:?}: {out:?}");
        }
        // rumqttc 3.1.1: refused as a bad client ID.
        let refused = try_v3_client(addr, "bob-9", |o| {
            o.set_credentials("alice", PW_ALICE);
        })
        .await;
        let err = refused.err().expect("rumqttc as bob-9 is refused");
        assert!(err.contains("BadClientId"), "{err}");
        let (_ok, _events, _) = v3_client(addr, "alice-rumqttc", |o| {
            o.set_credentials("alice", PW_ALICE);
        })
        .await;

        // Exact codes with the raw client. A wrong password gets 0x86 whatever the client ID: the binding is
        // told only to a client that proved its password.
        for (level, id, user, pw, code) in [
            (5, "alice-raw", "alice", PW_ALICE, 0x00),
            (5, "bob-raw", "alice", PW_ALICE, 0x85),
            (4, "bob-raw", "alice", PW_ALICE, 0x02),
            (5, "alice", "alice", PW_ALICE, 0x85),
            (5, "bob-raw", "alice", PW_BOB, 0x86),
            (5, "backend-1", "backend", PW_BACKEND, 0x00),
            // Within the template's `backend-*`, outside the ACL's `backend-1`.
            (5, "backend-2", "backend", PW_BACKEND, 0x85),
            (4, "backend-2", "backend", PW_BACKEND, 0x02),
        ] {
            assert_eq!(
                login(addr, level, id, user, pw).await,
                Some(code),
                "v{level} {user} as {id}"
            );
        }

        let failed = node.process.events("auth_failed");
        assert!(
            failed.iter().any(|e| e["reason"] == "client_id_mismatch"
                && e["client_id"] == "bob-raw"
                && e["source"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("127.0.0.1:"))),
            "{failed:?}"
        );
        let mismatches = refusals(&node, "client_id_mismatch").await;
        assert!(mismatches >= 10.0, "{mismatches}");
        assert_no_secrets(&node.process.logs(), &[PW_ALICE, PW_BOB, PW_BACKEND]);
    })
    .await;
}

const CERT_NODE: &str = "[node]\nname = \"bind-cert-node\"\nshutdown_grace = \"2s\"\n\n\
[[listeners]]\nname = \"lb\"\nbind = \"127.0.0.1:0\"\nproxy_protocol = \"required\"\n\
trusted_proxies = [\"127.0.0.1/32\"]\nproxy_timeout = \"2s\"\n\n\
[admin]\nbind = \"127.0.0.1:0\"\n\n\
[auth]\npolicies = [\"certificate\", \"bind_client_id\"]\nclient_id_template = \"{cn}-*\"\nacl_file = \"acl.toml\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_through_the_lb_are_bound_by_template_and_acl() {
    bounded(TEST_DEADLINE, async {
        let pki = Pki::new();
        let dir = scratch_dir();
        let acl = format!(
            "{PERCENT_C_ACL}\n[[client_ids]]\nmatch = {{ cn = \"gateway\" }}\nallow = [\"gateway-1\"]\n"
        );
        write(dir.path(), "acl.toml", &acl);
        let node = Node::start_in(BIN, dir.path(), CERT_NODE).await;
        let lb = tls_lb(&pki, "optional", node.mqtt).await;
        let ca = pki.ca_cert().display().to_string();
        let dev1 = pki.client("dev-1");
        let (cert, key) = (
            dev1.cert.display().to_string(),
            dev1.key.display().to_string(),
        );

        // mosquitto_pub with dev-1's certificate through the LB: `dev-1-...` admitted, `dev-2-...` refused.
        for v in [MqttVersion::V5, MqttVersion::V311] {
            for (id, ok) in [("dev-1-a", true), ("dev-2-a", false)] {
                let args = [
                    "--cafile", &ca, "--cert", &cert, "--key", &key, "-i", id, "-t",
                    "fleet/dev-1-a/t", "-m", "m",
                ];
                let out = mosquitto_pub(lb.mqtt, v, &args).await;
                assert_eq!(out.success(), ok, "{v:?} {id}: {out:?}");
            }
        }
        // paho over TLS with the certificate: 0x85 / 0x02 for another device's prefix.
        for (v, code) in [(MqttVersion::V5, 133), (MqttVersion::V311, 2)] {
            let args = [
                "--cafile", &ca, "--cert", &cert, "--key", &key, "--id", "dev-2-p",
            ];
            let out = paho(lb.mqtt, v, &args).finish().await;
            assert_eq!(paho_connack(&out)["rc"], code, "{v:?}: {out:?}");
        }
        // Exact codes; the gateway's `[[client_ids]]` entry admits `gateway-1` only, inside its `gateway-*`.
        let gateway = pki.client("gateway");
        for (who, id, level, code) in [
            (&dev1, "dev-1-raw", 5, 0x00),
            (&dev1, "dev-1", 5, 0x85),
            (&dev1, "dev-9-raw", 4, 0x02),
            (&gateway, "gateway-1", 5, 0x00),
            (&gateway, "gateway-2", 5, 0x85),
            (&gateway, "gateway-2", 4, 0x02),
        ] {
            let mut c = RawClient::connect_tls(lb.mqtt, &pki, Some(who)).await;
            assert_eq!(
                c.mqtt_connect(&Connect::new(level, id)).await,
                Some(code),
                "v{level} {id}"
            );
        }
        node.process
            .wait_for_log(WAIT, "auth_failed client_id_mismatch", |e| {
                e["event"] == "auth_failed"
                    && e["reason"] == "client_id_mismatch"
                    && e["client_id"] == "gateway-2"
            })
            .await;
        assert!(
            refusals(&node, "client_id_mismatch").await
                >= 8.0
        );
    })
    .await;
}

/// Three listeners: `internal` admits password users unbound, `bound` binds them to `{username}-*`, `guest` admits
/// anonymous clients.
const OWNER_NODE: &str = "[node]\nname = \"owner-node\"\nshutdown_grace = \"2s\"\n\n\
[[listeners]]\nname = \"internal\"\nbind = \"127.0.0.1:0\"\n\n\
[[listeners]]\nname = \"bound\"\nbind = \"127.0.0.1:0\"\n\n\
[[listeners]]\nname = \"guest\"\nbind = \"127.0.0.1:0\"\n\n\
[admin]\nbind = \"127.0.0.1:0\"\n\n\
[auth]\npolicies = [\"password\"]\npassword_file = \"passwd\"\nacl_file = \"acl.toml\"\n\n\
[auth.listeners.bound]\npolicies = [\"password\", \"bind_client_id\"]\nclient_id_template = \"{username}-*\"\n\n\
[auth.listeners.guest]\npolicies = []\nanonymous = true\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_stays_with_its_identity() {
    bounded(TEST_DEADLINE, async {
        let dir = scratch_dir();
        users(dir.path()).await;
        write(dir.path(), "acl.toml", PERCENT_C_ACL);
        let node = Node::start_in(BIN, dir.path(), OWNER_NODE).await;
        let [internal, bound, guest] = node.listeners[..] else {
            panic!("three listeners: {:?}", node.listeners)
        };

        // alice holds a persistent session `dev-7` (rumqttc, 3.1.1, clean session off) subscribed to its commands.
        let alice = |o: &mut rumqttc::MqttOptions| {
            o.set_credentials("alice", PW_ALICE);
            o.set_clean_session(false);
        };
        let (a, mut a_rx, ack) = v3_client(internal, "dev-7", alice).await;
        assert!(!ack.session_present);
        v3_subscribe(&a, &mut a_rx, "fleet/dev-7/cmd", rumqttc::QoS::AtLeastOnce).await;

        // bob, with the same client ID on the same unbound listener: refused, raw (both versions), mosquitto_sub
        // and paho. alice's connection is not kicked.
        assert_eq!(login(internal, 5, "dev-7", "bob", PW_BOB).await, Some(0x87));
        assert_eq!(login(internal, 4, "dev-7", "bob", PW_BOB).await, Some(0x05));
        let sub = mosquitto_sub(
            internal,
            MqttVersion::V311,
            5,
            &[
                "-i",
                "dev-7",
                "-c",
                "-u",
                "bob",
                "-P",
                PW_BOB,
                "-t",
                "fleet/dev-7/#",
            ],
        )
        .finish()
        .await;
        assert!(!sub.success(), "mosquitto_sub as bob: {sub:?}");
        assert!(sub.stderr.to_lowercase().contains("not authori"), "{sub:?}");
        let args = [
            "--id",
            "dev-7",
            "--clean",
            "0",
            "--session-expiry",
            "60",
            "--username",
            "bob",
            "--password",
            PW_BOB,
        ];
        let out = paho(internal, MqttVersion::V5, &args).finish().await;
        assert_eq!(paho_connack(&out)["rc"], 0x87, "{out:?}");
        a.publish("fleet/dev-7/cmd", rumqttc::QoS::AtLeastOnce, false, "live")
            .await
            .expect("queue alice's publish");
        let got = a_rx.next_matching("alice's own command", v3_publish).await;
        assert_eq!(&got.payload[..], b"live", "alice's connection is still up");

        // alice goes offline; a command is queued in her session; bob is still refused.
        drop(a_rx);
        node.admin.wait_connected("dev-7", false, WAIT).await;
        let mut backend = RawClient::connect_from(internal, None, &[]).await;
        let mut connect = Connect::new(5, "backend-1");
        connect.credentials = Some(("backend", PW_BACKEND));
        assert_eq!(backend.mqtt_connect(&connect).await, Some(0x00));
        assert_eq!(
            backend.publish_qos1(1, "fleet/dev-7/cmd", b"queued").await,
            0x00
        );
        assert_eq!(login(internal, 4, "dev-7", "bob", PW_BOB).await, Some(0x05));
        // A prefix binding does not reach another user's session either (bob's `bob-*` does not admit `dev-7`,
        // and `alice-...` IDs are alice's): an anonymous client gets nothing of an authenticated one's session.
        assert_eq!(login(bound, 5, "dev-7", "bob", PW_BOB).await, Some(0x85));
        let mut anon = RawClient::connect_from(guest, None, &[]).await;
        assert_eq!(
            anon.mqtt_connect(&Connect::new(5, "dev-7")).await,
            Some(0x87)
        );

        // alice comes back: her session is there, with the queued command.
        let (_a, mut a_rx, ack) = v3_client(internal, "dev-7", alice).await;
        assert!(
            ack.session_present,
            "alice's session survived bob's attempts"
        );
        let got = a_rx.next_matching("the queued command", v3_publish).await;
        assert_eq!(&got.payload[..], b"queued");

        // Reclaim: an anonymous client squats `alice-9` on the guest listener; alice, bound to `alice-*` there,
        // takes the ID back with a fresh session (nothing of the squatter's carries over).
        let mut squatter = RawClient::connect_from(guest, None, &[]).await;
        let mut persistent = Connect::new(4, "alice-9");
        persistent.clean = false;
        assert_eq!(squatter.mqtt_connect(&persistent).await, Some(0x00));
        assert_eq!(
            squatter.subscribe(1, "fleet/alice-9/#").await,
            0x80,
            "the ACL gives anonymous nothing"
        );
        let mut reclaim = RawClient::connect_from(bound, None, &[]).await;
        let mut connect = Connect::new(4, "alice-9");
        connect.clean = false;
        connect.credentials = Some(("alice", PW_ALICE));
        reclaim.send(&connect.encode()).await;
        assert_eq!(
            reclaim.read_connack().await,
            Some((false, 0x00)),
            "reclaimed: a new session"
        );
        assert!(squatter.closed().await, "the squatter was taken over");
        // ... and the squatter cannot take it back.
        let mut again = RawClient::connect_from(guest, None, &[]).await;
        assert_eq!(again.mqtt_connect(&persistent).await, Some(0x05));

        let failed = node.process.events("auth_failed");
        assert!(
            failed
                .iter()
                .any(|e| e["reason"] == "session_owner_mismatch" && e["client_id"] == "dev-7"),
            "{failed:?}"
        );
        node.process
            .wait_for_log(WAIT, "session_reclaimed", |e| {
                e["event"] == "session_reclaimed" && e["client_id"] == "alice-9"
            })
            .await;
        let owner_refusals = refusals(&node, "session_owner_mismatch").await;
        assert!(owner_refusals >= 7.0, "{owner_refusals}");
        assert_no_secrets(&node.process.logs(), &[PW_ALICE, PW_BOB, PW_BACKEND]);
    })
    .await;
}

/// `fleetgate check FILE`: exit code, stdout, stderr.
fn check(file: &Path) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(BIN)
        .arg("check")
        .arg(file)
        .output()
        .expect("run fleetgate check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_warns_about_password_users_without_a_binding_under_percent_c() {
    bounded(TEST_DEADLINE, async {
        let dir = scratch_dir();
        users(dir.path()).await;
        // backend is bound by the ACL; alice and bob are not, and `fleet/%c/#` is theirs to take.
        write(dir.path(), "acl.toml", &backend_bound_acl());
        let node = dir.path().join("node.toml");
        write(dir.path(), "node.toml", OWNER_NODE);
        let (code, stdout, stderr) = check(&node);
        assert_eq!(code, Some(0), "a warning is no error: {stderr}");
        assert!(stdout.contains(": ok (node config)"), "{stdout}");
        let warning = format!("{}: warning: listener \"internal\"", node.display());
        assert!(stderr.contains(&warning), "{stderr}");
        assert!(stderr.contains("(unbound: alice, bob)"), "{stderr}");
        assert!(stderr.contains("`%c`"), "{stderr}");
        assert_eq!(stderr.matches("warning:").count(), 1, "`bound` and `guest` are fine: {stderr}");

        // Bound for everyone by the ACL: no warning.
        let everyone = format!(
            "{PERCENT_C_ACL}\n[[client_ids]]\nmatch = {{ any_authenticated = true }}\nallow = [\"x-*\"]\n"
        );
        write(dir.path(), "acl.toml", &everyone);
        let (code, _, stderr) = check(&node);
        assert_eq!((code, stderr.as_str()), (Some(0), ""));

        // The shipped example binds its password listener.
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/node.toml");
        let (code, _, stderr) = check(&example);
        assert_eq!((code, stderr.as_str()), (Some(0), ""));
    })
    .await;
}
