//! What the sessions part of the cluster sends, as bytes: who owns a client id and the
//! session's record (the value kept in the sessions bucket), a node's request for a session
//! another node holds, and the session itself as it moves: its subscriptions, the messages
//! in flight with their packet ids, its queue, the QoS 2 packet ids awaiting PUBREL, its
//! waiting will.
//!
//! A record is the session in the same form without its messages: what another node
//! revives when the owner is gone (its subscriptions, and its connection's will, due after
//! the will's delay).
//!
//! Messages travel as the cluster's messages do (`cluster::wire`, with what is left of
//! their expiry), so a session's bytes say nothing about either machine's clock.
//! Integers are big-endian; a string is its length (u32) and its UTF-8 bytes.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::dedup::Origin;
use crate::persist::format::{options_byte, Delivery};
use crate::persist::recover::{InFlight, RecoveredSession};
use crate::persist::WallClock;
use crate::router::Message;
use crate::session::Session;

/// The first byte of each; another is refused (a node of another midge). 2: the claim's
/// number in the owner, how long the asker waits, `Superseded`; 3: the record after the
/// owner.
const FORMAT: u8 = 3;

/// A session's will: none; due so many milliseconds after the bytes are read; due at a
/// time of the wall clock (Unix milliseconds).
const NO_WILL: u8 = 0;
const WILL_DUE_IN: u8 = 1;
const WILL_DUE_AT: u8 = 2;

/// The claim number of a write that is no claim (a record, a session taken over from a node
/// that is gone): never a `ClaimAsk::token`.
pub const NO_CLAIM: u64 = u64::MAX;

/// Messages inside a session carry no origin of their own.
const NO_ORIGIN: Origin = Origin {
    incarnation: 0,
    shard: 0,
};

/// The owner of a client id, as the sessions bucket keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The node's `cluster_node_id`: take requests go to it.
    pub node: String,
    /// The node's run: tells a node that restarted from the one that claimed.
    pub incarnation: u64,
    /// The claim that wrote it (`ClaimAsk::token`): a node knows its own write again when
    /// it was not told whether it landed.
    pub claim: u64,
}

/// A key's value: its owner, and the session's record (`encode_record`) once the owner
/// wrote one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerValue {
    pub owner: Owner,
    pub record: Option<Bytes>,
}

pub fn encode_owner(owner: &Owner, record: Option<&[u8]>) -> Bytes {
    let size = 1 + 8 + 8 + 4 + owner.node.len() + 1 + record.map_or(0, <[u8]>::len);
    let mut out = BytesMut::with_capacity(size);
    out.put_u8(FORMAT);
    out.put_u64(owner.incarnation);
    out.put_u64(owner.claim);
    put_str(&mut out, &owner.node);
    match record {
        Some(record) => {
            out.put_u8(1);
            out.extend_from_slice(record);
        }
        None => out.put_u8(0),
    }
    out.freeze()
}

/// The value in `bytes`; its record is checked only when it is read (`decode_session`).
pub fn decode_owner(bytes: &Bytes) -> Result<OwnerValue, String> {
    let mut r = Reader::new(bytes)?;
    let incarnation = r.u64()?;
    let claim = r.u64()?;
    let node = r.string()?;
    let record = match r.u8()? {
        0 => {
            r.end()?;
            None
        }
        _ => Some(bytes.slice(bytes.len() - r.bytes.len()..)),
    };
    let owner = Owner {
        node,
        incarnation,
        claim,
    };
    Ok(OwnerValue { owner, record })
}

/// The client id a record (or a session's bytes) is of, read without the rest.
pub fn client_id_of(bytes: &[u8]) -> Result<String, String> {
    Reader::new(bytes)?.string()
}

/// A node's key in the nodes bucket: its heartbeat (its `cluster_node_id` and its run), or,
/// once another node took it for gone, that node's name beside them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeValue {
    pub node: String,
    pub incarnation: u64,
    pub taken_by: Option<String>,
}

