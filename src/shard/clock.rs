//! Where a shard's time comes from. The broker reads the system's monotonic clock; a
//! simulation passes in a clock it moves by hand, so that keepalives, expiries and delayed
//! wills happen when the test says, and a run replays the same way. A shard reads the clock
//! once per loop turn: everything in a turn happens at the same instant.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

/// A shard's time: read once per loop turn, so that everything in a turn happens at the
/// same instant.
pub(super) struct TurnClock {
    /// The time of this loop turn (read from `Shared::clock` once per turn).
    pub(super) now: Instant,
    /// When the shard started: what connections' `Stamp`s count from.
    pub(super) epoch: Instant,
    /// Loop turns taken.
    pub(super) turns: u64,
    /// Whether the shard worked since its last timer tick, and since it last gave freed
    /// memory back (`timers.rs`).
    pub(super) quiet: super::timers::Quiet,
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

/// An instant in four bytes, for the time every connection record keeps (when its peer was
/// last heard from): hundredths of a second since the shard's epoch, wrapping every ~497
/// days. Only the time between two stamps is read, by the timer tick (every 250 ms), and
/// against limits of at most `Stamp::SPAN_MAX`, well inside the wrap: a span is past its
/// limit at some tick long before it could wrap round to look short again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp(u32);

impl Stamp {
    const UNIT_MS: u64 = 10;
    /// The longest span compared (400 days); a longer limit acts as this one.
    pub const SPAN_MAX: Duration = Duration::from_secs(400 * 24 * 3600);

    /// `now` as a stamp counted from `epoch`.
    pub fn at(now: Instant, epoch: Instant) -> Stamp {
        let units = now.saturating_duration_since(epoch).as_millis() / u128::from(Self::UNIT_MS);
        // Truncation is the wrap.
        Stamp(units as u32)
    }

    /// The time from this stamp to `later` (exact to the unit while it is under the wrap).
    pub fn until(self, later: Stamp) -> Duration {
        Duration::from_millis(u64::from(later.0.wrapping_sub(self.0)) * Self::UNIT_MS)
    }

    /// Whether more than `limit` (capped at `SPAN_MAX`) passed from this stamp to `now`.
    pub fn older_than(self, limit: Duration, now: Stamp) -> bool {
        self.until(now) > limit.min(Self::SPAN_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::Stamp;
    use std::time::{Duration, Instant};

    #[test]
    fn a_stamp_measures_spans_across_its_wrap() {
        let epoch = Instant::now();
        let at = |ms: u64| Stamp::at(epoch + Duration::from_millis(ms), epoch);
        assert_eq!(at(1_000).until(at(2_505)), Duration::from_millis(1_500));
        assert!(at(0).older_than(Duration::from_millis(1_500), at(1_510)));
        assert!(!at(0).older_than(Duration::from_millis(1_500), at(1_500)));
        // Across the wrap (2^32 hundredths of a second, ~497 days after the epoch).
        let wrap_ms = (1u64 << 32) * 10;
        let before = at(wrap_ms - 3_000);
        let after = at(wrap_ms + 2_000);
        assert_eq!(before.until(after), Duration::from_millis(5_000));
        assert!(before.older_than(Duration::from_secs(4), after));
        // A limit past the cap acts as the cap, so a silent peer is still found.
        let year = Duration::from_secs(3600 * 24 * 365);
        assert!(at(0).older_than(10 * year, at(Stamp::SPAN_MAX.as_millis() as u64 + 10)));
    }
}
