//! A session as its records leave it: what recovery rebuilds from the journals (and the
//! Mosquitto import from its database), and what the simulation rebuilds from the live
//! sessions' change records to check them. The meaning of each record is written once,
//! here: `replay` in `recover/mod.rs` reads the journal's records into these methods, and
//! `apply` the in-memory ones (`session::What`).

use compact_str::CompactString;
use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Instant;

use crate::codec::{ProtocolVersion, QoS, SubscriptionOptions, Will};
use crate::persist::format::{options_byte, Delivery};
use crate::persist::WallClock;
use crate::session::{Changes, Durable, Limits, Session, What};
use crate::topic::Subscription;
use crate::types::{Message, SessionId, Target};

/// A recovered session made live again, and when its clocks run from.
pub struct Revived {
    pub session: Box<Session>,
    /// Its subscriptions, in the order they were stored, for the trie.
    pub subscriptions: Vec<(CompactString, Subscription)>,
    /// When its waiting will is due (at once if that passed while the broker was down).
    pub will_due: Option<Instant>,
    /// Offline since its client went away, or since now if it was connected when the
    /// broker stopped: its expiry runs from then.
    pub offline_since: Instant,
}

/// A message in flight to a recovered session's client.
#[derive(Clone, Debug)]
pub struct InFlight {
    pub packet_id: u16,
    pub message: Arc<Message>,
    pub delivery: Delivery,
    /// Its PUBREL was sent (QoS 2).
    pub released: bool,
}

/// A session as the journals left it.
#[derive(Debug, Clone, Default)]
pub struct RecoveredSession {
    pub client_id: String,
    pub claim: u64,
    pub version: u8,
    pub expiry_interval_s: u32,
    /// Filter, the 5.0 options byte, the subscription identifier (0: none).
    pub subscriptions: Vec<(String, u8, u32)>,
    /// In the order they were sent.
    pub in_flight: Vec<InFlight>,
    pub queued: VecDeque<(Arc<Message>, Delivery)>,
    pub awaiting_pubrel: Vec<u16>,
    /// The last packet identifier it numbered.
    pub last_packet_id: u16,
    /// The identifier its first queued message was numbered with.
    pub first_queued_id: Option<u16>,
    /// When its client went away (Unix milliseconds); `None`: it was connected when the
    /// broker stopped.
    pub offline_since_ms: Option<u64>,
    /// Its will waiting for its Will Delay Interval: when it is due (Unix milliseconds),
    /// and the will as a message.
    pub delayed_will: Option<(u64, Arc<Message>)>,
    pub(in crate::persist) ended: bool,
}

impl RecoveredSession {
    /// Whether its expiry ran out by `now_ms` (5.0's Session Expiry Interval, or
    /// `persistent_client_expiration` for one that would never expire), counted from when
    /// its client went away.
    pub fn expired(
        &self,
        now_ms: u64,
        persistent_client_expiration: Option<std::time::Duration>,
    ) -> bool {
        let Some(since) = self.offline_since_ms else {
            return false;
        };
        let after = crate::session::expires_after(
            self.version(),
            self.expiry_interval_s,
            persistent_client_expiration,
        );
        after.is_some_and(|after| since.saturating_add(after.as_millis() as u64) <= now_ms)
    }

    /// Queues `message` behind what it holds, numbered after the last number it gave out
    /// (as the broker it came from would have numbered it).
    pub(in crate::persist) fn queue_next(&mut self, message: Arc<Message>, delivery: Delivery) {
        self.last_packet_id = self.last_packet_id.wrapping_add(1).max(1);
        if self.queued.is_empty() {
            self.first_queued_id = Some(self.last_packet_id);
        }
        self.queued.push_back((message, delivery));
    }

    pub fn version(&self) -> ProtocolVersion {
        match self.version {
            3 => ProtocolVersion::V31,
            5 => ProtocolVersion::V5,
            _ => ProtocolVersion::V311,
        }
    }

    /// A session begins (or begins again: a clean start replaces it), under `claim`, its
    /// packet identifiers numbered on from `last_packet_id`.
    pub fn started(client_id: String, claim: u64, last_packet_id: u16) -> RecoveredSession {
        RecoveredSession {
            client_id,
            claim,
            last_packet_id,
            ..Default::default()
        }
    }

    pub fn parameters(&mut self, version: u8, expiry_interval_s: u32) {
        self.version = version;
        self.expiry_interval_s = expiry_interval_s;
    }

    /// A subscription, new or replacing the one of the same filter.
    pub fn subscribed(&mut self, filter: String, options: u8, identifier: u32) {
        self.subscriptions.retain(|(f, _, _)| *f != filter);
        self.subscriptions.push((filter, options, identifier));
    }

