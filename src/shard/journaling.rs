//! The shard's side of persistence (`persist/`): its journal gets the turn's session
//! changes and retained changes before the turn's packets go out, sessions written whole
//! when they arrive here, and the shard's live state when it is compacted; at start the
//! shard takes back the sessions recovery gives it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::io::Backend;
use super::trie_ops::TrieOp;
use super::Shard;
use crate::persist::journal::Journal;
use crate::persist::recover::RecoveredSession;
use crate::persist::WallClock;
use crate::session::{Changes, Session};

/// `persistence true`: a shard's journal, and the clients held while it is not durable.
#[derive(Default)]
pub(super) struct Disk {
    pub(super) journal: Option<Box<Journal>>,
    pub(super) wait: super::disk_wait::DiskWait,
}
use crate::types::{Message, SessionId};

impl<B: Backend> Shard<B> {
    /// Journals from now on: every change of this shard's sessions is recorded.
    pub fn attach_journal(&mut self, journal: Journal) {
        self.sessions.changes().record(true);
        self.disk.journal = Some(Box::new(journal));
        self.start_transit();
    }

    /// The journal with the changes recorded so far written into it (so that what is
    /// written next comes after them).
    pub(super) fn journal_up_to_date(&mut self) -> Option<(&mut Journal, WallClock)> {
        let journal = self.disk.journal.as_deref_mut()?;
        let clock = drain(journal, self.sessions.changes());
        Some((journal, clock))
    }

    /// End of a turn, before its packets go out: the turn's changes are written (and
    /// synced, with `persistence_sync always`, so that no acknowledgement leaves before
    /// what it acknowledges is on disk).
    pub(super) fn journal_turn(&mut self) {
        #[cfg(debug_assertions)]
        if let Some((delay, took @ true)) = &mut self.faults.commit_delay {
            *took = false;
            std::thread::sleep(*delay);
        }
        let now = self.clock.now;
        let asked = self.shared.compactions_asked.load(Ordering::Acquire);
        let Some((journal, _)) = self.journal_up_to_date() else {
            return;
        };
        let synced = journal.commit(now);
        let due = journal.wants_compaction()
            || journal.compactions_done < asked
            || journal.rewrite_due(now);
        let compact = due && !journal.compacting();
        if compact {
            journal.compactions_done = asked;
        }
        if let Some(took) = synced {
            self.stats().persist_syncs.record(took.as_micros() as u64);
        }
        if compact {
            self.start_compaction();
        }
        self.compaction_slice();
        // What this turn acknowledges goes out only with what it acknowledges on disk, and
        // other shards are told what they may take, and given what it passes them, only
        // then.
        if self.wait_for_disk() {
            self.publish_transit();
            if self.crossing.outbox.defers() {
                self.retry_overflow(); // Else already done in the turn (`Shard::turn`).
            }
        }
    }

    /// At shutdown: everything written and synced.
    pub(super) fn journal_close(&mut self) {
        let now = self.clock.now;
        if let Some((journal, _)) = self.journal_up_to_date() {
            journal.commit(now);
            journal.give_up_compaction();
            journal.sync_now();
            journal.lost_at_shutdown();
        }
    }

    /// A persistent session arrived on this shard under its client's claim `claim` (its
    /// client connected, or it was handed over): written whole.
    pub(super) fn journal_session(&mut self, id: SessionId, claim: u64) {
        let Some(session) = self.sessions.get(&id) else {
            return;
        };
        if session.clean || self.disk.journal.is_none() {
            return;
        }
        let offline_since = self.offline_since(session);
        let (Some(journal), Some((session, changes))) = (
            self.disk.journal.as_deref_mut(),
            self.sessions.recording(&id),
        ) else {
            return;
        };
        let clock = drain(journal, changes);
        journal.session(session, claim, offline_since, &clock);
    }

    /// A journaled session's client went away.
    pub(super) fn journal_disconnected(&mut self, id: SessionId) {
        let waiting = (self.sessions.get(&id)).and_then(|s| s.delayed_will.clone());
        if let Some((journal, clock)) = self.journal_up_to_date() {
            journal.disconnected(id, clock.current_unix_ms());
            if let Some(waiting) = waiting {
                journal.will_waiting(id, waiting.0, &waiting.1, &clock);
            }
        }
    }

