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

mod changes;
mod delivery;
mod incoming;
mod lazy_map;
mod lifecycle;
mod outgoing;
mod table;

pub use changes::{Change, Changes, Durable, What};

/// What a client's acknowledgement did to the exchange of a message it was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acknowledged {
    /// It ended: the packet id and the window's slot are free again.
    Finished,
    /// A QoS 2 message was released: PUBREL answers.
    Released,
    /// No exchange took it (a late or repeated acknowledgement).
    Unknown,
}
pub use delivery::{capped, Backlog, Decision, DropReason, Rules};

pub use incoming::{IncomingQos2, Qos2Publish};
pub use lifecycle::{expires_after, WillAfterClose};
pub use outgoing::{
    Ack, InFlight, Limits, Offer, Outgoing, Owed, Queued, RetainedScan, AWAITED_ANSWERS_MAX,
};
pub use table::Table;

use compact_str::CompactString;
use hashbrown::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use crate::codec::{ProtocolVersion, QoS, ReasonCode, Will};
use crate::topic::Subscription;
use crate::types::{ConnId, Message, SessionId, Target};

#[derive(Debug)]
pub struct Session {
    pub id: SessionId,
    pub client_id: Arc<str>,
    pub conn: Option<ConnId>,
    pub version: ProtocolVersion,
    /// Clean session (3.x) or clean start with no expiry: ends with the connection.
    pub clean: bool,
    /// By full filter text (`$share/g/f` included). Changed only through `subscribe` and
    /// `unsubscribe` (the shard may move `Subscription::shard`, which is not kept).
    /// Filters are kept inline up to 24 bytes (most are shorter): no allocation of their own.
    subscriptions: Subscriptions,
    /// Boxed, as `delayed_will`: most sessions have none, and every session pays for the
    /// space of an unboxed one.
    pub will: Option<Box<Will>>,
    /// The username and password its client connected with (`username()`, `password()`),
    /// and what its long filters hold (`filter_bytes()`).
    extras: Option<Box<Extras>>,
    /// The listener its client connected to (security settings, mount point; `listener()`):
    /// two bytes, as in the connection (`LISTENERS_MAX`).
    listener: u16,
    /// QoS 1/2 to the client: window, queue, owed retained messages. Changed only through
    /// the methods below, which record what changed.
    outgoing: Outgoing,
    /// QoS 2 from the client: packet ids awaiting PUBREL.
    incoming: IncomingQos2,
    /// The client's Receive Maximum (5.0; 65535 when not given). [MQTT-3.3.4-9]
    pub receive_maximum: u16,
    /// The client's Maximum Packet Size (5.0).
    pub packet_size_max: Option<NonZeroU32>,
    /// 5.0 Session Expiry Interval in seconds (u32::MAX: never).
    pub expiry_interval_s: u32,
    /// When an offline session ends (5.0 session expiry).
    pub expires_at: Option<Instant>,
    /// A will waiting out its 5.0 Will Delay Interval, and when it is due.
    pub delayed_will: Option<Box<(Instant, Will)>>,
}

/// A session's subscriptions by filter. Its hasher takes no room in the session: the
/// process's random seed, not one per map (8 bytes less in every session).
pub type Subscriptions = HashMap<CompactString, Subscription, ProcessSeeded>;

/// A `BuildHasher` of no size: foldhash seeded by the process's random seed (as foldhash's
/// own `RandomState` is, less its per-map seed), so that a client cannot choose filters
/// that collide in every broker.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessSeeded;

impl std::hash::BuildHasher for ProcessSeeded {
    type Hasher = foldhash::fast::FoldHasher<'static>;

    fn build_hasher(&self) -> Self::Hasher {
        foldhash::fast::SeedableRandomState::with_seed(0, foldhash::SharedSeed::global_random())
            .build_hasher()
    }
}

