//! Property tests: every packet type of every version encodes to exactly `encoded_len` bytes
//! and decodes back to the same value, whole and fed in pieces; arbitrary bytes never panic
//! the decoder.

use bytes::{Bytes, BytesMut};
use midge::codec::*;
use proptest::prelude::*;
use proptest::sample::select;

const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V31,
    ProtocolVersion::V311,
    ProtocolVersion::V5,
];

fn text() -> impl Strategy<Value = MqttStr> {
    // Any printable text, multi-byte characters included; no U+0000.
    "\\PC{0,12}".prop_map(|s| MqttStr::new(&s).expect("printable text is a valid MQTT string"))
}

fn topic_name() -> impl Strategy<Value = MqttStr> {
    "[a-z0-9/$é]{1,16}".prop_map(|s| MqttStr::new(&s).unwrap())
}

fn data() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..32).prop_map(Bytes::from)
}

fn reasons(context: ReasonContext) -> Vec<ReasonCode> {
    (0..=255u8)
        .filter_map(ReasonCode::from_u8)
        .filter(|&c| context.allows(c))
        .collect()
}

/// Any properties, cut down to those `context` allows.
fn properties(context: PropertyContext) -> impl Strategy<Value = Properties> {
    let message = (
        proptest::option::of(0..=1u8),
        proptest::option::of(any::<u32>()),
        proptest::option::of(text()),
        proptest::option::of(text()),
        proptest::option::of(data()),
        proptest::collection::vec(1..=VARINT_MAX, 0..3),
    );
    let session = (
        proptest::option::of(any::<u32>()),
        proptest::option::of(text()),
        proptest::option::of(any::<u16>()),
        proptest::option::of(text()),
        proptest::option::of(data()),
        proptest::option::of(any::<bool>()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<bool>()),
        proptest::option::of(text()),
        proptest::option::of(text()),
    );
    let limits = (
        proptest::option::of(text()),
        proptest::option::of(1..=u16::MAX),
        proptest::option::of(any::<u16>()),
        proptest::option::of(1..=u16::MAX),
        proptest::option::of(0..=1u8),
        proptest::option::of(any::<bool>()),
        proptest::collection::vec((text(), text()), 0..3),
        proptest::option::of(1..=u32::MAX),
        proptest::option::of(any::<bool>()),
        proptest::option::of(any::<bool>()),
        proptest::option::of(any::<bool>()),
    );
    (message, session, limits).prop_map(move |(m, s, l)| {
        let mut p: Properties = PropertyValues {
            payload_format_indicator: m.0,
            message_expiry_interval: m.1,
            content_type: m.2,
            response_topic: m.3,
            correlation_data: m.4,
            subscription_identifiers: m.5.into_iter().collect(),
            session_expiry_interval: s.0,
            assigned_client_identifier: s.1,
            server_keep_alive: s.2,
            authentication_method: s.3,
            authentication_data: s.4,
            request_problem_information: s.5,
            will_delay_interval: s.6,
            request_response_information: s.7,
            response_information: s.8,
            server_reference: s.9,
            reason_string: l.0,
            receive_maximum: l.1,
            topic_alias_maximum: l.2,
            topic_alias: l.3,
            maximum_qos: l.4,
            retain_available: l.5,
            user_properties: l.6.into_iter().collect(),
            maximum_packet_size: l.7,
            wildcard_subscription_available: l.8,
            subscription_identifier_available: l.9,
            shared_subscription_available: l.10,
            ..Default::default()
        }
        .into();
        p.retain_allowed(context);
        // Only a PUBLISH may carry several Subscription Identifiers.
        if context != PropertyContext::Publish && p.subscription_identifiers.len() > 1 {
            p.subscription_identifiers.truncate(1);
        }
        p
    })
}

/// Properties for `version`: none before 5.0.
fn props_for(version: ProtocolVersion, context: PropertyContext) -> BoxedStrategy<Properties> {
    if version == ProtocolVersion::V5 {
        properties(context).boxed()
    } else {
        Just(Properties::default()).boxed()
    }
}

