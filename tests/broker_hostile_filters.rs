//! Hostile clients and many filters: a SUBSCRIBE or UNSUBSCRIBE of thousands of filters
//! goes a slice a loop turn, its client's later packets waiting for it, and what it makes
//! the broker owe (retained scans, retained requests) is found and owed a slice at a time;
//! a client with many subscriptions, shared or not, leaves a slice at a time. Another
//! client on the same shard is served meanwhile.

mod common;

use common::hostile::*;
use common::*;
use midge::codec::*;
use std::time::{Duration, Instant};

/// Publishes a retained message on `topic` from `c` and waits for its PUBACK (it is
/// stored by then).
fn retain(c: &mut Raw, topic: &str, payload: &[u8]) {
    c.send(&publish(topic, payload, QoS::AtLeastOnce, 1, true));
    assert!(matches!(c.recv(), Packet::PubAck(_)));
}

/// `filters` as packets of at most `TOPIC_FILTERS_MAX` each (`packet` makes one from its
/// id and filters), then a QoS 0 PUBLISH on `topic` and a PINGREQ, as one write's bytes.
fn in_packets(
    filters: &[String],
    packet: impl Fn(u16, &[String]) -> Packet,
    topic: &str,
    version: ProtocolVersion,
) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (i, batch) in filters.chunks(TOPIC_FILTERS_MAX).enumerate() {
        bytes.extend_from_slice(&packet(i as u16 + 1, batch).to_bytes(version).unwrap());
    }
    let own = publish(topic, b"own", QoS::AtMostOnce, 0, false);
    bytes.extend_from_slice(&own.to_bytes(version).unwrap());
    bytes.extend_from_slice(&Packet::PingReq.to_bytes(version).unwrap());
    bytes
}

/// Sends `bytes` on `client` and reads the answers up to the PINGRESP, while `bystander`
/// pings; returns the client, its answers and the bystander's longest wait.
fn answered_while_pinging(
    mut client: Raw,
    bytes: Vec<u8>,
    bystander: &mut Raw,
) -> (Raw, Vec<Packet>, Duration) {
    let answering = std::thread::spawn(move || {
        client.send_bytes(&bytes);
        let mut answers = Vec::new();
        loop {
            let packet = client.recv();
            let last = matches!(packet, Packet::PingResp);
            answers.push(packet);
            if last {
                return (client, answers);
            }
        }
    });
    let mut longest = Duration::ZERO;
    while !answering.is_finished() {
        longest = longest.max(ping_round_trip(bystander));
    }
    let (client, answers) = answering.join().unwrap();
    (client, answers, longest)
}

