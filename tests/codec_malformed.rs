//! A corpus of malformed packets, each refused with the right error and the MQTT 5 reason code
//! the broker answers it with.

use bytes::Bytes;
use midge::codec::*;
use ProtocolVersion::*;

mod malformed;

use malformed::*;

#[test]
fn fixed_header() {
    // [MQTT-1.5.5-1] a remaining length of five bytes.
    refused(
        client(V311),
        Bytes::from_static(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
        |e| *e == DecodeError::MalformedVarint,
        MALFORMED,
    );
    // Four continuation bytes are enough to know it is malformed.
    let err = client(V311)
        .decode(&Bytes::from_static(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF]))
        .unwrap_err();
    assert_eq!(err, DecodeError::MalformedVarint);
    // [MQTT-1.5.5-1] not the minimum number of bytes.
    refused(
        client(V311),
        Bytes::from_static(&[0xC0, 0x80, 0x00]),
        |e| *e == DecodeError::MalformedVarint,
        MALFORMED,
    );
    // Reserved packet type 0; AUTH before 5.0.
    refused(
        client(V311),
        Bytes::from_static(&[0x00, 0x00]),
        |e| matches!(e, DecodeError::ReservedPacketType(0)),
        MALFORMED,
    );
    refused(
        client(V311),
        Bytes::from_static(&[0xF0, 0x00]),
        |e| matches!(e, DecodeError::NotInVersion { .. }),
        MALFORMED,
    );
    // [MQTT-2.1.3-1] reserved flags.
    refused(
        client(V311),
        Bytes::from_static(&[0xC1, 0x00]),
        |e| matches!(e, DecodeError::InvalidFlags { .. }),
        MALFORMED,
    );
    refused(
        client(V311),
        frame(0x80, &cat(&[&[0, 1], &s(b"a"), &[0]])),
        |e| matches!(e, DecodeError::InvalidFlags { .. }),
        MALFORMED,
    );
    // [MQTT-3.1.0-1] the first packet must be CONNECT.
    refused(
        server(),
        Bytes::from_static(&[0xC0, 0x00]),
        |e| matches!(e, DecodeError::ExpectedConnect(12)),
        PROTOCOL,
    );
    // A body longer than its packet needs.
    refused(
        client(V311),
        Bytes::from_static(&[0xC0, 0x01, 0x00]),
        |e| matches!(e, DecodeError::TrailingBytes(1)),
        MALFORMED,
    );
    refused(
        client(V311),
        frame(0x40, &[0, 1, 0]),
        |e| matches!(e, DecodeError::TrailingBytes(1)),
        MALFORMED,
    );
    // A string longer than the packet.
    refused(
        client(V311),
        frame(0x30, &[0, 5, b'a']),
        |e| *e == DecodeError::Truncated,
        MALFORMED,
    );
}

#[test]
fn oversize_is_refused_before_the_payload_arrives() {
    let decoder = Decoder::client(V311, 64);
    // Only the fixed header: the declared size alone is refused, nothing is buffered for it.
    let err = decoder
        .decode(&Bytes::from_static(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F]))
        .unwrap_err();
    assert_eq!(
        err,
        DecodeError::PacketTooLarge {
            size: 268_435_460,
            max: 64
        }
    );
    assert_eq!(err.reason_code(), ReasonCode::PacketTooLarge);
    // 64 bytes exactly is accepted.
    let body = cat(&[&s(b"t"), &[b'x'; 59]]);
    assert!(decode(decoder, &frame(0x30, &body)).is_ok());
    let body = cat(&[&s(b"t"), &[b'x'; 60]]);
    refused(
        decoder,
        frame(0x30, &body),
        |e| matches!(e, DecodeError::PacketTooLarge { size: 65, max: 64 }),
        ReasonCode::PacketTooLarge,
    );
}