    /// An offline session's waiting will was published.
    pub(super) fn journal_will_gone(&mut self, id: SessionId) {
        if let Some((journal, _)) = self.journal_up_to_date() {
            journal.will_gone(id);
        }
    }

    /// A persistent session passed to shard `to` (under the claim it was written here
    /// under): numbered as a message, and kept whole for a rewrite here until that shard
    /// shows it on its disk. Its receipt.
    pub(super) fn journal_handed_off(
        &mut self,
        to: usize,
        session: &Session,
    ) -> Option<crate::router::Receipt> {
        if session.clean {
            return None;
        }
        let offline_since = self.offline_since(session);
        let claim = self.disk.journal.as_deref()?.claim_of(session.id)?;
        let receipt = self.transit_number(to, crate::codec::QoS::AtLeastOnce)?;
        let (journal, clock) = self.journal_up_to_date()?;
        let whole = journal.session_alone(session, claim, offline_since, &clock);
        journal.handed_off(to, receipt.number, whole);
        Some(receipt)
    }

    /// A message held for a settling session (passed to this shard itself as `number`)
    /// was delivered.
    pub(super) fn journal_held_delivered(&mut self, number: u64) {
        let me = self.id;
        if let Some((journal, _)) = self.journal_up_to_date() {
            journal.held_delivered(me, number);
        }
    }

    /// A session left for another shard: no longer this journal's.
    pub(super) fn journal_forget(&mut self, id: SessionId) {
        if let Some((journal, _)) = self.journal_up_to_date() {
            journal.forget(id);
        }
    }

    /// A client changed a topic's retained message (change number `seq`; `source`: who).
    pub(super) fn journal_retained(
        &mut self,
        seq: u64,
        message: &Arc<Message>,
        source: Option<&crate::retain::Source>,
    ) {
        if let Some((journal, clock)) = self.journal_up_to_date() {
            journal.retained(seq, message, source, &clock);
        }
    }

    /// When an offline session's client went away, worked out from its expiry deadline
    /// (what the journal needs to keep the expiry running across a restart).
    pub(super) fn offline_since(&self, session: &Session) -> Option<Instant> {
        let at = session.expires_at?;
        let after = session.expires_after(self.config.persistent_client_expiration)?;
        Some(at.checked_sub(after).unwrap_or(at))
    }

    /// Starts rewriting the journal from the live state: every retained message, every
    /// persistent session, a slice per turn (`compaction_slice`), the file written and
    /// synced beside the journal, which it replaces at the end (`persist::journal`).
    fn start_compaction(&mut self) {
        let now = self.clock.now;
        let mut retained = Vec::new();
        let seq = {
            let store = self.shared.retained.lock().expect("retained lock");
            store.all_but_sys(&mut retained);
            store.last_change()
        };
        let persistent: Vec<SessionId> = (self.sessions.values())
            .filter(|s| !s.clean)
            .map(|s| s.id)
            .collect();
        if let Some((journal, _)) = self.journal_up_to_date() {
            journal.begin_compaction(now, persistent, retained, seq);
        }
    }

    /// A compaction's slice for this turn: sessions written into the new file for up to
    /// `COMPACTION_SLICE`, so that a large live state never holds the shard's clients up
    /// for long (Mosquitto's whole-database save stalls every client: its issue #840).
    fn compaction_slice(&mut self) {
        if !self.disk.journal.as_deref().is_some_and(|j| j.compacting()) {
            return;
        }
        let started = Instant::now();
        let clock = WallClock::now();
        while started.elapsed() < COMPACTION_SLICE {
            let Some(journal) = self.disk.journal.as_deref_mut() else {
                return;
            };
            let Some(id) = journal.next_to_compact(&clock) else {
                break;
            };
            let Some(session) = self.sessions.get(&id) else {
                continue;
            };
            let offline_since = self.offline_since(session);
            if let Some(journal) = self.disk.journal.as_deref_mut() {
                journal.compact_session(session, offline_since, &clock);
            }
        }
        if let Some(journal) = self.disk.journal.as_deref_mut() {
            journal.compaction_slice_took(started.elapsed());
            journal.advance_compaction(self.clock.now);
        }
    }

