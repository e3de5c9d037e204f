//! A node's writes to the keys of the sessions it owns: a key's value is its owner and the
//! session's record (`wire::encode_record`: subscriptions, will), written again when the
//! session changes (a shard offers a session's record at most once a tick:
//! `shard/cluster_records.rs`), and deleted when the session ends.
//!
//! The writes of one key go one after the other, each expecting the revision the last one
//! made (the first, the revision the node's claim won). A write that finds another revision
//! has lost the key (another node claimed it): the node writes it no more, and the session
//! here, another node's now, goes (`ShardMsg::ClusterLost`). So a record is only ever
//! written by the key's owner, and a node that lost a session cannot overwrite the new
//! owner's record.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use async_nats::jetstream::kv;
use bytes::Bytes;
use hashbrown::HashMap;
use tokio::sync::Semaphore;

use super::wire::{self, Owner, NO_CLAIM};
use super::{client_key, in_time, Record, STEP_WAIT};
use crate::cluster::Cluster;
use crate::router::{Mailboxes, ShardMsg};

/// Keys written at once; the writes of other keys wait their turn.
const WRITES_AT_ONCE: usize = 256;

/// How long before a write whose end is unknown is made again.
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// The keys this node owns and writes.
pub(super) struct Records {
    kept: Mutex<HashMap<Arc<str>, Kept>>,
    at_once: Arc<Semaphore>,
    /// Numbers the tasks writing keys: a task whose key's entry went (and came back, with
    /// a task of its own) stops.
    tasks: std::sync::atomic::AtomicU64,
    mailboxes: Arc<Mailboxes>,
}

/// One key's writes.
struct Kept {
    /// The revision this node's claim of the client id won: a later claim here starts
    /// afresh, an earlier one's writes are dropped.
    claim: u64,
    /// The revision of this node's last write.
    revision: u64,
    /// Whether a write is under way (the next waits in `next`), and the number of the task
    /// writing.
    busy: bool,
    task: u64,
    /// The next write: only the latest record is written, and nothing after a release.
    next: Option<Next>,
}

#[derive(Clone)]
enum Next {
    Record(Record),
    Release,
}

/// How a write ended.
enum Written {
    At(u64),
    /// The key is another node's now, or it went.
    Lost,
    /// A later claim of the client here wrote it: this claim's writes are over (the later
    /// claim's own follow).
    Claimed,
    /// Unknown (no answer, and the key could not be read): the next write will tell.
    Unknown,
}

impl Records {
    pub(super) fn new(mailboxes: Arc<Mailboxes>) -> Records {
        Records {
            kept: Mutex::new(HashMap::new()),
            at_once: Arc::new(Semaphore::new(WRITES_AT_ONCE)),
            tasks: std::sync::atomic::AtomicU64::new(0),
            mailboxes,
        }
    }

