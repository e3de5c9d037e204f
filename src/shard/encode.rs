//! Encoding a PUBLISH for its subscribers: once per variant (protocol version, QoS, flags,
//! mount point) of the message being delivered, with the packet id patched in per copy,
//! and the PUBLISH a subscriber gets (its 5.0 properties, its topic past a mount point).

use bytes::Bytes;
use smallvec::SmallVec;
use std::time::Instant;

use crate::codec::{MqttStr, Packet, ProtocolVersion, Publish, QoS};
use crate::router::Message;

/// Encoded PUBLISH variants of the message being delivered, so that subscribers that get the
/// same bytes share one encoding; QoS 1/2 copies get their packet id patched in. The
/// encodings are ranges of one buffer that the shard keeps from message to message
/// (`route::Routing::variants`, `clear`), not an allocation each.
#[derive(Default)]
pub(super) struct Variants {
    /// Key, where its encoding starts and ends in `encoded`, and the offset of its packet id;
    /// a large encoding in a buffer of its own instead (`large`), so that subscribers'
    /// outputs can share it (`Conn::put_publish`).
    entries: SmallVec<[(VariantKey, usize, usize, usize); 4]>,
    encoded: Vec<u8>,
    large: SmallVec<[(VariantKey, Encoding); 1]>,
    /// The last encoding made for one subscriber alone (`keep_own`).
    own: Option<Encoding>,
}

/// An encoded PUBLISH for one subscriber: the packet, or for a large one its head, with
/// where its packet id goes.
pub(super) struct Encoded<'a> {
    /// The whole packet; for a large one, the packet up to its payload.
    pub(super) head: &'a [u8],
    pub(super) id_at: usize,
    /// A large packet (`SHARED_ENCODING_MIN`): its head as a shareable buffer, and the
    /// message's payload that follows it.
    pub(super) large: Option<(&'a Bytes, &'a Bytes)>,
}

impl Encoded<'_> {
    /// The bytes of the whole packet.
    pub(super) fn len(&self) -> usize {
        self.head.len() + self.large.map_or(0, |(_, payload)| payload.len())
    }
}

/// A PUBLISH encoded for subscribers: its bytes (for a large one its head alone, the
/// message's payload following it from where it is), and where its packet id goes.
pub(super) struct Encoding {
    bytes: Bytes,
    id_at: usize,
    payload: Option<Bytes>,
}

impl Encoding {
    pub(super) fn encoded(&self) -> Encoded<'_> {
        Encoded {
            head: &self.bytes,
            id_at: self.id_at,
            large: self.payload.as_ref().map(|p| (&self.bytes, p)),
        }
    }
}

/// Encodings at least this large go to subscribers as shared buffers (the head after the
/// packet id, and the message's payload), not a copy each (`Conn::put_publish`).
pub(super) const SHARED_ENCODING_MIN: usize = 16 * 1024;

/// Bytes of encodings `Variants` keeps room for between messages.
const VARIANTS_KEPT_BYTES: usize = 16 * 1024;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct VariantKey {
    pub(super) v5: bool,
    pub(super) qos: QoS,
    pub(super) retain: bool,
    pub(super) dup: bool,
    /// Bytes of `mount_point` taken off the front of the topic.
    pub(super) strip: usize,
}

