//! A session moving between shards (a client reconnecting on another shard), and keeping
//! its messages in order while it moves.
//!
//! The shard holding the session (A) hands it to the shard that asked (B) and from then on
//! forwards what is delivered to it there. B points the session's subscriptions at itself;
//! but a message routed before that (with the old trie snapshot) goes to A and reaches B
//! only through A, later than one routed after it straight to B. So B *settles* the
//! session: it holds what comes straight to it for that session, and asks every shard X to
//! send a `Flushed` marker to A, behind whatever X sent A before it; A passes the markers on
//! behind its forwards. When B has the markers of every shard, every message routed the old
//! way has reached it: it releases what it held, in order [MQTT-4.6.0-6], and A stops
//! forwarding. A session that is settling is not handed on until it has settled, so moves
//! never overlap; and a session that reaches a shard whose own connection has meanwhile
//! lost to a later claim elsewhere settles there too before it goes on to that claim (it
//! never passes through a shard, so no shard forwards for it twice at once).

use std::sync::Arc;

mod claims;
mod moves;
mod settling;

pub use claims::{Claims, Forward};
pub use moves::Moves;
use moves::Request;

/// A shard's part in moving sessions between shards.
#[derive(Default)]
pub struct Handover {
    /// Sessions moving through this shard: handed on and forwarded for, or arrived and
    /// settling (`moves.rs`).
    pub moves: Moves,
    /// The claims on client ids whose sessions are on their way: connections waiting here,
    /// requests out, answers owed (`claims.rs`).
    pub claims: Claims,
}

use super::io::Backend;
use super::trie_ops::TrieOp;
use super::Shard;
use crate::router::{Receipt, SessionBox, ShardMsg};
use crate::session::Session;
use crate::types::{ConnId, SessionId};

impl<B: Backend> Shard<B> {
    /// Another shard (`to`) asks for the session of `client_id` for a connection whose claim
    /// is number `claim`. The latest claim wins: a request older than a claim this shard
    /// knows of (a connection of its own, connected or waiting) is answered `superseded_by`
    /// that claim.
    pub(super) fn on_take_session(
        &mut self,
        client_id: Arc<str>,
        to: usize,
        clean_start: bool,
        claim: u64,
    ) {
        log::debug!(
            "Shard {to} asks shard {} for the session of {client_id} (claim {claim}).",
            self.id
        );
        let waiting = self.handover.claims.waiting(&client_id);
        let Some(id) = self.sessions.id_of(&client_id) else {
            let request = Request {
                client_id,
                to,
                clean_start,
                claim,
            };
            self.request_without_session(request, waiting);
            return;
        };
        if self.handover.moves.is_settling(id) {
            // Still arriving here: answered once settled (moves never overlap). Of two
            // requests meanwhile, the later claim is kept and the other has lost.
            let request = Request {
                client_id,
                to,
                clean_start,
                claim,
            };
            if let Some((lost, by)) = self.handover.moves.defer(id, request) {
                self.answer(lost.client_id, lost.to, lost.claim, None, Some(by));
            }
            return;
        }
        // A connection here with a later claim keeps the session: a waiting one takes it
        // now, a connected one has it.
        if let Some((conn, mine)) = waiting.filter(|&(_, mine)| mine > claim) {
            self.handover.claims.stop_waiting(&client_id);
            self.give_waiting_connection(conn, id, &client_id);
            self.answer(client_id, to, claim, None, Some(mine));
            return;
        }
        if let Some(later) = self.later_claim_on(id, &client_id, claim) {
            self.answer(client_id, to, claim, None, Some(later));
            return;
        }
        // The request is the latest: a connection here still waiting has lost.
        if let Some((conn, _)) = waiting {
            self.handover.claims.stop_waiting(&client_id);
            self.close_waiting(conn, &client_id);
        }
        self.hand_on(id, client_id, to, clean_start, claim);
    }

