//! Copies of a message already taken, known exactly.
//!
//! The link takes a message only from the oldest of its NATS subscriptions matching its
//! subject (`patterns.rs`), so a copy that another subscription brings is passed over,
//! with one exception: when the oldest goes away, the next one takes its subjects over,
//! and its channel may still hold copies of what the old one delivered. A node publishes
//! every message with its origin (the node's incarnation and the shard that published it)
//! and a number counting up per origin, and NATS delivers an origin's messages on the
//! connection in that order. The old subscription got every message matching its pattern
//! up to the point it was removed, and nothing after; so a message that matches its pattern
//! and is numbered at most the highest number it gave from that origin is one it gave: a
//! copy. Exactly, with no window to guess.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hashbrown::HashMap;

use super::subject::nats_matches;

/// Origins remembered per subscription (nodes × shards, and the incarnations of nodes
/// that restarted); past this the one heard from least recently is forgotten (a copy of
/// its messages could then be taken twice: counted as an origin forgotten).
pub const ORIGINS_PER_SUBSCRIPTION_MAX: usize = 1024;

/// Subscriptions gone whose copies are still looked for. Copies sit in the newer
/// subscriptions' channels at the time of the removal, and the link reads them within
/// moments: after `DRAINED_KEPT` (or past `DRAINED_MAX` removals) they are forgotten.
pub const DRAINED_MAX: usize = 64;
pub const DRAINED_KEPT: Duration = Duration::from_secs(10);

/// Where a message was published: the node's incarnation (new at each start) and shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    pub incarnation: u64,
    pub shard: u16,
}

/// The highest number taken from each origin.
type Marks = HashMap<Origin, u64>;

/// A subscription gone: its pattern, what it gave, and when it went.
struct Drained {
    pattern: String,
    marks: Marks,
    at: Instant,
}

#[derive(Default)]
pub struct Copies {
    /// By live subscription.
    taken: HashMap<u64, Marks>,
    drained: VecDeque<Drained>,
}

impl Copies {
    /// Whether a message on `subject`, numbered `number` from `origin`, was taken already
    /// from a subscription that has gone since.
    pub fn is_copy(&mut self, subject: &str, origin: Origin, number: u64, now: Instant) -> bool {
        while (self.drained.front()).is_some_and(|d| now.duration_since(d.at) > DRAINED_KEPT) {
            self.drained.pop_front();
        }
        (self.drained.iter()).any(|d| {
            nats_matches(&d.pattern, subject) && d.marks.get(&origin).is_some_and(|&m| number <= m)
        })
    }

    /// A message numbered `number` from `origin` was taken from subscription `id`.
    pub fn took(&mut self, id: u64, origin: Origin, number: u64) {
        let marks = self.taken.entry(id).or_default();
        if let Some(mark) = marks.get_mut(&origin) {
            *mark = (*mark).max(number);
            return;
        }
        if marks.len() >= ORIGINS_PER_SUBSCRIPTION_MAX {
            let lowest = marks.iter().min_by_key(|(_, n)| **n).map(|(o, _)| *o);
            if let Some(lowest) = lowest {
                marks.remove(&lowest);
            }
        }
        marks.insert(origin, number);
    }

    /// Subscription `id`, for `pattern`, has gone and given everything it had.
    pub fn drained(&mut self, id: u64, pattern: String, now: Instant) {
        let marks = self.taken.remove(&id).unwrap_or_default();
        if marks.is_empty() {
            return;
        }
        if self.drained.len() >= DRAINED_MAX {
            self.drained.pop_front();
        }
        self.drained.push_back(Drained {
            pattern,
            marks,
            at: now,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Origin = Origin {
        incarnation: 1,
        shard: 0,
    };
    const B: Origin = Origin {
        incarnation: 1,
        shard: 1,
    };

    #[test]
    fn what_a_gone_subscription_gave_is_a_copy_and_nothing_else() {
        let now = Instant::now();
        let mut c = Copies::default();
        // Sparse numbers: the origin published much in between that this node never saw.
        c.took(1, A, 5);
        c.took(1, A, 9000);
        c.took(2, A, 9001);
        assert!(!c.is_copy("m.a.b", A, 5, now), "no subscription gone yet");
        c.drained(1, "m.a.>".into(), now);
        assert!(c.is_copy("m.a.b", A, 5, now));
        assert!(c.is_copy("m.a.b", A, 9000, now));
        assert!(!c.is_copy("m.a.b", A, 9001, now), "after what it gave");
        assert!(!c.is_copy("m.x", A, 5, now), "not its pattern");
        assert!(!c.is_copy("m.a.b", B, 5, now), "not an origin it gave");
        let later = now + DRAINED_KEPT + Duration::from_secs(1);
        assert!(!c.is_copy("m.a.b", A, 5, later), "forgotten after a while");
    }

    #[test]
    fn what_is_remembered_is_bounded() {
        let now = Instant::now();
        let mut c = Copies::default();
        for i in 0..(ORIGINS_PER_SUBSCRIPTION_MAX as u64 + 10) {
            let origin = Origin {
                incarnation: i,
                shard: 0,
            };
            c.took(1, origin, i);
        }
        assert_eq!(c.taken[&1].len(), ORIGINS_PER_SUBSCRIPTION_MAX);
        for id in 0..(DRAINED_MAX as u64 + 10) {
            c.took(id + 10, A, 1);
            c.drained(id + 10, "m.>".into(), now);
        }
        assert_eq!(c.drained.len(), DRAINED_MAX);
    }
}
