//! Which nodes are there, and what becomes of the sessions of a node that is gone.
//!
//! Each node writes its heartbeat (its id and run) to its key in the bucket
//! `midge_<cluster>_nodes` every second, each write expecting the revision of its last, and
//! watches the bucket. A node whose key has not been written for `cluster_node_timeout`
//! (by the watching node's own clock: no two clocks are compared) is taken for gone, but
//! only by a node whose own heartbeats have been landing for that long (one cut off from
//! JetStream, or just back, takes nobody for gone). The nodes that see it write their name
//! into its key, expecting the revision they last saw: one write lands (a node that wrote
//! since keeps its key), and that node takes over the gone node's sessions (`adopt`): each
//! key the gone node owns and holds a record in is written with this node as its owner
//! (expecting the gone node's revision: a client that claimed it meanwhile keeps it), and
//! the session is revived here from its record, offline. Its will goes out after its delay
//! unless the client comes back first (`shard/cluster_records.rs`); its subscriptions take
//! what is published from then on, for the client to find wherever it connects next. A
//! node that restarts takes over its earlier run's sessions the same way, unless another
//! node took that run for gone first.
//!
//! A node that finds its key naming another node was taken for gone (its heartbeats did not
//! reach JetStream in time): its sessions are another node's now, so it closes their
//! connections and drops them (the clients connect again and find their sessions where
//! they went).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use hashbrown::HashMap;
use tokio::sync::watch;
use tokio::time::Instant;

use super::wire::{self, Owner, NO_CLAIM};
use super::{in_time, node_token, open_kv, send_patiently, Bucket, OPEN_RETRY};
use crate::cluster::replay::{Join, Replay};
use crate::cluster::Cluster;
use crate::router::{Mailboxes, ShardMsg};

/// How often a node writes its heartbeat and looks for nodes gone.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Keys of a gone node's sessions looked at at once.
const ADOPTIONS_AT_ONCE: usize = 32;

/// A session taken over from a node that is gone, for a shard to revive.
pub struct Adopted {
    /// The revision this node wrote itself as the owner at.
    pub revision: u64,
    /// The session's record (`wire::encode_record`).
    pub record: bytes::Bytes,
    /// The node it was taken from, for the log.
    pub from: String,
    /// What the gone node missed is read again for it (`replay.rs`): the shard marks it as
    /// being replayed for, then drops this.
    pub replay: Option<crate::cluster::replay::Join>,
}

/// A node as last seen in the bucket.
#[derive(Clone)]
struct Seen {
    node: String,
    incarnation: u64,
    revision: u64,
    at: Instant,
}