    /// A request for a session this shard does not hold.
    fn request_without_session(&mut self, request: Request, waiting: Option<(ConnId, u64)>) {
        let Request {
            client_id,
            to,
            clean_start,
            claim,
        } = request;
        // A later claim this shard knows of has beaten the request: a connection waiting
        // here, a request of this shard's own, or one it owes an answer. (Held for this
        // shard's own answer, it could wait on a shard that waits on this one.)
        let claims = &self.handover.claims;
        if let Some(by) = claims.latest(&client_id).filter(|&c| c > claim) {
            self.answer(client_id, to, claim, None, Some(by));
            return;
        }
        // A connection here waiting for the session has lost to this request.
        if let Some((conn, _)) = waiting {
            self.handover.claims.stop_waiting(&client_id);
            self.close_waiting(conn, &client_id);
        }
        // The request of this shard still out (the session may come with its answer).
        let Some(asked) = self.handover.claims.asking(&client_id) else {
            // No session here, none coming: a new one there.
            self.answer(client_id, to, claim, None, None);
            return;
        };
        // This shard waits for the session too (for no connection, or one whose claim lost
        // to this request): the answer it waits for goes on to `to`, the latest claim,
        // which every other claim owed an answer here has lost to.
        let f = Forward {
            asked,
            to,
            claim,
            clean_start,
        };
        if let Some(lost) = self.handover.claims.owe(client_id.clone(), f) {
            self.answer_lost(client_id, lost, claim);
        }
    }

    /// A claim later than `claim` that keeps session `id` here: its connection's, or the
    /// latest on `client_id` if this shard made it (the request has lost even if that
    /// connection has gone since: the session stays here for its claim, where the client's
    /// next connection looks for it), or the one it is journaled under (handed to an
    /// earlier claim, it would be journaled there under that claim, and the copy here,
    /// under the later one, would win at recovery). (A later claim elsewhere comes after
    /// the asking shard's: it asked that shard, and its answer goes on.)
    fn later_claim_on(&self, id: SessionId, client_id: &str, claim: u64) -> Option<u64> {
        let connected = (self.sessions.get(&id))
            .and_then(|s| s.conn)
            .and_then(|conn| self.conn(conn))
            .map(|c| c.claim);
        let latest = (self.shared.latest_claim(client_id))
            .filter(|l| l.shard() == self.id)
            .map(|l| l.number());
        let kept_for = self.disk.journal.as_deref().and_then(|j| j.claim_of(id));
        [connected, latest, kept_for]
            .into_iter()
            .flatten()
            .find(|&later| later > claim)
    }

    /// Hands session `id` to the shard that asked: taken from its connection here, journaled
    /// as passed on, and forwarded for until it settles there.
    fn hand_on(
        &mut self,
        id: SessionId,
        client_id: Arc<str>,
        to: usize,
        clean_start: bool,
        claim: u64,
    ) {
        log::debug!(
            "Handing the session of {client_id} ({}) from shard {} to shard {to}.",
            id.get(),
            self.id
        );
        let session = self.take_local_session(id, clean_start);
        if session.is_some() && !self.replaying.is_empty() {
            self.replay_moves(id, to);
        }
        let receipt = session
            .as_ref()
            .and_then(|s| self.journal_handed_off(to, s));
        if let Some(s) = &session {
            self.journal_forget(s.id);
            self.handover.moves.handed_on(s.id, to);
        }
        let origin = self.id;
        let session = session.map(|s| (s, receipt));
        self.send_answer(client_id, to, claim, session, origin, None);
    }

    /// Answers `to`'s request (claim `claim`) for the session of `client_id`. Never dropped:
    /// it may carry a session.
    fn answer(
        &mut self,
        client_id: Arc<str>,
        to: usize,
        claim: u64,
        session: Option<SessionBox>,
        superseded_by: Option<u64>,
    ) {
        let origin = self.id;
        let session = session.map(|s| (s, None));
        self.send_answer(client_id, to, claim, session, origin, superseded_by);
    }

    /// A connection here that waited for the session of `client_id`, which turned out to be
    /// here (`id`), takes it.
    fn give_waiting_connection(
        &mut self,
        conn: crate::types::ConnId,
        id: SessionId,
        client_id: &Arc<str>,
    ) {
        let Some(clean_start) = self
            .conn(conn)
            .and_then(|c| c.waiting_handoff())
            .map(|connect| connect.clean_start)
        else {
            return; // It went away: the session stays here as it is.
        };
        let claim = self.conn(conn).map_or(0, |c| c.claim);
        let session = self.take_local_session(id, clean_start);
        self.accept_waiting(conn, client_id, session, claim);
    }

