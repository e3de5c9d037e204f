//! CONNECT and CONNACK (MQTT 3.1 §3.1–3.2, 3.1.1 §3.1–3.2, 5.0 §3.1–3.2).

use bytes::{BufMut, Bytes};

use super::error::{DecodeError, EncodeError};
use super::primitives::{field_len, put_binary, MqttStr, Reader};
use super::properties::{Properties, PropertyContext};
use super::reason::{ReasonCode, ReasonContext};
use super::{ProtocolVersion, QoS};

/// Protocol level bit that Mosquitto bridges set to say "I am a bridge" (`try_private`).
const BRIDGE_BIT: u8 = 0x80;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    pub version: ProtocolVersion,
    /// The peer set the bridge bit in the protocol level, as Mosquitto bridges do.
    pub bridge: bool,
    /// Clean Session in 3.x, Clean Start in 5.0.
    pub clean_start: bool,
    pub keep_alive: u16,
    pub properties: Properties,
    pub client_id: MqttStr,
    pub will: Option<Will>,
    pub username: Option<MqttStr>,
    pub password: Option<Bytes>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Will {
    pub qos: QoS,
    pub retain: bool,
    pub properties: Properties,
    pub topic: MqttStr,
    pub payload: Bytes,
}

mod flags {
    pub const RESERVED: u8 = 0x01;
    pub const CLEAN_START: u8 = 0x02;
    pub const WILL: u8 = 0x04;
    pub const WILL_QOS_SHIFT: u8 = 3;
    pub const WILL_QOS: u8 = 0x18;
    pub const WILL_RETAIN: u8 = 0x20;
    pub const PASSWORD: u8 = 0x40;
    pub const USERNAME: u8 = 0x80;
}

/// Checks a topic name carried by the codec itself (a will topic, a PUBLISH topic).
pub(super) fn check_topic_name(topic: &MqttStr) -> Result<(), DecodeError> {
    // [MQTT-3.3.2-2] [MQTT-4.7.0-1] a topic name holds no wildcard characters.
    if topic.as_bytes().iter().any(|&b| b == b'+' || b == b'#') {
        return Err(DecodeError::WildcardInTopicName(topic.to_string()));
    }
    Ok(())
}

impl Connect {
    pub(super) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let (version, bridge) = decode_protocol(r)?;
        let connect_flags = r.u8()?;
        // [MQTT-3.1.2-3] the reserved flag must be zero.
        if connect_flags & flags::RESERVED != 0 {
            return Err(DecodeError::ReservedConnectFlag);
        }
        let keep_alive = r.u16()?;
        let properties = if version == ProtocolVersion::V5 {
            Properties::decode(r, PropertyContext::Connect)?
        } else {
            Properties::default()
        };
        // [MQTT-3.1.3-3] the client identifier comes first; it may be empty, whether that is
        // accepted is the broker's decision ([MQTT-3.1.3-6], [MQTT-3.1.3-8]).
        let client_id = r.string()?;

