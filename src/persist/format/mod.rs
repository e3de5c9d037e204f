//! The journal's records and their bytes (`src/persist/FORMAT.md` says the same for
//! people). A journal file is a header, then records appended one after another:
//!
//! ```text
//! header:  "MIDGEJNL" (8 bytes) | format version (u32 LE)
//! record:  body length (u32 LE) | CRC-32C of the body (u32 LE) | body
//! body:    kind (u8) | fields (integers little-endian; strings and byte strings as a u32 LE
//!          length and the bytes)
//! ```
//!
//! Reading stops at the first record that is not whole: its length runs past the end of the
//! file, or its checksum fails and nothing follows it (a write the crash cut short: the
//! torn tail). A record whose checksum fails with more after it is damage, and an error.

use bytes::{BufMut, Bytes, BytesMut};

use crate::types::PublishOrder;

pub const MAGIC: &[u8; 8] = b"MIDGEJNL";
/// 2: records come in turns, each ended by a `TurnEnd` record (1 had no turns).
pub const VERSION: u32 = 2;
pub const HEADER_LEN: usize = 12;
/// The largest record body read: a message of MQTT's largest packet, with room to spare. A
/// length past it is damage, not a record.
pub const RECORD_MAX: usize = 300 << 20;
const RECORD_HEADER_LEN: usize = 8;

/// One record. Sessions are named by a number that is the journal's own (stable while the
/// broker runs, meaningless across files); messages by a number given when the journal
/// first writes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A message (5.0 PUBLISH bytes: topic, payload, QoS, retain, properties) and when it
    /// expires (Unix milliseconds; 0: never). Written once, before the first record that
    /// names it.
    Message {
        id: u64,
        expires_at_ms: u64,
        publish: Bytes,
    },
    /// The retained message of its topic from this change on (`seq` orders the changes of
    /// every journal: the highest wins), and who published it (for `check_retain_source`).
    Retained {
        seq: u64,
        message: u64,
        source: Option<Publisher>,
    },
    RetainedCleared {
        seq: u64,
        topic: String,
    },
    /// Every retained message is in this journal from here (`Retained` records follow):
    /// changes with a lower `seq`, in any journal, are superseded.
    RetainedBaseline {
        seq: u64,
    },
    /// A session, as of its client's claim `claim`: what follows builds it from nothing.
    /// (The highest claim of a client id, over every journal, is its session.)
    Started {
        session: u64,
        client_id: String,
        claim: u64,
        /// The last packet identifier it numbered (numbering goes on from it).
        last_packet_id: u16,
    },
    Parameters {
        session: u64,
        version: u8,
        expiry_interval_s: u32,
    },
    Subscribed {
        session: u64,
        filter: String,
        /// The 5.0 subscription options byte.
        options: u8,
        /// 0: none.
        identifier: u32,
    },
    Unsubscribed {
        session: u64,
        filter: String,
    },
    Queued {
        session: u64,
        /// The identifier it was numbered with when queued.
        packet_id: u16,
        message: u64,
        delivery: Delivery,
    },
    Dequeued {
        session: u64,
    },
    InFlight {
        session: u64,
        packet_id: u16,
        message: u64,
        delivery: Delivery,
    },
    Released {
        session: u64,
        packet_id: u16,
    },
    Finished {
        session: u64,
        packet_id: u16,
    },
    AwaitingPubrel {
        session: u64,
        packet_id: u16,
    },
    PubrelReceived {
        session: u64,
        packet_id: u16,
    },
    /// The client went away (Unix milliseconds): the session's expiry counts from here.
    Disconnected {
        session: u64,
        at_ms: u64,
    },
    Ended {
        session: u64,
    },
    /// The offline session's will waits for its Will Delay Interval until `due_ms` (Unix
    /// milliseconds); `message`: the will as a message (without its delay).
    WillWaiting {
        session: u64,
        due_ms: u64,
        message: u64,
    },
    /// The waiting will was published.
    WillGone {
        session: u64,
    },
    /// A message this shard passed to shard `to_shard` for its sessions (`targets`: the
    /// session numbers, of that shard's journal, with how each gets it), number `number`
    /// among those it passed there. Recovery hands it on itself if that shard's journal
    /// has not `Received` it (`recover/transit.rs`), in each publisher's order by `order`: where
    /// it was published (none in a journal of a midge before it was written: kind 25).
    Forwarded {
        to_shard: u16,
        number: u64,
        order: Option<PublishOrder>,
        message: u64,
        targets: Vec<(u64, Delivery)>,
    },
    /// Everything shard `from_shard` passed here up to `number` was taken (its deliveries
    /// are in this turn's records or before).
    Received {
        from_shard: u16,
        number: u64,
    },
    /// A message this shard held for a session settling here, `Forwarded` to itself as
    /// `number`, was delivered (held messages are delivered out of their numbers' order:
    /// sessions settle in any order).
    HeldDelivered {
        number: u64,
    },
    /// The end of one loop turn's records: a turn counts whole or not at all (a write a
    /// crash cut short ends without it).
    TurnEnd,
}

