//! Helpers of the bridge tests: midge with a bridge to a port, and clients that complete
//! the QoS handshakes.

use super::*;

/// midge on a free loopback port with one bridge, `name`, to `remote_port`, retrying every
/// second; `lines` are the bridge's further options (its topics).
pub fn midge_bridged(name: &str, remote_port: u16, lines: &str) -> Broker {
    let conf = config_file(
        name,
        &format!(
            "listener 0 127.0.0.1\nallow_anonymous true\n\nconnection {name}\naddress 127.0.0.1:{remote_port}\nrestart_timeout 1\n{lines}\n"
        ),
    );
    Broker::start_configured(&["-c", &conf])
}

/// Publishes and completes the handshake of its QoS (PUBACK, or PUBREC/PUBREL/PUBCOMP).
pub fn publish_qos(c: &mut Raw, topic: &str, payload: &[u8], qos: QoS, packet_id: u16) {
    c.send(&publish(topic, payload, qos, packet_id, false));
    match qos {
        QoS::AtMostOnce => {}
        QoS::AtLeastOnce => assert!(matches!(c.recv(), Packet::PubAck(_))),
        QoS::ExactlyOnce => {
            assert!(matches!(c.recv(), Packet::PubRec(_)));
            c.send(&Packet::PubRel(PubResponse::new(packet_id)));
            assert!(matches!(c.recv(), Packet::PubComp(_)));
        }
    }
}

/// The next PUBLISH, acknowledged as its QoS asks (QoS 2: PUBREC, then PUBCOMP for the
/// PUBREL that follows).
pub fn recv_acked(c: &mut Raw) -> Publish {
    let p = c.recv_publish();
    match p.qos {
        QoS::AtMostOnce => {}
        QoS::AtLeastOnce => c.send(&Packet::PubAck(PubResponse::new(p.packet_id))),
        QoS::ExactlyOnce => {
            c.send(&Packet::PubRec(PubResponse::new(p.packet_id)));
            match c.recv() {
                Packet::PubRel(rel) => c.send(&Packet::PubComp(PubResponse::new(rel.packet_id))),
                other => panic!("expected PUBREL, got {other:?}"),
            }
        }
    }
    p
}

/// The next PUBLISH (acknowledged), which must be on `topic`.
pub fn recv_topic(c: &mut Raw, topic: &str) -> Publish {
    let p = recv_acked(c);
    assert_eq!(&*p.topic, topic, "payload {:?}", p.payload);
    p
}

/// A persistent 3.1.1 client.
pub fn persistent_client(port: u16, id: &str) -> (Raw, ConnAck) {
    Raw::connect_with(port, connect_packet(ProtocolVersion::V311, id, false, 60))
}
