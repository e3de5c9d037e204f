//! Everything that crosses from one shard to another, in one place, in the order a message
//! takes:
//! 1. the sending shard routes a message to sessions another shard holds
//!    (`route.rs` `pass_to_shard`); with persistence it numbers and journals it
//!    (`transit.rs`);
//! 2. it puts it in that shard's mailbox (`router::Mailboxes`, a bounded lock-free queue
//!    and a waker rung only when the shard sleeps), or, if the mailbox is full or the
//!    journal has not committed the turn, in its `outbox`, in order per target shard;
//! 3. the receiving shard takes it from its mailbox (`drain_mailbox`), parking it at the
//!    head while it may not be handled yet (`mailbox.rs`): the sender's record of it is
//!    not on disk, or it asks for a session whose old connection's bytes are not read;
//! 4. it delivers it here (`deliver.rs` `deliver_here`) and, with persistence, journals the
//!    highest number taken from the sender, so that recovery hands on exactly what no
//!    journal took (`transit.rs`).
//!
//! Sessions move between shards along the same path (`handover/`): a session handed on
//! is numbered and journaled as a message is.

mod mailbox;
mod transit;

pub(super) use mailbox::Mailbox;

use crate::router::{Outbox, ShardMsg};
use crate::shard::conn;
use crate::shard::io::{Backend, ConnId};
use crate::shard::Shard;

/// What a shard passes to others and takes from them.
pub(super) struct Crossing {
    /// Messages for other shards that wait: for room in a full mailbox, or (with
    /// persistence) for the turn's journal commit.
    pub(super) outbox: Outbox,
    /// Publishers not read until the outbox's overflow is through.
    pub(super) paused: Vec<ConnId>,
    /// What other shards send here, and the message parked at its head.
    pub(super) mailbox: Mailbox,
    /// With persistence over several shards: the numbers of what this shard passed to and
    /// took from each other shard, and of what it published (`transit.rs`).
    pub(super) transit: Option<Box<transit::Transit>>,
}

impl Crossing {
    pub(super) fn new(shards: usize, mailbox: crossbeam_channel::Receiver<ShardMsg>) -> Crossing {
        Crossing {
            outbox: Outbox::new(shards, crate::limits::OVERFLOW_MAX),
            paused: Vec::new(),
            mailbox: Mailbox::new(mailbox),
            transit: None,
        }
    }
}

impl<B: Backend> Shard<B> {
    pub(super) fn drain_mailbox(&mut self) {
        for _ in 0..crate::limits::MAILBOX_PER_TURN {
            let Some(msg) = self.next_from_mailbox() else {
                return;
            };
            match msg {
                ShardMsg::Deliver {
                    message,
                    targets,
                    forwarded,
                    receipt,
                } => {
                    self.deliver_here(&message, &targets, forwarded);
                    #[cfg(debug_assertions)]
                    if let Some((_, took)) = &mut self.faults.commit_delay {
                        *took = true;
                    }
                    if let Some(receipt) = receipt {
                        self.took_from(receipt);
                    }
                }
                ShardMsg::TakeSession {
                    client_id,
                    to,
                    clean_start,
                    claim,
                } => self.on_take_session(client_id, to, clean_start, claim),
                ShardMsg::Handoff {
                    client_id,
                    session,
                    origin,
                    claim,
                    superseded_by,
                    receipt,
                } => {
                    if let (Some(receipt), Some(_)) = (receipt, &session) {
                        self.took_from(receipt);
                    }
                    self.on_handoff(client_id, session, origin, claim, superseded_by)
                }
                ShardMsg::Flush { session, via } => self.on_flush(session, via),
                ShardMsg::Flushed { session } => self.on_flushed(session),
                ShardMsg::FromCluster { message, group } => {
                    self.route_from_cluster(*message, group)
                }
                ShardMsg::RetainedFromCluster(found) => self.owe_from_cluster(*found),
                ShardMsg::ClusterClaimed {
                    conn,
                    token,
                    client_id,
                    claimed,
                } => self.on_cluster_claimed(conn, token, client_id, claimed),
                ShardMsg::ClusterTake(take) => self.on_cluster_take(take),
                ShardMsg::ClusterAdopt(adopted) => self.on_cluster_adopt(adopted),
                ShardMsg::ClusterTakenForGone => self.on_taken_for_gone(),
                ShardMsg::ClusterLost { client_id, claim } => {
                    self.on_cluster_lost(client_id, claim)
                }
                ShardMsg::Replayed { message, sessions } => self.on_replayed(*message, &sessions),
                ShardMsg::ReplayDone {
                    replay,
                    ended,
                    from_router,
                } => self.on_replay_done(replay, ended, from_router),
                ShardMsg::ReplayGate(_) => {}
                ShardMsg::ReplayMoved { session, held } => self.on_replay_moved(session, *held),
            }
        }
    }

    /// Sends what waits for full mailboxes, oldest first; resumes paused publishers once
    /// nothing waits.
    pub(super) fn retry_overflow(&mut self) {
        if !self.crossing.outbox.retry(&self.shared.mailboxes) {
            return;
        }
        for conn in std::mem::take(&mut self.crossing.paused) {
            self.release_reading(conn, conn::Hold::OUTBOX);
        }
    }
}
