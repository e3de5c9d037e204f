//! Hostile clients: what one can make the broker hold is bounded, and the others are served
//! meanwhile. Each test measures the broker's resident memory and another client's round
//! trip, at one shard and two.

mod common;

use common::hostile::*;
use common::metrics::*;
use common::*;
use midge::codec::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Writes `chunk` over and over (each write going on where the last stopped, so that the
/// stream stays a run of whole chunks), up to `total` bytes, until a write makes no progress
/// for two seconds. Returns the bytes written.
fn write_until_pushed_back(stream: &mut TcpStream, chunk: &[u8], total: usize) -> usize {
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut written = 0;
    while written < total {
        match stream.write(&chunk[written % chunk.len()..]) {
            Ok(0) => break,
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    written
}

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

/// A 5.0 PUBLISH, QoS 1, topic "t", packet id 1, Payload Format Indicator 1, payload FF FF:
/// answered with PUBACK 0x99 and a Reason String, larger than itself.
const NOT_UTF8_PUBLISH: [u8; 12] = [0x32, 10, 0, 1, b't', 0, 1, 2, 0x01, 1, 0xFF, 0xFF];

/// 8,192 of them, to write over and over.
fn not_utf8_publishes() -> Vec<u8> {
    NOT_UTF8_PUBLISH.repeat(8192)
}

/// Whether the broker has closed `stream` (reading and discarding what it sent).
fn closed_by_broker(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(1)))
        .unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if read_again(&e) => return false,
            Err(_) => return true,
        }
    }
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

/// Issue 28, finding 6: connections announcing the largest packet MQTT allows as their
/// CONNECT, with no credentials. A packet before CONNECT is accepted may be only as large as
/// a CONNECT needs (512 KiB): the broker closes them on reading the length (before: 877 MB
/// for three such connections).
#[test]
fn an_oversized_connect_is_refused_from_its_length() {
    let _serial = one_at_a_time();
    for threads in ["1", "2"] {
        let broker = Broker::start_with_env(&["--threads", threads], &[PURGE_AT_ONCE]);
        let before = rss_kib(broker.pid());
        let mut hostile: Vec<TcpStream> = (0..3)
            .map(|_| {
                let mut s = TcpStream::connect(("127.0.0.1", broker.port)).unwrap();
                // CONNECT, remaining length 268,435,455, the start of a 3.1.1 header.
                s.write_all(&[0x10, 0xFF, 0xFF, 0xFF, 0x7F, 0, 4, b'M', b'Q', b'T', b'T'])
                    .unwrap();
                s
            })
            .collect();
        let filler = vec![0u8; 1 << 20];
        for s in &mut hostile {
            // Up to 64 MiB each, until the broker's close stops it.
            write_until_pushed_back(s, &filler, 64 << 20);
        }
        let until = Instant::now() + DEADLINE;
        while !hostile.iter_mut().all(closed_by_broker) {
            assert!(Instant::now() < until, "an oversized CONNECT was kept open");
            std::thread::sleep(Duration::from_millis(10));
        }
        let after = rss_kib(broker.pid());
        assert!(
            after < before + 8 * 1024,
            "RSS grew from {before} KiB to {after} KiB"
        );
        broker.wait_for_log("disconnected due to oversize packet");
        // A CONNECT with every string at a large legal size is still taken.
        let mut big = connect_packet(ProtocolVersion::V311, "big", true, 60);
        big.username = Some(MqttStr::new(&"u".repeat(60_000)).unwrap());
        big.password = Some(vec![b'p'; 60_000].into());
        big.will = Some(Will {
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Properties::default(),
            topic: MqttStr::new(&"w".repeat(60_000)).unwrap(),
            payload: vec![b'x'; 65_000].into(),
        });
        let (_big, ack) = Raw::connect_with(broker.port, big);
        assert_eq!(ack.reason, ReasonCode::Success);
    }
}