    /// The key of `client_id` is another node's now: the session here, claimed at `claim`,
    /// goes (its shard looks it up).
    fn lost(&self, cluster: &Cluster, client_id: Arc<str>, claim: u64) {
        let shard = cluster.shard_of(&client_id);
        let msg = ShardMsg::ClusterLost { client_id, claim };
        if self.mailboxes.send(shard, msg).is_err() {
            (cluster.stats.dropped_incoming).fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes `record` to the key of `client_id`, which this node claimed at `claim`.
    pub(super) fn record(
        self: &Arc<Self>,
        cluster: &Arc<Cluster>,
        store: &kv::Store,
        client_id: Arc<str>,
        claim: u64,
        record: Record,
    ) {
        self.then(cluster, store, client_id, claim, Next::Record(record));
    }

    /// The session of `client_id`, claimed here at `claim`, ended: its key goes, unless
    /// another node wrote it since.
    pub(super) fn release(
        self: &Arc<Self>,
        cluster: &Arc<Cluster>,
        store: &kv::Store,
        client_id: Arc<str>,
        claim: u64,
    ) {
        self.then(cluster, store, client_id, claim, Next::Release);
    }

    /// Reads the key of `client_id`, claimed here at `claim`: if it names another node (or
    /// is gone), the session here goes.
    pub(super) fn verify(
        self: &Arc<Self>,
        cluster: &Arc<Cluster>,
        store: &kv::Store,
        client_id: Arc<str>,
        claim: u64,
    ) {
        let (records, cluster, store) = (self.clone(), cluster.clone(), store.clone());
        tokio::spawn(async move {
            let Ok(_permit) = records.at_once.clone().acquire_owned().await else {
                return;
            };
            let entry = match in_time(store.entry(client_key(&client_id))).await {
                Ok(entry) => entry,
                Err(_) => return, // Unknown: it stays.
            };
            let owner = (entry.filter(|e| e.operation == kv::Operation::Put))
                .and_then(|e| wire::decode_owner(&e.value).ok())
                .map(|value| value.owner);
            let mine = owner
                .is_some_and(|o| o.node == cluster.node_id && o.incarnation == cluster.incarnation);
            if !mine {
                records.lost(&cluster, client_id, claim);
            }
        });
    }

    /// A node that claimed `client_id` at `revision` took its session (or was told there
    /// was none here): this node writes its key no more.
    pub(super) fn forget(&self, client_id: &str, revision: u64) {
        let mut kept = self.kept.lock().expect("records lock");
        if kept.get(client_id).is_some_and(|k| k.claim < revision) {
            kept.remove(client_id);
        }
    }

    fn then(
        self: &Arc<Self>,
        cluster: &Arc<Cluster>,
        store: &kv::Store,
        client_id: Arc<str>,
        claim: u64,
        next: Next,
    ) {
        let mut kept = self.kept.lock().expect("records lock");
        let k = kept.entry(client_id.clone()).or_insert(Kept {
            claim,
            revision: claim,
            busy: false,
            task: 0,
            next: None,
        });
        if claim < k.claim {
            return; // An earlier claim's: the key was written since.
        }
        if claim > k.claim {
            // A later claim of the client here: its writes follow its own revision.
            *k = Kept {
                claim,
                revision: claim,
                busy: k.busy,
                task: k.task,
                next: None,
            };
        }
        if !matches!(k.next, Some(Next::Release)) {
            k.next = Some(next);
        }
        if std::mem::replace(&mut k.busy, true) {
            return; // The write under way goes on with it.
        }
        let task = self.tasks.fetch_add(1, Ordering::Relaxed);
        k.task = task;
        drop(kept);
        let (records, cluster, store) = (self.clone(), cluster.clone(), store.clone());
        tokio::spawn(async move {
            records
                .write_in_turn(&cluster, &store, client_id, task)
                .await
        });
    }

    /// Writes what waits for the key of `client_id`, one write after the other, until
    /// nothing does.
    async fn write_in_turn(
        &self,
        cluster: &Cluster,
        store: &kv::Store,
        client_id: Arc<str>,
        task: u64,
    ) {
        let Ok(_permit) = self.at_once.clone().acquire_owned().await else {
            return;
        };
        let key = client_key(&client_id);
        let me = Owner {
            node: cluster.node_id.clone(),
            incarnation: cluster.incarnation,
            claim: NO_CLAIM,
        };
        loop {
            let (next, claim, expected) = {
                let mut kept = self.kept.lock().expect("records lock");
                let Some(k) = kept.get_mut(&client_id).filter(|k| k.task == task) else {
                    return;
                };
                match k.next.take() {
                    Some(next) => (next, k.claim, k.revision),
                    None => {
                        k.busy = false;
                        return;
                    }
                }
            };
            let released = matches!(next, Next::Release);
            let retry = Some(next.clone());
            let written = match next {
                Next::Record(record) => {
                    let value = wire::encode_owner(&me, record.bytes.as_deref());
                    let written = write(store, &key, value, expected, &me).await;
                    let counter = match written {
                        Written::At(_) => {
                            log::debug!(
                                "Cluster: the record of {client_id} is in the bucket ({} subscriptions, {}).",
                                record.subscriptions,
                                if record.will { "a will" } else { "no will" }
                            );
                            &cluster.stats.records_written
                        }
                        _ => &cluster.stats.records_not_written,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    written
                }
                Next::Release => {
                    let deleted = store.delete_expect_revision(&key, Some(expected));
                    match tokio::time::timeout(STEP_WAIT, deleted).await {
                        Ok(Ok(())) => Written::Lost,
                        Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                            log::debug!(
                                "Cluster: the key of {client_id} stays: another claim wrote it."
                            );
                            Written::Lost
                        }
                        // Asked again: a key left behind would name this node as the
                        // owner of a session it no longer has.
                        _ => Written::Unknown,
                    }
                }
            };
            let lost = {
                let mut kept = self.kept.lock().expect("records lock");
                let Some(k) = kept.get_mut(&client_id).filter(|k| k.task == task) else {
                    return;
                };
                if k.claim != claim {
                    continue; // A later claim of the client here: its writes go on.
                }
                match written {
                    Written::At(revision) => {
                        k.revision = revision;
                        continue;
                    }
                    Written::Unknown => {
                        // Made again after a pause, unless a later record waits already.
                        if k.next.is_none() {
                            k.next = retry;
                        }
                        false
                    }
                    Written::Claimed => {
                        kept.remove(&client_id);
                        return;
                    }
                    Written::Lost => {
                        kept.remove(&client_id);
                        true
                    }
                }
            };
            if !lost {
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
            if !released {
                log::debug!("Cluster: the key of {client_id} is another node's now.");
                self.lost(cluster, client_id, claim);
            }
            return;
        }
    }
}

/// Writes `value` to `key` if its last write is still revision `expected`. A write not
/// answered, or that finds another revision, is found out by reading the key: this node's
/// record there (`me`), an earlier write of it landed (it is written again after it).
async fn write(store: &kv::Store, key: &str, value: Bytes, expected: u64, me: &Owner) -> Written {
    let mut expected = expected;
    for _ in 0..2 {
        match tokio::time::timeout(STEP_WAIT, store.update(key, value.clone(), expected)).await {
            Ok(Ok(revision)) => return Written::At(revision),
            Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
            Ok(Err(e)) => log::debug!("Cluster: writing the record of {key}: {e}"),
            Err(_) => log::debug!("Cluster: writing the record of {key}: no answer"),
        }
        let entry = match in_time(store.entry(key)).await {
            Ok(Some(entry)) if entry.operation == kv::Operation::Put => entry,
            Ok(_) => return Written::Lost,
            Err(_) => return Written::Unknown,
        };
        let owner = match wire::decode_owner(&entry.value) {
            Ok(value) => value.owner,
            Err(_) => return Written::Lost,
        };
        if owner.node != me.node || owner.incarnation != me.incarnation {
            return Written::Lost;
        }
        if owner.claim != NO_CLAIM {
            return Written::Claimed;
        }
        expected = entry.revision;
    }
    Written::Unknown
}
