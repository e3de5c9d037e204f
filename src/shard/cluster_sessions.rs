//! A shard's part in sessions that follow their clients across the cluster
//! (`cluster/sessions.rs`): a CONNECT waits while the node becomes the owner of its client
//! id, and goes on with the session the previous owner handed over; a session another
//! node asks for leaves this one.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use super::conn::ClusterWait;
use super::io::{Backend, ConnId};
use super::Shard;
use crate::cluster::sessions::wire::{self, TakeAnswer};
use crate::cluster::sessions::{ClaimAsk, Claimed, TakeAsk};
use crate::codec::Connect;
use crate::persist::WallClock;
use crate::router::{SessionBox, ShardMsg};

/// Shards a take request may be passed through (the session moving between them
/// meanwhile) before it is answered "ask again".
const TAKE_HOPS_MAX: u8 = 4;

/// How much later than due a will of a session's record may read back.
pub(super) const RECORD_TIME_SLACK: std::time::Duration = std::time::Duration::from_millis(10);

/// A moved session's subscriptions are in no trie of this node yet: they are revived as on
/// a shard that is none of this node's, so that adopting them adds every one.
const NO_SHARD: u16 = u16::MAX;

impl<B: Backend> Shard<B> {
    /// In a cluster keeping sessions, holds the CONNECT while the node claims its client id
    /// (`None`); otherwise gives it back to go on at once. A client id the broker gave is
    /// claimed too: its client may come back with it to another node.
    pub(super) fn claim_in_cluster(
        &mut self,
        conn: ConnId,
        connect: Box<Connect>,
        client_id: &Arc<str>,
        assigned: bool,
    ) -> Option<Box<Connect>> {
        let cluster = self.shared.cluster.get().filter(|c| c.keeps_sessions());
        let Some(cluster) = cluster.cloned() else {
            return Some(connect);
        };
        let token = self.shared.next_claim.fetch_add(1, Relaxed);
        let ask = ClaimAsk {
            client_id: client_id.clone(),
            clean_start: connect.clean_start,
            shard: self.id,
            conn,
            token,
            asked_at: self.clock.now,
        };
        if !cluster.claim(ask) {
            return Some(connect);
        }
        let now = self.stamp();
        let c = self.conn_mut(conn)?;
        let wait = ClusterWait {
            connect,
            client_id: client_id.clone(),
            assigned,
            token,
            since: now,
        };
        c.wait_for_cluster(Box::new(wait), now);
        None
    }

    /// The cluster answered the claim numbered `token` of `conn`: the CONNECT goes on, with
    /// the session the previous owner handed over, if any.
    pub(super) fn on_cluster_claimed(
        &mut self,
        conn: ConnId,
        token: u64,
        client_id: Arc<str>,
        claimed: Claimed,
    ) {
        self.take_claim_answer(conn, token, client_id.clone(), claimed);
        // Only now, with the registry naming the connection's shard: until then the link
        // sends this shard the take requests for the client id, behind the answer.
        if let Some(cluster) = self.shared.cluster.get() {
            cluster.claim_answer_taken(&client_id, token);
        }
    }

    fn take_claim_answer(
        &mut self,
        conn: ConnId,
        token: u64,
        client_id: Arc<str>,
        claimed: Claimed,
    ) {
        let (revision, bytes, from_record, replay) = match claimed {
            Claimed::Owned {
                revision,
                session,
                from_record,
                replay,
            } => (revision, session, from_record, replay),
            Claimed::Unclaimed => (0, None, false, None),
            Claimed::Superseded => {
                // A later connection of the client won: this one goes, as an older one
                // does on one node.
                if (self.conn_mut(conn))
                    .and_then(|c| c.take_cluster_wait(token))
                    .is_some()
                {
                    self.close_waiting(conn, &client_id);
                }
                return;
            }
        };
        let local = self.shared.latest_claim(&client_id).is_some();
        let bytes = bytes.filter(|_| !(from_record && local));
        let mut moved = bytes.and_then(|bytes| self.revive_moved(&client_id, &bytes));
        let now = self.clock.now;
        let waiting = self.conn_mut(conn).and_then(|c| c.take_cluster_wait(token));
        if from_record {
            if let Some((session, since)) = moved.take() {
                // Its node is gone, and its connection with it: kept here as that node
                // would have kept it, its will going out now if it was due at once
                // (no delay, or a session that ended with its connection); the
                // connection then resumes it, which cancels a will still waiting
                // [MQTT-3.1.3-9].
                // (Under no revision of its own while its connection waits: the
                // connection's claim is the key's, and a clean start ending this session
                // must not delete it. With the connection gone, the key is this one's.)
                let kept_under = if waiting.is_some() { 0 } else { revision };
                let id = session.id;
                if self.keep_moved_offline(session, kept_under, since) {
                    if let Some(replay) = &replay {
                        self.replayed_by(id, replay);
                    }
                }
                // (A record's times are whole milliseconds of the wall clock: one due at
                // once may read back a moment late.) A session whose expiry ran out on the
                // way ends now, not resumed.
                self.publish_due_wills(now + RECORD_TIME_SLACK);
                self.expire_sessions(now);
            }
        }
        let Some(wait) = waiting else {
            // The connection went while its claim was made: a session fetched for it stays
            // here, offline, as if the client had gone just after connecting.
            match moved {
                Some((session, since)) => {
                    self.keep_moved_offline(session, revision, since);
                }
                // Its key goes, unless a connection of the client here holds it now.
                None if revision != 0 && self.shared.latest_claim(&client_id).is_none() => {
                    self.release_in_cluster(client_id, revision)
                }
                None => {}
            }
            return;
        };
        if let Some(c) = self.conn_mut(conn) {
            c.set_cluster_revision(revision);
        }
        let ClusterWait {
            connect,
            client_id,
            assigned,
            ..
        } = *wait;
        let moved = moved.map(|(session, _)| session);
        self.connect_claimed(conn, connect, client_id, assigned, moved);
        // What the client sent after CONNECT waited with it.
        self.process_input(conn);
    }

