//! A session settling on the shard it moved to: what comes straight to it waits until
//! every shard's marker has come through the shard it left (`handover/mod.rs` tells why),
//! and that shard forwards until the markers have passed.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::moves::{Held, Marker, Settling};
use crate::router::ShardMsg;
use crate::shard::io::Backend;
use crate::shard::Shard;
use crate::types::{Message, SessionId, Target};

impl<B: Backend> Shard<B> {
    /// A session arrived from `origin`: hold what comes straight here for it until every
    /// shard's marker has come through `origin`.
    pub(super) fn begin_settling(&mut self, session: SessionId, origin: usize) {
        log::debug!(
            "Session {} arrived on shard {} from shard {origin}; settling.",
            session.get(),
            self.id
        );
        // The trie change pointing the session here is published before any shard reads
        // the request (`request_markers`), so that what a shard routes after its marker
        // comes here.
        let shards = self.shared.mailboxes.shards();
        self.handover.moves.begin_settling(session, origin, shards);
    }

    /// Sends the marker requests of the sessions that began settling this turn (after the
    /// turn's trie changes are published).
    pub(in crate::shard) fn request_markers(&mut self) {
        for (session, origin) in self.handover.moves.take_began() {
            for shard in 0..self.shared.mailboxes.shards() {
                let msg = ShardMsg::Flush {
                    session,
                    via: origin,
                };
                self.crossing
                    .outbox
                    .send(&self.shared.mailboxes, shard, msg, true);
            }
        }
    }

    /// A shard that settles `session` asks for this shard's marker, sent through `via`
    /// behind everything this shard sent there before.
    pub(in crate::shard) fn on_flush(&mut self, session: SessionId, via: usize) {
        self.crossing.outbox.send(
            &self.shared.mailboxes,
            via,
            ShardMsg::Flushed { session },
            true,
        );
    }

    /// A shard's marker for `session`: counted here if it is settling here, passed on if it
    /// moved on.
    pub(in crate::shard) fn on_flushed(&mut self, session: SessionId) {
        let shards = self.shared.mailboxes.shards();
        match self.handover.moves.marker(session, shards) {
            Marker::Settled(settling) => self.settled(session, settling),
            Marker::Counted => {}
            Marker::PassOn(to) => {
                let msg = ShardMsg::Flushed { session };
                self.crossing
                    .outbox
                    .send(&self.shared.mailboxes, to, msg, true);
            }
            Marker::Stray => {
                log::debug!("A marker for session {session:?}, which is neither here nor moved.");
            }
        }
    }

    /// Whether a delivery that came straight here must wait: its session is settling.
    /// Returns the delivery back if not.
    ///
    /// With persistence a held message is journaled as one passed to this shard itself,
    /// in the turn its publisher is acknowledged, and taken (`HeldDelivered`) when it is
    /// delivered: a crash meanwhile hands it on at recovery, as one between two shards.
    pub(in crate::shard) fn hold(&mut self, message: &Arc<Message>, target: &Target) -> bool {
        match self.handover.moves.room_to_hold(target.session) {
            None => return false,
            Some(false) => {
                self.stats()
                    .dropped_overflow_full
                    .fetch_add(1, Ordering::Relaxed);
                return true;
            }
            Some(true) => {}
        }
        let number = self.transit_number(self.id, message.qos).map(|r| r.number);
        if let Some(number) = number {
            self.journal_forward(self.id, number, message, std::slice::from_ref(target));
        }
        let held = Held {
            message: message.clone(),
            target: target.clone(),
            number,
        };
        self.handover.moves.hold(target.session, held);
        true
    }

    /// Every old route has drained: deliver what was held, in order, and answer a request
    /// for the session that came meanwhile.
    fn settled(&mut self, session: SessionId, settling: Settling) {
        log::debug!("Session {} settled on shard {}.", session.get(), self.id);
        for held in settling.held {
            self.deliver_here(&held.message, &[held.target], true);
            if let Some(number) = held.number {
                self.journal_held_delivered(number);
            }
        }
        if let Some(r) = settling.deferred {
            self.on_take_session(r.client_id, r.to, r.clean_start, r.claim);
        }
    }
}
