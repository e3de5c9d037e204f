//! Where a shard's time comes from. The broker reads the system's monotonic clock; a
//! simulation passes in a clock it moves by hand, so that keepalives, expiries and delayed
//! wills happen when the test says, and a run replays the same way. A shard reads the clock
//! once per loop turn: everything in a turn happens at the same instant.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

/// The system's monotonic clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to (`advance`).
pub struct ManualClock {
    start: Instant,
    elapsed_ns: AtomicU64,
}

impl ManualClock {
    pub fn new() -> ManualClock {
        ManualClock {
            start: Instant::now(),
            elapsed_ns: AtomicU64::new(0),
        }
    }

    pub fn advance(&self, by: Duration) {
        let ns = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.elapsed_ns.fetch_add(ns, Ordering::Relaxed);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + Duration::from_nanos(self.elapsed_ns.load(Ordering::Relaxed))
    }
}
