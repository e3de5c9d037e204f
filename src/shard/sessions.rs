//! A shard's sessions, found by id (every delivery) and by client id (CONNECT, handoffs).
//!
//! One table holds the boxed sessions, hashed by id; an index holds their ids, hashed by
//! client id. Neither keeps a key of its own: the table compares the session's id, the index
//! the client id of the session it names. An entry is 8 bytes in each (a `HashMap` keyed by
//! id took 16, one by `Arc<str>` client id 24), and with the tables at 50-90 % load that is
//! ~40 bytes less per connection, on a shard that holds hundreds of thousands of them.
//! The two cannot disagree: a session goes in and out of both at once.

use hashbrown::{DefaultHashBuilder, HashTable};
use std::hash::BuildHasher;

use crate::session::Session;
use crate::types::SessionId;

#[derive(Default)]
pub struct Sessions {
    by_id: HashTable<Box<Session>>,
    /// The ids of `by_id`'s sessions, hashed by their client ids. A session's client id
    /// never changes while it is here (it is its key).
    by_client: HashTable<SessionId>,
    hasher: DefaultHashBuilder,
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

impl Sessions {
    fn client_hash(&self, client_id: &str) -> u64 {
        self.hasher.hash_one(client_id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
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

    /// Every session, to change in place (never its client id, which is its key).
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Session> {
        self.by_id.iter_mut().map(|s| &mut **s)
    }

    /// The client ids of the sessions held here.
    pub fn client_ids(&self) -> impl Iterator<Item = &std::sync::Arc<str>> {
        self.values().map(|s| &s.client_id)
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
        let mut sessions = Sessions::default();
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
    #[cfg(debug_assertions)]
    #[should_panic(expected = "a second session of twin")]
    fn a_client_id_has_one_session_per_shard() {
        let mut sessions = Sessions::default();
        sessions.insert(session(1, "twin"));
        sessions.insert(session(2, "twin"));
    }
}
