//! A shard's part in keeping sessions across a node's death (`cluster/sessions/records.rs`,
//! `cluster/sessions/nodes.rs`): the records of its sessions written again as they change
//! (at most once a timer tick each, and a large one at most every `LARGE_RECORD_EVERY`: a
//! client subscribing filter by filter costs one record a tick, not one a filter), sessions
//! taken over from a node that is gone revived here, offline, and sessions that are another
//! node's now given up.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cluster_sessions::RECORD_TIME_SLACK;
use super::io::Backend;
use super::Shard;
use crate::cluster::sessions::nodes::Adopted;
use crate::cluster::sessions::{wire, Record};
use crate::router::ShardMsg;
use crate::types::SessionId;

/// A record past this many bytes is written at most every `LARGE_RECORD_EVERY`, so that a
/// client with many subscriptions changing one a tick does not make the node write its
/// whole record to JetStream four times a second.
const LARGE_RECORD: usize = 64 * 1024;
const LARGE_RECORD_EVERY: Duration = Duration::from_secs(2);

/// The sessions whose records are to be written at the next tick, and those whose last
/// record was large, with when the next may be written.
#[derive(Default)]
pub(super) struct Changed {
    ids: hashbrown::HashSet<SessionId>,
    large: hashbrown::HashMap<SessionId, Instant>,
}

impl<B: Backend> Shard<B> {
    /// What a session's record holds changed (its connection, subscriptions or will): it
    /// is written again at the next tick, if the cluster keeps sessions.
    pub(super) fn record_changed(&mut self, id: SessionId) {
        if (self.shared.cluster.get()).is_some_and(|c| c.keeps_sessions()) {
            self.records.ids.insert(id);
        }
    }

    /// A session's connection was accepted: its record is written at the next tick, or at
    /// once if the connection has a will (so that a node dying in the tick's time does not
    /// take the will with it).
    pub(super) fn record_connected(&mut self, id: SessionId) {
        let has_will = self.sessions.get(&id).is_some_and(|s| s.will.is_some());
        let cluster = self
            .shared
            .cluster
            .get()
            .filter(|c| c.keeps_sessions())
            .cloned();
        match cluster {
            Some(cluster) if has_will => {
                self.records.ids.remove(&id);
                self.offer_record(&cluster, id);
            }
            _ => self.record_changed(id),
        }
    }

    /// Offers the cluster the records of the sessions that changed since the last tick.
    pub(super) fn write_records(&mut self) {
        let now = self.clock.now;
        self.records.large.retain(|_, next| *next > now);
        if self.records.ids.is_empty() {
            return;
        }
        let Some(cluster) = self.shared.cluster.get().cloned() else {
            return;
        };
        let changed: Vec<SessionId> = self.records.ids.drain().collect();
        for id in changed {
            if self.records.large.contains_key(&id) {
                self.records.ids.insert(id); // Its turn comes.
                continue;
            }
            self.offer_record(&cluster, id);
        }
    }

    /// Offers the cluster the record of session `id`; one the queue to the link has no room
    /// for is offered again at the next tick. A session claimed in no cluster has none; one
    /// that ends with its connection and has no will needs none (its key says only who owns
    /// it).
    fn offer_record(&mut self, cluster: &crate::cluster::Cluster, id: SessionId) {
        let now = self.clock.now;
        let Some(session) = self.sessions.get(&id) else {
            return;
        };
        let revision = session.cluster_revision();
        if revision == 0 || (session.clean && session.will.is_none()) {
            return;
        }
        let max = cluster.session_bytes_max();
        let offline_since = self.offline_since(session);
        let mut bytes = Some(wire::encode_record(session, now, offline_since));
        let size = bytes.as_ref().map_or(0, |b| b.len());
        if size > max {
            // Its key says only who owns it: no record older than the session is left there
            // for another node to take.
            bytes = None;
            cluster.stats.records_not_written.fetch_add(1, Relaxed);
            static TOO_LARGE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            if (TOO_LARGE.fetch_add(1, Relaxed) + 1).is_power_of_two() {
                log::warn!("Warning: cluster: the record of {}'s session ({size} bytes) does not fit what NATS takes ({max} bytes): another node cannot take it over if this one goes.", session.client_id);
            }
        }
        let record = Record {
            bytes,
            subscriptions: session.subscriptions().len(),
            will: session.will.is_some() || session.delayed_will.is_some(),
        };
        if !cluster.record(session.client_id.clone(), revision, record) {
            self.records.ids.insert(id);
        } else if size > LARGE_RECORD {
            self.records.large.insert(id, now + LARGE_RECORD_EVERY);
        }
    }

