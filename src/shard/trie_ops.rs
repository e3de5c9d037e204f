//! Changes to the shared subscription trie, collected and applied as one batch (one lock,
//! one new snapshot) at the end of the loop turn, or sooner when a later packet needs them
//! (a PUBLISH to route, any reply that must follow a SUBACK); SUBACKs and UNSUBACKs go out
//! after that, so that a subscription is live by the time its SUBACK is sent. Ended
//! sessions' subscriptions leave a slice a turn.

use super::io::{Backend, ConnId};
use super::subscribe::RetainedRequest;
use super::Shard;
use crate::cluster::Cluster;
use crate::codec::Packet;
use crate::limits::SWEPT_PER_TURN;
use crate::topic::{parse_filter, FilterRef, SessionId, Subscription, TreeWriter};
use compact_str::CompactString;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Trie changes a shard keeps room for between turns.
const TRIE_OPS_KEPT: usize = 1024;

pub enum TrieOp {
    Subscribe {
        filter: CompactString,
        session: SessionId,
        sub: Subscription,
    },
    Unsubscribe {
        filter: CompactString,
        session: SessionId,
    },
}

/// Changes to the trie waiting for the end of the turn (or for a packet that needs them),
/// what waits for them to be applied, and ended sessions' subscriptions leaving a slice a
/// turn.
#[derive(Default)]
pub(super) struct TrieWork {
    pub(super) ops: Vec<TrieOp>,
    pub(super) after: Vec<AfterTrie>,
    /// Ended sessions' subscriptions, taken out a slice a turn (`sweep_trie`).
    pub(super) sweep: TrieSweep,
    /// Sessions ended this turn with shared subscriptions, for `Shared::leaving_groups`
    /// (which this shard's group picks pass over already).
    pub(super) leaving_groups: hashbrown::HashSet<SessionId>,
}

/// Ended sessions' subscriptions still to take out of the trie, oldest first, and whether
/// the session is in `Shared::leaving_groups` until they are out.
pub(super) type TrieSweep = std::collections::VecDeque<(
    SessionId,
    hashbrown::hash_map::IntoKeys<CompactString, Subscription>,
    bool,
)>;

/// What to send once the turn's trie changes are published.
pub enum AfterTrie {
    Ack {
        conn: ConnId,
        session: SessionId,
        packet: Packet,
        retained: Vec<RetainedRequest>,
    },
}

impl<B: Backend> Shard<B> {
    /// Takes the next slice of ended sessions' subscriptions out of the trie (all of them
    /// when `all`).
    pub(super) fn sweep_trie(&mut self, all: bool) {
        // This turn's ended sessions are passed over by share groups from now on, before
        // any of their subscriptions leave (one copy of the set a turn, however many).
        let ended = std::mem::take(&mut self.subs.trie.leaving_groups);
        if !ended.is_empty() {
            (self.shared.leaving_count).fetch_add(ended.len(), Ordering::SeqCst);
            self.shared.leaving_groups.rcu(|leaving| {
                let mut leaving = (**leaving).clone();
                leaving.extend(ended.iter().copied());
                leaving
            });
        }
        if self.subs.trie.sweep.is_empty() {
            return;
        }
        let mut left = if all { usize::MAX } else { SWEPT_PER_TURN };
        let mut gone_from_groups = Vec::new();
        let cluster = self.shared.cluster.get().map(Arc::as_ref);
        let mut writer = self.shared.trie_writer.lock().expect("trie writer lock");
        while left > 0 {
            let Some((session, filters, in_groups)) = self.subs.trie.sweep.front_mut() else {
                break;
            };
            let (session, in_groups) = (*session, *in_groups);
            let Some(filter) = filters.next() else {
                self.subs.trie.sweep.pop_front();
                if in_groups {
                    gone_from_groups.push(session);
                }
                continue;
            };
            left -= 1;
            let parsed = parse_filter(&filter).expect("checked before it was subscribed");
            unsubscribe_in(&mut writer, cluster, parsed, session);
        }
        writer.publish();
        drop(writer);
        // Out of the published trie: no group passes over them any more.
        if !gone_from_groups.is_empty() {
            self.shared.leaving_groups.rcu(|leaving| {
                let mut leaving = (**leaving).clone();
                for session in &gone_from_groups {
                    leaving.remove(session);
                }
                leaving
            });
            (self.shared.leaving_count).fetch_sub(gone_from_groups.len(), Ordering::SeqCst);
        }
    }

