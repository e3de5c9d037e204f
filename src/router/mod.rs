//! What crosses shards: messages to deliver, session handoffs, and the mailboxes that carry
//! them. A mailbox is a bounded lock-free queue (`crossbeam-channel`) plus a waker, rung only
//! when the receiving shard sleeps.

use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::shard::io::Waker;
pub use crate::types::{ConnId, Message, SessionId, Target};

/// A session moving between shards (takeover), with everything that lives in it.
pub type SessionBox = Box<crate::session::Session>;

pub enum ShardMsg {
    /// Deliver `message` to these sessions, all owned by the receiving shard.
    Deliver {
        message: Arc<Message>,
        targets: Vec<Target>,
        /// Passed on by a shard the sessions moved away from (see `shard/handover/`).
        forwarded: bool,
        /// With persistence and more than one shard (QoS 1 and 2): the message's number
        /// (`shard/crossing/transit.rs`).
        receipt: Option<Receipt>,
    },
    /// A client connected on shard `to` with an id whose session this shard holds: close
    /// the old connection and hand the session over.
    TakeSession {
        client_id: Arc<str>,
        to: usize,
        clean_start: bool,
        /// The asking connection's claim number: a request older than a claim the holder
        /// knows of has lost (`shard/handover/`).
        claim: u64,
    },
    /// The answer to `TakeSession`: the session, if there was one to hand over, and the
    /// shard it was taken from.
    Handoff {
        client_id: Arc<str>,
        session: Option<SessionBox>,
        origin: usize,
        /// The claim this answers.
        claim: u64,
        /// The request lost to this later claim: its connection is closed if that claim is
        /// later than the one waiting now.
        superseded_by: Option<u64>,
        /// With persistence: the number the session was passed under, as for a message.
        receipt: Option<Receipt>,
    },
    /// The shard settling `session` asks for this shard's marker, sent through `via` (the
    /// shard the session was taken from).
    Flush { session: SessionId, via: usize },
    /// A shard's marker: everything it routed to `session` the old way is ahead of it.
    Flushed { session: SessionId },
    /// A message published on another node of the cluster: routed to this node's
    /// subscribers, never sent on to NATS (`cluster/`); with `group`, to that share group
    /// alone, otherwise to all but share groups.
    FromCluster {
        message: Box<Message>,
        group: Option<Arc<str>>,
    },
    /// The retained messages the cluster keeps for a new subscription of a session this
    /// shard held when it asked (`cluster/retained.rs`).
    RetainedFromCluster(Box<crate::cluster::retained::Found>),
    /// The cluster's answer to a connection's claim on its client id
    /// (`cluster/sessions.rs`): the connection, if it is still the one that asked
    /// (`token`), goes on.
    ClusterClaimed {
        conn: ConnId,
        token: u64,
        client_id: Arc<str>,
        claimed: crate::cluster::sessions::Claimed,
    },
    /// Another node asks for a session of this node's (`cluster/sessions.rs`).
    ClusterTake(Box<crate::cluster::sessions::TakeAsk>),
    /// A session this node took over from a node that is gone (`cluster/sessions/nodes.rs`).
    ClusterAdopt(Box<crate::cluster::sessions::nodes::Adopted>),
    /// The other nodes took this node for gone: its sessions are theirs now.
    ClusterTakenForGone,
    /// Another node owns the key of `client_id` now: the session here, claimed at `claim`,
    /// goes (`cluster/sessions/records.rs`).
    ClusterLost { client_id: Arc<str>, claim: u64 },
    /// A message of the cluster's stream read again for sessions taken over from a node
    /// that is gone (`cluster/replay.rs`): routed to those of `sessions` it matches alone.
    Replayed {
        message: Box<Message>,
        sessions: Arc<hashbrown::HashSet<SessionId>>,
    },
    /// A replay is done: what waited for its sessions goes on, but what it delivered
    /// already (`Ended`). `from_router`: to the shard that
    /// routed it, which passes it on to the others behind what it routed to them.
    ReplayDone {
        replay: u64,
        ended: Arc<crate::cluster::replay::Ended>,
        from_router: bool,
    },
    /// Session `session`, being replayed for, moves here from the sending shard: what
    /// waits for it (sent before the session itself).
    ReplayMoved {
        session: SessionId,
        held: Box<crate::cluster::replay::Held>,
    },
    /// Read and dropped: the replay waiting for it knows this shard is past what it was
    /// doing.
    ReplayGate(crate::cluster::replay::Gate),
}

