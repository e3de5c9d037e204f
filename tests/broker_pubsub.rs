//! PUBLISH and SUBSCRIBE over real sockets: the exact QoS 0/1/2 flows both ways, overlapping
//! subscriptions, invalid filters, unsubscribe, the inflight window and queue bounds. With
//! one shard and with two.

mod common;

use common::*;
use midge::codec::*;
use std::time::Duration;

#[test]
fn qos_flows_in_both_directions() {
    Broker::each_threads(&[], |broker| {
        // Several subscribers, so that with two shards both hold some.
        let mut subs: Vec<Raw> = (0..6)
            .map(|i| Raw::connect(broker.port, &format!("sub-{i}")))
            .collect();
        for sub in &mut subs {
            let ack = sub.subscribe(&[("flow/#", QoS::ExactlyOnce)]);
            assert_eq!(ack.reasons, vec![ReasonCode::GrantedQos2]);
        }
        let mut publisher = Raw::connect(broker.port, "pub");

        // QoS 0: no acknowledgement; delivered at QoS 0.
        publisher.send(&publish("flow/0", b"zero", QoS::AtMostOnce, 0, false));
        for sub in &mut subs {
            let p = sub.recv_publish();
            assert_eq!(
                (p.topic.as_str(), &p.payload[..], p.qos, p.retain),
                ("flow/0", &b"zero"[..], QoS::AtMostOnce, false)
            );
        }

        // QoS 1: PUBACK to the publisher; subscribers get QoS 1 and acknowledge.
        publisher.send(&publish("flow/1", b"one", QoS::AtLeastOnce, 11, false));
        assert_eq!(publisher.recv(), Packet::PubAck(PubResponse::new(11)));
        for sub in &mut subs {
            let p = sub.recv_publish();
            assert_eq!((p.qos, &p.payload[..]), (QoS::AtLeastOnce, &b"one"[..]));
            assert_ne!(p.packet_id, 0);
            sub.send(&Packet::PubAck(PubResponse::new(p.packet_id)));
        }

        // QoS 2: PUBLISH, PUBREC, PUBREL, PUBCOMP on both sides.
        publisher.send(&publish("flow/2", b"two", QoS::ExactlyOnce, 12, false));
        assert_eq!(publisher.recv(), Packet::PubRec(PubResponse::new(12)));
        publisher.send(&Packet::PubRel(PubResponse::new(12)));
        assert_eq!(publisher.recv(), Packet::PubComp(PubResponse::new(12)));
        for sub in &mut subs {
            let p = sub.recv_publish();
            assert_eq!((p.qos, &p.payload[..]), (QoS::ExactlyOnce, &b"two"[..]));
            sub.send(&Packet::PubRec(PubResponse::new(p.packet_id)));
            assert_eq!(sub.recv(), Packet::PubRel(PubResponse::new(p.packet_id)));
            sub.send(&Packet::PubComp(PubResponse::new(p.packet_id)));
        }
        // Granted QoS caps delivery: a QoS 0 subscriber gets QoS 0.
        let mut low = Raw::connect(broker.port, "low");
        low.subscribe(&[("flow/#", QoS::AtMostOnce)]);
        publisher.send(&publish("flow/x", b"x", QoS::ExactlyOnce, 13, false));
        assert_eq!(low.recv_publish().qos, QoS::AtMostOnce);
    });
}

#[test]
fn qos2_is_delivered_once_when_the_publisher_resends() {
    Broker::each_threads(&[], |broker| {
        let mut sub = Raw::connect(broker.port, "sub");
        sub.subscribe(&[("once", QoS::ExactlyOnce)]);
        let mut publisher = Raw::connect(broker.port, "pub");
        publisher.send(&publish("once", b"1", QoS::ExactlyOnce, 7, false));
        assert_eq!(publisher.recv(), Packet::PubRec(PubResponse::new(7)));
        // The publisher did not see PUBREC (say) and resends with DUP.
        let Packet::Publish(mut again) = publish("once", b"1", QoS::ExactlyOnce, 7, false) else {
            unreachable!()
        };
        again.dup = true;
        publisher.send(&Packet::Publish(again));
        assert_eq!(publisher.recv(), Packet::PubRec(PubResponse::new(7)));
        publisher.send(&Packet::PubRel(PubResponse::new(7)));
        assert_eq!(publisher.recv(), Packet::PubComp(PubResponse::new(7)));
        let p = sub.recv_publish();
        sub.send(&Packet::PubRec(PubResponse::new(p.packet_id)));
        assert_eq!(sub.recv(), Packet::PubRel(PubResponse::new(p.packet_id)));
        sub.send(&Packet::PubComp(PubResponse::new(p.packet_id)));
        // A marker message proves nothing else was queued before it.
        publisher.send(&publish("once", b"marker", QoS::AtMostOnce, 0, false));
        assert_eq!(&sub.recv_publish().payload[..], b"marker");
    });
}

