//! A corpus of malformed packets, each refused with the right error and the MQTT 5 reason code
//! the broker answers it with.

use bytes::Bytes;
use midge::codec::*;
use ProtocolVersion::*;

/// A packet with the given first byte and body; the remaining length is computed.
fn frame(first: u8, body: &[u8]) -> Bytes {
    let mut out = vec![first];
    put_varint(&mut out, body.len() as u32);
    out.extend_from_slice(body);
    Bytes::from(out)
}

/// A length-prefixed MQTT string or binary field.
fn s(data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(data);
    out
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A CONNECT body for `name`/`level` with `flags`, keepalive 60, client id "c", then `rest`.
fn connect_body(name: &[u8], level: u8, flags: u8, properties: &[u8], rest: &[u8]) -> Vec<u8> {
    cat(&[&s(name), &[level, flags, 0, 60], properties, &s(b"c"), rest])
}

fn decode(decoder: Decoder, bytes: &Bytes) -> Result<Packet, DecodeError> {
    match decoder.decode(bytes)? {
        Decoded::Packet { packet, .. } => Ok(packet),
        Decoded::Incomplete { needed } => panic!("incomplete ({needed:?}): {bytes:02X?}"),
    }
}

fn client(v: ProtocolVersion) -> Decoder {
    Decoder::client(v, 1 << 16)
}

fn server() -> Decoder {
    Decoder::server(1 << 16)
}

/// Checks that `bytes` is refused with an error for which `expected` holds, answered `reason`.
fn refused(decoder: Decoder, bytes: Bytes, expected: fn(&DecodeError) -> bool, reason: ReasonCode) {
    let err = decode(decoder, &bytes).expect_err(&format!("{bytes:02X?} should be refused"));
    assert!(expected(&err), "{bytes:02X?}: unexpected error {err:?}");
    assert_eq!(err.reason_code(), reason, "{err:?}");
}

const MALFORMED: ReasonCode = ReasonCode::MalformedPacket;
const PROTOCOL: ReasonCode = ReasonCode::ProtocolError;

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
        ReasonCode::TopicNameInvalid,
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
        ReasonCode::TopicNameInvalid,
    );
    refused(
        client(V311),
        frame(0x30, &cat(&[&s(b"a/+/b"), b"x"])),
        |e| matches!(e, DecodeError::WildcardInTopicName(_)),
        ReasonCode::TopicNameInvalid,
    );
    // [MQTT-2.3.1-1] packet identifier 0 at QoS 1.
    refused(
        client(V311),
        frame(0x32, &cat(&[&s(b"a"), &[0, 0], b"x"])),
        |e| *e == DecodeError::ZeroPacketId,
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
fn properties() {
    let publish = |props: &[u8]| frame(0x30, &cat(&[&s(b"t"), &[props.len() as u8], props, b"x"]));
    // §2.2.2.2: a property twice is a Protocol Error.
    refused(
        client(V5),
        publish(&[0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2]),
        |e| matches!(e, DecodeError::DuplicateProperty(_)),
        PROTOCOL,
    );
    // A property of another packet, an unknown one: Malformed Packet.
    refused(
        client(V5),
        publish(&[0x11, 0, 0, 0, 1]),
        |e| matches!(e, DecodeError::PropertyNotAllowed { .. }),
        MALFORMED,
    );
    refused(
        client(V5),
        publish(&[0x7F, 0]),
        |e| matches!(e, DecodeError::UnknownProperty(0x7F)),
        MALFORMED,
    );
    // [MQTT-3.3.2-8] Topic Alias 0; Payload Format Indicator 2.
    refused(
        client(V5),
        publish(&[0x23, 0, 0]),
        |e| matches!(e, DecodeError::InvalidPropertyValue { .. }),
        PROTOCOL,
    );
    refused(
        client(V5),
        publish(&[0x01, 2]),
        |e| matches!(e, DecodeError::InvalidPropertyValue { .. }),
        PROTOCOL,
    );
    // A property block longer than the packet.
    refused(
        client(V5),
        frame(0x30, &cat(&[&s(b"t"), &[9, 0x01]])),
        |e| *e == DecodeError::Truncated,
        MALFORMED,
    );
    // User properties repeat, and keep their order.
    let Packet::Publish(p) = decode(
        client(V5),
        &publish(&cat(&[
            &[0x26],
            &s(b"k"),
            &s(b"2"),
            &[0x26],
            &s(b"k"),
            &s(b"1"),
        ])),
    )
    .unwrap() else {
        panic!()
    };
    let values: Vec<&str> = p
        .properties
        .user_properties
        .iter()
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(values, ["2", "1"]);
    // Several Subscription Identifiers in a PUBLISH, but one only in SUBSCRIBE, never 0.
    let Packet::Publish(p) = decode(client(V5), &publish(&[0x0B, 1, 0x0B, 2])).unwrap() else {
        panic!()
    };
    assert_eq!(&p.properties.subscription_identifiers[..], &[1, 2]);
    let subscribe = |props: &[u8]| {
        frame(
            0x82,
            &cat(&[&[0, 1, props.len() as u8], props, &s(b"a"), &[0]]),
        )
    };
    refused(
        client(V5),
        subscribe(&[0x0B, 1, 0x0B, 2]),
        |e| matches!(e, DecodeError::DuplicateProperty(_)),
        PROTOCOL,
    );
    refused(
        client(V5),
        subscribe(&[0x0B, 0]),
        |e| matches!(e, DecodeError::InvalidPropertyValue { .. }),
        PROTOCOL,
    );
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
    // Packet identifier 0.
    refused(
        client(V311),
        frame(0x82, &cat(&[&[0, 0], &s(b"a"), &[0]])),
        |e| *e == DecodeError::ZeroPacketId,
        PROTOCOL,
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

#[test]
fn acknowledgements() {
    // 5.0: a reason code that PUBACK may not carry.
    refused(
        client(V5),
        frame(0x40, &[0, 1, 0x8D]),
        |e| matches!(e, DecodeError::InvalidReasonCode { .. }),
        PROTOCOL,
    );
    refused(
        client(V5),
        frame(0x62, &[0, 1, 0x10]),
        |e| matches!(e, DecodeError::InvalidReasonCode { .. }),
        PROTOCOL,
    );
    refused(
        client(V311),
        frame(0x40, &[0, 0]),
        |e| *e == DecodeError::ZeroPacketId,
        PROTOCOL,
    );
    // 3.1.1: a SUBACK code other than 0, 1, 2, 0x80.
    refused(
        client(V311),
        frame(0x90, &[0, 1, 0x03]),
        |e| matches!(e, DecodeError::InvalidReasonCode { .. }),
        PROTOCOL,
    );
    // [MQTT-3.2.2-4] a refusing CONNACK with session present; a return code past 5.
    refused(
        client(V311),
        frame(0x20, &[1, 5]),
        |e| matches!(e, DecodeError::ReservedBits(_)),
        MALFORMED,
    );
    refused(
        client(V311),
        frame(0x20, &[0, 6]),
        |e| matches!(e, DecodeError::InvalidReasonCode { .. }),
        PROTOCOL,
    );
    // 3.1 has no session present flag: its whole first byte is reserved (found by fuzzing).
    refused(
        client(V31),
        frame(0x20, &[1, 0]),
        |e| matches!(e, DecodeError::ReservedBits(_)),
        MALFORMED,
    );
    // 5.0 short forms: PUBACK of 2 bytes, DISCONNECT and AUTH of none.
    assert_eq!(
        decode(client(V5), &frame(0x40, &[0, 1])).unwrap(),
        Packet::PubAck(PubResponse::new(1))
    );
    assert_eq!(
        decode(client(V5), &frame(0xE0, &[])).unwrap(),
        Packet::Disconnect(Disconnect::default())
    );
    assert_eq!(
        decode(client(V5), &frame(0xE0, &[0x8E])).unwrap(),
        Packet::Disconnect(Disconnect::with_reason(ReasonCode::SessionTakenOver))
    );
    assert_eq!(
        decode(client(V5), &frame(0xF0, &[])).unwrap(),
        Packet::Auth(Auth::default())
    );
    refused(
        client(V5),
        frame(0xF0, &[0x8E]),
        |e| matches!(e, DecodeError::InvalidReasonCode { .. }),
        PROTOCOL,
    );
}
