//! Bytes as Mosquitto writes them, where the spec leaves the choice free: tools and test
//! suites written against Mosquitto compare them (issue 11). Each test states the bytes.

mod common;

use common::*;
use midge::codec::*;

/// CONNACK properties come in Mosquitto's order: what the connection negotiated (Topic
/// Alias Maximum, Server Keep Alive, Assigned Client Identifier) before the broker's limits
/// (Receive Maximum).
#[test]
fn connack_properties_in_mosquittos_order() {
    let conf = config_file(
        "connack-order.conf",
        "listener 0 127.0.0.1\nallow_anonymous true\nmax_keepalive 60\n",
    );
    let broker = Broker::start_configured(&["-c", &conf]);
    let mut connect = connect_packet(ProtocolVersion::V5, "", true, 100);
    connect.client_id = s("");
    let mut raw = Raw::open(broker.port, ProtocolVersion::V5);
    raw.send(&Packet::Connect(Box::new(connect)));
    let head = raw.recv_bytes(2);
    assert_eq!(head[0], 0x20);
    let body = raw.recv_bytes(usize::from(head[1]));
    // Flags, reason, property length; then 0x22 Topic Alias Maximum 10, 0x13 Server Keep
    // Alive 60, 0x12 Assigned Client Identifier, 0x21 Receive Maximum 20.
    assert_eq!(&body[..3], &[0x00, 0x00, body[2]]);
    assert_eq!(
        &body[3..9],
        &[0x22, 0x00, 0x0A, 0x13, 0x00, 0x3C],
        "{body:02X?}"
    );
    assert_eq!(body[9], 0x12, "{body:02X?}");
    let id_len = usize::from(u16::from_be_bytes([body[10], body[11]]));
    // The assigned identifier is shaped as Mosquitto's: "auto-" and a UUID's 36 characters.
    assert_eq!(id_len, "auto-".len() + 36);
    assert_eq!(&body[12..17], b"auto-");
    assert_eq!(&body[12 + id_len..], &[0x21, 0x00, 0x14], "{body:02X?}");
}

fn connect5(port: u16, id: &str) -> Raw {
    let (raw, ack) = Raw::connect_with(port, connect_packet(ProtocolVersion::V5, id, true, 60));
    assert_eq!(ack.reason, ReasonCode::Success);
    raw
}

/// 5.0: a QoS 1 PUBLISH that matched no subscription is acknowledged with 0x10 No matching
/// subscribers; with one, 0x00 in the short form.
#[test]
fn puback_says_no_matching_subscribers() {
    let broker = Broker::start(&[]);
    let mut p = connect5(broker.port, "lonely");
    p.send(&publish("nobody/listens", b"x", QoS::AtLeastOnce, 7, false));
    assert_eq!(p.recv_bytes(5), [0x40, 0x03, 0x00, 0x07, 0x10]);
    let mut sub = connect5(broker.port, "listener");
    sub.subscribe(&[("nobody/listens", QoS::AtMostOnce)]);
    p.send(&publish("nobody/listens", b"x", QoS::AtLeastOnce, 8, false));
    assert_eq!(p.recv_bytes(4), [0x40, 0x02, 0x00, 0x08]);
}

/// A client that receives its own message gets the acknowledgement first, then the
/// message, as Mosquitto writes them.
#[test]
fn the_acknowledgement_comes_before_the_message_delivered_back() {
    let broker = Broker::start(&[]);
    let mut c = Raw::connect(broker.port, "echo");
    c.subscribe(&[("echo", QoS::AtLeastOnce)]);
    c.send(&publish("echo", b"x", QoS::AtLeastOnce, 300, false));
    // PUBACK 300, then the PUBLISH (QoS 1, packet id 1).
    assert_eq!(c.recv_bytes(4), [0x40, 0x02, 0x01, 0x2C]);
    assert!(matches!(c.recv(), Packet::Publish(p) if p.payload[..] == b"x"[..]));
}

/// The broker's DISCONNECT carries the reason code only (no Reason String), as Mosquitto's.
#[test]
fn disconnect_is_the_reason_code_alone() {
    let broker = Broker::start(&[]);
    let mut c = connect5(broker.port, "aliased");
    let mut bad = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: s("t"),
        packet_id: 0,
        properties: Properties::default(),
        payload: bytes::Bytes::from_static(b"x"),
    };
    // Topic Alias above the broker's Topic Alias Maximum (10): 0x94. [MQTT-3.3.2-9]
    bad.properties.topic_alias = Some(11);
    c.send(&Packet::Publish(bad));
    assert_eq!(c.recv_bytes(3), [0xE0, 0x01, 0x94]);
}

