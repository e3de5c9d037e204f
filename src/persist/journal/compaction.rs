//! Compaction: the journal rewritten from the shard's live state once it has grown well
//! past it (or on SIGUSR1), without stopping the shard for it.
//!
//! A new file (`<name>.journal.new`, not read at recovery) is built beside the journal: a
//! slice of the live state per loop turn (the shard gives the sessions, a few milliseconds'
//! worth at a time), and from the moment a session is in it, that session's changes too;
//! changes of sessions not written yet go to the journal only, their whole state later.
//! Retained messages go in as a baseline (their changes since carry higher numbers, which
//! win at recovery). Meanwhile the journal goes on as ever. Once everything is in, a
//! thread of its own syncs the new file; then the shard syncs what came since and renames
//! it over the journal. Until that rename the journal holds everything; after it, the new
//! file does. Shutting down in the middle drops the new file.

use bytes::BytesMut;
use hashbrown::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Weak;
use std::time::{Duration, Instant};

use super::{Journal, To};
use crate::persist::format::{self, Record};
use crate::persist::storage::{sync_parent, BackgroundSync, StoredFile};
use crate::persist::WallClock;
use crate::retain::Retained;
use crate::session::Session;
use crate::types::{Message, SessionId};

/// A journal is compacted once it is this large and four times its size after the last
/// compaction: the disk holds at most a few times the live state.
const COMPACT_MIN: u64 = 64 << 20;

/// Retained messages written into the new file per slice.
const RETAINED_SLICE: usize = 256;

/// Where the journal is in a compaction.
#[derive(Default)]
pub(super) enum Compaction {
    #[default]
    None,
    Building(Box<Building>),
}

pub(super) struct Building {
    file: Box<dyn StoredFile>,
    /// Bytes in the new file, with what `pending` holds once written.
    size: u64,
    /// Records for the new file, written at the end of the turn.
    pending: BytesMut,
    /// The messages the new file has (by address, as `Journal::messages`).
    fresh: HashMap<usize, (u64, Weak<Message>)>,
    /// Sessions written whole into the new file: their changes go there too.
    sessions: HashSet<SessionId>,
    /// Sessions still to write (the shard's persistent sessions when it began).
    to_write: Vec<SessionId>,
    /// Retained messages still to write, as of change `retained_seq`.
    retained: Vec<Retained>,
    retained_seq: u64,
    /// Syncing the new file, once everything is in it.
    syncing: Option<BackgroundSync>,
    started: Instant,
    /// The time the shard spent on it, and its longest slice.
    on_shard: Duration,
    longest_slice: Duration,
}

impl Compaction {
    pub(super) fn fresh(&self) -> Option<&HashMap<usize, (u64, Weak<Message>)>> {
        match self {
            Compaction::None => None,
            Compaction::Building(b) => Some(&b.fresh),
        }
    }

    pub(super) fn fresh_mut(&mut self) -> Option<&mut HashMap<usize, (u64, Weak<Message>)>> {
        match self {
            Compaction::None => None,
            Compaction::Building(b) => Some(&mut b.fresh),
        }
    }

    /// This turn's records for the new file.
    pub(super) fn pending_mut(&mut self) -> Option<&mut BytesMut> {
        match self {
            Compaction::None => None,
            Compaction::Building(b) => Some(&mut b.pending),
        }
    }

    pub(super) fn has_session(&self, session: SessionId) -> bool {
        matches!(self, Compaction::Building(b) if b.sessions.contains(&session))
    }

    /// A session is written whole now: into the new file too, if one is being built.
    pub(super) fn add_session(&mut self, session: SessionId) -> bool {
        match self {
            Compaction::None => false,
            Compaction::Building(b) => {
                b.sessions.insert(session);
                true
            }
        }
    }

    pub(super) fn remove_session(&mut self, session: SessionId) {
        if let Compaction::Building(b) = self {
            b.sessions.remove(&session);
        }
    }
}