        let will = decode_will(r, connect_flags, version)?;
        let has_username = connect_flags & flags::USERNAME != 0;
        let has_password = connect_flags & flags::PASSWORD != 0;
        // [MQTT-3.1.2-22] in 3.1.1 (and 3.1) a password needs a user name; 5.0 allows a
        // password alone (§3.1.2.9).
        if has_password && !has_username && version != ProtocolVersion::V5 {
            return Err(DecodeError::PasswordWithoutUsername);
        }
        let username = if has_username {
            Some(r.string()?)
        } else {
            None
        };
        let password = if has_password {
            Some(r.binary()?)
        } else {
            None
        };
        Ok(Connect {
            version,
            bridge,
            clean_start: connect_flags & flags::CLEAN_START != 0,
            keep_alive,
            properties,
            client_id,
            will,
            username,
            password,
        })
    }

    pub(super) fn body_len(&self) -> Result<usize, EncodeError> {
        let v5 = self.version == ProtocolVersion::V5;
        let mut len = field_len(self.version.protocol_name().len())? + 1 + 1 + 2;
        if v5 {
            len += self.properties.encoded_len()?;
        }
        len += field_len(self.client_id.len())?;
        if let Some(will) = &self.will {
            if v5 {
                len += will.properties.encoded_len()?;
            }
            len += field_len(will.topic.len())? + field_len(will.payload.len())?;
        }
        if let Some(username) = &self.username {
            len += field_len(username.len())?;
        }
        if let Some(password) = &self.password {
            len += field_len(password.len())?;
        }
        Ok(len)
    }

    pub(super) fn encode_body<B: BufMut>(&self, buf: &mut B) {
        let v5 = self.version == ProtocolVersion::V5;
        put_binary(buf, self.version.protocol_name().as_bytes());
        let bridge = if self.bridge { BRIDGE_BIT } else { 0 };
        buf.put_u8(self.version as u8 | bridge);
        let mut connect_flags = 0;
        if self.clean_start {
            connect_flags |= flags::CLEAN_START;
        }
        if let Some(will) = &self.will {
            connect_flags |= flags::WILL | ((will.qos as u8) << flags::WILL_QOS_SHIFT);
            if will.retain {
                connect_flags |= flags::WILL_RETAIN;
            }
        }
        if self.username.is_some() {
            connect_flags |= flags::USERNAME;
        }
        if self.password.is_some() {
            connect_flags |= flags::PASSWORD;
        }
        buf.put_u8(connect_flags);
        buf.put_u16(self.keep_alive);
        if v5 {
            encode_properties(&self.properties, buf);
        }
        put_binary(buf, self.client_id.as_bytes());
        if let Some(will) = &self.will {
            if v5 {
                encode_properties(&will.properties, buf);
            }
            put_binary(buf, will.topic.as_bytes());
            put_binary(buf, &will.payload);
        }
        if let Some(username) = &self.username {
            put_binary(buf, username.as_bytes());
        }
        if let Some(password) = &self.password {
            put_binary(buf, password);
        }
    }
}

/// Writes a property block whose length was already checked by `encoded_len`.
pub(super) fn encode_properties<B: BufMut>(properties: &Properties, buf: &mut B) {
    let body = properties
        .body_len()
        .expect("length checked by encoded_len");
    properties.encode(buf, body);
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    /// In 3.x, one of the six codes `v3_return_code` maps to.
    pub reason: ReasonCode,
    pub properties: Properties,
}

/// The MQTT 3.x CONNACK return code for a reason code (3.1.1 §3.2.2.3, table 3.1).
pub fn v3_return_code(reason: ReasonCode) -> u8 {
    use ReasonCode::*;
    match reason {
        Success => 0,
        UnsupportedProtocolVersion => 1,
        ClientIdentifierNotValid => 2,
        BadUserNameOrPassword | BadAuthenticationMethod => 4,
        NotAuthorized | Banned => 5,
        _ => 3, // Server unavailable: the closest 3.x meaning for any other refusal.
    }
}

fn from_v3_return_code(code: u8) -> Option<ReasonCode> {
    use ReasonCode::*;
    Some(match code {
        0 => Success,
        1 => UnsupportedProtocolVersion,
        2 => ClientIdentifierNotValid,
        3 => ServerUnavailable,
        4 => BadUserNameOrPassword,
        5 => NotAuthorized,
        _ => return None,
    })
}

impl ConnAck {
    pub(super) fn decode(
        r: &mut Reader<'_>,
        version: ProtocolVersion,
    ) -> Result<Self, DecodeError> {
        let ack_flags = r.u8()?;
        // [MQTT-3.2.2-1] bits 7-1 of the acknowledge flags are reserved; in 3.1 the whole
        // byte is.
        let reserved = if version == ProtocolVersion::V31 {
            0xFF
        } else {
            0xFE
        };
        if ack_flags & reserved != 0 {
            return Err(DecodeError::ReservedBits("CONNACK flags"));
        }
        let code = r.u8()?;
        let (reason, properties) = if version == ProtocolVersion::V5 {
            let reason = ReasonCode::from_u8(code)
                .filter(|&c| ReasonContext::ConnAck.allows(c))
                .ok_or(DecodeError::InvalidReasonCode {
                    packet: "CONNACK",
                    code,
                })?;
            (reason, Properties::decode(r, PropertyContext::ConnAck)?)
        } else {
            let reason = from_v3_return_code(code).ok_or(DecodeError::InvalidReasonCode {
                packet: "CONNACK",
                code,
            })?;
            (reason, Properties::default())
        };
        let session_present = ack_flags & 1 != 0;
        // [MQTT-3.2.2-4] (3.1.1), [MQTT-3.2.2-6] (5.0): a refusal has session present 0.
        if session_present && reason != ReasonCode::Success {
            return Err(DecodeError::ReservedBits("CONNACK flags of a refusal"));
        }
        Ok(ConnAck {
            session_present,
            reason,
            properties,
        })
    }

