//! SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK (§3.8–3.11).

use bytes::BufMut;

use super::connect::encode_properties;
use super::error::{DecodeError, EncodeError};
use super::primitives::{field_len, put_binary, Reader};
use super::properties::{Properties, PropertyContext};
use super::reason::{ReasonCode, ReasonContext};
use super::{MqttStr, ProtocolVersion, QoS};

/// What to do with retained messages when a subscription is made (5.0 §3.8.3.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RetainHandling {
    #[default]
    SendAtSubscribe = 0,
    SendAtNewSubscribe = 1,
    DoNotSend = 2,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SubscriptionOptions {
    /// The maximum QoS the subscriber asked for.
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    fn decode(byte: u8, version: ProtocolVersion) -> Result<Self, DecodeError> {
        if version != ProtocolVersion::V5 {
            // [MQTT-3-8.3-4] (3.1.1) the upper six bits are reserved and must be zero.
            if byte & 0xFC != 0 {
                return Err(DecodeError::ReservedBits("SUBSCRIBE requested QoS"));
            }
        } else if byte & 0xC0 != 0 {
            // [MQTT-3.8.3-5] bits 7 and 6 of the subscription options are reserved.
            return Err(DecodeError::ReservedBits("subscription options"));
        }
        // [MQTT-3-8.3-4] (3.1.1) / 5.0 §3.8.3.1: QoS 3 is a Malformed Packet.
        let qos = QoS::from_u8(byte & 0x03).ok_or(DecodeError::InvalidQos)?;
        let retain_handling = match (byte >> 4) & 0x03 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendAtNewSubscribe,
            2 => RetainHandling::DoNotSend,
            // 5.0 §3.8.3.1: Retain Handling 3 is a Protocol Error.
            _ => return Err(DecodeError::InvalidRetainHandling),
        };
        Ok(SubscriptionOptions {
            qos,
            no_local: byte & 0x04 != 0,
            retain_as_published: byte & 0x08 != 0,
            retain_handling,
        })
    }

    /// The options of a 5.0 subscription options byte, if it is a valid one.
    pub fn from_byte(byte: u8) -> Option<Self> {
        Self::decode(byte, ProtocolVersion::V5).ok()
    }

    fn encode(&self, version: ProtocolVersion) -> u8 {
        let mut byte = self.qos as u8;
        if version == ProtocolVersion::V5 {
            byte |= u8::from(self.no_local) << 2;
            byte |= u8::from(self.retain_as_published) << 3;
            byte |= (self.retain_handling as u8) << 4;
        }
        byte
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: u16,
    pub properties: Properties,
    pub filters: Vec<(MqttStr, SubscriptionOptions)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: u16,
    pub properties: Properties,
    /// One per filter, in order. In 3.x only Success, GrantedQos1, GrantedQos2 and (for any
    /// failure) 0x80.
    pub reasons: Vec<ReasonCode>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: u16,
    pub properties: Properties,
    pub filters: Vec<MqttStr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: u16,
    pub properties: Properties,
    /// One per filter in 5.0; empty in 3.x, whose UNSUBACK carries none.
    pub reasons: Vec<ReasonCode>,
}

fn nonzero_packet_id(r: &mut Reader<'_>, packet: &'static str) -> Result<u16, DecodeError> {
    let id = r.u16()?;
    // [MQTT-2.2.1-3] (5.0), [MQTT-2.3.1-1] (3.1.1)
    if id == 0 {
        return Err(DecodeError::ZeroPacketId(packet));
    }
    Ok(id)
}

fn decode_properties(
    r: &mut Reader<'_>,
    version: ProtocolVersion,
    context: PropertyContext,
) -> Result<Properties, DecodeError> {
    if version == ProtocolVersion::V5 {
        Properties::decode(r, context)
    } else {
        Ok(Properties::default())
    }
}

fn properties_len(p: &Properties, version: ProtocolVersion) -> Result<usize, EncodeError> {
    if version == ProtocolVersion::V5 {
        p.encoded_len()
    } else {
        Ok(0)
    }
}

fn put_properties<B: BufMut>(p: &Properties, version: ProtocolVersion, buf: &mut B) {
    if version == ProtocolVersion::V5 {
        encode_properties(p, buf);
    }
}

/// The 3.x SUBACK return code for a reason code: the granted QoS or 0x80 for failure.
fn v3_suback_code(reason: ReasonCode) -> u8 {
    match reason {
        ReasonCode::Success | ReasonCode::GrantedQos1 | ReasonCode::GrantedQos2 => reason as u8,
        _ => 0x80,
    }
}

/// Most topic filters one SUBSCRIBE or UNSUBSCRIBE may carry: each costs about 40 bytes
/// decoded (for as few as 3 or 4 on the wire) and its share of the packet's handling, so a
/// packet of the largest size must not carry tens of millions. A client with more sends
/// more packets; a packet with more is refused (5.0: DISCONNECT 0x97 Quota exceeded).
/// The specification sets no such bound.
pub const TOPIC_FILTERS_MAX: usize = 16 * 1024;