#[test]
fn connect() {
    let ok = frame(0x10, &connect_body(b"MQTT", 4, 0x02, &[], &[]));
    assert!(decode(server(), &ok).is_ok());
    // [MQTT-3.1.2-1] wrong protocol name; [MQTT-3.1.2-2] unsupported level.
    refused(
        server(),
        frame(0x10, &connect_body(b"MQTX", 4, 0x02, &[], &[])),
        |e| matches!(e, DecodeError::InvalidProtocolName(_)),
        MALFORMED,
    );
    refused(
        server(),
        frame(0x10, &connect_body(b"MQTT", 6, 0x02, &[], &[])),
        |e| matches!(e, DecodeError::UnsupportedProtocolVersion(6)),
        ReasonCode::UnsupportedProtocolVersion,
    );
    refused(
        server(),
        frame(0x10, &connect_body(b"MQIsdp", 4, 0x02, &[], &[])),
        |e| matches!(e, DecodeError::UnsupportedProtocolVersion(4)),
        ReasonCode::UnsupportedProtocolVersion,
    );
    // [MQTT-3.1.2-3] reserved flag.
    refused(
        server(),
        frame(0x10, &connect_body(b"MQTT", 4, 0x03, &[], &[])),
        |e| *e == DecodeError::ReservedConnectFlag,
        MALFORMED,
    );
    // [MQTT-3.1.2-13] will QoS without will; [MQTT-3.1.2-15] will retain without will.
    refused(
        server(),
        frame(0x10, &connect_body(b"MQTT", 4, 0x0A, &[], &[])),
        |e| *e == DecodeError::WillFlagsWithoutWill,
        MALFORMED,
    );
    refused(
        server(),
        frame(0x10, &connect_body(b"MQTT", 4, 0x22, &[], &[])),
        |e| *e == DecodeError::WillFlagsWithoutWill,
        MALFORMED,
    );
    // [MQTT-3.1.2-14] will QoS 3.
    let will = cat(&[&s(b"w"), &s(b"bye")]);
    refused(
        server(),
        frame(0x10, &connect_body(b"MQTT", 4, 0x1E, &[], &will)),
        |e| *e == DecodeError::InvalidQos,
        MALFORMED,
    );
    // A will topic with a wildcard, or empty.
    let will = cat(&[&s(b"w/#"), &s(b"bye")]);
    refused(
        server(),
        frame(0x10, &connect_body(b"MQTT", 4, 0x06, &[], &will)),
        |e| matches!(e, DecodeError::WildcardInTopicName(_)),
        PROTOCOL,
    );
    let will = cat(&[&s(b""), &s(b"bye")]);
    refused(
        server(),
        frame(0x10, &connect_body(b"MQTT", 4, 0x06, &[], &will)),
        |e| *e == DecodeError::EmptyTopicName,
        PROTOCOL,
    );
    // [MQTT-3.1.2-22] password without user name, in 3.1.1 and 3.1 but not 5.0.
    refused(
        server(),
        frame(0x10, &connect_body(b"MQTT", 4, 0x42, &[], &s(b"pw"))),
        |e| *e == DecodeError::PasswordWithoutUsername,
        PROTOCOL,
    );
    refused(
        server(),
        frame(0x10, &connect_body(b"MQIsdp", 3, 0x42, &[], &s(b"pw"))),
        |e| *e == DecodeError::PasswordWithoutUsername,
        PROTOCOL,
    );
    let Packet::Connect(c) = decode(
        server(),
        &frame(0x10, &connect_body(b"MQTT", 5, 0x42, &[0], &s(b"pw"))),
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(c.password.as_deref(), Some(&b"pw"[..]));
    assert!(c.username.is_none());
    // 5.0: Receive Maximum 0 and Maximum Packet Size 0 are Protocol Errors.
    refused(
        server(),
        frame(0x10, &connect_body(b"MQTT", 5, 0x02, &[3, 0x21, 0, 0], &[])),
        |e| matches!(e, DecodeError::InvalidPropertyValue { .. }),
        PROTOCOL,
    );
    refused(
        server(),
        frame(
            0x10,
            &connect_body(b"MQTT", 5, 0x02, &[5, 0x27, 0, 0, 0, 0], &[]),
        ),
        |e| matches!(e, DecodeError::InvalidPropertyValue { .. }),
        PROTOCOL,
    );
    // 5.0: Request Problem Information other than 0 or 1.
    refused(
        server(),
        frame(0x10, &connect_body(b"MQTT", 5, 0x02, &[2, 0x17, 2], &[])),
        |e| matches!(e, DecodeError::InvalidPropertyValue { .. }),
        PROTOCOL,
    );
    // A Mosquitto bridge sets bit 7 of the level.
    let Packet::Connect(c) = decode(
        server(),
        &frame(0x10, &connect_body(b"MQTT", 0x84, 0x02, &[], &[])),
    )
    .unwrap() else {
        panic!()
    };
    assert!(c.bridge);
    assert_eq!(c.version, V311);
}

#[test]
fn strings() {
    let publish = |topic: &[u8]| frame(0x30, &cat(&[&s(topic), b"x"]));
    // [MQTT-1.5.4-1] ill-formed UTF-8, including an encoded surrogate (U+D800).
    refused(
        client(V311),
        publish(b"a\xFFb"),
        |e| *e == DecodeError::InvalidUtf8,
        MALFORMED,
    );
    refused(
        client(V311),
        publish(b"\xED\xA0\x80"),
        |e| *e == DecodeError::InvalidUtf8,
        MALFORMED,
    );
    // [MQTT-1.5.4-2] U+0000.
    refused(
        client(V311),
        publish(b"a\x00b"),
        |e| *e == DecodeError::NullCharacter,
        MALFORMED,
    );
    // Valid multi-byte text passes.
    assert!(decode(client(V311), &publish("häuser/温度".as_bytes())).is_ok());
}

#[test]
fn publish() {
    // [MQTT-3.3.2-2] wildcards in a topic name.
    refused(
        client(V311),
        frame(0x30, &cat(&[&s(b"a/#"), b"x"])),
        |e| matches!(e, DecodeError::WildcardInTopicName(_)),
        PROTOCOL,
    );
    refused(
        client(V311),
        frame(0x30, &cat(&[&s(b"a/+/b"), b"x"])),
        |e| matches!(e, DecodeError::WildcardInTopicName(_)),
        PROTOCOL,
    );
    // [MQTT-2.3.1-1] packet identifier 0 at QoS 1 (Protocol Error, as Mosquitto).
    refused(
        client(V311),
        frame(0x32, &cat(&[&s(b"a"), &[0, 0], b"x"])),
        |e| matches!(e, DecodeError::ZeroPacketId(_)),
        PROTOCOL,
    );
    // [MQTT-3.3.1-2] DUP at QoS 0.
    refused(
        client(V311),
        frame(0x38, &cat(&[&s(b"a"), b"x"])),
        |e| *e == DecodeError::DupOnQos0,
        MALFORMED,
    );
    // [MQTT-4.7.3-1] empty topic name (3.1.1), and in 5.0 without a Topic Alias.
    refused(
        client(V311),
        frame(0x30, &cat(&[&s(b""), b"x"])),
        |e| *e == DecodeError::EmptyTopicName,
        PROTOCOL,
    );
    refused(
        client(V5),
        frame(0x30, &cat(&[&s(b""), &[0], b"x"])),
        |e| *e == DecodeError::EmptyTopicName,
        PROTOCOL,
    );
    let Packet::Publish(p) = decode(
        client(V5),
        &frame(0x30, &cat(&[&s(b""), &[3, 0x23, 0, 7], b"x"])),
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(p.properties.topic_alias, Some(7));
}

#[test]
fn subscribe_and_unsubscribe() {
    // [MQTT-3.8.3-3] no filter; [MQTT-3.10.3-2] likewise for UNSUBSCRIBE.
    refused(
        client(V311),
        frame(0x82, &[0, 1]),
        |e| *e == DecodeError::NoTopicFilters,
        PROTOCOL,
    );
    refused(
        client(V311),
        frame(0xA2, &[0, 1]),
        |e| *e == DecodeError::NoTopicFilters,
        PROTOCOL,
    );
    refused(
        client(V5),
        frame(0x82, &[0, 1, 0]),
        |e| *e == DecodeError::NoTopicFilters,
        PROTOCOL,
    );
    // Packet identifier 0 (Malformed Packet in SUBSCRIBE, as Mosquitto).
    refused(
        client(V311),
        frame(0x82, &cat(&[&[0, 0], &s(b"a"), &[0]])),
        |e| matches!(e, DecodeError::ZeroPacketId(_)),
        MALFORMED,
    );
    // [MQTT-3-8.3-4] reserved bits of the requested QoS (3.1.1); QoS 3.
    refused(
        client(V311),
        frame(0x82, &cat(&[&[0, 1], &s(b"a"), &[0x04]])),
        |e| matches!(e, DecodeError::ReservedBits(_)),
        MALFORMED,
    );
    refused(
        client(V311),
        frame(0x82, &cat(&[&[0, 1], &s(b"a"), &[0x03]])),
        |e| *e == DecodeError::InvalidQos,
        MALFORMED,
    );
    // [MQTT-3.8.3-5] reserved bits of 5.0 options; Retain Handling 3.
    refused(
        client(V5),
        frame(0x82, &cat(&[&[0, 1, 0], &s(b"a"), &[0x40]])),
        |e| matches!(e, DecodeError::ReservedBits(_)),
        MALFORMED,
    );
    refused(
        client(V5),
        frame(0x82, &cat(&[&[0, 1, 0], &s(b"a"), &[0x30]])),
        |e| *e == DecodeError::InvalidRetainHandling,
        PROTOCOL,
    );
    // 5.0 options decode to their fields.
    let Packet::Subscribe(sub) = decode(
        client(V5),
        &frame(0x82, &cat(&[&[0, 1, 0], &s(b"a"), &[0x2E]])),
    )
    .unwrap() else {
        panic!()
    };
    let o = sub.filters[0].1;
    assert_eq!(
        (o.qos, o.no_local, o.retain_as_published, o.retain_handling),
        (QoS::ExactlyOnce, true, true, RetainHandling::DoNotSend)
    );
    // MQTT 3.1 let a resent SUBSCRIBE carry DUP; 3.1.1 does not.
    let dup = frame(0x8A, &cat(&[&[0, 1], &s(b"a"), &[0]]));
    assert!(decode(client(V31), &dup).is_ok());
    refused(
        client(V311),
        dup,
        |e| matches!(e, DecodeError::InvalidFlags { .. }),
        MALFORMED,
    );
}