/// A SUBSCRIBE may list 16,384 filters: one of new filters held its shard for 24-41 ms
/// (release build), four in one write over 100 ms. A packet's filters now go 512 a loop
/// turn, the client's later packets waiting for them, as the sequence of SUBSCRIBEs the
/// spec says one packet is [MQTT-3.8.4-4]: the client's own PUBLISH behind four of them
/// comes back to it after their SUBACKs (each with a reason for every filter), and its
/// PINGRESP after that; the same for UNSUBSCRIBE, after which nothing comes. Another
/// client's pings meanwhile are answered within `STALL_MAX`.
#[test]
fn the_filters_of_a_subscribe_go_a_slice_a_turn_in_the_order_sent() {
    let _serial = one_at_a_time();
    const PACKETS: usize = 4;
    let v5 = ProtocolVersion::V5;
    for threads in ["1", "2"] {
        let broker = Broker::start(&["--threads", threads]);
        let mut bystander = Raw::connect(broker.port, "bystander");
        let many = Raw::connect_with(broker.port, connect_packet(v5, "many", true, 60)).0;
        let filters: Vec<String> = (0..PACKETS * TOPIC_FILTERS_MAX)
            .map(|i| format!("f/{i}/+/x"))
            .collect();
        let topic = format!("f/{}/y/x", filters.len() - 1);
        let subscribing = |id: u16, batch: &[String]| subscribe_to(id, batch, QoS::AtMostOnce);
        let bytes = in_packets(&filters, subscribing, &topic, v5);
        let (many, answers, subscribing_wait) = answered_while_pinging(many, bytes, &mut bystander);
        assert_eq!(answers.len(), PACKETS + 2, "{:?}", answers.last());
        for (i, answer) in answers[..PACKETS].iter().enumerate() {
            let Packet::SubAck(ack) = answer else {
                panic!("expected SUBACK {}, got {answer:?}", i + 1)
            };
            assert_eq!(ack.packet_id as usize, i + 1);
            assert_eq!(
                ack.reasons,
                vec![ReasonCode::GRANTED_QOS_0; TOPIC_FILTERS_MAX]
            );
        }
        assert!(
            matches!(&answers[PACKETS], Packet::Publish(p) if p.payload[..] == b"own"[..]),
            "{:?}",
            answers[PACKETS]
        );
        let unsubscribing = |id: u16, batch: &[String]| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id: id,
                properties: Properties::default(),
                filters: batch.iter().map(|f| s(f)).collect(),
            })
        };
        let bytes = in_packets(&filters, unsubscribing, &topic, v5);
        let (mut many, answers, unsubscribing_wait) =
            answered_while_pinging(many, bytes, &mut bystander);
        assert_eq!(answers.len(), PACKETS + 1, "{:?}", answers.last());
        for (i, answer) in answers[..PACKETS].iter().enumerate() {
            let Packet::UnsubAck(ack) = answer else {
                panic!("expected UNSUBACK {}, got {answer:?}", i + 1)
            };
            assert_eq!(ack.packet_id as usize, i + 1);
            assert_eq!(ack.reasons, vec![ReasonCode::Success; TOPIC_FILTERS_MAX]);
        }
        many.expect_nothing(Duration::from_millis(100));
        for wait in [subscribing_wait, unsubscribing_wait] {
            assert!(
                wait < STALL_MAX,
                "another client waited {wait:?} ({threads} shards)"
            );
        }
    }
}

/// A client whose output is backed up keeps the scans of retained messages its new
/// subscriptions are owed (at most 4,096): each new one was compared with all of them, and
/// a SUBSCRIBE of 16,384 wildcard filters held the shard for 54-61 ms (release build). A
/// scan is now found by its filter at once; another client's pings wait under `STALL_MAX`.
#[test]
fn the_scans_owed_to_a_client_that_does_not_read_are_found_at_once() {
    let _serial = one_at_a_time();
    let broker = Broker::start(&["--threads", "1"]);
    let mut retainer = Raw::connect(broker.port, "retainer");
    for i in 0..40 {
        retainer.send(&publish(
            &format!("big/{i}"),
            &[b'x'; 500_000],
            QoS::AtMostOnce,
            0,
            true,
        ));
    }
    retain(&mut retainer, "big/last", b"x");
    let mut bystander = Raw::connect(broker.port, "bystander");
    // Told by a message of `slow`'s, sent after its SUBSCRIBEs (which its later packets
    // wait for), that they were handled: not by a debug line, which a log flooded by
    // 32,768 filter lines may drop (as it should, counted).
    let mut watcher = Raw::connect(broker.port, "watcher");
    watcher.subscribe(&[("handled", QoS::AtMostOnce)]);
    let mut slow = Raw::connect(broker.port, "slow");
    // Owed 20 MB it never reads, more than its socket takes: its scan of `big/#` and the
    // scans after it wait.
    slow.send(&subscribe(1, &[("big/#", QoS::AtMostOnce)]));
    let mut bytes = Vec::new();
    for k in 0..2 {
        let filters: Vec<String> = (0..TOPIC_FILTERS_MAX)
            .map(|i| format!("f/{k}/{i}/+"))
            .collect();
        bytes.extend_from_slice(
            &subscribe_to(k + 2, &filters, QoS::AtMostOnce)
                .to_bytes(slow.version)
                .unwrap(),
        );
    }
    let handled = publish("handled", b"", QoS::AtMostOnce, 0, false);
    bytes.extend_from_slice(&handled.to_bytes(slow.version).unwrap());
    slow.send_bytes(&bytes);
    let mut longest = Duration::ZERO;
    let until = Instant::now() + DEADLINE;
    while watcher.poll_packet(Duration::from_millis(1)).is_none() {
        assert!(Instant::now() < until, "the SUBSCRIBEs were not handled");
        longest = longest.max(ping_round_trip(&mut bystander));
    }
    broker.wait_for_log("scans of retained messages");
    assert!(longest < STALL_MAX, "another client waited {longest:?}");
}

