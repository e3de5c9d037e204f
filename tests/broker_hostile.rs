//! Hostile clients: what one can make the broker hold by what it leaves unread, or keeps
//! (replies and deliveries it never reads, topic aliases, retained messages), is bounded,
//! and the others are served meanwhile. Each test measures the broker's resident memory
//! and another client's round trip, at one shard and two. What one packet can make it hold
//! is in `broker_hostile_packets.rs`, what one SUBSCRIBE can in `broker_hostile_subscribe.rs`.

mod common;

use common::hostile::*;
use common::*;
use midge::codec::*;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Writes `chunk` over and over to client `name`'s `stream` until the broker has said it
/// holds that client for its unread output and its writes are pushed back (up to `total`
/// bytes); how many bytes were written. Not a timeout alone: a broker slowed down for a
/// moment (a loaded machine) must not end the writing before it has anything to hold.
fn write_until_held(
    broker: &Broker,
    name: &str,
    stream: &mut TcpStream,
    chunk: &[u8],
    total: usize,
) -> usize {
    let held = format!("client {name} is not reading what it is sent");
    stream
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let until = Instant::now() + 3 * DEADLINE;
    let mut written = 0;
    while written < total {
        match stream.write(&chunk[written % chunk.len()..]) {
            Ok(0) => break,
            Ok(n) => written += n,
            Err(e) if read_again(&e) => {
                if broker.has_log(&held) {
                    break;
                }
                assert!(Instant::now() < until, "{name} was never held");
            }
            Err(e) => panic!("writing as {name}: {e}"),
        }
    }
    written
}

/// Issue 28, finding 3: QoS 1 PUBLISHes whose payload is not the UTF-8 their Payload Format
/// Indicator says each get PUBACK 0x99 with a Reason String, larger than the PUBLISH; the
/// client reads none of them. The broker stops reading from it once its replies back up
/// (before: +277 MB for 40 MB sent).
#[test]
fn a_client_that_never_reads_its_replies_stops_being_read() {
    let _serial = one_at_a_time();
    let chunk = not_utf8_publishes();
    for threads in ["1", "2"] {
        let broker = Broker::start_with_env(&["--threads", threads], &[PURGE_AT_ONCE]);
        let mut other = Raw::connect(broker.port, "other");
        let before = rss_kib(broker.pid());
        let (mute, ack) = Raw::connect_with(
            broker.port,
            connect_packet(ProtocolVersion::V5, "mute", true, 0),
        );
        assert_eq!(ack.reason, ReasonCode::Success);
        let mut stream = mute.stream;
        let sent = write_until_held(&broker, "mute", &mut stream, &chunk, 40 << 20);
        let after = rss_kib(broker.pid());
        assert!(
            sent < 40 << 20,
            "the broker kept reading: {sent} bytes taken from a client that reads nothing"
        );
        assert!(
            after < before + 24 * 1024,
            "RSS grew from {before} KiB to {after} KiB for {sent} bytes sent"
        );
        let rtt = ping_round_trip(&mut other);
        assert!(
            rtt < Duration::from_secs(1),
            "another client waited {rtt:?}"
        );
        // Once it reads, it is read again: it gets its replies and can go on.
        let mut reader = stream.try_clone().unwrap();
        let draining = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while read_retrying(&mut reader, &mut buf).is_ok_and(|n| n > 0) {}
        });
        stream.set_write_timeout(Some(DEADLINE)).unwrap();
        stream.write_all(&chunk).expect("read again once it reads");
        stream.shutdown(std::net::Shutdown::Both).unwrap();
        draining.join().unwrap();
    }
}

