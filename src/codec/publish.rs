//! PUBLISH and its acknowledgements PUBACK, PUBREC, PUBREL, PUBCOMP (§3.3–3.7).

use bytes::{BufMut, Bytes};

use super::connect::check_topic_name;
use super::control::{decode_reason_tail, encode_reason_tail, reason_tail_len};
use super::error::{DecodeError, EncodeError};
use super::primitives::{field_len, put_binary, Reader};
use super::properties::{Properties, PropertyContext};
use super::reason::{ReasonCode, ReasonContext};
use super::{MqttStr, ProtocolVersion, QoS};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Empty only in 5.0 with a Topic Alias property.
    pub topic: MqttStr,
    /// 0 for QoS 0 (no identifier on the wire); non-zero otherwise.
    pub packet_id: u16,
    pub properties: Properties,
    pub payload: Bytes,
}

/// Mosquitto's log summary of a PUBLISH: `(d0, q1, r0, m3, 'a/b', ... (5 bytes))`.
pub struct PublishSummary<'a>(&'a Publish);

impl std::fmt::Display for PublishSummary<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = self.0;
        write!(
            f,
            "(d{}, q{}, r{}, m{}, '{}', ... ({} bytes))",
            u8::from(p.dup),
            p.qos as u8,
            u8::from(p.retain),
            p.packet_id,
            p.topic,
            p.payload.len()
        )
    }
}

impl Publish {
    /// For log lines, in Mosquitto's words.
    pub fn summary(&self) -> PublishSummary<'_> {
        PublishSummary(self)
    }

    pub(super) fn flags(&self) -> u8 {
        (u8::from(self.dup) << 3) | ((self.qos as u8) << 1) | u8::from(self.retain)
    }

    pub(super) fn decode(
        r: &mut Reader<'_>,
        flags: u8,
        version: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let dup = flags & 0x08 != 0;
        let retain = flags & 0x01 != 0;
        // [MQTT-3.3.1-4] both QoS bits set is a Malformed Packet.
        let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(DecodeError::InvalidQos)?;
        // [MQTT-3.3.1-2] DUP is 0 on every QoS 0 message.
        if dup && qos == QoS::AtMostOnce {
            return Err(DecodeError::DupOnQos0);
        }
        let topic = r.string()?;
        check_topic_name(&topic)?;
        let packet_id = if qos == QoS::AtMostOnce {
            0
        } else {
            // [MQTT-2.2.1-3] (5.0), [MQTT-2.3.1-1] (3.1.1): a non-zero packet identifier.
            let id = r.u16()?;
            if id == 0 {
                return Err(DecodeError::ZeroPacketId("PUBLISH"));
            }
            id
        };
        let properties = if version == ProtocolVersion::V5 {
            Properties::decode(r, PropertyContext::Publish)?
        } else {
            Properties::default()
        };
        // [MQTT-4.7.3-1] a topic name has at least one character; 5.0 allows an empty one
        // when a Topic Alias stands for it (§3.3.2.1), and makes its absence a Protocol Error.
        if topic.is_empty() && properties.topic_alias.is_none() {
            return Err(DecodeError::EmptyTopicName);
        }
        let payload = r.rest();
        Ok(Publish {
            dup,
            qos,
            retain,
            topic,
            packet_id,
            properties,
            payload,
        })
    }

    pub(super) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let mut len = field_len(self.topic.len())? + self.payload.len();
        if self.qos != QoS::AtMostOnce {
            len += 2;
        }
        if version == ProtocolVersion::V5 {
            len += self.properties.encoded_len()?;
        }
        Ok(len)
    }

    pub(super) fn encode_body<B: BufMut>(&self, version: ProtocolVersion, buf: &mut B) {
        self.encode_head_body(version, buf);
        buf.put_slice(&self.payload);
    }

    /// The packet up to its payload: the fixed header (its remaining length counting the
    /// payload), topic, packet id and properties. With the payload after it, the whole
    /// packet: for a sender that writes a large payload from where it is, not a copy.
    pub fn head_bytes(&self, version: ProtocolVersion) -> Result<Bytes, EncodeError> {
        let body = self.body_len(version)?;
        if body > super::VARINT_MAX as usize {
            return Err(EncodeError::PacketTooLarge { len: body });
        }
        let head_len = 1 + super::varint_len(body as u32) + body - self.payload.len();
        let mut buf = bytes::BytesMut::with_capacity(head_len);
        buf.put_u8((super::packet_type::PUBLISH << 4) | self.flags());
        super::put_varint(&mut buf, body as u32);
        self.encode_head_body(version, &mut buf);
        debug_assert_eq!(buf.len(), head_len);
        Ok(buf.freeze())
    }

    fn encode_head_body<B: BufMut>(&self, version: ProtocolVersion, buf: &mut B) {
        put_binary(buf, self.topic.as_bytes());
        if self.qos != QoS::AtMostOnce {
            debug_assert_ne!(
                self.packet_id, 0,
                "[MQTT-2.2.1-3] QoS > 0 needs a packet id"
            );
            buf.put_u16(self.packet_id);
        }
        if version == ProtocolVersion::V5 {
            let body = (self.properties.body_len()).expect("length checked by encoded_len");
            self.properties.encode_publish(buf, body);
        }
    }
}

/// Properties larger than this are not looked into before their packet is whole
/// (`peek_payload`).
const PEEK_PROPERTIES_MAX: usize = 64 * 1024;

