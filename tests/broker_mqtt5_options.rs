//! MQTT 5.0 subscription options, subscription identifiers, shared subscriptions, forwarded
//! properties across versions, payload format checks and delayed wills.

mod common;

use common::*;
use midge::codec::*;
use std::time::Duration;

fn v5(client_id: &str) -> Connect {
    connect_packet(ProtocolVersion::V5, client_id, true, 60)
}

fn connect5(port: u16, connect: Connect) -> Raw {
    let (raw, ack) = Raw::connect_with(port, connect);
    assert_eq!(ack.reason, ReasonCode::Success);
    raw
}

fn subscribe5(
    c: &mut Raw,
    filters: &[(&str, SubscriptionOptions)],
    identifier: Option<u32>,
) -> SubAck {
    let mut properties = Properties::default();
    if let Some(id) = identifier {
        properties.subscription_identifiers.push(id);
    }
    c.send(&Packet::Subscribe(Subscribe {
        packet_id: 9,
        properties,
        filters: filters.iter().map(|(f, o)| (s(f), *o)).collect(),
    }));
    match c.recv() {
        Packet::SubAck(ack) => ack,
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

fn opts(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        ..Default::default()
    }
}

#[test]
fn no_local_retain_as_published_and_retain_handling() {
    let broker = Broker::start(&[]);
    let mut c = connect5(broker.port, v5("self"));
    let no_local = SubscriptionOptions {
        no_local: true,
        ..opts(QoS::AtMostOnce)
    };
    let rap = SubscriptionOptions {
        retain_as_published: true,
        ..opts(QoS::AtMostOnce)
    };
    subscribe5(&mut c, &[("nl/#", no_local), ("rap/#", rap)], None);
    // [MQTT-3.8.3-3] No Local: its own message is not sent back.
    c.send(&publish("nl/x", b"mine", QoS::AtMostOnce, 0, false));
    // Retain As Published: the RETAIN flag as the publisher set it. [MQTT-3.3.1-12]
    c.send(&publish("rap/x", b"kept", QoS::AtMostOnce, 0, true));
    let p = c.recv_publish();
    assert_eq!((p.topic.as_str(), p.retain), ("rap/x", true));
    // Retain Handling 1: retained messages only for a new subscription; 2: never.
    let rh1 = SubscriptionOptions {
        retain_handling: RetainHandling::SendAtNewSubscribe,
        ..opts(QoS::AtMostOnce)
    };
    let rh2 = SubscriptionOptions {
        retain_handling: RetainHandling::DoNotSend,
        ..opts(QoS::AtMostOnce)
    };
    let mut d = connect5(broker.port, v5("rh"));
    subscribe5(&mut d, &[("rap/#", rh1)], None);
    assert_eq!(&d.recv_publish().payload[..], b"kept");
    subscribe5(&mut d, &[("rap/#", rh1)], None); // not new: nothing
    subscribe5(&mut d, &[("rap/+", rh2)], None); // never
    c.send(&publish("rap/marker", b"marker", QoS::AtMostOnce, 0, false));
    let p = d.recv_publish();
    assert_eq!(
        &p.payload[..],
        b"marker",
        "no retained copy came before the marker"
    );
}

#[test]
fn subscription_identifiers_and_shared_subscriptions() {
    Broker::each_threads(&[], |broker| {
        let mut c = connect5(broker.port, v5("ids"));
        subscribe5(&mut c, &[("sid/+", opts(QoS::AtMostOnce))], Some(7));
        subscribe5(&mut c, &[("sid/#", opts(QoS::AtMostOnce))], Some(42));
        let mut p = Raw::connect(broker.port, "pub");
        p.send(&publish("sid/x", b"1", QoS::AtMostOnce, 0, true));
        // One delivery carrying both identifiers (both subscriptions match).
        let m = c.recv_publish();
        let mut ids = m.properties.subscription_identifiers.to_vec();
        ids.sort();
        assert_eq!(ids, vec![7, 42]);

        // A shared group: each message to exactly one member; no retained message on a
        // shared subscribe (5.0 §4.8.2).
        let mut members: Vec<Raw> = (0..3)
            .map(|i| connect5(broker.port, v5(&format!("member-{i}"))))
            .collect();
        for m in &mut members {
            subscribe5(m, &[("$share/g/sid/#", opts(QoS::AtLeastOnce))], None);
        }
        for i in 0..30u8 {
            p.send(&publish(
                "sid/y",
                &[i],
                QoS::AtLeastOnce,
                u16::from(i) + 1,
                false,
            ));
            assert!(matches!(p.recv(), Packet::PubAck(_)));
        }
        // Collect from every member until all 30 are in (cross-shard deliveries may come
        // after the publisher's PUBACK), answering each PUBLISH.
        let mut seen = Vec::new();
        let until = std::time::Instant::now() + DEADLINE;
        while seen.len() < 30 {
            assert!(
                std::time::Instant::now() < until,
                "only {} of 30 arrived",
                seen.len()
            );
            for m in &mut members {
                if let Some(packet) = m.poll_packet(Duration::from_millis(10)) {
                    let Packet::Publish(x) = packet else {
                        panic!("{packet:?}")
                    };
                    assert_ne!(
                        &x.payload[..],
                        b"1",
                        "no retained message on a shared subscribe"
                    );
                    m.send(&Packet::PubAck(PubResponse::new(x.packet_id)));
                    seen.push(x.payload[0]);
                }
            }
        }
        seen.sort();
        assert_eq!(
            seen,
            (0..30).collect::<Vec<u8>>(),
            "each message to exactly one member"
        );
    });
}

#[test]
fn properties_are_forwarded_in_order_and_dropped_for_3_1_1() {
    let broker = Broker::start(&[]);
    let mut five = connect5(broker.port, v5("five"));
    subscribe5(&mut five, &[("props", opts(QoS::AtMostOnce))], None);
    let mut three = Raw::connect(broker.port, "three");
    three.subscribe(&[("props", QoS::AtMostOnce)]);
    let mut p = connect5(broker.port, v5("props-pub"));
    let mut properties = PropertyValues {
        content_type: Some(s("text/plain")),
        response_topic: Some(s("reply/here")),
        correlation_data: Some(bytes::Bytes::from_static(b"\x01\x02")),
        payload_format_indicator: Some(1),
        ..Default::default()
    };
    properties.user_properties = [(s("b"), s("2")), (s("a"), s("1")), (s("b"), s("3"))]
        .into_iter()
        .collect();
    let sent: Properties = properties.clone().into();
    p.send(&Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: s("props"),
        packet_id: 0,
        properties: sent.clone(),
        payload: bytes::Bytes::from_static(b"hello"),
    }));
    // [MQTT-3.3.2-17] [MQTT-3.3.2-18] forwarded unchanged, user properties in order.
    assert_eq!(five.recv_publish().properties, sent);
    // A 3.1.1 subscriber gets the message without properties.
    let m = three.recv_publish();
    assert_eq!(&m.payload[..], b"hello");
}

