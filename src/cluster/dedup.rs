//! Each message reaches a node once, whatever overlapping NATS subscriptions deliver it.
//!
//! A node publishes every message with its origin (the node's incarnation and the shard
//! that published it) and a number counting up per origin. A receiver keeps, per origin,
//! which of the latest `WINDOW` numbers it has taken; a number seen again, or older than
//! the window, is a copy.

use hashbrown::HashMap;

/// Numbers remembered per origin. A copy arrives at most a subscription channel's length
/// after the first (`link::SUBSCRIPTION_CAPACITY`), so it is always inside the window.
pub const WINDOW: u64 = 64 * 64;

/// Origins remembered (nodes × shards, and the incarnations of nodes that restarted); the
/// one heard from longest ago makes room.
pub const ORIGINS_MAX: usize = 4096;

/// Where a message was published: the node's incarnation (new at each start) and shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    pub incarnation: u64,
    pub shard: u16,
}

struct Window {
    /// The highest number taken.
    highest: u64,
    /// Bit `n % WINDOW` set: number `n` (within `WINDOW` of `highest`) was taken.
    taken: [u64; (WINDOW / 64) as usize],
    /// When this origin was last heard from (a count of messages, for eviction).
    last_heard: u64,
}

impl Window {
    fn bit(number: u64) -> (usize, u64) {
        let at = number % WINDOW;
        ((at / 64) as usize, 1 << (at % 64))
    }

    fn clear(&mut self, number: u64) {
        let (word, mask) = Window::bit(number);
        self.taken[word] &= !mask;
    }
}

#[derive(Default)]
pub struct Dedup {
    windows: HashMap<Origin, Window>,
    heard: u64,
}

impl Dedup {
    /// Whether message `number` of `origin` is new (and now taken); false for a copy.
    pub fn first_time(&mut self, origin: Origin, number: u64) -> bool {
        self.heard += 1;
        let heard = self.heard;
        if !self.windows.contains_key(&origin) && self.windows.len() >= ORIGINS_MAX {
            let oldest = self
                .windows
                .iter()
                .min_by_key(|(_, w)| w.last_heard)
                .map(|(o, _)| *o);
            if let Some(oldest) = oldest {
                self.windows.remove(&oldest);
            }
        }
        let window = self.windows.entry(origin).or_insert_with(|| Window {
            highest: number,
            taken: [0; (WINDOW / 64) as usize],
            last_heard: heard,
        });
        window.last_heard = heard;
        if number > window.highest {
            // The numbers that leave the window are forgotten; those now inside it are
            // not taken yet.
            let skipped = (number - window.highest).min(WINDOW);
            for n in (number - skipped + 1)..=number {
                window.clear(n);
            }
            window.highest = number;
        } else if window.highest - number >= WINDOW {
            return false;
        }
        let (word, mask) = Window::bit(number);
        if window.taken[word] & mask != 0 {
            return false;
        }
        window.taken[word] |= mask;
        true
    }

    pub fn origins(&self) -> usize {
        self.windows.len()
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
    fn a_copy_is_seen_once_in_any_order() {
        let mut d = Dedup::default();
        assert!(d.first_time(A, 5));
        assert!(d.first_time(A, 7));
        assert!(d.first_time(A, 6));
        assert!(!d.first_time(A, 6));
        assert!(!d.first_time(A, 5));
        assert!(d.first_time(B, 5), "another origin counts its own");
        assert!(d.first_time(A, 8));
        assert!(!d.first_time(A, 7));
    }

    #[test]
    fn a_number_older_than_the_window_is_a_copy() {
        let mut d = Dedup::default();
        assert!(d.first_time(A, 1));
        assert!(d.first_time(A, 1 + WINDOW));
        assert!(!d.first_time(A, 1));
        assert!(d.first_time(A, 2), "inside the window, not yet taken");
        assert!(d.first_time(A, 10 * WINDOW));
        assert!(d.first_time(A, 10 * WINDOW - 1));
        assert!(!d.first_time(A, 1 + WINDOW));
    }

    #[test]
    fn origins_are_bounded() {
        let mut d = Dedup::default();
        for i in 0..(ORIGINS_MAX as u64 + 10) {
            let origin = Origin {
                incarnation: i,
                shard: 0,
            };
            assert!(d.first_time(origin, 1));
        }
        assert_eq!(d.origins(), ORIGINS_MAX);
    }
}