pub fn encode_node(value: &NodeValue) -> Bytes {
    let mut out = BytesMut::with_capacity(1 + 8 + 4 + value.node.len() + 64);
    out.put_u8(FORMAT);
    out.put_u64(value.incarnation);
    put_str(&mut out, &value.node);
    put_opt_str(&mut out, value.taken_by.as_deref());
    out.freeze()
}

pub fn decode_node(bytes: &[u8]) -> Result<NodeValue, String> {
    let mut r = Reader::new(bytes)?;
    let incarnation = r.u64()?;
    let node = r.string()?;
    let taken_by = r.opt_string()?;
    r.end()?;
    Ok(NodeValue {
        node,
        incarnation,
        taken_by,
    })
}

/// How far a node's run (`incarnation`) has received the messages' stream
/// (`cluster/replay.rs`), kept beside its heartbeat (`nodes.rs`).
pub fn encode_position(incarnation: u64, position: u64) -> Bytes {
    let mut out = BytesMut::with_capacity(1 + 16);
    out.put_u8(FORMAT);
    out.put_u64(incarnation);
    out.put_u64(position);
    out.freeze()
}

/// The run and the position `encode_position` wrote.
pub fn decode_position(bytes: &[u8]) -> Result<(u64, u64), String> {
    let mut r = Reader::new(bytes)?;
    let incarnation = r.u64()?;
    let position = r.u64()?;
    r.end()?;
    Ok((incarnation, position))
}

/// A node's request for the session of `client_id`, which it now owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TakeRequest {
    pub client_id: String,
    /// The new connection starts clean: the session ends where it is.
    pub clean_start: bool,
    /// The revision of the key the asking node wrote.
    pub revision: u64,
    /// How long the asking node waits for the answer (ms): a session is not taken for an
    /// answer nobody waits for.
    pub wait_ms: u64,
    /// The run of the asked node that owned the key: a later run that holds nothing
    /// answers `NotThisRun`, and the asker goes on from the session's record.
    pub incarnation: u64,
}

pub fn encode_request(request: &TakeRequest) -> Bytes {
    let mut out = BytesMut::with_capacity(2 + 8 + 4 + request.client_id.len());
    out.put_u8(FORMAT);
    out.put_u8(u8::from(request.clean_start));
    out.put_u64(request.revision);
    out.put_u64(request.wait_ms);
    out.put_u64(request.incarnation);
    put_str(&mut out, &request.client_id);
    out.freeze()
}

pub fn decode_request(bytes: &[u8]) -> Result<TakeRequest, String> {
    let mut r = Reader::new(bytes)?;
    let clean_start = r.u8()? != 0;
    let revision = r.u64()?;
    let wait_ms = r.u64()?;
    let incarnation = r.u64()?;
    let client_id = r.string()?;
    r.end()?;
    Ok(TakeRequest {
        client_id,
        clean_start,
        revision,
        wait_ms,
        incarnation,
    })
}

/// What a node answers a take request.
#[derive(Debug)]
pub enum TakeAnswer {
    /// It held no session of the client to hand on (or the session ended: a clean start).
    Nothing,
    /// The session, as `encode_session` made it.
    Session(Bytes),
    /// It cannot answer yet (the session is moving between its shards): ask again.
    Retry,
    /// It holds the session for a later claim than the asker's: the asker lost.
    Superseded,
    /// It holds nothing, and is a later run of the node than the one that owned the key
    /// (it restarted): the session is its record.
    NotThisRun,
}

const NOTHING: u8 = 0;
const SESSION: u8 = 1;
const RETRY: u8 = 2;
const SUPERSEDED: u8 = 3;
const NOT_THIS_RUN: u8 = 4;

pub fn encode_answer(answer: &TakeAnswer) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(FORMAT);
    match answer {
        TakeAnswer::Nothing => out.put_u8(NOTHING),
        TakeAnswer::Retry => out.put_u8(RETRY),
        TakeAnswer::Superseded => out.put_u8(SUPERSEDED),
        TakeAnswer::NotThisRun => out.put_u8(NOT_THIS_RUN),
        TakeAnswer::Session(session) => {
            out.put_u8(SESSION);
            out.extend_from_slice(session);
        }
    }
    out.freeze()
}

