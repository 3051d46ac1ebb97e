//! Unit tests of session ownership in the broker: an attach for another identity is refused before anything
//! changes, an exact binding reclaims the client ID with a fresh session, and a session arriving from a peer
//! never hands what it owed to another identity's session here.

use std::sync::Arc;

use bytes::Bytes;
use fleetgate_auth::{AuthMethod, ClientIdBinding, Principal};
use fleetgate_config::node::LimitsConfig;
use fleetgate_protocol::mqtt::{ByteString, ProtocolLevel, QoS};
use tokio_util::sync::CancellationToken;

use super::{AttachRequest, Attached, Broker, SessionOwnerMismatch};
use crate::state::message::{Delivery, Message};
use crate::state::session::SessionSnapshot;

fn broker() -> Arc<Broker> {
    Arc::new(Broker::new(
        "n".into(),
        LimitsConfig::default(),
        crate::metrics::Metrics::register(),
        CancellationToken::new(),
        None,
    ))
}

fn user(name: &str) -> Arc<Principal> {
    Arc::new(Principal {
        username: Some(name.into()),
        cn: None,
        client_id: "c".into(),
        method: AuthMethod::Password,
    })
}

fn attach(
    broker: &Arc<Broker>,
    who: &Arc<Principal>,
    binding: ClientIdBinding,
) -> Result<Attached, SessionOwnerMismatch> {
    broker.attach(AttachRequest {
        client_id: "c".into(),
        clean_start: false,
        expiry_secs: 60,
        will: None,
        protocol: ProtocolLevel::V5,
        source: "192.0.2.1:1".parse().unwrap(),
        window: 10,
        principal: who.clone(),
        binding,
    })
}

fn delivery(payload: &'static str) -> Delivery {
    Delivery {
        msg: Arc::new(Message {
            topic: "t".into(),
            payload: Bytes::from_static(payload.as_bytes()),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: None,
            expires_at: None,
            origin: 0,
        }),
        qos: QoS::AtLeastOnce,
        retain: false,
        sub_ids: Vec::new(),
        seq: 0,
    }
}

#[tokio::test]
async fn another_identity_is_refused_and_an_exact_binding_reclaims() {
    let b = broker();
    let (alice, bob) = (user("alice"), user("bob"));
    let first = attach(&b, &alice, ClientIdBinding::Unbound).unwrap();
    first.session.state.lock().queue.push_back(delivery("kept"));
    assert_eq!(
        attach(&b, &bob, ClientIdBinding::Prefix).err(),
        Some(SessionOwnerMismatch)
    );
    assert!(
        first.session.state.lock().conn.is_some(),
        "alice's connection was not kicked"
    );
    let again = attach(&b, &alice, ClientIdBinding::Unbound).unwrap();
    assert!(again.present && Arc::ptr_eq(&again.session, &first.session));
    assert_eq!(again.session.state.lock().queue.len(), 1);

    let reclaimed = attach(&b, &bob, ClientIdBinding::Exact).unwrap();
    assert!(!reclaimed.present, "a new session");
    assert!(!Arc::ptr_eq(&reclaimed.session, &first.session));
    assert!(reclaimed.session.state.lock().queue.is_empty());
    assert!(first.session.state.lock().ended);
}

#[tokio::test]
async fn an_arriving_session_never_feeds_another_identitys() {
    let b = broker();
    let snapshot = |owner: &Arc<Principal>| SessionSnapshot {
        client_id: ByteString::from("c"),
        expiry_secs: 60,
        protocol: ProtocolLevel::V5,
        next_packet_id: 0,
        inbound_qos2: Vec::new(),
        will: None,
        principal: Some(owner.clone()),
        subs: Vec::new(),
        queue: vec![delivery("owed")],
        inflight: Vec::new(),
    };
    let bob = attach(&b, &user("bob"), ClientIdBinding::Unbound).unwrap();
    b.install_session(snapshot(&user("alice")), std::time::Duration::ZERO, || {});
    assert!(
        bob.session.state.lock().queue.is_empty(),
        "alice's message is not bob's"
    );
    b.install_session(snapshot(&user("bob")), std::time::Duration::ZERO, || {});
    assert_eq!(bob.session.state.lock().queue.len(), 1, "bob's own arrives");
}

#[tokio::test]
async fn a_takeover_for_another_identity_is_refused_or_reclaimed_before_anything_moves() {
    use super::Departure;
    let b = broker();
    let (alice, bob) = (user("alice"), user("bob"));
    let held = attach(&b, &alice, ClientIdBinding::Unbound).unwrap();
    let id = ByteString::from("c");
    let takeover = Departure::Takeover { clean_start: false };
    let mut shipped = false;
    let refused = b.export_session(&id, takeover, Some((&bob, ClientIdBinding::Prefix)), |_| {
        shipped = true;
        true
    });
    assert_eq!(refused, Err(SessionOwnerMismatch));
    assert!(
        !shipped && held.session.state.lock().conn.is_some(),
        "nothing moved"
    );
    // The same identity gets it shipped.
    let own = b.export_session(
        &id,
        takeover,
        Some((&alice, ClientIdBinding::Unbound)),
        |_| true,
    );
    assert_eq!(own, Ok(true));

    // An exact binding ends the other identity's session instead of shipping it.
    let again = attach(&b, &alice, ClientIdBinding::Unbound).unwrap();
    let reclaimed = b.export_session(&id, takeover, Some((&bob, ClientIdBinding::Exact)), |_| {
        shipped = true;
        true
    });
    assert_eq!(reclaimed, Ok(false));
    assert!(!shipped && again.session.state.lock().ended);
}
