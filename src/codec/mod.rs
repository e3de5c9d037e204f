//! The MQTT 3.1, 3.1.1 and 5.0 wire format: every control packet, decoded incrementally and
//! without copies from a byte buffer, encoded into a caller's buffer with the exact length
//! known beforehand.
//!
//! Decoding checks every rule of the format itself and cites it; rules that need session state
//! (a second CONNECT, topic aliases, receive maximum) belong to the broker.

mod connect;
mod control;
mod error;
mod primitives;
mod properties;
mod property_wire;
mod publish;
mod reason;
mod subscribe;
mod user_properties;

use bytes::{BufMut, Bytes, BytesMut};
use std::fmt;

pub use connect::{v3_return_code, ConnAck, Connect, Will};
pub use control::{Auth, Disconnect};
pub use error::{DecodeError, EncodeError};
pub use primitives::{decode_varint, put_varint, varint_len, MqttStr, FIELD_LEN_MAX, VARINT_MAX};
pub use properties::{Properties, PropertyContext, PropertyValues};
pub use property_wire::USER_PROPERTIES_MAX;
pub use publish::{peek_payload, PubResponse, Publish, PublishSummary};
pub use reason::{ReasonCode, ReasonContext};
pub use subscribe::{
    RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
    TOPIC_FILTERS_MAX,
};
pub use user_properties::UserProperties;

use primitives::Reader;

/// The protocol level byte of CONNECT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtocolVersion {
    /// MQTT 3.1, protocol name `MQIsdp`.
    V31 = 3,
    /// MQTT 3.1.1.
    V311 = 4,
    /// MQTT 5.0.
    V5 = 5,
}