#[test]
fn a_payload_that_is_not_the_utf8_it_claims_is_refused() {
    let broker = Broker::start(&[]);
    let mut p = connect5(broker.port, v5("bad-utf8"));
    let bad = |qos, id| {
        Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: s("pfi"),
            packet_id: id,
            properties: PropertyValues {
                payload_format_indicator: Some(1),
                ..Default::default()
            }
            .into(),
            payload: bytes::Bytes::from_static(b"\xFF\xFE"),
        })
    };
    p.send(&bad(QoS::AtLeastOnce, 1));
    // By default a client gets a Reason String with the refusal...
    let Packet::PubAck(refused) = p.recv() else {
        panic!("expected PUBACK")
    };
    assert_eq!(
        (refused.packet_id, refused.reason),
        (1, ReasonCode::PayloadFormatInvalid)
    );
    assert!(refused.properties.reason_string.is_some());
    // ...but not when it asked for no problem information. [MQTT-3.1.2-29]
    let mut quiet = v5("quiet");
    quiet.properties.request_problem_information = Some(false);
    let mut q = connect5(broker.port, quiet);
    q.send(&bad(QoS::AtLeastOnce, 2));
    let mut refused = PubResponse::new(2);
    refused.reason = ReasonCode::PayloadFormatInvalid;
    assert_eq!(q.recv(), Packet::PubAck(refused));
    p.send(&bad(QoS::AtMostOnce, 0));
    // QoS 0 has nothing to answer with: DISCONNECT, with no Reason String (as Mosquitto:
    // the why is in the broker's log).
    let closing = p.expect_closed();
    assert_eq!(
        closing,
        vec![Packet::Disconnect(Disconnect::with_reason(
            ReasonCode::PayloadFormatInvalid
        ))]
    );
}

