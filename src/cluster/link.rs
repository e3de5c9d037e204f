//! The node's one connection to NATS, on a thread of its own with a small runtime
//! (`async-nats` is asynchronous; the shards are not, and never wait for it).
//!
//! Shards hand it what to publish through a bounded queue (full: dropped and counted), and
//! change the interest table under the trie's lock; the link reads both, publishes, keeps
//! one NATS subscription per subject pattern the node's filters need (reference counted),
//! and passes what arrives to a shard's mailbox (full: held here within a bound, then
//! dropped and counted). NATS away: the client reconnects by itself and subscribes again.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hashbrown::HashMap;
use tokio::sync::mpsc;
use tokio_stream::StreamMap;

use super::dedup::Dedup;
use super::patterns::Patterns;
use super::subject::{filter_subjects, long_subject};
use super::{wire, Cluster, Outgoing};
use crate::router::{Mailboxes, ShardMsg};

/// Messages a NATS subscription holds for the link before the client drops them (a slow
/// consumer, counted). Well inside the dedup window (`dedup::WINDOW`).
pub const SUBSCRIPTION_CAPACITY: usize = 2048;

/// Messages from NATS held per shard while its mailbox is full; past this they are dropped
/// and counted.
const HELD_PER_SHARD: usize = 4096;

/// Outgoing messages taken from the shards' queue in one go.
const PUBLISH_BATCH: usize = 256;

/// How often held messages are tried again.
const RETRY_EVERY: Duration = Duration::from_millis(1);

/// One NATS subscription: its id (increasing: older is lower), how many of the node's
/// filters need it.
struct Subscribed {
    id: u64,
    needed_by: usize,
}

struct Link {
    cluster: Arc<Cluster>,
    client: async_nats::Client,
    mailboxes: Arc<Mailboxes>,
    subscribers: StreamMap<u64, async_nats::Subscriber>,
    /// Subject pattern of each subscription, and the reverse.
    by_pattern: HashMap<String, Subscribed>,
    pattern_of: HashMap<u64, String>,
    /// For each subject, the oldest subscription matching it: the one messages are taken
    /// from (`patterns.rs`).
    patterns: Patterns,
    /// The patterns each filter subscribed to.
    filters: HashMap<String, Vec<String>>,
    next_id: u64,
    dedup: Dedup,
    /// Per shard: messages whose mailbox was full, in order.
    held: Vec<VecDeque<ShardMsg>>,
}

/// Runs the link until the broker shuts down (`Cluster::shut_down`).
pub(super) fn run(
    cluster: Arc<Cluster>,
    outgoing: mpsc::Receiver<Outgoing>,
    mailboxes: Arc<Mailboxes>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            log::error!("Error: cluster: cannot start the NATS client's runtime: {e}");
            return;
        }
    };
    runtime.block_on(serve(cluster, outgoing, mailboxes));
}