    /// How long the loop may wait for events while a compaction is under way.
    pub(super) fn compaction_wait_limit(&self) -> Option<Duration> {
        self.disk
            .journal
            .as_deref()?
            .compaction_wants_turn(self.clock.now)
    }

    /// At start, before the first turn: the shard's part of the store read (its new
    /// journal, its sessions); false if the journal could not be written (`restore`).
    pub fn restore_from(&mut self, part: crate::persist::start::ShardStore) -> bool {
        self.attach_journal(part.journal);
        self.restore(part.sessions, part.retained)
    }

    /// At start, before the first turn: the sessions recovery gives this shard, registered
    /// (client ids, subscriptions) and written to its new journal; `retained`: the retained
    /// messages to write too (one shard writes them). False if the new journal could not be
    /// written (the disk full or failing): the store read must not be removed then, and
    /// the broker does not start.
    pub fn restore(
        &mut self,
        sessions: Vec<RecoveredSession>,
        retained: Option<(u64, Vec<crate::retain::Retained>)>,
    ) -> bool {
        let clock = WallClock::now();
        if let (Some((seq, messages)), Some(journal)) = (retained, self.disk.journal.as_deref_mut())
        {
            journal.all_retained(seq, &messages, &clock);
        }
        for recovered in sessions {
            let id = self.shared.new_session_id();
            let claim = recovered.claim;
            let filter_bytes = &self.shared.filter_bytes;
            let revived =
                recovered.revive(id, self.id as u16, filter_bytes, &clock, self.clock.now);
            let session = revived.session;
            let client_id = session.client_id.clone();
            for (filter, sub) in revived.subscriptions {
                let session = id;
                (self.subs.trie.ops).push(TrieOp::Subscribe {
                    filter,
                    session,
                    sub,
                });
            }
            if let Some(due) = revived.will_due {
                self.schedule_will(id, due);
            }
            let since = revived.offline_since;
            self.shared
                .registry
                .lock()
                .expect("registry lock")
                .insert(client_id.clone(), super::shared::Claim::new(self.id, claim));
            self.sessions.insert(session);
            let persistent_expiration = self.config.persistent_client_expiration;
            self.sessions.start_expiry(id, since, persistent_expiration);
            self.journal_session(id, claim);
        }
        self.apply_trie_ops();
        let Some(journal) = self.disk.journal.as_deref_mut() else {
            return true;
        };
        journal.commit(self.clock.now);
        journal.sync_now();
        journal.durable()
    }

    /// At shutdown with persistence: what was acknowledged to its publishers and is still
    /// on its way between shards reaches its sessions (and so the journals) before they
    /// close. Every shard has stopped reading clients (first barrier); each passes on its
    /// held messages while taking in its own mailbox, so none waits on another forever;
    /// the second barrier comes once every shard has passed everything on.
    /// (A shard whose journal is not durable passes nothing on: none of it was
    /// acknowledged, and other shards must not take what its journal may not keep.)
    pub(super) fn deliver_in_transit(&mut self) {
        self.stop_parking();
        self.shared.shutdown_barrier.wait();
        loop {
            self.drain_mailbox();
            if self.disk.journal.as_deref().is_some_and(|j| !j.durable()) {
                self.crossing.outbox.clear();
            }
            self.retry_overflow();
            if self.crossing.outbox.is_empty() {
                break;
            }
            std::thread::yield_now();
        }
        self.shared.shutdown_barrier.wait();
        while !self.crossing.mailbox.receiver.is_empty() || self.has_parked() {
            self.drain_mailbox();
        }
    }
}

/// The most a turn spends on a compaction's slice.
const COMPACTION_SLICE: Duration = Duration::from_millis(2);

/// Writes the change records so far into `journal`; the clock to write what follows with.
fn drain(journal: &mut Journal, changes: &mut Changes) -> WallClock {
    let clock = WallClock::now();
    for change in changes.take() {
        journal.change(&change, &clock);
    }
    clock
}
