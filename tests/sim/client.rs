//! A simulated client as the model sees it: its connection, what it has in flight both
//! ways, and what it asked to subscribe.

use bytes::BytesMut;
use hashbrown::{HashMap, HashSet};
use midge::codec::{ProtocolVersion, QoS};
use midge::types::ConnId;

use super::wire::Key;

pub struct Outgoing {
    pub key: Key,
    pub qos: QoS,
    pub topic: &'static str,
    /// Persistent sessions with a matching confirmed subscription at QoS 1/2 when it was
    /// sent (with their SUBSCRIBE count then): they must get it once the broker has
    /// acknowledged it, if they sent no SUBSCRIBE meanwhile.
    pub owed_to: Vec<(u32, u64)>,
    /// QoS 2: PUBREC received (the broker has it; PUBREL sent).
    pub released: bool,
}

pub struct Client {
    pub index: u32,
    pub id: String,
    pub version: ProtocolVersion,
    /// Always resumes its session (clean session 0, or 5.0 expiry "never").
    pub persistent: bool,
    /// The current connection, and connections it left for the broker to close.
    pub conn: Option<(usize, ConnId)>,
    pub connacked: bool,
    pub inbox: BytesMut,
    pub incarnation: u32,
    pub next_pid: u16,
    pub seq: u32,
    /// Its QoS 1/2 PUBLISHes not yet done with, by packet id.
    pub publishing: HashMap<u16, Outgoing>,
    /// QoS 2 received, awaiting PUBREL.
    pub awaiting_pubrel: HashSet<u16>,
    pub reading: bool,
    /// SUBSCRIBEs awaiting SUBACK: filter and the client's SUBSCRIBE count when sent.
    pub subscribing: HashMap<u16, (&'static str, u64)>,
    /// Has a session at the broker (persistent clients, once connected).
    pub has_session: bool,
    /// Keep alive in seconds (0: none); such a client pings when time passes, mostly.
    pub keep_alive: u16,
}