/// With persistence and more than one shard: a message's (or a session's) number among
/// those the sending shard passed to the receiving one, journaled by the sender. The
/// receiver takes it once the sender's disk has it, and journals the highest number taken
/// (`shard/crossing/transit.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub from: u16,
    pub number: u64,
}

/// Every shard's mailbox, for sending. Cloned into each shard.
pub struct Mailboxes {
    senders: Vec<Sender<ShardMsg>>,
    wakers: Vec<Arc<dyn Waker>>,
    sleeping: Arc<[AtomicBool]>,
}

impl Mailboxes {
    /// Makes `shards` mailboxes of `capacity` messages each; returns the senders and one
    /// receiver per shard.
    pub fn new(
        capacity: usize,
        wakers: Vec<Arc<dyn Waker>>,
    ) -> (Arc<Mailboxes>, Vec<Receiver<ShardMsg>>) {
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..wakers.len())
            .map(|_| crossbeam_channel::bounded(capacity))
            .unzip();
        let sleeping = (0..wakers.len()).map(|_| AtomicBool::new(false)).collect();
        (
            Arc::new(Mailboxes {
                senders,
                wakers,
                sleeping,
            }),
            receivers,
        )
    }

    pub fn shards(&self) -> usize {
        self.senders.len()
    }

    /// Messages waiting in `shard`'s mailbox.
    pub fn depth(&self, shard: usize) -> usize {
        self.senders[shard].len()
    }

    /// Queues `msg` for `shard`, waking it if it sleeps. A full mailbox gives the message
    /// back: the caller decides (drop and count QoS 0, hold QoS 1/2).
    pub fn send(&self, shard: usize, msg: ShardMsg) -> Result<(), ShardMsg> {
        match self.senders[shard].try_send(msg) {
            Ok(()) => {
                if self.sleeping[shard].swap(false, Ordering::SeqCst) {
                    self.wakers[shard].wake();
                }
                Ok(())
            }
            Err(TrySendError::Full(msg) | TrySendError::Disconnected(msg)) => Err(msg),
        }
    }

    /// Wakes `shard` if it sleeps (or is about to): it has work that is not in its mailbox.
    pub fn wake_if_sleeping(&self, shard: usize) {
        if self.sleeping[shard].swap(false, Ordering::SeqCst) {
            self.wakers[shard].wake();
        }
    }

    /// Wakes a shard whatever it is doing (shutdown).
    pub fn wake(&self, shard: usize) {
        self.wakers[shard].wake();
    }

    /// Marks `shard` as about to sleep. It must check its mailbox after this and before
    /// sleeping, so that a message sent in between is not missed.
    pub fn going_to_sleep(&self, shard: usize) {
        self.sleeping[shard].store(true, Ordering::SeqCst);
    }

    pub fn awake(&self, shard: usize) {
        self.sleeping[shard].store(false, Ordering::Relaxed);
    }
}

/// Messages to other shards that found their mailbox full, held in order per target shard.
///
/// A message to a shard that already has messages waiting here waits behind them, even if
/// its mailbox has room by now: messages from one publisher must reach a subscriber in the
/// order they were published [MQTT-4.6.0-6], and a session handed to a shard must arrive
/// before the deliveries forwarded to it after the handoff.
///
/// A session handed to another shard also waits behind what waits here for *every* shard
/// (`send_after_all`): its client publishes from its new shard once it arrives, and those
/// messages must not pass the ones it published here that still wait for a full mailbox.
///
/// With persistence and several shards (`defer`), every message waits here until the end
/// of the turn that made it, once that turn is on disk (`retry` then): another shard never
/// sees what the journal may not keep, and a shard whose disk fails keeps what it would
/// pass on (up to `len_max`) instead of holding up the others' mailboxes.
pub struct Outbox {
    waiting: Vec<std::collections::VecDeque<Held>>,
    /// Messages wait for `retry` even when their mailbox has room.
    defer: bool,
    /// Per shard: `retry` found its mailbox full; what is given for it meanwhile is held
    /// (its publisher paused) or dropped as without `defer`.
    full: Vec<bool>,
    /// Per shard: nothing is passed there for now (`block`); held as for a full mailbox.
    blocked: Vec<bool>,
    /// Messages waiting, over all shards (at most `len_max`).
    len: usize,
    len_max: usize,
    /// Numbers the messages held, in the order they were given.
    next_seq: u64,
}

struct Held {
    seq: u64,
    /// Goes only once nothing older waits for any shard.
    after_all: bool,
    msg: ShardMsg,
}