    pub fn unsubscribed(&mut self, filter: &str) {
        self.subscriptions.retain(|(f, _, _)| f != filter);
    }

    /// A message joins the back of the queue, numbered `packet_id` (the latest number
    /// given out).
    pub fn queued(&mut self, message: Arc<Message>, delivery: Delivery, packet_id: u16) {
        if self.queued.is_empty() {
            self.first_queued_id = Some(packet_id);
        }
        self.queued.push_back((message, delivery));
        self.last_packet_id = packet_id;
    }

    /// The front of the queue leaves it; the next in the queue was numbered one after (gaps
    /// aside).
    pub fn dequeued(&mut self) {
        self.queued.pop_front();
        self.first_queued_id = (self.first_queued_id)
            .map(|id| id.wrapping_add(1).max(1))
            .filter(|_| !self.queued.is_empty());
    }

    /// A message goes in flight as `packet_id`. Sent straight away, it was numbered now;
    /// from the queue, earlier (and the queue's back holds the latest number).
    pub fn in_flight(&mut self, packet_id: u16, message: Arc<Message>, delivery: Delivery) {
        self.in_flight.retain(|f| f.packet_id != packet_id);
        self.in_flight.push(InFlight {
            packet_id,
            message,
            delivery,
            released: false,
        });
        if self.queued.is_empty() {
            self.last_packet_id = packet_id;
        }
    }

    /// PUBREC came back for `packet_id`: its PUBREL is what is resent.
    pub fn released(&mut self, packet_id: u16) {
        for f in self
            .in_flight
            .iter_mut()
            .filter(|f| f.packet_id == packet_id)
        {
            f.released = true;
        }
    }

    pub fn finished(&mut self, packet_id: u16) {
        self.in_flight.retain(|f| f.packet_id != packet_id);
    }

    pub fn awaiting_pubrel(&mut self, packet_id: u16) {
        if !self.awaiting_pubrel.contains(&packet_id) {
            self.awaiting_pubrel.push(packet_id);
        }
    }

    pub fn pubrel_received(&mut self, packet_id: u16) {
        self.awaiting_pubrel.retain(|&p| p != packet_id);
    }

    /// The session ends: only its client id and claim are kept (to outrank an older copy
    /// in another journal).
    pub fn end(&mut self) {
        *self = RecoveredSession {
            client_id: std::mem::take(&mut self.client_id),
            claim: self.claim,
            ended: true,
            ..Default::default()
        };
    }

    pub fn has_ended(&self) -> bool {
        self.ended
    }

    /// Applies one in-memory change record (`What::Started` begins a new one:
    /// `RecoveredSession::started`).
    pub fn apply(&mut self, what: &What) {
        match what {
            What::Started { client_id } => {
                *self = RecoveredSession::started(client_id.to_string(), 0, 0);
            }
            What::Parameters {
                version,
                expiry_interval_s,
            } => self.parameters(*version as u8, *expiry_interval_s),
            What::Subscribed {
                filter,
                options,
                identifier,
            } => self.subscribed(
                filter.clone(),
                options_byte(options),
                identifier.unwrap_or(0),
            ),
            What::Unsubscribed { filter } => self.unsubscribed(filter),
            What::Queued {
                message,
                target,
                packet_id,
            } => self.queued(message.clone(), Delivery::of(target), *packet_id),
            What::Dequeued => self.dequeued(),
            What::InFlight {
                packet_id,
                message,
                target,
            } => self.in_flight(*packet_id, message.clone(), Delivery::of(target)),
            What::Released { packet_id } => self.released(*packet_id),
            What::Finished { packet_id } => self.finished(*packet_id),
            What::AwaitingPubrel { packet_id } => self.awaiting_pubrel(*packet_id),
            What::PubrelReceived { packet_id } => self.pubrel_received(*packet_id),
            What::Ended => self.end(),
        }
    }

    /// What it keeps across a restart, to compare with a live session (`Session::durable`).
    pub fn durable(&self) -> Durable {
        let qos = |byte: u8| QoS::from_u8(byte).unwrap_or(QoS::AtLeastOnce);
        Durable {
            client_id: Some(self.client_id.as_str().into()),
            version: (self.version != 0).then(|| self.version()),
            expiry_interval_s: self.expiry_interval_s,
            subscriptions: (self.subscriptions.iter())
                .filter_map(|(filter, options, identifier)| {
                    let options = SubscriptionOptions::from_byte(*options)?;
                    let identifier = (*identifier != 0).then_some(*identifier);
                    Some((filter.clone(), (options, identifier)))
                })
                .collect(),
            queue: (self.queued.iter())
                .map(|(m, d)| (Durable::address(m), qos(d.qos)))
                .collect(),
            inflight: (self.in_flight.iter())
                .map(|f| {
                    (
                        f.packet_id,
                        (
                            Durable::address(&f.message),
                            qos(f.delivery.qos),
                            f.released,
                        ),
                    )
                })
                .collect(),
            awaiting_pubrel: self.awaiting_pubrel.iter().copied().collect(),
        }
    }

