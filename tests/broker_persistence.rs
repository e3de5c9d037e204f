//! Persistence (`persistence true`): retained messages, persistent sessions with their
//! subscriptions, queued messages and QoS state both ways survive a restart (SIGTERM) and a
//! crash (`kill -9`), at one and two shards, for 3.1.1 and 5.0 clients; a torn journal is
//! read up to its last whole record, a damaged one stops the start naming the file.

mod common;

use common::persist::*;
use common::*;
use midge::codec::*;
use std::path::Path;

#[test]
fn retained_messages_and_sessions_survive_a_restart() {
    for threads in ["1", "2"] {
        for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
            let dir = store(&format!("restart-{threads}-{version:?}"));
            let name = format!("persist-restart-{threads}-{version:?}");
            let b = broker(&name, &dir, "", threads);
            let (mut sub, ack) = persistent(b.port, version, "keeper");
            assert!(!ack.session_present);
            let mut subscribe = subscribe(
                1,
                &[("news/#", QoS::ExactlyOnce), ("one/+", QoS::AtLeastOnce)],
            );
            if let (Packet::Subscribe(s), ProtocolVersion::V5) = (&mut subscribe, version) {
                s.properties.subscription_identifiers.push(7);
            }
            sub.send(&subscribe);
            assert!(matches!(sub.recv(), Packet::SubAck(_)));
            disconnect(sub);
            let mut publisher = Raw::connect(b.port, "publisher");
            publish_acked(&mut publisher, "keep/a", b"retained", 1, true);
            publish_acked(&mut publisher, "keep/gone", b"soon cleared", 2, true);
            publish_acked(&mut publisher, "keep/gone", b"", 3, true);
            for i in 0..3u8 {
                publish_acked(&mut publisher, "news/x", &[i], 10 + u16::from(i), false);
            }
            publish_acked(&mut publisher, "one/y", b"one", 20, false);
            drop(publisher);
            assert!(b.terminate().success());

            let b = broker(&name, &dir, "", threads);
            b.wait_for_log("Restored 1 retained messages, 1 sessions, 4 queued messages");
            let (mut sub, ack) = persistent(b.port, version, "keeper");
            // [MQTT-3.2.2-2] the session is still there.
            assert!(ack.session_present, "{version:?} at {threads} shards");
            let mut got = Vec::new();
            for _ in 0..4 {
                let p = sub.recv_publish();
                if version == ProtocolVersion::V5 && p.topic.as_str() == "news/x" {
                    assert_eq!(p.properties.subscription_identifiers.to_vec(), vec![7]);
                }
                match p.qos {
                    QoS::ExactlyOnce => {
                        sub.send(&Packet::PubRec(PubResponse::new(p.packet_id)));
                        assert_eq!(sub.recv(), Packet::PubRel(PubResponse::new(p.packet_id)));
                        sub.send(&Packet::PubComp(PubResponse::new(p.packet_id)));
                    }
                    _ => sub.send(&Packet::PubAck(PubResponse::new(p.packet_id))),
                }
                got.push((p.topic.to_string(), p.payload.to_vec(), p.qos));
            }
            assert_eq!(
                got,
                vec![
                    ("news/x".into(), vec![0], QoS::AtLeastOnce),
                    ("news/x".into(), vec![1], QoS::AtLeastOnce),
                    ("news/x".into(), vec![2], QoS::AtLeastOnce),
                    ("one/y".into(), b"one".to_vec(), QoS::AtLeastOnce),
                ]
            );
            // The subscriptions came back too: live messages flow.
            let mut publisher = Raw::connect(b.port, "publisher");
            publisher.send(&publish("news/live", b"live", QoS::AtMostOnce, 0, false));
            assert_eq!(&sub.recv_publish().payload[..], b"live");
            // The retained message, and not the cleared one.
            let mut late = Raw::connect(b.port, "late");
            late.subscribe(&[("keep/#", QoS::AtMostOnce)]);
            let p = late.recv_publish();
            assert_eq!(
                (p.topic.as_str(), &p.payload[..], p.retain),
                ("keep/a", &b"retained"[..], true)
            );
            late.expect_nothing(std::time::Duration::from_millis(200));
            drop(b);
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}

#[test]
fn qos2_state_both_ways_survives_a_restart() {
    let dir = store("qos2");
    let b = broker("persist-qos2", &dir, "", "1");
    // Outgoing: PUBREC came back and PUBREL went out; PUBCOMP never did.
    let (mut sub, _) = persistent(b.port, ProtocolVersion::V311, "receiver");
    sub.subscribe(&[("q", QoS::ExactlyOnce)]);
    // Incoming: a QoS 2 PUBLISH answered with PUBREC; its PUBREL never sent.
    let (mut publisher, _) = persistent(b.port, ProtocolVersion::V311, "sender");
    publisher.send(&publish("q", b"once", QoS::ExactlyOnce, 42, false));
    assert_eq!(publisher.recv(), Packet::PubRec(PubResponse::new(42)));
    let p = sub.recv_publish();
    sub.send(&Packet::PubRec(PubResponse::new(p.packet_id)));
    assert_eq!(sub.recv(), Packet::PubRel(PubResponse::new(p.packet_id)));
    drop((sub, publisher));
    assert!(b.terminate().success());

    let b = broker("persist-qos2", &dir, "", "1");
    let (mut sub, ack) = persistent(b.port, ProtocolVersion::V311, "receiver");
    assert!(ack.session_present);
    // [MQTT-4.4.0-1] PUBREL is what is resent, not the PUBLISH.
    assert_eq!(sub.recv(), Packet::PubRel(PubResponse::new(p.packet_id)));
    sub.send(&Packet::PubComp(PubResponse::new(p.packet_id)));
    let (mut publisher, ack) = persistent(b.port, ProtocolVersion::V311, "sender");
    assert!(ack.session_present);
    // The publisher resends its PUBLISH (DUP): packet id 42 still awaits PUBREL, so it is
    // not delivered again [MQTT-4.3.3-9]; PUBREL completes it.
    let mut again = publish("q", b"once", QoS::ExactlyOnce, 42, false);
    if let Packet::Publish(p) = &mut again {
        p.dup = true;
    }
    publisher.send(&again);
    assert_eq!(publisher.recv(), Packet::PubRec(PubResponse::new(42)));
    publisher.send(&Packet::PubRel(PubResponse::new(42)));
    assert_eq!(publisher.recv(), Packet::PubComp(PubResponse::new(42)));
    sub.expect_nothing(std::time::Duration::from_millis(300));
    drop(b);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_torn_journal_is_read_to_its_last_record_and_a_damaged_one_stops_the_start() {
    let dir = store("damage");
    let b = broker("persist-damage", &dir, "", "1");
    let mut publisher = Raw::connect(b.port, "publisher");
    publish_acked(&mut publisher, "keep/1", b"first", 1, true);
    publish_acked(&mut publisher, "keep/2", b"second", 2, true);
    drop(publisher);
    assert!(b.terminate().success());

    // A crash cut the last write short: the last record is left out, with a warning.
    let file = journal_files(&dir).pop().unwrap();
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 3]).unwrap();
    let b = broker("persist-damage", &dir, "", "1");
    b.wait_for_log("left out a torn last record");
    b.wait_for_log("Restored 1 retained messages");
    assert!(b.terminate().success());

    // A flipped byte inside: the broker does not start, and says which file.
    let file = journal_files(&dir).pop().unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[20] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();
    let log = refused_start("persist-damaged", &dir);
    assert!(
        log.contains(&file.display().to_string()) && log.contains("record at byte"),
        "{log}"
    );
    // Nothing was removed or rewritten.
    assert_eq!(std::fs::read(&file).unwrap(), bytes);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `persistence_on_damage set_aside`: the damaged journal is renamed aside (kept), the
/// broker starts without what it held, and says so.
#[test]
fn a_damaged_journal_can_be_set_aside() {
    let dir = store("aside");
    let b = broker("persist-aside", &dir, "", "1");
    let mut publisher = Raw::connect(b.port, "publisher");
    publish_acked(&mut publisher, "keep/1", b"first", 1, true);
    drop(publisher);
    assert!(b.terminate().success());
    let file = journal_files(&dir).pop().unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[20] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();
    let b = broker(
        "persist-aside",
        &dir,
        "persistence_on_damage set_aside\n",
        "1",
    );
    b.wait_for_log("set aside as");
    b.wait_for_log("Restored 0 retained messages");
    let aside = file.with_extension("journal.damaged");
    assert_eq!(std::fs::read(&aside).unwrap(), bytes, "kept as it was");
    drop(b);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// SIGUSR1 (Mosquitto's "save now"): each shard rewrites its journal from the live state;
/// what was superseded goes, what is live stays.
#[test]
fn sigusr1_compacts_the_journals() {
    let dir = store("compact");
    let b = broker("persist-compact", &dir, "", "1");
    let mut publisher = Raw::connect(b.port, "publisher");
    for i in 0..200u16 {
        let payload = vec![b'x'; 1000];
        publish_acked(&mut publisher, "keep/churn", &payload, i + 1, true);
    }
    publish_acked(&mut publisher, "keep/last", b"last", 500, true);
    let size = |dir: &Path| -> u64 {
        journal_files(dir)
            .iter()
            .map(|f| std::fs::metadata(f).unwrap().len())
            .sum()
    };
    let before = size(&dir);
    assert!(before > 200_000, "{before}");
    b.signal(libc::SIGUSR1);
    b.wait_for_log("Compacted ");
    let after = size(&dir);
    assert!(after < 10_000, "{before} -> {after}");
    drop(publisher);
    assert!(b.terminate().success());
    let store = dir.join("mosquitto.db.d");
    let names = || -> Vec<String> {
        let entries = std::fs::read_dir(&store).unwrap();
        entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert!(
        names().iter().all(|n| n.ends_with(".journal")),
        "{:?}",
        names()
    );
    // What a crash in the middle of a compaction leaves: its unfinished file, not read,
    // removed at the next start.
    std::fs::write(store.join("shard-0-1.journal.new"), b"MIDGEJNL cut short").unwrap();
    let b = broker("persist-compact", &dir, "", "1");
    b.wait_for_log("Restored 2 retained messages");
    assert!(
        names().iter().all(|n| n.ends_with(".journal")),
        "{:?}",
        names()
    );
    drop(b);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Expiry runs on while the broker is down: a 5.0 session expiring 1 s after its client
/// left, and a retained message expiring 1 s after it was published, are gone when the
/// broker comes back 1.5 s later; a session expiring in an hour is still there.
#[test]
fn expiry_runs_on_while_the_broker_is_down() {
    let dir = store("expiry");
    let b = broker("persist-expiry", &dir, "", "1");
    let mut short = connect_packet(ProtocolVersion::V5, "short", false, 60);
    short.properties.session_expiry_interval = Some(1);
    let (c, _) = Raw::connect_with(b.port, short.clone());
    disconnect(c);
    let (c, _) = persistent(b.port, ProtocolVersion::V5, "long");
    disconnect(c);
    let mut publisher = Raw::connect_with(
        b.port,
        connect_packet(ProtocolVersion::V5, "publisher", true, 60),
    )
    .0;
    let mut expiring = publish("keep/brief", b"brief", QoS::AtLeastOnce, 1, true);
    if let Packet::Publish(p) = &mut expiring {
        p.properties.message_expiry_interval = Some(1);
    }
    publisher.send(&expiring);
    assert!(matches!(publisher.recv(), Packet::PubAck(_)));
    let left_at = std::time::Instant::now();
    drop(publisher);
    assert!(b.terminate().success());
    // The downtime outlasts both expiries.
    std::thread::sleep(std::time::Duration::from_millis(1500).saturating_sub(left_at.elapsed()));
    let b = broker("persist-expiry", &dir, "", "1");
    b.wait_for_log("Restored 0 retained messages");
    let (_c, ack) = Raw::connect_with(b.port, short);
    assert!(
        !ack.session_present,
        "the 1 s session expired while the broker was down"
    );
    let (_c, ack) = persistent(b.port, ProtocolVersion::V5, "long");
    assert!(ack.session_present);
    drop(b);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A shared subscription's membership survives a restart: messages for the group reach
/// its persistent member, queued while it was away.
#[test]
fn shared_subscription_membership_survives_a_restart() {
    let dir = store("shared");
    let b = broker("persist-shared", &dir, "", "2");
    let (mut member, _) = persistent(b.port, ProtocolVersion::V5, "member");
    member.subscribe(&[("$share/group/jobs/#", QoS::AtLeastOnce)]);
    disconnect(member);
    assert!(b.terminate().success());

    let b = broker("persist-shared", &dir, "", "2");
    b.wait_for_log("Restored 0 retained messages, 1 sessions");
    let mut publisher = Raw::connect(b.port, "publisher");
    publish_acked(&mut publisher, "jobs/1", b"job", 1, false);
    let (mut member, ack) = persistent(b.port, ProtocolVersion::V5, "member");
    assert!(ack.session_present);
    let p = member.recv_publish();
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("jobs/1", &b"job"[..]));
    drop(b);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A 5.0 will waiting out its Will Delay Interval survives a restart: it is published when
/// due [MQTT-3.1.3-9], once, and not again after a second restart.
#[test]
fn a_delayed_will_waits_across_a_restart() {
    let dir = store("will");
    let b = broker("persist-will", &dir, "", "1");
    let (mut watcher, _) = persistent(b.port, ProtocolVersion::V5, "watcher");
    watcher.subscribe(&[("w", QoS::AtLeastOnce)]);
    disconnect(watcher);
    let mut dying = connect_with_will(
        ProtocolVersion::V5,
        "dying",
        QoS::AtLeastOnce,
        false,
        b"gone",
    );
    dying.clean_start = false;
    dying.properties.session_expiry_interval = Some(3600);
    if let Some(will) = &mut dying.will {
        will.properties.will_delay_interval = Some(2);
    }
    let (c, _) = Raw::connect_with(b.port, dying);
    let closed_at = std::time::Instant::now();
    drop(c);
    b.wait_for_log("Client dying closed its connection.");
    assert!(b.terminate().success());

    let b = broker("persist-will", &dir, "", "1");
    b.wait_for_log("Restored 0 retained messages, 2 sessions");
    let (mut watcher, ack) = persistent(b.port, ProtocolVersion::V5, "watcher");
    assert!(ack.session_present);
    let p = watcher.recv_publish();
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("w", &b"gone"[..]));
    assert!(
        closed_at.elapsed() >= std::time::Duration::from_secs(2),
        "not before its delay"
    );
    watcher.send(&Packet::PubAck(PubResponse::new(p.packet_id)));
    // A ping answered: the PUBACK was handled before the stop.
    watcher.send(&Packet::PingReq);
    assert_eq!(watcher.recv(), Packet::PingResp);
    drop(watcher);
    assert!(b.terminate().success());

    let b = broker("persist-will", &dir, "", "1");
    b.wait_for_log("Restored 0 retained messages, 2 sessions");
    let (mut watcher, ack) = persistent(b.port, ProtocolVersion::V5, "watcher");
    assert!(ack.session_present);
    watcher.expect_nothing(std::time::Duration::from_millis(300));
    drop(b);
    std::fs::remove_dir_all(&dir).unwrap();
}
