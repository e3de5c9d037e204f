//! acl_file over real sockets: publish, subscribe and delivery checks, so that neither a
//! broad subscription, a retained message nor a will gets past the ACL.

mod common;

use common::*;
use midge::auth::password::PasswordHash;
use midge::codec::*;

const ACL: &str = "topic read public/#\n\nuser alice\ntopic readwrite alice/#\ntopic deny alice/secret\n\nuser admin\ntopic readwrite #\n";

fn broker() -> Broker {
    let dir = std::env::temp_dir();
    let pw = dir.join(format!("midge-test-{}-acl-pw", std::process::id()));
    let hash = |p: &str| PasswordHash::pbkdf2(p.as_bytes(), b"0123456789ab", 101).to_field();
    std::fs::write(&pw, format!("alice:{}\nadmin:{}\n", hash("a"), hash("b"))).unwrap();
    let acl = dir.join(format!("midge-test-{}-acl", std::process::id()));
    std::fs::write(&acl, ACL).unwrap();
    let conf = config_file(
        "acl",
        &format!(
            "password_file {}\nacl_file {}\n",
            pw.display(),
            acl.display()
        ),
    );
    Broker::start(&["-c", &conf])
}

fn login(port: u16, version: ProtocolVersion, id: &str, user: Option<(&str, &str)>) -> Raw {
    let mut c = connect_packet(version, id, true, 60);
    if let Some((u, p)) = user {
        c.username = Some(s(u));
        c.password = Some(bytes::Bytes::copy_from_slice(p.as_bytes()));
    }
    let (raw, ack) = Raw::connect_with(port, c);
    assert_eq!(ack.reason, ReasonCode::Success);
    raw
}

#[test]
fn subscriptions_publishes_retained_and_deliveries_obey_the_acl() {
    let broker = broker();
    let port = broker.port;
    let mut admin = login(port, ProtocolVersion::V311, "admin", Some(("admin", "b")));
    // Retained messages, one alice may read and one she may not.
    admin.send(&publish("alice/ok", b"r-ok", QoS::AtLeastOnce, 1, true));
    admin.send(&publish(
        "alice/secret",
        b"r-secret",
        QoS::AtLeastOnce,
        2,
        true,
    ));
    assert!(matches!(admin.recv(), Packet::PubAck(_)));
    assert!(matches!(admin.recv(), Packet::PubAck(_)));

    // Anonymous: `#` reaches beyond public/#, so it is refused; public/# is fine.
    let mut anon = login(port, ProtocolVersion::V311, "anon", None);
    let ack = anon.subscribe(&[("#", QoS::AtMostOnce), ("public/#", QoS::AtMostOnce)]);
    assert_eq!(
        ack.reasons,
        vec![ReasonCode::UnspecifiedError, ReasonCode::GRANTED_QOS_0]
    );

    // alice subscribes to alice/#: the retained secret is not sent; alice/ok is.
    let mut alice = login(port, ProtocolVersion::V311, "alice-1", Some(("alice", "a")));
    alice.subscribe(&[("alice/#", QoS::AtMostOnce)]);
    let p = alice.recv_publish();
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("alice/ok", &b"r-ok"[..])
    );
    // Live: the secret is not delivered even though the filter matches it; an anonymous
    // PUBLISH to alice/ is dropped (3.1.1: acknowledged all the same).
    admin.send(&publish(
        "alice/secret",
        b"live-secret",
        QoS::AtMostOnce,
        0,
        false,
    ));
    anon.send(&publish(
        "alice/x",
        b"from-anon",
        QoS::AtLeastOnce,
        3,
        false,
    ));
    assert!(matches!(anon.recv(), Packet::PubAck(_)));
    admin.send(&publish(
        "alice/marker",
        b"marker",
        QoS::AtMostOnce,
        0,
        false,
    ));
    assert_eq!(
        &alice.recv_publish().payload[..],
        b"marker",
        "nothing denied came first"
    );

    // 5.0: a denied QoS 1 PUBLISH is answered 0x87.
    let mut anon5 = login(port, ProtocolVersion::V5, "anon5", None);
    anon5.send(&publish("alice/y", b"no", QoS::AtLeastOnce, 4, false));
    let Packet::PubAck(ack) = anon5.recv() else {
        panic!("expected PUBACK")
    };
    assert_eq!(ack.reason, ReasonCode::NotAuthorized);
}

#[test]
fn a_will_to_a_forbidden_topic_is_not_published() {
    let broker = broker();
    let mut alice = login(
        broker.port,
        ProtocolVersion::V311,
        "alice-w",
        Some(("alice", "a")),
    );
    alice.subscribe(&[("alice/#", QoS::AtMostOnce)]);
    let mut c = connect_packet(ProtocolVersion::V311, "anon-will", true, 60);
    c.will = Some(Will {
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
        topic: s("alice/will"),
        payload: bytes::Bytes::from_static(b"sneaky"),
    });
    let (anon, _) = Raw::connect_with(broker.port, c);
    drop(anon);
    broker.wait_for_log("Client anon-will closed its connection.");
    let mut admin = login(
        broker.port,
        ProtocolVersion::V311,
        "admin",
        Some(("admin", "b")),
    );
    admin.send(&publish(
        "alice/marker",
        b"marker",
        QoS::AtMostOnce,
        0,
        false,
    ));
    assert_eq!(&alice.recv_publish().payload[..], b"marker");
}
