//! Properties on the wire (MQTT 5.0 §2.2.2): reading a property block with every check the
//! specification makes, and writing one.

use bytes::BufMut;

use super::error::{DecodeError, EncodeError};
use super::primitives::{
    field_len, put_binary, put_varint, varint_len, MqttStr, Reader, VARINT_MAX,
};
use super::properties::{describe, id, PropertyContext, PropertyValues};
use super::UserProperties;

fn set_once<T>(slot: &mut Option<T>, value: T, name: &'static str) -> Result<(), DecodeError> {
    if slot.is_some() {
        // MQTT 5.0 §2.2.2.2: including a property more than once is a Protocol Error.
        return Err(DecodeError::DuplicateProperty(name));
    }
    *slot = Some(value);
    Ok(())
}

/// A byte property whose only values are 0 and 1.
fn flag(r: &mut Reader<'_>, name: &'static str) -> Result<bool, DecodeError> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        value => Err(DecodeError::InvalidPropertyValue {
            property: name,
            value: value.into(),
        }),
    }
}

fn nonzero<T: Copy + Into<u32> + PartialEq + Default>(
    value: T,
    name: &'static str,
) -> Result<T, DecodeError> {
    if value == T::default() {
        return Err(DecodeError::InvalidPropertyValue {
            property: name,
            value: 0,
        });
    }
    Ok(value)
}

/// Most User Properties one packet may carry: each is five bytes on the wire at least and
/// its share of the packet's decoding (four million of them, in a packet of 20 MB, took a
/// shard's turn for 250 ms), so a packet of the largest size must not carry fifty million.
/// A packet with more is refused (DISCONNECT 0x97 Quota exceeded). The specification sets
/// no such bound.
pub const USER_PROPERTIES_MAX: usize = 64 * 1024;