#[test]
fn a_delayed_will_waits_and_a_resume_cancels_it() {
    let broker = Broker::start(&[]);
    let mut watcher = Raw::connect(broker.port, "watcher");
    watcher.subscribe(&[("dw/#", QoS::AtMostOnce)]);
    let with_delay = |id: &str, delay: u32| {
        let mut c = v5(id);
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(60);
        let mut properties = Properties::default();
        properties.will_delay_interval = Some(delay);
        c.will = Some(Will {
            qos: QoS::AtMostOnce,
            retain: false,
            properties,
            topic: s(&format!("dw/{id}")),
            payload: bytes::Bytes::from_static(b"late"),
        });
        c
    };
    // Dropped without DISCONNECT, not back within 1 s: the will goes out after the delay.
    let gone = connect5(broker.port, with_delay("gone", 1));
    let dropped_at = std::time::Instant::now();
    drop(gone);
    // Dropped too, but back within its 60 s delay: the will is cancelled.
    let back = connect5(broker.port, with_delay("back", 60));
    drop(back);
    broker.wait_for_log("Client back closed its connection.");
    let _back = connect5(broker.port, with_delay("back", 60));
    let m = watcher.recv_publish();
    assert_eq!(m.topic.as_str(), "dw/gone");
    assert!(
        dropped_at.elapsed() >= Duration::from_millis(900),
        "the will waited for its delay"
    );
    watcher.expect_nothing(Duration::from_millis(300));
}

#[test]
fn a_shared_group_passes_over_a_member_that_cannot_accept() {
    // One shard: the router knows every member's state.
    let broker = Broker::start(&["--threads", "1"]);
    let mut tight = v5("tight");
    tight.properties.receive_maximum = Some(1);
    let mut tight = connect5(broker.port, tight);
    let mut open = connect5(broker.port, v5("open"));
    for m in [&mut tight, &mut open] {
        subscribe5(m, &[("$share/g/work", opts(QoS::AtLeastOnce))], None);
    }
    let mut p = Raw::connect(broker.port, "pub");
    for i in 0..10u8 {
        p.send(&publish(
            "work",
            &[i],
            QoS::AtLeastOnce,
            u16::from(i) + 1,
            false,
        ));
        assert!(matches!(p.recv(), Packet::PubAck(_)));
    }
    // "tight" takes one and never acknowledges it: every other message goes to "open".
    let first = tight.recv_publish();
    let mut got = vec![first.payload[0]];
    for _ in 0..9 {
        let m = open.recv_publish();
        open.send(&Packet::PubAck(PubResponse::new(m.packet_id)));
        got.push(m.payload[0]);
    }
    got.sort();
    assert_eq!(got, (0..10).collect::<Vec<u8>>());
}

#[test]
fn a_delayed_will_goes_out_when_the_session_ends_first() {
    let broker = Broker::start(&[]);
    let mut watcher = Raw::connect(broker.port, "watcher");
    watcher.subscribe(&[("end/#", QoS::AtMostOnce)]);
    // Will delay 60 s, but the session expires after 1 s: the will goes with the session.
    let mut c = v5("short-session");
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(1);
    let mut properties = Properties::default();
    properties.will_delay_interval = Some(60);
    c.will = Some(Will {
        qos: QoS::AtMostOnce,
        retain: false,
        properties,
        topic: s("end/will"),
        payload: bytes::Bytes::from_static(b"ended"),
    });
    let client = connect5(broker.port, c);
    drop(client);
    broker.wait_for_log("Expiring client short-session due to timeout.");
    assert_eq!(&watcher.recv_publish().payload[..], b"ended");
}