#[test]
fn overlapping_subscriptions_deliver_once_at_the_highest_qos() {
    Broker::each_threads(&[], |broker| {
        let mut sub = Raw::connect(broker.port, "sub");
        let ack = sub.subscribe(&[
            ("a/#", QoS::AtLeastOnce),
            ("a/b", QoS::ExactlyOnce),
            ("+/b", QoS::AtMostOnce),
        ]);
        assert_eq!(
            ack.reasons,
            vec![
                ReasonCode::GrantedQos1,
                ReasonCode::GrantedQos2,
                ReasonCode::GRANTED_QOS_0
            ]
        );
        let mut publisher = Raw::connect(broker.port, "pub");
        publisher.send(&publish("a/b", b"m", QoS::ExactlyOnce, 1, false));
        let p = sub.recv_publish();
        assert_eq!(p.qos, QoS::ExactlyOnce);
        sub.send(&Packet::PubRec(PubResponse::new(p.packet_id)));
        assert_eq!(sub.recv(), Packet::PubRel(PubResponse::new(p.packet_id)));
        sub.send(&Packet::PubComp(PubResponse::new(p.packet_id)));
        sub.expect_nothing(Duration::from_millis(200));
    });
}

#[test]
fn invalid_filters_fail_alone_and_unsubscribe_stops_delivery() {
    let broker = Broker::start(&[]);
    let mut sub = Raw::connect(broker.port, "sub");
    let ack = sub.subscribe(&[
        ("ok/+", QoS::AtLeastOnce),
        ("bad/#/x", QoS::AtLeastOnce),
        ("bad+", QoS::AtMostOnce),
        ("", QoS::AtMostOnce),
    ]);
    // [MQTT-3.9.3-2] 0x80 for each filter that failed; the others are granted.
    assert_eq!(
        ack.reasons,
        vec![
            ReasonCode::GrantedQos1,
            ReasonCode::UnspecifiedError,
            ReasonCode::UnspecifiedError,
            ReasonCode::UnspecifiedError
        ]
    );
    let mut publisher = Raw::connect(broker.port, "pub");
    publisher.send(&publish("ok/1", b"a", QoS::AtMostOnce, 0, false));
    assert_eq!(&sub.recv_publish().payload[..], b"a");
    sub.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: 5,
        properties: Properties::default(),
        filters: vec![s("ok/+")],
    }));
    assert_eq!(
        sub.recv(),
        Packet::UnsubAck(UnsubAck {
            packet_id: 5,
            properties: Properties::default(),
            reasons: vec![]
        })
    );
    publisher.send(&publish("ok/1", b"b", QoS::AtMostOnce, 0, false));
    sub.expect_nothing(Duration::from_millis(200));
}

#[test]
fn a_publish_with_a_wildcard_topic_closes_the_connection() {
    let broker = Broker::start(&[]);
    let mut publisher = Raw::connect(broker.port, "pub");
    // PUBLISH "a/#" [MQTT-3.3.2-2]
    publisher.send_bytes(&[0x30, 0x06, 0, 3, b'a', b'/', b'#', b'x']);
    assert!(publisher.expect_closed().is_empty());
    broker.wait_for_log("Client pub disconnected due to");
}