pub fn decode_answer(bytes: &Bytes) -> Result<TakeAnswer, String> {
    let mut r = Reader::new(bytes)?;
    match r.u8()? {
        NOTHING => r.end().map(|()| TakeAnswer::Nothing),
        RETRY => r.end().map(|()| TakeAnswer::Retry),
        SUPERSEDED => r.end().map(|()| TakeAnswer::Superseded),
        NOT_THIS_RUN => r.end().map(|()| TakeAnswer::NotThisRun),
        SESSION => Ok(TakeAnswer::Session(bytes.slice(2..))),
        other => Err(format!("an answer of kind {other}")),
    }
}

/// A session as it arrives from another node: as the journal would have left it, with the
/// user and listener it was resumed by.
#[derive(Debug)]
pub struct Moved {
    pub session: RecoveredSession,
    pub username: Option<String>,
    pub listener: usize,
    /// Its will is due so long after the bytes are read: in a record, the will of the
    /// connection it had (not one already waiting out its delay).
    pub will_from_reading: bool,
}

/// `session`'s bytes, at `now`, in at most `max_bytes` (NATS's max_payload): what does not
/// fit of its queue is left out, from the back. The number left out comes back with it.
pub fn encode_session(session: &Session, now: Instant, max_bytes: usize) -> (Bytes, usize) {
    encode(session, now, max_bytes, None)
}

/// `session`'s record, at `now`: as `encode_session`, without messages in flight, queued or
/// awaiting PUBREL; its will is its connection's (due after the will's delay, at once for a
/// session that ends with its connection), or the one waiting out its delay.
/// `offline_since`: when its client went away, if it did (its expiry runs from then, by the
/// wall clock).
pub fn encode_record(session: &Session, now: Instant, offline_since: Option<Instant>) -> Bytes {
    encode(session, now, usize::MAX, Some(offline_since)).0
}

/// A session's bytes: whole (`record` `None`), or its record, with when its client went
/// away.
fn encode(
    session: &Session,
    now: Instant,
    max_bytes: usize,
    record: Option<Option<Instant>>,
) -> (Bytes, usize) {
    let whole = record.is_none();
    let mut out = BytesMut::new();
    out.put_u8(FORMAT);
    put_str(&mut out, &session.client_id);
    out.put_u8(session.version as u8);
    out.put_u32(session.expiry_interval_s);
    out.put_u16(session.listener() as u16);
    put_opt_str(&mut out, session.username());
    out.put_u16(session.outgoing().last_id());
    let subscriptions = session.subscriptions();
    out.put_u32(subscriptions.len() as u32);
    for (filter, sub) in subscriptions {
        put_str(&mut out, filter);
        out.put_u8(options_byte(&sub.options));
        out.put_u32(sub.identifier.map_or(0, |i| i.get()));
    }
    let in_flight = match whole {
        true => session.outgoing().in_flight(),
        false => Vec::new(),
    };
    out.put_u32(in_flight.len() as u32);
    for f in in_flight {
        out.put_u16(f.packet_id);
        out.put_u8(u8::from(f.released));
        let delivery = Delivery {
            qos: f.qos as u8,
            retain: f.retain,
            identifiers: f.identifiers.to_vec(),
        };
        put_delivery(&mut out, &delivery);
        put_message(&mut out, &f.message, now);
    }
    let awaiting: Vec<u16> = match whole {
        true => session.incoming().awaiting_pubrel().collect(),
        false => Vec::new(),
    };
    out.put_u32(awaiting.len() as u32);
    for packet_id in awaiting {
        out.put_u16(packet_id);
    }
    // A session moving now: its waiting will is due in so long from its arrival. A record
    // (read when its node is gone, perhaps long after): its connection's will is due its
    // delay after it is read (when the connection is known lost), a waiting will at its
    // time by the wall clock.
    let live_will = session.will.as_deref().filter(|_| !whole).map(|will| {
        let delay = match session.clean {
            true => 0,
            false => will.properties.will_delay_interval.unwrap_or(0),
        };
        (WILL_DUE_IN, u64::from(delay) * 1000, will)
    });
    let waiting = (session.delayed_will.as_deref()).map(|(due, will)| match whole {
        true => {
            let due_in = due.saturating_duration_since(now).as_millis() as u64;
            (WILL_DUE_IN, due_in, will)
        }
        false => (WILL_DUE_AT, WallClock::now().unix_ms(*due), will),
    });
    match live_will.or(waiting) {
        Some((kind, when, will)) => {
            out.put_u8(kind);
            out.put_u64(when);
            put_message(&mut out, &Message::of_waiting_will(will), now);
        }
        None => out.put_u8(NO_WILL),
    }
    // (0: connected, or moving now.)
    let offline_since = record
        .flatten()
        .map_or(0, |at| WallClock::now().unix_ms(at));
    out.put_u64(offline_since);
    // The queue last, so that it can be cut where the room ends.
    let count_at = out.len();
    out.put_u32(0);
    let (mut queued, mut cut) = (0u32, 0usize);
    let queue = session.outgoing().queued().filter(|_| whole);
    for q in queue {
        let before = out.len();
        out.put_u16(q.packet_id);
        put_delivery(&mut out, &Delivery::of(&q.target));
        put_message(&mut out, &q.message, now);
        if out.len() > max_bytes {
            out.truncate(before);
            cut += 1;
        } else {
            queued += 1;
        }
    }
    out[count_at..count_at + 4].copy_from_slice(&queued.to_be_bytes());
    (out.freeze(), cut)
}