/// Writes this node's heartbeat, watches the others', and takes over the sessions of those
/// found gone, until the link ends.
pub(super) async fn serve(
    cluster: Arc<Cluster>,
    js: jetstream::Context,
    sessions: watch::Receiver<Bucket>,
    mailboxes: Arc<Mailboxes>,
) {
    let bucket = format!("midge_{}_nodes", cluster.settings.name);
    let mut said_unavailable = false;
    let store = loop {
        let description = "midge: each node's heartbeat";
        match in_time(open_kv(&cluster, &js, &bucket, description)).await {
            Ok(store) => break store,
            Err(e) => {
                if !std::mem::replace(&mut said_unavailable, true) {
                    log::error!("Error: cluster: cannot open the JetStream bucket {bucket} ({e}); until it can be, the sessions and wills of a node that is gone are not taken over. Trying again every {} s.", OPEN_RETRY.as_secs());
                }
                tokio::time::sleep(OPEN_RETRY).await;
            }
        }
    };
    log::debug!("Cluster: heartbeats go to the JetStream bucket {bucket}.");
    let _ = cluster.nodes_bucket.set(store.clone());
    let spawn_adoption = |gone: Seen, why: String, position: Option<u64>| {
        let (cluster, sessions, mailboxes) = (cluster.clone(), sessions.clone(), mailboxes.clone());
        let (js, nodes) = (js.clone(), store.clone());
        tokio::spawn(async move {
            let gone = Gone {
                seen: gone,
                why,
                position,
            };
            adopt_all(&cluster, &js, &nodes, &sessions, &mailboxes, gone).await
        });
    };
    let mut beating = Beating {
        key: node_token(&cluster.node_id),
        mine: None,
        healthy_since: None,
        position_written: 0,
    };
    // This node's earlier run, if its key still names it and no other node took it for
    // gone: taken over here once it is seen gone.
    if let Some(earlier) = beating.wait_out_earlier_run(&cluster, &store).await {
        // (Its position read now: this run writes its own there from its first heartbeat.)
        let position = position_of(&store, &earlier.node, earlier.incarnation).await;
        let why = "it is this node's earlier run".into();
        spawn_adoption(earlier, why, Some(position));
    }
    let mut seen: HashMap<String, Seen> = HashMap::new();
    // The runs this node took for gone (and takes over): one whose write's answer was lost
    // is found in the watch, naming this node.
    let mut taken: hashbrown::HashSet<(String, u64)> = hashbrown::HashSet::new();
    let mut watching: Option<kv::Watch> = None;
    let mut beat = tokio::time::interval(HEARTBEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if watching.is_none() {
            // (Again after a failure: the current values come first, each seen now.)
            watching = in_time(store.watch_with_history(">")).await.ok();
        }
        tokio::select! {
            _ = beat.tick() => {
                beating.beat(&cluster, &mailboxes, &store).await;
                // Only while this node's own heartbeats have been landing for a timeout: a
                // node cut off from JetStream (or just back) takes nobody for gone.
                let healthy = beating.healthy_since.is_some_and(|since| {
                    since.elapsed() >= cluster.settings.node_timeout
                });
                if healthy {
                    for gone in take_gone(&cluster, &store, &beating.key, &mut seen).await {
                        if taken.insert((gone.node.clone(), gone.incarnation)) {
                            let timeout = cluster.settings.node_timeout.as_secs();
                            spawn_adoption(gone, format!("it has not been heard from for {timeout} s"), None);
                        }
                    }
                }
            }
            entry = next_entry(&mut watching) => match entry {
                // (A position beside a heartbeat: `position_key`.)
                Some(entry) if entry.key.contains('.') => {}
                Some(entry) => {
                    let by_me = node_in(&entry)
                        .filter(|v| v.taken_by.as_deref() == Some(cluster.node_id.as_str()));
                    if let Some(v) = by_me {
                        if taken.insert((v.node.clone(), v.incarnation)) {
                            let gone = Seen { node: v.node, incarnation: v.incarnation, revision: entry.revision, at: Instant::now() };
                            let timeout = cluster.settings.node_timeout.as_secs();
                            spawn_adoption(gone, format!("it has not been heard from for {timeout} s"), None);
                        }
                    }
                    saw(&mut seen, entry);
                }
                None => watching = None,
            }
        }
    }
}

/// The next change the watch sees; `None` once it failed (never, while there is none).
async fn next_entry(watching: &mut Option<kv::Watch>) -> Option<kv::Entry> {
    match watching {
        Some(watch) => match watch.next().await {
            Some(Ok(entry)) => Some(entry),
            _ => None,
        },
        None => std::future::pending().await,
    }
}

/// The node value a key holds, if it holds one (not deleted, and a node's).
pub(super) fn node_in(entry: &kv::Entry) -> Option<wire::NodeValue> {
    (entry.operation == kv::Operation::Put)
        .then(|| wire::decode_node(&entry.value).ok())
        .flatten()
}

/// The key beside node `key`'s heartbeat that says how far it has received the messages'
/// stream: no node's own (a node's key never holds a dot).
fn position_key(key: &str) -> String {
    format!("{key}.p")
}

/// How far run `incarnation` of `node` had received the messages' stream, as it last
/// wrote (0: not known, or a later run's).
pub(super) async fn position_of(nodes: &kv::Store, node: &str, incarnation: u64) -> u64 {
    let key = position_key(&node_token(node));
    let Ok(Some(entry)) = in_time(nodes.entry(key)).await else {
        return 0;
    };
    match wire::decode_position(&entry.value) {
        Ok((run, position)) if run == incarnation && entry.operation == kv::Operation::Put => {
            position
        }
        _ => 0,
    }
}

/// A node's key as the watch (or a read) shows it: a heartbeat is seen now; a deleted key
/// or one another node took for gone is no node's.
fn saw(seen: &mut HashMap<String, Seen>, entry: kv::Entry) {
    let value = node_in(&entry).filter(|v| v.taken_by.is_none());
    let Some(value) = value else {
        seen.remove(&entry.key);
        return;
    };
    let node = Seen {
        node: value.node,
        incarnation: value.incarnation,
        revision: entry.revision,
        at: Instant::now(),
    };
    seen.insert(entry.key, node);
}

