//! What a session owes its client of the retained messages matching its new
//! subscriptions: scans of the retained store still to go on (a filter and a place in the
//! store, never the matches themselves), and the messages they found, sent as the client
//! reads (`shard/owed.rs` does the scanning and the sending).

use crate::limits::{OWED_MAX, SCANS_MAX, SCAN_FILTER_BYTES_MAX};
use std::sync::Arc;

use super::Outgoing;
use crate::codec::QoS;
use crate::types::Message;

/// A retained message owed to a new subscription, sent as the client reads (never all at
/// once: a filter may match a hundred thousand of them).
#[derive(Debug)]
pub struct Owed {
    pub message: Arc<Message>,
    /// The subscription's QoS and identifier.
    pub qos: QoS,
    pub identifier: Option<u32>,
}

/// A scan of the retained messages matching a new subscription, not finished yet: it goes
/// on a slice at a time as the client reads (`shard/owed.rs`), so that what a SUBSCRIBE
/// makes the broker owe is a filter and a place in the store, never the matches themselves.
#[derive(Clone, Debug)]
pub struct RetainedScan {
    pub filter: Box<str>,
    /// The filter's hash, to find the scan of a filter (`scans.rs`).
    pub(super) filter_hash: u64,
    /// The subscription's QoS and identifier.
    pub qos: QoS,
    pub identifier: Option<u32>,
    /// Where it goes on; `None`: from the start.
    pub cursor: Option<crate::retain::ScanCursor>,
}

impl RetainedScan {
    /// A scan of the retained messages matching `filter`, from the start.
    pub fn new(filter: &str, qos: QoS, identifier: Option<u32>) -> Self {
        RetainedScan {
            filter: filter.into(),
            filter_hash: filter_hash(filter),
            qos,
            identifier,
            cursor: None,
        }
    }
}

/// Topics recorded while answers are awaited, at most (8 bytes each: their hashes); past
/// it, no more are recorded (their retained messages are then sent as they come).
const AWAITED_TOPICS_MAX: usize = 4096;

/// Answers awaited at once by one session: past it, a new subscription's retained
/// messages are not asked for (counted, as a scan past `SCANS_MAX`).
pub const AWAITED_ANSWERS_MAX: u32 = 16;

/// How long after its last question a session stops waiting (an answer lost on the way:
/// NATS away, a full mailbox, the session moved to another shard).
const ANSWER_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// In a cluster that keeps retained messages in JetStream: how many of the session's new
/// subscriptions still wait for the cluster's answer, when it last asked, and the topics
/// (hashed with the process's seed) delivered to it since. A retained message of such a
/// topic is older than what the client has (or as old): it is not sent, so that a client
/// never sees a topic's newer message and then its older retained one.
#[derive(Debug, Default)]
pub(super) struct AwaitingCluster {
    answers: u32,
    /// The first question still awaited (its number on the shard, increasing): an answer
    /// to an earlier one, given up on, is not taken.
    first: u64,
    asked_at: Option<std::time::Instant>,
    delivered: hashbrown::HashSet<u64, crate::session::ProcessSeeded>,
}

impl AwaitingCluster {
    pub(super) fn is_empty(&self) -> bool {
        self.answers == 0
    }

    /// `topic` was delivered live (or queued) to the session.
    pub(super) fn delivered(&mut self, topic: &str) {
        if self.answers > 0 && self.delivered.len() < AWAITED_TOPICS_MAX {
            self.delivered.insert(filter_hash(topic));
        }
    }

    fn forget(&mut self) {
        *self = AwaitingCluster::default();
    }
}

pub(super) fn filter_hash(filter: &str) -> u64 {
    use std::hash::BuildHasher;
    crate::session::ProcessSeeded.hash_one(filter)
}

impl Outgoing {
    /// Owes retained messages to a new subscription; returns how many did not fit
    /// (`OWED_MAX`).
    /// Retained messages found and not sent yet.
    pub fn owed_len(&self) -> usize {
        self.backlog.as_ref().map_or(0, |b| b.owed.len())
    }

    /// Whether the session may ask the cluster for one more subscription's retained
    /// messages (`AWAITED_ANSWERS_MAX`); answers awaited past `ANSWER_DEADLINE` are
    /// given up.
    pub fn may_await_cluster(&mut self, now: std::time::Instant) -> bool {
        let Some(backlog) = self.backlog.as_mut() else {
            return true;
        };
        let awaiting = &mut backlog.awaiting;
        if awaiting
            .asked_at
            .is_some_and(|at| now.duration_since(at) > ANSWER_DEADLINE)
        {
            awaiting.forget();
        }
        let room = awaiting.answers < AWAITED_ANSWERS_MAX;
        self.release_backlog();
        room
    }

