//! Messages taken from the mailbox that must wait before they are handled, holding up
//! everything behind them (the mailbox keeps its order):
//! - a message another shard passed before that shard's record of it is on disk
//!   (`transit.rs`, with persistence);
//! - a request for a session held here (`TakeSession`): it waits for one more look at this
//!   shard's sockets, so that what the session's old connection sent before the new
//!   connection arrived (a PUBLISH, then a close) is read first, as a broker with one
//!   thread would. The client sent it before it opened the new connection, so it is in the
//!   old socket by the time the request comes.

use crate::router::{Receipt, ShardMsg};
use crate::shard::io::Backend;
use crate::shard::Shard;

/// A message waiting, and the turn it was taken in.
pub(in crate::shard) type Parked = (ShardMsg, u64);

/// A shard's mailbox, with the message parked at its head.
pub(in crate::shard) struct Mailbox {
    pub(in crate::shard) receiver: crossbeam_channel::Receiver<ShardMsg>,
    pub(in crate::shard) parked: Option<Parked>,
    /// Shutting down: parked messages go at once.
    pub(in crate::shard) shutting_down: bool,
}

impl Mailbox {
    pub(in crate::shard) fn new(receiver: crossbeam_channel::Receiver<ShardMsg>) -> Mailbox {
        Mailbox {
            receiver,
            parked: None,
            shutting_down: false,
        }
    }
}

impl<B: Backend> Shard<B> {
    /// The next message to handle: the parked one once it may go, else the mailbox's next;
    /// `None` when there is none, or the parked one still waits.
    pub(in crate::shard) fn next_from_mailbox(&mut self) -> Option<ShardMsg> {
        let (msg, turn) = match self.crossing.mailbox.parked.take() {
            Some(parked) => parked,
            None => (
                self.crossing.mailbox.receiver.try_recv().ok()?,
                self.clock.turns,
            ),
        };
        if self.may_take(&msg, turn) {
            return Some(msg);
        }
        self.crossing.mailbox.parked = Some((msg, turn));
        None
    }

    /// Whether `msg`, taken in `turn`, may be handled now.
    fn may_take(&self, msg: &ShardMsg, turn: u64) -> bool {
        if self.crossing.mailbox.shutting_down {
            return true;
        }
        match msg {
            ShardMsg::Deliver {
                receipt: Some(Receipt { from, number }),
                ..
            }
            | ShardMsg::Handoff {
                receipt: Some(Receipt { from, number }),
                ..
            } => self.forward_committed(usize::from(*from), *number),
            ShardMsg::TakeSession { .. } => self.clock.turns > turn,
            _ => true,
        }
    }

    /// Whether the mailbox has something to handle now (a parked message waiting for its
    /// sender's disk is woken by that shard; one waiting for a look at the sockets may go
    /// next turn).
    pub(in crate::shard) fn mailbox_ready(&self) -> bool {
        match &self.crossing.mailbox.parked {
            Some((ShardMsg::TakeSession { .. }, _)) => true,
            Some((msg, turn)) => self.may_take(msg, *turn),
            None => !self.crossing.mailbox.receiver.is_empty(),
        }
    }

    pub(in crate::shard) fn has_parked(&self) -> bool {
        self.crossing.mailbox.parked.is_some()
    }

    /// Shutting down: messages are handled without waiting.
    pub(in crate::shard) fn stop_parking(&mut self) {
        self.crossing.mailbox.shutting_down = true;
    }
}
