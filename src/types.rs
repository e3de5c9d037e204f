//! The few types every part of the broker names: a message as routed, a delivery target, and
//! the ids of sessions and connections. They live here, apart from the modules that act on
//! them, so that `router`, `session`, `retain` and `shard` depend on this module and not on
//! each other.

use bytes::Bytes;
use smallvec::SmallVec;
use std::time::Instant;

use crate::codec::{MqttStr, Properties, QoS};

/// A session, as the broker names it for its whole life (stable across reconnects and
/// moves between shards). Never 0 (`Shared::new_session_id` counts from 1), which gives
/// `Option<SessionId>` a niche: 8 bytes, not 16, in every connection record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(std::num::NonZeroU64);

impl SessionId {
    /// Panics on 0, which no session is given.
    pub const fn new(id: u64) -> SessionId {
        match std::num::NonZeroU64::new(id) {
            Some(id) => SessionId(id),
            None => panic!("session id 0"),
        }
    }

    pub const fn get(self) -> u64 {
        self.0.get()
    }
}

/// A connection on its shard. The slot is reused after the connection closes; the
/// generation is not, so a stale id (a completion for a connection closed since, say) never
/// names the connection that took its slot. Generations start at 1 and skip 0 when they
/// wrap (`ConnId::next_generation`), which gives `Option<ConnId>` a niche: 8 bytes, not 12.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    slot: u32,
    generation: std::num::NonZeroU32,
}

impl ConnId {
    /// `generation` is one given out by `next_generation`, never 0.
    pub const fn new(slot: usize, generation: u32) -> ConnId {
        debug_assert!(generation != 0, "connection generation 0");
        let generation = match std::num::NonZeroU32::new(generation) {
            Some(g) => g,
            None => std::num::NonZeroU32::MAX,
        };
        ConnId {
            slot: slot as u32,
            generation,
        }
    }

    /// The generation given out after `generation` (the first is 1): never 0.
    pub const fn next_generation(generation: u32) -> u32 {
        match generation.checked_add(1) {
            Some(next) => next,
            None => 1,
        }
    }

    /// The slot, an index into the shard's and the backend's tables.
    pub const fn slot(self) -> usize {
        self.slot as usize
    }

    pub const fn generation(self) -> u32 {
        self.generation.get()
    }
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.slot, self.generation)
    }
}

/// A message as routed: built once on the receiving shard, shared by every delivery.
#[derive(Debug)]
pub struct Message {
    pub topic: MqttStr,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: Properties,
    /// The publishing session (for No Local), if a client published it.
    pub origin: Option<SessionId>,
    /// From the 5.0 Message Expiry Interval: not delivered after this.
    pub expires_at: Option<Instant>,
    /// Its place among the messages its shard published (with persistence and more than
    /// one shard; else the default).
    pub order: PublishOrder,
    /// In a cluster: its place in the messages' stream, if it came through it
    /// (`cluster/replay.rs`).
    pub stream: StreamPlace,
}

/// A message's place in a cluster's messages' stream (`cluster/stored.rs`).
#[derive(Debug, Default)]
pub struct StreamPlace {
    /// Its sequence in the stream, if it came from another node through it (0: not).
    pub sequence: u64,
    /// Read again from the stream for sessions taken over from a node that is gone, not
    /// as it came (`cluster/replay.rs`).
    pub replayed: bool,
    /// Published here and handed to the stream: its shard and number among that shard's
    /// (`Cluster::forward`, `own_place`); 0: not.
    pub own: std::sync::atomic::AtomicU64,
}

impl StreamPlace {
    /// `number` of `shard` as `own` holds it.
    pub fn own_place(shard: usize, number: u64) -> u64 {
        ((shard as u64) << 48) | (number & ((1 << 48) - 1))
    }
}

/// Where a message was published: its number among the messages its shard published since
/// the start, and the shard. A publisher's messages can reach a session by different routes
/// between shards (straight, through the shard a session moved from, held while it
/// settles); recovery puts what it hands on back in this order [MQTT-4.6.0-6].
///
/// Ordered by number, then shard. A shard accepting a connection numbers on from past every
/// message of connections closed before (`Shared::published_mark`), so a client's messages
/// are in order even when its connections were on different shards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublishOrder {
    pub number: u64,
    pub shard: u16,
}

