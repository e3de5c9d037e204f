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
    },
    /// A client connected on shard `to` with an id whose session this shard holds: close
    /// the old connection and hand the session over.
    TakeSession {
        client_id: Arc<str>,
        to: usize,
        conn: ConnId,
        clean_start: bool,
    },
    /// The answer to `TakeSession`: the session, if there was one to hand over.
    Handoff {
        client_id: Arc<str>,
        conn: ConnId,
        session: Option<SessionBox>,
    },
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