/// A session's username and password and the bytes of its long filters, behind one
/// pointer: a session without them pays 8 bytes instead of 40, which keeps every session in
/// a smaller allocation class (160 bytes), and one with them pays a box besides.
#[derive(Debug, Default)]
struct Extras {
    username: Option<Box<str>>,
    /// Checked again when the password file is reloaded (as Mosquitto does).
    password: Option<Box<[u8]>>,
    filters: Option<FilterCharge>,
    /// In a cluster keeping sessions: the revision of the key its client's connection
    /// claimed (`cluster/sessions.rs`), given back when the session ends here; 0: none.
    cluster_revision: u64,
}

/// Filters up to this many bytes are kept inside the subscription map's entry (the count of
/// subscriptions bounds what they hold); longer ones are allocated, and counted by bytes.
pub const FILTER_INLINE_MAX: usize = std::mem::size_of::<CompactString>();

/// The bytes of a session's long filters, charged to the broker's total (`total`) and given
/// back when the session goes, however it goes.
#[derive(Debug)]
struct FilterCharge {
    bytes: usize,
    total: Arc<AtomicUsize>,
}

impl Drop for FilterCharge {
    fn drop(&mut self) {
        self.total.fetch_sub(self.bytes, Relaxed);
    }
}

/// What one level of a filter past its first holds in the subscription trie at most: a node
/// (112 bytes with its reference count) and its slot in its parent. Measured: 100,000
/// filters of 8 levels held 110 MB, of one level 23 MB.
pub const TRIE_LEVEL_BYTES: usize = 128;

/// What a subscription to `filter` holds beyond its entry in the session and its first
/// level in the trie (which the count of subscriptions bounds): its text, if too long to be
/// kept inline (twice: the session's copy, and the trie's levels), and its further levels
/// in the trie, as if no other filter shared them (a filter of 200 empty levels is 200
/// bytes on the wire and 25 KB in the trie).
pub fn filter_cost(filter: &str) -> usize {
    let text = if filter.len() > FILTER_INLINE_MAX {
        2 * filter.len()
    } else {
        0
    };
    let further_levels = filter.bytes().filter(|&b| b == b'/').count();
    text + further_levels * TRIE_LEVEL_BYTES
}

impl Session {
    /// The index of its client's listener in `Config::listeners`.
    pub fn listener(&self) -> usize {
        usize::from(self.listener)
    }

    pub fn set_listener(&mut self, listener: usize) {
        self.listener = crate::config::listener_index(listener);
    }

    pub fn username(&self) -> Option<&str> {
        self.extras.as_ref()?.username.as_deref()
    }

    pub fn password(&self) -> Option<&[u8]> {
        self.extras.as_ref()?.password.as_deref()
    }

    pub fn set_credentials(&mut self, username: Option<&str>, password: Option<&[u8]>) {
        let mut extras = self.extras.take().map(|e| *e).unwrap_or_default();
        extras.username = username.map(Box::from);
        extras.password = password.map(Box::from);
        self.set_extras(extras);
    }

    /// The revision of the cluster's key its client's connection claimed (0: none).
    pub fn cluster_revision(&self) -> u64 {
        self.extras.as_ref().map_or(0, |e| e.cluster_revision)
    }

    pub fn set_cluster_revision(&mut self, revision: u64) {
        let mut extras = self.extras.take().map(|e| *e).unwrap_or_default();
        extras.cluster_revision = revision;
        self.set_extras(extras);
    }

    /// Bytes its long filters hold (`filter_cost` of each).
    pub fn filter_bytes(&self) -> usize {
        self.extras
            .as_ref()
            .and_then(|e| e.filters.as_ref())
            .map_or(0, |f| f.bytes)
    }

    /// Keeps `extras`, or nothing if it holds nothing.
    fn set_extras(&mut self, extras: Extras) {
        let used = extras.username.is_some() || extras.password.is_some();
        let used = used || extras.filters.as_ref().is_some_and(|f| f.bytes > 0);
        let used = used || extras.cluster_revision != 0;
        self.extras = used.then(|| Box::new(extras));
    }

