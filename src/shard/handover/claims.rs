//! What a shard knows of the claims on a client id whose session is on its way: the
//! connection waiting here for it, the requests this shard has out for it, and the answer it
//! owes another shard's later claim. Bookkeeping and the rules between them, no I/O: the
//! shard sends what they decide (`handover/mod.rs`).
//!
//! Claims are numbered in the order connections were made (`Shared::registry`), and the
//! latest claim wins the session. A request is only ever sent to the shard of the claim made
//! just before it, so along any chain of answers waiting on answers the claims decrease: no
//! two shards wait on each other.

use std::sync::Arc;

use hashbrown::HashMap;
use smallvec::SmallVec;

use crate::types::ConnId;

/// An answer this shard waits for, for a connection that lost to a later claim elsewhere:
/// it goes on to that claim (a session in it settles here first, then is handed on as any
/// other: see `on_handoff`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forward {
    /// The claim this shard asked for.
    pub asked: u64,
    /// Where the answer goes, as the answer to which claim, and whether that claim's
    /// connection starts clean.
    pub to: usize,
    pub claim: u64,
    pub clean_start: bool,
}

#[derive(Default)]
pub struct Claims {
    /// Client ids whose session this shard asked for and has not received, with the
    /// connection waiting for it (the newest, if the client connected again meanwhile) and
    /// its claim number.
    waiting: HashMap<Arc<str>, (ConnId, u64)>,
    /// Client ids whose session this shard asked for, with the claims it asked under that
    /// have no answer yet (each request is answered: requests and answers are never
    /// dropped). While one is out, the session may still come here.
    asked: HashMap<Arc<str>, SmallVec<[u64; 2]>>,
    /// The answer owed to another shard's later claim, waiting on a request of this
    /// shard's own: one per client id at most (a later request makes the earlier lose).
    owed: HashMap<Arc<str>, Forward>,
}

impl Claims {
    /// The connection waiting here for the session of `client_id`, and its claim.
    pub fn waiting(&self, client_id: &str) -> Option<(ConnId, u64)> {
        self.waiting.get(client_id).copied()
    }

    /// Whether the session of `client_id` may be on its way here: a connection waits for
    /// it, or a request of this shard is out.
    pub fn on_its_way(&self, client_id: &str) -> bool {
        self.waiting.contains_key(client_id) || self.asked.contains_key(client_id)
    }

    /// A connection here waits for the session under `claim`. Returns the connection that
    /// waited before it (it has lost), and the answer owed here to an earlier claim (it has
    /// lost to this one: held for this shard's requests, two shards that owed each other
    /// an answer would wait for ever).
    pub fn wait(
        &mut self,
        client_id: &Arc<str>,
        conn: ConnId,
        claim: u64,
    ) -> (Option<ConnId>, Option<Forward>) {
        let earlier = self.waiting.insert(client_id.clone(), (conn, claim));
        (
            earlier.map(|(conn, _)| conn),
            self.superseded(client_id, claim),
        )
    }

    /// The connection waiting for the session of `client_id` stops waiting (it takes the
    /// session, or has lost).
    pub fn stop_waiting(&mut self, client_id: &str) -> Option<(ConnId, u64)> {
        self.waiting.remove(client_id)
    }

    /// This shard asks for the session of `client_id` under `claim`.
    pub fn ask(&mut self, client_id: &Arc<str>, claim: u64) {
        self.asked.entry(client_id.clone()).or_default().push(claim);
    }

    /// This shard's request under `claim` is answered; another still out, if any.
    pub fn answered(&mut self, client_id: &str, claim: u64) -> Option<u64> {
        let list = self.asked.get_mut(client_id)?;
        list.retain(|&mut c| c != claim);
        let other = list.last().copied();
        if other.is_none() {
            self.asked.remove(client_id);
        }
        other
    }

    /// The latest claim for `client_id` this shard knows of without holding its session:
    /// of a connection waiting here, of a request of its own, or of one it owes an answer.
    /// A request for the session under an older claim has lost to it.
    pub fn latest(&self, client_id: &str) -> Option<u64> {
        let waiting = self.waiting.get(client_id).map(|&(_, mine)| mine);
        let asked = (self.asked.get(client_id)).and_then(|a| a.iter().max().copied());
        let owed = self.owed.get(client_id).map(|f| f.claim);
        waiting.max(asked).max(owed)
    }

    /// A request of this shard's own still out for `client_id` (the latest made).
    pub fn asking(&self, client_id: &str) -> Option<u64> {
        self.asked.get(client_id).and_then(|a| a.last().copied())
    }