/// The client that published a retained message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publisher {
    pub client_id: String,
    pub username: Option<String>,
    pub listener: u32,
}

/// How a message goes to one session: its QoS, RETAIN flag and subscription identifiers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub qos: u8,
    pub retain: bool,
    pub identifiers: Vec<u32>,
}

impl Delivery {
    /// How a message goes to `target`.
    pub fn of(target: &crate::types::Target) -> Delivery {
        Delivery {
            qos: target.qos as u8,
            retain: target.retain,
            identifiers: target.identifiers.to_vec(),
        }
    }
}

/// Subscription options as a SUBSCRIBE's options byte (MQTT 5.0 §3.8.3.1).
pub fn options_byte(options: &crate::codec::SubscriptionOptions) -> u8 {
    options.qos as u8
        | u8::from(options.no_local) << 2
        | u8::from(options.retain_as_published) << 3
        | (options.retain_handling as u8) << 4
}

mod kind {
    pub const MESSAGE: u8 = 1;
    pub const RETAINED: u8 = 2;
    pub const RETAINED_CLEARED: u8 = 3;
    pub const RETAINED_BASELINE: u8 = 4;
    pub const STARTED: u8 = 10;
    pub const PARAMETERS: u8 = 11;
    pub const SUBSCRIBED: u8 = 12;
    pub const UNSUBSCRIBED: u8 = 13;
    pub const QUEUED: u8 = 14;
    pub const DEQUEUED: u8 = 15;
    pub const IN_FLIGHT: u8 = 16;
    pub const RELEASED: u8 = 17;
    pub const FINISHED: u8 = 18;
    pub const AWAITING_PUBREL: u8 = 19;
    pub const PUBREL_RECEIVED: u8 = 20;
    pub const DISCONNECTED: u8 = 21;
    pub const ENDED: u8 = 22;
    pub const WILL_WAITING: u8 = 23;
    pub const WILL_GONE: u8 = 24;
    /// `Forwarded` as written before it carried where its message was published.
    pub const FORWARDED_WITHOUT_ORDER: u8 = 25;
    pub const RECEIVED: u8 = 26;
    pub const HELD_DELIVERED: u8 = 27;
    pub const FORWARDED: u8 = 28;
    pub const TURN_END: u8 = 30;
}

/// The file header.
pub fn header() -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// Checks a file's header: its format version, or why it is not a journal.
pub fn check_header(bytes: &[u8]) -> Result<u32, String> {
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err("not a midge journal (no MIDGEJNL header)".into());
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if !(1..=VERSION).contains(&version) {
        return Err(format!(
            "journal format version {version}; this midge reads versions 1 to {VERSION}"
        ));
    }
    Ok(version)
}

fn put_str(out: &mut BytesMut, s: &[u8]) {
    out.put_u32_le(s.len() as u32);
    out.put_slice(s);
}