    /// The cluster was asked for a new subscription's retained messages, as the shard's
    /// `question`th.
    pub fn await_cluster(&mut self, now: std::time::Instant, question: u64) {
        let awaiting = &mut self.backlog.get_or_insert_with(Default::default).awaiting;
        if awaiting.answers == 0 {
            awaiting.first = question;
        }
        awaiting.answers += 1;
        awaiting.asked_at = Some(now);
    }

    /// `topic` was delivered live (or queued) to the session (`AwaitingCluster`).
    pub fn delivered_live(&mut self, topic: &str) {
        if let Some(backlog) = &mut self.backlog {
            backlog.awaiting.delivered(topic);
        }
    }

    /// The cluster's answer to the session's `question`th question: what it found, less
    /// the topics delivered since it was asked (`AwaitingCluster`). `None` for an answer
    /// given up on (later than `ANSWER_DEADLINE`): newer messages may have been sent since.
    pub fn cluster_answered(
        &mut self,
        question: u64,
        mut messages: Vec<Arc<Message>>,
    ) -> Option<Vec<Arc<Message>>> {
        let backlog = self.backlog.as_mut()?;
        let awaiting = &mut backlog.awaiting;
        if awaiting.is_empty() || question < awaiting.first {
            return None;
        }
        messages.retain(|m| !awaiting.delivered.contains(&filter_hash(&m.topic)));
        awaiting.answers -= 1;
        if awaiting.answers == 0 {
            awaiting.forget();
        }
        self.release_backlog();
        Some(messages)
    }

    pub fn owe(&mut self, messages: Vec<Arc<Message>>, qos: QoS, identifier: Option<u32>) -> usize {
        let owed = &mut self.backlog.get_or_insert_with(Default::default).owed;
        let room = OWED_MAX.saturating_sub(owed.len());
        let dropped = messages.len().saturating_sub(room);
        owed.extend(messages.into_iter().take(room).map(|message| Owed {
            message,
            qos,
            identifier,
        }));
        self.release_backlog();
        dropped
    }

    /// Whether retained messages are owed: found and not sent, or still to find.
    pub fn owes(&self) -> bool {
        (self.backlog.as_ref()).is_some_and(|b| !b.owed.is_empty() || !b.scans.is_empty())
    }

    /// Owes the retained messages matching `filter` to a subscription: a scan of the store,
    /// done later a slice at a time. A scan already under way for the same filter starts
    /// again instead (the subscription was made again, and its retained messages are sent
    /// again [MQTT-3.8.4-3]), so repeating a filter, in one SUBSCRIBE or many, never adds
    /// work. False if `SCANS_MAX` scans are under way (nothing owed).
    pub fn owe_scan(&mut self, filter: &str, qos: QoS, identifier: Option<u32>) -> bool {
        let scans = &mut self.backlog.get_or_insert_with(Default::default).scans;
        let room = match scans.restart(RetainedScan::new(filter, qos, identifier)) {
            Ok(()) => true,
            Err(scan) => {
                let room = scans.len() < SCANS_MAX
                    && scans.filter_bytes() + filter.len() <= SCAN_FILTER_BYTES_MAX;
                if room {
                    scans.push_back(scan);
                }
                room
            }
        };
        self.release_backlog();
        room
    }

    /// Ends the scan of `filter`, if one is under way (its subscription went).
    pub fn cancel_scan(&mut self, filter: &str) {
        let Some(backlog) = self.backlog.as_mut() else {
            return;
        };
        backlog.scans.remove(filter);
        self.release_backlog();
    }

    /// Whether found messages are waiting to be sent (no scan needed before the next).
    pub fn has_owed_found(&self) -> bool {
        self.backlog.as_ref().is_some_and(|b| !b.owed.is_empty())
    }

    /// The oldest scan under way, taken out to go on with (`put_back_scan` if not done).
    pub fn take_scan(&mut self) -> Option<RetainedScan> {
        let scan = self.backlog.as_mut()?.scans.pop_front();
        self.release_backlog();
        scan
    }

    /// A scan taken out and not finished goes back in front, unless a subscription made
    /// since restarted the scan of its filter.
    pub fn put_back_scan(&mut self, scan: RetainedScan) {
        let scans = &mut self.backlog.get_or_insert_with(Default::default).scans;
        if !scans.contains(&scan.filter) {
            scans.push_front(scan);
        }
        self.release_backlog();
    }

    /// The next owed message's QoS: the lower of the message's and the subscription's, or
    /// the subscription's with `upgrade_outgoing_qos`.
    pub fn next_owed_qos(&self, upgrade: bool) -> Option<QoS> {
        let backlog = self.backlog.as_ref()?;
        let qos = |o: &Owed| {
            if upgrade {
                o.qos
            } else {
                o.message.qos.min(o.qos)
            }
        };
        backlog.owed.front().map(qos)
    }

    pub fn take_owed(&mut self) -> Option<Owed> {
        let owed = self.backlog.as_mut()?.owed.pop_front();
        self.release_backlog();
        owed
    }
}
