//! MQTT 5.0 properties (section 2.2.2): every property with its type, the packets it may
//! appear in, and the checks on its value.

use bytes::{BufMut, Bytes};
use smallvec::SmallVec;

use super::error::{DecodeError, EncodeError};
use super::primitives::{
    field_len, put_binary, put_varint, varint_len, MqttStr, Reader, VARINT_MAX,
};

/// Where a property block is found; each property is allowed in some of these (table 2-4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PropertyContext {
    Connect,
    ConnAck,
    Publish,
    PubAck,
    PubRec,
    PubRel,
    PubComp,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
    Will,
}

impl PropertyContext {
    fn bit(self) -> u16 {
        1 << self as u16
    }

    pub fn name(self) -> &'static str {
        match self {
            PropertyContext::Connect => "CONNECT",
            PropertyContext::ConnAck => "CONNACK",
            PropertyContext::Publish => "PUBLISH",
            PropertyContext::PubAck => "PUBACK",
            PropertyContext::PubRec => "PUBREC",
            PropertyContext::PubRel => "PUBREL",
            PropertyContext::PubComp => "PUBCOMP",
            PropertyContext::Subscribe => "SUBSCRIBE",
            PropertyContext::SubAck => "SUBACK",
            PropertyContext::Unsubscribe => "UNSUBSCRIBE",
            PropertyContext::UnsubAck => "UNSUBACK",
            PropertyContext::Disconnect => "DISCONNECT",
            PropertyContext::Auth => "AUTH",
            PropertyContext::Will => "Will Properties",
        }
    }
}

/// Property identifiers (table 2-4).
pub mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// Name and allowed packets of a property identifier; `None` for an unknown identifier.
fn describe(property: u8) -> Option<(&'static str, &'static [PropertyContext])> {
    use PropertyContext::*;
    const MESSAGE: &[PropertyContext] = &[Publish, Will];
    const REASON: &[PropertyContext] = &[
        ConnAck, PubAck, PubRec, PubRel, PubComp, SubAck, UnsubAck, Disconnect, Auth,
    ];
    const ALL: &[PropertyContext] = &[
        Connect,
        ConnAck,
        Publish,
        PubAck,
        PubRec,
        PubRel,
        PubComp,
        Subscribe,
        SubAck,
        Unsubscribe,
        UnsubAck,
        Disconnect,
        Auth,
        Will,
    ];
    Some(match property {
        id::PAYLOAD_FORMAT_INDICATOR => ("Payload Format Indicator", MESSAGE),
        id::MESSAGE_EXPIRY_INTERVAL => ("Message Expiry Interval", MESSAGE),
        id::CONTENT_TYPE => ("Content Type", MESSAGE),
        id::RESPONSE_TOPIC => ("Response Topic", MESSAGE),
        id::CORRELATION_DATA => ("Correlation Data", MESSAGE),
        id::SUBSCRIPTION_IDENTIFIER => ("Subscription Identifier", &[Publish, Subscribe]),
        id::SESSION_EXPIRY_INTERVAL => ("Session Expiry Interval", &[Connect, ConnAck, Disconnect]),
        id::ASSIGNED_CLIENT_IDENTIFIER => ("Assigned Client Identifier", &[ConnAck]),
        id::SERVER_KEEP_ALIVE => ("Server Keep Alive", &[ConnAck]),
        id::AUTHENTICATION_METHOD => ("Authentication Method", &[Connect, ConnAck, Auth]),
        id::AUTHENTICATION_DATA => ("Authentication Data", &[Connect, ConnAck, Auth]),
        id::REQUEST_PROBLEM_INFORMATION => ("Request Problem Information", &[Connect]),
        id::WILL_DELAY_INTERVAL => ("Will Delay Interval", &[Will]),
        id::REQUEST_RESPONSE_INFORMATION => ("Request Response Information", &[Connect]),
        id::RESPONSE_INFORMATION => ("Response Information", &[ConnAck]),
        id::SERVER_REFERENCE => ("Server Reference", &[ConnAck, Disconnect]),
        id::REASON_STRING => ("Reason String", REASON),
        id::RECEIVE_MAXIMUM => ("Receive Maximum", &[Connect, ConnAck]),
        id::TOPIC_ALIAS_MAXIMUM => ("Topic Alias Maximum", &[Connect, ConnAck]),
        id::TOPIC_ALIAS => ("Topic Alias", &[Publish]),
        id::MAXIMUM_QOS => ("Maximum QoS", &[ConnAck]),
        id::RETAIN_AVAILABLE => ("Retain Available", &[ConnAck]),
        id::USER_PROPERTY => ("User Property", ALL),
        id::MAXIMUM_PACKET_SIZE => ("Maximum Packet Size", &[Connect, ConnAck]),
        id::WILDCARD_SUBSCRIPTION_AVAILABLE => ("Wildcard Subscription Available", &[ConnAck]),
        id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => ("Subscription Identifier Available", &[ConnAck]),
        id::SHARED_SUBSCRIPTION_AVAILABLE => ("Shared Subscription Available", &[ConnAck]),
        _ => return None,
    })
}