/// Issue 28, finding 6: what connections hold before their CONNECT is accepted has a
/// broker-wide bound (a quarter of memory_limit here: 4,000,000 bytes). Sixteen
/// connections each send 400 KiB of a 500 KiB CONNECT and wait: those past the bound are
/// closed, an ordinary client still connects, and what the closed ones held is given back.
#[test]
fn partial_connects_together_hold_at_most_their_bound() {
    let _serial = one_at_a_time();
    let conf = config_file(
        "preconnect-bound",
        "listener 0 127.0.0.1\nallow_anonymous true\nmemory_limit 16000000\n\
         metrics_listener 127.0.0.1:0\n",
    );
    // Each holds 409,604 bytes, counted in 4 KiB units beyond the first: 409,600.
    const HELD: f64 = 409_600.0;
    let partial = |port: u16| {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        // CONNECT of 500 KiB (remaining length 512,000 - 4 as a varint), then 400 KiB.
        let len: u32 = 500 * 1024 - 4;
        let header = [
            0x10,
            0x80 | (len & 0x7F) as u8,
            0x80 | ((len >> 7) & 0x7F) as u8,
            (len >> 14) as u8,
        ];
        s.write_all(&header).unwrap();
        s.set_write_timeout(Some(DEADLINE)).unwrap();
        // The broker may close it before it has taken everything.
        let _ = s.write_all(&vec![0u8; 400 * 1024]);
        s
    };
    for threads in ["1", "2"] {
        let broker = Broker::spawn_env(&["-c", &conf, "--threads", threads], &[PURGE_AT_ONCE]);
        let metrics = metrics_port(&broker);
        let before = rss_kib(broker.pid());
        let mut hostile: Vec<TcpStream> = (0..16).map(|_| partial(broker.port)).collect();
        // Nine fit under 4,000,000 bytes; each closing leaves the others above 3,590,400, so
        // exactly nine stay once everything is read.
        wait_for_sample(metrics, "midge_preconnect_bytes", |v| v == 9.0 * HELD);
        let closed = hostile
            .iter_mut()
            .map(closed_by_broker)
            .filter(|&c| c)
            .count();
        assert_eq!(closed, 7, "the bound is 4,000,000 bytes");
        broker.wait_for_log("that have not sent a whole CONNECT hold more than 4000000 bytes");
        let after = rss_kib(broker.pid());
        assert!(
            after < before + 16 * 1024,
            "RSS grew from {before} KiB to {after} KiB"
        );
        let mut ordinary = Raw::connect(broker.port, "ordinary");
        assert!(ping_round_trip(&mut ordinary) < Duration::from_secs(1));
        // Those that go give back what they held, and as many fit again.
        drop(hostile);
        wait_for_sample(metrics, "midge_preconnect_bytes", |v| v == 0.0);
        let mut again: Vec<TcpStream> = (0..9).map(|_| partial(broker.port)).collect();
        wait_for_sample(metrics, "midge_preconnect_bytes", |v| v == 9.0 * HELD);
        assert!(!again.iter_mut().any(closed_by_broker));
    }
}

/// A 5.0 PUBLISH, QoS 1, retained, on `topic`: a one-byte payload behind `pairs` User
/// Properties, each an empty key and a value of `value_len` bytes `v`.
fn publish_of_user_properties(topic: &str, pairs: usize, value_len: usize) -> Vec<u8> {
    let pair_len = 5 + value_len;
    let mut body = Vec::with_capacity(16 + topic.len() + pairs * pair_len);
    body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(&1u16.to_be_bytes());
    put_varint(&mut body, (pairs * pair_len) as u32);
    let mut pair = vec![0x26, 0, 0];
    pair.extend_from_slice(&(value_len as u16).to_be_bytes());
    pair.resize(pair_len, b'v');
    for _ in 0..pairs {
        body.extend_from_slice(&pair);
    }
    body.push(b'x');
    let mut packet = vec![0x33];
    put_varint(&mut packet, body.len() as u32);
    packet.extend_from_slice(&body);
    packet
}