/// Retained messages are owed to new subscriptions a slice a turn too, after the SUBACK,
/// each to the subscription as it was made: one unsubscribed meanwhile is owed none
/// [MQTT-3.10.4-2], nor one made again with Retain Handling 2 [MQTT-3.3.1-11]. Behind one
/// client's SUBSCRIBE of 16,384 filters, another's 5.0 SUBSCRIBE (Retain Handling 0),
/// UNSUBSCRIBE, SUBSCRIBE (Retain Handling 2) of a topic with a retained message, in one
/// write: it gets the SUBACK, the UNSUBACK, the SUBACK, and no message after them.
#[test]
fn a_subscription_gone_before_its_retained_messages_are_owed_gets_none() {
    let _serial = one_at_a_time();
    let broker = Broker::start(&["--threads", "1"]);
    let mut retainer = Raw::connect(broker.port, "retainer");
    retain(&mut retainer, "kept", b"x");
    let mut many = Raw::connect(broker.port, "many");
    let v5 = ProtocolVersion::V5;
    let mut brief = Raw::connect_with(broker.port, connect_packet(v5, "brief", true, 60)).0;
    let filters: Vec<String> = (0..TOPIC_FILTERS_MAX).map(|i| format!("e/{i}")).collect();
    many.send(&subscribe_to(1, &filters, QoS::AtMostOnce));
    let again = Packet::Subscribe(Subscribe {
        packet_id: 3,
        properties: Properties::default(),
        filters: vec![(
            s("kept"),
            SubscriptionOptions {
                retain_handling: RetainHandling::DoNotSend,
                ..Default::default()
            },
        )],
    });
    let unsubscribe = Packet::Unsubscribe(Unsubscribe {
        packet_id: 2,
        properties: Properties::default(),
        filters: vec![s("kept")],
    });
    let mut bytes = Vec::new();
    for packet in [
        subscribe(1, &[("kept", QoS::AtMostOnce)]),
        unsubscribe,
        again,
    ] {
        bytes.extend_from_slice(&packet.to_bytes(v5).unwrap());
    }
    brief.send_bytes(&bytes);
    let mut answers = Vec::new();
    while answers.len() < 3 {
        match brief.recv() {
            Packet::Publish(_) => {} // #1's, before the UNSUBACK: in time.
            answer => answers.push(answer),
        }
    }
    assert!(
        matches!(
            &answers[..],
            [Packet::SubAck(_), Packet::UnsubAck(_), Packet::SubAck(_)]
        ),
        "{answers:?}"
    );
    assert!(matches!(many.recv(), Packet::SubAck(_)));
    brief.expect_nothing(Duration::from_millis(300));
}