/// This node's heartbeats: its key, the revision of its last heartbeat, and since when its
/// heartbeats have been landing.
struct Beating {
    key: String,
    mine: Option<u64>,
    healthy_since: Option<Instant>,
    /// The last position written beside the heartbeat (0: none yet).
    position_written: u64,
}

impl Beating {
    fn value(cluster: &Cluster) -> bytes::Bytes {
        wire::encode_node(&wire::NodeValue {
            node: cluster.node_id.clone(),
            incarnation: cluster.incarnation,
            taken_by: None,
        })
    }

    /// Before the first heartbeat: if the key holds another run of this node that nobody
    /// took for gone, waits until it has stood still for `cluster_node_timeout` (an earlier
    /// run, gone; a live process of the same id keeps writing it, and this one waits,
    /// saying so), then replaces it, expecting its revision (of this node and another taking
    /// that run for gone at once, one write lands), and gives that run back to be taken
    /// over here as another node's would be.
    async fn wait_out_earlier_run(&mut self, cluster: &Cluster, store: &kv::Store) -> Option<Seen> {
        let timeout = cluster.settings.node_timeout;
        let mut still: Option<(u64, Instant)> = None;
        let mut said = false;
        loop {
            let Ok(entry) = in_time(store.entry(&self.key)).await else {
                tokio::time::sleep(HEARTBEAT).await;
                continue;
            };
            let entry = entry?;
            let earlier = node_in(&entry)
                .filter(|v| v.incarnation != cluster.incarnation && v.taken_by.is_none())?;
            match still {
                Some((revision, since)) if revision == entry.revision => {
                    if since.elapsed() >= timeout {
                        let write = store.update(&self.key, Self::value(cluster), entry.revision);
                        if let Ok(revision) = in_time(write).await {
                            self.landed(revision);
                            return Some(Seen {
                                node: earlier.node,
                                incarnation: earlier.incarnation,
                                revision: entry.revision,
                                at: Instant::now(),
                            });
                        }
                    }
                }
                Some(_) if !std::mem::replace(&mut said, true) => {
                    log::error!("Error: cluster: another node writes the heartbeat of node {} (two nodes with one cluster_node_id?); this one waits for it to stop.", cluster.node_id);
                    still = Some((entry.revision, Instant::now()));
                }
                _ => still = Some((entry.revision, Instant::now())),
            }
            tokio::time::sleep(HEARTBEAT).await;
        }
    }

    /// Beside the heartbeat (a key of its own, which nodes of an earlier version pass
    /// over): how far this run has received the messages' stream, once it knows.
    async fn write_position(&mut self, cluster: &Cluster, store: &kv::Store) {
        let position = cluster.position.load(Ordering::Relaxed);
        if position == 0 || position == self.position_written {
            return;
        }
        let value = wire::encode_position(cluster.incarnation, position);
        if in_time(store.put(position_key(&self.key), value))
            .await
            .is_err()
        {
            return;
        }
        if std::mem::replace(&mut self.position_written, position) == 0 {
            log::info!(target: "information", "Cluster: this node's heartbeat says how far it has received the messages' stream: what it misses if it goes is read again for its sessions where they go.");
        }
    }

    fn landed(&mut self, revision: u64) {
        self.mine = Some(revision);
        self.healthy_since.get_or_insert_with(Instant::now);
    }

