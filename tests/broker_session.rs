//! Persistent sessions and session takeover, including across shards.

mod common;

use common::*;
use midge::codec::*;

fn persistent(port: u16, id: &str) -> (Raw, ConnAck) {
    Raw::connect_with(port, connect_packet(ProtocolVersion::V311, id, false, 60))
}

#[test]
fn a_persistent_session_keeps_subscriptions_and_queues_messages() {
    Broker::each_threads(&[], |broker| {
        let (mut c, ack) = persistent(broker.port, "keeper");
        assert!(!ack.session_present);
        c.subscribe(&[("news/#", QoS::AtLeastOnce), ("zero/#", QoS::AtMostOnce)]);
        c.send(&Packet::Disconnect(Disconnect::default()));
        c.expect_closed();

        let mut publisher = Raw::connect(broker.port, "pub");
        for i in 0..3u8 {
            publisher.send(&publish(
                "news/x",
                &[i],
                QoS::AtLeastOnce,
                u16::from(i) + 1,
                false,
            ));
            assert!(matches!(publisher.recv(), Packet::PubAck(_)));
        }
        let (mut c, ack) = persistent(broker.port, "keeper");
        // [MQTT-3.2.2-2] session present.
        assert!(ack.session_present);
        let got: Vec<u8> = (0..3)
            .map(|_| {
                let p = c.recv_publish();
                c.send(&Packet::PubAck(PubResponse::new(p.packet_id)));
                p.payload[0]
            })
            .collect();
        assert_eq!(got, vec![0, 1, 2]);
        // Subscriptions survived: live messages flow.
        publisher.send(&publish("news/y", b"live", QoS::AtMostOnce, 0, false));
        assert_eq!(&c.recv_publish().payload[..], b"live");

        // Clean session 1 discards it. [MQTT-3.1.2-6]
        c.send(&Packet::Disconnect(Disconnect::default()));
        c.expect_closed();
        let (mut clean, ack) = Raw::connect_with(
            broker.port,
            connect_packet(ProtocolVersion::V311, "keeper", true, 60),
        );
        assert!(!ack.session_present);
        publisher.send(&publish("news/z", b"nobody", QoS::AtMostOnce, 0, false));
        publisher.send(&Packet::PingReq);
        assert_eq!(publisher.recv(), Packet::PingResp);
        clean.send(&Packet::PingReq);
        assert_eq!(clean.recv(), Packet::PingResp);
    });
}

#[test]
fn unacknowledged_messages_are_resent_with_dup_and_qos2_completes_once() {
    Broker::each_threads(&[], |broker| {
        let (mut c, _) = persistent(broker.port, "flaky");
        c.subscribe(&[("q/#", QoS::ExactlyOnce)]);
        let mut publisher = Raw::connect(broker.port, "pub");
        publisher.send(&publish("q/1", b"one", QoS::AtLeastOnce, 1, false));
        publisher.send(&publish("q/2", b"two", QoS::ExactlyOnce, 2, false));
        let one = c.recv_publish();
        let two = c.recv_publish();
        assert_eq!((one.qos, two.qos), (QoS::AtLeastOnce, QoS::ExactlyOnce));
        // QoS 2 got as far as PUBREL; QoS 1 never acknowledged. Then the link drops.
        c.send(&Packet::PubRec(PubResponse::new(two.packet_id)));
        assert_eq!(c.recv(), Packet::PubRel(PubResponse::new(two.packet_id)));
        drop(c);
        broker.wait_for_log("Client flaky closed its connection.");

        let (mut c, ack) = persistent(broker.port, "flaky");
        assert!(ack.session_present);
        // [MQTT-4.4.0-1] resent in order: the QoS 1 PUBLISH with DUP, the QoS 2 PUBREL.
        let again = c.recv_publish();
        assert!(again.dup);
        assert_eq!(
            (&again.payload[..], again.packet_id),
            (&b"one"[..], one.packet_id)
        );
        assert_eq!(c.recv(), Packet::PubRel(PubResponse::new(two.packet_id)));
        c.send(&Packet::PubAck(PubResponse::new(again.packet_id)));
        c.send(&Packet::PubComp(PubResponse::new(two.packet_id)));
        publisher.send(&publish("q/3", b"marker", QoS::AtMostOnce, 0, false));
        assert_eq!(&c.recv_publish().payload[..], b"marker");
    });
}

