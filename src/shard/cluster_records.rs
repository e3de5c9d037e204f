//! A shard's part in keeping sessions across a node's death (`cluster/sessions/records.rs`,
//! `cluster/sessions/nodes.rs`): the records of its sessions written again as they change
//! (at most once a timer tick each: a client subscribing filter by filter costs one record
//! a tick, not one a filter), sessions taken over from a node that is gone revived here,
//! offline, and this node's sessions given up when the cluster took it for gone.

use std::sync::atomic::Ordering::Relaxed;

use super::io::Backend;
use super::Shard;
use crate::cluster::sessions::nodes::Adopted;
use crate::cluster::sessions::{wire, Record};
use crate::types::SessionId;

/// The sessions whose records are to be written at the next tick.
#[derive(Default)]
pub(super) struct Changed(hashbrown::HashSet<SessionId>);

impl<B: Backend> Shard<B> {
    /// What a session's record holds changed (its connection, subscriptions or will): it
    /// is written again at the next tick, if the cluster keeps sessions.
    pub(super) fn record_changed(&mut self, id: SessionId) {
        if self
            .shared
            .cluster
            .get()
            .is_some_and(|c| c.keeps_sessions())
        {
            self.records.0.insert(id);
        }
    }

    /// Offers the cluster the records of the sessions that changed since the last tick.
    /// A session claimed in no cluster has none; one that ends with its connection and has
    /// no will needs none (its key says only who owns it).
    pub(super) fn write_records(&mut self) {
        if self.records.0.is_empty() {
            return;
        }
        let Some(cluster) = self.shared.cluster.get().cloned() else {
            return;
        };
        let now = self.clock.now;
        let max = cluster.session_bytes_max();
        let changed: Vec<SessionId> = self.records.0.drain().collect();
        for id in changed {
            let Some(session) = self.sessions.get(&id) else {
                continue;
            };
            let revision = session.cluster_revision();
            if revision == 0 || (session.clean && session.will.is_none()) {
                continue;
            }
            let bytes = wire::encode_record(session, now);
            if bytes.len() > max {
                cluster.stats.records_not_written.fetch_add(1, Relaxed);
                log::warn!("Warning: cluster: the record of {}'s session ({} bytes) does not fit what NATS takes ({max} bytes): another node cannot take it over if this one goes.", session.client_id, bytes.len());
                continue;
            }
            let record = Record {
                bytes,
                subscriptions: session.subscriptions().len(),
                will: session.will.is_some() || session.delayed_will.is_some(),
            };
            if !cluster.record(session.client_id.clone(), revision, record) {
                // The queue to the link is full: offered again at the next tick.
                self.records.0.insert(id);
            }
        }
    }

    /// A session this node took over from a node that is gone: revived here, offline (its
    /// will due after its delay, unless its client comes back first).
    pub(super) fn on_cluster_adopt(&mut self, adopted: Adopted) {
        let Adopted {
            revision,
            record,
            from,
        } = adopted;
        let client_id = wire::client_id_of(&record).unwrap_or_default();
        if let Some(id) = self.sessions.id_of(&client_id) {
            // The session came back from this node's own journal (the node that was gone
            // is this node's earlier run): that one, fuller than its record, goes on,
            // under the key this node now holds.
            if let Some(session) = self.sessions.get_mut(&id) {
                session.set_cluster_revision(revision);
            }
            self.record_changed(id);
            return;
        }
        match self.revive_moved(&client_id, &record) {
            Some(session) => {
                log::info!(target: "information", "Cluster: the session of {client_id} is taken over from node {from}, which is gone.");
                self.keep_moved_offline(session, revision);
            }
            // Its key goes: nothing is here to answer for it.
            None => self.release_in_cluster(client_id.into(), revision),
        }
    }

    /// The cluster took this node for gone and gave its sessions to others: each session
    /// claimed in the cluster leaves, its connection closed, without its will (the node that
    /// took it over has it) and without its key (another node's now).
    pub(super) fn on_taken_for_gone(&mut self) {
        let claimed: Vec<SessionId> = (self.sessions.values())
            .filter(|s| s.cluster_revision() != 0)
            .map(|s| s.id)
            .collect();
        for id in claimed {
            let Some(session) = self.sessions.get_mut(&id) else {
                continue;
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
}