    /// Writes this node's heartbeat after its last (expecting its revision; the first
    /// creates the key); a failure is looked into and tried again at the next beat.
    async fn beat(&mut self, cluster: &Cluster, mailboxes: &Mailboxes, store: &kv::Store) {
        let value = Self::value(cluster);
        let written = match self.mine {
            Some(last) => in_time(store.update(&self.key, value.clone(), last)).await,
            None => in_time(store.create(&self.key, value.clone())).await,
        };
        if let Ok(revision) = written {
            self.write_position(cluster, store).await;
            return self.landed(revision);
        }
        self.healthy_since = None;
        // Not landed, or not known to: this node's own write whose answer was lost, a
        // node that took this one for gone, an earlier run's key taken by another node, or
        // another node of the same id.
        let Ok(entry) = in_time(store.entry(&self.key)).await else {
            return;
        };
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            self.mine = None; // Created again at the next beat.
            return;
        };
        let Ok(found) = wire::decode_node(&entry.value) else {
            // Not a node's heartbeat: written over.
            let write = store.update(&self.key, value, entry.revision);
            self.mine = in_time(write).await.ok();
            return;
        };
        let this_run = found.incarnation == cluster.incarnation;
        if this_run && found.taken_by.is_none() {
            return self.landed(entry.revision);
        }
        if this_run {
            taken_for_gone(cluster, mailboxes).await;
        } else if found.taken_by.is_none() {
            static CLASHES: AtomicU64 = AtomicU64::new(0);
            if let Some(seen) = crate::cluster::count_to_say(&CLASHES) {
                log::error!("Error: cluster: another node writes the heartbeat of node {} (two nodes with one cluster_node_id?) ({seen} so far).", cluster.node_id);
            }
            self.mine = None;
            return;
        }
        // (This run's key, or an earlier run's, taken by another node: written over.)
        let write = store.update(&self.key, value, entry.revision);
        self.mine = in_time(write).await.ok();
    }
}

/// This node's key names another node that took it for gone.
async fn taken_for_gone(cluster: &Cluster, mailboxes: &Mailboxes) {
    cluster.stats.taken_for_gone.fetch_add(1, Ordering::Relaxed);
    log::error!("Error: cluster: the other nodes took this node for gone (its heartbeats did not reach JetStream for cluster_node_timeout): its sessions were taken over elsewhere, so their connections here close; their clients find them where they went.");
    for shard in 0..cluster.shards {
        send_patiently(cluster, mailboxes, shard, ShardMsg::ClusterTakenForGone).await;
    }
}

/// The nodes not heard from for `cluster_node_timeout` that this node takes for gone: it
/// writes its own name into each one's key, expecting the revision it last saw (of nodes
/// doing so at once, one write lands; a node that wrote since keeps its key).
async fn take_gone(
    cluster: &Cluster,
    store: &kv::Store,
    mine: &str,
    seen: &mut HashMap<String, Seen>,
) -> Vec<Seen> {
    let now = Instant::now();
    let timeout = cluster.settings.node_timeout;
    let mut silent = Vec::new();
    for (key, node) in seen.iter_mut() {
        if key != mine && now.duration_since(node.at) >= timeout {
            // Not tried again before another timeout, unless it is heard from.
            node.at = now;
            silent.push((key.clone(), node.clone()));
        }
    }
    let mut gone = Vec::new();
    for (key, node) in silent {
        let taken = wire::NodeValue {
            node: node.node.clone(),
            incarnation: node.incarnation,
            taken_by: Some(cluster.node_id.clone()),
        };
        let write = store.update(&key, wire::encode_node(&taken), node.revision);
        if in_time(write).await.is_ok() {
            seen.remove(&key);
            gone.push(node);
            continue;
        }
        // Written since (the watch lags), taken by another node, or this write's answer
        // lost: read as it is.
        let Ok(Some(entry)) = in_time(store.entry(&key)).await else {
            continue;
        };
        if node_in(&entry).as_ref() == Some(&taken) {
            seen.remove(&key);
            gone.push(node);
        } else {
            saw(seen, entry);
        }
    }
    gone
}

/// A node run found gone: how (for the log), and how far it had received the messages'
/// stream if that was read already.
struct Gone {
    seen: Seen,
    why: String,
    position: Option<u64>,
}

