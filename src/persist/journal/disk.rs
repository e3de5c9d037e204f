//! The journal's writes and syncs: where it meets the disk.

use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::Journal;
use crate::persist::format::Record;
use crate::persist::SyncPolicy;

impl Journal {
    /// Writes this turn's records, and syncs them if the policy says so now; returns how
    /// long a sync took (for the metrics). A failed write or sync makes the journal not
    /// durable (`failing.rs`): from then on records go only to the file that replaces it.
    pub fn commit(&mut self, now: Instant) -> Option<Duration> {
        self.write_received();
        self.write_compaction_records(now);
        if self.failing.is_some() {
            self.pending.clear();
            return None;
        }
        if !self.pending.is_empty() {
            Record::TurnEnd.encode(&mut self.pending);
            match self.file.write_all(&self.pending) {
                Ok(()) => {
                    self.size += self.pending.len() as u64;
                    self.unsynced_since.get_or_insert(now);
                }
                Err(e) => self.disk_failed("write", &e, now),
            }
            self.pending.clear();
            if self.pending.capacity() > 1 << 20 {
                self.pending = BytesMut::new();
            }
            if self.failing.is_some() {
                return None;
            }
        }
        let due = match (self.sync, self.unsynced_since) {
            (_, None) | (SyncPolicy::Never, _) => false,
            (SyncPolicy::Always, Some(_)) => true,
            (SyncPolicy::Interval(every), Some(since)) => now.duration_since(since) >= every,
        };
        if !due {
            return None;
        }
        let started = Instant::now();
        match self.file.sync() {
            Ok(()) => self.unsynced_since = None,
            Err(e) => self.disk_failed("sync", &e, now),
        }
        Some(started.elapsed())
    }

    /// Syncs what was written, whatever the policy (at shutdown).
    pub fn sync_now(&mut self) {
        if self.failing.is_none() {
            if let Err(e) = self.file.sync() {
                self.disk_failed("sync", &e, Instant::now());
            }
        }
        self.unsynced_since = None;
    }
}
