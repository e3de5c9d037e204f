//! What changed in a session, as the session itself reports it: the records a persistence
//! journal writes and replays. Every change to what a session must keep across a restart
//! (its parameters, subscriptions, queue, inflight window and incoming QoS 2 state) goes
//! through a `Session` method that records it here, so a journal cannot miss one. Recovery
//! gives each record its meaning in one place (`persist/recover/session.rs`: its `replay`
//! of a journal and `RecoveredSession::apply` of these), and the simulation checks after
//! every step that the replay of every session equals the live session (`Durable`).
//!
//! Recording is off unless something reads the records (the journal, the simulation):
//! then the cost of a change is one branch.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use super::Session;
use crate::codec::{ProtocolVersion, QoS, SubscriptionOptions};
use crate::types::{Message, SessionId, Target};

/// One change to one session.
#[derive(Debug, Clone)]
pub struct Change {
    pub session: SessionId,
    pub what: What,
}

#[derive(Debug, Clone)]
pub enum What {
    /// The session begins (or begins again: a clean start replaces it).
    Started {
        client_id: Arc<str>,
    },
    /// A connection set the session's parameters (CONNECT, or DISCONNECT's new expiry).
    Parameters {
        version: ProtocolVersion,
        expiry_interval_s: u32,
    },
    Subscribed {
        filter: String,
        options: SubscriptionOptions,
        identifier: Option<u32>,
    },
    Unsubscribed {
        filter: String,
    },
    /// A QoS 1/2 message joins the back of the queue, numbered `packet_id`.
    Queued {
        message: Arc<Message>,
        target: Target,
        packet_id: u16,
    },
    /// The front of the queue leaves it (to go in flight, recorded next).
    Dequeued,
    /// A QoS 1/2 message is sent with this packet id (to `target`: its QoS, RETAIN flag
    /// and subscription identifiers).
    InFlight {
        packet_id: u16,
        message: Arc<Message>,
        target: Target,
    },
    /// PUBREC came back: PUBREL is what is resent from now on.
    Released {
        packet_id: u16,
    },
    /// The exchange ended (PUBACK, PUBCOMP, or given up).
    Finished {
        packet_id: u16,
    },
    /// A QoS 2 PUBLISH from the client, delivered, awaits PUBREL.
    AwaitingPubrel {
        packet_id: u16,
    },
    /// Its PUBREL came.
    PubrelReceived {
        packet_id: u16,
    },
    /// The session ends.
    Ended,
}

/// The change records of a loop turn, in order.
#[derive(Debug, Default)]
pub struct Changes {
    recording: bool,
    list: Vec<Change>,
}

impl Changes {
    /// Records from now on (`true`) or not.
    pub fn record(&mut self, on: bool) {
        self.recording = on;
        if !on {
            self.list.clear();
        }
    }

    pub fn is_recording(&self) -> bool {
        self.recording
    }

    /// Records what `what` makes, if recording.
    pub fn push(&mut self, session: SessionId, what: impl FnOnce() -> What) {
        if self.recording {
            self.list.push(Change {
                session,
                what: what(),
            });
        }
    }

    /// The records so far, oldest first; the reader takes them every turn, so they never
    /// outgrow one turn's work.
    pub fn take(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.list)
    }
}

/// What a session keeps across a restart, to compare: read from a live session
/// (`Session::durable`) or from the replay of its records (`RecoveredSession::durable`).
/// Messages are compared by identity: the records carry the same `Arc`s the session holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Durable {
    pub client_id: Option<Arc<str>>,
    pub version: Option<ProtocolVersion>,
    pub expiry_interval_s: u32,
    pub subscriptions: BTreeMap<String, (SubscriptionOptions, Option<u32>)>,
    /// Queued messages (by address) and their QoS, front first.
    pub queue: VecDeque<(usize, QoS)>,
    /// In flight by packet id: the message (by address), its QoS, and whether PUBREL was sent.
    pub inflight: BTreeMap<u16, (usize, QoS, bool)>,
    pub awaiting_pubrel: BTreeSet<u16>,
}

impl Durable {
    /// A message by identity: the records carry the `Arc`s the session holds.
    pub fn address(message: &Arc<Message>) -> usize {
        Arc::as_ptr(message) as usize
    }
}

