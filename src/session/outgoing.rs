//! What a session owes its client, as a state machine with no I/O: the inflight window of
//! QoS 1/2 messages sent and not yet acknowledged, the queue behind it, and the retained
//! messages owed to new subscriptions. The shard asks it what to do with a message
//! (`offer`), tells it what the client acknowledged (`puback`, `pubrec`, `pubcomp`), and
//! encodes what it says to send.

use smallvec::SmallVec;
use std::collections::VecDeque;
use std::sync::Arc;

use super::delivery::DropReason;
use super::lazy_map::LazyMap;

mod owed;
mod scans;
use crate::codec::QoS;
use crate::types::{Message, Target};
pub use owed::{Owed, RetainedScan, AWAITED_ANSWERS_MAX};

/// A QoS 1/2 message sent to the client and not yet fully acknowledged.
#[derive(Debug)]
pub struct InFlight {
    pub packet_id: u16,
    pub message: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    pub identifiers: SmallVec<[u32; 1]>,
    /// QoS 2: PUBREC came back and PUBREL was sent; waiting for PUBCOMP.
    pub released: bool,
    /// Order of sending, so that a resumed session resends in order [MQTT-4.4.0-1].
    sent: u64,
}

/// A message waiting for room in the inflight window (or for the client to come back).
#[derive(Debug)]
pub struct Queued {
    pub message: Arc<Message>,
    pub target: Target,
    /// The packet identifier numbered for it when it was queued, used when it goes out
    /// unless another exchange holds it by then: identifiers follow the order messages
    /// were given to the session, as Mosquitto numbers them (a queued message that expires
    /// leaves a gap).
    pub packet_id: u16,
}

/// The limits a delivery is held to (from the configuration and the client's CONNECT).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Messages in flight at once: the broker's limit or the client's Receive Maximum,
    /// whichever is lower. [MQTT-3.3.4-9]
    pub window: usize,
    /// `max_queued_messages` (usize::MAX: none).
    pub queued_max: usize,
    /// `max_queued_bytes` of payload (0: none).
    pub queued_bytes_max: usize,
    /// Whether the client's connection can take the message now (what waits to be written
    /// to it is within its bound): if not, a message that could go is queued, as a
    /// reference to the one message all its subscribers share, not a copy.
    pub writable: bool,
}

/// What to do with a message offered to a session.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// Send it now (QoS 1/2: call `start` once it is encoded).
    Send,
    /// Queued behind the window (or until the client comes back).
    Queued,
    /// Not kept: QoS 0 for an offline client, or the queue is full.
    Dropped(DropReason),
}

/// An acknowledgement of a message the session sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ack {
    PubAck,
    PubRec,
    PubComp,
}

impl Ack {
    /// The packet's name, as the log says it.
    pub fn name(self) -> &'static str {
        match self {
            Ack::PubAck => "PUBACK",
            Ack::PubRec => "PUBREC",
            Ack::PubComp => "PUBCOMP",
        }
    }
}

#[derive(Debug, Default)]
pub struct Outgoing {
    inflight: LazyMap<u16, InFlight>,
    /// The last packet id given out.
    last_id: u16,
    sent: u64,
    /// Out of line, and only while something waits: most sessions queue nothing, and every
    /// session would pay for the room of an empty queue.
    backlog: Option<Box<Backlog>>,
    /// Messages dropped because the queue was full, since the session began (saturating:
    /// 4 bytes, so that the session fits a smaller allocation class).
    dropped: u32,
}

/// What waits behind the window.
#[derive(Debug, Default)]
struct Backlog {
    queue: VecDeque<Queued>,
    /// Payload bytes in `queue` (for `max_queued_bytes`).
    queued_bytes: usize,
    owed: VecDeque<Owed>,
    /// Retained messages still to find for new subscriptions, oldest first.
    scans: scans::Scans,
    /// Answers awaited from the cluster for new subscriptions.
    awaiting: owed::AwaitingCluster,
}