    /// A session this node took over from a node that is gone: revived here, offline (its
    /// will going out at once if it is due, else after its delay unless its client comes
    /// back first). On the shard the registry names for its client id, if any.
    pub(super) fn on_cluster_adopt(&mut self, adopted: Box<Adopted>) {
        let client_id = wire::client_id_of(&adopted.record).unwrap_or_default();
        let holder = self.shared.latest_claim(&client_id).map(|c| c.shard());
        if let Some(holder) = holder.filter(|&h| h != self.id) {
            if let Err(ShardMsg::ClusterAdopt(adopted)) =
                (self.shared.mailboxes).send(holder, ShardMsg::ClusterAdopt(adopted))
            {
                // Its key names this node, which holds nothing for it: its client starts
                // anew, and its will is lost (counted).
                self.moved_bytes_refused(&client_id, "the shard that holds its client is full");
                drop(adopted);
            }
            return;
        }
        let Adopted {
            revision,
            record,
            from,
            replay,
        } = *adopted;
        let Some((revived, since)) = self.revive_moved(&client_id, &record) else {
            // Its key goes: nothing is here to answer for it.
            self.release_in_cluster(client_id.into(), revision);
            return;
        };
        match self.sessions.id_of(&client_id) {
            Some(id) => {
                let now = self.clock.now;
                let live_will =
                    wire::decode_session(&record, now).is_ok_and(|m| m.will_from_reading);
                self.adopt_into(id, revived, revision, live_will);
            }
            None => {
                log::info!(target: "information", "Cluster: the session of {client_id} is taken over from node {from}, which is gone.");
                let id = revived.id;
                if self.keep_moved_offline(revived, revision, since) {
                    if let Some(replay) = &replay {
                        self.replayed_by(id, replay);
                    }
                }
                // Its will and its end, if due while it was on its way, come now.
                self.publish_due_wills(self.clock.now + RECORD_TIME_SLACK);
                self.expire_sessions(self.clock.now);
            }
        }
    }

    /// A session of the adopted record's client is here already (from this node's journal,
    /// or a connection that came first): it goes on, under the later of the two revisions.
    /// The will of the connection the record was written for (`live_will`; lost with the
    /// gone node) goes out if it is due, or waits out its delay in the session if it is
    /// offline and has none; a will that was waiting already when the record was written
    /// is the journal's too (or was cancelled by the connection here) [MQTT-3.1.3-9].
    fn adopt_into(
        &mut self,
        id: SessionId,
        mut revived: Box<crate::session::Session>,
        revision: u64,
        live_will: bool,
    ) {
        let now = self.clock.now;
        let will = (revived.delayed_will.take().map(|waiting| *waiting)).filter(|_| live_will);
        // (Under no revision: ending it gives no key back.)
        self.end_session(revived, false);
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        if revision > session.cluster_revision() {
            session.set_cluster_revision(revision);
        }
        if let Some((due, will)) = will {
            if due <= now + RECORD_TIME_SLACK {
                self.publish_will(id, will);
            } else if session.conn.is_none() && session.delayed_will.is_none() {
                session.delayed_will = Some(Box::new((due, will)));
                self.schedule_will(id, due);
            }
        }
        self.record_changed(id);
    }

    /// Another node owns the key of `client_id` now: the session here, if it is still the
    /// one claimed at `claim`, goes, its connection closed, without its will (the node that
    /// took the key has the session's record).
    pub(super) fn on_cluster_lost(&mut self, client_id: Arc<str>, claim: u64) {
        let holder = self.shared.latest_claim(&client_id).map(|c| c.shard());
        if let Some(holder) = holder.filter(|&h| h != self.id) {
            let msg = ShardMsg::ClusterLost { client_id, claim };
            // Dropped with the mailbox full: the session stays until it expires.
            let _ = self.shared.mailboxes.send(holder, msg);
            return;
        }
        let Some(id) = self.sessions.id_of(&client_id) else {
            return;
        };
        if self.sessions.get(&id).map(|s| s.cluster_revision()) != Some(claim) {
            return;
        }
        log::warn!("Warning: cluster: the session of {client_id} is another node's now; it leaves this one.");
        self.give_up_session(id);
    }

    /// The cluster took this node for gone and gave its sessions to others: each session
    /// claimed in the cluster has its key read, and leaves if another node holds it now
    /// (`on_cluster_lost`); one claimed since keeps its key, and stays.
    pub(super) fn on_taken_for_gone(&mut self) {
        let Some(cluster) = self.shared.cluster.get().cloned() else {
            return;
        };
        let claimed: Vec<(SessionId, Arc<str>, u64)> = (self.sessions.values())
            .filter(|s| s.cluster_revision() != 0)
            .map(|s| (s.id, s.client_id.clone(), s.cluster_revision()))
            .collect();
        for (id, client_id, revision) in claimed {
            if !cluster.verify(client_id, revision) {
                // Not to be asked (the queue to the link is full): it leaves.
                self.give_up_session(id);
            }
        }
    }

    /// Session `id` is another node's: it leaves, its connection closed, without its will
    /// (the other node has it) and without its key (the other node's).
    fn give_up_session(&mut self, id: SessionId) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        session.set_cluster_revision(0);
        session.will = None;
        session.delayed_will = None;
        let client_id = session.client_id.clone();
        if let Some(session) = self.take_local_session(id, false) {
            self.end_session(session, false);
        }
        self.shared.release_claim(&client_id, self.id);
    }
}