impl Subscribe {
    pub(super) fn decode(
        r: &mut Reader<'_>,
        version: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let packet_id = nonzero_packet_id(r, "SUBSCRIBE")?;
        let properties = decode_properties(r, version, PropertyContext::Subscribe)?;
        let mut filters = Vec::new();
        while r.has_remaining() {
            if filters.len() == TOPIC_FILTERS_MAX {
                return Err(DecodeError::TooManyTopicFilters {
                    max: TOPIC_FILTERS_MAX,
                });
            }
            let filter = r.string()?;
            let options = SubscriptionOptions::decode(r.u8()?, version)?;
            filters.push((filter, options));
        }
        // [MQTT-3.8.3-3] (3.1.1 and 5.0) at least one topic filter.
        if filters.is_empty() {
            return Err(DecodeError::NoTopicFilters);
        }
        Ok(Subscribe {
            packet_id,
            properties,
            filters,
        })
    }

    pub(super) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let mut len = 2 + properties_len(&self.properties, version)?;
        for (filter, _) in &self.filters {
            len += field_len(filter.len())? + 1;
        }
        Ok(len)
    }

    pub(super) fn encode_body<B: BufMut>(&self, version: ProtocolVersion, buf: &mut B) {
        buf.put_u16(self.packet_id);
        put_properties(&self.properties, version, buf);
        for (filter, options) in &self.filters {
            put_binary(buf, filter.as_bytes());
            buf.put_u8(options.encode(version));
        }
    }
}

impl SubAck {
    pub(super) fn decode(
        r: &mut Reader<'_>,
        version: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let packet_id = nonzero_packet_id(r, "SUBACK")?;
        let properties = decode_properties(r, version, PropertyContext::SubAck)?;
        let mut reasons = Vec::with_capacity(r.remaining());
        while r.has_remaining() {
            let code = r.u8()?;
            let reason = if version == ProtocolVersion::V5 {
                ReasonCode::from_u8(code).filter(|&c| ReasonContext::SubAck.allows(c))
            } else {
                // 3.1.1 §3.9.3: 0x00, 0x01, 0x02 or 0x80 [MQTT-3.9.3-2].
                match code {
                    0..=2 => ReasonCode::from_u8(code),
                    0x80 => Some(ReasonCode::UnspecifiedError),
                    _ => None,
                }
            };
            reasons.push(reason.ok_or(DecodeError::InvalidReasonCode {
                packet: "SUBACK",
                code,
            })?);
        }
        Ok(SubAck {
            packet_id,
            properties,
            reasons,
        })
    }

    pub(super) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        Ok(2 + properties_len(&self.properties, version)? + self.reasons.len())
    }

    pub(super) fn encode_body<B: BufMut>(&self, version: ProtocolVersion, buf: &mut B) {
        buf.put_u16(self.packet_id);
        put_properties(&self.properties, version, buf);
        for &reason in &self.reasons {
            buf.put_u8(if version == ProtocolVersion::V5 {
                reason as u8
            } else {
                v3_suback_code(reason)
            });
        }
    }
}

impl Unsubscribe {
    pub(super) fn decode(
        r: &mut Reader<'_>,
        version: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let packet_id = nonzero_packet_id(r, "UNSUBSCRIBE")?;
        let properties = decode_properties(r, version, PropertyContext::Unsubscribe)?;
        let mut filters = Vec::new();
        while r.has_remaining() {
            if filters.len() == TOPIC_FILTERS_MAX {
                return Err(DecodeError::TooManyTopicFilters {
                    max: TOPIC_FILTERS_MAX,
                });
            }
            filters.push(r.string()?);
        }
        // [MQTT-3.10.3-2] at least one topic filter.
        if filters.is_empty() {
            return Err(DecodeError::NoTopicFilters);
        }
        Ok(Unsubscribe {
            packet_id,
            properties,
            filters,
        })
    }

    pub(super) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let mut len = 2 + properties_len(&self.properties, version)?;
        for filter in &self.filters {
            len += field_len(filter.len())?;
        }
        Ok(len)
    }

    pub(super) fn encode_body<B: BufMut>(&self, version: ProtocolVersion, buf: &mut B) {
        buf.put_u16(self.packet_id);
        put_properties(&self.properties, version, buf);
        for filter in &self.filters {
            put_binary(buf, filter.as_bytes());
        }
    }
}

impl UnsubAck {
    pub(super) fn decode(
        r: &mut Reader<'_>,
        version: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let packet_id = nonzero_packet_id(r, "UNSUBACK")?;
        let properties = decode_properties(r, version, PropertyContext::UnsubAck)?;
        let mut reasons = Vec::new();
        if version == ProtocolVersion::V5 {
            reasons.reserve(r.remaining());
            while r.has_remaining() {
                let code = r.u8()?;
                let reason = ReasonCode::from_u8(code)
                    .filter(|&c| ReasonContext::UnsubAck.allows(c))
                    .ok_or(DecodeError::InvalidReasonCode {
                        packet: "UNSUBACK",
                        code,
                    })?;
                reasons.push(reason);
            }
        }
        Ok(UnsubAck {
            packet_id,
            properties,
            reasons,
        })
    }

    pub(super) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        if version != ProtocolVersion::V5 {
            return Ok(2);
        }
        Ok(2 + self.properties.encoded_len()? + self.reasons.len())
    }

    pub(super) fn encode_body<B: BufMut>(&self, version: ProtocolVersion, buf: &mut B) {
        buf.put_u16(self.packet_id);
        if version == ProtocolVersion::V5 {
            encode_properties(&self.properties, buf);
            for &reason in &self.reasons {
                buf.put_u8(reason as u8);
            }
        }
    }
}
