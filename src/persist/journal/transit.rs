//! What a shard passes to other shards, in its journal (`Forwarded`), and what it took
//! from them (`Received`): see `shard/crossing/transit.rs` and `persist/recover/transit.rs`.

use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use super::{Journal, To};
use crate::codec::QoS;
use crate::persist::format::{Delivery, Record};
use crate::persist::WallClock;
use crate::session::Session;
use crate::types::{Message, Target};

impl Journal {
    /// `message` passed to shard `to` as its `number`, for `targets` there (those that get
    /// it at QoS 1 or 2: the others are not owed it after a crash).
    pub fn forwarded(
        &mut self,
        to: usize,
        number: u64,
        message: &Arc<Message>,
        targets: &[Target],
        clock: &WallClock,
    ) {
        let targets: Vec<(u64, Delivery)> = (targets.iter())
            .filter(|t| t.qos != QoS::AtMostOnce)
            .map(|t| (t.session.get(), super::Delivery::of(t)))
            .collect();
        if targets.is_empty() {
            return;
        }
        let files = self.everywhere();
        self.write_forward(to, number, message, &targets, clock, files);
        if self.unsettled.len() <= to {
            self.unsettled.resize_with(to + 1, VecDeque::new);
        }
        self.unsettled[to].push_back((number, message.clone(), targets));
    }

    pub(super) fn write_forward(
        &mut self,
        to: usize,
        number: u64,
        message: &Arc<Message>,
        targets: &[(u64, Delivery)],
        clock: &WallClock,
        files: To,
    ) {
        let order = Some(message.order);
        let message = self.message(message, files, clock);
        let record = Record::Forwarded {
            to_shard: to as u16,
            number,
            order,
            message,
            targets: targets.to_vec(),
        };
        self.emit(&record, files);
    }

    /// `session`, passed to shard `to` as its `number`, whole as of now under `claim`:
    /// until that shard shows it on its disk, a compaction here writes it again (this
    /// journal's file is then the only one on disk that has it, and a rewrite must not
    /// leave it out). (`whole`: from `session_alone`.)
    pub fn handed_off(&mut self, to: usize, number: u64, whole: Bytes) {
        if self.handed.len() <= to {
            self.handed.resize_with(to + 1, VecDeque::new);
        }
        self.handed[to].push_back((number, whole));
    }

    /// The records of `session` whole with the messages it names, readable on their own
    /// wherever they are put (its messages under fresh numbers).
    pub fn session_alone(
        &mut self,
        session: &Session,
        claim: u64,
        offline_since: Option<Instant>,
        clock: &WallClock,
    ) -> Bytes {
        // Written as into a journal that has none of its messages, nothing of this turn,
        // and no compaction under way; then the journal's own are put back.
        let pending = std::mem::take(&mut self.pending);
        let messages = std::mem::take(&mut self.messages);
        let compaction = std::mem::take(&mut self.compaction);
        self.write_session(session, claim, offline_since, clock, To::OLD);
        let whole = std::mem::replace(&mut self.pending, pending).freeze();
        self.messages = messages;
        self.compaction = compaction;
        whole
    }

    /// Records already encoded, into the files in `to`.
    pub(super) fn emit_bytes(&mut self, records: &[u8], to: To) {
        if to.old {
            self.pending.extend_from_slice(records);
        }
        if let (true, Some(new)) = (to.new, self.compaction.pending_mut()) {
            new.extend_from_slice(records);
        }
    }

    /// Shard `to` has everything passed to it up to `number` on its disk.
    pub fn settled(&mut self, to: usize, number: u64) {
        if let Some(list) = self.unsettled.get_mut(to) {
            while list.front().is_some_and(|f| f.0 <= number) {
                list.pop_front();
            }
        }
        if let Some(list) = self.handed.get_mut(to) {
            while list.front().is_some_and(|h| h.0 <= number) {
                list.pop_front();
            }
        }
    }

    /// A message this shard (`me`) held for a settling session, passed to itself as
    /// `number`, was delivered: written with the turn, and no longer written again by a
    /// compaction.
    pub fn held_delivered(&mut self, me: usize, number: u64) {
        self.emit(&Record::HeldDelivered { number }, self.everywhere());
        if let Some(list) = self.unsettled.get_mut(me) {
            list.retain(|f| f.0 != number);
        }
    }

    /// Messages and sessions passed to shard `to` that it has not shown on its disk.
    pub fn unsettled_to(&self, to: usize) -> usize {
        self.unsettled.get(to).map_or(0, VecDeque::len)
            + self.handed.get(to).map_or(0, VecDeque::len)
    }

    /// What shard `from` passed here up to `number` is taken: written with this turn.
    pub fn received(&mut self, from: usize, number: u64) {
        if self.received.len() <= from {
            self.received.resize(from + 1, (0, false));
        }
        let r = &mut self.received[from];
        if number > r.0 {
            *r = (number, true);
        }
    }

    /// The highest number taken from shard `from`.
    pub fn received_from(&self, from: usize) -> u64 {
        self.received.get(from).map_or(0, |r| r.0)
    }

    /// The highest number taken from each shard that changed this turn, into its records.
    pub(super) fn write_received(&mut self) {
        let to = self.everywhere();
        for from in 0..self.received.len() {
            let (number, changed) = self.received[from];
            if changed {
                self.received[from].1 = false;
                let record = Record::Received {
                    from_shard: from as u16,
                    number,
                };
                self.emit(&record, to);
            }
        }
    }
}
