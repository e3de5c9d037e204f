//! The sessions moving through a shard: those it handed on, whose deliveries it forwards
//! until every shard's marker has passed through it, and those that arrived and wait for
//! the old routes to drain (`handover/mod.rs` tells the protocol). Bookkeeping and its
//! rules, no I/O: the shard carries out what they decide (`handover/settling.rs`).

use std::collections::VecDeque;
use std::sync::Arc;

use hashbrown::HashMap;

use crate::types::{Message, SessionId, Target};

/// Messages one settling session may hold; past it, more are dropped and counted (a move
/// takes a few mailbox hops, so this is never reached but under a flood).
const HELD_MAX: usize = 65_536;

/// A request for a session (from shard `to`, for a connection whose claim is `claim`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub client_id: Arc<str>,
    pub to: usize,
    pub clean_start: bool,
    pub claim: u64,
}

/// A message held for a settling session: with persistence, with the number it was
/// journaled under as passed to this shard itself.
pub struct Held {
    pub message: Arc<Message>,
    pub target: Target,
    pub number: Option<u64>,
}

/// A session that arrived here and waits for the old route to drain.
pub struct Settling {
    /// `Flushed` markers still to come (one per shard).
    markers_missing: usize,
    /// What came straight here meanwhile, in arrival order.
    pub held: VecDeque<Held>,
    /// The latest request for the session that came meanwhile: answered once settled.
    pub deferred: Option<Request>,
}

/// A session handed to another shard: deliveries for it are forwarded there until every
/// shard's `Flushed` marker has passed through.
struct Moved {
    to: usize,
    markers_passed: usize,
}

/// What a `Flushed` marker means here.
pub enum Marker {
    /// The last one for a session settling here: it has settled.
    Settled(Settling),
    /// One more for a session settling here.
    Counted,
    /// For a session that moved on: it goes after it, to that shard.
    PassOn(usize),
    /// For a session neither here nor moved from here.
    Stray,
}

#[derive(Default)]
pub struct Moves {
    moved: HashMap<SessionId, Moved>,
    settling: HashMap<SessionId, Settling>,
    /// Sessions that began settling this turn, with the shard they came from: their marker
    /// requests go out once the turn's trie changes are published.
    began: Vec<(SessionId, usize)>,
}

impl Moves {
    /// The shard a session handed on from here is forwarded to, while it settles there.
    pub fn moved_to(&self, id: SessionId) -> Option<usize> {
        self.moved.get(&id).map(|m| m.to)
    }

    /// Session `id` is handed to shard `to`.
    pub fn handed_on(&mut self, id: SessionId, to: usize) {
        let moved = Moved {
            to,
            markers_passed: 0,
        };
        self.moved.insert(id, moved);
    }

    /// Whether any session is settling here (almost never: checked before any look-up on
    /// the delivery path).
    pub fn any_settling(&self) -> bool {
        !self.settling.is_empty()
    }

    pub fn is_settling(&self, id: SessionId) -> bool {
        self.settling.contains_key(&id)
    }

    /// Session `id` arrived from `origin`: it settles here until the markers of all
    /// `shards` have come.
    pub fn begin_settling(&mut self, id: SessionId, origin: usize, shards: usize) {
        let settling = Settling {
            markers_missing: shards,
            held: VecDeque::new(),
            deferred: None,
        };
        self.settling.insert(id, settling);
        self.began.push((id, origin));
    }

    /// The sessions that began settling since the last call, with where they came from.
    pub fn take_began(&mut self) -> Vec<(SessionId, usize)> {
        std::mem::take(&mut self.began)
    }

