//! MQTT 5.0 over real sockets, byte-exact where it matters: topic aliases, Receive Maximum
//! both ways, Maximum Packet Size, Message Expiry, Session Expiry, DISCONNECT with will.

mod common;

use common::*;
use midge::codec::*;
use std::time::Duration;

fn v5(client_id: &str) -> Connect {
    connect_packet(ProtocolVersion::V5, client_id, true, 60)
}

fn connect5(port: u16, connect: Connect) -> (Raw, ConnAck) {
    let (raw, ack) = Raw::connect_with(port, connect);
    assert_eq!(ack.reason, ReasonCode::Success);
    (raw, ack)
}

fn publish5(
    topic: &str,
    payload: &[u8],
    qos: QoS,
    packet_id: u16,
    properties: PropertyValues,
) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: s(topic),
        packet_id,
        properties: properties.into(),
        payload: bytes::Bytes::copy_from_slice(payload),
    })
}

fn alias(n: u16) -> PropertyValues {
    PropertyValues {
        topic_alias: Some(n),
        ..Default::default()
    }
}

#[test]
fn connack_carries_the_limits_mosquitto_announces() {
    let broker = Broker::start(&[]);
    let (_c, ack) = connect5(broker.port, v5("limits"));
    // Mosquitto 2's defaults: Topic Alias Maximum 10, Receive Maximum 20.
    assert_eq!(ack.properties.topic_alias_maximum, Some(10));
    assert_eq!(ack.properties.receive_maximum, Some(20));
    // Everything is available, which 5.0 says by leaving these out (§3.2.2.3).
    assert_eq!(ack.properties.maximum_qos, None);
    assert_eq!(ack.properties.retain_available, None);
    assert_eq!(ack.properties.wildcard_subscription_available, None);
    assert_eq!(ack.properties.subscription_identifier_available, None);
    assert_eq!(ack.properties.shared_subscription_available, None);
    // A keepalive above max_keepalive is lowered, and the client told so. [MQTT-3.2.2-21]
    let conf = config_file("keepalive", "max_keepalive 10\n");
    let capped = Broker::start(&["-c", &conf]);
    let (_c, ack) = connect5(capped.port, v5("slow-pinger"));
    assert_eq!(ack.properties.server_keep_alive, Some(10));
}

#[test]
fn inbound_topic_aliases() {
    Broker::each_threads(&[], |broker| {
        let mut sub = Raw::connect(broker.port, "sub");
        sub.subscribe(&[("alias/#", QoS::AtMostOnce)]);
        let (mut p, _) = connect5(broker.port, v5("aliaser"));
        // Alias 3 is set with the topic, then used alone (§3.3.2.3.4).
        p.send(&publish5(
            "alias/long/topic/name",
            b"1",
            QoS::AtMostOnce,
            0,
            alias(3),
        ));
        p.send(&publish5("", b"2", QoS::AtMostOnce, 0, alias(3)));
        // And remapped.
        p.send(&publish5("alias/other", b"3", QoS::AtMostOnce, 0, alias(3)));
        p.send(&publish5("", b"4", QoS::AtMostOnce, 0, alias(3)));
        let got: Vec<(String, Vec<u8>)> = (0..4)
            .map(|_| {
                let m = sub.recv_publish();
                (m.topic.to_string(), m.payload.to_vec())
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("alias/long/topic/name".into(), b"1".to_vec()),
                ("alias/long/topic/name".into(), b"2".to_vec()),
                ("alias/other".into(), b"3".to_vec()),
                ("alias/other".into(), b"4".to_vec()),
            ]
        );
        // [MQTT-3.3.2-9] an alias above the Topic Alias Maximum: DISCONNECT 0x94.
        p.send(&publish5("alias/x", b"5", QoS::AtMostOnce, 0, alias(11)));
        assert_eq!(
            without_reason_strings(p.expect_closed()),
            vec![Packet::Disconnect(Disconnect::with_reason(
                ReasonCode::TopicAliasInvalid
            ))]
        );
        // An alias never set, with no topic: Protocol Error.
        let (mut q, _) = connect5(broker.port, v5("unset-alias"));
        q.send(&publish5("", b"6", QoS::AtMostOnce, 0, alias(2)));
        assert_eq!(
            without_reason_strings(q.expect_closed()),
            vec![Packet::Disconnect(Disconnect::with_reason(
                ReasonCode::ProtocolError
            ))]
        );
    });
}