impl PropertyValues {
    /// Reads the properties of a block and checks each against `context`.
    pub(super) fn decode(
        mut block: Reader<'_>,
        context: PropertyContext,
    ) -> Result<Self, DecodeError> {
        let mut p = PropertyValues::default();
        let mut users = super::user_properties::Builder::default();
        while block.has_remaining() {
            // The identifier is a variable byte integer (§2.2.2.2); all defined ones fit one byte.
            let property = block.varint()?;
            let property =
                u8::try_from(property).map_err(|_| DecodeError::UnknownProperty(0xFF))?;
            let (name, allowed) =
                describe(property).ok_or(DecodeError::UnknownProperty(property))?;
            // §2.2.2.2: an identifier not valid for the packet makes it a Malformed Packet.
            if !allowed.contains(&context) {
                return Err(DecodeError::PropertyNotAllowed {
                    property: name,
                    packet: context.name(),
                });
            }
            p.received_order.push(property);
            let b = &mut block;
            match property {
                id::PAYLOAD_FORMAT_INDICATOR => {
                    let v = b.u8()?;
                    if v > 1 {
                        return Err(DecodeError::InvalidPropertyValue {
                            property: name,
                            value: v.into(),
                        });
                    }
                    set_once(&mut p.payload_format_indicator, v, name)?
                }
                id::MESSAGE_EXPIRY_INTERVAL => {
                    set_once(&mut p.message_expiry_interval, b.u32()?, name)?
                }
                id::CONTENT_TYPE => set_once(&mut p.content_type, b.string()?, name)?,
                id::RESPONSE_TOPIC => set_once(&mut p.response_topic, b.string()?, name)?,
                id::CORRELATION_DATA => set_once(&mut p.correlation_data, b.binary()?, name)?,
                id::SUBSCRIPTION_IDENTIFIER => {
                    // [MQTT-3.8.2.1.2] a value of 0 is a Protocol Error.
                    let v = nonzero(b.varint()?, name)?;
                    // Only a PUBLISH may carry several (one per matching subscription).
                    if context != PropertyContext::Publish && !p.subscription_identifiers.is_empty()
                    {
                        return Err(DecodeError::DuplicateProperty(name));
                    }
                    p.subscription_identifiers.push(v);
                }
                id::SESSION_EXPIRY_INTERVAL => {
                    set_once(&mut p.session_expiry_interval, b.u32()?, name)?
                }
                id::ASSIGNED_CLIENT_IDENTIFIER => {
                    set_once(&mut p.assigned_client_identifier, b.string()?, name)?
                }
                id::SERVER_KEEP_ALIVE => set_once(&mut p.server_keep_alive, b.u16()?, name)?,
                id::AUTHENTICATION_METHOD => {
                    set_once(&mut p.authentication_method, b.string()?, name)?
                }
                id::AUTHENTICATION_DATA => set_once(&mut p.authentication_data, b.binary()?, name)?,
                id::REQUEST_PROBLEM_INFORMATION => {
                    set_once(&mut p.request_problem_information, flag(b, name)?, name)?
                }
                id::WILL_DELAY_INTERVAL => set_once(&mut p.will_delay_interval, b.u32()?, name)?,
                id::REQUEST_RESPONSE_INFORMATION => {
                    set_once(&mut p.request_response_information, flag(b, name)?, name)?
                }
                id::RESPONSE_INFORMATION => {
                    set_once(&mut p.response_information, b.string()?, name)?
                }
                id::SERVER_REFERENCE => set_once(&mut p.server_reference, b.string()?, name)?,
                id::REASON_STRING => set_once(&mut p.reason_string, b.string()?, name)?,
                // MQTT 5.0 §3.1.2.11.3 and §3.2.2.3.3: Receive Maximum 0 is a Protocol Error.
                id::RECEIVE_MAXIMUM => {
                    set_once(&mut p.receive_maximum, nonzero(b.u16()?, name)?, name)?
                }
                id::TOPIC_ALIAS_MAXIMUM => set_once(&mut p.topic_alias_maximum, b.u16()?, name)?,
                // [MQTT-3.3.2-8] a Topic Alias of 0 is not permitted.
                id::TOPIC_ALIAS => set_once(&mut p.topic_alias, nonzero(b.u16()?, name)?, name)?,
                id::MAXIMUM_QOS => {
                    let v = b.u8()?;
                    if v > 1 {
                        return Err(DecodeError::InvalidPropertyValue {
                            property: name,
                            value: v.into(),
                        });
                    }
                    set_once(&mut p.maximum_qos, v, name)?
                }
                id::RETAIN_AVAILABLE => set_once(&mut p.retain_available, flag(b, name)?, name)?,
                id::USER_PROPERTY => {
                    // [MQTT-3.3.2-17] any number may be sent; midge takes USER_PROPERTIES_MAX.
                    if users.len() == USER_PROPERTIES_MAX {
                        return Err(DecodeError::TooManyUserProperties {
                            max: USER_PROPERTIES_MAX,
                        });
                    }
                    let key = b.string_bytes()?;
                    let value = b.string_bytes()?;
                    users.push_bytes(key, value);
                }
                // §3.1.2.11.4: Maximum Packet Size 0 is a Protocol Error.
                id::MAXIMUM_PACKET_SIZE => {
                    set_once(&mut p.maximum_packet_size, nonzero(b.u32()?, name)?, name)?
                }
                id::WILDCARD_SUBSCRIPTION_AVAILABLE => {
                    set_once(&mut p.wildcard_subscription_available, flag(b, name)?, name)?
                }
                id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => set_once(
                    &mut p.subscription_identifier_available,
                    flag(b, name)?,
                    name,
                )?,
                id::SHARED_SUBSCRIPTION_AVAILABLE => {
                    set_once(&mut p.shared_subscription_available, flag(b, name)?, name)?
                }
                _ => unreachable!("describe() knows only the identifiers matched here"),
            }
        }
        p.user_properties = users.finish();
        Ok(p)
    }

