//! Taking over a Mosquitto database: the `mosquitto.db` that Mosquitto 1.6 and 2.x write
//! (format versions 5 and 6), read once at start when midge's own store is empty, into the
//! same form recovery gives the shards (`recover::Recovered`).
//!
//! The file: 15 magic bytes, a CRC that Mosquitto writes as 0, the format version (u32
//! big-endian), then chunks, each a kind and a length (u32 big-endian) and that many bytes.
//! Within a chunk the 16- and 32-bit fields are big-endian and the 64-bit ones (store ids,
//! times) are in the writing machine's order, which is little-endian on every machine
//! Debian's Mosquitto runs on that midge does (amd64, arm64). Fixed parts are C structs
//! written whole, padding included.
//!
//! What comes over: messages (with their 5.0 properties and expiry), retained messages
//! (with who published them, for `check_retain_source`), persistent sessions (expiry,
//! subscriptions with options and identifiers), their queued messages and outgoing
//! in-flight window (PUBREL sent or not), and incoming QoS 2 messages still awaiting
//! PUBREL. Mosquitto hands those on only when the PUBREL comes; midge hands on a QoS 2
//! message when it arrives, so here they go to the matching sessions at once and their
//! packet ids wait for the PUBREL as midge's own would. What Mosquitto itself would drop
//! when loading (expired messages) is dropped and counted in the log.

use hashbrown::HashMap;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};

use super::format::{Delivery, Publisher};
use super::recover::{self, InFlight, Recovered, RecoveredSession};
use super::WallClock;
use crate::codec::put_varint;
use crate::topic;
use crate::types::Message;

/// The first bytes of every Mosquitto database.
pub const MAGIC: [u8; 15] = *b"\x00\xb5\x00mosquitto db";

/// Whether `bytes` begin as a Mosquitto database does.
pub fn is_mosquitto_db(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC)
}

pub mod chunk {
    pub const CONFIG: u32 = 1;
    pub const MESSAGE: u32 = 2;
    pub const CLIENT_MESSAGE: u32 = 3;
    pub const RETAIN: u32 = 4;
    pub const SUBSCRIPTION: u32 = 5;
    pub const CLIENT: u32 = 6;
}

/// Mosquitto's message states (`enum mosquitto_msg_state`) that midge takes over.
pub mod state {
    pub const PUBLISH_QOS0: u8 = 1;
    pub const PUBLISH_QOS1: u8 = 2;
    pub const WAIT_FOR_PUBACK: u8 = 3;
    pub const PUBLISH_QOS2: u8 = 4;
    pub const WAIT_FOR_PUBREC: u8 = 5;
    pub const RESEND_PUBREL: u8 = 6;
    pub const WAIT_FOR_PUBREL: u8 = 7;
    pub const RESEND_PUBCOMP: u8 = 8;
    pub const WAIT_FOR_PUBCOMP: u8 = 9;
    pub const SEND_PUBREC: u8 = 10;
    pub const QUEUED: u8 = 11;
}

const HEADER_LEN: usize = 15 + 4 + 4;

/// Reads a Mosquitto database. `listener_ports`: the configured listeners' ports, in
/// order, to find the listener a retained message's publisher used. An error says what is
/// wrong and at which byte; what is left out (expired messages) is in `notes`.
pub fn read(bytes: &[u8], listener_ports: &[u16], clock: &WallClock) -> Result<Recovered, String> {
    if bytes.len() < HEADER_LEN || !is_mosquitto_db(bytes) {
        return Err("not a Mosquitto database (no Mosquitto header)".into());
    }
    let version = u32::from_be_bytes(bytes[19..23].try_into().expect("4 bytes"));
    let client_fixed = match version {
        6 => 24,
        5 => 16,
        2..=4 => {
            return Err(format!(
                "a Mosquitto database of format version {version} (Mosquitto 1.5 or older); midge reads versions 5 and 6 (Mosquitto 1.6 and 2.x): let Mosquitto 2 load and save it once first"
            ))
        }
        _ => return Err(format!("a Mosquitto database of unknown format version {version}")),
    };
    let mut import = Import {
        clock: *clock,
        now_ms: clock.current_unix_ms(),
        listener_ports,
        messages: HashMap::new(),
        expired: 0,
        missing: 0,
        retained: Vec::new(),
        sessions: HashMap::new(),
        unreleased: Vec::new(),
        notes: Vec::new(),
    };
    let mut at = HEADER_LEN;
    while at < bytes.len() {
        let header = bytes
            .get(at..at + 8)
            .ok_or_else(|| format!("ends inside a chunk header at byte {at}"))?;
        let kind = u32::from_be_bytes(header[..4].try_into().expect("4 bytes"));
        let len = u32::from_be_bytes(header[4..].try_into().expect("4 bytes")) as usize;
        let body = bytes.get(at + 8..at + 8 + len).ok_or_else(|| {
            format!("chunk of kind {kind} at byte {at} runs past the end of the file")
        })?;
        let mut c = Cursor { bytes: body, at: 0 };
        match kind {
            chunk::CONFIG => import.config(&mut c),
            chunk::MESSAGE => import.message(&mut c),
            chunk::CLIENT_MESSAGE => import.client_message(&mut c),
            chunk::RETAIN => import.retain(&mut c),
            chunk::SUBSCRIPTION => import.subscription(&mut c),
            chunk::CLIENT => import.client(&mut c, client_fixed),
            _ => {
                // As Mosquitto does: a kind it does not know is passed over.
                import.notes.push(format!(
                    "passed over a chunk of unknown kind {kind} at byte {at}"
                ));
                Ok(())
            }
        }
        .map_err(|e| format!("chunk of kind {kind} at byte {at}: {e}"))?;
        at += 8 + len;
    }
    Ok(import.finish())
}