impl Outgoing {
    /// What to do with `message` for `target`: send now, queue, or drop.
    pub fn offer(
        &mut self,
        message: &Arc<Message>,
        target: &Target,
        online: bool,
        limits: Limits,
    ) -> Offer {
        if target.qos == QoS::AtMostOnce {
            return if online {
                Offer::Send
            } else {
                Offer::Dropped(DropReason::Offline)
            };
        }
        if online && limits.writable && self.has_room(limits.window) {
            return Offer::Send;
        }
        let size = message.payload.len();
        if self.queue_len() >= limits.queued_max
            || (limits.queued_bytes_max > 0 && self.queued_bytes() + size > limits.queued_bytes_max)
        {
            self.dropped = self.dropped.saturating_add(1);
            return Offer::Dropped(DropReason::QueueFull);
        }
        let packet_id = self.next_number();
        let backlog = self.backlog.get_or_insert_with(Default::default);
        backlog.queued_bytes += size;
        backlog.queue.push_back(Queued {
            message: message.clone(),
            target: target.clone(),
            packet_id,
        });
        Offer::Queued
    }

    /// Whether a QoS 1/2 message may go out now: room in the window, and nothing queued
    /// ahead of it (messages go out in order [MQTT-4.6.0-6]).
    pub fn has_room(&self, window: usize) -> bool {
        self.inflight.len() < window && self.queue_len() == 0
    }

    /// Whether the window is full (a shared subscription passes over such a member).
    pub fn window_full(&self, window: usize) -> bool {
        self.inflight.len() >= window
    }

    /// The last number given out in the packet identifier sequence.
    pub fn last_id(&self) -> u16 {
        self.last_id
    }

    /// Continues the packet identifier sequence after `id` (a session restored from disk
    /// numbers on where it stopped, as Mosquitto's does).
    pub fn continue_ids_after(&mut self, id: u16) {
        self.last_id = id;
    }

    /// The next number in the packet identifier sequence (never 0).
    fn next_number(&mut self) -> u16 {
        self.last_id = self.last_id.wrapping_add(1).max(1);
        self.last_id
    }

    /// A packet identifier for another exchange (a bridge's SUBSCRIBE): the next in the
    /// sequence not in use by a message in flight [MQTT-2.2.1-4].
    pub fn take_id(&mut self) -> u16 {
        loop {
            let id = self.next_number();
            if !self.inflight.contains_key(&id) {
                return id;
            }
        }
    }

    /// A QoS 1/2 message enters the window; returns its packet identifier: non-zero
    /// [MQTT-2.2.1-3] and not in use by another unfinished exchange [MQTT-2.2.1-4].
    /// `numbered`: the one it was given when queued, kept if still free.
    pub fn start(&mut self, message: &Arc<Message>, target: &Target, numbered: Option<u16>) -> u16 {
        debug_assert!(target.qos != QoS::AtMostOnce);
        debug_assert!(self.inflight.len() < usize::from(u16::MAX));
        let id = match numbered {
            Some(id) if id != 0 && !self.inflight.contains_key(&id) => id,
            _ => loop {
                let id = self.next_number();
                if !self.inflight.contains_key(&id) {
                    break id;
                }
            },
        };
        self.sent += 1;
        self.inflight.insert(
            id,
            InFlight {
                packet_id: id,
                message: message.clone(),
                qos: target.qos,
                retain: target.retain,
                identifiers: target.identifiers.clone(),
                released: false,
                sent: self.sent,
            },
        );
        id
    }

    /// The next queued message, if the window has room for it.
    pub fn next_queued(&mut self, window: usize) -> Option<Queued> {
        if self.inflight.len() >= window {
            return None;
        }
        let backlog = self.backlog.as_mut()?;
        let queued = backlog.queue.pop_front()?;
        backlog.queued_bytes -= queued.message.payload.len();
        self.release_backlog();
        Some(queued)
    }

    /// PUBACK: ends a QoS 1 exchange. False if no QoS 1 message has this id.
    pub fn puback(&mut self, packet_id: u16) -> bool {
        self.finish(packet_id, QoS::AtLeastOnce)
    }

    /// PUBCOMP: ends a QoS 2 exchange. False if no QoS 2 message has this id.
    pub fn pubcomp(&mut self, packet_id: u16) -> bool {
        self.finish(packet_id, QoS::ExactlyOnce)
    }

    fn finish(&mut self, packet_id: u16, qos: QoS) -> bool {
        match self.inflight.get(&packet_id) {
            Some(f) if f.qos == qos => {
                self.inflight.remove(&packet_id);
                true
            }
            _ => false,
        }
    }