    pub(super) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        Ok(2 + if version == ProtocolVersion::V5 {
            self.properties.encoded_len()?
        } else {
            0
        })
    }

    pub(super) fn encode_body<B: BufMut>(&self, version: ProtocolVersion, buf: &mut B) {
        // 3.1 has no session present flag: the byte is reserved.
        let present = self.session_present && version != ProtocolVersion::V31;
        buf.put_u8(u8::from(present));
        if version == ProtocolVersion::V5 {
            buf.put_u8(self.reason as u8);
            let body = (self.properties.body_len()).expect("length checked by encoded_len");
            let order = &super::properties::id::CONNACK_ORDER;
            self.properties.encode_in_order(buf, body, order);
        } else {
            buf.put_u8(v3_return_code(self.reason));
        }
    }
}

/// The protocol name and level: the version, and whether the client is a bridge (the
/// level's top bit, as Mosquitto's bridges set it).
fn decode_protocol(r: &mut Reader<'_>) -> Result<(ProtocolVersion, bool), DecodeError> {
    let name = r.string()?;
    let level = r.u8()?;
    let bridge = level & BRIDGE_BIT != 0;
    let version = match (name.as_str(), level & !BRIDGE_BIT) {
        ("MQIsdp", 3) => ProtocolVersion::V31,
        ("MQTT", 4) => ProtocolVersion::V311,
        ("MQTT", 5) => ProtocolVersion::V5,
        // [MQTT-3.1.2-2] an unsupported level is answered with CONNACK 0x01 (3.1.1) or
        // 0x84 (5.0), then the connection is closed.
        ("MQIsdp", _) | ("MQTT", _) => {
            return Err(DecodeError::UnsupportedProtocolVersion(level));
        }
        // [MQTT-3.1.2-1] a wrong protocol name: the server may close without CONNACK.
        (other, _) => return Err(DecodeError::InvalidProtocolName(other.to_string())),
    };
    Ok((version, bridge))
}

/// The will, if the connect flags say there is one.
fn decode_will(
    r: &mut Reader<'_>,
    connect_flags: u8,
    version: ProtocolVersion,
) -> Result<Option<Will>, DecodeError> {
    let will_qos_bits = (connect_flags & flags::WILL_QOS) >> flags::WILL_QOS_SHIFT;
    let will_retain = connect_flags & flags::WILL_RETAIN != 0;
    Ok(if connect_flags & flags::WILL != 0 {
        // [MQTT-3.1.2-14] will QoS 3 is invalid.
        let qos = QoS::from_u8(will_qos_bits).ok_or(DecodeError::InvalidQos)?;
        let properties = if version == ProtocolVersion::V5 {
            Properties::decode(r, PropertyContext::Will)?
        } else {
            Properties::default()
        };
        let topic = r.string()?;
        check_topic_name(&topic)?;
        // [MQTT-4.7.3-1] a topic name is at least one character long.
        if topic.is_empty() {
            return Err(DecodeError::EmptyTopicName);
        }
        let payload = r.binary()?;
        Some(Will {
            qos,
            retain: will_retain,
            properties,
            topic,
            payload,
        })
    } else {
        // [MQTT-3.1.2-11] [MQTT-3.1.2-13] [MQTT-3.1.2-15] without a will, will QoS and
        // will retain are zero.
        if will_qos_bits != 0 || will_retain {
            return Err(DecodeError::WillFlagsWithoutWill);
        }
        None
    })
}
