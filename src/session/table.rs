//! A shard's session table: every session the shard holds, found by id (every delivery) and
//! by client id (CONNECT, handoffs), with what belongs to them all: the record of what
//! changed in them (`Changes`, for the journal and the simulation's check) and the timers of
//! their expiry and their delayed wills (`next_expired`, `next_due_will`).
//!
//! The sessions are boxed in one table, hashed by id; an index holds their ids, hashed by
//! client id. Neither keeps a key of its own: the table compares the session's id, the index
//! the client id of the session it names. An entry is 8 bytes in each (a `HashMap` keyed by
//! id took 16, one by `Arc<str>` client id 24), and with the tables at 50-90 % load that is
//! ~40 bytes less per connection, on a shard that holds hundreds of thousands of them.
//! The two cannot disagree: a session goes in and out of both at once.

use hashbrown::{DefaultHashBuilder, HashTable};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use super::{Changes, Session};
use crate::codec::Will;
use crate::types::SessionId;

#[derive(Default)]
pub struct Table {
    by_id: HashTable<Box<Session>>,
    /// The ids of `by_id`'s sessions, hashed by their client ids. A session's client id
    /// never changes while it is here (it is its key).
    by_client: HashTable<SessionId>,
    hasher: DefaultHashBuilder,
    /// What changed in the sessions since the journal last took it.
    changes: Changes,
    /// When offline sessions end, soonest first. An entry goes stale when its session
    /// resumes, moves or is rescheduled: the session's own `expires_at` decides.
    expiries: BinaryHeap<Reverse<(Instant, SessionId)>>,
    /// When delayed wills are due, soonest first (stale as `expiries`).
    wills: BinaryHeap<Reverse<(Instant, SessionId)>>,
}

/// Session `id` in `by_id` (a free function, so that the index's closures can call it while
/// the index is borrowed).
fn find<'a>(
    by_id: &'a HashTable<Box<Session>>,
    hasher: &DefaultHashBuilder,
    id: SessionId,
) -> Option<&'a Session> {
    by_id
        .find(hasher.hash_one(id), |s| s.id == id)
        .map(|s| &**s)
}