impl Journal {
    /// Whether the journal has grown enough past its live state to be rewritten.
    pub fn wants_compaction(&self) -> bool {
        self.size >= COMPACT_MIN && self.size >= 4 * self.compacted_size
    }

    /// Whether a compaction is under way.
    pub fn compacting(&self) -> bool {
        matches!(self.compaction, Compaction::Building(_))
    }

    /// Whether the compaction has work for the next turn: a slice to write (the loop
    /// should not wait), or a sync to see finish (it should look again soon).
    /// Or a rewrite after a failure is due then (`failing.rs`).
    pub fn compaction_wants_turn(&self, now: Instant) -> Option<Duration> {
        match &self.compaction {
            Compaction::Building(b) if b.syncing.is_none() => Some(Duration::ZERO),
            Compaction::Building(_) => Some(Duration::from_millis(1)),
            Compaction::None => self.rewrite_wait(now),
        }
    }

    /// Starts a compaction of this shard's `sessions` and the `retained` messages (as of
    /// change `retained_seq`). Records of this turn not yet committed go to the journal
    /// first.
    pub fn begin_compaction(
        &mut self,
        now: Instant,
        sessions: Vec<SessionId>,
        retained: Vec<Retained>,
        retained_seq: u64,
    ) {
        self.commit(now);
        let path = compaction_path(&self.path);
        let mut file = match self.storage.create(&path) {
            Ok(file) => file,
            Err(e) => return self.compaction_failed(&e, now),
        };
        if let Err(e) = file.write_all(&format::header()) {
            let _ = self.storage.remove(&path);
            return self.compaction_failed(&e, now);
        }
        let mut pending = BytesMut::new();
        Record::RetainedBaseline { seq: retained_seq }.encode(&mut pending);
        for (from, (number, _)) in self.received.iter().enumerate() {
            let record = Record::Received {
                from_shard: from as u16,
                number: *number,
            };
            record.encode(&mut pending);
        }
        self.compaction = Compaction::Building(Box::new(Building {
            file,
            size: format::HEADER_LEN as u64,
            pending,
            fresh: HashMap::new(),
            sessions: HashSet::new(),
            to_write: sessions,
            retained,
            retained_seq,
            syncing: None,
            started: Instant::now(),
            on_shard: Duration::ZERO,
            longest_slice: Duration::ZERO,
        }));
        // What other shards have not shown taken yet goes into the new file too (few: what
        // is between two shards' turns).
        let clock = WallClock::now();
        let unsettled = std::mem::take(&mut self.unsettled);
        for (to, list) in unsettled.iter().enumerate() {
            for (number, message, targets) in list {
                self.write_forward(to, *number, message, targets, &clock, To::NEW);
            }
        }
        self.unsettled = unsettled;
        // And the sessions passed to other shards that they have not shown on disk.
        let handed = std::mem::take(&mut self.handed);
        for (_, whole) in handed.iter().flatten() {
            self.emit_bytes(whole, To::NEW);
        }
        self.handed = handed;
    }

    /// The next session to write into the new file (one that is still journaled here and
    /// not written yet), after a slice of retained messages if any are left; `None` once
    /// all are written.
    pub fn next_to_compact(&mut self, clock: &WallClock) -> Option<SessionId> {
        let Compaction::Building(b) = &mut self.compaction else {
            return None;
        };
        if !b.retained.is_empty() {
            let cut = b.retained.len().saturating_sub(RETAINED_SLICE);
            let slice: Vec<Retained> = b.retained.drain(cut..).collect();
            let seq = b.retained_seq;
            for (message, source) in slice {
                self.retained_to(seq, &message, source.as_deref(), clock, To::NEW);
            }
            return self.next_to_compact(clock);
        }
        while let Some(id) = b.to_write.pop() {
            if self.sessions.contains_key(&id) && !b.sessions.contains(&id) {
                return Some(id);
            }
        }
        None
    }