    /// The answer to this shard's request (claim `claim`) for the session of `client_id`:
    /// the session, taken from shard `origin`, or none (there was none), or `superseded_by`
    /// a later claim.
    pub(super) fn on_handoff(
        &mut self,
        client_id: Arc<str>,
        session: Option<SessionBox>,
        origin: usize,
        claim: u64,
        superseded_by: Option<u64>,
    ) {
        log::debug!(
            "Shard {} receives the answer for {client_id} (claim {claim}): {}.",
            self.id,
            match (&session, superseded_by) {
                (Some(_), _) => "the session".to_string(),
                (None, Some(by)) => format!("superseded by claim {by}"),
                (None, None) => "no session".to_string(),
            }
        );
        // The answer to a request whose connection lost to a later claim elsewhere.
        let forward = self.handover.claims.take_owed_on(&client_id, claim);
        // Another request of this shard still unanswered may yet bring the session.
        let still_asked = self.handover.claims.answered(&client_id, claim);
        match session {
            None => self.answered_without_session(
                client_id,
                origin,
                superseded_by,
                forward,
                still_asked,
            ),
            Some(session) => self.session_arrived(client_id, session, origin, claim, forward),
        }
    }

    /// An answer without the session: passed on to the later claim it is owed to, or the
    /// connection waiting here has lost, or (no other answer coming) takes the session held
    /// here or a new one.
    fn answered_without_session(
        &mut self,
        client_id: Arc<str>,
        origin: usize,
        superseded_by: Option<u64>,
        forward: Option<Forward>,
        still_asked: Option<u64>,
    ) {
        if let Some(f) = forward {
            if let Some(other) = still_asked {
                // What is owed waits for that answer instead.
                let before = self
                    .handover
                    .claims
                    .owe(client_id, Forward { asked: other, ..f });
                debug_assert!(before.is_none(), "the one answer owed was just taken");
                return;
            }
            // Passed on as it is: the later claim judges it.
            self.send_answer(client_id, f.to, f.claim, None, origin, superseded_by);
            return;
        }
        let waiting = self.handover.claims.waiting(&client_id);
        match (waiting, superseded_by) {
            // The waiting connection lost to a later claim.
            (Some((conn, mine)), Some(by)) if by > mine => {
                self.handover.claims.stop_waiting(&client_id);
                self.close_waiting(conn, &client_id);
            }
            // The session may still come with another answer.
            _ if still_asked.is_some() => {}
            // No other answer is coming: the waiting connection (the newest, whichever
            // request this answers) takes the session held here, or starts one.
            (Some((conn, mine)), _) => {
                self.handover.claims.stop_waiting(&client_id);
                match self.sessions.id_of(&client_id) {
                    Some(id) => self.give_waiting_connection(conn, id, &client_id),
                    None => self.accept_waiting(conn, &client_id, None, mine),
                }
            }
            (None, _) => {
                // Nobody waits: the client id is no longer this shard's, unless a session
                // of it is here.
                if self.sessions.id_of(&client_id).is_none() {
                    self.shared.release_claim(&client_id, self.id);
                }
            }
        }
    }

    /// The session arrived (from `origin`, answering claim `claim`): it goes to the latest
    /// claim this shard knows of, its own waiting connection or the later claim it owes an
    /// answer (which waits on this answer or on another request of this shard's: either
    /// way, the session is here now); it settles here first in every case.
    fn session_arrived(
        &mut self,
        client_id: Arc<str>,
        session: SessionBox,
        origin: usize,
        claim: u64,
        forward: Option<Forward>,
    ) {
        let owed = forward.or_else(|| self.handover.claims.take_owed(&client_id));
        match (self.handover.claims.waiting(&client_id), owed) {
            (Some((conn, mine)), owed) if owed.is_none_or(|f| mine > f.claim) => {
                if let Some(f) = owed {
                    self.send_answer(client_id.clone(), f.to, f.claim, None, origin, Some(mine));
                }
                self.handover.claims.stop_waiting(&client_id);
                self.begin_settling(session.id, origin);
                self.accept_waiting(conn, &client_id, Some(session), mine);
            }
            (_, Some(f)) => {
                // Not passed straight on: it settles here and then moves as any session.
                // Passed on while its old routes still carried messages, a session could
                // come round to a shard that had forwarded some of them, and they would
                // come after later ones, or find nobody to take them there (the markers
                // that end a forwarding count one pass through each shard).
                let id = session.id;
                self.begin_settling(id, origin);
                self.accept_waiting_gone(session, claim);
                let request = Request {
                    client_id,
                    to: f.to,
                    clean_start: f.clean_start,
                    claim: f.claim,
                };
                let lost = self.handover.moves.defer(id, request);
                debug_assert!(lost.is_none(), "the session has just begun settling");
            }
            // Nobody waits for it here or through here: it stays here, offline.
            (_, None) => {
                self.begin_settling(session.id, origin);
                self.accept_waiting_gone(session, claim);
            }
        }
    }