impl Table {
    fn client_hash(&self, client_id: &str) -> u64 {
        self.hasher.hash_one(client_id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn get(&self, id: &SessionId) -> Option<&Session> {
        find(&self.by_id, &self.hasher, *id)
    }

    pub fn get_mut(&mut self, id: &SessionId) -> Option<&mut Session> {
        let hash = self.hasher.hash_one(*id);
        self.by_id.find_mut(hash, |s| s.id == *id).map(|s| &mut **s)
    }

    pub fn contains_key(&self, id: &SessionId) -> bool {
        self.get(id).is_some()
    }

    /// The session of `client_id` held here, if any.
    pub fn id_of(&self, client_id: &str) -> Option<SessionId> {
        let (by_id, hasher) = (&self.by_id, &self.hasher);
        self.by_client
            .find(self.client_hash(client_id), |id| {
                find(by_id, hasher, *id).is_some_and(|s| &*s.client_id == client_id)
            })
            .copied()
    }

    /// Adds `session`. Its id and its client id must be new here: session ids are never
    /// reused, and a shard holds one session per client id (the caller takes out any earlier
    /// one first).
    pub fn insert(&mut self, session: Box<Session>) {
        debug_assert!(
            self.id_of(&session.client_id).is_none(),
            "a second session of {} on one shard",
            session.client_id
        );
        debug_assert!(!self.contains_key(&session.id), "session inserted twice");
        let id = session.id;
        let id_hash = self.hasher.hash_one(id);
        let client_hash = self.client_hash(&session.client_id);
        let hasher = &self.hasher;
        self.by_id
            .insert_unique(id_hash, session, |s| hasher.hash_one(s.id));
        let by_id = &self.by_id;
        self.by_client.insert_unique(client_hash, id, |other| {
            // Growing rehashes each entry by its session's client id: every id here names
            // a session in `by_id` (both are changed together, `by_id` first on insert).
            let session = find(by_id, hasher, *other).expect("every indexed id names a session");
            hasher.hash_one(&*session.client_id)
        });
    }

    /// Takes session `id` out of both.
    pub fn remove(&mut self, id: &SessionId) -> Option<Box<Session>> {
        let hash = self.hasher.hash_one(*id);
        let session = self
            .by_id
            .find_entry(hash, |s| s.id == *id)
            .ok()?
            .remove()
            .0;
        let client_hash = self.client_hash(&session.client_id);
        if let Ok(entry) = self.by_client.find_entry(client_hash, |other| other == id) {
            entry.remove();
        } else {
            debug_assert!(false, "session {id:?} was not indexed by its client id");
        }
        Some(session)
    }

    pub fn values(&self) -> impl Iterator<Item = &Session> {
        self.by_id.iter().map(|s| &**s)
    }

    /// The client ids of the sessions held here.
    pub fn client_ids(&self) -> impl Iterator<Item = &std::sync::Arc<str>> {
        self.values().map(|s| &s.client_id)
    }

    /// Session `id`, with the record its changes go to.
    pub fn recording(&mut self, id: &SessionId) -> Option<(&mut Session, &mut Changes)> {
        let hash = self.hasher.hash_one(*id);
        let session = self.by_id.find_mut(hash, |s| s.id == *id)?;
        Some((&mut **session, &mut self.changes))
    }

    /// Every session, to change in place (never its client id, which is its key), with the
    /// record their changes go to.
    pub fn values_recording(&mut self) -> (impl Iterator<Item = &mut Session>, &mut Changes) {
        (self.by_id.iter_mut().map(|s| &mut **s), &mut self.changes)
    }

    /// The record of what changed in the sessions.
    pub fn changes(&mut self) -> &mut Changes {
        &mut self.changes
    }

    /// Starts session `id`'s expiry clock, offline since `since` (`Session::start_expiry`).
    pub fn start_expiry(
        &mut self,
        id: SessionId,
        since: Instant,
        persistent_expiration: Option<Duration>,
    ) {
        let Some(session) = self.get_mut(&id) else {
            return;
        };
        if let Some(at) = session.start_expiry(since, persistent_expiration) {
            self.expiries.push(Reverse((at, id)));
        }
    }

    /// The next session whose expiry has come by `now`, if any (taken off the timer; the
    /// session stays until the caller ends it).
    pub fn next_expired(&mut self, now: Instant) -> Option<SessionId> {
        while let Some(Reverse((at, id))) = self.expiries.peek().copied() {
            if at > now {
                return None;
            }
            self.expiries.pop();
            if self.get(&id).is_some_and(|s| s.expires_at(at)) {
                return Some(id);
            }
        }
        None
    }

    /// Session `id`'s will is due at `due`, unless its client comes back first.
    pub fn schedule_will(&mut self, id: SessionId, due: Instant) {
        self.wills.push(Reverse((due, id)));
    }

    /// The next delayed will due by `now`, taken from its session (one cancelled by a
    /// resume is not).
    pub fn next_due_will(&mut self, now: Instant) -> Option<(SessionId, Will)> {
        while let Some(Reverse((at, id))) = self.wills.peek().copied() {
            if at > now {
                return None;
            }
            self.wills.pop();
            if let Some(will) = self.get_mut(&id).and_then(|s| s.take_due_will(at)) {
                return Some((id, will));
            }
        }
        None
    }

    /// Whether the index names exactly the sessions held (for the invariant checks).
    pub fn check_index(&self) {
        assert_eq!(self.by_client.len(), self.by_id.len());
        for session in self.values() {
            assert_eq!(
                self.id_of(&session.client_id),
                Some(session.id),
                "session {:?} of {} is not the one its client id names",
                session.id,
                session.client_id
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::ProtocolVersion;
    use std::sync::Arc;
    use std::time::Duration;

    fn session(id: u64, client_id: &str) -> Box<Session> {
        Box::new(Session::new(
            SessionId::new(id),
            Arc::from(client_id),
            ProtocolVersion::V311,
            false,
        ))
    }

    #[test]
    fn sessions_are_found_by_id_and_by_client_id_through_growth_and_removal() {
        let mut sessions = Table::default();
        for i in 1..=1000 {
            sessions.insert(session(i, &format!("client-{i}")));
        }
        assert_eq!(sessions.len(), 1000);
        for i in (1..=1000).step_by(2) {
            let removed = sessions.remove(&SessionId::new(i)).expect("held");
            assert_eq!(&*removed.client_id, format!("client-{i}"));
        }
        assert_eq!(sessions.len(), 500);
        for i in 1..=1000 {
            let held = i % 2 == 0;
            assert_eq!(sessions.contains_key(&SessionId::new(i)), held);
            assert_eq!(
                sessions.id_of(&format!("client-{i}")),
                held.then_some(SessionId::new(i))
            );
        }
        assert!(sessions.remove(&SessionId::new(1)).is_none());
        // A client id comes back under a new session id.
        sessions.insert(session(5000, "client-1"));
        assert_eq!(sessions.id_of("client-1"), Some(SessionId::new(5000)));
        sessions
            .get_mut(&SessionId::new(5000))
            .expect("held")
            .set_listener(3);
        assert_eq!(
            sessions.get(&SessionId::new(5000)).map(|s| s.listener()),
            Some(3)
        );
        sessions.check_index();
    }

    #[test]
    fn an_offline_session_expires_when_due_unless_it_resumed_or_was_rescheduled() {
        let mut table = Table::default();
        let now = Instant::now();
        let (a, b, c) = (SessionId::new(1), SessionId::new(2), SessionId::new(3));
        for (id, name, interval) in [(a, "a", 10), (b, "b", 20), (c, "c", 30)] {
            let mut s = session(id.get(), name);
            s.version = ProtocolVersion::V5;
            s.expiry_interval_s = interval;
            table.insert(s);
            table.start_expiry(id, now, None);
        }
        let never = session(4, "never");
        table.insert(never);
        table.start_expiry(SessionId::new(4), now, None);
        // b comes back; c's clock starts again later.
        table.get_mut(&b).expect("held").resumed();
        table.start_expiry(c, now + Duration::from_secs(60), None);
        assert_eq!(table.next_expired(now + Duration::from_secs(9)), None);
        assert_eq!(table.next_expired(now + Duration::from_secs(60)), Some(a));
        assert_eq!(
            table.next_expired(now + Duration::from_secs(60)),
            None,
            "b resumed"
        );
        assert_eq!(table.next_expired(now + Duration::from_secs(89)), None);
        assert_eq!(table.next_expired(now + Duration::from_secs(90)), Some(c));
        assert_eq!(table.next_expired(now + Duration::from_secs(1 << 30)), None);
    }

    #[test]
    fn a_delayed_will_is_due_once_and_not_after_its_client_came_back() {
        let mut table = Table::default();
        let now = Instant::now();
        let will = || crate::codec::Will {
            qos: crate::codec::QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
            topic: crate::codec::MqttStr::from_static("gone"),
            payload: Default::default(),
        };
        let (a, b) = (SessionId::new(1), SessionId::new(2));
        for (id, name) in [(a, "a"), (b, "b")] {
            let due = now + Duration::from_secs(id.get());
            let mut s = session(id.get(), name);
            s.delayed_will = Some(Box::new((due, will())));
            table.insert(s);
            table.schedule_will(id, due);
        }
        table.get_mut(&b).expect("held").resumed();
        assert!(table.next_due_will(now).is_none());
        let (id, will) = table
            .next_due_will(now + Duration::from_secs(5))
            .expect("a's");
        assert_eq!((id, &*will.topic), (a, "gone"));
        assert!(
            table.next_due_will(now + Duration::from_secs(5)).is_none(),
            "b resumed"
        );
        assert!(table.get(&a).expect("held").delayed_will.is_none());
    }

    #[test]
    fn changes_made_through_the_table_are_recorded() {
        let mut table = Table::default();
        table.insert(session(1, "a"));
        table.changes().record(true);
        let (s, changes) = table.recording(&SessionId::new(1)).expect("held");
        s.awaiting_pubrel(7, changes);
        let (sessions, changes) = table.values_recording();
        for s in sessions {
            s.pubrel(7, changes);
        }
        assert_eq!(table.changes().take().len(), 2);
        assert!(table.recording(&SessionId::new(2)).is_none());
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "a second session of twin")]
    fn a_client_id_has_one_session_per_shard() {
        let mut sessions = Table::default();
        sessions.insert(session(1, "twin"));
        sessions.insert(session(2, "twin"));
    }
}
