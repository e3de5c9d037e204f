//! The malformed-packet corpus, continued: MQTT 5.0 properties and acknowledgements, each
//! refused with the right error and reason code.

mod malformed;

use malformed::*;
use midge::codec::*;
use ProtocolVersion::*;

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
    let values: Vec<String> = p
        .properties
        .user_properties
        .iter()
        .map(|(_, v)| v.as_str().to_string())
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
        |e| matches!(e, DecodeError::ZeroPacketId(_)),
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