/// Issue 28, finding 2: 5.0 PUBLISHes of 20 MB of empty User Properties, retained (before:
/// +240 MB each, as each 5-byte pair was kept as two 32-byte strings). A packet costs at
/// most a small multiple of its size: User Properties are kept as their bytes. (A packet
/// carries at most `USER_PROPERTIES_MAX` of them, so these are 65,536 pairs of 320 bytes.)
#[test]
fn user_properties_cost_what_they_weigh() {
    let _serial = one_at_a_time();
    const PAIRS: usize = USER_PROPERTIES_MAX;
    const VALUE: usize = 315;
    const SIZE: usize = PAIRS * (5 + VALUE);
    for threads in ["1", "2"] {
        let broker = Broker::start_with_env(&["--threads", threads], &[PURGE_AT_ONCE]);
        let (mut publisher, ack) = Raw::connect_with(
            broker.port,
            connect_packet(ProtocolVersion::V5, "heavy", true, 60),
        );
        assert_eq!(ack.reason, ReasonCode::Success);
        let before = rss_kib(broker.pid());
        for i in 0..3 {
            publisher.send_bytes(&publish_of_user_properties(
                &format!("heavy/{i}"),
                PAIRS,
                VALUE,
            ));
            assert!(matches!(publisher.recv(), Packet::PubAck(_)));
        }
        let grown_kib = rss_kib(broker.pid()).saturating_sub(before);
        let sent_kib = 3 * SIZE as u64 / 1024;
        assert!(
            grown_kib < 2 * sent_kib,
            "RSS grew by {grown_kib} KiB for {sent_kib} KiB of retained messages"
        );
        // They are delivered whole, every pair in its place.
        let (mut subscriber, _) = Raw::connect_with(
            broker.port,
            connect_packet(ProtocolVersion::V5, "reader", true, 60),
        );
        subscriber.send(&subscribe(1, &[("heavy/0", QoS::AtMostOnce)]));
        assert!(matches!(subscriber.recv(), Packet::SubAck(_)));
        let p = subscriber.recv_publish();
        assert_eq!(p.properties.user_properties.len(), PAIRS);
        assert!(p
            .properties
            .user_properties
            .iter()
            .all(|(k, v)| k.is_empty() && v.len() == VALUE));
    }
}

/// A packet of millions of User Properties (empty pairs, five bytes each) took a shard's
/// turn for 250 ms per 20 MB to decode, other clients waiting. One packet may carry
/// `USER_PROPERTIES_MAX` (65,536); one more is refused with DISCONNECT 0x97 Quota exceeded
/// [MQTT-4.13.2-1], a bound of midge's own. Another client's ping stays short meanwhile.
#[test]
fn user_properties_past_their_bound_are_refused() {
    let _serial = one_at_a_time();
    Broker::each_threads(&[], |broker| {
        let mut bystander = Raw::connect(broker.port, "bystander");
        let (mut publisher, _) = Raw::connect_with(
            broker.port,
            connect_packet(ProtocolVersion::V5, "many-props", true, 60),
        );
        publisher.send_bytes(&publish_of_user_properties("t", USER_PROPERTIES_MAX, 0));
        assert!(matches!(publisher.recv(), Packet::PubAck(_)));
        // Refused as a packet, before it is a message: no PUBACK.
        publisher.send_bytes(&publish_of_user_properties("t", USER_PROPERTIES_MAX + 1, 0));
        let last = publisher.expect_closed();
        let Some(Packet::Disconnect(d)) = last.last() else {
            panic!("expected DISCONNECT, got {last:?}")
        };
        assert_eq!(d.reason, ReasonCode::QuotaExceeded);
        assert!(ping_round_trip(&mut bystander) < Duration::from_millis(250));
    });
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

/// What a large message holds is shared by its subscribers, properties included: ten 5.0
/// subscribers that never read, and one message of 8 MB of User Properties and a one-byte
/// payload (before: each subscriber's output held its own copy, 80 MB).
#[test]
fn a_large_encoding_is_shared_by_its_subscribers() {
    let _serial = one_at_a_time();
    const PAIRS: usize = 32 * 1024;
    const VALUE: usize = 251;
    const SIZE: usize = PAIRS * (5 + VALUE);
    for threads in ["1", "2"] {
        let broker = Broker::start_with_env(&["--threads", threads], &[PURGE_AT_ONCE]);
        let stalled: Vec<Raw> = (0..10)
            .map(|i| {
                let (mut c, _) = Raw::connect_with(
                    broker.port,
                    connect_packet(ProtocolVersion::V5, &format!("props-{i}"), true, 60),
                );
                c.send(&subscribe(1, &[("heavy/#", QoS::AtMostOnce)]));
                assert!(matches!(c.recv(), Packet::SubAck(_)));
                c
            })
            .collect();
        let (mut publisher, _) = Raw::connect_with(
            broker.port,
            connect_packet(ProtocolVersion::V5, "props-pub", true, 60),
        );
        let before = rss_kib(broker.pid());
        let mut packet = publish_of_user_properties("heavy/0", PAIRS, VALUE);
        packet[0] = 0x32; // QoS 1, not retained: the PUBACK says it was routed.
        publisher.send_bytes(&packet);
        assert!(matches!(publisher.recv(), Packet::PubAck(_)));
        let after = rss_kib(broker.pid());
        assert!(
            after < before + 3 * (SIZE as u64 / 1024),
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
