//! Helpers for the malformed-packet corpus: building packets byte by byte and checking
//! that they are refused with the right error and reason code.
#![allow(dead_code)]

use bytes::Bytes;
use midge::codec::*;

/// A packet with the given first byte and body; the remaining length is computed.
pub fn frame(first: u8, body: &[u8]) -> Bytes {
    let mut out = vec![first];
    put_varint(&mut out, body.len() as u32);
    out.extend_from_slice(body);
    Bytes::from(out)
}

/// A length-prefixed MQTT string or binary field.
pub fn s(data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(data);
    out
}

pub fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A CONNECT body for `name`/`level` with `flags`, keepalive 60, client id "c", then `rest`.
pub fn connect_body(name: &[u8], level: u8, flags: u8, properties: &[u8], rest: &[u8]) -> Vec<u8> {
    cat(&[&s(name), &[level, flags, 0, 60], properties, &s(b"c"), rest])
}

pub fn decode(decoder: Decoder, bytes: &Bytes) -> Result<Packet, DecodeError> {
    match decoder.decode(bytes)? {
        Decoded::Packet { packet, .. } => Ok(packet),
        Decoded::Incomplete { needed } => panic!("incomplete ({needed:?}): {bytes:02X?}"),
    }
}

pub fn client(v: ProtocolVersion) -> Decoder {
    Decoder::client(v, 1 << 16)
}

pub fn server() -> Decoder {
    Decoder::server(1 << 16)
}

/// Checks that `bytes` is refused with an error for which `expected` holds, answered `reason`.
pub fn refused(
    decoder: Decoder,
    bytes: Bytes,
    expected: fn(&DecodeError) -> bool,
    reason: ReasonCode,
) {
    let err = decode(decoder, &bytes).expect_err(&format!("{bytes:02X?} should be refused"));
    assert!(expected(&err), "{bytes:02X?}: unexpected error {err:?}");
    assert_eq!(err.reason_code(), reason, "{err:?}");
}

pub const MALFORMED: ReasonCode = ReasonCode::MalformedPacket;
pub const PROTOCOL: ReasonCode = ReasonCode::ProtocolError;