#[test]
fn the_inflight_window_and_the_queue_are_bounded() {
    let conf = config_file(
        "inflight",
        "max_inflight_messages 2\nmax_queued_messages 3\n",
    );
    Broker::each_threads(&["-c", &conf], |broker| {
        let mut sub = Raw::connect(broker.port, "slow-acker");
        sub.subscribe(&[("w", QoS::AtLeastOnce)]);
        let mut publisher = Raw::connect(broker.port, "pub");
        for i in 0..10u8 {
            publisher.send(&publish(
                "w",
                &[i],
                QoS::AtLeastOnce,
                u16::from(i) + 1,
                false,
            ));
            assert!(matches!(publisher.recv(), Packet::PubAck(_)));
        }
        // Two in flight, unacknowledged: nothing more comes.
        let first = sub.recv_publish();
        let second = sub.recv_publish();
        assert_eq!(
            (&first.payload[..], &second.payload[..]),
            (&[0u8][..], &[1u8][..])
        );
        sub.expect_nothing(Duration::from_millis(200));
        // Each acknowledgement lets one queued message in, in order; three were queued,
        // the other five dropped (and logged).
        let mut got = vec![];
        for p in [first, second] {
            sub.send(&Packet::PubAck(PubResponse::new(p.packet_id)));
        }
        for _ in 0..3 {
            let p = sub.recv_publish();
            got.push(p.payload[0]);
            sub.send(&Packet::PubAck(PubResponse::new(p.packet_id)));
        }
        assert_eq!(got, vec![2, 3, 4]);
        sub.expect_nothing(Duration::from_millis(200));
        broker.wait_for_log("Outgoing messages are being dropped for client slow-acker.");
    });
}

/// Packets take effect in the order the broker reads them: a SUBSCRIBE and a PUBLISH to
/// the same topic in one write deliver the message back (as Mosquitto does), with the
/// SUBACK first.
#[test]
fn subscribe_then_publish_in_one_write_delivers_in_order() {
    Broker::each_threads(&[], |broker| {
        for attempt in 0..20u16 {
            let mut c = Raw::connect(broker.port, &format!("echo-{attempt}"));
            let topic = format!("echo/{attempt}");
            let mut bytes = subscribe(1, &[(&topic, QoS::AtLeastOnce)])
                .to_bytes(ProtocolVersion::V311)
                .unwrap()
                .to_vec();
            let publish = publish(&topic, b"self", QoS::AtLeastOnce, 2, false);
            bytes.extend_from_slice(&publish.to_bytes(ProtocolVersion::V311).unwrap());
            c.send_bytes(&bytes);
            assert!(matches!(c.recv(), Packet::SubAck(_)), "attempt {attempt}");
            // The PUBACK of its PUBLISH and the PUBLISH itself, in either order.
            let mut got_puback = false;
            let mut got_message = false;
            for _ in 0..2 {
                match c.recv() {
                    Packet::PubAck(ack) => got_puback = ack.packet_id == 2,
                    Packet::Publish(p) => got_message = &p.payload[..] == b"self",
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert!(got_puback && got_message, "attempt {attempt}");
        }
    });
}

/// A Mosquitto bridge (protocol level with bit 7, `try_private`) on 3.1 or 3.1.1 is not sent
/// back what it publishes (Mosquitto's rule, which keeps two brokers bridged both ways from
/// echoing messages forever), and gets RETAIN as published; an ordinary 3.1.1 client is sent
/// its own messages, as MQTT 3.1.1 has it.
#[test]
fn a_bridge_is_not_sent_back_what_it_publishes() {
    let broker = Broker::start(&[]);
    for (round, (bridge, version)) in [
        (true, ProtocolVersion::V31),
        (true, ProtocolVersion::V311),
        (false, ProtocolVersion::V311),
    ]
    .into_iter()
    .enumerate()
    {
        let topic = |leaf: &str| format!("loop{round}/{leaf}");
        let mut connect = connect_packet(version, "bridge-test", true, 60);
        connect.bridge = bridge;
        let (mut c, _) = Raw::connect_with(broker.port, connect);
        c.subscribe(&[(topic("test").as_str(), QoS::AtMostOnce)]);
        c.send(&publish(
            &topic("test"),
            b"message",
            QoS::AtMostOnce,
            0,
            true,
        ));
        c.send(&Packet::PingReq);
        if bridge {
            assert_eq!(c.recv(), Packet::PingResp, "{version:?}");
            // Retained messages keep their flag for a bridge.
            let mut late = connect_packet(version, "bridge-late", true, 60);
            late.bridge = true;
            let (mut late, _) = Raw::connect_with(broker.port, late);
            late.subscribe(&[(topic("#").as_str(), QoS::AtMostOnce)]);
            let mut other = Raw::connect(broker.port, "other");
            other.send(&publish(&topic("live"), b"x", QoS::AtMostOnce, 0, true));
            let mut retained = Vec::new();
            for _ in 0..2 {
                let p = late.recv_publish();
                retained.push((p.topic.to_string(), p.retain));
            }
            retained.sort();
            assert_eq!(retained, vec![(topic("live"), true), (topic("test"), true)]);
        } else {
            assert_eq!(c.recv_publish().payload.as_ref(), b"message");
            assert_eq!(c.recv(), Packet::PingResp);
        }
    }
}