    /// The live session it was, as session `id` on shard `shard` (its subscriptions
    /// there; their filter bytes counted in `filter_bytes`), at `now`. A stored subscription
    /// with bad options or filter is left out, and said.
    pub fn revive(
        mut self,
        id: SessionId,
        shard: u16,
        filter_bytes: &Arc<AtomicUsize>,
        clock: &WallClock,
        now: Instant,
    ) -> Revived {
        // The journal already holds what this is rebuilt from: nothing to record.
        let mut quiet = Changes::default();
        let client_id: Arc<str> = self.client_id.as_str().into();
        let version = self.version();
        let mut session = Box::new(Session::new(id, client_id.clone(), version, false));
        session.set_parameters(version, self.expiry_interval_s, false, &mut quiet);
        let subscriptions = self.revive_subscriptions(&mut session, shard, filter_bytes);
        self.revive_outgoing(&mut session, id);
        // A will still waiting goes when it is due, or when the session ends if that is
        // first [MQTT-3.1.3-9].
        let will_due = self.delayed_will.take().map(|(due_ms, will)| {
            let due = clock.instant(due_ms);
            let will = Will {
                qos: will.qos,
                retain: will.retain,
                properties: will.properties.clone(),
                topic: will.topic.clone(),
                payload: will.payload.clone(),
            };
            session.delayed_will = Some(Box::new((due, will)));
            due
        });
        let offline_since = (self.offline_since_ms).map_or(now, |ms| clock.instant(ms).min(now));
        Revived {
            session,
            subscriptions,
            will_due,
            offline_since,
        }
    }

    /// Its stored subscriptions, made again in `session` (on shard `shard`), and the list of
    /// them for the trie. One with bad options or filter is left out, and said.
    fn revive_subscriptions(
        &self,
        session: &mut Session,
        shard: u16,
        filter_bytes: &Arc<AtomicUsize>,
    ) -> Vec<(CompactString, Subscription)> {
        let mut quiet = Changes::default();
        let client_id = &self.client_id;
        let mut subscriptions = Vec::with_capacity(self.subscriptions.len());
        for (filter, options, identifier) in &self.subscriptions {
            let Some(options) = SubscriptionOptions::from_byte(*options) else {
                log::warn!("Warning: a stored subscription of {client_id} to {filter} has bad options; left out.");
                continue;
            };
            if crate::topic::parse_filter(filter).is_err() {
                log::warn!("Warning: a stored subscription of {client_id} to {filter:?} is not a valid filter; left out.");
                continue;
            }
            let sub = Subscription {
                shard,
                options,
                identifier: NonZeroU32::new(*identifier),
            };
            session.subscribe(filter, sub, &mut quiet, filter_bytes);
            subscriptions.push((CompactString::from(filter.as_str()), sub));
        }
        subscriptions
    }

    /// What it owed its client, into `session` (session `id`): the messages in flight
    /// (released or not), the queue with the packet ids it had, the QoS 2 PUBLISHes received
    /// and not yet released.
    fn revive_outgoing(&mut self, session: &mut Session, id: SessionId) {
        let mut quiet = Changes::default();
        let target = |d: &Delivery| Target {
            session: id,
            qos: super::qos(d.qos),
            retain: d.retain,
            identifiers: d.identifiers.iter().copied().collect(),
            shared: false,
        };
        for f in &self.in_flight {
            let packet_id = session.start(
                &f.message,
                &target(&f.delivery),
                Some(f.packet_id),
                &mut quiet,
            );
            if f.released {
                let success = crate::codec::ReasonCode::Success;
                session.acknowledged(packet_id, crate::session::Ack::PubRec, success, &mut quiet);
            }
        }
        let unbounded = Limits {
            writable: true,
            window: 0,
            queued_max: usize::MAX,
            queued_bytes_max: 0,
        };
        // Queued messages keep the numbers they had (numbered on from the first), and
        // numbering goes on from where it stopped.
        if let Some(first) = self.first_queued_id {
            session.continue_ids_after(first.wrapping_sub(1));
        }
        // Taken one by one, so the recovered copy shrinks as the session's grows.
        while let Some((message, delivery)) = self.queued.pop_front() {
            session.offer(&message, &target(&delivery), unbounded, &mut quiet);
        }
        session.continue_ids_after(self.last_packet_id);
        for packet_id in &self.awaiting_pubrel {
            session.awaiting_pubrel(*packet_id, &mut quiet);
        }
    }
}