/// The session in `bytes`, arrived at `now`; an error says what is wrong with them.
pub fn decode_session(bytes: &[u8], now: Instant) -> Result<Moved, String> {
    let clock = WallClock::now();
    let mut r = Reader::new(bytes)?;
    let client_id = r.string()?;
    let version = r.u8()?;
    if !matches!(version, 3..=5) {
        return Err(format!("protocol version {version}"));
    }
    let expiry_interval_s = r.u32()?;
    let listener = usize::from(r.u16()?);
    let username = r.opt_string()?;
    let last_packet_id = r.u16()?;
    // The claim orders sessions in journals; a moved session is journaled anew here.
    let mut session = RecoveredSession::started(client_id, 0, last_packet_id);
    session.parameters(version, expiry_interval_s);
    // Each list is checked as it is read (what another node sends is not trusted to be
    // well formed): one filter once, packet ids neither 0 nor repeated, nothing in flight
    // at QoS 0. Kept in sets, so that a long list costs its length, not its square.
    let mut filters = hashbrown::HashSet::new();
    for _ in 0..r.count()? {
        let filter = r.string()?;
        let (options, identifier) = (r.u8()?, r.u32()?);
        if !filters.insert(filter.clone()) {
            return Err(format!("the filter {filter:?} twice"));
        }
        session.subscriptions.push((filter, options, identifier));
    }
    let mut ids = hashbrown::HashSet::new();
    for _ in 0..r.count()? {
        let packet_id = r.u16()?;
        let released = r.u8()? != 0;
        let delivery = r.delivery()?;
        let message = r.message(now)?;
        if packet_id == 0 || !ids.insert(packet_id) || delivery.qos == 0 {
            return Err(format!(
                "packet id {packet_id} in flight at QoS {}",
                delivery.qos
            ));
        }
        session.in_flight.push(InFlight {
            packet_id,
            message,
            delivery,
            released,
        });
    }
    let mut awaiting = hashbrown::HashSet::new();
    for _ in 0..r.count()? {
        let packet_id = r.u16()?;
        if packet_id == 0 || !awaiting.insert(packet_id) {
            return Err(format!("packet id {packet_id} awaiting PUBREL"));
        }
        session.awaiting_pubrel.push(packet_id);
    }
    let will_kind = r.u8()?;
    match will_kind {
        NO_WILL => {}
        WILL_DUE_IN => {
            let due_in_ms = r.u64()?;
            let will = r.message(now)?;
            let due = now + Duration::from_millis(due_in_ms.min(u64::from(u32::MAX) * 1000));
            session.delayed_will = Some((clock.unix_ms(due), will));
        }
        WILL_DUE_AT => {
            let due_unix_ms = r.u64()?;
            let will = r.message(now)?;
            session.delayed_will = Some((due_unix_ms, will));
        }
        other => return Err(format!("a will of kind {other}")),
    }
    session.offline_since_ms = Some(r.u64()?).filter(|&ms| ms != 0);
    for _ in 0..r.count()? {
        let packet_id = r.u16()?;
        let delivery = r.delivery()?;
        let message = r.message(now)?;
        session.queued(message, delivery, packet_id);
    }
    // Numbering goes on after the last number given, queued or not.
    session.last_packet_id = last_packet_id;
    r.end()?;
    Ok(Moved {
        session,
        username,
        listener,
        will_from_reading: will_kind == WILL_DUE_IN,
    })
}