/// Clients that send a SUBSCRIBE of 16,384 filters and a DISCONNECT and close their
/// sockets: their packets go a slice a turn as ever (four closing at once do not pile
/// them into one turn: another client's pings wait under `STALL_MAX`), and the DISCONNECT after
/// each is read before its connection goes (no will [MQTT-3.1.2-10]). Their sessions, kept,
/// have every subscription, and are owed the retained message of one.
#[test]
fn a_subscribe_before_the_peer_closes_is_handled_before_it_goes() {
    let _serial = one_at_a_time();
    const LEAVING: usize = 4;
    // Not verbose: 65,536 subscribe lines at once outrun the log, which then drops lines
    // (counted), and this test waits for its disconnect lines.
    let broker = Broker::start_quiet(&["-p", "0", "--threads", "1"]);
    let mut watcher = Raw::connect(broker.port, "watcher");
    watcher.subscribe(&[("w", QoS::AtMostOnce)]);
    retain(&mut watcher, "g/0", b"kept");
    let filters: Vec<String> = (0..TOPIC_FILTERS_MAX).map(|i| format!("g/{i}")).collect();
    let v3 = ProtocolVersion::V311;
    let mut leaving = Vec::new();
    for i in 0..LEAVING {
        let id = format!("leaving-{i}");
        let mut connect = connect_with_will(v3, &id, QoS::AtMostOnce, false, b"gone");
        connect.clean_start = false;
        let (client, _) = Raw::connect_with(broker.port, connect);
        let mut bytes = subscribe_to(1, &filters, QoS::AtLeastOnce)
            .to_bytes(v3)
            .unwrap()
            .to_vec();
        let disconnect = Packet::Disconnect(Default::default());
        bytes.extend_from_slice(&disconnect.to_bytes(v3).unwrap());
        leaving.push((client, bytes));
    }
    let mut bystander = Raw::connect(broker.port, "bystander");
    for (client, bytes) in &mut leaving {
        client.send_bytes(bytes);
        client.stream.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let again = |i: usize| connect_packet(v3, &format!("leaving-{i}"), false, 60);
    let mut longest = Duration::ZERO;
    let until = Instant::now() + DEADLINE;
    while broker.count_log("disconnected.") < LEAVING {
        assert!(Instant::now() < until, "not all of them went");
        longest = longest.max(ping_round_trip(&mut bystander));
    }
    for i in 0..LEAVING {
        broker.wait_for_log(&format!("Client leaving-{i} disconnected."));
        let (mut back, ack) = Raw::connect_with(broker.port, again(i));
        assert!(ack.session_present);
        let last = &filters[TOPIC_FILTERS_MAX - 1];
        watcher.send(&publish(last, b"last", QoS::AtMostOnce, 0, false));
        let mut payloads = Vec::new();
        for _ in 0..2 {
            let p = back.recv_publish();
            if p.qos != QoS::AtMostOnce {
                back.send(&Packet::PubAck(PubResponse::new(p.packet_id)));
            }
            payloads.push(p.payload.to_vec());
        }
        payloads.sort();
        assert_eq!(payloads, [b"kept".to_vec(), b"last".to_vec()]);
    }
    watcher.expect_nothing(Duration::from_millis(100));
    assert!(longest < STALL_MAX, "another client waited {longest:?}");
}

/// A session taken over while its SUBSCRIBE goes a slice a turn (behind four others): the
/// old connection is closed [MQTT-3.1.4-3], the filters handled so far stay subscribed, and
/// the retained messages they are owed go to the session, so that the new connection gets
/// them.
#[test]
fn a_session_taken_over_during_its_subscribe_keeps_what_it_was_owed() {
    let _serial = one_at_a_time();
    let broker = Broker::start(&["--threads", "1"]);
    let mut retainer = Raw::connect(broker.port, "retainer");
    retain(&mut retainer, "r/0", b"first");
    let mut busy = Vec::new();
    for k in 0..4 {
        let mut c = Raw::connect(broker.port, &format!("busy-{k}"));
        let filters: Vec<String> = (0..TOPIC_FILTERS_MAX)
            .map(|i| format!("b{k}/{i}"))
            .collect();
        c.send(&subscribe_to(1, &filters, QoS::AtMostOnce));
        busy.push(c);
    }
    let v3 = ProtocolVersion::V311;
    let (mut old, _) = Raw::connect_with(broker.port, connect_packet(v3, "taken", false, 60));
    let filters: Vec<String> = (0..TOPIC_FILTERS_MAX).map(|i| format!("r/{i}")).collect();
    old.send(&subscribe_to(1, &filters, QoS::AtLeastOnce));
    broker.wait_for_log("taken 1 r/0");
    let (mut new, ack) = Raw::connect_with(broker.port, connect_packet(v3, "taken", false, 60));
    assert!(ack.session_present);
    let owed = new.recv_publish();
    assert_eq!((&owed.topic[..], &owed.payload[..]), ("r/0", &b"first"[..]));
    assert!(owed.retain);
    assert!(!old
        .expect_closed()
        .iter()
        .any(|p| matches!(p, Packet::SubAck(_))));
}

/// A client with 100,000 shared subscriptions (the most one may have) leaving: they left
/// the trie all at once, so that no share group would pick a member that is gone, and held
/// its shard for 133-139 ms (release build). They now leave a slice a turn like the rest,
/// and every group passes the ended session over meanwhile, on every shard: the other
/// member of `$share/g/t` gets all 20 QoS 1 messages published while they leave, and
/// another client's pings wait under 100 ms.
#[test]
fn a_client_with_many_shared_subscriptions_leaves_a_slice_at_a_time() {
    let _serial = one_at_a_time();
    const FILTERS: usize = 100_000;
    let broker = Broker::start(&["--threads", "2"]);
    let mut other = Raw::connect(broker.port, "other-member");
    other.subscribe(&[("$share/g/t", QoS::AtLeastOnce)]);
    let mut many = Raw::connect(broker.port, "many");
    let mut filters: Vec<String> = (1..FILTERS).map(|i| format!("$share/g/f/{i}")).collect();
    filters.push("$share/g/t".to_string());
    for batch in filters.chunks(TOPIC_FILTERS_MAX) {
        many.send(&subscribe_to(1, batch, QoS::AtLeastOnce));
        assert!(matches!(many.recv(), Packet::SubAck(_)));
    }
    // One on each shard, pinging all along.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pinging: Vec<_> = (0..2)
        .map(|i| {
            let mut bystander = Raw::connect(broker.port, &format!("bystander-{i}"));
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut longest = Duration::ZERO;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    longest = longest.max(ping_round_trip(&mut bystander));
                }
                longest
            })
        })
        .collect();
    let mut publisher = Raw::connect(broker.port, "publisher");
    many.send(&Packet::Disconnect(Default::default()));
    broker.wait_for_log("Client many disconnected.");
    for id in 1..=20 {
        publisher.send(&publish("t", b"m", QoS::AtLeastOnce, id, false));
        assert!(matches!(publisher.recv(), Packet::PubAck(_)));
    }
    for _ in 0..20 {
        let p = other.recv_publish();
        other.send(&Packet::PubAck(PubResponse::new(p.packet_id)));
    }
    // The rest of them leave over the next turns: a few hundred milliseconds of pings.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let longest = (pinging.into_iter())
        .map(|p| p.join().unwrap())
        .max()
        .unwrap();
    other.expect_nothing(Duration::from_millis(100));
    assert!(
        longest < Duration::from_millis(100),
        "another client waited {longest:?}"
    );
}

