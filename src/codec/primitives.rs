//! The MQTT data representations (spec section 1.5 in 5.0, 1.5 in 3.1.1): two-byte integers,
//! four-byte integers, variable byte integers, UTF-8 strings and binary data. Decoding reads
//! from a `Bytes` frame and hands out slices of it, never copies.

use bytes::{BufMut, Bytes};
use std::fmt;

use super::error::{DecodeError, EncodeError};

/// Largest value a variable byte integer can hold: four bytes of seven bits. [MQTT-1.5.5-1]
pub const VARINT_MAX: u32 = 268_435_455;

/// Longest string or binary field: a two-byte length prefix. [MQTT-1.5.4-1]
pub const FIELD_LEN_MAX: usize = u16::MAX as usize;

/// A UTF-8 string as MQTT allows it: well-formed, no U+0000, at most 65,535 bytes, held as a
/// shared slice of the packet it came from.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MqttStr(Bytes);

impl MqttStr {
    /// Checks `bytes` against the MQTT string rules and wraps it without copying.
    pub fn from_bytes(bytes: Bytes) -> Result<Self, DecodeError> {
        check_mqtt_str(&bytes)?;
        Ok(MqttStr(bytes))
    }

    /// An owned copy of `text`; for strings the broker makes itself.
    pub fn new(text: &str) -> Result<Self, DecodeError> {
        Self::from_bytes(Bytes::copy_from_slice(text.as_bytes()))
    }

    /// A string from a compile-time constant (checked once, here).
    pub fn from_static(text: &'static str) -> Self {
        Self::from_bytes(Bytes::from_static(text.as_bytes())).expect("valid MQTT string constant")
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor ran `std::str::from_utf8` over exactly these bytes, and the
        // bytes behind a `Bytes` never change.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    /// A copy in its own allocation, for strings kept long after their packet: a slice would
    /// keep the whole receive buffer it came from alive.
    pub fn detached(&self) -> MqttStr {
        MqttStr(Bytes::copy_from_slice(&self.0))
    }

    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// The string from byte `from` on (sharing the buffer).
    ///
    /// # Panics
    /// If `from` is not a character boundary.
    pub fn tail(&self, from: usize) -> MqttStr {
        assert!(
            self.as_str().is_char_boundary(from),
            "tail inside a character"
        );
        MqttStr(self.0.slice(from..))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::ops::Deref for MqttStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for MqttStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for MqttStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for MqttStr {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for MqttStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Checks `bytes` against the rules of an MQTT string.
fn check_mqtt_str(bytes: &[u8]) -> Result<(), DecodeError> {
    if bytes.len() > FIELD_LEN_MAX {
        return Err(DecodeError::StringTooLong { len: bytes.len() });
    }
    // [MQTT-1.5.4-1] well-formed UTF-8; Rust's check also refuses encoded surrogates
    // (U+D800..U+DFFF), which the same rule forbids.
    let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8)?;
    // [MQTT-1.5.4-2] no null character.
    if text.as_bytes().contains(&0) {
        return Err(DecodeError::NullCharacter);
    }
    Ok(())
}

/// A cursor over one packet's bytes. Every read checks the bounds first, so a short packet is
/// an error, never a panic.
pub struct Reader<'a> {
    frame: &'a Bytes,
    pos: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    pub fn new(frame: &'a Bytes, start: usize, end: usize) -> Self {
        debug_assert!(start <= end && end <= frame.len());
        Reader {
            frame,
            pos: start,
            end,
        }
    }

    pub fn remaining(&self) -> usize {
        self.end - self.pos
    }

    pub fn has_remaining(&self) -> bool {
        self.pos < self.end
    }

    fn take(&mut self, n: usize) -> Result<usize, DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated);
        }
        let at = self.pos;
        self.pos += n;
        Ok(at)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        let at = self.take(1)?;
        Ok(self.frame[at])
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        let at = self.take(2)?;
        Ok(u16::from_be_bytes([self.frame[at], self.frame[at + 1]]))
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let at = self.take(4)?;
        let b = &self.frame[at..at + 4];
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn varint(&mut self) -> Result<u32, DecodeError> {
        let (value, used) =
            decode_varint(&self.frame[self.pos..self.end])?.ok_or(DecodeError::Truncated)?;
        self.pos += used;
        Ok(value)
    }

    /// `n` bytes as a shared slice of the frame.
    pub fn bytes(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        let at = self.take(n)?;
        Ok(self.frame.slice(at..at + n))
    }

    /// Binary data: a two-byte length then that many bytes.
    pub fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()? as usize;
        self.bytes(len)
    }

    pub fn string(&mut self) -> Result<MqttStr, DecodeError> {
        MqttStr::from_bytes(self.binary()?)
    }

    /// A string, checked, as the bytes of the frame it is in (no shared handle: for what is
    /// copied at once, such as User Properties).
    pub fn string_bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u16()? as usize;
        let at = self.take(len)?;
        let frame: &'a Bytes = self.frame;
        let bytes = &frame[at..at + len];
        check_mqtt_str(bytes)?;
        Ok(bytes)
    }

    /// Everything left, as a shared slice.
    pub fn rest(&mut self) -> Bytes {
        let at = self.pos;
        self.pos = self.end;
        self.frame.slice(at..self.end)
    }

    /// A sub-reader over the next `n` bytes (a property block), advancing past them.
    pub fn sub(&mut self, n: usize) -> Result<Reader<'a>, DecodeError> {
        let at = self.take(n)?;
        Ok(Reader::new(self.frame, at, at + n))
    }
}

/// Decodes a variable byte integer from the front of `buf`.
/// `Ok(None)`: more bytes are needed. `Ok(Some((value, bytes used)))` otherwise.
pub fn decode_varint(buf: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u32 = 0;
    for (i, &byte) in buf.iter().enumerate() {
        // [MQTT-1.5.5-1] at most four bytes.
        if i == 4 {
            return Err(DecodeError::MalformedVarint);
        }
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            // [MQTT-1.5.5-1] the minimum number of bytes: a last byte of zero after others
            // means the value fitted in fewer.
            if i > 0 && byte == 0 {
                return Err(DecodeError::MalformedVarint);
            }
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 4 {
        return Err(DecodeError::MalformedVarint);
    }
    Ok(None)
}

/// Bytes the variable byte integer encoding of `value` takes.
pub fn varint_len(value: u32) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub fn put_varint<B: BufMut>(buf: &mut B, mut value: u32) {
    debug_assert!(value <= VARINT_MAX);
    loop {
        let mut byte = (value & 0x7F) as u8;
        value >>= 7;
        if value > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if value == 0 {
            return;
        }
    }
}

/// Checks that a length-prefixed field fits its two-byte prefix and returns its encoded size.
pub fn field_len(len: usize) -> Result<usize, EncodeError> {
    if len > FIELD_LEN_MAX {
        return Err(EncodeError::FieldTooLong { len });
    }
    Ok(2 + len)
}

pub fn put_binary<B: BufMut>(buf: &mut B, data: &[u8]) {
    debug_assert!(data.len() <= FIELD_LEN_MAX);
    buf.put_u16(data.len() as u16);
    buf.put_slice(data);
}