    /// A session's bytes from another node, made a live session of this shard, with when its
    /// client went away (now, unless a record says); `None` (said and counted) if they are
    /// not a session.
    pub(super) fn revive_moved(
        &mut self,
        client_id: &str,
        bytes: &[u8],
    ) -> Option<(SessionBox, Instant)> {
        let now = self.clock.now;
        let moved = match wire::decode_session(bytes, now) {
            Ok(moved) if moved.session.client_id == client_id => moved,
            Ok(moved) => {
                self.moved_bytes_refused(
                    client_id,
                    &format!("it is {}'s", moved.session.client_id),
                );
                return None;
            }
            Err(e) => {
                self.moved_bytes_refused(client_id, &e);
                return None;
            }
        };
        let id = self.shared.new_session_id();
        let filter_bytes = &self.shared.filter_bytes;
        let clock = WallClock::now();
        let revived = moved
            .session
            .revive(id, NO_SHARD, filter_bytes, &clock, now);
        let mut session = revived.session;
        session.set_credentials(moved.username.as_deref(), None);
        session.set_listener(
            moved
                .listener
                .min(self.config.listeners.len().saturating_sub(1)),
        );
        if let Some(due) = revived.will_due {
            self.schedule_will(id, due);
        }
        Some((session, revived.offline_since))
    }

    pub(super) fn moved_bytes_refused(&self, client_id: &str, why: &str) {
        if let Some(cluster) = self.shared.cluster.get() {
            cluster.stats.sessions_not_fetched.fetch_add(1, Relaxed);
        }
        log::warn!("Warning: cluster: the session of {client_id} another node handed over cannot be read ({why}); it starts anew here.");
    }

    /// A session moved here that no connection takes: the one held here is newer.
    pub(super) fn moved_session_not_taken(&mut self, session: SessionBox, why: &str) {
        log::warn!(
            "Warning: cluster: the session of {} from another node is not taken: {why}.",
            session.client_id
        );
        self.end_session(session, false);
    }

    /// A session moved here, under the key's `revision`, for a connection that went
    /// meanwhile (or taken over from a node that is gone): held offline here.
    pub(super) fn keep_moved_offline(
        &mut self,
        mut session: SessionBox,
        revision: u64,
        offline_since: Instant,
    ) -> bool {
        let client_id = session.client_id.clone();
        if self.shared.latest_claim(&client_id).is_some() {
            // A later connection of the client here has it in hand (and the key: ending
            // this one gives nothing back).
            self.moved_session_not_taken(session, "a later connection of its client is here");
            return false;
        }
        session.set_cluster_revision(revision);
        let claim = self.shared.next_claim.fetch_add(1, Relaxed);
        let claim = super::Claim::new(self.id, claim);
        (self.shared.registry.lock().expect("registry lock")).insert(client_id, claim);
        self.adopt_subscriptions(&mut session);
        let id = session.id;
        self.sessions.insert(session);
        self.journal_session(id, claim.number());
        self.schedule_expiry_since(id, offline_since);
        self.record_changed(id);
        true
    }

    /// The key of a session that ended here goes from the cluster's bucket (unless a newer
    /// claim wrote it).
    pub(super) fn release_in_cluster(&self, client_id: Arc<str>, revision: u64) {
        if let Some(cluster) = self.shared.cluster.get().filter(|c| c.keeps_sessions()) {
            cluster.release(client_id, revision);
        }
    }

