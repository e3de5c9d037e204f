//! Mosquitto 2.0 options the broker test suite uses (issue 11): `retain_available`,
//! `max_qos`, `upgrade_outgoing_qos`.

mod common;

use common::*;
use midge::codec::*;

/// A broker with `options`; `name` keeps each test's file its own (tests run in parallel).
fn broker(name: &str, options: &str) -> Broker {
    let conf = config_file(
        &format!("mosquitto-options-{name}.conf"),
        &format!("listener 0 127.0.0.1\nallow_anonymous true\n{options}"),
    );
    Broker::start_configured(&["-c", &conf])
}

fn connect(port: u16, version: ProtocolVersion, id: &str) -> (Raw, ConnAck) {
    Raw::connect_with(port, connect_packet(version, id, true, 60))
}

/// retain_available false: 5.0 clients are told (Retain Available 0) and a retained
/// PUBLISH ends the connection with 0x9A [MQTT-3.2.2-14]; a 3.1.1 client is closed.
#[test]
fn retain_available_false_refuses_retained_messages() {
    let broker = broker("retain", "retain_available false\n");
    let (mut c5, ack) = connect(broker.port, ProtocolVersion::V5, "r5");
    assert_eq!(ack.properties.retain_available, Some(false));
    c5.send(&publish("t", b"x", QoS::AtLeastOnce, 1, true));
    assert_eq!(c5.recv_bytes(3), [0xE0, 0x01, 0x9A]);
    let (mut c3, _) = connect(broker.port, ProtocolVersion::V311, "r3");
    c3.send(&publish("t", b"x", QoS::AtMostOnce, 0, true));
    assert!(c3.expect_closed().is_empty());
    // A 5.0 will that would be retained is refused at CONNECT. [MQTT-3.2.2-13]
    let willing = connect_with_will(ProtocolVersion::V5, "w5", QoS::AtMostOnce, true, b"bye");
    let (_, ack) = Raw::connect_with(broker.port, willing);
    assert_eq!(ack.reason, ReasonCode::RetainNotSupported);
}

/// max_qos 1: told in CONNACK [MQTT-3.2.2-9], subscriptions granted at most 1
/// [MQTT-3.2.2-10], a QoS 2 PUBLISH ends the connection with 0x9B, a QoS 2 will is
/// refused [MQTT-3.2.2-12].
#[test]
fn max_qos_caps_what_clients_use() {
    let broker = broker("max-qos", "max_qos 1\n");
    let (mut c, ack) = connect(broker.port, ProtocolVersion::V5, "q");
    assert_eq!(ack.properties.maximum_qos, Some(1));
    let granted = c.subscribe(&[("t", QoS::ExactlyOnce)]);
    assert_eq!(granted.reasons, vec![ReasonCode::GrantedQos1]);
    c.send(&publish("t", b"x", QoS::ExactlyOnce, 1, false));
    assert_eq!(c.recv_bytes(3), [0xE0, 0x01, 0x9B]);
    let willing = connect_with_will(ProtocolVersion::V5, "w", QoS::ExactlyOnce, false, b"bye");
    let (_, ack) = Raw::connect_with(broker.port, willing);
    assert_eq!(ack.reason, ReasonCode::QosNotSupported);
}

/// upgrade_outgoing_qos: a QoS 0 message reaches a QoS 1 subscription at QoS 1.
#[test]
fn upgrade_outgoing_qos_sends_at_the_subscriptions_qos() {
    let broker = broker("upgrade", "upgrade_outgoing_qos true\n");
    let mut sub = Raw::connect(broker.port, "sub");
    sub.subscribe(&[("t", QoS::AtLeastOnce)]);
    let mut p = Raw::connect(broker.port, "pub");
    p.send(&publish("t", b"up", QoS::AtMostOnce, 0, false));
    let got = sub.recv_publish();
    assert_eq!((got.qos, &got.payload[..]), (QoS::AtLeastOnce, &b"up"[..]));
    assert_ne!(got.packet_id, 0);
}

/// Clients cannot forge the broker's `$SYS` topics nor publish to `$share/...`, ACL or not
/// (Mosquitto's rule; a bridge's connection state topic is the exception). 5.0 is told
/// 0x87; a subscriber to `$SYS/#` sees none of it.
#[test]
fn clients_cannot_publish_to_sys_or_share_topics() {
    let broker = broker("sys", "sys_interval 0\n");
    let mut watcher = Raw::connect(broker.port, "watcher");
    watcher.subscribe(&[("$SYS/#", QoS::AtMostOnce), ("marker", QoS::AtMostOnce)]);
    let (mut c, _) = connect(broker.port, ProtocolVersion::V5, "forger");
    let mut answer = |topic: &str, id: u16| {
        c.send(&publish(topic, b"forged", QoS::AtLeastOnce, id, false));
        match c.recv() {
            Packet::PubAck(ack) => ack.reason,
            other => panic!("expected PUBACK, got {other:?}"),
        }
    };
    assert_eq!(answer("$SYS/broker/uptime", 1), ReasonCode::NotAuthorized);
    assert_eq!(answer("$share/g/t", 2), ReasonCode::NotAuthorized);
    assert_eq!(
        answer("$SYS/broker/connection/me/state", 3),
        ReasonCode::Success
    );
    c.send(&publish("marker", b"m", QoS::AtMostOnce, 0, false));
    let first = watcher.recv_publish();
    assert_eq!(first.topic.as_str(), "$SYS/broker/connection/me/state");
    assert_eq!(watcher.recv_publish().topic.as_str(), "marker");
}
