//! Retained messages and wills over real sockets.

mod common;

use common::*;
use midge::codec::*;

#[test]
fn retained_messages_are_stored_replaced_deleted_and_sent_on_subscribe() {
    Broker::each_threads(&[], |broker| {
        let mut publisher = Raw::connect(broker.port, "pub");
        publisher.send(&publish("r/a", b"first", QoS::AtMostOnce, 0, true));
        publisher.send(&publish("r/a", b"second", QoS::AtLeastOnce, 1, true));
        assert!(matches!(publisher.recv(), Packet::PubAck(_)));
        publisher.send(&publish("r/b", b"gone", QoS::AtMostOnce, 0, true));
        // [MQTT-3.3.1-10] an empty retained payload deletes.
        publisher.send(&publish("r/b", b"", QoS::AtMostOnce, 0, true));
        publisher.send(&publish("$dollar/r", b"dollar", QoS::AtMostOnce, 0, true));
        publisher.send(&Packet::PingReq);
        assert_eq!(publisher.recv(), Packet::PingResp);

        let mut sub = Raw::connect(broker.port, "sub");
        sub.subscribe(&[("r/#", QoS::AtLeastOnce)]);
        // [MQTT-3.3.1-8] sent with RETAIN set, at min(published, granted) QoS.
        let p = sub.recv_publish();
        assert_eq!(
            (p.topic.as_str(), &p.payload[..], p.retain, p.qos),
            ("r/a", &b"second"[..], true, QoS::AtLeastOnce)
        );
        sub.send(&Packet::PubAck(PubResponse::new(p.packet_id)));
        // A live message to a subscriber is sent with RETAIN 0. [MQTT-3.3.1-9]
        publisher.send(&publish("r/a", b"live", QoS::AtMostOnce, 0, true));
        let p = sub.recv_publish();
        assert_eq!((&p.payload[..], p.retain), (&b"live"[..], false));

        // [MQTT-4.7.2-1] '#' does not see '$' topics, retained or not; "$dollar/#" does.
        let mut all = Raw::connect(broker.port, "all");
        all.subscribe(&[("#", QoS::AtMostOnce)]);
        let p = all.recv_publish();
        assert_eq!(p.topic.as_str(), "r/a");
        let mut sys = Raw::connect(broker.port, "sys");
        sys.subscribe(&[("$dollar/#", QoS::AtMostOnce)]);
        assert_eq!(&sys.recv_publish().payload[..], b"dollar");
        publisher.send(&publish("marker", b"m", QoS::AtMostOnce, 0, false));
        assert_eq!(all.recv_publish().topic.as_str(), "marker");
    });
}

fn with_will(client_id: &str, keep_alive: u16, qos: QoS, retain: bool) -> Connect {
    let mut c = connect_packet(ProtocolVersion::V311, client_id, true, keep_alive);
    c.will = Some(Will {
        qos,
        retain,
        properties: Properties::default(),
        topic: s("will/topic"),
        payload: bytes::Bytes::from_static(b"gone"),
    });
    c
}

#[test]
fn wills_on_socket_close_and_keepalive_but_not_on_disconnect() {
    Broker::each_threads(&[], |broker| {
        let mut watcher = Raw::connect(broker.port, "watcher");
        watcher.subscribe(&[("will/#", QoS::ExactlyOnce)]);

        // DISCONNECT: no will. [MQTT-3.14.4-3]
        let (mut polite, _) =
            Raw::connect_with(broker.port, with_will("polite", 60, QoS::AtMostOnce, false));
        polite.send(&Packet::Disconnect(Disconnect::default()));
        polite.expect_closed();

        // The socket closes without DISCONNECT: the will, at its QoS. [MQTT-3.1.2-8]
        let (abrupt, _) = Raw::connect_with(
            broker.port,
            with_will("abrupt", 60, QoS::AtLeastOnce, false),
        );
        drop(abrupt);
        let p = watcher.recv_publish();
        assert_eq!(
            (p.topic.as_str(), &p.payload[..], p.qos),
            ("will/topic", &b"gone"[..], QoS::AtLeastOnce)
        );
        watcher.send(&Packet::PubAck(PubResponse::new(p.packet_id)));
        broker.wait_for_log("Client abrupt closed its connection.");

        // Keepalive timeout: the will, retained as asked.
        let (_silent, _) =
            Raw::connect_with(broker.port, with_will("silent", 1, QoS::AtMostOnce, true));
        let p = watcher.recv_publish();
        assert_eq!((&p.payload[..], p.qos), (&b"gone"[..], QoS::AtMostOnce));
        broker.wait_for_log("Client silent has exceeded timeout, disconnecting.");
        let mut late = Raw::connect(broker.port, "late");
        late.subscribe(&[("will/topic", QoS::AtMostOnce)]);
        let p = late.recv_publish();
        assert!(p.retain, "the will was retained");

        // A protocol error: the will too.
        let (mut rude, _) =
            Raw::connect_with(broker.port, with_will("rude", 60, QoS::AtMostOnce, false));
        rude.send_bytes(&[0x00, 0x00]);
        rude.expect_closed();
        assert_eq!(&watcher.recv_publish().payload[..], b"gone");
    });
}

#[test]
fn several_retained_messages_each_arrive_with_their_own_topic_and_payload() {
    // Regression: one subscription matching several retained messages of the same QoS once
    // got the first message's encoding for all of them.
    Broker::each_threads(&[], |broker| {
        let mut publisher = Raw::connect(broker.port, "keeper");
        for (i, topic) in ["many/1", "many/2", "many/3"].iter().enumerate() {
            let payload = format!("payload {i}");
            publisher.send(&publish(
                topic,
                payload.as_bytes(),
                QoS::AtLeastOnce,
                i as u16 + 1,
                true,
            ));
            assert!(matches!(publisher.recv(), Packet::PubAck(_)));
        }
        let mut sub = Raw::connect(broker.port, "reader");
        sub.subscribe(&[("many/#", QoS::AtMostOnce)]);
        let mut got: Vec<(String, Vec<u8>)> = (0..3)
            .map(|_| {
                let p = sub.recv_publish();
                (p.topic.to_string(), p.payload.to_vec())
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("many/1".to_string(), b"payload 0".to_vec()),
                ("many/2".to_string(), b"payload 1".to_vec()),
                ("many/3".to_string(), b"payload 2".to_vec()),
            ]
        );
    });
}
