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

use std::collections::VecDeque;
use std::sync::Arc;

use super::io::Backend;
use super::trie_ops::TrieOp;
use super::Shard;
use crate::router::{SessionBox, ShardMsg};
use crate::session::Session;
use crate::types::{Message, SessionId, Target};

/// Messages one settling session may hold; past it, more are dropped and counted (a move
/// takes a few mailbox hops, so this is never reached but under a flood).
const HELD_MAX: usize = 65_536;

/// A session that arrived here and waits for the old route to drain.
#[derive(Default)]
pub struct Settling {
    /// `Flushed` markers still to come (one per shard).
    markers_missing: usize,
    /// What came straight here meanwhile, in arrival order; with persistence, with the
    /// number it was journaled under as passed to this shard itself (see `hold`).
    held: VecDeque<(Arc<Message>, Target, Option<u64>)>,
    /// The latest request for the session that came meanwhile (client id, asking shard,
    /// clean start, claim): answered once settled.
    deferred_take: Option<(Arc<str>, usize, bool, u64)>,
}

/// An answer this shard waits for, for a connection that lost to a later claim elsewhere:
/// it goes on to that claim (a session in it settles here first, then is handed on as any
/// other: see `on_handoff`).
#[derive(Clone, Copy, Debug)]
pub struct Forward {
    /// The claim this shard asked for.
    pub asked: u64,
    /// Where the answer goes, as the answer to which claim, and whether that claim's
    /// connection starts clean.
    pub to: usize,
    pub claim: u64,
    pub clean_start: bool,
}