/// The properties of one packet, boxed: most packets have none (every MQTT 3.x packet, most
/// 5.0 PUBLISHes), and then this is one null pointer instead of 400 bytes to fill, move and
/// drop on the hot path. Reads go through `Deref` (an empty set when there is none);
/// the first write through `DerefMut` allocates.
#[derive(Clone, Default)]
pub struct Properties(Option<Box<PropertyValues>>);

static NO_PROPERTIES: PropertyValues = PropertyValues::EMPTY;

impl std::ops::Deref for Properties {
    type Target = PropertyValues;
    fn deref(&self) -> &PropertyValues {
        self.0.as_deref().unwrap_or(&NO_PROPERTIES)
    }
}

impl std::ops::DerefMut for Properties {
    fn deref_mut(&mut self) -> &mut PropertyValues {
        self.0.get_or_insert_with(Box::default)
    }
}

impl From<PropertyValues> for Properties {
    fn from(values: PropertyValues) -> Self {
        if values == PropertyValues::EMPTY {
            Properties(None)
        } else {
            Properties(Some(Box::new(values)))
        }
    }
}

impl PartialEq for Properties {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Properties {}

impl std::fmt::Debug for Properties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            None => f.write_str("Properties(none)"),
            Some(values) => values.fmt(f),
        }
    }
}

/// All MQTT 5.0 properties of one packet. Strings and binary data are shared slices of the
/// received packet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PropertyValues {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<MqttStr>,
    pub response_topic: Option<MqttStr>,
    pub correlation_data: Option<Bytes>,
    /// Several only in a PUBLISH from the server; at most one in SUBSCRIBE.
    pub subscription_identifiers: SmallVec<[u32; 1]>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<MqttStr>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<MqttStr>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<bool>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<bool>,
    pub response_information: Option<MqttStr>,
    pub server_reference: Option<MqttStr>,
    pub reason_string: Option<MqttStr>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<bool>,
    /// In the order received, which must be kept when forwarding. [MQTT-3.3.2-18]
    pub user_properties: Vec<(MqttStr, MqttStr)>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<bool>,
    pub subscription_identifier_available: Option<bool>,
    pub shared_subscription_available: Option<bool>,
}

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

impl PropertyValues {
    pub const EMPTY: PropertyValues = PropertyValues {
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        subscription_identifiers: SmallVec::new_const(),
        session_expiry_interval: None,
        assigned_client_identifier: None,
        server_keep_alive: None,
        authentication_method: None,
        authentication_data: None,
        request_problem_information: None,
        will_delay_interval: None,
        request_response_information: None,
        response_information: None,
        server_reference: None,
        reason_string: None,
        receive_maximum: None,
        topic_alias_maximum: None,
        topic_alias: None,
        maximum_qos: None,
        retain_available: None,
        user_properties: Vec::new(),
        maximum_packet_size: None,
        wildcard_subscription_available: None,
        subscription_identifier_available: None,
        shared_subscription_available: None,
    };
}

impl Properties {
    pub fn is_empty(&self) -> bool {
        self.0
            .as_deref()
            .is_none_or(|values| *values == PropertyValues::EMPTY)
    }

    /// Drops every property not allowed in `context` (say, Will Delay Interval when a will
    /// becomes a PUBLISH).
    pub fn retain_allowed(&mut self, context: PropertyContext) {
        if let Some(values) = &mut self.0 {
            values.retain_allowed(context);
        }
    }

    /// Reads a property block (its variable byte integer length, then the properties) and
    /// checks each property against `context`.
    pub fn decode(r: &mut Reader<'_>, context: PropertyContext) -> Result<Self, DecodeError> {
        let len = r.varint()? as usize;
        if len == 0 {
            return Ok(Properties(None));
        }
        let block = r.sub(len)?;
        Ok(Properties(Some(Box::new(PropertyValues::decode(
            block, context,
        )?))))
    }

    /// Length of the properties themselves, without the length prefix.
    pub fn body_len(&self) -> Result<usize, EncodeError> {
        self.0.as_deref().map_or(Ok(0), PropertyValues::body_len)
    }