impl Message {
    /// A waiting will as the message it becomes, kept apart from when it is due (its Will
    /// Delay Interval is not a PUBLISH property).
    pub fn of_waiting_will(will: &crate::codec::Will) -> Message {
        let mut properties = will.properties.clone();
        properties.will_delay_interval = None;
        Message {
            topic: will.topic.clone(),
            payload: will.payload.clone(),
            qos: will.qos,
            retain: will.retain,
            properties,
            origin: None,
            expires_at: None,
            order: Default::default(),
            stream: Default::default(),
        }
    }

    /// The message as a 5.0 PUBLISH (topic, QoS, retain, properties, payload), as the
    /// journal keeps it and the cluster carries it; its packet id is a placeholder (a
    /// delivery numbers its own). `None` if it cannot be encoded (never for a message a
    /// client could publish).
    pub fn publish_bytes(&self) -> Option<Bytes> {
        let publish = crate::codec::Publish {
            dup: false,
            qos: self.qos,
            retain: self.retain,
            topic: self.topic.clone(),
            packet_id: u16::from(self.qos != QoS::AtMostOnce),
            properties: self.properties.clone(),
            payload: self.payload.clone(),
        };
        let packet = crate::codec::Packet::Publish(publish);
        packet.to_bytes(crate::codec::ProtocolVersion::V5).ok()
    }

    /// The message in `bytes`, one 5.0 PUBLISH of at most `max` bytes (`publish_bytes`),
    /// expiring at `expires_at`; an error says what is wrong with them.
    pub fn from_publish_bytes(
        bytes: &[u8],
        max: usize,
        expires_at: Option<Instant>,
    ) -> Result<Message, String> {
        use crate::codec::{Decoder, Packet, ProtocolVersion};
        let mut buf = bytes::BytesMut::from(bytes);
        match Decoder::client(ProtocolVersion::V5, max).decode_from(&mut buf) {
            Ok(Some(Packet::Publish(p))) if buf.is_empty() => Ok(Message {
                topic: p.topic,
                payload: p.payload,
                qos: p.qos,
                retain: p.retain,
                properties: p.properties,
                origin: None,
                expires_at,
                order: Default::default(),
                stream: Default::default(),
            }),
            Ok(_) => Err("not one PUBLISH".into()),
            Err(e) => Err(format!("a PUBLISH that does not decode: {e}")),
        }
    }

    /// What keeping it costs: the message with its reference counts, its topic, payload and
    /// properties (as they go on the wire: User Properties are kept so).
    pub fn held_bytes(&self) -> usize {
        std::mem::size_of::<Message>()
            + 2 * std::mem::size_of::<usize>()
            + self.topic.len()
            + self.payload.len()
            + self.properties.encoded_len().unwrap_or(0)
    }
}

/// One session to deliver a message to, with what its matching subscriptions ask for.
#[derive(Clone, Debug)]
pub struct Target {
    pub session: SessionId,
    pub qos: QoS,
    /// The RETAIN flag to send (Retain As Published).
    pub retain: bool,
    pub identifiers: SmallVec<[u32; 1]>,
    /// Only through share groups (`$share/...`): a cluster's replay, which takes plain
    /// subscriptions alone, does not bring it (`cluster/replay.rs`).
    pub shared: bool,
}

#[cfg(test)]
mod tests {
    use super::{ConnId, SessionId};

    #[test]
    fn session_ids_are_never_zero_so_an_absent_session_takes_no_room() {
        assert_eq!(SessionId::new(7).get(), 7);
        assert!(std::panic::catch_unwind(|| SessionId::new(0)).is_err());
        assert_eq!(std::mem::size_of::<Option<SessionId>>(), 8);
    }

    #[test]
    fn connection_generations_skip_zero_so_an_absent_connection_takes_no_room() {
        assert_eq!(ConnId::next_generation(0), 1);
        assert_eq!(ConnId::next_generation(41), 42);
        assert_eq!(ConnId::next_generation(u32::MAX), 1);
        let conn = ConnId::new(7, u32::MAX);
        assert_eq!((conn.slot(), conn.generation()), (7, u32::MAX));
        assert_eq!(std::mem::size_of::<Option<ConnId>>(), 8);
    }
}
