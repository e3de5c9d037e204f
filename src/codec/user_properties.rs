//! MQTT 5.0 User Properties (§3.3.2.3.7), kept as the bytes they travel as: a list of many
//! small pairs must cost what it weighs on the wire, not two string handles a pair (an empty
//! pair is 5 bytes on the wire and was 64 in memory as two `MqttStr`).

use bytes::{BufMut, Bytes};

use super::primitives::{put_binary, MqttStr};

/// User Properties in the order received [MQTT-3.3.2-18]: each key and value with its
/// two-byte length, one after another (the wire's form, without the identifier byte before
/// each pair). Every string in it was checked as an MQTT string when it was added.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct UserProperties {
    bytes: Bytes,
    count: u32,
}

/// No pairs (a constant, for `PropertyValues::EMPTY`).
pub(super) const EMPTY: UserProperties = UserProperties {
    bytes: Bytes::new(),
    count: 0,
};

impl UserProperties {
    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds a pair at the end (copies the list: for lists made a pair at a time by tools
    /// and tests; the decoder builds its list with `Builder`).
    pub fn push(&mut self, (key, value): (MqttStr, MqttStr)) {
        let mut builder = Builder {
            bytes: self.bytes.to_vec(),
            count: self.count,
        };
        builder.push(&key, &value);
        *self = builder.finish();
    }

    /// The pairs, in order (shared slices, no copies).
    pub fn iter(&self) -> impl Iterator<Item = (MqttStr, MqttStr)> + '_ {
        let mut at = 0;
        std::iter::from_fn(move || {
            if at == self.bytes.len() {
                return None;
            }
            let key = self.string_at(&mut at);
            let value = self.string_at(&mut at);
            Some((key, value))
        })
    }

    fn string_at(&self, at: &mut usize) -> MqttStr {
        let len = usize::from(u16::from_be_bytes([self.bytes[*at], self.bytes[*at + 1]]));
        let text = self.bytes.slice(*at + 2..*at + 2 + len);
        *at += 2 + len;
        MqttStr::from_bytes(text).expect("checked when it was added")
    }

    /// Bytes the pairs take on the wire, identifier bytes included.
    pub fn wire_len(&self) -> usize {
        self.bytes.len() + self.len()
    }

    /// Writes each pair as a User Property (`id` before each), as the bytes it was kept in.
    pub fn put<B: BufMut>(&self, buf: &mut B, id: u8) {
        let mut at = 0;
        while at < self.bytes.len() {
            let end = self.pair_end(at);
            buf.put_u8(id);
            buf.put_slice(&self.bytes[at..end]);
            at = end;
        }
    }

    /// Writes one pair as a User Property (`id` before it).
    pub fn put_pair<B: BufMut>(buf: &mut B, id: u8, key: &MqttStr, value: &MqttStr) {
        buf.put_u8(id);
        put_binary(buf, key.as_bytes());
        put_binary(buf, value.as_bytes());
    }

    /// Where the pair starting at `at` ends.
    fn pair_end(&self, at: usize) -> usize {
        let field_end = |at: usize| {
            at + 2 + usize::from(u16::from_be_bytes([self.bytes[at], self.bytes[at + 1]]))
        };
        field_end(field_end(at))
    }
}

impl FromIterator<(MqttStr, MqttStr)> for UserProperties {
    fn from_iter<I: IntoIterator<Item = (MqttStr, MqttStr)>>(pairs: I) -> Self {
        let mut builder = Builder::default();
        for (key, value) in pairs {
            builder.push(&key, &value);
        }
        builder.finish()
    }
}

impl std::fmt::Debug for UserProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Builds a list of pairs in one buffer, made exactly as large as it needs at the end.
#[derive(Default)]
pub(super) struct Builder {
    bytes: Vec<u8>,
    count: u32,
}

impl Builder {
    pub(super) fn push(&mut self, key: &MqttStr, value: &MqttStr) {
        self.push_bytes(key.as_bytes(), value.as_bytes());
    }

    /// Adds a pair from the bytes of two strings already checked as MQTT strings.
    pub(super) fn push_bytes(&mut self, key: &[u8], value: &[u8]) {
        put_binary(&mut self.bytes, key);
        put_binary(&mut self.bytes, value);
        self.count += 1;
    }

    pub(super) fn len(&self) -> usize {
        self.count as usize
    }

    pub(super) fn finish(mut self) -> UserProperties {
        self.bytes.shrink_to_fit();
        UserProperties {
            bytes: Bytes::from(self.bytes),
            count: self.count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> MqttStr {
        MqttStr::new(text).unwrap()
    }

    #[test]
    fn pairs_come_back_in_order_and_cost_their_wire_size() {
        let pairs = vec![(s("b"), s("2")), (s(""), s("")), (s("a"), s("é1"))];
        let list: UserProperties = pairs.iter().cloned().collect();
        assert_eq!(list.iter().collect::<Vec<_>>(), pairs);
        assert_eq!(list.len(), 3);
        // 0x26, two lengths of two bytes and the strings, per pair.
        assert_eq!(list.wire_len(), 3 * 5 + 1 + 1 + 1 + 3);
        let mut pushed = UserProperties::default();
        for pair in pairs {
            pushed.push(pair);
        }
        assert_eq!(pushed, list);
        let mut wire = Vec::new();
        list.put(&mut wire, 0x26);
        assert_eq!(wire.len(), list.wire_len());
        assert_eq!(&wire[..5], &[0x26, 0, 1, b'b', 0]);
    }
}