    /// Length of the whole property block: the length prefix and the properties.
    pub fn encoded_len(&self) -> Result<usize, EncodeError> {
        let body = self.body_len()?;
        if body > VARINT_MAX as usize {
            return Err(EncodeError::PacketTooLarge { len: body });
        }
        Ok(varint_len(body as u32) + body)
    }

    /// Writes the block; `body_len` must be `self.body_len()`.
    pub fn encode<B: BufMut>(&self, buf: &mut B, body_len: usize) {
        put_varint(buf, body_len as u32);
        if let Some(values) = &self.0 {
            values.encode(buf);
        }
    }
}

impl PropertyValues {
    fn retain_allowed(&mut self, context: PropertyContext) {
        let ok = |property: u8| {
            describe(property).is_some_and(|(_, allowed)| allowed.contains(&context))
        };
        fn clear<T>(keep: bool, slot: &mut Option<T>) {
            if !keep {
                *slot = None;
            }
        }
        clear(
            ok(id::PAYLOAD_FORMAT_INDICATOR),
            &mut self.payload_format_indicator,
        );
        clear(
            ok(id::MESSAGE_EXPIRY_INTERVAL),
            &mut self.message_expiry_interval,
        );
        clear(ok(id::CONTENT_TYPE), &mut self.content_type);
        clear(ok(id::RESPONSE_TOPIC), &mut self.response_topic);
        clear(ok(id::CORRELATION_DATA), &mut self.correlation_data);
        if !ok(id::SUBSCRIPTION_IDENTIFIER) {
            self.subscription_identifiers.clear();
        }
        clear(
            ok(id::SESSION_EXPIRY_INTERVAL),
            &mut self.session_expiry_interval,
        );
        clear(
            ok(id::ASSIGNED_CLIENT_IDENTIFIER),
            &mut self.assigned_client_identifier,
        );
        clear(ok(id::SERVER_KEEP_ALIVE), &mut self.server_keep_alive);
        clear(
            ok(id::AUTHENTICATION_METHOD),
            &mut self.authentication_method,
        );
        clear(ok(id::AUTHENTICATION_DATA), &mut self.authentication_data);
        clear(
            ok(id::REQUEST_PROBLEM_INFORMATION),
            &mut self.request_problem_information,
        );
        clear(ok(id::WILL_DELAY_INTERVAL), &mut self.will_delay_interval);
        clear(
            ok(id::REQUEST_RESPONSE_INFORMATION),
            &mut self.request_response_information,
        );
        clear(ok(id::RESPONSE_INFORMATION), &mut self.response_information);
        clear(ok(id::SERVER_REFERENCE), &mut self.server_reference);
        clear(ok(id::REASON_STRING), &mut self.reason_string);
        clear(ok(id::RECEIVE_MAXIMUM), &mut self.receive_maximum);
        clear(ok(id::TOPIC_ALIAS_MAXIMUM), &mut self.topic_alias_maximum);
        clear(ok(id::TOPIC_ALIAS), &mut self.topic_alias);
        clear(ok(id::MAXIMUM_QOS), &mut self.maximum_qos);
        clear(ok(id::RETAIN_AVAILABLE), &mut self.retain_available);
        clear(ok(id::MAXIMUM_PACKET_SIZE), &mut self.maximum_packet_size);
        clear(
            ok(id::WILDCARD_SUBSCRIPTION_AVAILABLE),
            &mut self.wildcard_subscription_available,
        );
        clear(
            ok(id::SUBSCRIPTION_IDENTIFIER_AVAILABLE),
            &mut self.subscription_identifier_available,
        );
        clear(
            ok(id::SHARED_SUBSCRIPTION_AVAILABLE),
            &mut self.shared_subscription_available,
        );
    }

