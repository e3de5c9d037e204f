//! `message_size_limit` is Mosquitto's bound on a message's payload (issue 11): a PUBLISH
//! over it is dropped and answered, a CONNECT whose will is over it refused. Packets are
//! bounded by `max_packet_size`, not by this.

mod common;

use common::*;
use midge::codec::*;

/// `name` keeps each test's file its own (tests run in parallel).
fn broker(name: &str) -> Broker {
    let conf = config_file(
        &format!("message-size-limit-{name}.conf"),
        "listener 0 127.0.0.1\nallow_anonymous true\nmessage_size_limit 4\n",
    );
    Broker::start_configured(&["-c", &conf])
}

fn client(port: u16, version: ProtocolVersion, id: &str) -> Raw {
    let (raw, ack) = Raw::connect_with(port, connect_packet(version, id, true, 60));
    assert_eq!(ack.reason, ReasonCode::Success);
    raw
}

#[test]
fn a_payload_over_the_limit_is_dropped_and_answered() {
    let broker = broker("publish");
    let mut sub = client(broker.port, ProtocolVersion::V311, "sub");
    sub.subscribe(&[("t", QoS::ExactlyOnce)]);
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let mut p = client(broker.port, version, "pub");
        // 3.1.1 cannot say why: a plain PUBACK/PUBREC, as Mosquitto. 5.0: 0x83.
        let refused = |packet_id| {
            let mut r = PubResponse::new(packet_id);
            if version == ProtocolVersion::V5 {
                r.reason = ReasonCode::ImplementationSpecificError;
            }
            r
        };
        p.send(&publish("t", b"12345", QoS::AtMostOnce, 0, false));
        p.send(&publish("t", b"12345", QoS::AtLeastOnce, 1, false));
        assert_eq!(p.recv(), Packet::PubAck(refused(1)));
        p.send(&publish("t", b"12345", QoS::ExactlyOnce, 2, false));
        assert_eq!(p.recv(), Packet::PubRec(refused(2)));
        // At the limit: delivered, and the first the subscriber sees.
        p.send(&publish("t", b"1234", QoS::AtMostOnce, 0, false));
        let got = sub.recv_publish();
        assert_eq!(&got.payload[..], b"1234", "{version:?}");
    }
    broker.wait_for_log("Dropped too large PUBLISH from pub");
}

#[test]
fn a_will_over_the_limit_is_refused() {
    let broker = broker("will");
    for (version, reason) in [
        (ProtocolVersion::V311, ReasonCode::NotAuthorized),
        (ProtocolVersion::V5, ReasonCode::PacketTooLarge),
    ] {
        let c = connect_with_will(version, "willing", QoS::AtMostOnce, false, b"12345");
        assert_eq!(Raw::connect_with(broker.port, c).1.reason, reason);
    }
}