/// A chunk's bytes, read in order.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let taken = (self.bytes.get(self.at..self.at + n))
            .ok_or_else(|| format!("shorter than its fields ({} bytes)", self.bytes.len()))?;
        self.at += n;
        Ok(taken)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    /// A 64-bit field: written in the machine's order (little-endian, see above).
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn text(&mut self, n: usize, what: &str) -> Result<String, String> {
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }
    fn rest(&mut self) -> &'a [u8] {
        let rest = &self.bytes[self.at..];
        self.at = self.bytes.len();
        rest
    }
}

/// An incoming QoS 2 message whose PUBREL had not come: handed on once all is read.
struct Unreleased {
    publisher: String,
    message: Arc<Message>,
}

struct Import<'a> {
    clock: WallClock,
    now_ms: u64,
    listener_ports: &'a [u16],
    messages: HashMap<u64, (Arc<Message>, Option<Publisher>)>,
    expired: usize,
    /// Queued or in-flight entries naming a message not in the file (Mosquitto passes them
    /// over as expired).
    missing: usize,
    retained: Vec<(Arc<Message>, Option<Publisher>)>,
    sessions: HashMap<String, RecoveredSession>,
    unreleased: Vec<Unreleased>,
    notes: Vec<String>,
}

impl Import<'_> {
    fn config(&mut self, c: &mut Cursor) -> Result<(), String> {
        let _last_store_id = c.u64()?;
        let _shutdown = c.u8()?;
        let id_size = c.u8()?;
        if id_size != 8 {
            return Err(format!("store ids of {id_size} bytes (8 expected)"));
        }
        Ok(())
    }

    fn message(&mut self, c: &mut Cursor) -> Result<(), String> {
        let id = c.u64()?;
        let expiry_s = c.u64()?;
        let payload_len = c.u32()? as usize;
        let _source_packet_id = c.u16()?;
        let source_id_len = c.u16()? as usize;
        let source_username_len = c.u16()? as usize;
        let topic_len = c.u16()? as usize;
        let source_port = c.u16()?;
        let qos = c.u8()?;
        let retain = c.u8()? != 0;
        let source_id = c.text(source_id_len, "the publisher's client id")?;
        let source_username = c.text(source_username_len, "the publisher's username")?;
        let topic = c.text(topic_len, "the topic")?;
        let payload = c.take(payload_len)?;
        let properties = c.rest();
        if expiry_s != 0 && expiry_s.saturating_mul(1000) <= self.now_ms {
            self.expired += 1;
            return Ok(());
        }
        let publish = publish_bytes(&topic, qos, retain, properties, payload)?;
        let expires_at_ms = expiry_s.saturating_mul(1000);
        let message = recover::decode_message(publish, expires_at_ms, &self.clock)?;
        let publisher = (!source_id.is_empty()).then(|| Publisher {
            client_id: source_id,
            username: (source_username_len > 0).then_some(source_username),
            // A port no listener has now: the broker's own settings apply, as Mosquitto.
            listener: (self.listener_ports.iter().position(|&p| p == source_port))
                .map_or(u32::MAX, |i| i as u32),
        });
        self.messages.insert(id, (Arc::new(message), publisher));
        Ok(())
    }

    fn retain(&mut self, c: &mut Cursor) -> Result<(), String> {
        let id = c.u64()?;
        match self.messages.get(&id) {
            Some(published) => self.retained.push(published.clone()),
            None => self.missing += 1,
        }
        Ok(())
    }

    fn client(&mut self, c: &mut Cursor, fixed: usize) -> Result<(), String> {
        let expiry_time_s = c.u64()?;
        let expiry_interval_s = c.u32()?;
        let last_packet_id = c.u16()?;
        let id_len = c.u16()? as usize;
        let username_len = if fixed == 24 {
            let _listener_port = c.u16()?;
            let username_len = c.u16()? as usize;
            c.take(4)?; // padding
            username_len
        } else {
            0
        };
        let client_id = c.text(id_len, "the client id")?;
        c.text(username_len, "the username")?;
        if client_id.is_empty() {
            return Err("a client without a client id".into());
        }
        let session = self.session(&client_id);
        session.last_packet_id = last_packet_id;
        session.expiry_interval_s = expiry_interval_s;
        // Mosquitto keeps when the session expires; midge, when its client went away.
        if expiry_time_s != 0 && expiry_interval_s != u32::MAX {
            let gone_s = expiry_time_s.saturating_sub(expiry_interval_s.into());
            session.offline_since_ms = Some(gone_s.saturating_mul(1000));
        }
        // A session that never expires is a 3.1/3.1.1 client's (or a 5.0 client's asking
        // for that): midge keeps it under `persistent_client_expiration`, as Mosquitto.
        session.version = if expiry_interval_s == u32::MAX { 4 } else { 5 };
        Ok(())
    }

    fn client_message(&mut self, c: &mut Cursor) -> Result<(), String> {
        let id = c.u64()?;
        let packet_id = c.u16()?;
        let id_len = c.u16()? as usize;
        let qos = c.u8()?;
        let state = c.u8()?;
        let retain_dup = c.u8()?;
        let outgoing = c.u8()? == 1;
        let client_id = c.text(id_len, "the client id")?;
        let identifiers = subscription_identifiers(c.rest(), &self.clock)?;
        let Some((message, _)) = self.messages.get(&id).cloned() else {
            self.missing += 1;
            return Ok(());
        };
        let delivery = Delivery {
            qos: qos.min(2),
            retain: retain_dup >> 4 != 0,
            identifiers,
        };
        let session = self.session(&client_id);
        match (outgoing, state) {
            (true, state::QUEUED | state::PUBLISH_QOS0 | state::PUBLISH_QOS1 | state::PUBLISH_QOS2) => {
                if session.queued.is_empty() {
                    session.first_queued_id = Some(packet_id);
                }
                session.queued.push_back((message, delivery));
            }
            (true, state::WAIT_FOR_PUBACK | state::WAIT_FOR_PUBREC) => {
                session.in_flight.push(InFlight {
                    packet_id,
                    message,
                    delivery,
                    released: false,
                })
            }
            (true, state::RESEND_PUBREL | state::WAIT_FOR_PUBCOMP) => {
                session.in_flight.push(InFlight {
                    packet_id,
                    message,
                    delivery,
                    released: true,
                })
            }
            // PUBREC sent, PUBREL to come: midge hands the message on now.
            (false, state::WAIT_FOR_PUBREL) => {
                session.awaiting_pubrel.push(packet_id);
                self.unreleased.push(Unreleased {
                    publisher: client_id,
                    message,
                });
            }
            // PUBREL came and was handed on; the client repeats the PUBREL and gets its
            // PUBCOMP.
            (false, state::RESEND_PUBCOMP) => session.awaiting_pubrel.push(packet_id),
            // Not acknowledged yet: the client sends it again.
            (false, state::SEND_PUBREC) => {}
            (outgoing, state) => self.notes.push(format!(
                "left out a message of {client_id} in a state Mosquitto does not write ({state}, {})",
                if outgoing { "outgoing" } else { "incoming" }
            )),
        }
        Ok(())
    }

    fn subscription(&mut self, c: &mut Cursor) -> Result<(), String> {
        let identifier = c.u32()?;
        let id_len = c.u16()? as usize;
        let filter_len = c.u16()? as usize;
        let qos = c.u8()?;
        let options = c.u8()?;
        c.take(2)?; // padding
        let client_id = c.text(id_len, "the client id")?;
        let filter = c.text(filter_len, "the topic filter")?;
        if topic::parse_filter(&filter).is_err() {
            self.notes.push(format!(
                "left out {client_id}'s subscription to {filter:?}, not a valid filter"
            ));
            return Ok(());
        }
        // Mosquitto keeps No Local (bit 2) and Retain As Published (bit 3) where the 5.0
        // SUBSCRIBE options byte has them, and the QoS apart.
        let options = (qos & 0x03) | (options & 0x0c);
        let session = self.session(&client_id);
        session.subscriptions.retain(|(f, _, _)| *f != filter);
        session.subscriptions.push((filter, options, identifier));
        Ok(())
    }

    /// A client's session, made if the file names it before (or without) its client chunk,
    /// as Mosquitto does.
    fn session(&mut self, client_id: &str) -> &mut RecoveredSession {
        let next_claim = self.sessions.len() as u64 + 1;
        self.sessions
            .entry_ref(client_id)
            .or_insert_with(|| RecoveredSession {
                client_id: client_id.to_string(),
                claim: next_claim,
                version: 4,
                expiry_interval_s: u32::MAX,
                ..Default::default()
            })
    }

    fn finish(mut self) -> Recovered {
        for unreleased in std::mem::take(&mut self.unreleased) {
            self.hand_on(unreleased);
        }
        if self.expired > 0 {
            self.notes
                .push(format!("left out {} expired messages", self.expired));
        }
        if self.missing > 0 {
            self.notes.push(format!(
                "left out {} queued or retained entries naming messages not in the file (expired before it was written)",
                self.missing
            ));
        }
        let sessions: Vec<RecoveredSession> = self.sessions.into_values().collect();
        Recovered {
            retained: self.retained,
            next_retained_seq: 1,
            next_claim: sessions.len() as u64 + 1,
            sessions,
            files: Vec::new(),
            next_generation: 1,
            notes: self.notes,
        }
    }

    /// An incoming QoS 2 message Mosquitto had acknowledged (PUBREC) but not handed on:
    /// it goes to every session with a matching subscription (one per shared group), and
    /// becomes the topic's retained message if it was published retained.
    fn hand_on(&mut self, unreleased: Unreleased) {
        let message = unreleased.message;
        if message.retain {
            self.retained.retain(|(m, _)| m.topic != message.topic);
            if !message.payload.is_empty() {
                self.retained.push((message.clone(), None));
            }
        }
        let mut groups_served: Vec<String> = Vec::new();
        let mut sessions: Vec<&mut RecoveredSession> = self.sessions.values_mut().collect();
        sessions.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        for session in sessions {
            let mut delivery: Option<Delivery> = None;
            for (filter, options, identifier) in &session.subscriptions {
                let Ok(parsed) = topic::parse_filter(filter) else {
                    continue;
                };
                let no_local = options & 0x04 != 0;
                if !topic::matches(parsed.filter(), &message.topic)
                    || (no_local && session.client_id == unreleased.publisher)
                {
                    continue;
                }
                if let Some(group) = parsed.group() {
                    let key = format!("{group}/{}", parsed.filter());
                    if groups_served.contains(&key) {
                        continue;
                    }
                    groups_served.push(key);
                }
                let d = delivery.get_or_insert(Delivery {
                    qos: 0,
                    retain: false,
                    identifiers: Vec::new(),
                });
                d.qos = d.qos.max((options & 0x03).min(message.qos as u8));
                d.retain |= options & 0x08 != 0 && message.retain;
                if *identifier != 0 {
                    d.identifiers.push(*identifier);
                }
            }
            if let Some(delivery) = delivery {
                session.queue_next(message.clone(), delivery);
            }
        }
    }
}