/// A session handed to another shard: deliveries for it are forwarded there until every
/// shard's `Flushed` marker has passed through.
pub struct Moved {
    pub to: usize,
    markers_passed: usize,
}

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
        let held = self.sessions.id_of(&client_id);
        let waiting = self.awaiting.get(&client_id).copied();
        log::debug!(
            "Shard {to} asks shard {} for the session of {client_id} (claim {claim}).",
            self.id
        );
        let Some(id) = held else {
            // A later claim this shard knows of has beaten the request: a connection waiting
            // here, a request of this shard's own, or one it owes an answer. (Held for
            // this shard's own answer, it could wait on a shard that waits on this one.)
            let later = self.later_claims_known(&client_id).filter(|&c| c > claim);
            if let Some(by) = later {
                self.answer(client_id, to, claim, None, Some(by));
                return;
            }
            // The request of this shard still out (the session may come with its answer).
            let out = self.asked.get(&client_id).and_then(|a| a.last().copied());
            match (waiting, out) {
                // This shard waits for the session too (for no connection, or one whose
                // claim lost to this request): the answer it waits for goes on to `to`, the
                // latest claim, which every other claim owed an answer here has lost to.
                (waiting, Some(asked)) => {
                    if let Some((conn, _)) = waiting {
                        self.awaiting.remove(&client_id);
                        self.close_waiting(conn, &client_id);
                    }
                    self.supersede_owed(&client_id, claim);
                    let f = Forward {
                        asked,
                        to,
                        claim,
                        clean_start,
                    };
                    self.forward_handoff.entry(client_id).or_default().push(f);
                }
                // No session here, none coming: a new one there.
                (waiting, None) => {
                    if let Some((conn, _)) = waiting {
                        self.awaiting.remove(&client_id);
                        self.close_waiting(conn, &client_id);
                    }
                    self.answer(client_id, to, claim, None, None);
                }
            }
            return;
        };
        if let Some(settling) = self.settling.get_mut(&id) {
            // Still arriving here: answered once settled (moves never overlap). Of two
            // requests meanwhile, the later claim is kept and the other has lost.
            let request = (client_id, to, clean_start, claim);
            let lost = match settling.deferred_take.take() {
                Some(kept) if kept.3 > claim => {
                    let by = kept.3;
                    settling.deferred_take = Some(kept);
                    Some((request, by))
                }
                earlier => {
                    settling.deferred_take = Some(request);
                    earlier.map(|e| (e, claim))
                }
            };
            if let Some(((client_id, to, _, lost_claim), by)) = lost {
                self.answer(client_id, to, lost_claim, None, Some(by));
            }
            return;
        }
        // A connection here with a later claim keeps the session: a waiting one takes it
        // now, a connected one has it.
        if let Some((conn, mine)) = waiting.filter(|&(_, mine)| mine > claim) {
            self.awaiting.remove(&client_id);
            self.give_waiting_connection(conn, id, &client_id);
            self.answer(client_id, to, claim, None, Some(mine));
            return;
        }
        let connected_claim = self
            .sessions
            .get(&id)
            .and_then(|s| s.conn)
            .and_then(|conn| self.conn(conn))
            .map(|c| c.claim)
            .filter(|&mine| mine > claim);
        if let Some(mine) = connected_claim {
            self.answer(client_id, to, claim, None, Some(mine));
            return;
        }
        // A later connection here took the session over: the request has lost even if that
        // connection has gone since (the session stays here for its claim, the latest,
        // where the client's next connection looks for it). (A later claim elsewhere
        // comes after the asking shard's: it asked that shard, and its answer goes on.)
        let latest = self.shared.latest_claim(&client_id);
        if let Some(latest) = latest.filter(|l| l.number() > claim && l.shard() == self.id) {
            self.answer(client_id, to, claim, None, Some(latest.number()));
            return;
        }
        // Likewise a session kept here for a later claim (journaled under it): handed to an
        // earlier one, it would be journaled there under that claim, and the copy here,
        // under the later one, would win at recovery.
        let kept_for = self.journal.as_deref().and_then(|j| j.claim_of(id));
        if let Some(kept_for) = kept_for.filter(|&c| c > claim) {
            self.answer(client_id, to, claim, None, Some(kept_for));
            return;
        }
        // The request is the latest: a connection here still waiting has lost.
        if let Some((conn, _)) = waiting {
            self.awaiting.remove(&client_id);
            self.close_waiting(conn, &client_id);
        }
        log::debug!(
            "Handing the session of {client_id} ({}) from shard {} to shard {to}.",
            id.get(),
            self.id
        );
        let session = self.take_local_session(id, clean_start);
        let receipt = session
            .as_ref()
            .and_then(|s| self.journal_handed_off(to, s));
        if let Some(s) = &session {
            self.journal_forget(s.id);
            self.moved.insert(
                s.id,
                Moved {
                    to,
                    markers_passed: 0,
                },
            );
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
        let forward = self.take_forward(&client_id, claim);
        // Another request of this shard still unanswered may yet bring the session.
        let still_asked = self.answered(&client_id, claim);
        let Some(session) = session else {
            if let Some(f) = forward {
                if let Some(other) = still_asked {
                    // What is owed waits for that answer instead.
                    let f = Forward { asked: other, ..f };
                    self.forward_handoff.entry(client_id).or_default().push(f);
                    return;
                }
                // Passed on as it is: the later claim judges it.
                self.send_answer(client_id, f.to, f.claim, None, origin, superseded_by);
                return;
            }
            let waiting = self.awaiting.get(&client_id).copied();
            match (waiting, superseded_by) {
                // The waiting connection lost to a later claim.
                (Some((conn, mine)), Some(by)) if by > mine => {
                    self.awaiting.remove(&client_id);
                    self.close_waiting(conn, &client_id);
                }
                // The session may still come with another answer.
                _ if still_asked.is_some() => {}
                // No other answer is coming: the waiting connection (the newest, whichever
                // request this answers) takes the session held here, or starts one.
                (Some((conn, mine)), _) => {
                    self.awaiting.remove(&client_id);
                    match self.sessions.id_of(&client_id) {
                        Some(id) => self.give_waiting_connection(conn, id, &client_id),
                        None => self.accept_waiting(conn, &client_id, None, mine),
                    }
                }
                (None, _) => {
                    // Nobody waits: the client id is no longer this shard's, unless a
                    // session of it is here.
                    if self.sessions.id_of(&client_id).is_none() {
                        self.shared.release_claim(&client_id, self.id);
                    }
                }
            }
            return;
        };
        // A session goes to the latest claim this shard knows of: its own waiting
        // connection, or one of the later claims it owes an answer; every other claim owed
        // one here has lost to it.
        let waiting = self
            .awaiting
            .get(&client_id)
            .map(|&(conn, mine)| (mine, conn));
        let mut owed = self.forward_handoff.remove(&client_id).unwrap_or_default();
        owed.extend(forward);
        let best_forward = owed.iter().max_by_key(|f| f.claim).copied();
        let local_wins = match (waiting, best_forward) {
            (Some((mine, _)), Some(f)) => mine > f.claim,
            (Some(_), None) => true,
            (None, _) => false,
        };
        let winner = if local_wins {
            waiting.map(|(mine, _)| mine)
        } else {
            best_forward.map(|f| f.claim)
        };
        for f in owed.iter().filter(|f| Some(f.claim) != winner) {
            let by = winner.expect("a claim is owed");
            self.send_answer(client_id.clone(), f.to, f.claim, None, origin, Some(by));
        }
        match (local_wins, best_forward, waiting) {
            (true, _, Some((mine, conn))) => {
                self.awaiting.remove(&client_id);
                self.begin_settling(session.id, origin);
                self.accept_waiting(conn, &client_id, Some(session), mine);
            }
            (false, Some(f), _) => {
                // Not passed straight on: it settles here and then moves as any session.
                // Passed on while its old routes still carried messages, a session could
                // come round to a shard that had forwarded some of them, and they would
                // come after later ones, or find nobody to take them there (the markers
                // that end a forwarding count one pass through each shard).
                let id = session.id;
                self.begin_settling(id, origin);
                self.accept_waiting_gone(session, claim);
                if let Some(settling) = self.settling.get_mut(&id) {
                    settling.deferred_take = Some((client_id, f.to, f.clean_start, f.claim));
                }
            }
            // Nobody waits for it here or through here: it stays here, offline.
            _ => {
                self.begin_settling(session.id, origin);
                self.accept_waiting_gone(session, claim);
            }
        }
    }

    /// A connection here claims `claim` and waits: answers owed here to earlier claims have
    /// lost to it, and go now (held for this shard's requests, two shards that owed each
    /// other an answer would wait for ever).
    pub(super) fn supersede_owed(&mut self, client_id: &Arc<str>, claim: u64) {
        let Some(list) = self.forward_handoff.get_mut(client_id) else {
            return;
        };
        let (lost, kept): (Vec<Forward>, Vec<Forward>) =
            list.drain(..).partition(|f| f.claim < claim);
        if kept.is_empty() {
            self.forward_handoff.remove(client_id);
        } else {
            *list = kept;
        }
        for f in lost {
            self.send_answer(client_id.clone(), f.to, f.claim, None, self.id, Some(claim));
        }
    }

    /// The latest claim for `client_id` this shard knows of without holding its session: of
    /// a connection waiting here, of a request of its own, or of one it owes an answer.
    fn later_claims_known(&self, client_id: &Arc<str>) -> Option<u64> {
        let waiting = self.awaiting.get(client_id).map(|&(_, mine)| mine);
        let asked = (self.asked.get(client_id)).and_then(|a| a.iter().max().copied());
        let owed = (self.forward_handoff.get(client_id))
            .and_then(|owed| owed.iter().map(|f| f.claim).max());
        waiting.max(asked).max(owed)
    }

    /// This shard's request under `claim` is answered; another still out, if any.
    fn answered(&mut self, client_id: &Arc<str>, claim: u64) -> Option<u64> {
        let list = self.asked.get_mut(client_id)?;
        list.retain(|&mut c| c != claim);
        let other = list.last().copied();
        if other.is_none() {
            self.asked.remove(client_id);
        }
        other
    }

    /// Removes and returns the answer this shard owes for its request `asked`.
    fn take_forward(&mut self, client_id: &Arc<str>, asked: u64) -> Option<Forward> {
        let list = self.forward_handoff.get_mut(client_id)?;
        let at = list.iter().position(|f| f.asked == asked)?;
        let forward = list.swap_remove(at);
        if list.is_empty() {
            self.forward_handoff.remove(client_id);
        }
        Some(forward)
    }

    /// Passes an answer on (the session, if any, keeps `origin`: where it was taken from;
    /// with persistence it comes with the number it was passed under).
    fn send_answer(
        &mut self,
        client_id: Arc<str>,
        to: usize,
        claim: u64,
        session: Option<(SessionBox, Option<(u16, u64)>)>,
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
        self.outbox.send_after_all(&self.shared.mailboxes, to, msg);
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
                self.trie_ops.push(op);
            }
        }
    }

    /// A session arrived from `origin`: hold what comes straight here for it until every
    /// shard's marker has come through `origin`.
    fn begin_settling(&mut self, session: SessionId, origin: usize) {
        log::debug!(
            "Session {} arrived on shard {} from shard {origin}; settling.",
            session.get(),
            self.id
        );
        let shards = self.shared.mailboxes.shards();
        self.settling.insert(
            session,
            Settling {
                markers_missing: shards,
                ..Default::default()
            },
        );
        // The trie change pointing the session here is published before any shard reads
        // the request, so that what a shard routes after its marker comes here.
        self.pending_flush.push((session, origin));
    }

    /// Sends the marker requests of the sessions that began settling this turn (after the
    /// turn's trie changes are published).
    pub(super) fn request_markers(&mut self) {
        for (session, origin) in std::mem::take(&mut self.pending_flush) {
            for shard in 0..self.shared.mailboxes.shards() {
                let msg = ShardMsg::Flush {
                    session,
                    via: origin,
                };
                self.outbox.send(&self.shared.mailboxes, shard, msg, true);
            }
        }
    }

    /// A shard that settles `session` asks for this shard's marker, sent through `via`
    /// behind everything this shard sent there before.
    pub(super) fn on_flush(&mut self, session: SessionId, via: usize) {
        self.outbox.send(
            &self.shared.mailboxes,
            via,
            ShardMsg::Flushed { session },
            true,
        );
    }

    /// A shard's marker for `session`: counted here if it is settling here, passed on if it
    /// moved on.
    pub(super) fn on_flushed(&mut self, session: SessionId) {
        if let Some(settling) = self.settling.get_mut(&session) {
            settling.markers_missing -= 1;
            if settling.markers_missing == 0 {
                self.settled(session);
            }
            return;
        }
        let shards = self.shared.mailboxes.shards();
        let Some(moved) = self.moved.get_mut(&session) else {
            log::debug!("A marker for session {session:?}, which is neither here nor moved.");
            return;
        };
        let to = moved.to;
        moved.markers_passed += 1;
        if moved.markers_passed == shards {
            // Every shard's old route has drained through here: nothing more to forward.
            self.moved.remove(&session);
        }
        let msg = ShardMsg::Flushed { session };
        self.outbox.send(&self.shared.mailboxes, to, msg, true);
    }

    /// Whether a delivery that came straight here must wait: its session is settling.
    /// Returns the delivery back if not.
    ///
    /// With persistence a held message is journaled as one passed to this shard itself,
    /// in the turn its publisher is acknowledged, and taken (`HeldDelivered`) when it is
    /// delivered: a crash meanwhile hands it on at recovery, as one between two shards.
    pub(super) fn hold(&mut self, message: &Arc<Message>, target: &Target) -> bool {
        let Some(settling) = self.settling.get(&target.session) else {
            return false;
        };
        if settling.held.len() >= HELD_MAX {
            self.shared.stats[self.id]
                .dropped_overflow_full
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return true;
        }
        let number = self.transit_number(self.id, message.qos).map(|r| r.1);
        if let Some(number) = number {
            self.journal_forward(self.id, number, message, std::slice::from_ref(target));
        }
        if let Some(settling) = self.settling.get_mut(&target.session) {
            (settling.held).push_back((message.clone(), target.clone(), number));
        }
        true
    }

    /// Every old route has drained: deliver what was held, in order, and answer a request
    /// for the session that came meanwhile.
    fn settled(&mut self, session: SessionId) {
        let Some(settling) = self.settling.remove(&session) else {
            return;
        };
        log::debug!("Session {} settled on shard {}.", session.get(), self.id);
        for (message, target, number) in settling.held {
            self.deliver_here(&message, &[target], true);
            if let Some(number) = number {
                self.journal_held_delivered(number);
            }
        }
        if let Some((client_id, to, clean_start, claim)) = settling.deferred_take {
            self.on_take_session(client_id, to, clean_start, claim);
        }
    }
}