    /// A marker for session `id` arrived (of `shards` in all).
    pub fn marker(&mut self, id: SessionId, shards: usize) -> Marker {
        if let Some(settling) = self.settling.get_mut(&id) {
            settling.markers_missing -= 1;
            if settling.markers_missing > 0 {
                return Marker::Counted;
            }
            let settled = self.settling.remove(&id).expect("just found");
            return Marker::Settled(settled);
        }
        let Some(moved) = self.moved.get_mut(&id) else {
            return Marker::Stray;
        };
        let to = moved.to;
        moved.markers_passed += 1;
        if moved.markers_passed == shards {
            // Every shard's old route has drained through here: nothing more to forward.
            self.moved.remove(&id);
        }
        Marker::PassOn(to)
    }

    /// Whether session `id` settles here, and if so whether it has room for one more held
    /// message.
    pub fn room_to_hold(&self, id: SessionId) -> Option<bool> {
        self.settling.get(&id).map(|s| s.held.len() < HELD_MAX)
    }

    /// Holds `held` for session `id`, settling here.
    pub fn hold(&mut self, id: SessionId, held: Held) {
        if let Some(settling) = self.settling.get_mut(&id) {
            settling.held.push_back(held);
        }
    }

    /// A request for session `id`, settling here: kept for when it has settled if it is the
    /// latest; returns the request that has lost, and the claim it lost to.
    pub fn defer(&mut self, id: SessionId, request: Request) -> Option<(Request, u64)> {
        let settling = self.settling.get_mut(&id)?;
        match settling.deferred.take() {
            Some(kept) if kept.claim > request.claim => {
                let by = kept.claim;
                settling.deferred = Some(kept);
                Some((request, by))
            }
            earlier => {
                let by = request.claim;
                settling.deferred = Some(request);
                earlier.map(|e| (e, by))
            }
        }
    }

    /// Panics if a session moved from here is also held here (it moves on only once
    /// settled, and only from where it is held: it never comes back to a shard still
    /// forwarding for it).
    pub fn check_invariants(&self, held_here: impl Fn(&SessionId) -> bool) {
        for id in self.moved.keys() {
            assert!(!held_here(id), "session {id:?} moved but still here");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(claim: u64) -> Request {
        Request {
            client_id: "c".into(),
            to: 1,
            clean_start: false,
            claim,
        }
    }

    #[test]
    fn a_session_settles_with_the_last_shards_marker() {
        let mut moves = Moves::default();
        let id = SessionId::new(4);
        moves.begin_settling(id, 1, 3);
        assert_eq!(moves.take_began(), [(id, 1)]);
        assert!(matches!(moves.marker(id, 3), Marker::Counted));
        assert!(matches!(moves.marker(id, 3), Marker::Counted));
        assert!(matches!(moves.marker(id, 3), Marker::Settled(_)));
        assert!(!moves.any_settling());
        assert!(matches!(moves.marker(id, 3), Marker::Stray));
    }

    #[test]
    fn a_moved_session_is_forwarded_until_every_marker_passed() {
        let mut moves = Moves::default();
        let id = SessionId::new(4);
        moves.handed_on(id, 1);
        for _ in 0..2 {
            assert!(matches!(moves.marker(id, 3), Marker::PassOn(1)));
            assert_eq!(moves.moved_to(id), Some(1));
        }
        // The third shard's marker is the last: nothing more is forwarded.
        assert!(matches!(moves.marker(id, 3), Marker::PassOn(1)));
        assert_eq!(moves.moved_to(id), None);
        assert!(matches!(moves.marker(id, 3), Marker::Stray));
    }

    #[test]
    fn of_two_requests_while_settling_the_later_claim_is_kept() {
        let mut moves = Moves::default();
        let id = SessionId::new(4);
        moves.begin_settling(id, 0, 2);
        assert_eq!(moves.defer(id, request(5)), None);
        assert_eq!(moves.defer(id, request(3)), Some((request(3), 5)));
        assert_eq!(moves.defer(id, request(9)), Some((request(5), 9)));
        let Marker::Counted = moves.marker(id, 2) else {
            panic!("one marker of two")
        };
        let Marker::Settled(settled) = moves.marker(id, 2) else {
            panic!("settled")
        };
        assert_eq!(settled.deferred, Some(request(9)));
    }
}