impl Variants {
    /// The encoded variant for `key` (packet id 0 as a placeholder) and the offset of its
    /// packet id.
    /// `None` if the message cannot be encoded in that variant (see `encode_with_id_offset`).
    pub(super) fn get(
        &mut self,
        key: VariantKey,
        message: &Message,
        now: Instant,
    ) -> Option<Encoded<'_>> {
        if let Some(i) = self.large.iter().position(|(k, _)| *k == key) {
            return Some(self.large[i].1.encoded());
        }
        let index = match self.entries.iter().position(|(k, ..)| *k == key) {
            Some(i) => i,
            None => {
                let mut publish =
                    build_publish(message, key.qos, key.retain, &[], key.v5, key.strip, now);
                publish.dup = key.dup;
                // A placeholder id (patched per copy) so that the field is there.
                publish.packet_id = u16::from(key.qos != QoS::AtMostOnce);
                let version = if key.v5 {
                    ProtocolVersion::V5
                } else {
                    ProtocolVersion::V311
                };
                let topic_len = publish.topic.len();
                let properties_len = publish.properties.encoded_len().unwrap_or(0);
                if publish.payload.len() + properties_len + topic_len >= SHARED_ENCODING_MIN {
                    // In a buffer of its own, to be shared by the subscribers' outputs.
                    self.large.push((key, encode_publish(publish, version)?));
                    return self.get(key, message, now);
                }
                let start = self.encoded.len();
                let encoded = Packet::Publish(publish).encode(version, &mut self.encoded);
                let id_at = encoded
                    .ok()
                    .and_then(|_| id_offset(&self.encoded[start..], topic_len));
                let Some(id_at) = id_at else {
                    self.encoded.truncate(start);
                    return None;
                };
                self.entries.push((key, start, self.encoded.len(), id_at));
                self.entries.len() - 1
            }
        };
        let (_, start, end, id_at) = self.entries[index];
        Some(Encoded {
            head: &self.encoded[start..end],
            id_at,
            large: None,
        })
    }

    /// Forgets the last message's encodings, keeping (bounded) room for the next one's.
    /// Keeps `encoding`, made for one subscriber alone, until the next one (or `clear`),
    /// and lends it.
    pub(super) fn keep_own(&mut self, encoding: Option<Encoding>) -> Option<Encoded<'_>> {
        self.own = encoding;
        self.own.as_ref().map(Encoding::encoded)
    }

    pub(super) fn clear(&mut self) {
        self.own = None;
        self.entries.clear();
        self.large.clear();
        self.encoded.clear();
        self.encoded.shrink_to(VARIANTS_KEPT_BYTES);
    }
}

/// Where the packet id of an encoded PUBLISH starts: past the fixed header, the topic's
/// two length bytes and the topic.
fn id_offset(encoded: &[u8], topic_len: usize) -> Option<usize> {
    let (_, varint) = crate::codec::decode_varint(encoded.get(1..)?)
        .ok()
        .flatten()?;
    Some(1 + varint + 2 + topic_len)
}

/// Encodes a PUBLISH for subscribers: whole, or past `SHARED_ENCODING_MIN` its head alone
/// (the payload is sent from the message, not copied), with the offset of its packet id:
/// past the fixed header, the topic's two length bytes and the topic.
/// `None` if it cannot be encoded: a message received from a 3.1.1 client close to the
/// largest remaining length [MQTT-2.2.3] grows past it by the property length byte a 5.0
/// subscriber's copy needs.
pub(super) fn encode_publish(publish: Publish, version: ProtocolVersion) -> Option<Encoding> {
    let topic_len = publish.topic.len();
    let packet = Packet::Publish(publish);
    let len = packet.encoded_len(version).ok()?;
    let Packet::Publish(publish) = packet else {
        unreachable!("built as a PUBLISH")
    };
    let (bytes, payload) = if len >= SHARED_ENCODING_MIN {
        (publish.head_bytes(version).ok()?, Some(publish.payload))
    } else {
        (Packet::Publish(publish).to_bytes(version).ok()?, None)
    };
    let id_at = id_offset(&bytes, topic_len)?;
    Some(Encoding {
        bytes,
        id_at,
        payload,
    })
}

/// How much of `topic` a client behind `mount` does not see, or `None` if the topic is
/// outside its mount point.
pub(super) fn mount_strip(mount: Option<&str>, topic: &str) -> Option<usize> {
    match mount {
        None => Some(0),
        Some(mount) if topic.len() > mount.len() && topic.starts_with(mount) => Some(mount.len()),
        Some(_) => None,
    }
}

/// The PUBLISH a subscriber gets: the message's properties for 5.0 (none before), with its
/// subscription identifiers, and the topic past its mount point (`strip` bytes).
pub(super) fn build_publish(
    message: &Message,
    qos: QoS,
    retain: bool,
    identifiers: &[u32],
    v5: bool,
    strip: usize,
    now: Instant,
) -> Publish {
    let mut properties = if v5 {
        message.properties.clone()
    } else {
        Default::default()
    };
    if let (true, Some(at)) = (v5, message.expires_at) {
        // [MQTT-3.3.2-6] the interval still to run, not the one received.
        let left = at.saturating_duration_since(now);
        properties.message_expiry_interval =
            Some(left.as_secs() as u32 + u32::from(left.subsec_nanos() > 0));
    }
    if v5 && !identifiers.is_empty() {
        properties.subscription_identifiers = identifiers.iter().copied().collect();
    }
    Publish {
        dup: false,
        qos,
        retain,
        topic: if strip == 0 {
            MqttStr::clone(&message.topic)
        } else {
            message.topic.tail(strip)
        },
        packet_id: 0,
        properties,
        payload: message.payload.clone(),
    }
}
