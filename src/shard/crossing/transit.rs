//! Messages passed between shards, with persistence and more than one shard: each one
//! reaches its sessions exactly once across a crash, and a publisher's acknowledgement
//! waits only for its own shard's disk.
//!
//! The sending shard numbers what it passes to each other shard and journals it
//! (`Forwarded`) in the same turn as the publisher's acknowledgement and, for QoS 2, the
//! packet id awaiting PUBREL; after its commit it publishes the highest number on its disk
//! (`Shared::forwards_committed`), and only then passes the turn's messages on (its outbox
//! defers them to that moment: a shard whose disk fails passes nothing on until its
//! journal is durable again, and holds up no other shard). The receiving shard takes a
//! message only once its number is published so (checked all the same: `mailbox.rs`),
//! and journals the highest number taken (`Received`) with the deliveries. So whatever a
//! receiving shard's journal holds, the sender's journal holds its record too; what the
//! sender journaled and the receiver did not is handed on by recovery. Each shard also
//! publishes what it has taken on its disk (`Shared::durable_from`), so that the sender
//! can forget what no crash can lose any more.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::codec::QoS;
use crate::limits::{Limit, UNSETTLED_MAX};
use crate::router::Receipt;
use crate::shard::io::Backend;
use crate::shard::Shard;
use crate::types::{Message, PublishOrder, Target};

pub(in crate::shard) struct Transit {
    /// Per target shard: the number of the last message passed there, and the last one
    /// published as on disk.
    sent: Vec<u64>,
    published_sent: Vec<u64>,
    /// Per sending shard: the number of the last message taken from it published as on
    /// disk (the last taken is the journal's `received_from`).
    published_taken: Vec<u64>,
    /// The number of the last message published here (`PublishOrder`).
    published: u64,
}

impl<B: Backend> Shard<B> {
    /// With a journal and more than one shard: messages between shards are numbered.
    pub(in crate::shard) fn start_transit(&mut self) {
        let shards = self.shared.mailboxes.shards();
        if shards > 1 {
            self.crossing.outbox.defer();
            self.crossing.transit = Some(Box::new(Transit {
                sent: vec![0; shards],
                published_sent: vec![0; shards],
                published_taken: vec![0; shards],
                published: 0,
            }));
        }
    }

    /// The place of a message published here now among those this shard published: with
    /// messages passed between shards, recovery keeps each publisher's order by it.
    pub(in crate::shard) fn publish_order(&mut self) -> PublishOrder {
        let Some(transit) = self.crossing.transit.as_deref_mut() else {
            return PublishOrder::default();
        };
        transit.published += 1;
        PublishOrder {
            shard: self.id as u16,
            number: transit.published,
        }
    }

    /// A connection closes, or a will goes: every message published here so far is
    /// numbered below what a shard that the client connects to next numbers on from
    /// (`catch_up_published`).
    /// Raised before this shard answers for the client or lets its claim go, which is how
    /// the next shard learns of the close.
    pub(in crate::shard) fn mark_published(&self) {
        if let Some(transit) = self.crossing.transit.as_deref() {
            (self.shared.published_mark).fetch_max(transit.published, Ordering::Relaxed);
        }
    }

    /// A connection is accepted here: its messages are numbered after those of every
    /// connection closed before (on any shard), its client's earlier ones among them.
    pub(in crate::shard) fn catch_up_published(&mut self) {
        if let Some(transit) = self.crossing.transit.as_deref_mut() {
            let mark = self.shared.published_mark.load(Ordering::Relaxed);
            transit.published = transit.published.max(mark);
        }
    }

    /// The number of a message of `qos` passed to `shard` now (QoS 1 and 2 only).
    pub(in crate::shard) fn transit_number(&mut self, shard: usize, qos: QoS) -> Option<Receipt> {
        let transit = (self.crossing.transit.as_deref_mut()).filter(|_| qos != QoS::AtMostOnce)?;
        transit.sent[shard] += 1;
        Some(Receipt {
            from: self.id as u16,
            number: transit.sent[shard],
        })
    }

    /// Journals `message` passed to `shard` as `number` for `targets` there.
    pub(in crate::shard) fn journal_forward(
        &mut self,
        shard: usize,
        number: u64,
        message: &Arc<Message>,
        targets: &[Target],
    ) {
        if let Some((journal, clock)) = self.journal_up_to_date() {
            journal.forwarded(shard, number, message, targets, &clock);
        }
    }

    /// Whether a message passed by shard `from` as `number` may be taken now: once that
    /// shard's record of it is on disk.
    pub(in crate::shard) fn forward_committed(&self, from: usize, number: u64) -> bool {
        if self.crossing.transit.is_none() {
            return true;
        }
        (self.shared.forwards_committed.of(from, self.id)).load(Ordering::Acquire) >= number
    }

    /// A message numbered `number` by shard `from` was taken here: journaled with the turn.
    pub(in crate::shard) fn took_from(&mut self, receipt: Receipt) {
        if let Some(journal) = self.disk.journal.as_deref_mut() {
            journal.received(usize::from(receipt.from), receipt.number);
        }
    }

    /// After this turn's journal commit: what was passed to other shards is on disk (they
    /// may take it: they are told, and woken); what was taken from them is on disk (they
    /// may forget it); and what this shard passed that the others have on disk is
    /// forgotten.
    pub(in crate::shard) fn publish_transit(&mut self) {
        let (Some(transit), Some(journal)) = (
            self.crossing.transit.as_deref_mut(),
            self.disk.journal.as_deref_mut(),
        ) else {
            return;
        };
        let shards = transit.sent.len();
        let mut blocked = Vec::new();
        for other in 0..shards {
            if transit.sent[other] > transit.published_sent[other] {
                transit.published_sent[other] = transit.sent[other];
                // The messages follow (the outbox defers them to now): their sending wakes
                // the other shard once they are there, not before.
                (self.shared.forwards_committed.of(self.id, other))
                    .store(transit.sent[other], Ordering::Release);
            }
            let taken = journal.received_from(other);
            if taken > transit.published_taken[other] {
                transit.published_taken[other] = taken;
                (self.shared.durable_from.of(self.id, other)).store(taken, Ordering::Release);
            }
            // (What this shard held for its own settling sessions settles too.)
            let settled = (self.shared.durable_from.of(other, self.id)).load(Ordering::Acquire);
            journal.settled(other, settled);
            if other != self.id {
                // A shard that shows nothing on its disk (its disk failing) is passed
                // nothing more past the bound: its messages wait here.
                let unsettled = journal.unsettled_to(other);
                if self.crossing.outbox.block(other, unsettled > UNSETTLED_MAX) && unsettled > 0 {
                    blocked.push((other, unsettled));
                }
            }
        }
        for (other, unsettled) in blocked {
            if unsettled > UNSETTLED_MAX {
                self.limit_reached(Limit::UnsettledMessages, || {
                    format!(
                        "shard {other} has not shown {unsettled} messages passed to it on its disk; what is for its sessions waits here until it does."
                    )
                });
            }
        }
    }
}
