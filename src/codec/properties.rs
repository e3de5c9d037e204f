//! MQTT 5.0 properties (section 2.2.2): every property with its type, the packets it may
//! appear in, and the checks on its value.

use bytes::{BufMut, Bytes};
use smallvec::SmallVec;

use super::error::{DecodeError, EncodeError};
use super::primitives::{put_varint, varint_len, MqttStr, Reader, VARINT_MAX};

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

    /// Every property, in ascending identifier order: how midge writes them, so that the
    /// same properties always encode the same.
    pub const ASCENDING: [u8; 27] = [
        PAYLOAD_FORMAT_INDICATOR,
        MESSAGE_EXPIRY_INTERVAL,
        CONTENT_TYPE,
        RESPONSE_TOPIC,
        CORRELATION_DATA,
        SUBSCRIPTION_IDENTIFIER,
        SESSION_EXPIRY_INTERVAL,
        ASSIGNED_CLIENT_IDENTIFIER,
        SERVER_KEEP_ALIVE,
        AUTHENTICATION_METHOD,
        AUTHENTICATION_DATA,
        REQUEST_PROBLEM_INFORMATION,
        WILL_DELAY_INTERVAL,
        REQUEST_RESPONSE_INFORMATION,
        RESPONSE_INFORMATION,
        SERVER_REFERENCE,
        REASON_STRING,
        RECEIVE_MAXIMUM,
        TOPIC_ALIAS_MAXIMUM,
        TOPIC_ALIAS,
        MAXIMUM_QOS,
        RETAIN_AVAILABLE,
        USER_PROPERTY,
        MAXIMUM_PACKET_SIZE,
        WILDCARD_SUBSCRIPTION_AVAILABLE,
        SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        SHARED_SUBSCRIPTION_AVAILABLE,
    ];

    /// CONNACK's properties in the order Mosquitto writes them (the order is free in the
    /// spec; tools compare CONNACK bytes): what the connection negotiated first, then the
    /// broker's limits. Those Mosquitto never sends come last.
    pub const CONNACK_ORDER: [u8; 27] = [
        TOPIC_ALIAS_MAXIMUM,
        SERVER_KEEP_ALIVE,
        ASSIGNED_CLIENT_IDENTIFIER,
        AUTHENTICATION_METHOD,
        AUTHENTICATION_DATA,
        RETAIN_AVAILABLE,
        MAXIMUM_PACKET_SIZE,
        RECEIVE_MAXIMUM,
        MAXIMUM_QOS,
        RESPONSE_INFORMATION,
        SERVER_REFERENCE,
        REASON_STRING,
        USER_PROPERTY,
        WILDCARD_SUBSCRIPTION_AVAILABLE,
        SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        SHARED_SUBSCRIPTION_AVAILABLE,
        SESSION_EXPIRY_INTERVAL,
        PAYLOAD_FORMAT_INDICATOR,
        MESSAGE_EXPIRY_INTERVAL,
        CONTENT_TYPE,
        RESPONSE_TOPIC,
        CORRELATION_DATA,
        SUBSCRIPTION_IDENTIFIER,
        REQUEST_PROBLEM_INFORMATION,
        WILL_DELAY_INTERVAL,
        REQUEST_RESPONSE_INFORMATION,
        TOPIC_ALIAS,
    ];
}

/// Name and allowed packets of a property identifier; `None` for an unknown identifier.
pub(super) fn describe(property: u8) -> Option<(&'static str, &'static [PropertyContext])> {
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
    /// In the order received, which must be kept when forwarding [MQTT-3.3.2-18]; kept as
    /// the bytes they came in.
    pub user_properties: super::UserProperties,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<bool>,
    pub subscription_identifier_available: Option<bool>,
    pub shared_subscription_available: Option<bool>,
    /// The order the properties were received in, to forward them in it.
    pub received_order: ReceivedOrder,
}

/// The identifiers of received properties in the order they came (repeats included, the
/// first `ReceivedOrder::MAX`), so that a forwarded PUBLISH or will carries its properties in
/// its publisher's order, as Mosquitto forwards them (`encode_publish`). Not part of the
/// value: the same properties in another order are equal.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReceivedOrder {
    ids: [u8; ReceivedOrder::MAX],
    len: u8,
}

impl ReceivedOrder {
    pub const MAX: usize = 16;
    const EMPTY: ReceivedOrder = ReceivedOrder {
        ids: [0; ReceivedOrder::MAX],
        len: 0,
    };

    pub(super) fn push(&mut self, id: u8) {
        if usize::from(self.len) < Self::MAX {
            self.ids[usize::from(self.len)] = id;
            self.len += 1;
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.ids[..usize::from(self.len)]
    }
}

impl PartialEq for ReceivedOrder {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for ReceivedOrder {}

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
        user_properties: super::user_properties::EMPTY,
        maximum_packet_size: None,
        wildcard_subscription_available: None,
        subscription_identifier_available: None,
        shared_subscription_available: None,
        received_order: ReceivedOrder::EMPTY,
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
        self.encode_in_order(buf, body_len, &id::ASCENDING);
    }

    /// Writes a PUBLISH's block: a forwarded message's properties in its publisher's order
    /// (see `ReceivedOrder`), others in ascending order.
    pub fn encode_publish<B: BufMut>(&self, buf: &mut B, body_len: usize) {
        put_varint(buf, body_len as u32);
        if let Some(values) = &self.0 {
            values.encode_publish(buf);
        }
    }

    /// Writes the block with the properties in `order` (every identifier once).
    pub fn encode_in_order<B: BufMut>(&self, buf: &mut B, body_len: usize, order: &[u8]) {
        put_varint(buf, body_len as u32);
        if let Some(values) = &self.0 {
            values.encode(buf, order);
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
}

#[cfg(test)]
mod tests {
    use super::id;

    /// A property missing from an order would never be written: each order names every
    /// identifier exactly once.
    #[test]
    fn every_order_names_every_property_once() {
        for order in [id::ASCENDING, id::CONNACK_ORDER] {
            let mut sorted = order.to_vec();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted, id::ASCENDING.to_vec());
        }
    }
}