    /// Length of the properties themselves, without the length prefix.
    pub fn body_len(&self) -> Result<usize, EncodeError> {
        let mut len = 0;
        let byte = |o: Option<u8>| o.map_or(0, |_| 2);
        let flag = |o: Option<bool>| o.map_or(0, |_| 2);
        let two = |o: Option<u16>| o.map_or(0, |_| 3);
        let four = |o: Option<u32>| o.map_or(0, |_| 5);
        len += byte(self.payload_format_indicator) + byte(self.maximum_qos);
        len += flag(self.request_problem_information)
            + flag(self.request_response_information)
            + flag(self.retain_available)
            + flag(self.wildcard_subscription_available)
            + flag(self.subscription_identifier_available)
            + flag(self.shared_subscription_available);
        len += two(self.server_keep_alive)
            + two(self.receive_maximum)
            + two(self.topic_alias_maximum)
            + two(self.topic_alias);
        len += four(self.message_expiry_interval)
            + four(self.session_expiry_interval)
            + four(self.will_delay_interval)
            + four(self.maximum_packet_size);
        for s in [
            &self.content_type,
            &self.response_topic,
            &self.assigned_client_identifier,
            &self.authentication_method,
            &self.response_information,
            &self.server_reference,
            &self.reason_string,
        ]
        .into_iter()
        .flatten()
        {
            len += 1 + field_len(s.len())?;
        }
        for b in [&self.correlation_data, &self.authentication_data]
            .into_iter()
            .flatten()
        {
            len += 1 + field_len(b.len())?;
        }
        for &v in &self.subscription_identifiers {
            if v == 0 || v > VARINT_MAX {
                return Err(EncodeError::FieldTooLong { len: v as usize });
            }
            len += 1 + varint_len(v);
        }
        // Each string was checked for its length when it was added.
        len += self.user_properties.wire_len();
        Ok(len)
    }

    /// Writes the properties, without the length prefix, in `order` (each identifier
    /// once; a property not named there is not written).
    pub(super) fn encode<B: BufMut>(&self, buf: &mut B, order: &[u8]) {
        for &property in order {
            self.put(buf, property);
        }
    }

    /// Writes a PUBLISH's properties. One that was received (and is being forwarded) keeps
    /// its publisher's order, as Mosquitto forwards it: first what the broker sets for this
    /// subscriber (Subscription Identifiers, a Topic Alias), then the publisher's properties
    /// in the order received, then the Message Expiry Interval (the time left), then
    /// anything not in that order. Others are written in ascending order.
    pub(super) fn encode_publish<B: BufMut>(&self, buf: &mut B) {
        let order = self.received_order.as_slice();
        if order.is_empty() {
            return self.encode(buf, &id::ASCENDING);
        }
        let apart = [
            id::SUBSCRIPTION_IDENTIFIER,
            id::TOPIC_ALIAS,
            id::MESSAGE_EXPIRY_INTERVAL,
            id::USER_PROPERTY,
        ];
        self.put(buf, id::SUBSCRIPTION_IDENTIFIER);
        self.put(buf, id::TOPIC_ALIAS);
        let mut users = self.user_properties.iter();
        for (at, &property) in order.iter().enumerate() {
            if property == id::USER_PROPERTY {
                if let Some((k, v)) = users.next() {
                    UserProperties::put_pair(buf, property, &k, &v);
                }
            } else if !apart.contains(&property) && !order[..at].contains(&property) {
                self.put(buf, property);
            }
        }
        for (k, v) in users {
            UserProperties::put_pair(buf, id::USER_PROPERTY, &k, &v);
        }
        self.put(buf, id::MESSAGE_EXPIRY_INTERVAL);
        for property in id::ASCENDING {
            if !apart.contains(&property) && !order.contains(&property) {
                self.put(buf, property);
            }
        }
    }

