//! A journal its disk failed. After a write or a sync that did not work the file is not
//! trusted: a failed write may have left part of a turn (cut back off if the disk lets
//! it), and after a failed fsync the kernel may have dropped the pages it could not write,
//! so that a later fsync succeeds without them (PostgreSQL's lesson of 2018): retrying it
//! proves nothing. So nothing more is written to the file, nothing of what changed since
//! is acknowledged (the shard holds the clients it would tell, `shard/disk_wait.rs`), and
//! the live state, which memory still has whole, is written into a new file, synced and
//! renamed over the journal (a compaction). That is tried at once, then after a pause that
//! grows while the disk keeps refusing; until it works, the file keeps its last complete
//! turn, which is what a crash meanwhile recovers.

use std::io;
use std::time::{Duration, Instant};

use super::Journal;
use crate::types::SessionId;

/// The pause before the second try at writing the live state again, doubled after each
/// failure up to `LONGEST_PAUSE` (a full disk is not hammered, and space that comes back
/// is found within seconds).
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const LONGEST_PAUSE: Duration = Duration::from_secs(2);

pub(super) struct Failing {
    since: Instant,
    /// Writes, syncs and rewrites that failed in this episode.
    failures: u64,
    /// When the next rewrite may begin, and the pause after it fails too.
    next_rewrite: Instant,
    pause: Duration,
    /// Sessions with changes since the journal failed (their clients wait for the disk).
    touched: Vec<SessionId>,
}

impl Failing {
    /// Another failure in the episode: the next rewrite waits a while, longer each time.
    fn failed_again(&mut self, now: Instant) {
        self.failures += 1;
        self.next_rewrite = now + self.pause;
        self.pause = (self.pause * 2).min(LONGEST_PAUSE);
    }
}

impl Journal {
    /// Whether everything the shard has told the journal is on disk as the sync policy
    /// says (false from a failed write or sync until the live state is written again).
    pub fn durable(&self) -> bool {
        self.failing.is_none()
    }

    /// Writes and syncs that failed since the broker started (for the metrics).
    pub fn failures_total(&self) -> u64 {
        self.failures_total
    }

    /// The sessions changed since the last call while the journal is not durable.
    pub fn take_touched(&mut self) -> Vec<SessionId> {
        match &mut self.failing {
            Some(failing) => std::mem::take(&mut failing.touched),
            None => Vec::new(),
        }
    }

    /// A change of `session` is recorded: its client waits for the disk if the journal
    /// is not durable.
    pub(super) fn touch(&mut self, session: SessionId) {
        if let Some(failing) = &mut self.failing {
            failing.touched.push(session);
        }
    }

    /// Whether writing the live state again should begin now.
    pub fn rewrite_due(&self, now: Instant) -> bool {
        matches!(&self.failing, Some(f) if !self.compacting() && now >= f.next_rewrite)
    }

    /// How long the loop may wait before the next rewrite is due (none while one is under
    /// way: the compaction says how long then).
    pub(super) fn rewrite_wait(&self, now: Instant) -> Option<Duration> {
        let failing = self.failing.as_ref()?;
        if self.compacting() {
            return None;
        }
        Some(failing.next_rewrite.saturating_duration_since(now))
    }

    /// A write or sync of the journal failed (`what`): the file is cut back to its last
    /// complete turn if it can be, written no more, and the live state is written again.
    /// Logged once an episode.
    pub(super) fn disk_failed(&mut self, what: &str, e: &io::Error, now: Instant) {
        self.failures_total += 1;
        // What a failed write left of its turn goes (a torn tail at worst if this fails
        // too: nothing is appended after it).
        let _ = self.file.set_len(self.size);
        if let Some(failing) = &mut self.failing {
            failing.failed_again(now);
            return;
        }
        log::error!(
            "Error: persistence {what} to {} failed: {e}. Until what is in memory is written again (tried until the disk takes it), changes are not acknowledged: clients that wait for them are held.",
            self.path.display()
        );
        // A compaction begun before the failure may lack what went only to the failed
        // file: the rewrite starts afresh.
        self.give_up_compaction();
        self.failing = Some(Failing {
            since: now,
            failures: 1,
            next_rewrite: now,
            pause: FIRST_PAUSE,
            touched: Vec::new(),
        });
    }

    /// A compaction failed: the journal goes on as it is, or, if it is not durable, the
    /// rewrite is tried again after a pause.
    pub(super) fn compaction_failed(&mut self, e: &io::Error, now: Instant) {
        self.failures_total += 1;
        let Some(failing) = &mut self.failing else {
            log::warn!(
                "Warning: persistence: compacting {} failed: {e}; the journal goes on as it is.",
                self.path.display()
            );
            return;
        };
        failing.failed_again(now);
    }

    /// A compaction put the live state on disk in place of the journal: if the journal
    /// had failed, it is durable again (the compaction began after the failure).
    pub(super) fn rewritten(&mut self) {
        if let Some(failing) = self.failing.take() {
            log::info!(
                target: "information",
                "Persistence: {} written again from memory after the disk failed for {} ms ({} failed writes, syncs and rewrites); held acknowledgements go out.",
                self.path.display(),
                failing.since.elapsed().as_millis(),
                failing.failures
            );
        }
    }

    /// At shutdown while the disk fails: what could not be written is said.
    pub fn lost_at_shutdown(&self) {
        if let Some(failing) = &self.failing {
            log::error!(
                "Error: persistence: the changes of the last {} ms were not written to {} (the disk kept failing); none of them was acknowledged.",
                failing.since.elapsed().as_millis(),
                self.path.display()
            );
        }
    }
}