async fn serve(
    cluster: Arc<Cluster>,
    mut outgoing: mpsc::Receiver<Outgoing>,
    mailboxes: Arc<Mailboxes>,
) {
    let client = match super::connect::connect(&cluster).await {
        Ok(client) => client,
        Err(e) => {
            log::error!("Error: cluster: {e}");
            return;
        }
    };
    let shards = mailboxes.shards();
    let mut link = Link {
        cluster: cluster.clone(),
        client,
        mailboxes,
        subscribers: StreamMap::new(),
        by_pattern: HashMap::new(),
        pattern_of: HashMap::new(),
        patterns: Patterns::default(),
        filters: HashMap::new(),
        next_id: 0,
        dedup: Dedup::default(),
        held: (0..shards).map(|_| VecDeque::new()).collect(),
    };
    // Topics too long for a subject come on one subject every node takes.
    link.add_pattern(long_subject(&cluster.root)).await;
    link.reconcile().await;
    let mut retry = tokio::time::interval(RETRY_EVERY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    loop {
        tokio::select! {
            biased;
            () = cluster.stop.notified() => break,
            () = cluster.interest_changed.notified() => link.reconcile().await,
            n = outgoing.recv_many(&mut batch, PUBLISH_BATCH) => {
                if n == 0 {
                    break;
                }
                link.publish(&mut batch).await;
            }
            Some((id, message)) = link.subscribers.next() => link.arrived(id, message),
            _ = retry.tick(), if link.holds() => link.retry_held(),
        }
    }
    let _ = link.client.flush().await;
}

impl Link {
    async fn publish(&mut self, batch: &mut Vec<Outgoing>) {
        let stats = &self.cluster.stats;
        for out in batch.drain(..) {
            let len = out.bytes.len() as u64;
            // Waits only while the client's own queue is full (NATS away): the shards'
            // queue fills meanwhile, and they drop and count.
            match self.client.publish(out.subject, out.bytes).await {
                Ok(()) => {
                    stats.forwarded.fetch_add(1, Ordering::Relaxed);
                    stats.forwarded_bytes.fetch_add(len, Ordering::Relaxed);
                }
                Err(e) => {
                    stats.dropped_outgoing.fetch_add(1, Ordering::Relaxed);
                    log::debug!("cluster: publish failed: {e}");
                }
            }
        }
    }

    /// Brings the subscriptions in line with the filters the node's clients hold now.
    async fn reconcile(&mut self) {
        let changed = {
            let mut interest = self.cluster.interest.lock().expect("interest lock");
            let changed = std::mem::take(&mut interest.changed);
            (changed.into_iter())
                .map(|filter| {
                    let wanted = interest.counts.contains_key(&filter);
                    (filter, wanted)
                })
                .collect::<Vec<_>>()
        };
        for (filter, wanted) in changed {
            let have = self.filters.contains_key(&filter);
            if wanted && !have {
                let patterns = filter_subjects(&self.cluster.root, &filter);
                for pattern in &patterns {
                    self.add_pattern(pattern.clone()).await;
                }
                self.filters.insert(filter, patterns);
            } else if !wanted && have {
                for pattern in self.filters.remove(&filter).unwrap_or_default() {
                    self.drop_pattern(&pattern).await;
                }
            }
        }
        (self.cluster.stats.subscriptions).store(self.by_pattern.len(), Ordering::Relaxed);
    }

    async fn add_pattern(&mut self, pattern: String) {
        if let Some(sub) = self.by_pattern.get_mut(&pattern) {
            sub.needed_by += 1;
            return;
        }
        let subscriber = match self.client.subscribe(pattern.clone()).await {
            Ok(s) => s,
            Err(e) => {
                // Only when the client is closing.
                log::warn!("Warning: cluster: cannot subscribe to {pattern}: {e}");
                return;
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        self.subscribers.insert(id, subscriber);
        self.patterns.insert(&pattern, id);
        self.pattern_of.insert(id, pattern.clone());
        self.by_pattern
            .insert(pattern, Subscribed { id, needed_by: 1 });
    }

    /// One filter fewer needs `pattern`; the last one unsubscribes it. What the
    /// subscription still holds is taken first (it is the oldest for its subjects until
    /// it goes); the copies a newer one holds of the same messages are found as copies.
    async fn drop_pattern(&mut self, pattern: &str) {
        let Some(sub) = self.by_pattern.get_mut(pattern) else {
            return;
        };
        sub.needed_by -= 1;
        if sub.needed_by > 0 {
            return;
        }
        let id = sub.id;
        self.by_pattern.remove(pattern);
        if let Some(mut subscriber) = self.subscribers.remove(&id) {
            let _ = subscriber.unsubscribe().await;
            while let Some(message) = subscriber.next().await {
                self.arrived(id, message);
            }
        }
        self.patterns.remove(pattern);
        self.pattern_of.remove(&id);
    }

    /// A message from NATS on subscription `id`: taken if that subscription is the oldest
    /// for its subject and it is not a copy, then passed to the shard its topic hashes to.
    fn arrived(&mut self, id: u64, nats: async_nats::Message) {
        let stats = &self.cluster.stats;
        if self.patterns.oldest_match(nats.subject.as_str()) != Some(id) {
            return;
        }
        let now = Instant::now();
        let arrived = match wire::decode(&nats.payload, now, self.cluster.packet_max) {
            Ok(arrived) => arrived,
            Err(e) => {
                // Logged at the 1st, 2nd, 4th, 8th...: whoever else publishes on the
                // cluster's subjects cannot flood the log.
                let seen = stats.undecodable.fetch_add(1, Ordering::Relaxed) + 1;
                if seen.is_power_of_two() {
                    log::warn!(
                        "Warning: cluster: a message on {} that is not midge's: {e}; dropped ({seen} so far).",
                        nats.subject
                    );
                }
                return;
            }
        };
        if !self.dedup.first_time(arrived.origin, arrived.number) {
            stats.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        stats.received.fetch_add(1, Ordering::Relaxed);
        stats
            .received_bytes
            .fetch_add(nats.payload.len() as u64, Ordering::Relaxed);
        let shard = self.cluster.shard_of(&arrived.message.topic);
        let msg = ShardMsg::FromCluster {
            message: Box::new(arrived.message),
        };
        self.hand(shard, msg);
    }

    /// Into `shard`'s mailbox, behind what is held for it already.
    fn hand(&mut self, shard: usize, msg: ShardMsg) {
        let held = &mut self.held[shard];
        if held.is_empty() {
            if let Err(msg) = self.mailboxes.send(shard, msg) {
                held.push_back(msg);
            }
        } else if held.len() < HELD_PER_SHARD {
            held.push_back(msg);
        } else {
            self.cluster
                .stats
                .dropped_incoming
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn holds(&self) -> bool {
        self.held.iter().any(|h| !h.is_empty())
    }

    fn retry_held(&mut self) {
        for (shard, held) in self.held.iter_mut().enumerate() {
            while let Some(msg) = held.pop_front() {
                if let Err(msg) = self.mailboxes.send(shard, msg) {
                    held.push_front(msg);
                    break;
                }
            }
        }
    }
}