    /// Writes property `property` if it is set (every value of a repeatable one).
    fn put<B: BufMut>(&self, buf: &mut B, property: u8) {
        fn u8_<B: BufMut>(buf: &mut B, property: u8, v: Option<u8>) {
            if let Some(v) = v {
                buf.put_u8(property);
                buf.put_u8(v);
            }
        }
        fn flag<B: BufMut>(buf: &mut B, property: u8, v: Option<bool>) {
            u8_(buf, property, v.map(u8::from));
        }
        fn u16_<B: BufMut>(buf: &mut B, property: u8, v: Option<u16>) {
            if let Some(v) = v {
                buf.put_u8(property);
                buf.put_u16(v);
            }
        }
        fn u32_<B: BufMut>(buf: &mut B, property: u8, v: Option<u32>) {
            if let Some(v) = v {
                buf.put_u8(property);
                buf.put_u32(v);
            }
        }
        fn data<B: BufMut>(buf: &mut B, property: u8, v: Option<&[u8]>) {
            if let Some(v) = v {
                buf.put_u8(property);
                put_binary(buf, v);
            }
        }
        fn s(v: &Option<MqttStr>) -> Option<&[u8]> {
            v.as_ref().map(|s| &s.as_bytes()[..])
        }
        match property {
            id::PAYLOAD_FORMAT_INDICATOR => u8_(buf, property, self.payload_format_indicator),
            id::MESSAGE_EXPIRY_INTERVAL => u32_(buf, property, self.message_expiry_interval),
            id::CONTENT_TYPE => data(buf, property, s(&self.content_type)),
            id::RESPONSE_TOPIC => data(buf, property, s(&self.response_topic)),
            id::CORRELATION_DATA => data(buf, property, self.correlation_data.as_deref()),
            id::SUBSCRIPTION_IDENTIFIER => {
                for &v in &self.subscription_identifiers {
                    buf.put_u8(property);
                    put_varint(buf, v);
                }
            }
            id::SESSION_EXPIRY_INTERVAL => u32_(buf, property, self.session_expiry_interval),
            id::ASSIGNED_CLIENT_IDENTIFIER => {
                data(buf, property, s(&self.assigned_client_identifier))
            }
            id::SERVER_KEEP_ALIVE => u16_(buf, property, self.server_keep_alive),
            id::AUTHENTICATION_METHOD => data(buf, property, s(&self.authentication_method)),
            id::AUTHENTICATION_DATA => data(buf, property, self.authentication_data.as_deref()),
            id::REQUEST_PROBLEM_INFORMATION => {
                flag(buf, property, self.request_problem_information)
            }
            id::WILL_DELAY_INTERVAL => u32_(buf, property, self.will_delay_interval),
            id::REQUEST_RESPONSE_INFORMATION => {
                flag(buf, property, self.request_response_information)
            }
            id::RESPONSE_INFORMATION => data(buf, property, s(&self.response_information)),
            id::SERVER_REFERENCE => data(buf, property, s(&self.server_reference)),
            id::REASON_STRING => data(buf, property, s(&self.reason_string)),
            id::RECEIVE_MAXIMUM => u16_(buf, property, self.receive_maximum),
            id::TOPIC_ALIAS_MAXIMUM => u16_(buf, property, self.topic_alias_maximum),
            id::TOPIC_ALIAS => u16_(buf, property, self.topic_alias),
            id::MAXIMUM_QOS => u8_(buf, property, self.maximum_qos),
            id::RETAIN_AVAILABLE => flag(buf, property, self.retain_available),
            id::USER_PROPERTY => self.user_properties.put(buf, property),
            id::MAXIMUM_PACKET_SIZE => u32_(buf, property, self.maximum_packet_size),
            id::WILDCARD_SUBSCRIPTION_AVAILABLE => {
                flag(buf, property, self.wildcard_subscription_available)
            }
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                flag(buf, property, self.subscription_identifier_available)
            }
            id::SHARED_SUBSCRIPTION_AVAILABLE => {
                flag(buf, property, self.shared_subscription_available)
            }
            _ => debug_assert!(false, "no property {property:#04x}"),
        }
    }
}
