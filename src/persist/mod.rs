//! Persistence (`persistence true`): retained messages and persistent sessions (parameters,
//! subscriptions, queued messages, the inflight window and incoming QoS 2 state) survive a
//! restart and a crash.
//!
//! Each shard appends what changed to its own journal (`journal/`), written at the end of
//! every loop turn that changed something, before the turn's packets go out; with
//! `persistence_sync always` the write is synced first, so an acknowledgement (PUBACK,
//! PUBREC, SUBACK) leaves only once what it acknowledges is on disk, one sync covering the
//! whole turn (group commit). Sessions come from the session state machine's change records
//! (`session::Changes`); a session that arrives on a shard (a client reconnecting, perhaps
//! from another shard) is written whole, under its client's claim number, so that the
//! journal of the shard that last held it wins at recovery (`recover/`). At start the
//! journals are read, what they hold is given back to the shards, and each journal is
//! written again compactly. The format is in `FORMAT.md`.

pub mod format;
pub mod journal;
pub mod mosquitto_db;
pub mod recover;
pub mod start;
pub mod storage;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// When journal writes are synced to disk (`persistence_sync`, midge's own option).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Before the turn's acknowledgements go out (group commit per loop turn).
    Always,
    /// At most this long after a write.
    Interval(Duration),
    /// When the operating system writes its cache.
    Never,
}

impl SyncPolicy {
    /// `always`, `never`, or a number of milliseconds (`interval` alone: 1000).
    pub fn parse(text: &str) -> Option<SyncPolicy> {
        match text {
            "always" => Some(SyncPolicy::Always),
            "never" => Some(SyncPolicy::Never),
            "interval" => Some(SyncPolicy::Interval(Duration::from_secs(1))),
            ms => ms
                .strip_prefix("interval:")
                .unwrap_or(ms)
                .parse::<u64>()
                .ok()
                .filter(|&ms| ms > 0)
                .map(|ms| SyncPolicy::Interval(Duration::from_millis(ms))),
        }
    }
}

/// Where the journals live: `persistence_location` + `persistence_file` + `.d`, a directory
/// beside the store's marker file (`marker`).
pub fn directory(location: Option<&PathBuf>, file: &str) -> PathBuf {
    let location = location.cloned().unwrap_or_default();
    location.join(format!("{file}.d"))
}

/// The store's marker: a small file at `persistence_location` + `persistence_file`, where
/// Mosquitto keeps its database, saying where the journals are. Removing it removes the
/// store, as removing `mosquitto.db` does for Mosquitto: a journal directory without its
/// marker is set aside at start, not read.
pub fn marker(location: Option<&PathBuf>, file: &str) -> PathBuf {
    location.cloned().unwrap_or_default().join(file)
}

/// What the marker file says (its first bytes identify it).
pub const MARKER_TEXT: &str = "MIDGE persistence store: the journals are in the directory beside this file, named as this file with .d added (format: midge's src/persist/FORMAT.md). Removing this file removes the store.\n";

/// Instants as Unix milliseconds and back, so that expiry deadlines outlive the process.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    instant: Instant,
    unix_ms: u64,
}

impl WallClock {
    pub fn now() -> WallClock {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        WallClock {
            instant: Instant::now(),
            unix_ms: since_epoch.as_millis() as u64,
        }
    }

    pub fn unix_ms(&self, at: Instant) -> u64 {
        match at.checked_duration_since(self.instant) {
            Some(ahead) => self.unix_ms + ahead.as_millis() as u64,
            None => self
                .unix_ms
                .saturating_sub(self.instant.duration_since(at).as_millis() as u64),
        }
    }

    pub fn instant(&self, unix_ms: u64) -> Instant {
        if unix_ms >= self.unix_ms {
            self.instant + Duration::from_millis(unix_ms - self.unix_ms)
        } else {
            let ago = Duration::from_millis(self.unix_ms - unix_ms);
            self.instant.checked_sub(ago).unwrap_or(self.instant)
        }
    }

    pub fn current_unix_ms(&self) -> u64 {
        self.unix_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_policies_parse() {
        assert_eq!(SyncPolicy::parse("always"), Some(SyncPolicy::Always));
        assert_eq!(SyncPolicy::parse("never"), Some(SyncPolicy::Never));
        assert_eq!(
            SyncPolicy::parse("interval"),
            Some(SyncPolicy::Interval(Duration::from_secs(1)))
        );
        assert_eq!(
            SyncPolicy::parse("250"),
            Some(SyncPolicy::Interval(Duration::from_millis(250)))
        );
        assert_eq!(SyncPolicy::parse("0"), None);
        assert_eq!(SyncPolicy::parse("sometimes"), None);
    }

    #[test]
    fn instants_survive_as_unix_milliseconds() {
        let clock = WallClock::now();
        let later = clock.instant + Duration::from_secs(90);
        let ms = clock.unix_ms(later);
        assert_eq!(ms, clock.unix_ms + 90_000);
        assert_eq!(clock.instant(ms), later);
    }
}