#[test]
fn takeover_closes_the_old_connection_and_keeps_the_session_across_shards() {
    for threads in ["1", "2"] {
        let broker = Broker::start(&["--threads", threads]);
        let handoffs = || {
            broker
                .log_lines()
                .iter()
                .filter(|l| l.contains("Handing the session of roamer"))
                .count()
        };
        let mut publisher = Raw::connect(broker.port, "pub");
        let (mut current, _) = persistent(broker.port, "roamer");
        current.subscribe(&[("roam", QoS::AtLeastOnce)]);
        // The kernel spreads connections over the shards: with two, keep going until some
        // takeovers went through a cross-shard handoff (bounded: 64 rounds).
        for round in 0..64u16 {
            let (mut next, ack) = persistent(broker.port, "roamer");
            assert!(ack.session_present, "round {round}");
            // [MQTT-3.1.4-3] the old connection is closed.
            current.expect_closed();
            publisher.send(&publish(
                "roam",
                &round.to_be_bytes(),
                QoS::AtLeastOnce,
                round + 1,
                false,
            ));
            assert!(matches!(publisher.recv(), Packet::PubAck(_)));
            let p = next.recv_publish();
            assert_eq!(&p.payload[..], &round.to_be_bytes());
            next.send(&Packet::PubAck(PubResponse::new(p.packet_id)));
            // PINGRESP: the PUBACK before it was handled, so nothing is left to resend.
            next.send(&Packet::PingReq);
            assert_eq!(next.recv(), Packet::PingResp);
            current = next;
            if round >= 8 && (threads == "1" || handoffs() >= 3) {
                break;
            }
        }
        broker.wait_for_log("Client roamer already connected, closing old connection.");
        if threads == "2" {
            assert!(handoffs() >= 3, "no cross-shard takeover in 64 rounds");
        }
        // A clean takeover starts afresh. [MQTT-3.2.2-1]
        let (mut fresh, ack) = Raw::connect_with(
            broker.port,
            connect_packet(ProtocolVersion::V311, "roamer", true, 60),
        );
        assert!(!ack.session_present);
        current.expect_closed();
        fresh.send(&Packet::PingReq);
        assert_eq!(fresh.recv(), Packet::PingResp);
    }
}

#[test]
fn qos0_is_not_queued_for_an_offline_session() {
    // One shard: the publisher's PINGRESP then means its PUBLISH was routed and delivered
    // (across shards the delivery may still be in a mailbox when the client comes back,
    // and then it is rightly delivered live).
    let broker = Broker::start(&["--threads", "1"]);
    let (mut c, _) = persistent(broker.port, "offline-zero");
    c.subscribe(&[("zero/#", QoS::AtMostOnce), ("one/#", QoS::AtLeastOnce)]);
    c.send(&Packet::Disconnect(Disconnect::default()));
    c.expect_closed();
    let mut publisher = Raw::connect(broker.port, "pub");
    publisher.send(&publish("zero/x", b"z", QoS::AtMostOnce, 0, false));
    publisher.send(&publish("one/x", b"1", QoS::AtLeastOnce, 1, false));
    assert!(matches!(publisher.recv(), Packet::PubAck(_)));
    let (mut c, ack) = persistent(broker.port, "offline-zero");
    assert!(ack.session_present);
    // Only the QoS 1 message was kept.
    assert_eq!(&c.recv_publish().payload[..], b"1");
    publisher.send(&publish("zero/y", b"live", QoS::AtMostOnce, 0, false));
    assert_eq!(&c.recv_publish().payload[..], b"live");
}

#[test]
fn max_queued_messages_0_means_no_limit_as_in_mosquitto() {
    let conf = config_file(
        "queued-unlimited",
        "listener 0 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n",
    );
    let broker = Broker::start_configured(&["-c", &conf]);
    let (mut c, _) = persistent(broker.port, "offline");
    c.subscribe(&[("q/#", QoS::AtLeastOnce)]);
    c.send(&Packet::Disconnect(Disconnect::default()));
    c.expect_closed();
    // More than the default limit of 1000.
    let mut publisher = Raw::connect(broker.port, "pub");
    let count = 1500u16;
    for i in 1..=count {
        publisher.send(&publish(
            "q/x",
            &i.to_be_bytes(),
            QoS::AtLeastOnce,
            i,
            false,
        ));
        assert!(matches!(publisher.recv(), Packet::PubAck(_)));
    }
    let (mut c, ack) = persistent(broker.port, "offline");
    assert!(ack.session_present);
    for i in 1..=count {
        let p = c.recv_publish();
        assert_eq!(p.payload[..], i.to_be_bytes());
        c.send(&Packet::PubAck(PubResponse::new(p.packet_id)));
    }
}

/// What a client sent just before it reconnects is handled before the takeover, as a
/// broker with one thread handles it: here a retained PUBLISH, then a close, then a new
/// connection with the same client id at once (Mosquitto's 04-retain-check-source does
/// this). With two shards the new connection often lands on the other shard, whose request
/// for the session may reach the old shard before it has read the PUBLISH.
#[test]
fn what_a_client_sent_before_reconnecting_is_not_lost_in_the_takeover() {
    let broker = Broker::start(&["--threads", "2"]);
    let rounds = 300u16;
    for round in 0..rounds {
        let mut old = Raw::connect(broker.port, "hasty");
        old.send(&publish(
            &format!("hasty/{round}"),
            b"sent before the reconnect",
            QoS::AtMostOnce,
            0,
            true,
        ));
        drop(old);
        let mut new = Raw::connect(broker.port, "hasty");
        // A PINGRESP: the takeover is done.
        new.send(&Packet::PingReq);
        assert_eq!(new.recv(), Packet::PingResp);
    }
    let mut check = Raw::connect(broker.port, "check");
    check.subscribe(&[("hasty/#", QoS::AtMostOnce)]);
    let mut got = std::collections::BTreeSet::new();
    while got.len() < usize::from(rounds) {
        match check.poll_packet(std::time::Duration::from_millis(500)) {
            Some(Packet::Publish(p)) => {
                got.insert(p.topic.to_string());
            }
            other => panic!(
                "{} of {rounds} retained messages, then {other:?}",
                got.len()
            ),
        }
    }
}