/// Takes over the sessions of the gone run that hold a record (the others' keys go), and
/// reads again for them what it missed.
async fn adopt_all(
    cluster: &Cluster,
    js: &jetstream::Context,
    nodes: &kv::Store,
    sessions: &watch::Receiver<Bucket>,
    mailboxes: &Mailboxes,
    gone: Gone,
) {
    let Gone {
        seen: gone,
        why,
        position,
    } = gone;
    cluster.stats.nodes_gone.fetch_add(1, Ordering::Relaxed);
    log::warn!("Warning: cluster: node {} is gone ({why}): its sessions and its clients' wills are taken over here.", gone.node);
    // (Once the sessions bucket is open: a node that just started may have taken its
    // earlier run for gone before.)
    let mut sessions = sessions.clone();
    let store = match sessions.wait_for(|b| matches!(b, Bucket::Open(_))).await {
        Ok(open) => match &*open {
            Bucket::Open(store) => Some((**store).clone()),
            _ => None,
        },
        Err(_) => None,
    };
    let keys = match store {
        Some(store) => in_time(store.keys()).await.map(|keys| (store, keys)),
        None => Err("the sessions bucket is not open".into()),
    };
    let (store, keys) = match keys {
        Ok(found) => found,
        Err(e) => {
            log::error!("Error: cluster: the sessions of node {} cannot be looked up ({e}); they are not taken over.", gone.node);
            return;
        }
    };
    // All of them first: the writes below add to the stream the keys are read from.
    let keys: Vec<String> = keys
        .filter_map(|key| async move { key.ok() })
        .collect()
        .await;
    // What the gone node missed is read again for them (`replay.rs`), if it said how far
    // it had received.
    let position = match position {
        Some(position) => position,
        None => position_of(nodes, &gone.node, gone.incarnation).await,
    };
    let replay = Replay::new(cluster).filter(|_| position > 0);
    if position == 0 && cluster.messages_open.load(Ordering::Relaxed) {
        log::warn!("Warning: cluster: node {} did not say how far it had received the messages' stream (an earlier version, or it had just started): what it missed is not read again for its sessions.", gone.node);
    }
    let adopted = futures_util::stream::iter(keys)
        .map(|key| {
            let join = replay.as_ref().map(Replay::join);
            adopt(cluster, &store, mailboxes, &gone, key, join)
        })
        .buffer_unordered(ADOPTIONS_AT_ONCE)
        .fold(0usize, |n, adopted| async move { n + usize::from(adopted) })
        .await;
    log::info!(target: "information", "Cluster: {adopted} sessions of node {} taken over here.", gone.node);
    if let Some(replay) = replay {
        let what = format!("node {}", gone.node);
        replay.run(cluster, js, mailboxes, position, &what).await;
    }
}

/// Takes over the session under `key` if `gone` owns it: true if it did.
async fn adopt(
    cluster: &Cluster,
    store: &kv::Store,
    mailboxes: &Mailboxes,
    gone: &Seen,
    key: String,
    replay: Option<Join>,
) -> bool {
    let entry = match in_time(store.entry(&key)).await {
        Ok(Some(entry)) if entry.operation == kv::Operation::Put => entry,
        _ => return false,
    };
    let Ok(value) = wire::decode_owner(&entry.value) else {
        return false;
    };
    if value.owner.node != gone.node || value.owner.incarnation != gone.incarnation {
        return false;
    }
    // The record's client must be the key's (a record is only ever written to its own key).
    let client_id = value
        .record
        .as_deref()
        .and_then(|r| wire::client_id_of(r).ok());
    let Some(client_id) = client_id.filter(|id| super::client_key(id) == key) else {
        // Nothing to take over (a session ending with its connection, without a will).
        let _ = in_time(store.delete_expect_revision(&key, Some(entry.revision))).await;
        return false;
    };
    let record = value.record.unwrap_or_default();
    let me = Owner {
        node: cluster.node_id.clone(),
        incarnation: cluster.incarnation,
        claim: NO_CLAIM,
    };
    let value = wire::encode_owner(&me, Some(&record));
    // A client that claimed it meanwhile keeps it; a write not answered is found out by
    // reading the key.
    let revision = match in_time(store.update(&key, value.clone(), entry.revision)).await {
        Ok(revision) => revision,
        Err(_) => match in_time(store.entry(&key)).await {
            Ok(Some(now)) if now.operation == kv::Operation::Put && now.value == value => {
                now.revision
            }
            _ => return false,
        },
    };
    let adopted = Adopted {
        revision,
        record,
        from: gone.node.clone(),
        replay,
    };
    let shard = cluster.shard_of(&client_id);
    let msg = ShardMsg::ClusterAdopt(Box::new(adopted));
    if !send_patiently(cluster, mailboxes, shard, msg).await {
        // Its key names this node, which holds nothing: the client starts anew.
        return false;
    }
    cluster
        .stats
        .sessions_adopted
        .fetch_add(1, Ordering::Relaxed);
    true
}