impl ProtocolVersion {
    pub fn protocol_name(self) -> &'static str {
        match self {
            ProtocolVersion::V31 => "MQIsdp",
            ProtocolVersion::V311 | ProtocolVersion::V5 => "MQTT",
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            ProtocolVersion::V31 => "3.1",
            ProtocolVersion::V311 => "3.1.1",
            ProtocolVersion::V5 => "5.0",
        }
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QoS {
    #[default]
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    /// `None` for 3, which no packet may carry.
    pub fn from_u8(value: u8) -> Option<QoS> {
        match value {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// Control packet types (§2.1.2).
pub mod packet_type {
    pub const CONNECT: u8 = 1;
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const PUBREC: u8 = 5;
    pub const PUBREL: u8 = 6;
    pub const PUBCOMP: u8 = 7;
    pub const SUBSCRIBE: u8 = 8;
    pub const SUBACK: u8 = 9;
    pub const UNSUBSCRIBE: u8 = 10;
    pub const UNSUBACK: u8 = 11;
    pub const PINGREQ: u8 = 12;
    pub const PINGRESP: u8 = 13;
    pub const DISCONNECT: u8 = 14;
    pub const AUTH: u8 = 15;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(PubResponse),
    PubRec(PubResponse),
    PubRel(PubResponse),
    PubComp(PubResponse),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    /// 5.0 only.
    Auth(Auth),
}

/// What one call to `Decoder::decode` found at the front of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole packet, and how many bytes of the buffer it took.
    Packet { packet: Packet, consumed: usize },
    /// The buffer holds only part of a packet; `needed` is how many more bytes complete it,
    /// once the fixed header says (`None` while the fixed header itself is incomplete).
    Incomplete { needed: Option<usize> },
}

/// The fixed header (§2.1): packet type, flags and remaining length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedHeader {
    pub packet_type: u8,
    pub flags: u8,
    pub remaining_len: usize,
    /// Bytes the fixed header itself takes (2 to 5).
    pub header_len: usize,
}

impl FixedHeader {
    pub fn packet_len(&self) -> usize {
        self.header_len + self.remaining_len
    }
}

/// How much larger than twice a packet the buffer it arrived in may be for the packet to
/// share it rather than be copied out (`Decoder::decode_from`).
const FRAME_SHARE_SLACK: usize = 64 * 1024;

/// Decodes packets for one connection. `version` is `None` until CONNECT has been read; then
/// it is the connection's protocol version, which the caller sets.
#[derive(Clone, Copy, Debug)]
pub struct Decoder {
    pub version: Option<ProtocolVersion>,
    /// The largest packet accepted, fixed header included. Checked as soon as the remaining
    /// length is read, before the rest of the packet is waited for or stored. (u32: MQTT's
    /// largest packet fits, and every connection holds a decoder.)
    packet_size_max: u32,
}

impl Decoder {
    /// A decoder for a server: the first packet must be CONNECT, which sets the version.
    pub fn server(packet_size_max: usize) -> Self {
        Decoder {
            version: None,
            packet_size_max: u32::try_from(packet_size_max).unwrap_or(u32::MAX),
        }
    }

    /// A decoder for a client that sent CONNECT with `version`.
    pub fn client(version: ProtocolVersion, packet_size_max: usize) -> Self {
        Decoder {
            version: Some(version),
            packet_size_max: u32::try_from(packet_size_max).unwrap_or(u32::MAX),
        }
    }

    /// The largest packet accepted from now on.
    pub fn set_packet_size_max(&mut self, packet_size_max: usize) {
        self.packet_size_max = u32::try_from(packet_size_max).unwrap_or(u32::MAX);
    }

    /// Reads and checks the fixed header at the front of `buf`. `Ok(None)` if incomplete.
    pub fn fixed_header(&self, buf: &[u8]) -> Result<Option<FixedHeader>, DecodeError> {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        let packet_type = first >> 4;
        let flags = first & 0x0F;
        self.check_type_and_flags(packet_type, flags)?;
        let Some((remaining_len, used)) = decode_varint(&buf[1..])? else {
            return Ok(None);
        };
        let header = FixedHeader {
            packet_type,
            flags,
            remaining_len: remaining_len as usize,
            header_len: 1 + used,
        };
        let packet_size_max = self.packet_size_max as usize;
        if header.packet_len() > packet_size_max {
            return Err(DecodeError::PacketTooLarge {
                size: header.packet_len(),
                max: packet_size_max,
            });
        }
        Ok(Some(header))
    }

    fn check_type_and_flags(&self, packet_type: u8, flags: u8) -> Result<(), DecodeError> {
        use packet_type::*;
        if packet_type == 0 {
            return Err(DecodeError::ReservedPacketType(0));
        }
        match self.version {
            // [MQTT-3.1.0-1] the first packet from the client must be CONNECT.
            None if packet_type != CONNECT => {
                return Err(DecodeError::ExpectedConnect(packet_type))
            }
            // Type 15 is reserved before 5.0 (3.1.1 §2.2.1).
            Some(v) if packet_type == AUTH && v != ProtocolVersion::V5 => {
                return Err(DecodeError::NotInVersion {
                    packet_type,
                    version: v.text(),
                });
            }
            _ => {}
        }
        let valid = match packet_type {
            PUBLISH => true, // DUP, QoS and RETAIN are checked by the PUBLISH decoder.
            // [MQTT-3.6.1-1] [MQTT-3.8.1-1] [MQTT-3.10.1-1] flags 0010. MQTT 3.1 let a
            // resent one carry DUP, which Mosquitto still accepts from 3.1 clients.
            PUBREL | SUBSCRIBE | UNSUBSCRIBE => {
                flags == 0b0010 || (self.version == Some(ProtocolVersion::V31) && flags == 0b1010)
            }
            // [MQTT-2.1.3-1] (5.0), [MQTT-2.2.2-1] (3.1.1): reserved flags are zero.
            _ => flags == 0,
        };
        if !valid {
            return Err(DecodeError::InvalidFlags { packet_type, flags });
        }
        Ok(())
    }

    /// Decodes the packet at the front of `input`. Strings and payloads in the result are
    /// slices of `input`, not copies.
    pub fn decode(&self, input: &Bytes) -> Result<Decoded, DecodeError> {
        let Some(header) = self.fixed_header(input)? else {
            return Ok(Decoded::Incomplete { needed: None });
        };
        let total = header.packet_len();
        if input.len() < total {
            return Ok(Decoded::Incomplete {
                needed: Some(total - input.len()),
            });
        }
        let packet = self.decode_body(input, &header)?;
        Ok(Decoded::Packet {
            packet,
            consumed: total,
        })
    }

    /// Takes one whole packet off the front of `buf`, if there is one. The packet's bytes are
    /// split off and frozen, so the packet shares them without a copy.
    pub fn decode_from(&self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let Some(header) = self.fixed_header(buf)? else {
            return Ok(None);
        };
        if buf.len() < header.packet_len() {
            return Ok(None);
        }
        let len = header.packet_len();
        // What the packet keeps (a retained or queued payload, a topic) pins the buffer it
        // is a slice of: a small packet behind a large one in a buffer grown for the large
        // one is copied out, so that it does not keep that whole buffer alive.
        let frame = if buf.capacity() > 2 * len + FRAME_SHARE_SLACK {
            let frame = Bytes::copy_from_slice(&buf[..len]);
            bytes::Buf::advance(buf, len);
            frame
        } else {
            let frame = buf.split_to(len).freeze();
            // What follows a large packet in a buffer sized for it (`shard/receiving.rs`)
            // would share its allocation, and pin it: moved to one of its own.
            if len > FRAME_SHARE_SLACK && !buf.is_empty() {
                *buf = BytesMut::from(&buf[..]);
            }
            frame
        };
        self.decode_body(&frame, &header).map(Some)
    }

    fn decode_body(&self, frame: &Bytes, header: &FixedHeader) -> Result<Packet, DecodeError> {
        use packet_type::*;
        let mut r = Reader::new(frame, header.header_len, header.packet_len());
        if header.packet_type == CONNECT {
            let connect = Connect::decode(&mut r)?;
            return finish(r, Packet::Connect(Box::new(connect)));
        }
        // fixed_header() refused every other type while the version is unknown.
        let version = self
            .version
            .ok_or(DecodeError::ExpectedConnect(header.packet_type))?;
        let v = version;
        let packet = match header.packet_type {
            CONNACK => Packet::ConnAck(ConnAck::decode(&mut r, v)?),
            PUBLISH => Packet::Publish(Publish::decode(&mut r, header.flags, v)?),
            PUBACK => Packet::PubAck(PubResponse::decode(
                &mut r,
                v,
                ReasonContext::PubAck,
                PropertyContext::PubAck,
                "PUBACK",
            )?),
            PUBREC => Packet::PubRec(PubResponse::decode(
                &mut r,
                v,
                ReasonContext::PubRec,
                PropertyContext::PubRec,
                "PUBREC",
            )?),
            PUBREL => Packet::PubRel(PubResponse::decode(
                &mut r,
                v,
                ReasonContext::PubRel,
                PropertyContext::PubRel,
                "PUBREL",
            )?),
            PUBCOMP => Packet::PubComp(PubResponse::decode(
                &mut r,
                v,
                ReasonContext::PubComp,
                PropertyContext::PubComp,
                "PUBCOMP",
            )?),
            SUBSCRIBE => Packet::Subscribe(Subscribe::decode(&mut r, v)?),
            SUBACK => Packet::SubAck(SubAck::decode(&mut r, v)?),
            UNSUBSCRIBE => Packet::Unsubscribe(Unsubscribe::decode(&mut r, v)?),
            UNSUBACK => Packet::UnsubAck(UnsubAck::decode(&mut r, v)?),
            PINGREQ => Packet::PingReq,
            PINGRESP => Packet::PingResp,
            DISCONNECT => Packet::Disconnect(Disconnect::decode(
                &mut r,
                v,
                ReasonContext::Disconnect,
                PropertyContext::Disconnect,
                "DISCONNECT",
            )?),
            AUTH => Packet::Auth(Disconnect::decode(
                &mut r,
                v,
                ReasonContext::Auth,
                PropertyContext::Auth,
                "AUTH",
            )?),
            other => return Err(DecodeError::ReservedPacketType(other)),
        };
        finish(r, packet)
    }
}

/// A packet must use exactly its remaining length (§2.1.4: the remaining length is the
/// number of bytes of the variable header and payload).
fn finish(r: Reader<'_>, packet: Packet) -> Result<Packet, DecodeError> {
    if r.has_remaining() {
        return Err(DecodeError::TrailingBytes(r.remaining()));
    }
    Ok(packet)
}

impl Packet {
    pub fn packet_type(&self) -> u8 {
        use packet_type::*;
        match self {
            Packet::Connect(_) => CONNECT,
            Packet::ConnAck(_) => CONNACK,
            Packet::Publish(_) => PUBLISH,
            Packet::PubAck(_) => PUBACK,
            Packet::PubRec(_) => PUBREC,
            Packet::PubRel(_) => PUBREL,
            Packet::PubComp(_) => PUBCOMP,
            Packet::Subscribe(_) => SUBSCRIBE,
            Packet::SubAck(_) => SUBACK,
            Packet::Unsubscribe(_) => UNSUBSCRIBE,
            Packet::UnsubAck(_) => UNSUBACK,
            Packet::PingReq => PINGREQ,
            Packet::PingResp => PINGRESP,
            Packet::Disconnect(_) => DISCONNECT,
            Packet::Auth(_) => AUTH,
        }
    }

    /// The packet's name as Mosquitto logs it.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }

    fn flags(&self) -> u8 {
        match self {
            Packet::Publish(p) => p.flags(),
            Packet::PubRel(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) => 0b0010,
            _ => 0,
        }
    }

    /// Length of the variable header and payload (the remaining length) for `version`.
    /// CONNECT always uses its own version.
    fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let v = version;
        match self {
            Packet::Connect(c) => c.body_len(),
            Packet::ConnAck(c) => c.body_len(v),
            Packet::Publish(p) => p.body_len(v),
            Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
                p.body_len(v)
            }
            Packet::Subscribe(s) => s.body_len(v),
            Packet::SubAck(s) => s.body_len(v),
            Packet::Unsubscribe(u) => u.body_len(v),
            Packet::UnsubAck(u) => u.body_len(v),
            Packet::PingReq | Packet::PingResp => Ok(0),
            Packet::Disconnect(d) => d.body_len(v),
            Packet::Auth(a) => {
                if v != ProtocolVersion::V5 {
                    return Err(EncodeError::NotInVersion {
                        packet: "AUTH",
                        version: v.text(),
                    });
                }
                a.body_len(v)
            }
        }
    }

