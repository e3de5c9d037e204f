//! The hex examples of MQTT 3.1.1 packets (issue 2): each decodes to exactly the stated fields
//! and encodes back to the same bytes.

use bytes::Bytes;
use midge::codec::*;

fn hex(text: &str) -> Bytes {
    let digits: Vec<u8> = text
        .split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
        .collect();
    Bytes::from(digits)
}

/// Decodes `bytes` whole with `decoder`, checks it re-encodes to the same bytes, returns it.
fn round_trip(decoder: Decoder, bytes: &Bytes) -> Packet {
    let Decoded::Packet { packet, consumed } = decoder.decode(bytes).expect("decodes") else {
        panic!("incomplete: {bytes:02X?}");
    };
    assert_eq!(consumed, bytes.len());
    assert_eq!(
        packet.encoded_len(ProtocolVersion::V311).unwrap(),
        bytes.len()
    );
    assert_eq!(&packet.to_bytes(ProtocolVersion::V311).unwrap(), bytes);
    packet
}

fn v311() -> Decoder {
    Decoder::client(ProtocolVersion::V311, 1 << 20)
}

#[test]
fn connect_311() {
    let bytes = hex(
        "10 25 00 04 4D 51 54 54 04 C2 00 78 00 09 35 32 38 39 38 36 38 37 35 00 06 32 34 38 34 39 33 00 06 6B 66 62 73 6B 64",
    );
    let Packet::Connect(c) = round_trip(Decoder::server(1 << 20), &bytes) else {
        panic!()
    };
    assert_eq!(c.version, ProtocolVersion::V311);
    assert_eq!(c.client_id, "528986875");
    assert_eq!(c.username.as_ref().unwrap(), "248493");
    assert_eq!(c.password.as_deref(), Some(&b"kfbskd"[..]));
    assert_eq!(c.keep_alive, 120);
    assert!(c.clean_start);
    assert!(c.will.is_none());
    assert!(!c.bridge);
}

#[test]
fn connack() {
    let p = round_trip(v311(), &hex("20 02 01 00"));
    let Packet::ConnAck(ack) = p else { panic!() };
    assert!(ack.session_present);
    assert_eq!(ack.reason, ReasonCode::Success);
}

#[test]
fn publish_qos0() {
    let p = round_trip(
        v311(),
        &hex("30 0E 00 09 6B 66 62 5F 74 6F 70 69 63 31 32 33"),
    );
    let Packet::Publish(p) = p else { panic!() };
    assert_eq!(p.topic, "kfb_topic");
    assert_eq!(&p.payload[..], b"123");
    assert_eq!(p.qos, QoS::AtMostOnce);
    assert!(!p.dup && !p.retain);
    assert_eq!(p.packet_id, 0);
}

#[test]
fn publish_qos1_and_qos2() {
    for (first, qos) in [("32", QoS::AtLeastOnce), ("34", QoS::ExactlyOnce)] {
        let text = format!("{first} 10 00 09 6B 66 62 5F 74 6F 70 69 63 00 01 31 32 33");
        let Packet::Publish(p) = round_trip(v311(), &hex(&text)) else {
            panic!()
        };
        assert_eq!(p.topic, "kfb_topic");
        assert_eq!(&p.payload[..], b"123");
        assert_eq!(p.qos, qos);
        assert_eq!(p.packet_id, 1);
    }
}

#[test]
fn publish_acknowledgements() {
    let cases = [
        ("40 02 00 01", "PUBACK"),
        ("50 02 00 01", "PUBREC"),
        ("62 02 00 01", "PUBREL"),
        ("70 02 00 01", "PUBCOMP"),
    ];
    for (text, name) in cases {
        let packet = round_trip(v311(), &hex(text));
        assert_eq!(packet.name(), name);
        let (Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r)) =
            &packet
        else {
            panic!("{text} decoded as {packet:?}");
        };
        assert_eq!(r.packet_id, 1);
        assert_eq!(r.reason, ReasonCode::Success);
    }
}

