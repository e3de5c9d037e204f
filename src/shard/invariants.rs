//! What must hold between a shard's loop turns, checked on every timer tick in debug builds
//! and after every step of the simulation; and what a simulation reads of a shard (its
//! sessions' change records and what they must keep).

use super::io::Backend;
use super::Shard;
use crate::types::SessionId;
use std::sync::Arc;

impl<B: Backend> Shard<B> {
    /// The sessions this shard holds, by client id (for a simulation's checks).
    pub fn client_ids(&self) -> impl Iterator<Item = &Arc<str>> {
        self.sessions.client_ids()
    }

    /// Whether clients wait for this shard's journal to be durable again.
    pub fn waits_for_disk(&self) -> bool {
        self.disk.wait.failing()
    }

    /// What keeps this shard from being idle (for a simulation that does not settle).
    pub fn busy_with(&self) -> String {
        format!(
            "mailbox {} outbox empty {} parked {:?} work now {} decoding {} trie_sweep {} subscribing {} retained_requests {} journal durable {:?}",
            self.crossing.mailbox.receiver.len(),
            self.crossing.outbox.is_empty(),
            self.crossing.mailbox.parked.as_ref().map(|(m, turn)| (std::mem::discriminant(m), turn)),
            self.has_work_now(),
            self.receiving.waiting.len(),
            self.subs.trie.sweep.is_empty(),
            self.subs.queue.packets.is_empty(),
            self.subs.owed.requests.is_empty(),
            self.disk.journal.as_deref().map(|j| j.durable()),
        )
    }

    /// Starts (or stops) recording what changes in this shard's sessions.
    pub fn record_changes(&mut self, on: bool) {
        self.sessions.changes().record(on);
    }

    /// The change records since the last call, oldest first.
    pub fn take_changes(&mut self) -> Vec<crate::session::Change> {
        self.sessions.changes().take()
    }

    /// What each session this shard holds must keep, read from the live session (for a
    /// simulation to compare with the replay of the change records).
    pub fn durable_sessions(
        &self,
    ) -> impl Iterator<Item = (SessionId, crate::session::Durable)> + '_ {
        self.sessions.values().map(|s| (s.id, s.durable()))
    }

    /// What must hold between turns: every connection and session, and the links between
    /// them, agree. Checked on every timer tick in debug builds, and after every step of the
    /// simulation. Panics naming what is wrong.
    pub fn check_invariants(&self) {
        for c in self.conns.iter().flatten() {
            // A connection held for a reason is on the list that ends the hold.
            if c.held.contains(super::conn::Hold::DISK) {
                assert!(
                    self.disk.wait.failing() && self.disk.wait.is_held(c.id),
                    "connection {} held for the disk, which {}",
                    c.id,
                    if self.disk.wait.failing() {
                        "does not list it"
                    } else {
                        "is not failing"
                    }
                );
            }
            if c.held.contains(super::conn::Hold::DECODE) {
                assert!(
                    self.receiving.waiting.contains(&c.id),
                    "connection {} held for decoding, not listed",
                    c.id
                );
            }
            if let Some(id) = c.session {
                let session = self.sessions.get(&id);
                assert!(
                    session.is_some_and(|s| s.conn == Some(c.id)),
                    "connection {} names session {id:?}, which does not name it back",
                    c.id
                );
            }
            if c.waiting_handoff().is_some() {
                let client = c
                    .client_id
                    .as_ref()
                    .expect("a waiting connection has a client id");
                assert_eq!(
                    self.handover.claims.waiting(client).map(|a| a.0),
                    Some(c.id),
                    "{client} waits unrecorded"
                );
            }
        }
        self.sessions.check_index();
        for session in self.sessions.values() {
            let id = &session.id;
            if let Some(conn) = session.conn {
                assert!(
                    self.conn(conn).is_some_and(|c| c.session == Some(*id)),
                    "session {id:?} names connection {conn}, which does not name it back"
                );
            }
            session.check_invariants();
        }
        self.handover.claims.check_invariants();
        (self.handover.moves).check_invariants(|id| self.sessions.contains_key(id));
    }
}