    /// Writes `session` whole into the new file, under the claim it was written under
    /// here (not its client's latest, which may be another shard's that is asking for it:
    /// that one's record must win at recovery once written).
    pub fn compact_session(
        &mut self,
        session: &Session,
        offline_since: Option<Instant>,
        clock: &WallClock,
    ) {
        let Some(&claim) = self.sessions.get(&session.id) else {
            return;
        };
        if self.compaction.add_session(session.id) {
            self.write_session(session, claim, offline_since, clock, To::NEW);
        }
    }

    /// The time one slice took on the shard (for the log line at the end).
    pub fn compaction_slice_took(&mut self, took: Duration) {
        if let Compaction::Building(b) = &mut self.compaction {
            b.on_shard += took;
            b.longest_slice = b.longest_slice.max(took);
        }
    }

    /// End of a turn: the new file's records of the turn are written to it (not synced).
    pub(super) fn write_compaction_records(&mut self, now: Instant) {
        let Compaction::Building(b) = &mut self.compaction else {
            return;
        };
        if b.pending.is_empty() {
            return;
        }
        Record::TurnEnd.encode(&mut b.pending);
        let written = b.file.write_all(&b.pending);
        b.size += b.pending.len() as u64;
        b.pending = BytesMut::new();
        if let Err(e) = written {
            self.give_up_compaction();
            self.compaction_failed(&e, now);
        }
    }

    /// After a slice: once everything is in the new file, a thread syncs it; once that is
    /// done, what came since is synced by the shard and the new file takes the journal's
    /// place.
    pub fn advance_compaction(&mut self, now: Instant) {
        let Compaction::Building(b) = &mut self.compaction else {
            return;
        };
        if !b.retained.is_empty() || !b.to_write.is_empty() {
            return;
        }
        self.write_compaction_records(now);
        let Compaction::Building(b) = &mut self.compaction else {
            return;
        };
        let Some(syncing) = &b.syncing else {
            match b.file.sync_in_background() {
                Ok(syncing) => b.syncing = Some(syncing),
                Err(e) => {
                    self.give_up_compaction();
                    self.compaction_failed(&e, now);
                }
            }
            return;
        };
        if !syncing.is_finished() {
            return;
        }
        let Compaction::Building(b) = std::mem::take(&mut self.compaction) else {
            unreachable!("matched above");
        };
        let mut b = *b;
        let synced = b.syncing.take().expect("checked").join();
        let tmp = compaction_path(&self.path);
        let placed = synced.and_then(|()| {
            b.file.sync()?;
            self.storage.rename(&tmp, &self.path)
        });
        if let Err(e) = placed {
            let _ = self.storage.remove(&tmp);
            return self.compaction_failed(&e, now);
        }
        // Renamed: the new file is the journal, whatever happens next. Until the directory
        // is synced the rename may not survive a crash, which would bring back the old file
        // without what is written from now on: a failure there is the journal's.
        self.file = b.file;
        match sync_parent(&*self.storage, &self.path) {
            Ok(()) => {
                self.messages = b.fresh;
                self.messages_swept = self.messages.len();
                self.size = b.size;
                self.compacted_size = b.size;
                self.unsynced_since = None;
                log::info!(
                    target: "information",
                    "Compacted {} to {} bytes in {} ms (on the shard: {} ms in slices of at most {} ms).",
                    self.path.display(),
                    self.size,
                    b.started.elapsed().as_millis(),
                    b.on_shard.as_millis(),
                    b.longest_slice.as_millis()
                );
                self.rewritten();
            }
            Err(e) => {
                self.size = b.size;
                self.disk_failed("sync", &e, now);
            }
        }
    }

    /// Drops the compaction under way (at shutdown, or after a failed write): the journal
    /// holds everything.
    pub fn give_up_compaction(&mut self) {
        if let Compaction::Building(b) = std::mem::take(&mut self.compaction) {
            if let Some(syncing) = b.syncing {
                let _ = syncing.join();
            }
            let _ = self.storage.remove(&compaction_path(&self.path));
        }
    }
}

/// Where a journal's replacement is written (not read at recovery: not `*.journal`).
pub(super) fn compaction_path(path: &Path) -> PathBuf {
    path.with_extension("journal.new")
}