/// Where a 5.0 PUBLISH's payload starts in `buf`, which holds the packet from its fixed
/// header on (`header_len` bytes of it, then perhaps not all of the rest), and whether its
/// Payload Format Indicator says UTF-8: once its topic, packet id and properties are all in
/// `buf`, and the properties are at most `PEEK_PROPERTIES_MAX` bytes; `None` otherwise, or
/// if they are not as they should be (the packet's own decoding says what is wrong). For a
/// receiver that checks a large payload as it arrives.
pub fn peek_payload(buf: &[u8], header_len: usize, qos: QoS) -> Option<(usize, bool)> {
    let topic_len = usize::from(u16::from_be_bytes([
        *buf.get(header_len)?,
        *buf.get(header_len + 1)?,
    ]));
    let mut at = header_len + 2 + topic_len + if qos == QoS::AtMostOnce { 0 } else { 2 };
    let (props_len, used) = super::decode_varint(buf.get(at..)?).ok()??;
    at += used;
    let props_len = props_len as usize;
    if props_len > PEEK_PROPERTIES_MAX {
        return None;
    }
    let props = buf.get(at..at + props_len)?;
    Some((at + props_len, payload_format(props)? == 1))
}

/// The Payload Format Indicator among `props` (0 if absent), walking them by their types
/// (MQTT 5.0 §2.2.2.2); `None` if they cannot be walked.
fn payload_format(mut props: &[u8]) -> Option<u8> {
    use super::properties::id;
    let mut format = 0;
    while let Some((&property, rest)) = props.split_first() {
        let field = |rest: &[u8], at: usize| -> Option<usize> {
            let len = u16::from_be_bytes([*rest.get(at)?, *rest.get(at + 1)?]);
            Some(at + 2 + usize::from(len))
        };
        let skip = match property {
            id::PAYLOAD_FORMAT_INDICATOR => {
                format = *rest.first()?;
                1
            }
            id::MESSAGE_EXPIRY_INTERVAL => 4,
            id::TOPIC_ALIAS => 2,
            id::SUBSCRIPTION_IDENTIFIER => super::decode_varint(rest).ok()??.1,
            id::CONTENT_TYPE | id::RESPONSE_TOPIC | id::CORRELATION_DATA => field(rest, 0)?,
            id::USER_PROPERTY => field(rest, field(rest, 0)?)?,
            _ => return None,
        };
        props = rest.get(skip..)?;
    }
    Some(format)
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP: a packet identifier, and in 5.0 a reason code and
/// properties.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PubResponse {
    pub packet_id: u16,
    pub reason: ReasonCode,
    pub properties: Properties,
}

impl PubResponse {
    pub fn new(packet_id: u16) -> Self {
        PubResponse {
            packet_id,
            reason: ReasonCode::Success,
            properties: Properties::default(),
        }
    }

    pub(super) fn decode(
        r: &mut Reader<'_>,
        version: ProtocolVersion,
        context: ReasonContext,
        properties_context: PropertyContext,
        packet: &'static str,
    ) -> Result<Self, DecodeError> {
        let packet_id = r.u16()?;
        if packet_id == 0 {
            return Err(DecodeError::ZeroPacketId(packet));
        }
        let (reason, properties) =
            decode_reason_tail(r, version, context, properties_context, packet)?;
        Ok(PubResponse {
            packet_id,
            reason,
            properties,
        })
    }

    pub(super) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        Ok(2 + reason_tail_len(self.reason, &self.properties, version)?)
    }

    pub(super) fn encode_body<B: BufMut>(&self, version: ProtocolVersion, buf: &mut B) {
        buf.put_u16(self.packet_id);
        encode_reason_tail(self.reason, &self.properties, version, buf);
    }
}

#[cfg(test)]
mod peek_tests {
    use super::*;
    use crate::codec::Packet;

    fn encoded(qos: QoS, properties: Properties, payload: &[u8]) -> Vec<u8> {
        let publish = Publish {
            dup: false,
            qos,
            retain: false,
            topic: MqttStr::from_static("a/b"),
            packet_id: u16::from(qos != QoS::AtMostOnce),
            properties,
            payload: Bytes::copy_from_slice(payload),
        };
        Packet::Publish(publish)
            .to_bytes(ProtocolVersion::V5)
            .unwrap()
            .to_vec()
    }

    #[test]
    fn the_payload_is_found_past_every_property_a_publish_may_carry() {
        let mut properties = Properties::default();
        properties.message_expiry_interval = Some(60);
        properties.content_type = Some(MqttStr::from_static("text/plain"));
        properties.response_topic = Some(MqttStr::from_static("r"));
        properties.correlation_data = Some(Bytes::from_static(b"id"));
        properties.topic_alias = Some(3);
        properties
            .user_properties
            .push((MqttStr::from_static("k"), MqttStr::from_static("v")));
        for (format, qos) in [
            (None, QoS::AtMostOnce),
            (Some(1), QoS::AtLeastOnce),
            (Some(0), QoS::ExactlyOnce),
        ] {
            let mut properties = properties.clone();
            properties.payload_format_indicator = format;
            let packet = encoded(qos, properties, b"payload");
            let start = packet.len() - b"payload".len();
            // The fixed header of a short packet is two bytes.
            assert_eq!(
                peek_payload(&packet, 2, qos),
                Some((start, format == Some(1)))
            );
            // Not before the properties are all in.
            assert_eq!(peek_payload(&packet[..start - 1], 2, qos), None);
            assert_eq!(
                peek_payload(&packet[..start], 2, qos),
                Some((start, format == Some(1)))
            );
        }
    }
}
