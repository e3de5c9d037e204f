//! A client's session: its subscriptions, its will, and the QoS 1/2 state in both directions.
//! Owned by the shard of the client's current connection; it outlives the connection when
//! the client asked for a persistent session.

use hashbrown::{HashMap, HashSet};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use crate::codec::{ProtocolVersion, QoS, Will};
use crate::topic::Subscription;
use crate::types::{ConnId, Message, SessionId, Target};

/// A QoS 1/2 message sent to the client and not yet fully acknowledged.
#[derive(Debug)]
pub struct InFlight {
    pub packet_id: u16,
    pub message: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    pub identifiers: smallvec::SmallVec<[u32; 1]>,
    /// QoS 2: PUBREC came back and PUBREL was sent; waiting for PUBCOMP.
    pub released: bool,
}

/// A retained message owed to a new subscription, sent as the client reads (never all at
/// once: a filter may match a hundred thousand of them).
#[derive(Debug)]
pub struct Owed {
    pub message: Arc<Message>,
    /// The subscription's QoS and identifier.
    pub qos: QoS,
    pub identifier: Option<u32>,
}

/// Most retained messages one session may be owed at once; past it, more are dropped and
/// counted (a client subscribing to `#` again and again cannot make the broker hold the
/// retained set once per SUBSCRIBE).
pub const OWED_MAX: usize = 1 << 20;

/// A message waiting for room in the inflight window (or for the client to come back).
#[derive(Debug)]
pub struct Queued {
    pub message: Arc<Message>,
    pub target: Target,
}

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
    next_packet_id: u16,
    /// In the order sent, so that a resumed session resends them in order.
    pub inflight: VecDeque<InFlight>,
    pub queue: VecDeque<Queued>,
    /// Payload bytes in `queue` (for `max_queued_bytes`).
    pub queued_bytes: usize,
    /// QoS 2 packet ids received and answered with PUBREC, until PUBREL: a PUBLISH again
    /// with one of them is a duplicate and is not delivered twice (method B of §4.3.3).
    pub incoming_qos2: HashSet<u16>,
    /// Messages dropped because the queue was full, since the session began.
    pub dropped: u64,
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
    /// Retained messages owed to new subscriptions, oldest first.
    pub owed: VecDeque<Owed>,
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
            next_packet_id: 0,
            inflight: VecDeque::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            incoming_qos2: HashSet::new(),
            dropped: 0,
            receive_maximum: u16::MAX,
            packet_size_max: None,
            expiry_interval_s: 0,
            expires_at: None,
            delayed_will: None,
            owed: VecDeque::new(),
        }
    }

    /// A packet identifier not in use by an inflight message. [MQTT-2.2.1-3] non-zero;
    /// [MQTT-2.2.1-4] not reused while its exchange is unfinished.
    pub fn next_packet_id(&mut self) -> u16 {
        loop {
            self.next_packet_id = self.next_packet_id.wrapping_add(1);
            if self.next_packet_id == 0 {
                continue;
            }
            let id = self.next_packet_id;
            if !self.inflight.iter().any(|f| f.packet_id == id) {
                return id;
            }
        }
    }

    /// How many QoS 1/2 messages may be unacknowledged at once: the broker's limit or the
    /// client's Receive Maximum, whichever is lower. [MQTT-3.3.4-9]
    pub fn window(&self, inflight_max: usize) -> usize {
        inflight_max.min(usize::from(self.receive_maximum))
    }

    pub fn inflight_position(&self, packet_id: u16) -> Option<usize> {
        self.inflight.iter().position(|f| f.packet_id == packet_id)
    }

    /// What must hold after every change (checked between turns in debug builds).
    pub fn check_invariants(&self) {
        let queued: usize = self.queue.iter().map(|q| q.message.payload.len()).sum();
        assert_eq!(
            self.queued_bytes, queued,
            "queued_bytes of {}",
            self.client_id
        );
        let mut ids = HashSet::new();
        for f in &self.inflight {
            assert_ne!(f.packet_id, 0, "[MQTT-2.2.1-3]");
            assert!(
                ids.insert(f.packet_id),
                "packet id {} twice in flight [MQTT-2.2.1-4]",
                f.packet_id
            );
            assert!(!f.released || f.qos == QoS::ExactlyOnce);
        }
    }
}