fn put_str(out: &mut BytesMut, s: &str) {
    out.put_u32(s.len() as u32);
    out.extend_from_slice(s.as_bytes());
}

fn put_opt_str(out: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => {
            out.put_u8(1);
            put_str(out, s);
        }
        None => out.put_u8(0),
    }
}

fn put_delivery(out: &mut BytesMut, delivery: &Delivery) {
    out.put_u8(delivery.qos | u8::from(delivery.retain) << 7);
    let ids = &delivery.identifiers[..delivery.identifiers.len().min(usize::from(u8::MAX))];
    out.put_u8(ids.len() as u8);
    for &id in ids {
        out.put_u32(id);
    }
}

fn put_message(out: &mut BytesMut, message: &Message, now: Instant) {
    // Never `None` for a message a client could publish; an empty one reads back as an
    // error, so a session is never taken with a message missing from it.
    let bytes = crate::cluster::wire::encode(message, NO_ORIGIN, 0, now).unwrap_or_default();
    out.put_u32(bytes.len() as u32);
    out.extend_from_slice(&bytes);
}

/// Reads what the functions above wrote; every read is checked against the bytes left.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// After the format byte, which must be this node's.
    fn new(bytes: &'a [u8]) -> Result<Reader<'a>, String> {
        match bytes.first() {
            Some(&FORMAT) => Ok(Reader { bytes: &bytes[1..] }),
            Some(other) => Err(format!("format {other} (this node reads {FORMAT})")),
            None => Err("no bytes".into()),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.bytes.len() < n {
            return Err(format!(
                "cut short ({} bytes left, {n} wanted)",
                self.bytes.len()
            ));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(self.take(2)?.get_u16())
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(self.take(4)?.get_u32())
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(self.take(8)?.get_u64())
    }

    /// A count of items that each take at least two bytes: one past what is left is
    /// refused before anything is made for it.
    fn count(&mut self) -> Result<usize, String> {
        let count = self.u32()? as usize;
        if count > self.bytes.len() / 2 {
            return Err(format!("{count} items in {} bytes", self.bytes.len()));
        }
        Ok(count)
    }

    fn string(&mut self) -> Result<String, String> {
        let len = self.u32()? as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "a string that is not UTF-8".into())
    }

    fn opt_string(&mut self) -> Result<Option<String>, String> {
        match self.u8()? {
            0 => Ok(None),
            _ => self.string().map(Some),
        }
    }

    fn delivery(&mut self) -> Result<Delivery, String> {
        let byte = self.u8()?;
        let qos = byte & 0x03;
        if qos > 2 {
            return Err(format!("QoS {qos}"));
        }
        let count = self.u8()?;
        let identifiers = (0..count).map(|_| self.u32()).collect::<Result<_, _>>()?;
        Ok(Delivery {
            qos,
            retain: byte & 0x80 != 0,
            identifiers,
        })
    }

    fn message(&mut self, now: Instant) -> Result<Arc<Message>, String> {
        let len = self.u32()? as usize;
        let bytes = self.take(len)?;
        let arrived = crate::cluster::wire::decode(bytes, now)?;
        Ok(Arc::new(arrived.message))
    }

    fn end(&self) -> Result<(), String> {
        match self.bytes.len() {
            0 => Ok(()),
            n => Err(format!("{n} bytes after the end")),
        }
    }
}

#[cfg(test)]
mod tests;