    /// PUBREC: a QoS 2 message was received; PUBREL is to be sent (and resent on resume
    /// instead of the PUBLISH [MQTT-4.4.0-1]). False if no QoS 2 message has this id.
    pub fn pubrec(&mut self, packet_id: u16) -> bool {
        match self.inflight.get_mut(&packet_id) {
            Some(f) if f.qos == QoS::ExactlyOnce => {
                f.released = true;
                true
            }
            _ => false,
        }
    }

    /// Whether `ack` fits the message in flight under `packet_id`: `None` if nothing is in
    /// flight under it, `Some(false)` if it is the wrong acknowledgement for that message:
    /// a QoS 1 message is unacknowledged until its PUBACK [MQTT-4.3.2-3], a QoS 2 message
    /// until its PUBREC [MQTT-4.3.3-3], and the PUBREL sent then until its PUBCOMP
    /// [MQTT-4.3.3-5].
    pub fn fits(&self, packet_id: u16, ack: Ack) -> Option<bool> {
        let f = self.inflight.get(&packet_id)?;
        Some(match ack {
            Ack::PubAck => f.qos == QoS::AtLeastOnce,
            Ack::PubRec => f.qos == QoS::ExactlyOnce,
            Ack::PubComp => f.qos == QoS::ExactlyOnce && f.released,
        })
    }

    /// Forgets a message in flight that cannot be sent again (it no longer encodes for the
    /// client's protocol version, say).
    pub fn abandon(&mut self, packet_id: u16) {
        self.inflight.remove(&packet_id);
    }

    /// The messages in flight, in the order they were sent (to resend on resume).
    pub fn in_flight(&self) -> Vec<&InFlight> {
        let mut all: Vec<&InFlight> = self.inflight.values().collect();
        all.sort_unstable_by_key(|f| f.sent);
        all
    }

    /// The queue, front first.
    pub fn queued(&self) -> impl Iterator<Item = &Queued> {
        self.backlog.iter().flat_map(|b| b.queue.iter())
    }

    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    pub fn queue_len(&self) -> usize {
        self.backlog.as_ref().map_or(0, |b| b.queue.len())
    }

    pub fn queued_bytes(&self) -> usize {
        self.backlog.as_ref().map_or(0, |b| b.queued_bytes)
    }

    /// Frees the backlog once nothing waits in it.
    fn release_backlog(&mut self) {
        if self.backlog.as_ref().is_some_and(|b| {
            b.queue.is_empty() && b.owed.is_empty() && b.scans.is_empty() && b.awaiting.is_empty()
        }) {
            self.backlog = None;
        }
    }

    pub fn dropped(&self) -> u64 {
        u64::from(self.dropped)
    }