/// 5.0: a subscriber that answers a QoS 2 PUBLISH with a PUBREC error code ends that
/// exchange: no PUBREL follows [MQTT-4.3.3-4], and the next message goes out.
#[test]
fn a_pubrec_error_ends_the_exchange() {
    let broker = Broker::start(&[]);
    let mut sub = connect5(broker.port, "refuser");
    sub.subscribe(&[("q2", QoS::ExactlyOnce)]);
    let mut p = Raw::connect(broker.port, "sender");
    p.send(&publish("q2", b"one", QoS::ExactlyOnce, 1, false));
    let first = sub.recv_publish();
    let mut refusal = PubResponse::new(first.packet_id);
    refusal.reason = ReasonCode::ImplementationSpecificError;
    sub.send(&Packet::PubRec(refusal));
    p.send(&publish("q2", b"two", QoS::AtMostOnce, 0, false));
    // The next packet is the second message, not a PUBREL for the first.
    match sub.recv() {
        Packet::Publish(second) => assert_eq!(&second.payload[..], b"two"),
        other => panic!("expected the second PUBLISH, got {other:?}"),
    }
}

/// The wrong acknowledgement for a message in flight (PUBCOMP for QoS 1, PUBACK for
/// QoS 2) closes the connection, as Mosquitto does; one for an unknown packet identifier
/// is ignored.
#[test]
fn the_wrong_acknowledgement_closes_the_connection() {
    let broker = Broker::start(&[]);
    for (qos, wrong) in [
        (QoS::AtLeastOnce, Packet::PubComp(PubResponse::new(1))),
        (QoS::ExactlyOnce, Packet::PubAck(PubResponse::new(1))),
    ] {
        let mut sub = Raw::connect(broker.port, "acker");
        sub.subscribe(&[("acks", qos)]);
        let mut p = Raw::connect(broker.port, "acked");
        // Unknown ids first: ignored, the connection stays.
        sub.send(&Packet::PubAck(PubResponse::new(77)));
        sub.send(&Packet::PubComp(PubResponse::new(78)));
        p.send(&publish("acks", b"x", QoS::AtMostOnce, 0, false));
        assert_eq!(&sub.recv_publish().payload[..], b"x");
        p.send(&publish("acks", b"y", qos, 1, false));
        let got = sub.recv_publish();
        assert_eq!(got.packet_id, 1);
        sub.send(&wrong);
        assert!(sub.expect_closed().is_empty(), "{qos:?}");
    }
}

/// A PUBREL for a packet identifier the broker no longer holds (sent again after a
/// reconnect) is answered with a plain PUBCOMP, as Mosquitto answers it.
#[test]
fn a_repeated_pubrel_gets_a_plain_pubcomp() {
    let broker = Broker::start(&[]);
    let mut c = connect5(broker.port, "repeat");
    c.send(&Packet::PubRel(PubResponse::new(9)));
    assert_eq!(c.recv_bytes(4), [0x70, 0x02, 0x00, 0x09]);
}

/// A topic name of more levels than the broker keeps (Mosquitto's limit, 200 separators)
/// ends the connection: 5.0 with DISCONNECT 0x82, as Mosquitto; 3.1.1 closed. Neither is
/// logged whole (a 65,535-level topic would make one log line of 64 KiB).
#[test]
fn a_topic_of_too_many_levels_ends_the_connection() {
    let broker = Broker::start(&[]);
    let deep = "/".repeat(65_535);
    let mut c5 = connect5(broker.port, "deep5");
    c5.send(&publish(&deep, b"x", QoS::AtLeastOnce, 1, false));
    assert_eq!(c5.recv_bytes(3), [0xE0, 0x01, 0x82]);
    let mut c3 = Raw::connect(broker.port, "deep3");
    c3.send(&publish(&deep, b"x", QoS::AtLeastOnce, 1, false));
    assert!(c3.expect_closed().is_empty());
    assert!(broker.log_lines().iter().all(|line| line.len() < 4096));
}

/// A subscription filter beyond the level limit ends the connection as Mosquitto ends it
/// (5.0: DISCONNECT 0x81; 3.1.1: closed); 200 separators are still fine.
#[test]
fn a_filter_of_too_many_levels_ends_the_connection() {
    let broker = Broker::start(&[]);
    let mut ok = Raw::connect(broker.port, "shallow");
    let granted = ok.subscribe(&[(&"/".repeat(200), QoS::AtMostOnce)]);
    assert_eq!(granted.reasons, vec![ReasonCode::GRANTED_QOS_0]);
    let deep = "/".repeat(65_535);
    let mut c5 = connect5(broker.port, "deep5");
    c5.send(&subscribe(1, &[(&deep, QoS::AtMostOnce)]));
    assert_eq!(c5.recv_bytes(3), [0xE0, 0x01, 0x81]);
    let mut c3 = Raw::connect(broker.port, "deep3");
    c3.send(&subscribe(1, &[(&deep, QoS::AtMostOnce)]));
    assert!(c3.expect_closed().is_empty());
    assert!(broker.log_lines().iter().all(|line| line.len() < 4096));
}

