//! Decode and encode errors. Every decode error names the MQTT 5.0 reason code the broker must
//! answer with (in a CONNACK before the session starts, in a DISCONNECT after).

use super::reason::ReasonCode;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed variable byte integer (more than four bytes or not minimal)")]
    MalformedVarint,
    #[error("packet of {size} bytes is larger than the maximum of {max}")]
    PacketTooLarge { size: usize, max: usize },
    #[error("reserved packet type {0}")]
    ReservedPacketType(u8),
    #[error("invalid fixed header flags 0x{flags:X} for packet type {packet_type}")]
    InvalidFlags { packet_type: u8, flags: u8 },
    #[error("packet shorter than its contents")]
    Truncated,
    #[error("{0} unexpected bytes at the end of the packet")]
    TrailingBytes(usize),
    #[error("string is not well-formed UTF-8")]
    InvalidUtf8,
    #[error("string contains U+0000")]
    NullCharacter,
    #[error("string of {len} bytes is longer than 65535")]
    StringTooLong { len: usize },
    #[error("QoS 3 is not a valid QoS")]
    InvalidQos,
    #[error("DUP set on a QoS 0 PUBLISH")]
    DupOnQos0,
    #[error("packet identifier 0 in {0}, where a non-zero one is required")]
    ZeroPacketId(&'static str),
    #[error("invalid protocol name {0:?}")]
    InvalidProtocolName(String),
    #[error("unsupported protocol version {0}")]
    UnsupportedProtocolVersion(u8),
    #[error("the reserved CONNECT flag is set")]
    ReservedConnectFlag,
    #[error("will QoS or will retain set without the will flag")]
    WillFlagsWithoutWill,
    #[error("password flag set without the user name flag")]
    PasswordWithoutUsername,
    #[error("reserved bits set in {0}")]
    ReservedBits(&'static str),
    #[error("topic name {0:?} contains a wildcard")]
    WildcardInTopicName(String),
    #[error("empty topic name")]
    EmptyTopicName,
    #[error("SUBSCRIBE or UNSUBSCRIBE with no topic filter")]
    NoTopicFilters,
    #[error("SUBSCRIBE or UNSUBSCRIBE with more than {max} topic filters")]
    TooManyTopicFilters { max: usize },
    #[error("more than {max} User Properties in one packet")]
    TooManyUserProperties { max: usize },
    #[error("retain handling 3 is not a valid value")]
    InvalidRetainHandling,
    #[error("reason code 0x{code:02X} is not valid in {packet}")]
    InvalidReasonCode { packet: &'static str, code: u8 },
    #[error("unknown property identifier 0x{0:02X}")]
    UnknownProperty(u8),
    #[error("property {property} is not allowed in {packet}")]
    PropertyNotAllowed {
        property: &'static str,
        packet: &'static str,
    },
    #[error("property {0} appears more than once")]
    DuplicateProperty(&'static str),
    #[error("property {property} has the invalid value {value}")]
    InvalidPropertyValue { property: &'static str, value: u32 },
    #[error("the first packet on a connection must be CONNECT, not packet type {0}")]
    ExpectedConnect(u8),
    #[error("packet type {packet_type} does not exist in MQTT {version}")]
    NotInVersion {
        packet_type: u8,
        version: &'static str,
    },
}

impl DecodeError {
    /// The MQTT 5.0 reason code this error is answered with.
    pub fn reason_code(&self) -> ReasonCode {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            UnsupportedProtocolVersion(_) => ReasonCode::UnsupportedProtocolVersion,
            // MQTT 5.0 §2.2.2.2: "It is a Protocol Error to include the same property twice"
            // and properties with a value outside their range are Protocol Errors.
            // A packet identifier of 0 [MQTT-2.2.1-3]: the spec names no code. Mosquitto's:
            // Malformed Packet in SUBSCRIBE and UNSUBSCRIBE, Protocol Error elsewhere.
            ZeroPacketId("SUBSCRIBE" | "UNSUBSCRIBE") => ReasonCode::MalformedPacket,
            ZeroPacketId(_)
            | DuplicateProperty(_)
            | InvalidPropertyValue { .. }
            | NoTopicFilters
            | InvalidRetainHandling
            | PasswordWithoutUsername
            | ExpectedConnect(_)
            | InvalidReasonCode { .. }
            | EmptyTopicName => ReasonCode::ProtocolError,
            // [MQTT-3.3.2-2] a wildcard in a Topic Name: the spec names no code; Mosquitto's
            // Protocol Error (0x90 is for a name well formed but not accepted).
            WildcardInTopicName(_) => ReasonCode::ProtocolError,
            // A bound of midge's own, not a rule of the specification's.
            TooManyTopicFilters { .. } | TooManyUserProperties { .. } => ReasonCode::QuotaExceeded,
            _ => ReasonCode::MalformedPacket,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("field of {len} bytes does not fit a two-byte length")]
    FieldTooLong { len: usize },
    #[error("packet body of {len} bytes exceeds the largest remaining length 268435455")]
    PacketTooLarge { len: usize },
    #[error("{packet} cannot be encoded for MQTT {version}")]
    NotInVersion {
        packet: &'static str,
        version: &'static str,
    },
}
