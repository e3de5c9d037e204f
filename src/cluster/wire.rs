//! A message as it travels between nodes: a small header (format, origin, number, what is
//! left of its expiry), the share groups the publishing node served (if any), then the
//! message as a 5.0 PUBLISH (topic, QoS, retain, properties, payload), as the journal
//! keeps messages. The topic travels whole in the PUBLISH: the subject only routes it.

use bytes::{BufMut, Bytes, BytesMut};
use std::time::{Duration, Instant};

use super::dedup::Origin;
use crate::router::Message;

/// The format's first byte; another is refused (a node of a later midge speaking a format
/// this one does not know). 2: the served share groups.
const FORMAT: u8 = 2;

/// Header: format, flags, incarnation, shard, number, expiry left (ms).
const HEADER_LEN: usize = 1 + 1 + 8 + 2 + 8 + 8;

/// Flag: the message expires (`expiry_ms` counts).
const EXPIRES: u8 = 1;
/// Flag: after the header, the share groups the publishing node served: a count (u16),
/// then each group's `topic::group_hash` (u64).
const SERVED: u8 = 2;

/// Share groups listed at most (8 KB; past it, the others may get the message from
/// another node as well: counted by the link).
pub const SERVED_MAX: usize = 1024;

/// The largest PUBLISH read from another node: MQTT's largest packet. (Each subscriber's
/// own Maximum Packet Size still applies to what it is sent.)
const PACKET_MAX: usize = 268_435_460;

/// The longest expiry taken: MQTT's Message Expiry Interval is at most 2^32 - 1 seconds.
const EXPIRY_MAX_MS: u64 = u32::MAX as u64 * 1000;

/// A message from another node.
pub struct Arrived {
    pub origin: Origin,
    pub number: u64,
    /// The share groups the publishing node served (`topic::group_hash`).
    pub served: Vec<u64>,
    pub message: Message,
}

/// `message`'s bytes for NATS, published from `origin` as its `number`th, at `now`. `None`
/// if it cannot be encoded (never for a message a client could publish).
pub fn encode(message: &Message, origin: Origin, number: u64, now: Instant) -> Option<Bytes> {
    encode_served(message, origin, number, &[], now)
}

/// As `encode`, saying which share groups the publishing node served (`SERVED_MAX` at
/// most; the rest are left out).
pub fn encode_served(
    message: &Message,
    origin: Origin,
    number: u64,
    served: &[u64],
    now: Instant,
) -> Option<Bytes> {
    let packet = message.publish_bytes()?;
    let served = &served[..served.len().min(SERVED_MAX)];
    let mut out = BytesMut::with_capacity(HEADER_LEN + 2 + 8 * served.len() + packet.len());
    out.put_u8(FORMAT);
    let mut flags = 0;
    if message.expires_at.is_some() {
        flags |= EXPIRES;
    }
    if !served.is_empty() {
        flags |= SERVED;
    }
    out.put_u8(flags);
    out.put_u64(origin.incarnation);
    out.put_u16(origin.shard);
    out.put_u64(number);
    // What is left of the expiry: the clocks of two machines need not agree, the time on
    // the way is not counted.
    let left = message
        .expires_at
        .map_or(0, |at| at.saturating_duration_since(now).as_millis());
    out.put_u64(u64::try_from(left).unwrap_or(u64::MAX));
    if !served.is_empty() {
        out.put_u16(served.len() as u16);
        for &hash in served {
            out.put_u64(hash);
        }
    }
    out.extend_from_slice(&packet);
    Some(out.freeze())
}

/// The served share groups at the start of `bytes` (after the header), and where the
/// PUBLISH starts.
fn served_groups(bytes: &[u8]) -> Result<(Vec<u64>, usize), String> {
    let short = || "a list of share groups cut short".to_string();
    let count = bytes.get(..2).ok_or_else(short)?;
    let count = usize::from(u16::from_be_bytes([count[0], count[1]]));
    if count > SERVED_MAX {
        return Err(format!(
            "{count} share groups listed (at most {SERVED_MAX})"
        ));
    }
    let end = 2 + 8 * count;
    let list = bytes.get(2..end).ok_or_else(short)?;
    let served = (list.chunks_exact(8))
        .map(|h| u64::from_be_bytes(h.try_into().expect("8 bytes")))
        .collect();
    Ok((served, end))
}