#[test]
fn receive_maximum_in_both_directions() {
    Broker::each_threads(&[], |broker| {
        // Outbound: the client allows 2 unacknowledged messages. [MQTT-3.3.4-9]
        let mut c = v5("small-window");
        c.properties.receive_maximum = Some(2);
        let (mut sub, _) = connect5(broker.port, c);
        sub.subscribe(&[("rm", QoS::AtLeastOnce)]);
        let mut publisher = Raw::connect(broker.port, "pub");
        for i in 0..4u8 {
            publisher.send(&publish(
                "rm",
                &[i],
                QoS::AtLeastOnce,
                u16::from(i) + 1,
                false,
            ));
            assert!(matches!(publisher.recv(), Packet::PubAck(_)));
        }
        let a = sub.recv_publish();
        let b = sub.recv_publish();
        sub.expect_nothing(Duration::from_millis(200));
        sub.send(&Packet::PubAck(PubResponse::new(a.packet_id)));
        sub.send(&Packet::PubAck(PubResponse::new(b.packet_id)));
        assert_eq!(&sub.recv_publish().payload[..], &[2]);

        // Inbound: more unacknowledged QoS 2 than the broker's Receive Maximum (20):
        // DISCONNECT 0x93. [MQTT-3.3.4-7]
        let (mut flood, _) = connect5(broker.port, v5("qos2-flood"));
        for id in 1..=21u16 {
            flood.send(&publish5(
                "rm/flood",
                b"x",
                QoS::ExactlyOnce,
                id,
                PropertyValues::default(),
            ));
        }
        let got = without_reason_strings(flood.expect_closed());
        assert_eq!(got.len(), 21, "20 PUBRECs then the DISCONNECT: {got:?}");
        assert_eq!(
            got[20],
            Packet::Disconnect(Disconnect::with_reason(ReasonCode::ReceiveMaximumExceeded))
        );
    });
}

#[test]
fn nothing_larger_than_the_clients_maximum_packet_size() {
    let broker = Broker::start(&[]);
    let mut c = v5("small-packets");
    c.properties.maximum_packet_size = Some(64);
    let (mut sub, _) = connect5(broker.port, c);
    sub.subscribe(&[("size/#", QoS::AtMostOnce)]);
    let mut publisher = Raw::connect(broker.port, "pub");
    // [MQTT-3.1.2-25] 100 bytes of payload do not fit in 64: dropped, not sent.
    publisher.send(&publish("size/big", &[7u8; 100], QoS::AtMostOnce, 0, false));
    publisher.send(&publish("size/small", b"fits", QoS::AtMostOnce, 0, false));
    let p = sub.recv_publish();
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("size/small", &b"fits"[..])
    );
}