impl Record {
    /// Appends the record, framed (length and checksum), to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let start = out.len();
        out.put_u64_le(0); // length and checksum, filled in below
        let body_start = out.len();
        match self {
            Record::Message {
                id,
                expires_at_ms,
                publish,
            } => {
                out.put_u8(kind::MESSAGE);
                out.put_u64_le(*id);
                out.put_u64_le(*expires_at_ms);
                put_str(out, publish);
            }
            Record::Retained {
                seq,
                message,
                source,
            } => {
                out.put_u8(kind::RETAINED);
                out.put_u64_le(*seq);
                out.put_u64_le(*message);
                match source {
                    None => out.put_u8(0),
                    Some(p) => {
                        out.put_u8(if p.username.is_some() { 2 } else { 1 });
                        put_str(out, p.client_id.as_bytes());
                        if let Some(username) = &p.username {
                            put_str(out, username.as_bytes());
                        }
                        out.put_u32_le(p.listener);
                    }
                }
            }
            Record::RetainedCleared { seq, topic } => {
                out.put_u8(kind::RETAINED_CLEARED);
                out.put_u64_le(*seq);
                put_str(out, topic.as_bytes());
            }
            Record::RetainedBaseline { seq } => {
                out.put_u8(kind::RETAINED_BASELINE);
                out.put_u64_le(*seq);
            }
            Record::Started {
                session,
                client_id,
                claim,
                last_packet_id,
            } => {
                out.put_u8(kind::STARTED);
                out.put_u64_le(*session);
                put_str(out, client_id.as_bytes());
                out.put_u64_le(*claim);
                out.put_u16_le(*last_packet_id);
            }
            Record::Parameters {
                session,
                version,
                expiry_interval_s,
            } => {
                out.put_u8(kind::PARAMETERS);
                out.put_u64_le(*session);
                out.put_u8(*version);
                out.put_u32_le(*expiry_interval_s);
            }
            Record::Subscribed {
                session,
                filter,
                options,
                identifier,
            } => {
                out.put_u8(kind::SUBSCRIBED);
                out.put_u64_le(*session);
                put_str(out, filter.as_bytes());
                out.put_u8(*options);
                out.put_u32_le(*identifier);
            }
            Record::Unsubscribed { session, filter } => {
                out.put_u8(kind::UNSUBSCRIBED);
                out.put_u64_le(*session);
                put_str(out, filter.as_bytes());
            }
            Record::Queued {
                session,
                packet_id,
                message,
                delivery,
            } => {
                out.put_u8(kind::QUEUED);
                out.put_u64_le(*session);
                out.put_u16_le(*packet_id);
                out.put_u64_le(*message);
                delivery.encode(out);
            }
            Record::Dequeued { session } => {
                out.put_u8(kind::DEQUEUED);
                out.put_u64_le(*session);
            }
            Record::InFlight {
                session,
                packet_id,
                message,
                delivery,
            } => {
                out.put_u8(kind::IN_FLIGHT);
                out.put_u64_le(*session);
                out.put_u16_le(*packet_id);
                out.put_u64_le(*message);
                delivery.encode(out);
            }
            Record::Released { session, packet_id } => {
                Self::session_packet(out, kind::RELEASED, *session, *packet_id)
            }
            Record::Finished { session, packet_id } => {
                Self::session_packet(out, kind::FINISHED, *session, *packet_id)
            }
            Record::AwaitingPubrel { session, packet_id } => {
                Self::session_packet(out, kind::AWAITING_PUBREL, *session, *packet_id)
            }
            Record::PubrelReceived { session, packet_id } => {
                Self::session_packet(out, kind::PUBREL_RECEIVED, *session, *packet_id)
            }
            Record::Disconnected { session, at_ms } => {
                out.put_u8(kind::DISCONNECTED);
                out.put_u64_le(*session);
                out.put_u64_le(*at_ms);
            }
            Record::Ended { session } => {
                out.put_u8(kind::ENDED);
                out.put_u64_le(*session);
            }
            Record::WillWaiting {
                session,
                due_ms,
                message,
            } => {
                out.put_u8(kind::WILL_WAITING);
                out.put_u64_le(*session);
                out.put_u64_le(*due_ms);
                out.put_u64_le(*message);
            }
            Record::WillGone { session } => {
                out.put_u8(kind::WILL_GONE);
                out.put_u64_le(*session);
            }
            Record::Forwarded {
                to_shard,
                number,
                order,
                message,
                targets,
            } => {
                out.put_u8(match order {
                    Some(_) => kind::FORWARDED,
                    None => kind::FORWARDED_WITHOUT_ORDER,
                });
                out.put_u16_le(*to_shard);
                out.put_u64_le(*number);
                if let Some(order) = order {
                    out.put_u16_le(order.shard);
                    out.put_u64_le(order.number);
                }
                out.put_u64_le(*message);
                out.put_u32_le(targets.len() as u32);
                for (session, delivery) in targets {
                    out.put_u64_le(*session);
                    delivery.encode(out);
                }
            }
            Record::Received { from_shard, number } => {
                out.put_u8(kind::RECEIVED);
                out.put_u16_le(*from_shard);
                out.put_u64_le(*number);
            }
            Record::HeldDelivered { number } => {
                out.put_u8(kind::HELD_DELIVERED);
                out.put_u64_le(*number);
            }
            Record::TurnEnd => out.put_u8(kind::TURN_END),
        }
        let body_len = out.len() - body_start;
        let crc = crc32c::crc32c(&out[body_start..]);
        out[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    fn session_packet(out: &mut BytesMut, kind: u8, session: u64, packet_id: u16) {
        out.put_u8(kind);
        out.put_u64_le(session);
        out.put_u16_le(packet_id);
    }
}

impl Delivery {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u8(self.qos | (u8::from(self.retain) << 7));
        out.put_u8(self.identifiers.len().min(255) as u8);
        for id in self.identifiers.iter().take(255) {
            out.put_u32_le(*id);
        }
    }
}

mod read;

pub use read::{read_each, Damage};

#[cfg(test)]
mod tests;
