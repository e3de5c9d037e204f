//! Persistence (`persistence true`): retained messages, persistent sessions with their
//! subscriptions, queued messages and QoS state both ways survive a restart (SIGTERM) and a
//! crash (`kill -9`), at one and two shards, for 3.1.1 and 5.0 clients; a torn journal is
//! read up to its last whole record, a damaged one stops the start naming the file.

mod common;

use common::*;
use midge::codec::*;
use std::path::{Path, PathBuf};

/// A fresh store directory for one test.
fn store(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("midge-persist-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// midge with persistence in `dir` (as root, so the store stays this test's).
fn broker(name: &str, dir: &Path, extra: &str, threads: &str) -> Broker {
    let conf = config_file(
        name,
        &format!(
            "user root\nlistener 0 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}\n{extra}",
            dir.display()
        ),
    );
    Broker::start_configured(&["-c", &conf, "--threads", threads])
}

fn persistent(port: u16, version: ProtocolVersion, id: &str) -> (Raw, ConnAck) {
    let mut connect = connect_packet(version, id, false, 60);
    if version == ProtocolVersion::V5 {
        connect.properties.session_expiry_interval = Some(3600);
    }
    Raw::connect_with(port, connect)
}

fn disconnect(mut c: Raw) {
    c.send(&Packet::Disconnect(Disconnect::default()));
    c.expect_closed();
}

/// Publishes QoS 1 and waits for its PUBACK.
fn publish_acked(c: &mut Raw, topic: &str, payload: &[u8], packet_id: u16, retain: bool) {
    c.send(&publish(
        topic,
        payload,
        QoS::AtLeastOnce,
        packet_id,
        retain,
    ));
    assert!(matches!(c.recv(), Packet::PubAck(_)));
}

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

/// `persistence_sync always`, then `kill -9` in the middle of a QoS 1 and QoS 2 stream:
/// every message whose PUBACK or PUBREC the publisher had reaches the persistent
/// subscriber after the restart, QoS 2 once, in order. Three rounds on the same store,
/// killed after different numbers of acknowledgements, one just after SIGUSR1 asked for a
/// compaction; at one shard, and at two with the publisher on the other shard than the
/// subscriber's session (its acknowledgements wait for that shard's disk).
#[test]
fn acknowledged_messages_survive_a_crash() {
    for threads in ["1", "2"] {
        let dir = store(&format!("crash-{threads}"));
        let config = "persistence_sync always\nmax_queued_messages 0\n";
        let name = format!("persist-crash-{threads}");
        // A turn that took messages from another shard waits 30 ms before its journal write
        // (debug builds' fault injection, a slow disk): the subscriber's shard writes a
        // message well after the publisher's shard wrote its own records.
        let slow_disk = [("MIDGE_FAULT_COMMIT_DELAY_MS", "30")];
        let start = |dir: &Path| {
            let conf = config_file(
                &name,
                &format!(
                    "user root\nlistener 0 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}\n{config}",
                    dir.display()
                ),
            );
            Broker::spawn_env(&["-c", &conf, "--threads", threads], &slow_disk)
        };
        let mut b = start(&dir);
        let (mut sub, _) = persistent(b.port, ProtocolVersion::V311, "victim");
        sub.subscribe(&[("crash/#", QoS::ExactlyOnce)]);
        let mut victim_shard = shard_of(&b, &sub);
        disconnect(sub);
        for (round, (kill_after, compacting)) in [(37, false), (200, true), (411, false)]
            .into_iter()
            .enumerate()
        {
            let shards = threads.parse().unwrap();
            let acked = publish_until_killed(
                &b,
                round as u32,
                kill_after,
                compacting,
                (shards, victim_shard),
            );
            drop(b);
            b = start(&dir);
            let (got, shard) = receive_all(&b);
            victim_shard = shard;
            // Every acknowledged message, each once, in publishing order.
            for id in &acked {
                assert!(
                    got.contains(id),
                    "{threads} shards, round {round}: message {id} was acknowledged and lost"
                );
            }
            let mut sorted = got.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(
                sorted.len(),
                got.len(),
                "round {round}: a message came twice"
            );
            assert_eq!(sorted, got, "round {round}: out of order");
        }
        drop(b);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// The shard serving `client`'s connection (from the broker's debug log).
fn shard_of(b: &Broker, client: &Raw) -> usize {
    let port = client.stream.local_addr().unwrap().port();
    let line = b.wait_for_log(&format!(
        "Connection from 127.0.0.1:{port} is served by shard"
    ));
    line.trim_end_matches('.')
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Publishes QoS 1 and 2 (alternately) in batches of 10, at most 20 unacknowledged (the
/// broker's Receive Maximum for QoS 2), reading acknowledgements between batches, and kills
/// the broker once `kill_after` are acknowledged (with more on their way; `compacting`:
/// just after SIGUSR1). Returns what was acknowledged (`round` * 100,000 + number).
fn publish_until_killed(
    b: &Broker,
    round: u32,
    kill_after: usize,
    compacting: bool,
    (shards, victim_shard): (usize, usize),
) -> Vec<u32> {
    // With two shards, on the other one than the subscriber's session.
    let mut publisher = Raw::connect(b.port, "publisher");
    let mut tries = 0;
    while shards > 1 && shard_of(b, &publisher) == victim_shard {
        tries += 1;
        assert!(
            tries < 50,
            "every connection landed on shard {victim_shard}"
        );
        publisher = Raw::connect(b.port, "publisher");
    }
    let mut acked = Vec::new();
    let mut next = 1u16;
    let id = |packet_id: u16| round * 100_000 + u32::from(packet_id);
    let collect = |publisher: &mut Raw, acked: &mut Vec<u32>, wait_ms| {
        while let Some(packet) = publisher.poll_packet(std::time::Duration::from_millis(wait_ms)) {
            match packet {
                Packet::PubAck(r) => acked.push(id(r.packet_id)),
                Packet::PubRec(r) => {
                    acked.push(id(r.packet_id));
                    publisher.send(&Packet::PubRel(r));
                }
                Packet::PubComp(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    };
    let until = std::time::Instant::now() + DEADLINE;
    while acked.len() < kill_after {
        assert!(
            std::time::Instant::now() < until,
            "too few acknowledgements: {} of {}",
            acked.len(),
            next - 1
        );
        if usize::from(next) - 1 - acked.len() <= 10 {
            for _ in 0..10 {
                let qos = if next % 2 == 0 {
                    QoS::ExactlyOnce
                } else {
                    QoS::AtLeastOnce
                };
                let payload = id(next).to_be_bytes();
                publisher.send(&publish("crash/x", &payload, qos, next, false));
                next += 1;
            }
        }
        collect(&mut publisher, &mut acked, 10);
    }
    if compacting {
        b.signal(libc::SIGUSR1);
    }
    // SAFETY: kill(2) on the PID of the broker this test started.
    unsafe { libc::kill(b.pid() as i32, libc::SIGKILL) };
    collect(&mut publisher, &mut acked, 500);
    acked
}

/// The persistent subscriber reads what is queued for it, acknowledging each, and leaves
/// (its session stays); returns the message numbers in the order they came, and the shard
/// its session is on now.
fn receive_all(b: &Broker) -> (Vec<u32>, usize) {
    let (mut sub, ack) = persistent(b.port, ProtocolVersion::V311, "victim");
    let shard = shard_of(b, &sub);
    assert!(ack.session_present);
    let mut got = Vec::new();
    while let Some(packet) = sub.poll_packet(std::time::Duration::from_millis(500)) {
        let p = match packet {
            Packet::Publish(p) => p,
            Packet::PubRel(r) => {
                sub.send(&Packet::PubComp(r));
                continue;
            }
            other => panic!("unexpected {other:?}"),
        };
        got.push(u32::from_be_bytes(p.payload[..4].try_into().unwrap()));
        match p.qos {
            QoS::ExactlyOnce => sub.send(&Packet::PubRec(PubResponse::new(p.packet_id))),
            _ => sub.send(&Packet::PubAck(PubResponse::new(p.packet_id))),
        }
    }
    disconnect(sub);
    (got, shard)
}

fn journal_files(dir: &Path) -> Vec<PathBuf> {
    let store = dir.join("mosquitto.db.d");
    let mut files: Vec<PathBuf> = std::fs::read_dir(store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "journal"))
        .collect();
    files.sort();
    files
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
    let conf = config_file(
        "persist-damaged",
        &format!(
            "user root\nlistener 0 127.0.0.1\npersistence true\npersistence_location {}\n",
            dir.display()
        ),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_midge"))
        .args(io_backend_args())
        .args(["-c", &conf])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
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
