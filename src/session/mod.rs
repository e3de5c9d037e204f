//! A client's session: its subscriptions, its will, and the QoS 1/2 state in both directions.
//! Owned by the shard of the client's current connection; it outlives the connection when
//! the client asked for a persistent session.
//!
//! The QoS state is two state machines with no I/O and no clock of their own: `Outgoing`
//! (the inflight window, the queue and owed retained messages: what the broker sends) and
//! `IncomingQos2` (QoS 2 packet ids awaiting PUBREL: what the client sends). The shard feeds
//! them events (a message to deliver, an acknowledgement) and acts on their answers (send,
//! queue, drop); their fields are their own, so their invariants hold by construction and
//! are checked (`check_invariants`) after every step of the simulation.

mod incoming;
mod lifecycle;
mod outgoing;

pub use incoming::{IncomingQos2, Qos2Publish};
pub use lifecycle::WillAfterClose;
pub use outgoing::{DropReason, InFlight, Limits, Offer, Outgoing, Owed, Queued, OWED_MAX};

use hashbrown::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::codec::{ProtocolVersion, Will};
use crate::topic::Subscription;
use crate::types::{ConnId, SessionId};

#[derive(Debug)]
pub struct Session {
    pub id: SessionId,
    pub client_id: Arc<str>,
    pub conn: Option<ConnId>,
    pub version: ProtocolVersion,
    /// Clean session (3.x) or clean start with no expiry: ends with the connection.
    pub clean: bool,
    /// By full filter text (`$share/g/f` included).
    pub subscriptions: HashMap<String, Subscription>,
    /// Boxed, as `delayed_will`: most sessions have none, and every session pays for the
    /// space of an unboxed one.
    pub will: Option<Box<Will>>,
    pub username: Option<String>,
    /// The password its client connected with, to check again when the password file is
    /// reloaded (as Mosquitto does).
    pub password: Option<Box<[u8]>>,
    /// The listener its client connected to (security settings, mount point).
    pub listener: usize,
    /// QoS 1/2 to the client: window, queue, owed retained messages.
    pub outgoing: Outgoing,
    /// QoS 2 from the client: packet ids awaiting PUBREL.
    pub incoming: IncomingQos2,
    /// The client's Receive Maximum (5.0; 65535 when not given). [MQTT-3.3.4-9]
    pub receive_maximum: u16,
    /// The client's Maximum Packet Size (5.0).
    pub packet_size_max: Option<usize>,
    /// 5.0 Session Expiry Interval in seconds (u32::MAX: never).
    pub expiry_interval_s: u32,
    /// When an offline session ends (5.0 session expiry).
    pub expires_at: Option<Instant>,
    /// A will waiting out its 5.0 Will Delay Interval, and when it is due.
    pub delayed_will: Option<Box<(Instant, Will)>>,
}

impl Session {
    pub fn new(id: SessionId, client_id: Arc<str>, version: ProtocolVersion, clean: bool) -> Self {
        Session {
            id,
            client_id,
            conn: None,
            version,
            clean,
            subscriptions: HashMap::new(),
            will: None,
            username: None,
            password: None,
            listener: 0,
            outgoing: Outgoing::default(),
            incoming: IncomingQos2::default(),
            receive_maximum: u16::MAX,
            packet_size_max: None,
            expiry_interval_s: 0,
            expires_at: None,
            delayed_will: None,
        }
    }

    /// How many QoS 1/2 messages may be unacknowledged at once: the broker's limit or the
    /// client's Receive Maximum, whichever is lower. [MQTT-3.3.4-9]
    pub fn window(&self, inflight_max: usize) -> usize {
        inflight_max.min(usize::from(self.receive_maximum))
    }

    /// The limits deliveries to this session are held to.
    pub fn limits(
        &self,
        inflight_max: usize,
        queued_max: usize,
        queued_bytes_max: usize,
    ) -> Limits {
        Limits {
            window: self.window(inflight_max),
            queued_max,
            queued_bytes_max,
        }
    }

    /// What must hold after every change (checked on timer ticks in debug builds and after
    /// every step of the simulation).
    pub fn check_invariants(&self) {
        self.outgoing.check_invariants(&self.client_id);
    }
}