#[test]
fn message_expiry_and_the_remaining_interval() {
    let broker = Broker::start(&[]);
    let mut c = v5("offline");
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(600);
    let (mut sub, _) = connect5(broker.port, c.clone());
    sub.subscribe(&[("exp/#", QoS::AtLeastOnce)]);
    sub.send(&Packet::Disconnect(Disconnect::default()));
    sub.expect_closed();

    let (mut p, _) = connect5(broker.port, v5("expiring-pub"));
    let expiry = |s| PropertyValues {
        message_expiry_interval: Some(s),
        ..Default::default()
    };
    p.send(&publish5(
        "exp/short",
        b"gone",
        QoS::AtLeastOnce,
        1,
        expiry(1),
    ));
    p.send(&publish5(
        "exp/long",
        b"kept",
        QoS::AtLeastOnce,
        2,
        expiry(600),
    ));
    assert!(matches!(p.recv(), Packet::PubAck(_)));
    assert!(matches!(p.recv(), Packet::PubAck(_)));
    // Past the short one's interval (a deliberate wait: expiry is about time).
    std::thread::sleep(Duration::from_millis(1100));

    let (mut sub, ack) = connect5(broker.port, c);
    assert!(ack.session_present);
    // [MQTT-3.3.2-5] the expired message is not delivered; [MQTT-3.3.2-6] the other carries
    // what is left of its interval.
    let m = sub.recv_publish();
    assert_eq!(&m.payload[..], b"kept");
    let left = m
        .properties
        .message_expiry_interval
        .expect("remaining interval");
    assert!((598..=600).contains(&left), "{left}");
    sub.send(&Packet::PubAck(PubResponse::new(m.packet_id)));
    p.send(&publish5(
        "exp/marker",
        b"marker",
        QoS::AtMostOnce,
        0,
        PropertyValues::default(),
    ));
    assert_eq!(&sub.recv_publish().payload[..], b"marker");
}

#[test]
fn offline_sessions_expire_and_disconnect_may_change_the_interval() {
    Broker::each_threads(&[], |broker| {
        let mut c = v5("short-lived");
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(1);
        let (mut sub, _) = connect5(broker.port, c.clone());
        sub.subscribe(&[("se", QoS::AtLeastOnce)]);
        sub.send(&Packet::Disconnect(Disconnect::default()));
        sub.expect_closed();
        broker.wait_for_log("Expiring client short-lived due to timeout.");
        let (_s, ack) = connect5(broker.port, c.clone());
        // [MQTT-3.2.2-2] the session is gone.
        assert!(!ack.session_present);

        // [MQTT-3.14.2-2] 0 at CONNECT, then an interval at DISCONNECT: Protocol Error.
        let (mut zero, _) = connect5(broker.port, v5("zero-expiry"));
        let mut d = Disconnect::default();
        d.properties.session_expiry_interval = Some(60);
        zero.send(&Packet::Disconnect(d));
        assert_eq!(
            without_reason_strings(zero.expect_closed()),
            vec![Packet::Disconnect(Disconnect::with_reason(
                ReasonCode::ProtocolError
            ))]
        );
    });
}

#[test]
fn disconnect_with_will_message_publishes_the_will() {
    let broker = Broker::start(&[]);
    let mut watcher = Raw::connect(broker.port, "watcher");
    watcher.subscribe(&[("w5", QoS::AtMostOnce)]);
    let mut c = v5("leaving");
    c.will = Some(Will {
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
        topic: s("w5"),
        payload: bytes::Bytes::from_static(b"bye"),
    });
    let (mut leaving, _) = connect5(broker.port, c);
    leaving.send(&Packet::Disconnect(Disconnect::with_reason(
        ReasonCode::DisconnectWithWillMessage,
    )));
    leaving.expect_closed();
    assert_eq!(&watcher.recv_publish().payload[..], b"bye");
}

#[test]
fn an_unsupported_authentication_method_gets_connack_0x8c() {
    let broker = Broker::start(&[]);
    let mut c = v5("scram");
    c.properties.authentication_method = Some(s("SCRAM-SHA-256"));
    let (mut raw, ack) = Raw::connect_with(broker.port, c);
    // MQTT 5.0 §4.12: no such method here: Bad authentication method, then closed.
    assert_eq!(ack.reason, ReasonCode::BadAuthenticationMethod);
    assert!(raw.expect_closed().is_empty());
}