    /// Connection `conn` here (claim `claim`) waits for the session of `client_id`: a
    /// connection that waited for it before has lost, and so has an answer owed here to an
    /// earlier claim (held for this shard's requests, two shards that owed each other an
    /// answer would wait for ever).
    pub(super) fn wait_for_session(&mut self, conn: ConnId, client_id: &Arc<str>, claim: u64) {
        let (earlier, lost) = self.handover.claims.wait(client_id, conn, claim);
        if let Some(earlier) = earlier {
            self.close_waiting(earlier, client_id);
        }
        if let Some(f) = lost {
            self.answer_lost(client_id.clone(), f, claim);
        }
    }

    /// Answers `f`, owed here, which has lost to `claim`.
    fn answer_lost(&mut self, client_id: Arc<str>, f: Forward, claim: u64) {
        self.send_answer(client_id, f.to, f.claim, None, self.id, Some(claim));
    }

    /// Passes an answer on (the session, if any, keeps `origin`: where it was taken from;
    /// with persistence it comes with the number it was passed under).
    fn send_answer(
        &mut self,
        client_id: Arc<str>,
        to: usize,
        claim: u64,
        session: Option<(SessionBox, Option<Receipt>)>,
        origin: usize,
        superseded_by: Option<u64>,
    ) {
        let (session, receipt) = session.map_or((None, None), |(s, r)| (Some(s), r));
        let msg = ShardMsg::Handoff {
            client_id,
            session,
            origin,
            claim,
            superseded_by,
            receipt,
        };
        // Behind everything this shard holds for any shard: the client publishes from
        // `to` once its session arrives, and must not pass what it published here.
        self.crossing
            .outbox
            .send_after_all(&self.shared.mailboxes, to, msg);
    }

    /// A session that arrived with nobody waiting for it (under claim `claim`): it stays
    /// here, offline.
    fn accept_waiting_gone(&mut self, mut session: SessionBox, claim: u64) {
        session.conn = None;
        self.adopt_subscriptions(&mut session);
        let id = session.id;
        self.sessions.insert(session);
        self.journal_session(id, claim);
        self.schedule_expiry(id);
    }

    /// A connection (claim `claim`) that waited for its session gets it (or a new one). If
    /// it went away meanwhile, a persistent session stays here offline.
    fn accept_waiting(
        &mut self,
        conn: crate::types::ConnId,
        client_id: &Arc<str>,
        session: Option<SessionBox>,
        claim: u64,
    ) {
        match self.conn_mut(conn).and_then(|c| c.take_waiting_handoff()) {
            Some(connect) => {
                let session = match session {
                    Some(session) if connect.clean_start => {
                        self.end_session(session, false);
                        None
                    }
                    other => other,
                };
                self.accept_connect(conn, *connect, client_id.clone(), false, session);
                self.process_input(conn);
            }
            None => {
                if let Some(session) = session {
                    self.accept_waiting_gone(session, claim);
                }
            }
        }
    }

    /// Points the subscriptions of a session that came from another shard at this one.
    pub(super) fn adopt_subscriptions(&mut self, session: &mut Session) {
        let (here, id) = (self.id as u16, session.id);
        for (filter, sub) in session.subscriptions_located_mut() {
            if sub.shard != here {
                sub.shard = here;
                let op = TrieOp::Subscribe {
                    filter: filter.clone(),
                    session: id,
                    sub: *sub,
                };
                self.subs.trie.ops.push(op);
            }
        }
    }
}
