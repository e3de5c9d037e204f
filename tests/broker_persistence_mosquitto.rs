//! Coming from Mosquitto: midge takes over the `mosquitto.db` that Debian's Mosquitto wrote
//! in this test (retained messages, persistent sessions of 3.1.1 and 5.0 clients with their
//! subscriptions, queued messages, an unacknowledged delivery, an incoming QoS 2 message
//! awaiting PUBREL), keeps the database beside its own store, and from then on uses its own.

mod common;

use common::persist::{persistent, refused_start};
use common::*;
use midge::codec::*;
use std::path::Path;
use std::time::Duration;

fn midge(dir: &Path) -> Broker {
    let conf = config_file(
        "persist-from-mosquitto",
        &format!(
            "user root\nlistener 0 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n",
            dir.display()
        ),
    );
    Broker::start_configured(&["-c", &conf, "--threads", "2"])
}

/// Takes `n` deliveries, acknowledging each as its QoS asks (a QoS 2 flow may overlap
/// the next delivery), as (topic, payload, QoS, DUP).
fn take(c: &mut Raw, n: usize) -> Vec<(String, Vec<u8>, QoS, bool)> {
    let mut got = Vec::new();
    let mut releases_due = 0;
    while got.len() < n || releases_due > 0 {
        match c.recv() {
            Packet::Publish(p) => {
                match p.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => c.send(&Packet::PubAck(PubResponse::new(p.packet_id))),
                    QoS::ExactlyOnce => {
                        c.send(&Packet::PubRec(PubResponse::new(p.packet_id)));
                        releases_due += 1;
                    }
                }
                got.push((p.topic.to_string(), p.payload.to_vec(), p.qos, p.dup));
            }
            Packet::PubRel(r) => {
                c.send(&Packet::PubComp(PubResponse::new(r.packet_id)));
                releases_due -= 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    got
}

fn publish_completed(c: &mut Raw, topic: &str, payload: &[u8], qos: QoS, id: u16, retain: bool) {
    c.send(&publish(topic, payload, qos, id, retain));
    if qos == QoS::ExactlyOnce {
        assert_eq!(c.recv(), Packet::PubRec(PubResponse::new(id)));
        c.send(&Packet::PubRel(PubResponse::new(id)));
        assert_eq!(c.recv(), Packet::PubComp(PubResponse::new(id)));
    } else {
        assert_eq!(c.recv(), Packet::PubAck(PubResponse::new(id)));
    }
}

#[test]
fn a_mosquitto_database_is_taken_over_once() {
    let dir = std::env::temp_dir().join(format!("midge-from-mosquitto-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    // Debian's Mosquitto, with persistence, gets some state.
    let m = Mosquitto::start(
        "persist-mosquitto-side",
        &format!(
            "user root\nallow_anonymous true\npersistence true\npersistence_location {}/\n",
            dir.display()
        ),
    );
    let (mut old, _) = persistent(m.port, ProtocolVersion::V311, "keeper311");
    old.subscribe(&[("news/#", QoS::ExactlyOnce)]);
    let (mut new, _) = persistent(m.port, ProtocolVersion::V5, "keeper5");
    let mut subscribe = subscribe(1, &[("news/#", QoS::AtLeastOnce)]);
    if let Packet::Subscribe(s) = &mut subscribe {
        s.properties.subscription_identifiers.push(9);
    }
    new.send(&subscribe);
    assert!(matches!(new.recv(), Packet::SubAck(_)));
    new.send(&Packet::Disconnect(Disconnect::default()));
    new.expect_closed();
    let mut publisher = Raw::connect(m.port, "publisher");
    publish_completed(
        &mut publisher,
        "keep/a",
        b"retained",
        QoS::AtLeastOnce,
        1,
        true,
    );
    // keeper311 gets news/3 and never acknowledges it: in flight.
    publish_completed(
        &mut publisher,
        "news/3",
        b"three",
        QoS::AtLeastOnce,
        2,
        false,
    );
    let p = old.recv_publish();
    assert_eq!(p.topic.as_str(), "news/3");
    let in_flight_id = p.packet_id;
    drop(old);
    // Then two more for both, while both are away: queued.
    publish_completed(&mut publisher, "news/1", b"one", QoS::AtLeastOnce, 3, false);
    publish_completed(&mut publisher, "news/2", b"two", QoS::ExactlyOnce, 4, false);
    // An incoming QoS 2 message acknowledged with PUBREC, its PUBREL still to come.
    let (mut sender, _) = persistent(m.port, ProtocolVersion::V311, "sender");
    sender.send(&publish("news/4", b"four", QoS::ExactlyOnce, 77, false));
    assert_eq!(sender.recv(), Packet::PubRec(PubResponse::new(77)));
    drop((sender, publisher));
    assert!(m.terminate().success());
    let db = dir.join("mosquitto.db");
    assert!(std::fs::read(&db)
        .unwrap()
        .starts_with(b"\x00\xb5\x00mosquitto db"));

    // midge starts on the same place and takes it over.
    let b = midge(&dir);
    b.wait_for_log(
        "Restored 1 retained messages, 3 sessions, 8 queued messages from the Mosquitto database",
    );
    let (mut old, ack) = persistent(b.port, ProtocolVersion::V311, "keeper311");
    assert!(ack.session_present);
    // The unacknowledged delivery again, same packet id, DUP set [MQTT-4.4.0-1].
    let p = old.recv_publish();
    assert_eq!(
        (p.topic.as_str(), p.packet_id, p.dup),
        ("news/3", in_flight_id, true)
    );
    old.send(&Packet::PubAck(PubResponse::new(p.packet_id)));
    let got = take(&mut old, 3);
    assert_eq!(
        got,
        vec![
            ("news/1".into(), b"one".to_vec(), QoS::AtLeastOnce, false),
            ("news/2".into(), b"two".to_vec(), QoS::ExactlyOnce, false),
            ("news/4".into(), b"four".to_vec(), QoS::ExactlyOnce, false),
        ]
    );
    let (mut new, ack) = persistent(b.port, ProtocolVersion::V5, "keeper5");
    assert!(ack.session_present);
    let mut got = Vec::new();
    for _ in 0..4 {
        let p = new.recv_publish();
        assert_eq!(p.properties.subscription_identifiers.to_vec(), vec![9]);
        new.send(&Packet::PubAck(PubResponse::new(p.packet_id)));
        got.push((p.topic.to_string(), p.qos));
    }
    let at_least_once = |t: &str| (t.to_string(), QoS::AtLeastOnce);
    assert_eq!(
        got,
        ["news/3", "news/1", "news/2", "news/4"]
            .map(at_least_once)
            .to_vec()
    );
    // The sender's PUBREL completes its flow; the message is not handed on twice.
    let (mut sender, ack) = persistent(b.port, ProtocolVersion::V311, "sender");
    assert!(ack.session_present);
    sender.send(&Packet::PubRel(PubResponse::new(77)));
    assert_eq!(sender.recv(), Packet::PubComp(PubResponse::new(77)));
    old.expect_nothing(Duration::from_millis(200));
    // Subscriptions came over: live messages flow; and the retained message is there.
    let mut publisher = Raw::connect(b.port, "publisher");
    publisher.send(&publish("news/live", b"live", QoS::AtMostOnce, 0, false));
    assert_eq!(take(&mut old, 1)[0].1, b"live");
    let mut late = Raw::connect(b.port, "late");
    late.subscribe(&[("keep/#", QoS::AtMostOnce)]);
    let p = late.recv_publish();
    assert_eq!(
        (p.topic.as_str(), &p.payload[..], p.retain),
        ("keep/a", &b"retained"[..], true)
    );
    drop((old, new, sender, publisher, late));
    assert!(b.terminate().success());

    // Once: the database is kept aside, midge's marker is in its place, and the next start
    // reads midge's own store.
    let imported = dir.join("mosquitto.db.imported");
    assert!(std::fs::read(&imported)
        .unwrap()
        .starts_with(b"\x00\xb5\x00mosquitto db"));
    assert!(std::fs::read(&db).unwrap().starts_with(b"MIDGE"));
    let b = midge(&dir);
    let line = b.wait_for_log("Restored 1 retained messages, 3 sessions, 0 queued messages");
    assert!(!line.contains("Mosquitto"), "{line}");
    drop(b);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A database midge cannot read stops the start with the reason and the file, and is left
/// as it was.
#[test]
fn a_damaged_mosquitto_database_stops_the_start() {
    let dir = std::env::temp_dir().join(format!("midge-bad-mosquitto-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("mosquitto.db");
    // A header, then a chunk whose length runs past the end of the file.
    let mut bytes = b"\x00\xb5\x00mosquitto db".to_vec();
    bytes.extend([0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 2, 0, 0, 1, 0, 1, 2, 3]);
    std::fs::write(&db, &bytes).unwrap();
    let log = refused_start("persist-bad-mosquitto", &dir);
    assert!(
        log.contains(&format!("the Mosquitto database {}", db.display()))
            && log.contains("chunk of kind 2 at byte 23 runs past the end of the file"),
        "{log}"
    );
    assert_eq!(std::fs::read(&db).unwrap(), bytes);
    std::fs::remove_dir_all(&dir).unwrap();
}