    /// The exact number of bytes `encode` writes for `version`.
    pub fn encoded_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let body = self.body_len(version)?;
        if body > VARINT_MAX as usize {
            return Err(EncodeError::PacketTooLarge { len: body });
        }
        Ok(1 + varint_len(body as u32) + body)
    }

    /// Appends the packet to `buf` and returns the number of bytes written.
    pub fn encode<B: BufMut>(
        &self,
        version: ProtocolVersion,
        buf: &mut B,
    ) -> Result<usize, EncodeError> {
        let body = self.body_len(version)?;
        if body > VARINT_MAX as usize {
            return Err(EncodeError::PacketTooLarge { len: body });
        }
        buf.put_u8((self.packet_type() << 4) | self.flags());
        put_varint(buf, body as u32);
        let v = version;
        match self {
            Packet::Connect(c) => c.encode_body(buf),
            Packet::ConnAck(c) => c.encode_body(v, buf),
            Packet::Publish(p) => p.encode_body(v, buf),
            Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
                p.encode_body(v, buf)
            }
            Packet::Subscribe(s) => s.encode_body(v, buf),
            Packet::SubAck(s) => s.encode_body(v, buf),
            Packet::Unsubscribe(u) => u.encode_body(v, buf),
            Packet::UnsubAck(u) => u.encode_body(v, buf),
            Packet::PingReq | Packet::PingResp => {}
            Packet::Disconnect(d) | Packet::Auth(d) => d.encode_body(v, buf),
        }
        Ok(1 + varint_len(body as u32) + body)
    }

    /// Encodes into a new buffer of exactly the right size.
    pub fn to_bytes(&self, version: ProtocolVersion) -> Result<Bytes, EncodeError> {
        let mut buf = BytesMut::with_capacity(self.encoded_len(version)?);
        self.encode(version, &mut buf)?;
        Ok(buf.freeze())
    }
}