/// The subscription identifiers among a queued message's stored properties (a property
/// length, then properties as in a PUBLISH).
fn subscription_identifiers(properties: &[u8], clock: &WallClock) -> Result<Vec<u32>, String> {
    if properties.is_empty() {
        return Ok(Vec::new());
    }
    let publish = publish_bytes("t", 0, false, properties, &[])?;
    let message = recover::decode_message(publish, 0, clock)?;
    Ok(message.properties.subscription_identifiers.to_vec())
}

/// A 5.0 PUBLISH holding a stored message, so that midge's own decoder reads (and checks)
/// its properties. `properties`: as Mosquitto stores them, their length first (none: empty).
fn publish_bytes(
    topic: &str,
    qos: u8,
    retain: bool,
    properties: &[u8],
    payload: &[u8],
) -> Result<bytes::Bytes, String> {
    if qos > 2 {
        return Err(format!("a message of QoS {qos}"));
    }
    let properties: &[u8] = if properties.is_empty() {
        &[0]
    } else {
        properties
    };
    let packet_id_len = if qos > 0 { 2 } else { 0 };
    let remaining = 2 + topic.len() + packet_id_len + properties.len() + payload.len();
    let remaining = u32::try_from(remaining)
        .ok()
        .filter(|&r| r <= 268_435_455)
        .ok_or("a message larger than MQTT allows")?;
    let mut buf = BytesMut::with_capacity(remaining as usize + 5);
    buf.put_u8(0x30 | (qos << 1) | u8::from(retain));
    put_varint(&mut buf, remaining);
    buf.put_u16(topic.len() as u16);
    buf.put_slice(topic.as_bytes());
    if qos > 0 {
        buf.put_u16(1);
    }
    buf.put_slice(properties);
    buf.put_slice(payload);
    Ok(buf.freeze())
}

pub mod layout;
#[cfg(test)]
mod tests;