/// A share group's messages go to its members in turn, in the order they subscribed, each
/// group on its own (as Mosquitto rotates them): with groups one = [a, b, c] and
/// two = [b, d], three messages go to a+b, b+d, c+b.
#[test]
fn share_groups_take_turns_in_subscription_order() {
    let broker = Broker::start(&[]);
    let mut a = connect5(broker.port, "a");
    let mut b = connect5(broker.port, "b");
    let mut c = connect5(broker.port, "c");
    let mut d = connect5(broker.port, "d");
    a.subscribe(&[("$share/one/t", QoS::AtMostOnce)]);
    b.subscribe(&[("$share/one/t", QoS::AtMostOnce)]);
    b.subscribe(&[("$share/two/t", QoS::AtMostOnce)]);
    d.subscribe(&[("$share/two/t", QoS::AtMostOnce)]);
    c.subscribe(&[("$share/one/t", QoS::AtMostOnce)]);
    let mut p = connect5(broker.port, "p");
    for n in [b"1", b"2", b"3"] {
        p.send(&publish("t", n, QoS::AtMostOnce, 0, false));
    }
    let payload = |raw: &mut Raw| raw.recv_publish().payload.to_vec();
    assert_eq!(payload(&mut a), b"1");
    assert_eq!(payload(&mut b), b"1");
    assert_eq!(payload(&mut b), b"2");
    assert_eq!(payload(&mut d), b"2");
    assert_eq!(payload(&mut c), b"3");
    assert_eq!(payload(&mut b), b"3");
}

/// Not even the CONNACK may exceed the client's Maximum Packet Size [MQTT-3.1.2-24]: a
/// client that says 2 bytes is closed without one.
#[test]
fn a_client_that_cannot_take_the_connack_is_closed_without_one() {
    let broker = Broker::start(&[]);
    let mut connect = connect_packet(ProtocolVersion::V5, "tiny", true, 60);
    connect.properties.maximum_packet_size = Some(2);
    let mut raw = Raw::open(broker.port, ProtocolVersion::V5);
    raw.send(&Packet::Connect(Box::new(connect)));
    assert!(raw.expect_closed().is_empty());
}

/// A wildcard in a Topic Name [MQTT-3.3.2-2] ends the connection with 0x82, Mosquitto's
/// code (0x90 would say the name was well formed).
#[test]
fn a_wildcard_topic_name_is_a_protocol_error() {
    let broker = Broker::start(&[]);
    let mut c = connect5(broker.port, "wild");
    c.send_bytes(&[0x30, 0x07, 0x00, 0x03, b'a', b'/', b'+', 0x00, b'x']);
    assert_eq!(c.recv_bytes(3), [0xE0, 0x01, 0x82]);
}

/// A message's properties are forwarded in the order its publisher wrote them (user
/// properties interleaved with the others), as Mosquitto forwards them: a QoS 0 PUBLISH
/// reaches a 5.0 subscriber byte for byte.
#[test]
fn properties_are_forwarded_in_the_publishers_order() {
    let broker = Broker::start(&[]);
    let mut sub = connect5(broker.port, "ordered-sub");
    sub.subscribe(&[("o", QoS::AtMostOnce)]);
    let mut p = connect5(broker.port, "ordered-pub");
    let mut props = Vec::new();
    props.extend_from_slice(&[0x26, 0, 4, b'k', b'e', b'y', b'1', 0, 2, b'v', b'1']);
    props.extend_from_slice(&[0x08, 0, 3, b'r', b'/', b't']);
    props.extend_from_slice(&[0x09, 0, 2, b'c', b'd']);
    props.extend_from_slice(&[0x01, 0x01]);
    props.extend_from_slice(&[0x03, 0, 4, b't', b'e', b'x', b't']);
    props.extend_from_slice(&[0x26, 0, 4, b'k', b'e', b'y', b'2', 0, 2, b'v', b'2']);
    let mut body = vec![0, 1, b'o', props.len() as u8];
    body.extend_from_slice(&props);
    body.extend_from_slice(b"payload");
    let mut packet = vec![0x30, body.len() as u8];
    packet.extend_from_slice(&body);
    p.send_bytes(&packet);
    assert_eq!(sub.recv_bytes(packet.len()), packet);
}