    /// What must hold after every change.
    pub fn check_invariants(&self, who: &str) {
        if let Some(backlog) = &self.backlog {
            let queued: usize = backlog.queue.iter().map(|q| q.message.payload.len()).sum();
            assert_eq!(backlog.queued_bytes, queued, "queued_bytes of {who}");
            assert!(backlog
                .queue
                .iter()
                .all(|q| q.target.qos != QoS::AtMostOnce));
            assert!(backlog.owed.len() <= crate::limits::OWED_MAX);
            assert!(backlog.scans.len() <= crate::limits::SCANS_MAX);
            assert!(
                !backlog.queue.is_empty()
                    || !backlog.owed.is_empty()
                    || !backlog.scans.is_empty()
                    || !backlog.awaiting.is_empty(),
                "an empty backlog kept for {who}"
            );
        }
        for (&id, f) in self.inflight.iter() {
            assert_ne!(id, 0, "packet id 0 in flight to {who} [MQTT-2.2.1-3]");
            assert_eq!(id, f.packet_id, "in-flight entry of {who} under another id");
            assert!(f.qos != QoS::AtMostOnce, "QoS 0 in flight to {who}");
            assert!(!f.released || f.qos == QoS::ExactlyOnce);
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::types::SessionId;

    /// A message of ten bytes `n` (shared with the other session tests).
    pub(in crate::session) fn message(n: u8, qos: QoS) -> Arc<Message> {
        Arc::new(Message {
            topic: crate::codec::MqttStr::from_static("t"),
            payload: bytes::Bytes::from(vec![n; 10]),
            qos,
            retain: false,
            properties: Default::default(),
            origin: None,
            expires_at: None,
            order: Default::default(),
            stream: Default::default(),
        })
    }

    pub(in crate::session) fn target(qos: QoS) -> Target {
        Target {
            session: SessionId::new(1),
            qos,
            retain: false,
            identifiers: SmallVec::new(),
            shared: false,
        }
    }

    const LIMITS: Limits = Limits {
        writable: true,
        window: 2,
        queued_max: 3,
        queued_bytes_max: 0,
    };

    #[test]
    fn the_window_then_the_queue_then_drops() {
        let mut out = Outgoing::default();
        let t = target(QoS::AtLeastOnce);
        let mut ids = Vec::new();
        for n in 0..2 {
            let m = message(n, QoS::AtLeastOnce);
            assert_eq!(out.offer(&m, &t, true, LIMITS), Offer::Send);
            ids.push(out.start(&m, &t, None));
        }
        for n in 2..5 {
            let m = message(n, QoS::AtLeastOnce);
            assert_eq!(out.offer(&m, &t, true, LIMITS), Offer::Queued);
        }
        let m = message(5, QoS::AtLeastOnce);
        assert_eq!(
            out.offer(&m, &t, true, LIMITS),
            Offer::Dropped(DropReason::QueueFull)
        );
        assert_eq!(
            (out.queue_len(), out.queued_bytes(), out.dropped()),
            (3, 30, 1)
        );
        out.check_invariants("t");
        // An acknowledgement lets the oldest queued message in.
        assert!(out.puback(ids[0]));
        assert!(!out.puback(ids[0]), "acknowledged once");
        let next = out.next_queued(LIMITS.window).unwrap();
        assert_eq!(next.message.payload[0], 2);
        out.start(&next.message, &next.target, Some(next.packet_id));
        assert!(
            out.next_queued(LIMITS.window).is_none(),
            "the window is full"
        );
        out.check_invariants("t");
    }

    fn on(topic: &'static str, n: u8) -> Arc<Message> {
        let mut m = message(n, QoS::AtMostOnce);
        Arc::get_mut(&mut m).expect("new").topic = crate::codec::MqttStr::from_static(topic);
        m
    }

    /// While the cluster's answers are awaited, the topics delivered are noted, and their
    /// retained messages in the answer (older) are left out; the last answer forgets them.
    #[test]
    fn a_cluster_answer_leaves_out_topics_delivered_since_the_question() {
        let mut out = Outgoing::default();
        let now = std::time::Instant::now();
        out.delivered_live("early");
        assert!(out.may_await_cluster(now));
        out.await_cluster(now, 1);
        out.await_cluster(now, 2);
        out.delivered_live("a");
        out.check_invariants("t");
        let answer = vec![on("a", 9), on("b", 9), on("early", 9)];
        let topics =
            |ms: Vec<Arc<Message>>| ms.iter().map(|m| m.topic.to_string()).collect::<Vec<_>>();
        // `early` came before the question: its retained message is sent.
        assert_eq!(
            topics(out.cluster_answered(1, answer).unwrap()),
            ["b", "early"]
        );
        out.check_invariants("t");
        let second = out.cluster_answered(2, vec![on("a", 9)]).unwrap();
        assert!(
            second.is_empty(),
            "still delivered since the second question"
        );
        assert!(out.backlog.is_none(), "nothing awaited, nothing kept");
        let unasked = out.cluster_answered(2, vec![on("a", 9)]);
        assert!(unasked.is_none(), "not awaited");
        // Bounded, and given up on after a while (an answer lost on the way); its answer,
        // if it comes after all, is not taken for a later question's.
        for question in 3..3 + u64::from(owed::AWAITED_ANSWERS_MAX) {
            assert!(out.may_await_cluster(now));
            out.await_cluster(now, question);
        }
        assert!(!out.may_await_cluster(now), "at most AWAITED_ANSWERS_MAX");
        let later = now + std::time::Duration::from_secs(31);
        assert!(out.may_await_cluster(later), "given up on");
        assert!(out.backlog.is_none(), "nothing kept once given up on");
        out.await_cluster(later, 100);
        let late = out.cluster_answered(3, vec![on("a", 9)]);
        assert!(late.is_none(), "given up on");
        assert!(out.cluster_answered(100, vec![on("a", 9)]).is_some());
    }

    #[test]
    fn an_acknowledgement_fits_its_message_and_its_step() {
        let mut out = Outgoing::default();
        let one = out.start(
            &message(1, QoS::AtLeastOnce),
            &target(QoS::AtLeastOnce),
            None,
        );
        let two = out.start(
            &message(2, QoS::ExactlyOnce),
            &target(QoS::ExactlyOnce),
            None,
        );
        assert_eq!(out.fits(one, Ack::PubAck), Some(true));
        assert_eq!(out.fits(one, Ack::PubRec), Some(false));
        assert_eq!(out.fits(two, Ack::PubAck), Some(false));
        assert_eq!(out.fits(two, Ack::PubComp), Some(false), "before PUBREC");
        assert_eq!(out.fits(two, Ack::PubRec), Some(true));
        assert!(out.pubrec(two));
        assert_eq!(out.fits(two, Ack::PubComp), Some(true));
        assert_eq!(out.fits(99, Ack::PubAck), None);
    }

    #[test]
    fn packet_ids_skip_zero_and_ids_in_use() {
        let mut out = Outgoing::default();
        let t = target(QoS::ExactlyOnce);
        let m = message(0, QoS::ExactlyOnce);
        let first = out.start(&m, &t, None);
        assert_eq!(first, 1);
        // Go round all 65,535 ids once: the one still in flight is never given again.
        for _ in 0..70_000 {
            let id = out.start(&m, &t, None);
            assert_ne!(id, 0);
            assert_ne!(id, first);
            assert!(out.pubrec(id));
            assert!(out.pubcomp(id));
        }
        assert_eq!(out.inflight_len(), 1);
        assert!(!out.puback(first), "a QoS 2 message is not ended by PUBACK");
    }

    #[test]
    fn resume_order_is_send_order() {
        let mut out = Outgoing::default();
        let t = target(QoS::AtLeastOnce);
        let ids: Vec<u16> = (0..5)
            .map(|n| out.start(&message(n, QoS::AtLeastOnce), &t, None))
            .collect();
        out.puback(ids[1]);
        let order: Vec<u8> = out
            .in_flight()
            .iter()
            .map(|f| f.message.payload[0])
            .collect();
        assert_eq!(order, vec![0, 2, 3, 4]);
    }

    #[test]
    fn qos0_is_never_queued() {
        let mut out = Outgoing::default();
        let m = message(0, QoS::AtMostOnce);
        let t = target(QoS::AtMostOnce);
        assert_eq!(out.offer(&m, &t, true, LIMITS), Offer::Send);
        assert_eq!(
            out.offer(&m, &t, false, LIMITS),
            Offer::Dropped(DropReason::Offline)
        );
        assert_eq!(out.queue_len(), 0);
    }

    /// Queued messages are numbered when queued (Mosquitto's order): one that expires in
    /// the queue leaves a gap, and a number taken by then is not reused for it.
    #[test]
    fn queued_messages_keep_the_number_they_were_queued_with() {
        let mut out = Outgoing::default();
        let t = target(QoS::AtLeastOnce);
        let limits = Limits {
            writable: true,
            window: 1,
            queued_max: usize::MAX,
            queued_bytes_max: 0,
        };
        let first = message(1, QoS::AtLeastOnce);
        assert_eq!(out.offer(&first, &t, true, limits), Offer::Send);
        assert_eq!(out.start(&first, &t, None), 1);
        for n in 2..=3 {
            let m = message(n, QoS::AtLeastOnce);
            assert_eq!(out.offer(&m, &t, true, limits), Offer::Queued);
        }
        assert!(out.puback(1));
        let expired = out.next_queued(1).unwrap();
        assert_eq!(expired.packet_id, 2);
        let next = out.next_queued(1).unwrap();
        assert_eq!(
            out.start(&next.message, &next.target, Some(next.packet_id)),
            3
        );
        // A number still in flight is not given twice.
        let m = message(4, QoS::AtLeastOnce);
        assert_ne!(out.start(&m, &t, Some(3)), 3);
    }
}