/// What became of a message given to `Outbox::send`.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// In the target's mailbox.
    Delivered,
    /// Waiting here for room in the mailbox, behind older messages to the same shard.
    Held,
    /// Not sent: the outbox is full (the caller counts it).
    Dropped,
}

impl Outbox {
    pub fn new(shards: usize, len_max: usize) -> Outbox {
        Outbox {
            waiting: (0..shards).map(|_| Default::default()).collect(),
            defer: false,
            full: vec![false; shards],
            blocked: vec![false; shards],
            len: 0,
            len_max,
            next_seq: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether messages to `shard` are waiting (a new one would go behind them).
    pub fn is_held(&self, shard: usize) -> bool {
        !self.waiting[shard].is_empty()
    }

    /// From now on messages wait for `retry` (see above).
    pub fn defer(&mut self) {
        self.defer = true;
    }

    pub fn defers(&self) -> bool {
        self.defer
    }

    /// Whether something waits that `retry` may pass on (not only for blocked shards).
    pub fn has_sendable(&self) -> bool {
        // Asked every loop turn: nothing waiting is the common answer, found at once.
        self.len > 0
            && (self.waiting.iter().zip(&self.blocked))
                .any(|(queue, &blocked)| !blocked && !queue.is_empty())
    }

    /// Passes nothing to `shard` while `blocked`: what is given for it waits (as for a
    /// full mailbox). True if that changed.
    pub fn block(&mut self, shard: usize, blocked: bool) -> bool {
        std::mem::replace(&mut self.blocked[shard], blocked) != blocked
    }

    /// A message that may be dropped (QoS 0) to `shard`: sent or deferred if that needs
    /// no waiting for room; false if it is dropped.
    pub fn send_or_drop(&mut self, mailboxes: &Mailboxes, shard: usize, msg: ShardMsg) -> bool {
        if !self.defer {
            return !self.is_held(shard)
                && !self.blocked[shard]
                && mailboxes.send(shard, msg).is_ok();
        }
        if self.full[shard] || self.blocked[shard] || self.len >= self.len_max {
            return false;
        }
        self.hold(shard, msg, false);
        true
    }

    /// Drops everything waiting (a shard whose disk failed stops: none of it was
    /// acknowledged, and other shards must not take it). How many were dropped.
    pub fn clear(&mut self) -> usize {
        let dropped = self.len;
        for queue in &mut self.waiting {
            queue.clear();
        }
        self.len = 0;
        dropped
    }

    /// Sends `msg` to `shard` now if nothing to it waits and its mailbox has room; holds it
    /// otherwise. `must_keep` messages (a session, a request for one) are held even past
    /// `len_max`: dropping them would lose a session.
    pub fn send(
        &mut self,
        mailboxes: &Mailboxes,
        shard: usize,
        msg: ShardMsg,
        must_keep: bool,
    ) -> Sent {
        let blocked = self.blocked[shard];
        if self.defer && !self.full[shard] && !blocked {
            if self.len >= self.len_max && !must_keep {
                return Sent::Dropped;
            }
            // Waits for the end of the turn only: not held up as for a full mailbox.
            self.hold(shard, msg, false);
            return Sent::Delivered;
        }
        let msg = if self.waiting[shard].is_empty() && !blocked {
            match mailboxes.send(shard, msg) {
                Ok(()) => return Sent::Delivered,
                Err(msg) => msg,
            }
        } else {
            msg
        };
        if self.len >= self.len_max && !must_keep {
            return Sent::Dropped;
        }
        self.hold(shard, msg, false);
        Sent::Held
    }

    /// Sends `msg` to `shard` once everything given before it, to any shard, has left
    /// (a session handed over: see above). Never dropped.
    pub fn send_after_all(&mut self, mailboxes: &Mailboxes, shard: usize, msg: ShardMsg) -> Sent {
        if self.is_empty() {
            return self.send(mailboxes, shard, msg, true);
        }
        self.hold(shard, msg, true);
        Sent::Held
    }

    fn hold(&mut self, shard: usize, msg: ShardMsg, after_all: bool) {
        self.waiting[shard].push_back(Held {
            seq: self.next_seq,
            after_all,
            msg,
        });
        self.next_seq += 1;
        self.len += 1;
    }

    /// The oldest message waiting for any shard but `shard`.
    fn oldest_elsewhere(&self, shard: usize) -> Option<u64> {
        (self.waiting.iter().enumerate())
            .filter(|(other, _)| *other != shard)
            .filter_map(|(_, queue)| queue.front().map(|held| held.seq))
            .min()
    }

    /// Passes on what the mailboxes take now, oldest first per shard. True when nothing
    /// waits any more.
    pub fn retry(&mut self, mailboxes: &Mailboxes) -> bool {
        // A message waiting on other shards' queues may be freed by a later shard's queue
        // draining: go round again while anything moves (at most once per message).
        let mut moved = true;
        while moved && self.len > 0 {
            moved = false;
            for shard in 0..self.waiting.len() {
                if self.blocked[shard] {
                    continue;
                }
                while let Some(front) = self.waiting[shard].front() {
                    if front.after_all
                        && self.oldest_elsewhere(shard).is_some_and(|o| o < front.seq)
                    {
                        break;
                    }
                    let held = self.waiting[shard].pop_front().expect("front exists");
                    if let Err(msg) = mailboxes.send(shard, held.msg) {
                        self.waiting[shard].push_front(Held { msg, ..held });
                        break;
                    }
                    self.len -= 1;
                    moved = true;
                }
            }
        }
        for (full, queue) in self.full.iter_mut().zip(&self.waiting) {
            *full = !queue.is_empty();
        }
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoWaker;
    impl Waker for NoWaker {
        fn wake(&self) {}
    }

    fn deliver(n: u8) -> ShardMsg {
        ShardMsg::Deliver {
            message: Arc::new(Message {
                topic: crate::codec::MqttStr::from_static("t"),
                payload: bytes::Bytes::from(vec![n]),
                qos: crate::codec::QoS::AtLeastOnce,
                retain: false,
                properties: Default::default(),
                origin: None,
                expires_at: None,
                order: Default::default(),
                stream: Default::default(),
            }),
            targets: Vec::new(),
            forwarded: false,
            receipt: None,
        }
    }

    fn payload(msg: ShardMsg) -> u8 {
        match msg {
            ShardMsg::Deliver { message, .. } => message.payload[0],
            _ => panic!("not a delivery"),
        }
    }

    fn handoff() -> ShardMsg {
        ShardMsg::Handoff {
            client_id: "c".into(),
            session: None,
            origin: 0,
            claim: 1,
            superseded_by: None,
            receipt: None,
        }
    }

    /// A session handed to shard 2 waits until what its client published here for shard 1
    /// (full) has left: from shard 2 it would otherwise publish past it [MQTT-4.6.0-6].
    #[test]
    fn a_handoff_waits_behind_everything_held_for_any_shard() {
        let wakers: Vec<Arc<dyn Waker>> = (0..3).map(|_| Arc::new(NoWaker) as _).collect();
        let (mailboxes, receivers) = Mailboxes::new(1, wakers);
        let mut outbox = Outbox::new(3, 16);
        assert_eq!(
            outbox.send(&mailboxes, 1, deliver(1), false),
            Sent::Delivered
        );
        assert_eq!(outbox.send(&mailboxes, 1, deliver(2), false), Sent::Held);
        // Shard 2's mailbox has room, but the handoff waits for 2.
        assert_eq!(outbox.send_after_all(&mailboxes, 2, handoff()), Sent::Held);
        assert!(!outbox.retry(&mailboxes));
        assert!(receivers[2].try_recv().is_err());
        // Once 2 is in shard 1's mailbox, the handoff goes.
        assert_eq!(payload(receivers[1].try_recv().unwrap()), 1);
        assert!(outbox.retry(&mailboxes));
        assert_eq!(payload(receivers[1].try_recv().unwrap()), 2);
        assert!(matches!(
            receivers[2].try_recv(),
            Ok(ShardMsg::Handoff { .. })
        ));
    }

    #[test]
    fn a_message_waits_behind_older_ones_to_the_same_shard() {
        let wakers: Vec<Arc<dyn Waker>> = vec![Arc::new(NoWaker), Arc::new(NoWaker)];
        let (mailboxes, receivers) = Mailboxes::new(1, wakers);
        let mut outbox = Outbox::new(2, 16);
        assert_eq!(
            outbox.send(&mailboxes, 1, deliver(1), false),
            Sent::Delivered
        );
        // The mailbox (of one) is full: 2 waits.
        assert_eq!(outbox.send(&mailboxes, 1, deliver(2), false), Sent::Held);
        // Shard 1 takes 1; its mailbox has room again, but 3 must not pass 2.
        assert_eq!(payload(receivers[1].try_recv().unwrap()), 1);
        assert_eq!(outbox.send(&mailboxes, 1, deliver(3), false), Sent::Held);
        assert!(!outbox.retry(&mailboxes));
        assert_eq!(payload(receivers[1].try_recv().unwrap()), 2);
        assert!(outbox.retry(&mailboxes));
        assert_eq!(payload(receivers[1].try_recv().unwrap()), 3);
        assert!(outbox.is_empty());
    }

    /// With persistence, nothing leaves before `retry` (the turn on disk), in the order
    /// given; a mailbox found full then holds what follows as ever; `clear` drops all.
    #[test]
    fn a_deferring_outbox_passes_on_only_at_retry() {
        let wakers: Vec<Arc<dyn Waker>> = vec![Arc::new(NoWaker), Arc::new(NoWaker)];
        let (mailboxes, receivers) = Mailboxes::new(2, wakers);
        let mut outbox = Outbox::new(2, 16);
        outbox.defer();
        assert_eq!(
            outbox.send(&mailboxes, 1, deliver(1), false),
            Sent::Delivered
        );
        assert!(outbox.send_or_drop(&mailboxes, 1, deliver(2)));
        assert_eq!(
            outbox.send(&mailboxes, 1, deliver(3), false),
            Sent::Delivered
        );
        assert!(receivers[1].try_recv().is_err(), "nothing before retry");
        assert!(!outbox.retry(&mailboxes)); // Room for two.
        assert_eq!(payload(receivers[1].try_recv().unwrap()), 1);
        assert_eq!(payload(receivers[1].try_recv().unwrap()), 2);
        // Found full: a QoS 0 message is dropped, others wait as behind a full mailbox.
        assert!(!outbox.send_or_drop(&mailboxes, 1, deliver(4)));
        assert_eq!(outbox.send(&mailboxes, 1, deliver(5), false), Sent::Held);
        assert!(outbox.retry(&mailboxes));
        assert_eq!(payload(receivers[1].try_recv().unwrap()), 3);
        assert_eq!(payload(receivers[1].try_recv().unwrap()), 5);
        // A shard whose disk fails drops what waits.
        outbox.send(&mailboxes, 1, deliver(6), false);
        assert_eq!(outbox.clear(), 1);
        assert!(outbox.retry(&mailboxes));
        assert!(receivers[1].try_recv().is_err());
    }

    /// A shard that shows nothing on its disk is passed nothing while blocked: what is for
    /// it waits (its publishers paused), QoS 0 is dropped, the others go on.
    #[test]
    fn a_blocked_shard_is_passed_nothing_until_unblocked() {
        let wakers: Vec<Arc<dyn Waker>> = (0..3).map(|_| Arc::new(NoWaker) as _).collect();
        let (mailboxes, receivers) = Mailboxes::new(4, wakers);
        let mut outbox = Outbox::new(3, 16);
        outbox.defer();
        assert!(outbox.block(1, true));
        assert_eq!(outbox.send(&mailboxes, 1, deliver(1), false), Sent::Held);
        assert!(!outbox.send_or_drop(&mailboxes, 1, deliver(2)));
        assert_eq!(
            outbox.send(&mailboxes, 2, deliver(3), false),
            Sent::Delivered
        );
        assert!(!outbox.retry(&mailboxes));
        assert!(!outbox.has_sendable(), "only what is blocked waits");
        assert!(receivers[1].try_recv().is_err());
        assert_eq!(payload(receivers[2].try_recv().unwrap()), 3);
        assert!(outbox.block(1, false));
        assert!(outbox.retry(&mailboxes));
        assert_eq!(payload(receivers[1].try_recv().unwrap()), 1);
        assert!(
            receivers[1].try_recv().is_err(),
            "the QoS 0 one was dropped"
        );
    }

    #[test]
    fn a_full_outbox_drops_what_may_be_dropped_and_keeps_sessions() {
        let wakers: Vec<Arc<dyn Waker>> = vec![Arc::new(NoWaker), Arc::new(NoWaker)];
        let (mailboxes, _receivers) = Mailboxes::new(1, wakers);
        let mut outbox = Outbox::new(2, 1);
        assert_eq!(
            outbox.send(&mailboxes, 1, deliver(1), false),
            Sent::Delivered
        );
        assert_eq!(outbox.send(&mailboxes, 1, deliver(2), false), Sent::Held);
        assert_eq!(outbox.send(&mailboxes, 1, deliver(3), false), Sent::Dropped);
        assert_eq!(outbox.send(&mailboxes, 1, deliver(4), true), Sent::Held);
        assert_eq!(outbox.len(), 2);
    }
}