    /// Reads the properties of a block and checks each against `context`.
    fn decode(mut block: Reader<'_>, context: PropertyContext) -> Result<Self, DecodeError> {
        let mut p = PropertyValues::default();
        while block.has_remaining() {
            // The identifier is a variable byte integer (§2.2.2.2); all defined ones fit one byte.
            let property = block.varint()?;
            let property =
                u8::try_from(property).map_err(|_| DecodeError::UnknownProperty(0xFF))?;
            let (name, allowed) =
                describe(property).ok_or(DecodeError::UnknownProperty(property))?;
            // §2.2.2.2: an identifier not valid for the packet makes it a Malformed Packet.
            if allowed.iter().all(|c| c.bit() != context.bit()) {
                return Err(DecodeError::PropertyNotAllowed {
                    property: name,
                    packet: context.name(),
                });
            }
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
                    let key = b.string()?;
                    let value = b.string()?;
                    p.user_properties.push((key, value));
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
        for (k, v) in &self.user_properties {
            len += 1 + field_len(k.len())? + field_len(v.len())?;
        }
        Ok(len)
    }

    /// Writes the properties, without the length prefix.
    fn encode<B: BufMut>(&self, buf: &mut B) {
        fn put_u8<B: BufMut>(buf: &mut B, property: u8, v: Option<u8>) {
            if let Some(v) = v {
                buf.put_u8(property);
                buf.put_u8(v);
            }
        }
        fn put_flag<B: BufMut>(buf: &mut B, property: u8, v: Option<bool>) {
            put_u8(buf, property, v.map(u8::from));
        }
        fn put_u16<B: BufMut>(buf: &mut B, property: u8, v: Option<u16>) {
            if let Some(v) = v {
                buf.put_u8(property);
                buf.put_u16(v);
            }
        }
        fn put_u32<B: BufMut>(buf: &mut B, property: u8, v: Option<u32>) {
            if let Some(v) = v {
                buf.put_u8(property);
                buf.put_u32(v);
            }
        }
        fn put_data<B: BufMut>(buf: &mut B, property: u8, v: Option<&[u8]>) {
            if let Some(v) = v {
                buf.put_u8(property);
                put_binary(buf, v);
            }
        }
        fn s(v: &Option<MqttStr>) -> Option<&[u8]> {
            v.as_ref().map(|s| &s.as_bytes()[..])
        }
        fn b(v: &Option<Bytes>) -> Option<&[u8]> {
            v.as_deref()
        }
        // Ascending identifier order, so that the same properties always encode the same.
        put_u8(
            buf,
            id::PAYLOAD_FORMAT_INDICATOR,
            self.payload_format_indicator,
        );
        put_u32(
            buf,
            id::MESSAGE_EXPIRY_INTERVAL,
            self.message_expiry_interval,
        );
        put_data(buf, id::CONTENT_TYPE, s(&self.content_type));
        put_data(buf, id::RESPONSE_TOPIC, s(&self.response_topic));
        put_data(buf, id::CORRELATION_DATA, b(&self.correlation_data));
        for &v in &self.subscription_identifiers {
            buf.put_u8(id::SUBSCRIPTION_IDENTIFIER);
            put_varint(buf, v);
        }
        put_u32(
            buf,
            id::SESSION_EXPIRY_INTERVAL,
            self.session_expiry_interval,
        );
        put_data(
            buf,
            id::ASSIGNED_CLIENT_IDENTIFIER,
            s(&self.assigned_client_identifier),
        );
        put_u16(buf, id::SERVER_KEEP_ALIVE, self.server_keep_alive);
        put_data(
            buf,
            id::AUTHENTICATION_METHOD,
            s(&self.authentication_method),
        );
        put_data(buf, id::AUTHENTICATION_DATA, b(&self.authentication_data));
        put_flag(
            buf,
            id::REQUEST_PROBLEM_INFORMATION,
            self.request_problem_information,
        );
        put_u32(buf, id::WILL_DELAY_INTERVAL, self.will_delay_interval);
        put_flag(
            buf,
            id::REQUEST_RESPONSE_INFORMATION,
            self.request_response_information,
        );
        put_data(buf, id::RESPONSE_INFORMATION, s(&self.response_information));
        put_data(buf, id::SERVER_REFERENCE, s(&self.server_reference));
        put_data(buf, id::REASON_STRING, s(&self.reason_string));
        put_u16(buf, id::RECEIVE_MAXIMUM, self.receive_maximum);
        put_u16(buf, id::TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        put_u16(buf, id::TOPIC_ALIAS, self.topic_alias);
        put_u8(buf, id::MAXIMUM_QOS, self.maximum_qos);
        put_flag(buf, id::RETAIN_AVAILABLE, self.retain_available);
        for (k, v) in &self.user_properties {
            buf.put_u8(id::USER_PROPERTY);
            put_binary(buf, k.as_bytes());
            put_binary(buf, v.as_bytes());
        }
        put_u32(buf, id::MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        put_flag(
            buf,
            id::WILDCARD_SUBSCRIPTION_AVAILABLE,
            self.wildcard_subscription_available,
        );
        put_flag(
            buf,
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            self.subscription_identifier_available,
        );
        put_flag(
            buf,
            id::SHARED_SUBSCRIPTION_AVAILABLE,
            self.shared_subscription_available,
        );
    }
}