fn qos() -> impl Strategy<Value = QoS> {
    select(vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
}

fn connect(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let will = (
        qos(),
        any::<bool>(),
        props_for(version, PropertyContext::Will),
        topic_name(),
        data(),
    )
        .prop_map(|(qos, retain, properties, topic, payload)| Will {
            qos,
            retain,
            properties,
            topic,
            payload,
        });
    (
        any::<bool>(),
        any::<bool>(),
        any::<u16>(),
        props_for(version, PropertyContext::Connect),
        text(),
        proptest::option::of(will),
        proptest::option::of(text()),
        proptest::option::of(data()),
    )
        .prop_map(
            move |(
                bridge,
                clean_start,
                keep_alive,
                properties,
                client_id,
                will,
                username,
                password,
            )| {
                // 3.x: a password needs a user name [MQTT-3.1.2-22].
                let password = if version != ProtocolVersion::V5 && username.is_none() {
                    None
                } else {
                    password
                };
                Packet::Connect(Box::new(Connect {
                    version,
                    bridge,
                    clean_start,
                    keep_alive,
                    properties,
                    client_id,
                    will,
                    username,
                    password,
                }))
            },
        )
}

fn connack(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let codes = if version == ProtocolVersion::V5 {
        reasons(ReasonContext::ConnAck)
    } else {
        use ReasonCode::*;
        vec![
            Success,
            UnsupportedProtocolVersion,
            ClientIdentifierNotValid,
            ServerUnavailable,
            BadUserNameOrPassword,
            NotAuthorized,
        ]
    };
    (
        any::<bool>(),
        select(codes),
        props_for(version, PropertyContext::ConnAck),
    )
        .prop_map(move |(present, reason, properties)| {
            let session_present =
                present && reason == ReasonCode::Success && version != ProtocolVersion::V31;
            Packet::ConnAck(ConnAck {
                session_present,
                reason,
                properties,
            })
        })
}

fn publish(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic_name(),
        1..=u16::MAX,
        props_for(version, PropertyContext::Publish),
        data(),
    )
        .prop_map(|(qos, dup, retain, topic, id, properties, payload)| {
            let zero = qos == QoS::AtMostOnce;
            Packet::Publish(Publish {
                dup: dup && !zero,
                qos,
                retain,
                topic,
                packet_id: if zero { 0 } else { id },
                properties,
                payload,
            })
        })
}

fn pub_response(version: ProtocolVersion, kind: u8) -> impl Strategy<Value = Packet> {
    let (reason_context, property_context) = match kind {
        4 => (ReasonContext::PubAck, PropertyContext::PubAck),
        5 => (ReasonContext::PubRec, PropertyContext::PubRec),
        6 => (ReasonContext::PubRel, PropertyContext::PubRel),
        _ => (ReasonContext::PubComp, PropertyContext::PubComp),
    };
    let codes = if version == ProtocolVersion::V5 {
        reasons(reason_context)
    } else {
        vec![ReasonCode::Success]
    };
    (
        1..=u16::MAX,
        select(codes),
        props_for(version, property_context),
    )
        .prop_map(move |(packet_id, reason, properties)| {
            let r = PubResponse {
                packet_id,
                reason,
                properties,
            };
            match kind {
                4 => Packet::PubAck(r),
                5 => Packet::PubRec(r),
                6 => Packet::PubRel(r),
                _ => Packet::PubComp(r),
            }
        })
}

fn subscription_options(version: ProtocolVersion) -> impl Strategy<Value = SubscriptionOptions> {
    let handling = select(vec![
        RetainHandling::SendAtSubscribe,
        RetainHandling::SendAtNewSubscribe,
        RetainHandling::DoNotSend,
    ]);
    (qos(), any::<bool>(), any::<bool>(), handling).prop_map(
        move |(qos, no_local, retain_as_published, retain_handling)| {
            if version == ProtocolVersion::V5 {
                SubscriptionOptions {
                    qos,
                    no_local,
                    retain_as_published,
                    retain_handling,
                }
            } else {
                SubscriptionOptions {
                    qos,
                    ..Default::default()
                }
            }
        },
    )
}