    /// Adds `cost` (negative: gives it back) to what its long filters hold, here and in
    /// the broker's `total`.
    fn charge_filters(&mut self, cost: isize, total: Option<&Arc<AtomicUsize>>) {
        let mut extras = self.extras.take().map(|e| *e).unwrap_or_default();
        let charge = match (&mut extras.filters, total) {
            (Some(charge), _) => charge,
            (None, Some(total)) => extras.filters.insert(FilterCharge {
                bytes: 0,
                total: total.clone(),
            }),
            (None, None) => return self.set_extras(extras),
        };
        charge.bytes = charge.bytes.saturating_add_signed(cost);
        if cost >= 0 {
            charge.total.fetch_add(cost.unsigned_abs(), Relaxed);
        } else {
            charge.total.fetch_sub(cost.unsigned_abs(), Relaxed);
        }
        self.set_extras(extras);
    }

    pub fn new(id: SessionId, client_id: Arc<str>, version: ProtocolVersion, clean: bool) -> Self {
        Session {
            id,
            client_id,
            conn: None,
            version,
            clean,
            subscriptions: Subscriptions::default(),
            will: None,
            extras: None,
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

    /// A new session, recorded as begun.
    pub fn begin(
        id: SessionId,
        client_id: Arc<str>,
        version: ProtocolVersion,
        clean: bool,
        changes: &mut Changes,
    ) -> Self {
        changes.push(id, || What::Started {
            client_id: client_id.clone(),
        });
        Session::new(id, client_id, version, clean)
    }

    /// The session ends; what it held is dropped with it.
    pub fn end(self, changes: &mut Changes) -> Subscriptions {
        changes.push(self.id, || What::Ended);
        self.subscriptions
    }

    /// A connection sets the session's protocol version and lifetime (CONNECT, or 5.0's
    /// DISCONNECT with a new Session Expiry Interval).
    pub fn set_parameters(
        &mut self,
        version: ProtocolVersion,
        expiry_interval_s: u32,
        clean: bool,
        changes: &mut Changes,
    ) {
        self.version = version;
        self.expiry_interval_s = expiry_interval_s;
        self.clean = clean;
        changes.push(self.id, || What::Parameters {
            version,
            expiry_interval_s,
        });
    }

    pub fn subscriptions(&self) -> &Subscriptions {
        &self.subscriptions
    }

    /// Where the session's subscriptions say it lives (not kept across a restart).
    pub fn subscriptions_located_mut(
        &mut self,
    ) -> impl Iterator<Item = (&CompactString, &mut Subscription)> {
        self.subscriptions.iter_mut()
    }

    /// Adds or replaces the subscription to `filter`; the bytes a new one holds are counted
    /// here and in the broker's `filter_total` (`filter_bytes`).
    pub fn subscribe(
        &mut self,
        filter: &str,
        sub: Subscription,
        changes: &mut Changes,
        filter_total: &Arc<AtomicUsize>,
    ) {
        let new = (self.subscriptions)
            .insert(CompactString::from(filter), sub)
            .is_none();
        let cost = filter_cost(filter);
        if new && cost > 0 {
            self.charge_filters(cost as isize, Some(filter_total));
        }
        changes.push(self.id, || What::Subscribed {
            filter: filter.to_string(),
            options: sub.options,
            identifier: sub.identifier.map(|i| i.get()),
        });
    }

    /// Removes the subscription to `filter`; false if there was none.
    pub fn unsubscribe(&mut self, filter: &str, changes: &mut Changes) -> bool {
        let removed = self.subscriptions.remove(filter).is_some();
        let cost = filter_cost(filter);
        if removed && cost > 0 {
            self.charge_filters(-(cost as isize), None);
        }
        if removed {
            changes.push(self.id, || What::Unsubscribed {
                filter: filter.to_string(),
            });
        }
        removed
    }

    pub fn outgoing(&self) -> &Outgoing {
        &self.outgoing
    }

    /// Numbers packets on after `id` (a session restored from disk).
    pub fn continue_ids_after(&mut self, id: u16) {
        self.outgoing.continue_ids_after(id);
    }

    /// A packet identifier for an exchange that is not a delivery (a bridge's SUBSCRIBE).
    pub fn take_packet_id(&mut self) -> u16 {
        self.outgoing.take_id()
    }

    /// Drops every message held for the client and every QoS 2 id awaiting PUBREL (a
    /// bridge's clean local session when its connection ends). Only for a clean session:
    /// nothing of it is recorded.
    pub fn forget_messages(&mut self) {
        debug_assert!(self.clean);
        let last_id = self.outgoing.last_id();
        self.outgoing = Outgoing::default();
        self.outgoing.continue_ids_after(last_id);
        self.incoming = IncomingQos2::default();
    }

    pub fn incoming(&self) -> &IncomingQos2 {
        &self.incoming
    }

    /// What to do with `message` for `target`: send now, queue (recorded), or drop.
    pub fn offer(
        &mut self,
        message: &Arc<Message>,
        target: &Target,
        limits: Limits,
        changes: &mut Changes,
    ) -> Offer {
        let offer = self
            .outgoing
            .offer(message, target, self.conn.is_some(), limits);
        if offer == Offer::Queued {
            let packet_id = self.outgoing.last_id();
            changes.push(self.id, || What::Queued {
                message: message.clone(),
                target: target.clone(),
                packet_id,
            });
        }
        offer
    }

    /// A QoS 1/2 message goes in flight; returns its packet id (`numbered`: the one it was
    /// given when queued).
    pub fn start(
        &mut self,
        message: &Arc<Message>,
        target: &Target,
        numbered: Option<u16>,
        changes: &mut Changes,
    ) -> u16 {
        let packet_id = self.outgoing.start(message, target, numbered);
        changes.push(self.id, || What::InFlight {
            packet_id,
            message: message.clone(),
            target: target.clone(),
        });
        packet_id
    }

    /// The next queued message, if the window has room for it.
    pub fn next_queued(&mut self, window: usize, changes: &mut Changes) -> Option<Queued> {
        let queued = self.outgoing.next_queued(window)?;
        changes.push(self.id, || What::Dequeued);
        Some(queued)
    }

    /// The client's acknowledgement `ack` (with its reason code) of the message it was
    /// sent as `packet_id`: PUBACK ends a QoS 1 exchange, PUBCOMP a QoS 2 one; PUBREC
    /// releases a QoS 2 message (PUBREL answers it), or, with a reason of 0x80 or above
    /// (5.0), ends its exchange (§4.3.3, [MQTT-4.3.3-4]). Whether it fits the message is
    /// the shard's to check first (`Outgoing::fits`).
    pub fn acknowledged(
        &mut self,
        packet_id: u16,
        ack: Ack,
        reason: ReasonCode,
        changes: &mut Changes,
    ) -> Acknowledged {
        let done = match ack {
            Ack::PubAck => self.outgoing.puback(packet_id),
            Ack::PubComp => self.outgoing.pubcomp(packet_id),
            Ack::PubRec if reason as u8 >= 0x80 => self.outgoing.pubcomp(packet_id),
            Ack::PubRec => {
                if !self.outgoing.pubrec(packet_id) {
                    return Acknowledged::Unknown;
                }
                changes.push(self.id, || What::Released { packet_id });
                return Acknowledged::Released;
            }
        };
        if !done {
            return Acknowledged::Unknown;
        }
        changes.push(self.id, || What::Finished { packet_id });
        Acknowledged::Finished
    }

    /// Gives up a message in flight that cannot be sent again.
    pub fn abandon(&mut self, packet_id: u16, changes: &mut Changes) {
        self.outgoing.abandon(packet_id);
        changes.push(self.id, || What::Finished { packet_id });
    }

    /// Owes retained messages to a new subscription (not kept across a restart: they are
    /// owed again when the client subscribes again); returns how many did not fit.
    pub fn owe(&mut self, messages: Vec<Arc<Message>>, qos: QoS, identifier: Option<u32>) -> usize {
        self.outgoing.owe(messages, qos, identifier)
    }

    /// Whether the cluster may be asked for one more subscription's retained messages.
    pub fn may_await_cluster(&mut self, now: std::time::Instant) -> bool {
        self.outgoing.may_await_cluster(now)
    }

    /// The cluster was asked for a new subscription's retained messages (`Outgoing::await_cluster`).
    pub fn await_cluster(&mut self, now: std::time::Instant, question: u64) {
        self.outgoing.await_cluster(now, question)
    }

    /// The cluster's answer, less the topics delivered since it was asked; `None` if it was
    /// given up on.
    pub fn cluster_answered(
        &mut self,
        question: u64,
        messages: Vec<Arc<Message>>,
    ) -> Option<Vec<Arc<Message>>> {
        self.outgoing.cluster_answered(question, messages)
    }

    pub fn take_owed(&mut self) -> Option<Owed> {
        self.outgoing.take_owed()
    }

    /// Owes the retained messages matching `filter` to a new subscription (`Outgoing::owe_scan`).
    pub fn owe_scan(&mut self, filter: &str, qos: QoS, identifier: Option<u32>) -> bool {
        self.outgoing.owe_scan(filter, qos, identifier)
    }

    /// Ends the scan of retained messages for `filter` (its subscription went).
    pub fn cancel_scan(&mut self, filter: &str) {
        self.outgoing.cancel_scan(filter)
    }

    pub fn take_scan(&mut self) -> Option<RetainedScan> {
        self.outgoing.take_scan()
    }

    pub fn put_back_scan(&mut self, scan: RetainedScan) {
        self.outgoing.put_back_scan(scan)
    }

    /// PUBREC sent for a QoS 2 PUBLISH from the client: its id awaits PUBREL.
    pub fn awaiting_pubrel(&mut self, packet_id: u16, changes: &mut Changes) {
        self.incoming.record(packet_id);
        changes.push(self.id, || What::AwaitingPubrel { packet_id });
    }

    /// PUBREL from the client; false if the id was not awaiting one.
    pub fn pubrel(&mut self, packet_id: u16, changes: &mut Changes) -> bool {
        let known = self.incoming.pubrel(packet_id);
        if known {
            changes.push(self.id, || What::PubrelReceived { packet_id });
        }
        known
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
            writable: true,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes of long filters are counted in the session and the broker's total, once
    /// per filter, and all given back, by unsubscribing or by the session going.
    #[test]
    fn long_and_deep_filters_are_charged_once_and_given_back() {
        let total: Arc<AtomicUsize> = Default::default();
        let mut changes = Changes::default();
        let sub = Subscription {
            shard: 0,
            options: Default::default(),
            identifier: None,
        };
        // 40 bytes of text (kept twice) and 20 levels past the first.
        let long = "a/".repeat(20);
        let long_cost = 2 * 40 + 20 * TRIE_LEVEL_BYTES;
        let mut s = Session::new(SessionId::new(1), "c".into(), ProtocolVersion::V5, false);
        s.subscribe("short", sub, &mut changes, &total);
        assert_eq!((s.filter_bytes(), total.load(Relaxed)), (0, 0));
        s.subscribe("short/#", sub, &mut changes, &total);
        assert_eq!(
            s.filter_bytes(),
            TRIE_LEVEL_BYTES,
            "one level past the first"
        );
        s.unsubscribe("short/#", &mut changes);
        s.subscribe(&long, sub, &mut changes, &total);
        s.subscribe(&long, sub, &mut changes, &total);
        assert_eq!(
            (s.filter_bytes(), total.load(Relaxed)),
            (long_cost, long_cost)
        );
        s.set_credentials(Some("user"), None);
        s.set_credentials(None, None);
        assert_eq!(
            s.filter_bytes(),
            long_cost,
            "kept across a new connection's credentials"
        );
        s.unsubscribe(&long, &mut changes);
        assert_eq!((s.filter_bytes(), total.load(Relaxed)), (0, 0));
        assert!(s.extras.is_none(), "the box goes once it holds nothing");
        s.subscribe(&format!("{long}/x"), sub, &mut changes, &total);
        assert_eq!(total.load(Relaxed), 2 * 42 + 21 * TRIE_LEVEL_BYTES);
        drop(s);
        assert_eq!(total.load(Relaxed), 0);
    }
}