/// Issue 28, finding 5: ten 5.0 subscribers allowing 65,535 topic aliases, sent messages on
/// 300 distinct topics of 60 KB, twice (before: every subscriber's connection kept a copy
/// of every topic, +195 MB for 500; 180 MB of copies for these 300). A connection's alias
/// table holds at most 64 KiB of topics; past it the oldest aliases go to new topics, and
/// each subscriber still reads every topic right. (The broker runs with `-v`: each delivery's
/// debug line carries its 60 KB topic, and the log's queue is bounded by bytes too; it was
/// by count alone, and held 190 MB of lines here.)
#[test]
fn outgoing_topic_aliases_hold_bounded_bytes() {
    let _serial = one_at_a_time();
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    const SUBSCRIBERS: usize = 10;
    const TOPICS: usize = 300;
    let topic = |i: usize| format!("t/{i}/{}", "x".repeat(60_000));
    for threads in ["1", "2"] {
        let broker = Broker::start_with_env(&["--threads", threads], &[PURGE_AT_ONCE]);
        let received = Arc::new(AtomicUsize::new(0));
        let readers: Vec<_> = (0..SUBSCRIBERS)
            .map(|n| {
                let mut connect = connect_packet(ProtocolVersion::V5, &format!("s{n}"), true, 60);
                connect.properties.topic_alias_maximum = Some(65_535);
                let (mut c, _) = Raw::connect_with(broker.port, connect);
                c.send(&subscribe(1, &[("t/#", QoS::AtMostOnce)]));
                assert!(matches!(c.recv(), Packet::SubAck(_)));
                let received = received.clone();
                std::thread::spawn(move || {
                    let mut aliases = std::collections::HashMap::<u16, String>::new();
                    for i in 0..2 * TOPICS {
                        let p = c.recv_publish();
                        let name = match p.properties.topic_alias {
                            Some(alias) if p.topic.is_empty() => aliases[&alias].clone(),
                            Some(alias) => {
                                aliases.insert(alias, p.topic.to_string());
                                p.topic.to_string()
                            }
                            None => p.topic.to_string(),
                        };
                        assert!(
                            name == topic(i % TOPICS),
                            "message {i} read on another topic"
                        );
                        received.fetch_add(1, Ordering::AcqRel);
                    }
                })
            })
            .collect();
        let before = rss_kib(broker.pid());
        let mut publisher = Raw::connect(broker.port, "publisher");
        for i in 0..2 * TOPICS {
            publisher.send(&publish(
                &topic(i % TOPICS),
                b"x",
                QoS::AtMostOnce,
                0,
                false,
            ));
            // Each message reaches every subscriber before the next goes: none is slow.
            let until = Instant::now() + DEADLINE;
            while received.load(Ordering::Acquire) < (i + 1) * SUBSCRIBERS {
                assert!(Instant::now() < until, "message {i} not delivered");
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        let after = rss_kib(broker.pid());
        for r in readers {
            r.join().unwrap();
        }
        assert!(
            after < before + 24 * 1024,
            "RSS grew from {before} KiB to {after} KiB"
        );
    }
}

/// Issue 28, finding 4: ten subscribers that never read, and four 8 MiB QoS 1 messages, with
/// `memory_limit 64 MiB` (before: RSS 12 -> 367 MB, each subscriber's socket holding its own
/// copy of every message). A QoS 1/2 message for a client whose output is past its bound
/// waits in its session's queue as a reference to the one message; the subscriber that
/// reads gets everything.
#[test]
fn qos1_copies_for_stalled_subscribers_stay_inside_memory_limit() {
    let _serial = one_at_a_time();
    const SIZE: usize = 8 << 20;
    let conf = config_file(
        "qos1-memory-limit",
        "listener 0 127.0.0.1\nallow_anonymous true\nmemory_limit 67108864\n",
    );
    for threads in ["1", "2"] {
        let broker = Broker::spawn_env(&["-c", &conf, "--threads", threads], &[PURGE_AT_ONCE]);
        let before = rss_kib(broker.pid());
        let stalled: Vec<Raw> = (0..10)
            .map(|i| {
                let mut c = Raw::connect(broker.port, &format!("stalled-{i}"));
                c.subscribe(&[("big", QoS::AtLeastOnce)]);
                c
            })
            .collect();
        let mut reader = Raw::connect(broker.port, "reader");
        reader.subscribe(&[("big", QoS::AtLeastOnce)]);
        let mut publisher = Raw::connect(broker.port, "publisher");
        let payload = vec![0x42; SIZE];
        for id in 1..=4 {
            publisher.send(&publish("big", &payload, QoS::AtLeastOnce, id, false));
            assert!(matches!(publisher.recv(), Packet::PubAck(_)));
            let p = reader.recv_publish();
            assert_eq!(p.payload.len(), SIZE);
            reader.send(&Packet::PubAck(PubResponse::new(p.packet_id)));
        }
        let after = rss_kib(broker.pid());
        assert!(
            after < before + 64 * 1024,
            "RSS grew from {before} KiB to {after} KiB"
        );
        drop(stalled);
    }
}

/// A client held for its unread output is not timed out by its keep alive meanwhile: the
/// broker is the one not reading it. Once it reads, it is served as before (keep alive 1 s,
/// three seconds without reading).
#[test]
fn a_client_held_for_its_output_keeps_its_connection() {
    let _serial = one_at_a_time();
    let chunk = not_utf8_publishes();
    let broker = Broker::start(&[]);
    let (slow, _) = Raw::connect_with(
        broker.port,
        connect_packet(ProtocolVersion::V5, "slow", true, 1),
    );
    let mut stream = slow.stream;
    let written = write_until_held(&broker, "slow", &mut stream, &chunk, 40 << 20);
    // Three keep alive periods of 1 s, reading nothing (the point of the test is the time).
    std::thread::sleep(Duration::from_secs(3));
    let mut reader = stream.try_clone().unwrap();
    reader.set_read_timeout(Some(DEADLINE)).unwrap();
    let draining = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let mut tail = Vec::new();
        while let Ok(n) = read_retrying(&mut reader, &mut buf) {
            if n == 0 {
                break;
            }
            tail.extend_from_slice(&buf[..n]);
            let keep = tail.len().saturating_sub(2);
            tail.drain(..keep);
            if tail == [0xD0, 0x00] {
                return true; // PINGRESP: still connected and served.
            }
        }
        false
    });
    stream.set_write_timeout(Some(DEADLINE)).unwrap();
    // The rest of the PUBLISH the last write left half sent, then a PINGREQ.
    stream
        .write_all(&NOT_UTF8_PUBLISH[written % NOT_UTF8_PUBLISH.len()..])
        .unwrap();
    stream.write_all(&[0xC0, 0x00]).unwrap();
    assert!(draining.join().unwrap(), "closed instead of served");
    assert!(!broker.has_log("Client slow has exceeded timeout"));
}