    /// Applies this turn's subscription changes as one batch, then sends what waited on it.
    pub(super) fn apply_trie_ops(&mut self) {
        if self.subs.trie.ops.is_empty() && self.subs.trie.after.is_empty() {
            return;
        }
        if !self.subs.trie.ops.is_empty() {
            let mut writer = self.shared.trie_writer.lock().expect("trie writer lock");
            let cluster = self.shared.cluster.get().map(Arc::as_ref);
            for op in self.subs.trie.ops.drain(..) {
                match op {
                    TrieOp::Subscribe {
                        filter,
                        session,
                        sub,
                    } => {
                        let parsed = parse_filter(&filter).expect("checked before it was queued");
                        subscribe_in(&mut writer, cluster, parsed, session, sub);
                    }
                    TrieOp::Unsubscribe { filter, session } => {
                        let parsed = parse_filter(&filter).expect("checked before it was queued");
                        unsubscribe_in(&mut writer, cluster, parsed, session);
                    }
                }
            }
            writer.publish();
            // A subscribe storm's batch does not stay allocated afterwards.
            if self.subs.trie.ops.capacity() > TRIE_OPS_KEPT {
                self.subs.trie.ops = Vec::new();
            }
        }
        for after in std::mem::take(&mut self.subs.trie.after) {
            let AfterTrie::Ack {
                conn,
                session,
                packet,
                retained,
            } = after;
            if self.conn(conn).and_then(|c| c.session) != Some(session) {
                // The connection closed in the meantime: no answer, but a session that
                // lives on is still owed its new subscriptions' retained messages.
                if self.sessions.get(&session).is_some() {
                    self.owe_requested(session, retained);
                }
                continue;
            }
            let kind = if matches!(packet, Packet::SubAck(_)) {
                "SUBACK"
            } else {
                "UNSUBACK"
            };
            log::debug!("Sending {kind} to {}", self.conn_name(conn));
            self.send_packet(conn, &packet);
            self.owe_requested(session, retained);
        }
    }
}

/// Subscribes in the trie; a cluster is told of each new subscription (its interest), in
/// the trie's order (the writer is locked).
fn subscribe_in(
    writer: &mut TreeWriter,
    cluster: Option<&Cluster>,
    filter: FilterRef<'_>,
    session: SessionId,
    sub: Subscription,
) {
    let replaced = writer.subscribe(filter, session, sub);
    if let (Some(cluster), None) = (cluster, replaced) {
        tell_interest(cluster, filter, true);
    }
}

/// Tells the cluster of a subscription added or gone: by its filter, or for a shared
/// subscription its whole `$share/{group}/{filter}`.
fn tell_interest(cluster: &Cluster, filter: FilterRef<'_>, added: bool) {
    match filter.group() {
        None => cluster.interest(filter.filter(), added),
        Some(group) => {
            let key = format!("$share/{group}/{}", filter.filter());
            cluster.interest(&key, added);
        }
    }
}

/// Unsubscribes in the trie; a cluster is told of each subscription gone.
fn unsubscribe_in(
    writer: &mut TreeWriter,
    cluster: Option<&Cluster>,
    filter: FilterRef<'_>,
    session: SessionId,
) {
    let removed = writer.unsubscribe(filter, session);
    if let (Some(cluster), Some(_)) = (cluster, removed) {
        tell_interest(cluster, filter, false);
    }
}