#[test]
fn subscribe_and_suback() {
    let Packet::Subscribe(s) = round_trip(
        v311(),
        &hex("82 0E 00 0A 00 09 61 70 70 5F 74 6F 70 69 63 00"),
    ) else {
        panic!()
    };
    assert_eq!(s.packet_id, 10);
    assert_eq!(s.filters.len(), 1);
    assert_eq!(s.filters[0].0, "app_topic");
    assert_eq!(s.filters[0].1.qos, QoS::AtMostOnce);

    let Packet::SubAck(a) = round_trip(v311(), &hex("90 03 00 0A 00")) else {
        panic!()
    };
    assert_eq!(a.packet_id, 10);
    assert_eq!(a.reasons, vec![ReasonCode::GRANTED_QOS_0]);
}

#[test]
fn unsubscribe_and_unsuback() {
    let Packet::Unsubscribe(u) =
        round_trip(v311(), &hex("A2 0D 00 0C 00 09 61 70 70 5F 74 6F 70 69 63"))
    else {
        panic!()
    };
    assert_eq!(u.packet_id, 12);
    assert_eq!(u.filters, vec![MqttStr::new("app_topic").unwrap()]);

    let Packet::UnsubAck(a) = round_trip(v311(), &hex("B0 02 00 0C")) else {
        panic!()
    };
    assert_eq!(a.packet_id, 12);
    assert!(a.reasons.is_empty());
}

#[test]
fn ping_and_disconnect() {
    assert_eq!(round_trip(v311(), &hex("C0 00")), Packet::PingReq);
    assert_eq!(round_trip(v311(), &hex("D0 00")), Packet::PingResp);
    assert_eq!(
        round_trip(v311(), &hex("E0 00")),
        Packet::Disconnect(Disconnect::default())
    );
}

#[test]
fn pubrel_flags_and_qos3_are_rejected() {
    // [MQTT-3.6.1-1] PUBREL's low nibble must be 0010.
    for first in ["60", "61", "63", "6A"] {
        let err = v311()
            .decode(&hex(&format!("{first} 02 00 01")))
            .unwrap_err();
        assert!(
            matches!(err, DecodeError::InvalidFlags { .. }),
            "{first}: {err:?}"
        );
        assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
    }
    // [MQTT-3.3.1-4] a PUBLISH with both QoS bits set.
    let err = v311()
        .decode(&hex(
            "36 10 00 09 6B 66 62 5F 74 6F 70 69 63 00 01 31 32 33",
        ))
        .unwrap_err();
    assert_eq!(err, DecodeError::InvalidQos);
    assert_eq!(err.reason_code(), ReasonCode::MalformedPacket);
}

#[test]
fn payload_and_strings_share_the_input() {
    let bytes = hex("30 0E 00 09 6B 66 62 5F 74 6F 70 69 63 31 32 33");
    let Decoded::Packet {
        packet: Packet::Publish(p),
        ..
    } = v311().decode(&bytes).unwrap()
    else {
        panic!()
    };
    // Zero-copy: the payload and topic point into the input buffer.
    let input = bytes.as_ptr_range();
    assert!(input.contains(&p.payload.as_ptr()));
    assert!(input.contains(&p.topic.as_bytes().as_ptr()));
}

#[test]
fn incremental_decoding_reports_what_is_missing() {
    let bytes = hex("32 10 00 09 6B 66 62 5F 74 6F 70 69 63 00 01 31 32 33");
    let d = v311();
    assert_eq!(
        d.decode(&Bytes::new()).unwrap(),
        Decoded::Incomplete { needed: None }
    );
    assert_eq!(
        d.decode(&bytes.slice(..1)).unwrap(),
        Decoded::Incomplete { needed: None }
    );
    for cut in 2..bytes.len() {
        assert_eq!(
            d.decode(&bytes.slice(..cut)).unwrap(),
            Decoded::Incomplete {
                needed: Some(bytes.len() - cut)
            },
            "cut at {cut}"
        );
    }
    // Two packets back to back: the first is taken, the rest left.
    let mut buf = bytes::BytesMut::new();
    buf.extend_from_slice(&bytes);
    buf.extend_from_slice(&hex("C0 00 D0"));
    assert!(matches!(
        d.decode_from(&mut buf).unwrap(),
        Some(Packet::Publish(_))
    ));
    assert_eq!(d.decode_from(&mut buf).unwrap(), Some(Packet::PingReq));
    assert_eq!(d.decode_from(&mut buf).unwrap(), None);
    assert_eq!(&buf[..], &[0xD0]);
}