fn subscribe_family(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let v5 = version == ProtocolVersion::V5;
    let suback_codes = if v5 {
        reasons(ReasonContext::SubAck)
    } else {
        use ReasonCode::*;
        vec![Success, GrantedQos1, GrantedQos2, UnspecifiedError]
    };
    let unsuback_codes = reasons(ReasonContext::UnsubAck);
    prop_oneof![
        (
            1..=u16::MAX,
            props_for(version, PropertyContext::Subscribe),
            proptest::collection::vec((text(), subscription_options(version)), 1..4)
        )
            .prop_map(
                |(packet_id, properties, filters)| Packet::Subscribe(Subscribe {
                    packet_id,
                    properties,
                    filters
                })
            ),
        (
            1..=u16::MAX,
            props_for(version, PropertyContext::SubAck),
            proptest::collection::vec(select(suback_codes), 0..4)
        )
            .prop_map(|(packet_id, properties, reasons)| Packet::SubAck(SubAck {
                packet_id,
                properties,
                reasons
            })),
        (
            1..=u16::MAX,
            props_for(version, PropertyContext::Unsubscribe),
            proptest::collection::vec(text(), 1..4)
        )
            .prop_map(|(packet_id, properties, filters)| Packet::Unsubscribe(
                Unsubscribe {
                    packet_id,
                    properties,
                    filters
                }
            )),
        (
            1..=u16::MAX,
            props_for(version, PropertyContext::UnsubAck),
            proptest::collection::vec(select(unsuback_codes), 0..4)
        )
            .prop_map(move |(packet_id, properties, reasons)| {
                let reasons = if v5 { reasons } else { Vec::new() };
                Packet::UnsubAck(UnsubAck {
                    packet_id,
                    properties,
                    reasons,
                })
            }),
    ]
}

fn control(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let pings = prop_oneof![Just(Packet::PingReq), Just(Packet::PingResp)];
    if version != ProtocolVersion::V5 {
        return prop_oneof![pings, Just(Packet::Disconnect(Disconnect::default()))].boxed();
    }
    prop_oneof![
        pings,
        (
            select(reasons(ReasonContext::Disconnect)),
            properties(PropertyContext::Disconnect)
        )
            .prop_map(|(reason, properties)| Packet::Disconnect(Disconnect { reason, properties })),
        (
            select(reasons(ReasonContext::Auth)),
            properties(PropertyContext::Auth)
        )
            .prop_map(|(reason, properties)| Packet::Auth(Auth { reason, properties })),
    ]
    .boxed()
}

fn packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    select(VERSIONS.to_vec()).prop_flat_map(|v| {
        let packets = prop_oneof![
            connect(v),
            connack(v),
            publish(v),
            pub_response(v, 4),
            pub_response(v, 5),
            pub_response(v, 6),
            pub_response(v, 7),
            subscribe_family(v),
            control(v),
        ];
        (Just(v), packets)
    })
}

fn decoder_for(version: ProtocolVersion, packet: &Packet) -> Decoder {
    match packet {
        Packet::Connect(_) => Decoder::server(1 << 20),
        _ => Decoder::client(version, 1 << 20),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_packet_round_trips((version, packet) in packet()) {
        let len = packet.encoded_len(version).unwrap();
        let mut buf = BytesMut::new();
        prop_assert_eq!(packet.encode(version, &mut buf).unwrap(), len);
        prop_assert_eq!(buf.len(), len);
        let bytes = buf.freeze();
        let decoder = decoder_for(version, &packet);
        let decoded = decoder.decode(&bytes).unwrap();
        prop_assert_eq!(decoded, Decoded::Packet { packet: packet.clone(), consumed: len });
        // Any strict prefix is incomplete, never an error and never a packet.
        for cut in [0, 1, len / 2, len - 1] {
            let prefix = bytes.slice(..cut.min(len - 1));
            let incomplete = matches!(decoder.decode(&prefix), Ok(Decoded::Incomplete { .. }));
            prop_assert!(incomplete);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), v in select(VERSIONS.to_vec())) {
        let bytes = Bytes::from(bytes);
        for decoder in [Decoder::server(128), Decoder::client(v, 128)] {
            match decoder.decode(&bytes) {
                Ok(Decoded::Packet { consumed, .. }) => prop_assert!(consumed <= bytes.len() && consumed <= 128),
                Ok(Decoded::Incomplete { .. }) | Err(_) => {}
            }
        }
    }

    /// Flipping any one byte of a valid packet gives a packet, an error or incomplete: never
    /// a panic, and a decoded packet always re-encodes.
    #[test]
    fn corrupted_packets_never_panic((version, packet) in packet(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut raw = packet.to_bytes(version).unwrap().to_vec();
        let i = at.index(raw.len());
        raw[i] = byte;
        let bytes = Bytes::from(raw);
        if let Ok(Decoded::Packet { packet: decoded, .. }) = decoder_for(version, &packet).decode(&bytes) {
            let version = match &decoded { Packet::Connect(c) => c.version, _ => version };
            prop_assert!(decoded.encoded_len(version).is_ok());
        }
    }
}
