//! Hostile clients and subscriptions: what one SUBSCRIBE can make the broker do or owe (a
//! retained scan, filters by the thousand, filters of 60 KB) is bounded, and the others are
//! served meanwhile.

mod common;

use common::hostile::*;
use common::*;
use midge::codec::*;
use std::time::{Duration, Instant};

/// Issue 28, finding 1: 50,000 retained messages, then one 3.1.1 SUBSCRIBE listing `#`
/// 5,000 times (before: every repeat walked the whole store under its lock, and the shard
/// stalled for 12.9 s). Each repeat replaces the subscription and restarts the scan of its
/// retained messages instead of owing them again [MQTT-3.8.4-3]; the scan goes in slices.
/// The subscriber gets every retained message once, and another client's pings go on.
#[test]
fn a_subscribe_repeating_a_wildcard_does_not_stall_the_shard() {
    let _serial = one_at_a_time();
    const RETAINED: usize = 50_000;
    for threads in ["1", "2"] {
        let broker = Broker::start(&["--threads", threads]);
        let mut publisher = Raw::connect(broker.port, "publisher");
        let mut batch = Vec::new();
        for i in 0..RETAINED {
            let p = publish(&format!("r/{i}"), b"x", QoS::AtMostOnce, 0, true);
            batch.extend_from_slice(&p.to_bytes(ProtocolVersion::V311).unwrap());
        }
        publisher.send_bytes(&batch);
        // Its PUBACK says everything before it is stored.
        publisher.send(&publish("r/last", b"x", QoS::AtLeastOnce, 1, true));
        assert!(matches!(publisher.recv(), Packet::PubAck(_)));
        let mut other = Raw::connect(broker.port, "other");
        let mut subscriber = Raw::connect(broker.port, "subscriber");
        let filters = vec![("#", QoS::AtMostOnce); 5_000];
        subscriber.send(&subscribe(1, &filters));
        let receiving = std::thread::spawn(move || {
            let mut seen = std::collections::HashSet::new();
            while seen.len() < RETAINED + 1 {
                match subscriber.recv() {
                    Packet::SubAck(ack) => assert_eq!(ack.reasons.len(), 5_000),
                    Packet::Publish(p) => {
                        assert!(p.retain);
                        assert!(seen.insert(p.topic.to_string()), "{} twice", p.topic);
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            subscriber.expect_nothing(Duration::from_millis(300));
        });
        let mut longest = Duration::ZERO;
        while !receiving.is_finished() {
            longest = longest.max(ping_round_trip(&mut other));
        }
        receiving.join().unwrap();
        assert!(
            longest < Duration::from_millis(250),
            "another client's ping waited {longest:?}"
        );
    }
}

/// Subscribes `filters` ten to a SUBSCRIBE; returns how many were granted and refused
/// (3.1.1: 0x80).
fn subscribe_all(c: &mut Raw, filters: &[String]) -> (usize, usize) {
    let (mut granted, mut refused) = (0, 0);
    for batch in filters.chunks(10) {
        c.send(&subscribe_to(1, batch, QoS::AtMostOnce));
        let Packet::SubAck(ack) = c.recv() else {
            panic!("expected SUBACK")
        };
        for reason in ack.reasons {
            match reason {
                ReasonCode::UnspecifiedError => refused += 1,
                _ => granted += 1,
            }
        }
    }
    (granted, refused)
}

/// How many of `filters`, in order, fit in what one client's subscriptions may hold.
fn fitting(filters: &[String]) -> usize {
    let mut held = 0;
    filters
        .iter()
        .take_while(|f| {
            held += midge::session::filter_cost(f);
            held <= midge::limits::SUBSCRIPTION_BYTES_MAX
        })
        .count()
}

/// After its client went: the broker's RSS is back near `before` within the deadline (its
/// allocator gives freed memory back once the shard goes quiet).
fn wait_for_rss_back(broker: &Broker, before: u64) {
    let until = Instant::now() + DEADLINE;
    while rss_kib(broker.pid()) > before + 8 * 1024 {
        assert!(
            Instant::now() < until,
            "RSS still {} KiB after the client went ({before} KiB before)",
            rss_kib(broker.pid())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Issue 28, finding 7: 2,000 subscriptions with 60 KB filters (before: +249 MB, still held
/// after the client went). A client's subscriptions may hold 32 MiB beyond what their count
/// bounds (a long filter's text counts twice: the session's copy and the trie's): past it,
/// SUBSCRIBE gets 0x80 for each filter that does not fit. When the client
/// and its session go, the memory goes back to the system within seconds.
#[test]
fn subscription_filters_are_bounded_by_bytes_and_given_back() {
    let _serial = one_at_a_time();
    let filters: Vec<String> = (0..2_000)
        .map(|i| format!("f/{i}/{}", "x".repeat(60_000)))
        .collect();
    let fit = fitting(&filters);
    assert!((250..300).contains(&fit), "{fit} filters of 60 KB fit");
    for threads in ["1", "2"] {
        let broker = Broker::start_with_env(&["--threads", threads], &[PURGE_AT_ONCE]);
        let before = rss_kib(broker.pid());
        let mut c = Raw::connect(broker.port, "filters");
        assert_eq!(subscribe_all(&mut c, &filters), (fit, 2_000 - fit));
        let during = rss_kib(broker.pid());
        assert!(
            during < before + 64 * 1024,
            "RSS grew from {before} KiB to {during} KiB"
        );
        broker.wait_for_log("would hold more than 33554432 bytes of subscriptions");
        c.send(&Packet::Disconnect(Default::default()));
        assert!(c.expect_closed().is_empty());
        wait_for_rss_back(&broker, before);
    }
}

/// Filters of 200 empty levels (`0//////...`): 200 bytes on the wire, 25 KB of trie nodes
/// each (before: 20,000 of them, 4 MB sent, held 510 MB). Each level is counted: past 32
/// MiB, refused; the memory goes back when the client goes, without help from the test
/// (the shard gives freed memory back when it goes quiet; 100,000 subscriptions ending
/// left 117 MB held before).
#[test]
fn deep_filters_are_counted_by_level_and_given_back() {
    let _serial = one_at_a_time();
    let filters: Vec<String> = (0..4_000)
        .map(|i| format!("{i}{}", "/".repeat(200)))
        .collect();
    let fit = fitting(&filters);
    assert!((1_000..1_400).contains(&fit), "{fit} deep filters fit");
    for threads in ["1", "2"] {
        let broker = Broker::start(&["--threads", threads]);
        let before = rss_kib(broker.pid());
        let mut c = Raw::connect(broker.port, "deep");
        assert_eq!(subscribe_all(&mut c, &filters), (fit, 4_000 - fit));
        let during = rss_kib(broker.pid());
        assert!(
            during < before + 48 * 1024,
            "RSS grew from {before} KiB to {during} KiB"
        );
        c.send(&Packet::Disconnect(Default::default()));
        assert!(c.expect_closed().is_empty());
        wait_for_rss_back(&broker, before);
    }
}

#[test]
fn a_subscribe_of_too_many_filters_is_refused() {
    let _serial = one_at_a_time();
    let broker = Broker::start(&[]);
    let filters = vec![("a", QoS::AtMostOnce); TOPIC_FILTERS_MAX];
    let (mut c, _) = Raw::connect_with(
        broker.port,
        connect_packet(ProtocolVersion::V5, "many", true, 60),
    );
    c.send(&subscribe(1, &filters));
    let Packet::SubAck(ack) = c.recv() else {
        panic!("expected SUBACK")
    };
    assert_eq!(ack.reasons.len(), TOPIC_FILTERS_MAX);
    let one_more = vec![("a", QoS::AtMostOnce); TOPIC_FILTERS_MAX + 1];
    c.send(&subscribe(2, &one_more));
    let seen = c.expect_closed();
    assert!(
        matches!(&seen[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::QuotaExceeded),
        "{seen:?}"
    );
    let mut old = Raw::connect(broker.port, "many-3");
    old.send(&subscribe(1, &one_more));
    assert!(old.expect_closed().is_empty());
    broker.wait_for_log("more than 16384 topic filters");
}

/// Retained messages owed to many subscriptions at once all arrive, however far behind the
/// client reads: 1,500 filters without wildcards (each its one retained message, owed at
/// once with no scan to keep) at QoS 1, so that the inflight window holds most of them
/// back. (The scans a session may keep are bounded; a filter naming one topic needs none.)
#[test]
fn every_subscription_gets_its_retained_message() {
    let _serial = one_at_a_time();
    const TOPICS: usize = 1_500;
    let broker = Broker::start(&[]);
    let mut publisher = Raw::connect(broker.port, "retainer");
    for i in 0..TOPICS {
        publisher.send(&publish(&format!("e/{i}"), b"x", QoS::AtMostOnce, 0, true));
    }
    publisher.send(&publish("e/last", b"x", QoS::AtLeastOnce, 1, true));
    assert!(matches!(publisher.recv(), Packet::PubAck(_)));
    let mut c = Raw::connect(broker.port, "many-exact");
    let filters: Vec<String> = (0..TOPICS).map(|i| format!("e/{i}")).collect();
    c.send(&subscribe_to(1, &filters, QoS::AtLeastOnce));
    let mut seen = std::collections::HashSet::new();
    while seen.len() < TOPICS {
        match c.recv() {
            Packet::SubAck(_) => {}
            Packet::Publish(p) => {
                assert!(seen.insert(p.topic.to_string()), "{} twice", p.topic);
                c.send(&Packet::PubAck(PubResponse::new(p.packet_id)));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A client with 100,000 subscriptions (the most one may have) leaving: they leave the
/// trie a slice a turn, not all in one (before: its shard was held for 200 ms, in the
/// release build and this one alike). Another client on the same shard, pinging all along,
/// waits under 100 ms, and what is published afterwards reaches none of them.
#[test]
fn a_client_with_many_subscriptions_leaves_a_slice_at_a_time() {
    let _serial = one_at_a_time();
    const FILTERS: usize = 100_000;
    let broker = Broker::start(&["--threads", "1"]);
    let mut bystander = Raw::connect(broker.port, "bystander");
    let mut many = Raw::connect(broker.port, "many");
    let filters: Vec<String> = (0..FILTERS).map(|i| format!("f/{i}/+/x")).collect();
    for batch in filters.chunks(16_384) {
        many.send(&subscribe_to(1, batch, QoS::AtMostOnce));
        assert!(matches!(many.recv(), Packet::SubAck(_)));
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pinging = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut worst = Duration::ZERO;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                worst = worst.max(ping_round_trip(&mut bystander));
            }
            (bystander, worst)
        })
    };
    many.send(&Packet::Disconnect(Default::default()));
    broker.wait_for_log("Client many disconnected.");
    // The subscriptions go over the next turns: a few hundred milliseconds of pings.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut bystander, worst) = pinging.join().unwrap();
    bystander.subscribe(&[("f/99999/y/x", QoS::AtMostOnce)]);
    bystander.send(&publish("f/99999/y/x", b"after", QoS::AtMostOnce, 0, false));
    assert_eq!(bystander.recv_publish().payload[..], b"after"[..]);
    assert!(
        worst < Duration::from_millis(100),
        "another client waited {worst:?}"
    );
}