impl Session {
    /// What this session would have to keep across a restart, read from its live state.
    pub fn durable(&self) -> Durable {
        Durable {
            client_id: Some(self.client_id.clone()),
            version: Some(self.version),
            expiry_interval_s: self.expiry_interval_s,
            subscriptions: (self.subscriptions.iter())
                .map(|(filter, sub)| {
                    let identifier = sub.identifier.map(|i| i.get());
                    (filter.to_string(), (sub.options, identifier))
                })
                .collect(),
            queue: (self.outgoing.queued())
                .map(|q| (Durable::address(&q.message), q.target.qos))
                .collect(),
            inflight: (self.outgoing.in_flight().into_iter())
                .map(|f| {
                    (
                        f.packet_id,
                        (Durable::address(&f.message), f.qos, f.released),
                    )
                })
                .collect(),
            awaiting_pubrel: self.incoming.awaiting_pubrel().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::outgoing::{self, tests::target};
    use crate::session::{Ack, Acknowledged, Limits, Offer};
    use crate::topic::Subscription;
    use std::num::NonZeroU32;

    fn message(qos: QoS) -> Arc<Message> {
        outgoing::tests::message(1, qos)
    }

    /// The records replayed the way recovery replays a journal's.
    fn replay(changes: &mut Changes) -> Option<Durable> {
        let mut replayed = crate::persist::recover::RecoveredSession::default();
        for change in changes.take() {
            replayed.apply(&change.what);
        }
        (!replayed.has_ended()).then(|| replayed.durable())
    }

    #[test]
    fn the_records_of_a_session_replay_to_the_session() {
        let mut changes = Changes::default();
        changes.record(true);
        let mut s = Session::begin(
            SessionId::new(7),
            "c".into(),
            ProtocolVersion::V5,
            false,
            &mut changes,
        );
        s.set_parameters(ProtocolVersion::V5, 60, false, &mut changes);
        s.conn = Some(crate::types::ConnId::new(1, 1));
        let sub = Subscription {
            shard: 0,
            options: SubscriptionOptions::default(),
            identifier: NonZeroU32::new(3),
        };
        let total = Default::default();
        s.subscribe("a/#", sub, &mut changes, &total);
        s.subscribe("b", sub, &mut changes, &total);
        assert!(s.unsubscribe("b", &mut changes));
        let limits = Limits {
            writable: true,
            window: 2,
            queued_max: usize::MAX,
            queued_bytes_max: 0,
        };
        let mut in_flight = Vec::new();
        for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce, QoS::AtLeastOnce] {
            let (m, t) = (message(qos), target(qos));
            if s.offer(&m, &t, limits, &mut changes) == Offer::Send {
                in_flight.push(s.start(&m, &t, None, &mut changes));
            }
        }
        assert_eq!(s.outgoing().queue_len(), 1, "the third waits");
        let success = crate::codec::ReasonCode::Success;
        let released = s.acknowledged(in_flight[1], Ack::PubRec, success, &mut changes);
        assert_eq!(released, Acknowledged::Released);
        let finished = s.acknowledged(in_flight[0], Ack::PubAck, success, &mut changes);
        assert_eq!(finished, Acknowledged::Finished);
        let queued = s.next_queued(2, &mut changes).expect("room now");
        s.start(
            &queued.message,
            &queued.target,
            Some(queued.packet_id),
            &mut changes,
        );
        s.awaiting_pubrel(9, &mut changes);
        s.awaiting_pubrel(10, &mut changes);
        assert!(s.pubrel(9, &mut changes));
        assert_eq!(replay(&mut changes), Some(s.durable()));

        s.end(&mut changes);
        assert_eq!(
            replay(&mut changes),
            None,
            "an ended session replays to nothing"
        );
    }

    #[test]
    fn nothing_is_recorded_unless_asked() {
        let mut changes = Changes::default();
        let mut s = Session::begin(
            SessionId::new(1),
            "c".into(),
            ProtocolVersion::V311,
            true,
            &mut changes,
        );
        s.awaiting_pubrel(1, &mut changes);
        assert!(changes.take().is_empty());
    }
}