/// The message in `bytes`, arrived at `now`; an error says what is wrong with them.
pub fn decode(bytes: &[u8], now: Instant) -> Result<Arrived, String> {
    if bytes.len() < HEADER_LEN {
        return Err(format!("{} bytes, shorter than a header", bytes.len()));
    }
    if bytes[0] != FORMAT {
        return Err(format!("format {} (this node reads {FORMAT})", bytes[0]));
    }
    let flags = bytes[1];
    if flags & !(EXPIRES | SERVED) != 0 {
        return Err(format!("flags {flags:#04x} this node does not know"));
    }
    let u64_at = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let origin = Origin {
        incarnation: u64_at(2),
        shard: u16::from_be_bytes([bytes[10], bytes[11]]),
    };
    let number = u64_at(12);
    let left_ms = u64_at(20).min(EXPIRY_MAX_MS);
    let expires_at = (flags & EXPIRES != 0).then(|| now + Duration::from_millis(left_ms));
    let (served, publish_at) = if flags & SERVED != 0 {
        served_groups(&bytes[HEADER_LEN..])?
    } else {
        (Vec::new(), 0)
    };
    let packet = &bytes[HEADER_LEN + publish_at..];
    let message = Message::from_publish_bytes(packet, PACKET_MAX, expires_at)?;
    Ok(Arrived {
        origin,
        number,
        served,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{MqttStr, QoS};

    const ORIGIN: Origin = Origin {
        incarnation: 7,
        shard: 3,
    };

    fn message(expires_in: Option<Duration>, now: Instant) -> Message {
        Message {
            topic: MqttStr::from_static("a/b"),
            payload: Bytes::from_static(b"payload"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: Default::default(),
            origin: None,
            expires_at: expires_in.map(|d| now + d),
            order: Default::default(),
            stream: Default::default(),
        }
    }

    #[test]
    fn a_message_arrives_as_it_left_with_what_is_left_of_its_expiry() {
        let now = Instant::now();
        let sent = message(Some(Duration::from_secs(10)), now);
        let bytes = encode(&sent, ORIGIN, 42, now).unwrap();
        let later = now + Duration::from_secs(1);
        let arrived = decode(&bytes, later).unwrap();
        assert_eq!(arrived.origin, ORIGIN);
        assert_eq!(arrived.number, 42);
        let m = arrived.message;
        assert_eq!((m.topic.as_str(), &m.payload[..]), ("a/b", &b"payload"[..]));
        assert_eq!((m.qos, m.retain), (QoS::ExactlyOnce, true));
        assert_eq!(m.expires_at, Some(later + Duration::from_secs(10)));
        let never = decode(&encode(&message(None, now), ORIGIN, 1, now).unwrap(), now);
        assert_eq!(never.unwrap().message.expires_at, None);
    }

    #[test]
    fn an_expiry_past_mqtts_longest_is_cut_to_it() {
        let now = Instant::now();
        let mut bytes = encode(&message(Some(Duration::from_secs(1)), now), ORIGIN, 1, now)
            .unwrap()
            .to_vec();
        bytes[20..28].copy_from_slice(&u64::MAX.to_be_bytes());
        let arrived = decode(&bytes, now).unwrap();
        assert_eq!(
            arrived.message.expires_at,
            Some(now + Duration::from_millis(EXPIRY_MAX_MS))
        );
    }

    #[test]
    fn the_share_groups_served_travel_with_the_message() {
        let now = Instant::now();
        let served = [7, u64::MAX];
        let bytes = encode_served(&message(None, now), ORIGIN, 5, &served, now).unwrap();
        let arrived = decode(&bytes, now).unwrap();
        assert_eq!(arrived.served, served);
        assert_eq!(&arrived.message.payload[..], b"payload");
        // Cut anywhere in the list: an error, not a message.
        for cut in HEADER_LEN..HEADER_LEN + 18 {
            assert!(decode(&bytes[..cut], now).is_err(), "cut at {cut}");
        }
        let mut unknown_flag = bytes.to_vec();
        unknown_flag[1] |= 0x80;
        assert!(decode(&unknown_flag, now).is_err());
        let none = decode(&encode(&message(None, now), ORIGIN, 1, now).unwrap(), now);
        assert!(none.unwrap().served.is_empty());
    }

    #[test]
    fn bad_bytes_are_an_error_not_a_message() {
        let now = Instant::now();
        let good = encode(&message(None, now), ORIGIN, 1, now).unwrap();
        assert!(decode(&good[..10], now).is_err());
        let mut other_format = good.to_vec();
        other_format[0] = 9;
        assert!(decode(&other_format, now).is_err());
        let mut torn = good.to_vec();
        torn.pop();
        assert!(decode(&torn, now).is_err());
        let mut trailing = good.to_vec();
        trailing.push(0);
        assert!(decode(&trailing, now).is_err());
    }
}