    /// Another node owns the client id now and asks for its session: the shard that holds
    /// it closes its connection (5.0: DISCONNECT 0x8E) and hands it over; one that does not
    /// passes the request to the shard that does.
    pub(super) fn on_cluster_take(&mut self, mut take: Box<TakeAsk>) {
        let client_id = take.client_id.clone();
        // A bridge's own session is this node's: a client elsewhere using its id gets none.
        let bridges = self.config.bridges.iter();
        if bridges
            .map(crate::bridge::client_ids)
            .any(|ids| *ids.1 == *client_id)
        {
            let _ = take.reply.send(TakeAnswer::Nothing);
            return;
        }
        let holder = self.shared.latest_claim(&client_id).map(|c| c.shard());
        let Some(holder) = holder else {
            let _ = take.reply.send(TakeAnswer::Nothing);
            return;
        };
        if holder != self.id {
            if take.hops >= TAKE_HOPS_MAX {
                let _ = take.reply.send(TakeAnswer::Retry);
                return;
            }
            take.hops += 1;
            if let Err(ShardMsg::ClusterTake(take)) = self
                .shared
                .mailboxes
                .send(holder, ShardMsg::ClusterTake(take))
            {
                let _ = take.reply.send(TakeAnswer::Retry);
            }
            return;
        }
        let held = self.sessions.id_of(&client_id);
        let moving = self.handover.claims.on_its_way(&client_id)
            || self.handover.claims.waiting(&client_id).is_some()
            || held.is_some_and(|id| self.handover.moves.is_settling(id));
        let Some(id) = held.filter(|_| !moving) else {
            // On its way between shards here: asked again in a moment.
            let _ = take.reply.send(TakeAnswer::Retry);
            return;
        };
        let Some(session) = self.sessions.get_mut(&id) else {
            let _ = take.reply.send(TakeAnswer::Nothing);
            return;
        };
        if session.cluster_revision() > take.revision {
            // Claimed here after the asker wrote: the asker has lost.
            let _ = take.reply.send(TakeAnswer::Superseded);
            return;
        }
        // The new owner holds a newer claim: this session's key is not given back.
        session.set_cluster_revision(0);
        if take.reply.is_closed() {
            // The asking node stopped waiting and goes on as the owner: the connection here
            // still closes (one live connection per client id), the session stays offline.
            self.keep_offline_here(id, take.clean_start);
            return;
        }
        if !self.replaying.is_empty() {
            // What waits for a replay goes with it to the other node (perhaps a second
            // time: QoS 1); the replay's own later messages for it do not.
            self.replayed_for(id, None);
        }
        let answer = match self.take_local_session(id, take.clean_start) {
            Some(session) => self.hand_to_node(session),
            None => Some(TakeAnswer::Nothing),
        };
        // (A session kept here keeps its place in the registry.)
        if answer.is_some() {
            self.shared.release_claim(&client_id, self.id);
        }
        let _ = take.reply.send(answer.unwrap_or(TakeAnswer::Nothing));
    }

    /// Closes the connection of session `id` (5.0: DISCONNECT 0x8E) and keeps the session
    /// here, offline (or ends it, if it or the new connection is clean).
    fn keep_offline_here(&mut self, id: crate::types::SessionId, clean_start: bool) {
        let Some(client_id) = self.sessions.get(&id).map(|s| s.client_id.clone()) else {
            return;
        };
        match self.take_local_session(id, clean_start) {
            Some(session) => {
                self.sessions.insert(session);
                self.schedule_expiry(id);
            }
            None => self.shared.release_claim(&client_id, self.id),
        }
    }

    /// `session`'s bytes for the node that takes it over; it ends here. One that does not
    /// fit in a NATS message even without its queue stays here, offline (`None`): the new
    /// node starts its client anew.
    fn hand_to_node(&mut self, session: SessionBox) -> Option<TakeAnswer> {
        let max = (self.shared.cluster.get()).map_or(1 << 20, |c| c.session_bytes_max());
        let (bytes, cut) = wire::encode_session(&session, self.clock.now, max);
        if bytes.len() > max {
            log::warn!(
                "Warning: cluster: the session of {} ({} bytes without its queue) does not fit what NATS takes ({max} bytes); it stays on this node, offline, and its client starts anew on the other.",
                session.client_id,
                bytes.len()
            );
            if let Some(cluster) = self.shared.cluster.get() {
                cluster.stats.sessions_cut.fetch_add(1, Relaxed);
            }
            let id = session.id;
            self.sessions.insert(session);
            self.schedule_expiry(id);
            return None;
        }
        if cut > 0 {
            if let Some(cluster) = self.shared.cluster.get() {
                cluster.stats.sessions_cut.fetch_add(cut as u64, Relaxed);
            }
            log::warn!(
                "Warning: cluster: {cut} queued messages of {} did not fit what NATS takes ({max} bytes); the session went to its new node without them.",
                session.client_id
            );
        }
        self.end_session(session, false);
        Some(TakeAnswer::Session(bytes))
    }
}