    /// The answer to this shard's request `f.asked` goes on to `f.claim`. Returns the answer
    /// owed before, to an earlier claim: it has lost.
    pub fn owe(&mut self, client_id: Arc<str>, f: Forward) -> Option<Forward> {
        debug_assert!(self
            .asked
            .get(&client_id)
            .is_some_and(|a| a.contains(&f.asked)));
        let before = self.owed.insert(client_id, f);
        debug_assert!(before.is_none_or(|b| b.claim < f.claim));
        before
    }

    /// The answer owed for `client_id` if it waits on this shard's request `asked`.
    pub fn take_owed_on(&mut self, client_id: &str, asked: u64) -> Option<Forward> {
        match self.owed.get(client_id) {
            Some(f) if f.asked == asked => self.owed.remove(client_id),
            _ => None,
        }
    }

    /// The answer owed for `client_id`, whichever request it waits on.
    pub fn take_owed(&mut self, client_id: &str) -> Option<Forward> {
        self.owed.remove(client_id)
    }

    /// The answer owed for `client_id` if its claim is older than `claim`: it has lost.
    pub fn superseded(&mut self, client_id: &str, claim: u64) -> Option<Forward> {
        match self.owed.get(client_id) {
            Some(f) if f.claim < claim => self.owed.remove(client_id),
            _ => None,
        }
    }

    /// Panics if the bookkeeping disagrees with itself: an answer owed waits on a request
    /// still out.
    pub fn check_invariants(&self) {
        for (client, f) in &self.owed {
            assert!(
                self.asked.get(client).is_some_and(|a| a.contains(&f.asked)),
                "{client}: an answer owed on request {}, which is not out",
                f.asked
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(slot: usize) -> ConnId {
        ConnId::new(slot, 1)
    }

    fn forward(asked: u64, claim: u64) -> Forward {
        Forward {
            asked,
            to: 2,
            claim,
            clean_start: false,
        }
    }

    #[test]
    fn a_later_connection_replaces_the_waiting_one_and_supersedes_what_is_owed() {
        let mut claims = Claims::default();
        let id: Arc<str> = "c".into();
        assert_eq!(claims.wait(&id, conn(1), 5), (None, None));
        claims.ask(&id, 5);
        // A later claim elsewhere: this shard's connection has lost, the answer goes on.
        claims.stop_waiting(&id);
        assert_eq!(claims.owe(id.clone(), forward(5, 8)), None);
        assert_eq!(claims.latest(&id), Some(8));
        // The client connects here again, later still: what was owed has lost to it.
        assert_eq!(claims.wait(&id, conn(2), 9), (None, Some(forward(5, 8))));
        assert_eq!(claims.wait(&id, conn(3), 10), (Some(conn(2)), None));
        assert!(claims.on_its_way(&id));
        claims.check_invariants();
    }

    #[test]
    fn a_request_answered_leaves_the_others_out() {
        let mut claims = Claims::default();
        let id: Arc<str> = "c".into();
        claims.ask(&id, 3);
        claims.ask(&id, 7);
        assert_eq!(claims.latest(&id), Some(7));
        assert_eq!(claims.answered(&id, 7), Some(3));
        assert_eq!(claims.asking(&id), Some(3));
        assert_eq!(claims.answered(&id, 3), None);
        assert!(!claims.on_its_way(&id));
        assert_eq!(claims.latest(&id), None);
    }

    #[test]
    fn a_later_request_owed_here_makes_the_earlier_lose() {
        let mut claims = Claims::default();
        let id: Arc<str> = "c".into();
        claims.ask(&id, 3);
        assert_eq!(claims.owe(id.clone(), forward(3, 6)), None);
        assert_eq!(claims.owe(id.clone(), forward(3, 8)), Some(forward(3, 6)));
        claims.check_invariants();
        assert_eq!(claims.latest(&id), Some(8));
        assert_eq!(claims.superseded(&id, 8), None);
        assert_eq!(claims.take_owed_on(&id, 4), None, "waits on request 3");
        assert_eq!(claims.superseded(&id, 9), Some(forward(3, 8)));
        assert_eq!(claims.take_owed(&id), None);
    }

    #[test]
    fn what_is_owed_is_taken_by_the_answer_it_waits_on() {
        let mut claims = Claims::default();
        let id: Arc<str> = "c".into();
        // Two connections here asked (the second where a later claim was made meanwhile);
        // a request with a later claim still waits on the latest of them.
        claims.ask(&id, 3);
        claims.ask(&id, 4);
        let asked = claims.asking(&id).unwrap();
        assert_eq!(claims.owe(id.clone(), forward(asked, 6)), None);
        assert_eq!(claims.take_owed_on(&id, 3), None);
        assert_eq!(claims.take_owed_on(&id, 4), Some(forward(4, 6)));
        assert_eq!(claims.take_owed(&id), None);
    }
}
