//! The few types every part of the broker names: a message as routed, a delivery target, and
//! the ids of sessions and connections. They live here, apart from the modules that act on
//! them, so that `router`, `session`, `retain` and `shard` depend on this module and not on
//! each other.

use bytes::Bytes;
use smallvec::SmallVec;
use std::time::Instant;

use crate::codec::{MqttStr, Properties, QoS};

/// A session, as the broker names it for its whole life (stable across reconnects and
/// moves between shards).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// A connection on its shard. The slot is reused after the connection closes; the
/// generation is not, so a stale id (a completion for a connection closed since, say) never
/// names the connection that took its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    slot: u32,
    generation: u32,
}

impl ConnId {
    pub const fn new(slot: usize, generation: u32) -> ConnId {
        ConnId {
            slot: slot as u32,
            generation,
        }
    }

    /// The slot, an index into the shard's and the backend's tables.
    pub const fn slot(self) -> usize {
        self.slot as usize
    }

    pub const fn generation(self) -> u32 {
        self.generation
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
}

/// One session to deliver a message to, with what its matching subscriptions ask for.
#[derive(Clone, Debug)]
pub struct Target {
    pub session: SessionId,
    pub qos: QoS,
    /// The RETAIN flag to send (Retain As Published).
    pub retain: bool,
    pub identifiers: SmallVec<[u32; 1]>,
}