#[test]
fn the_broker_uses_topic_aliases_the_client_allows() {
    Broker::each_threads(&[], |broker| {
        let mut c = v5("alias-receiver");
        c.properties.topic_alias_maximum = Some(2);
        let (mut sub, _) = connect5(broker.port, c);
        sub.subscribe(&[("oa/#", QoS::AtMostOnce)]);
        let mut p = Raw::connect(broker.port, "pub");
        for topic in [
            "oa/first/long/topic",
            "oa/first/long/topic",
            "oa/second",
            "oa/third",
            "oa/second",
        ] {
            p.send(&publish(topic, b"x", QoS::AtMostOnce, 0, false));
        }
        let got: Vec<(String, Option<u16>)> = (0..5)
            .map(|_| {
                let m = sub.recv_publish();
                (m.topic.to_string(), m.properties.topic_alias)
            })
            .collect();
        // Set with the topic, then the alias alone; no third alias past the maximum of 2:
        // the oldest (1) is given to the third topic, which comes with it.
        assert_eq!(
            got,
            vec![
                ("oa/first/long/topic".into(), Some(1)),
                ("".into(), Some(1)),
                ("oa/second".into(), Some(2)),
                ("oa/third".into(), Some(1)),
                ("".into(), Some(2)),
            ]
        );
    });
}

#[test]
fn retained_messages_keep_their_properties() {
    let broker = Broker::start(&[]);
    let (mut p, _) = connect5(broker.port, v5("retainer"));
    let mut properties = PropertyValues {
        content_type: Some(s("application/json")),
        ..Default::default()
    };
    properties.user_properties.push((s("k"), s("v")));
    let mut packet = publish5("kept/props", b"{}", QoS::AtLeastOnce, 1, properties.clone());
    if let Packet::Publish(ref mut publish) = packet {
        publish.retain = true;
    }
    p.send(&packet);
    assert!(matches!(p.recv(), Packet::PubAck(_)));
    let (mut late, _) = connect5(broker.port, v5("late"));
    late.subscribe(&[("kept/#", QoS::AtLeastOnce)]);
    let m = late.recv_publish();
    assert!(m.retain);
    assert_eq!(m.properties.content_type, properties.content_type);
    assert_eq!(m.properties.user_properties, properties.user_properties);
}

#[test]
fn response_information_only_when_asked_for() {
    let conf = config_file("response", "response_topic_prefix replies\n");
    let broker = Broker::start(&["-c", &conf]);
    let mut asking = v5("asker");
    asking.properties.request_response_information = Some(true);
    let (_a, ack) = connect5(broker.port, asking);
    assert_eq!(
        ack.properties.response_information.as_deref(),
        Some("replies/asker")
    );
    // [MQTT-3.1.2-28] not asked: not given.
    let (_b, ack) = connect5(broker.port, v5("quiet"));
    assert_eq!(ack.properties.response_information, None);
}

/// A client still sending when the broker disconnects it (answering what it read, as client
/// libraries do) reads the DISCONNECT and its reason, not a reset: the broker shuts its
/// write side and reads what comes for a while before closing.
#[test]
fn a_client_still_writing_reads_the_disconnect_reason() {
    Broker::each_threads(&[], |broker| {
        let (mut flood, _) = connect5(broker.port, v5("keeps-writing"));
        let mut burst = Vec::new();
        for id in 1..=21u16 {
            let packet = publish5("rm/flood", b"x", QoS::ExactlyOnce, id, Default::default());
            burst.extend_from_slice(&packet.to_bytes(ProtocolVersion::V5).unwrap());
        }
        flood.send_bytes(&burst);
        // The client answers the PUBRECs it has not read yet, as a library would, over a
        // while after the broker has sent its DISCONNECT: no write may fail.
        for id in 1..=40u16 {
            let rel = Packet::PubRel(PubResponse::new(id))
                .to_bytes(ProtocolVersion::V5)
                .unwrap();
            std::io::Write::write_all(&mut flood.stream, &rel)
                .unwrap_or_else(|e| panic!("write {id} after the DISCONNECT failed: {e}"));
            std::thread::sleep(Duration::from_millis(5));
        }
        let got = without_reason_strings(flood.expect_closed());
        assert_eq!(
            got.last(),
            Some(&Packet::Disconnect(Disconnect::with_reason(
                ReasonCode::ReceiveMaximumExceeded
            )))
        );
    });
}