/// A share group whose only member's session ended is no match while that session's
/// subscriptions are still leaving the trie: a 5.0 publisher's QoS 1 PUBLISH to it gets
/// PUBACK 0x10 No matching subscribers, as when the group is gone.
#[test]
fn a_share_group_whose_members_are_leaving_is_no_match() {
    let _serial = one_at_a_time();
    let broker = Broker::start(&["--threads", "1"]);
    let mut member = Raw::connect(broker.port, "member");
    let mut filters: Vec<String> = (1..20_000).map(|i| format!("$share/g/f/{i}")).collect();
    filters.push("$share/g/t".to_string());
    for batch in filters.chunks(TOPIC_FILTERS_MAX) {
        member.send(&subscribe_to(1, batch, QoS::AtLeastOnce));
        assert!(matches!(member.recv(), Packet::SubAck(_)));
    }
    let v5 = ProtocolVersion::V5;
    let mut publisher = Raw::connect_with(broker.port, connect_packet(v5, "publisher", true, 60)).0;
    member.send(&Packet::Disconnect(Default::default()));
    broker.wait_for_log("Client member disconnected.");
    publisher.send(&publish("t", b"m", QoS::AtLeastOnce, 1, false));
    let Packet::PubAck(ack) = publisher.recv() else {
        panic!("expected PUBACK")
    };
    assert_eq!(ack.reason, ReasonCode::NoMatchingSubscribers);
}