/// A retained message on `topic`, QoS 1, sent by `c`; the reason of its PUBACK.
fn retain_qos1(c: &mut Raw, topic: &str, payload: &[u8], packet_id: u16) -> ReasonCode {
    c.send(&publish(topic, payload, QoS::AtLeastOnce, packet_id, true));
    match c.recv() {
        Packet::PubAck(ack) => ack.reason,
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

/// Retained messages on topics of 200 empty levels (`0//////...`): 200 bytes on the wire
/// each, and every level a node of the store (before: 20,000 of them, 4 MB sent, held 2.4
/// GB). The store counts its levels and messages; with `memory_limit 64 MiB` it holds at
/// most 32 MiB: a 5.0 publisher is told 0x97 Quota exceeded past it, a 3.1.1 one is
/// disconnected unacknowledged (it has no other way to be told, and sends again later).
/// Replacing or removing a retained message is always taken.
#[test]
fn retained_messages_are_counted_by_level_and_bounded() {
    let _serial = one_at_a_time();
    let conf = config_file(
        "retained-bound",
        "listener 0 127.0.0.1\nallow_anonymous true\nmemory_limit 67108864\n",
    );
    for threads in ["1", "2"] {
        let broker = Broker::start_configured(&["-c", &conf, "--threads", threads]);
        let before = rss_kib(broker.pid());
        let (mut v5, _) = Raw::connect_with(
            broker.port,
            connect_packet(ProtocolVersion::V5, "deep-v5", true, 60),
        );
        let deep = |i: usize| format!("{i}{}", "/".repeat(200));
        // Deep topics from `from` on until refused; how many were taken.
        let fill = |v5: &mut Raw, from: usize| {
            let mut taken = 0;
            loop {
                match retain_qos1(v5, &deep(from + taken), b"x", 1) {
                    ReasonCode::QuotaExceeded => return taken,
                    ReasonCode::Success | ReasonCode::NoMatchingSubscribers => taken += 1,
                    other => panic!("PUBACK {other:?}"),
                }
                assert!(taken < 5_000, "no bound on retained levels");
            }
        };
        let mut stored = fill(&mut v5, 0);
        assert!(
            stored > 1_000,
            "only {stored} retained messages fit in 32 MiB"
        );
        broker.wait_for_log("the retained messages would hold more than 33554432 bytes");
        let during = rss_kib(broker.pid());
        assert!(
            during < before + 48 * 1024,
            "RSS grew from {before} KiB to {during} KiB"
        );
        // At the bound: a replacement no larger and a removal are taken, and the removal
        // makes room for others.
        let none = ReasonCode::NoMatchingSubscribers;
        assert_eq!(retain_qos1(&mut v5, &deep(0), b"y", 2), none);
        assert_eq!(retain_qos1(&mut v5, &deep(1), b"", 3), none);
        assert_eq!(retain_qos1(&mut v5, "new", b"z", 4), none);
        let refilled = fill(&mut v5, stored);
        assert!(refilled < 2, "{refilled} taken in the room of one");
        stored += refilled;
        // 3.1.1 has no reason codes: no PUBACK, and the connection ends.
        let mut v311 = Raw::connect(broker.port, "deep-v311");
        v311.send(&publish(&deep(stored + 1), b"x", QoS::AtLeastOnce, 1, true));
        assert!(v311.expect_closed().is_empty(), "closed, unacknowledged");
        // What was taken is there, each once.
        let mut reader = Raw::connect(broker.port, "reader");
        reader.subscribe(&[("#", QoS::AtMostOnce)]);
        let mut topics = std::collections::HashSet::new();
        while let Some(Packet::Publish(p)) = reader.poll_packet(Duration::from_secs(1)) {
            assert!(topics.insert(p.topic.to_string()), "{} twice", p.topic);
        }
        assert_eq!(
            topics.len(),
            stored,
            "all kept but one removed, and one new"
        );
        assert!(topics.contains("new") && !topics.contains(&deep(1)));
    }
}
