//! The node's one connection to NATS, on a thread of its own with a small runtime
//! (`async-nats` is asynchronous; the shards are not, and never wait for it).
//!
//! Shards hand it what to publish through a bounded queue (full: dropped and counted), and
//! change the interest table under the trie's lock; the link reads both, publishes, keeps
//! one NATS subscription per subject pattern the node's filters need (reference counted),
//! and passes what arrives to a shard's mailbox (full: held here within a bound, then
//! dropped and counted). NATS away: the client reconnects by itself and subscribes again.
//!
//! Each subscription is read by a task of its own that passes its messages, in order, to
//! one channel the link reads: the link is woken for what arrives, never polls every
//! subscription. A message is taken from the oldest subscription matching its subject
//! (`patterns.rs`); while that one is going away (unsubscribed, what it holds still coming)
//! the others' messages for its subjects wait, then the copies among them are known
//! (`dedup.rs`).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hashbrown::{HashMap, HashSet};
use tokio::sync::{mpsc, oneshot};

use super::dedup::Copies;
use super::patterns::Patterns;
use super::retained::{self, Work};
use super::subject::{filter_subjects, long_subject, queue_group};
use super::{wire, Cluster, Outgoing, ToLink};
use crate::router::{Mailboxes, ShardMsg};

/// Messages a NATS subscription holds for its task before the client drops them (a slow
/// consumer, counted).
pub const SUBSCRIPTION_CAPACITY: usize = 2048;

/// Messages the subscriptions' tasks may have waiting for the link.
const ARRIVING_MAX: usize = 4096;

/// Messages from NATS held while their shard's mailbox is full, over all shards, and their
/// bytes; past either, dropped and counted.
const HELD_MAX: usize = 16_384;
const HELD_BYTES_MAX: usize = 64 << 20;

/// Messages of other subscriptions waiting while the oldest for their subject goes away
/// (moments); past this, dropped and counted.
const WAITING_FOR_DRAIN_MAX: usize = 16_384;

/// Outgoing messages taken from the shards' queue in one go, and arriving ones handled
/// between two such batches.
const PUBLISH_BATCH: usize = 256;
const ARRIVING_BATCH: usize = 256;

/// How often held messages are tried again, and filters whose subscriptions could not be
/// made.
const RETRY_EVERY: Duration = Duration::from_millis(1);
const RETRY_FILTERS: Duration = Duration::from_secs(1);

/// How long a subscription going away waits for NATS to confirm the subscriptions made
/// since (NATS away: it goes without, and what NATS held for it may be lost, as
/// anything on the way is then), and how much longer it stays (`retire`).
const CONFIRM_WAIT: Duration = Duration::from_secs(2);
const RETIRE_GRACE: Duration = Duration::from_millis(100);

/// How long a batch of publishes may wait for the NATS client's queue (NATS away).
const PUBLISH_WAIT: Duration = Duration::from_millis(50);

/// How long the link waits for NATS to take what it published, at shutdown.
const FLUSH_AT_STOP: Duration = Duration::from_secs(2);

/// What a subscription's task passes to the link.
enum Arriving {
    Message(u64, async_nats::Message),
    /// The subscription is about to go: what comes after this from the others for its
    /// subjects waits until it is drained.
    Leaving(u64),
    /// The subscription is gone and everything it had is passed.
    Drained(u64),
}

/// One NATS subscription: its id (increasing: older is lower), how many of the node's
/// filters need it, and how its task is told to unsubscribe.
struct Subscribed {
    id: u64,
    needed_by: usize,
    stop: oneshot::Sender<()>,
}

struct Link {
    cluster: Arc<Cluster>,
    client: async_nats::Client,
    /// With `cluster_retained jetstream`: JetStream, and the task that waits for its
    /// acknowledgements and answers queries (`retained.rs`).
    retained: Option<(async_nats::jetstream::Context, mpsc::Sender<Work>)>,
    mailboxes: Arc<Mailboxes>,
    arriving_tx: mpsc::Sender<Arriving>,
    /// Subject pattern of each subscription, and the reverse.
    by_pattern: HashMap<String, Subscribed>,
    pattern_of: HashMap<u64, String>,
    /// For each subject, the oldest subscription matching it: the one messages are taken
    /// from (`patterns.rs`).
    patterns: Patterns,
    /// Subscriptions going away, those of them drained already (taken out in the order
    /// they were made: one made later may have brought what an older one still draining
    /// did not), and the other subscriptions' messages for their subjects.
    draining: HashSet<u64>,
    drained: std::collections::BTreeSet<u64>,
    waiting_for_drain: Vec<(u64, async_nats::Message)>,
    /// The patterns each filter subscribed to.
    filters: HashMap<String, Vec<String>>,
    /// Past `cluster_max_subscriptions`: the one subscription that takes every message of
    /// the cluster, and the filters that came since without subscriptions of their own.
    catch_all: Option<String>,
    uncovered: HashSet<String>,
    /// Filters whose subscriptions could not be made, tried again each `RETRY_FILTERS`.
    failed: HashSet<String>,
    /// Whether the warning for share groups past the limit was given.
    groups_over_limit_said: bool,
    /// Share groups (`$share/{group}/{filter}`) with members here: the NATS queue group
    /// subscriptions each holds, and the reverse (`take_for_group`).
    groups: HashMap<String, Vec<(u64, oneshot::Sender<()>)>>,
    group_of: HashMap<u64, (Arc<str>, u64)>,
    next_id: u64,
    copies: Copies,
    /// Per shard: messages whose mailbox was full, in order; their count and bytes.
    held: Vec<VecDeque<(ShardMsg, usize)>>,
    held_count: usize,
    held_bytes: usize,
}

/// Runs the link until the broker shuts down (`Cluster::shut_down`).
pub(super) fn run(
    cluster: Arc<Cluster>,
    options: async_nats::ConnectOptions,
    outgoing: mpsc::Receiver<ToLink>,
    mailboxes: Arc<Mailboxes>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            log::error!("Error: cluster: cannot start the NATS client's runtime: {e}");
            cluster.link_gone();
            return;
        }
    };
    runtime.block_on(serve(cluster, options, outgoing, mailboxes));
}

async fn serve(
    cluster: Arc<Cluster>,
    options: async_nats::ConnectOptions,
    mut outgoing: mpsc::Receiver<ToLink>,
    mailboxes: Arc<Mailboxes>,
) {
    let servers = super::servers(&cluster.settings).unwrap_or_default();
    // Returns at once: the first connection is made, and every later one, in the background.
    let client = match options.connect(servers).await {
        Ok(client) => client,
        Err(e) => {
            log::error!("Error: cluster: cannot connect to NATS: {e}");
            cluster.link_gone();
            return;
        }
    };
    let shards = mailboxes.shards();
    let (arriving_tx, mut arriving) = mpsc::channel(ARRIVING_MAX);
    let retained = cluster.settings.retained_in_jetstream.then(|| {
        let js = async_nats::jetstream::new(client.clone());
        let (work, works) = mpsc::channel(retained::WORK_MAX);
        let serving = retained::serve(cluster.clone(), js.clone(), works, mailboxes.clone());
        tokio::spawn(serving);
        (js, work)
    });
    let mut link = Link {
        cluster: cluster.clone(),
        client,
        retained,
        mailboxes,
        arriving_tx,
        by_pattern: HashMap::new(),
        pattern_of: HashMap::new(),
        patterns: Patterns::default(),
        draining: HashSet::new(),
        drained: Default::default(),
        waiting_for_drain: Vec::new(),
        filters: HashMap::new(),
        catch_all: None,
        uncovered: HashSet::new(),
        failed: HashSet::new(),
        groups_over_limit_said: false,
        groups: HashMap::new(),
        group_of: HashMap::new(),
        next_id: 0,
        copies: Copies::default(),
        held: (0..shards).map(|_| VecDeque::new()).collect(),
        held_count: 0,
        held_bytes: 0,
    };
    // Topics too long for a subject come on one subject every node takes.
    link.add_pattern(long_subject(&cluster.root)).await;
    link.reconcile().await;
    let mut retry = tokio::time::interval(RETRY_EVERY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retry_filters = tokio::time::interval(RETRY_FILTERS);
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    let mut arrived = Vec::with_capacity(ARRIVING_BATCH);
    // Not biased: a steady stream of publishes must not starve what arrives, nor the
    // reverse.
    loop {
        tokio::select! {
            () = cluster.stop.notified() => break,
            () = cluster.interest_changed.notified() => link.reconcile().await,
            n = outgoing.recv_many(&mut batch, PUBLISH_BATCH) => {
                if n == 0 {
                    break;
                }
                link.publish(&mut batch).await;
            }
            n = arriving.recv_many(&mut arrived, ARRIVING_BATCH) => {
                for one in arrived.drain(..n) {
                    link.arrived(one);
                }
            }
            _ = retry.tick(), if link.held_count > 0 => link.retry_held(),
            _ = retry_filters.tick(), if !link.failed.is_empty() => link.retry_failed().await,
        }
    }
    let _ = tokio::time::timeout(FLUSH_AT_STOP, link.client.flush()).await;
}

impl Link {
    async fn publish(&mut self, batch: &mut Vec<ToLink>) {
        let now = Instant::now();
        // NATS away and the client's own queue full: what is not taken by then is dropped
        // and counted, so that the link goes on (and stops when asked).
        let deadline = tokio::time::Instant::now() + PUBLISH_WAIT;
        for item in batch.drain(..) {
            match item {
                ToLink::Publish(out) => self.publish_one(out, now, deadline).await,
                ToLink::Find(query) => self.hand_retained(Work::Query(query)),
            }
        }
    }

    async fn publish_one(&mut self, out: Outgoing, now: Instant, deadline: tokio::time::Instant) {
        let cluster = self.cluster.clone();
        let stats = &cluster.stats;
        cluster.taken_from_queue(&out);
        // Encoded here, not on the shard: the expiry left is counted up to now.
        if out.served.len() > wire::SERVED_MAX {
            stats.served_cut.fetch_add(1, Ordering::Relaxed);
        }
        let encoded = wire::encode_served(&out.message, out.origin, out.number, &out.served, now);
        let Some(bytes) = encoded else {
            stats.dropped_outgoing.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let max_payload = self.client.server_info().max_payload;
        if max_payload > 0 && bytes.len() > max_payload {
            // NATS refuses it (max_payload, 1 MB by default): said, counted.
            let seen = stats.too_large.fetch_add(1, Ordering::Relaxed) + 1;
            if seen.is_power_of_two() {
                log::warn!(
                    "Warning: cluster: a message to '{}' ({} bytes) is larger than NATS takes ({max_payload} bytes, its max_payload); not sent to the other nodes ({seen} so far).",
                    out.message.topic,
                    bytes.len()
                );
            }
            if out.message.retain {
                retained::not_stored(&cluster, "larger than NATS takes");
            }
            return;
        }
        let len = bytes.len() as u64;
        let publishing = self.client.publish(out.subject, bytes.clone());
        match tokio::time::timeout_at(deadline, publishing).await {
            Ok(Ok(())) => {
                stats.forwarded.fetch_add(1, Ordering::Relaxed);
                stats.forwarded_bytes.fetch_add(len, Ordering::Relaxed);
            }
            Err(_) => {
                stats.dropped_outgoing.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                let seen = stats.dropped_outgoing.fetch_add(1, Ordering::Relaxed) + 1;
                if seen.is_power_of_two() {
                    log::warn!(
                        "Warning: cluster: a publish to NATS failed: {e} ({seen} dropped so far)."
                    );
                }
            }
        }
        if out.message.retain {
            // Stored without the share groups served: they are this moment's.
            let stored = match out.served.is_empty() {
                true => Some(bytes),
                false => wire::encode(&out.message, out.origin, out.number, now),
            };
            if let Some(stored) = stored {
                self.store_retained(&out.message, stored, deadline).await;
            }
        }
    }

    /// Stores a retained message (or with an empty payload its removal) in JetStream; its
    /// acknowledgement is waited for by the retained task, in order with the queries.
    async fn store_retained(
        &mut self,
        message: &crate::router::Message,
        bytes: bytes::Bytes,
        deadline: tokio::time::Instant,
    ) {
        let Some((js, _)) = &self.retained else {
            return;
        };
        let Some(subject) = retained::subject(&self.cluster, &message.topic) else {
            return; // Kept on its node (`Cluster::keeps_retained`).
        };
        let (payload, headers) = if message.payload.is_empty() {
            (bytes::Bytes::new(), async_nats::HeaderMap::new())
        } else {
            (bytes, retained::headers(message))
        };
        let storing = js.publish_with_headers(subject, headers, payload);
        match tokio::time::timeout_at(deadline, storing).await {
            Ok(Ok(ack)) => self.hand_retained(Work::Stored(ack, retained::ack_deadline())),
            Ok(Err(e)) => retained::not_stored(&self.cluster, &e.to_string()),
            Err(_) => retained::not_stored(&self.cluster, "the NATS client is stuck"),
        }
    }

    fn hand_retained(&mut self, work: Work) {
        let Some((_, to_task)) = &self.retained else {
            return;
        };
        if let Err(e) = to_task.try_send(work) {
            match e.into_inner() {
                Work::Stored(..) => {
                    retained::not_stored(&self.cluster, "too many acknowledgements waited for")
                }
                Work::Query(query) => {
                    let stats = &self.cluster.stats;
                    stats
                        .retained_queries_failed
                        .fetch_add(1, Ordering::Relaxed);
                    log::warn!("Warning: cluster: too many retained queries under way; those of '{}' are not looked for.", query.filter);
                }
            }
        }
    }

    /// Brings the subscriptions in line with the filters the node's clients hold now:
    /// every addition before any removal, so that a filter replaced by another (SUBSCRIBE
    /// `a/b`, UNSUBSCRIBE `a/#`) is never uncovered in between.
    async fn reconcile(&mut self) {
        let (added, removed) = {
            let mut interest = self.cluster.interest.lock().expect("interest lock");
            let changed = std::mem::take(&mut interest.changed);
            let (added, removed): (Vec<String>, Vec<String>) = changed
                .into_iter()
                .partition(|f| interest.counts.contains_key(f));
            (added, removed)
        };
        // Once NATS could not be asked (its client stuck, `CONFIRM_WAIT` each), the rest
        // waits for the next try instead of each waiting in turn.
        let mut stuck = false;
        for filter in added {
            let known = self.filters.contains_key(&filter) || self.groups.contains_key(&filter);
            if known || self.uncovered.contains(&filter) {
                continue;
            }
            self.failed.remove(&filter);
            if stuck || !self.add_filter(filter.clone()).await {
                stuck = true;
                self.failed.insert(filter);
            }
        }
        for filter in removed {
            self.failed.remove(&filter);
            if self.uncovered.remove(&filter) {
                continue;
            }
            if let Some(subscribed) = self.groups.remove(&filter) {
                for (_, stop) in subscribed {
                    let _ = stop.send(());
                }
                continue;
            }
            for pattern in self.filters.remove(&filter).unwrap_or_default() {
                self.drop_pattern(&pattern);
            }
        }
        self.maybe_stop_catching_all().await;
        let stats = &self.cluster.stats;
        let held = self.by_pattern.len() + self.group_of.len();
        (stats.subscriptions).store(held, Ordering::Relaxed);
        (stats.uncovered).store(self.uncovered.len(), Ordering::Relaxed);
    }

    /// Filters whose subscriptions could not be made (NATS away long enough for the
    /// client's queue to fill) are tried again.
    async fn retry_failed(&mut self) {
        let failed = std::mem::take(&mut self.failed);
        self.cluster
            .interest
            .lock()
            .expect("interest lock")
            .changed
            .extend(failed);
        self.reconcile().await;
    }

    /// Subscribes what a filter (or a share group's `$share/{group}/{filter}`) needs, or
    /// past `cluster_max_subscriptions` leaves it to the catch-all (a share group: to this
    /// node's own publishers). False if NATS could not be asked: nothing is kept of it.
    async fn add_filter(&mut self, filter: String) -> bool {
        let shared = super::shared_filter(&filter).map(|(_, f)| f.to_string());
        let subjects = filter_subjects(&self.cluster.root, shared.as_deref().unwrap_or(&filter));
        let new = match shared {
            Some(_) => subjects.len() + 1,
            None => (subjects.iter())
                .filter(|p| !self.by_pattern.contains_key(*p))
                .count(),
        };
        let over = self.for_filters() + new > self.max_subscriptions();
        if shared.is_some() && over {
            // The catch-all cannot serve a group (it is no queue group): its members get
            // what their own node's clients publish until the group fits again.
            if !self.groups_over_limit_said {
                self.groups_over_limit_said = true;
                log::warn!("Warning: cluster: share groups past cluster_max_subscriptions ({}) get only what their own node's clients publish ({filter} is one).", self.max_subscriptions());
            }
            self.uncovered.insert(filter);
            return true;
        }
        let catching = self.catch_all.is_some();
        if (over || catching) && self.catch_all().await {
            self.uncovered.insert(filter);
            return true;
        }
        match shared {
            Some(_) => self.cover_group(filter, subjects).await,
            None => self.cover(filter, subjects).await,
        }
    }

    /// Subscribes what `filter` needs; false (none of it kept) if NATS could not be asked.
    async fn cover(&mut self, filter: String, patterns: Vec<String>) -> bool {
        let mut subscribed: Vec<String> = Vec::with_capacity(patterns.len());
        for pattern in patterns {
            if !self.add_pattern(pattern.clone()).await {
                for pattern in subscribed {
                    self.drop_pattern(&pattern);
                }
                return false;
            }
            subscribed.push(pattern);
        }
        self.filters.insert(filter, subscribed);
        true
    }

    fn max_subscriptions(&self) -> usize {
        self.cluster.settings.max_subscriptions
    }

    /// The subscriptions held for the clients' filters and share groups (not the `long`
    /// subject's, nor the catch-all's).
    fn for_filters(&self) -> usize {
        let fixed = 1 + usize::from(self.catch_all.is_some());
        self.by_pattern.len().saturating_sub(fixed) + self.group_of.len()
    }

    /// Subscribes a share group's subjects in its NATS queue group: NATS gives each
    /// message to one node of those with members, never back to the node that published it
    /// (`no_echo`), which served its own members first (`wire.rs`'s served groups). False
    /// (none of it kept) if NATS could not be asked.
    async fn cover_group(&mut self, key: String, mut subjects: Vec<String>) -> bool {
        let queue = queue_group(&key);
        let shared: Arc<str> = Arc::from(key.as_str());
        let hash = crate::topic::group_hash(&key);
        // Topics too long for a subject come on the `long` subject: the group takes its
        // share of them too (its node's trie matches them again).
        subjects.push(long_subject(&self.cluster.root));
        let mut subscribed = Vec::with_capacity(subjects.len());
        for subject in subjects {
            let subscribing = self.client.queue_subscribe(subject.clone(), queue.clone());
            let failed = match tokio::time::timeout(CONFIRM_WAIT, subscribing).await {
                Ok(Ok(subscriber)) => {
                    let id = self.next_id;
                    self.next_id += 1;
                    let (stop, stopped) = oneshot::channel();
                    tokio::spawn(pass_on(id, subscriber, stopped, self.arriving_tx.clone()));
                    self.group_of.insert(id, (shared.clone(), hash));
                    subscribed.push((id, stop));
                    continue;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "the NATS client is stuck".to_string(),
            };
            log::warn!("Warning: cluster: cannot subscribe to {subject} for {key}: {failed}");
            for (_, stop) in subscribed {
                let _ = stop.send(());
            }
            return false;
        }
        self.groups.insert(key, subscribed);
        true
    }

    /// Takes every message of the cluster from now on (once): each node's clients may
    /// hold as many distinct filters as they like, and one NATS subscription each would
    /// cost without bound. What arrives is matched on the node's trie as always, so it
    /// costs traffic, never a wrong delivery. False if it could not be subscribed.
    async fn catch_all(&mut self) -> bool {
        if self.catch_all.is_some() {
            return true;
        }
        let pattern = format!("{}.m.>", self.cluster.root);
        if !self.add_pattern(pattern.clone()).await {
            return false;
        }
        self.catch_all = Some(pattern);
        let stats = &self.cluster.stats;
        stats.catching_all.store(true, Ordering::Relaxed);
        stats.catch_all_started.fetch_add(1, Ordering::Relaxed);
        log::warn!(
            "Warning: cluster: the node's clients hold more distinct filters than cluster_max_subscriptions ({}) lets it subscribe to on NATS; it now takes every message of the cluster and keeps what its clients want (share groups past it are served by their own node's publishers).",
            self.max_subscriptions()
        );
        true
    }

    /// Back to a subscription per filter once they would take half the limit at most
    /// (a filter needs two subjects at most: `a/#` is `a` and `a.>`), so that a count
    /// near the limit does not switch back and forth. The filters' subscriptions are made
    /// before the catch-all goes; if one cannot be made, the catch-all stays.
    async fn maybe_stop_catching_all(&mut self) {
        if self.catch_all.is_none() && self.uncovered.is_empty() {
            return;
        }
        // A filter needs two subjects at most, a group three (with the `long` one).
        let half = self.max_subscriptions() / 2;
        if self.for_filters() + 2 * self.uncovered.len() > half {
            return;
        }
        let groups = (self.uncovered.iter())
            .filter(|f| f.starts_with("$share/"))
            .count();
        if self.for_filters() + 2 * self.uncovered.len() + groups > half {
            return;
        }
        let mut all_covered = true;
        for filter in std::mem::take(&mut self.uncovered) {
            if !all_covered {
                self.uncovered.insert(filter);
                continue;
            }
            let covered = match super::shared_filter(&filter) {
                Some((_, topic_filter)) => {
                    let subjects = filter_subjects(&self.cluster.root, topic_filter);
                    self.cover_group(filter.clone(), subjects).await
                }
                None => {
                    let patterns = filter_subjects(&self.cluster.root, &filter);
                    self.cover(filter.clone(), patterns).await
                }
            };
            if !covered {
                self.uncovered.insert(filter);
                all_covered = false;
            }
        }
        let Some(pattern) = self.catch_all.clone().filter(|_| all_covered) else {
            return;
        };
        self.catch_all = None;
        self.drop_pattern(&pattern);
        self.cluster
            .stats
            .catching_all
            .store(false, Ordering::Relaxed);
        log::info!(
            "Cluster: the node's clients' filters fit cluster_max_subscriptions ({}) again; it takes only what they want.",
            self.max_subscriptions()
        );
    }

    /// One more filter needs `pattern`; the first subscribes it. False if NATS could not
    /// be asked (the client is closing).
    async fn add_pattern(&mut self, pattern: String) -> bool {
        if let Some(sub) = self.by_pattern.get_mut(&pattern) {
            sub.needed_by += 1;
            return true;
        }
        let subscribing = self.client.subscribe(pattern.clone());
        let subscriber = match tokio::time::timeout(CONFIRM_WAIT, subscribing).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                log::warn!("Warning: cluster: cannot subscribe to {pattern}: {e}");
                return false;
            }
            Err(_) => {
                log::warn!(
                    "Warning: cluster: cannot subscribe to {pattern}: the NATS client is stuck"
                );
                return false;
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(pass_on(id, subscriber, stopped, self.arriving_tx.clone()));
        self.patterns.insert(&pattern, id);
        self.pattern_of.insert(id, pattern.clone());
        let needed_by = 1;
        (self.by_pattern).insert(
            pattern,
            Subscribed {
                id,
                needed_by,
                stop,
            },
        );
        true
    }

    /// One filter fewer needs `pattern`; the last one lets it go (`retire`). It stays the
    /// oldest for its subjects until its task says it is drained (`Arriving::Drained`).
    fn drop_pattern(&mut self, pattern: &str) {
        let Some(sub) = self.by_pattern.get_mut(pattern) else {
            return;
        };
        sub.needed_by -= 1;
        if sub.needed_by > 0 {
            return;
        }
        let sub = self.by_pattern.remove(pattern).expect("just found");
        tokio::spawn(retire(
            sub.id,
            sub.stop,
            self.client.clone(),
            self.cluster.fence_subject(),
            self.arriving_tx.clone(),
        ));
    }

    fn arrived(&mut self, arriving: Arriving) {
        match arriving {
            Arriving::Message(id, message) => match self.group_of.get(&id) {
                Some((key, hash)) => self.take_for_group(key.clone(), *hash, message),
                None => self.consider(id, message),
            },
            Arriving::Drained(id) if self.group_of.remove(&id).is_some() => {}
            Arriving::Leaving(id) => {
                // (Its task may have ended on its own already: the client is closing.)
                if self.pattern_of.contains_key(&id) {
                    self.draining.insert(id);
                }
            }
            Arriving::Drained(id) => {
                // Not asked to go (the client is closing): gone all the same.
                if let Some(pattern) = self.pattern_of.get(&id) {
                    if self.by_pattern.get(pattern).is_some_and(|s| s.id == id) {
                        self.by_pattern.remove(pattern);
                    }
                }
                self.draining.insert(id);
                self.drained.insert(id);
                self.finish_drained();
            }
        }
    }

    /// Takes out the drained subscriptions older than any still draining, oldest first,
    /// and looks again at what waited for them.
    fn finish_drained(&mut self) {
        let mut finished = false;
        while let Some(&oldest) = self.draining.iter().min() {
            if !self.drained.remove(&oldest) {
                break;
            }
            self.draining.remove(&oldest);
            if let Some(pattern) = self.pattern_of.remove(&oldest) {
                self.patterns.remove(&pattern, oldest);
                self.copies.drained(oldest, pattern, Instant::now());
            }
            finished = true;
        }
        if finished {
            // What waited may wait for another still.
            for (id, message) in std::mem::take(&mut self.waiting_for_drain) {
                self.consider(id, message);
            }
        }
    }

    /// A message from NATS on subscription `id`: taken if that subscription is the oldest
    /// for its subject; kept waiting if the oldest is going away.
    fn consider(&mut self, id: u64, nats: async_nats::Message) {
        match self.patterns.oldest_match(nats.subject.as_str()) {
            Some(oldest) if oldest == id => self.take(id, nats),
            Some(oldest) if self.draining.contains(&oldest) => {
                if self.waiting_for_drain.len() < WAITING_FOR_DRAIN_MAX {
                    self.waiting_for_drain.push((id, nats));
                } else {
                    (self.cluster.stats.dropped_incoming).fetch_add(1, Ordering::Relaxed);
                }
            }
            // Another subscription brings it (or brought it): a copy.
            _ => {
                (self.cluster.stats.duplicates).fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Decoded and checked; `None` (counted, said) if it is not a node's message.
    fn decoded(&self, nats: &async_nats::Message, now: Instant) -> Option<wire::Arrived> {
        let decoded = wire::decode(&nats.payload, now)
            .and_then(|a| self.cluster.check_arrived(&nats.subject, a));
        match decoded {
            Ok(arrived) => Some(arrived),
            Err(e) => {
                // Logged at the 1st, 2nd, 4th, 8th...: whoever else publishes on the
                // cluster's subjects cannot flood the log.
                let stats = &self.cluster.stats;
                let seen = stats.undecodable.fetch_add(1, Ordering::Relaxed) + 1;
                if seen.is_power_of_two() {
                    log::warn!(
                        "Warning: cluster: a message on {} that is not midge's: {e}; dropped ({seen} so far).",
                        nats.subject
                    );
                }
                None
            }
        }
    }

    /// A message NATS gave this node for the share group `key` (its queue group): to one
    /// of the group's members here, unless the publishing node served the group itself.
    fn take_for_group(&mut self, key: Arc<str>, hash: u64, nats: async_nats::Message) {
        let Some(arrived) = self.decoded(&nats, Instant::now()) else {
            return;
        };
        let stats = &self.cluster.stats;
        if arrived.served.contains(&hash) {
            stats.served_there.fetch_add(1, Ordering::Relaxed);
            return;
        }
        stats.received.fetch_add(1, Ordering::Relaxed);
        (stats.received_bytes).fetch_add(nats.payload.len() as u64, Ordering::Relaxed);
        let shard = self.cluster.shard_of(&arrived.message.topic);
        let size = arrived.message.held_bytes();
        let msg = ShardMsg::FromCluster {
            message: Box::new(arrived.message),
            group: Some(key),
        };
        self.hand(shard, msg, size);
    }

    /// Decoded, checked, known as new, and passed to the shard its topic hashes to.
    fn take(&mut self, id: u64, nats: async_nats::Message) {
        let now = Instant::now();
        let Some(arrived) = self.decoded(&nats, now) else {
            return;
        };
        let stats = &self.cluster.stats;
        if (self.copies).is_copy(&nats.subject, arrived.origin, arrived.number, now) {
            stats.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.copies.took(id, arrived.origin, arrived.number);
        stats.received.fetch_add(1, Ordering::Relaxed);
        (stats.received_bytes).fetch_add(nats.payload.len() as u64, Ordering::Relaxed);
        let shard = self.cluster.shard_of(&arrived.message.topic);
        let size = arrived.message.held_bytes();
        let msg = ShardMsg::FromCluster {
            message: Box::new(arrived.message),
            group: None,
        };
        self.hand(shard, msg, size);
    }

    /// Into `shard`'s mailbox, behind what is held for it already.
    fn hand(&mut self, shard: usize, msg: ShardMsg, size: usize) {
        let msg = if self.held[shard].is_empty() {
            match self.mailboxes.send(shard, msg) {
                Ok(()) => return,
                Err(msg) => msg,
            }
        } else {
            msg
        };
        if self.held_count >= HELD_MAX || self.held_bytes + size > HELD_BYTES_MAX {
            (self.cluster.stats.dropped_incoming).fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.held_count += 1;
        self.held_bytes += size;
        self.held[shard].push_back((msg, size));
    }

    fn retry_held(&mut self) {
        for (shard, held) in self.held.iter_mut().enumerate() {
            while let Some((msg, size)) = held.pop_front() {
                if let Err(msg) = self.mailboxes.send(shard, msg) {
                    held.push_front((msg, size));
                    break;
                }
                self.held_count -= 1;
                self.held_bytes -= size;
            }
        }
    }
}

/// Lets subscription `id` go once NATS surely routes to the subscriptions made since: they
/// are confirmed (a round trip through the server), then `RETIRE_GRACE` more. The client forgets a
/// subscription as soon as it is told to go and drops what is still on the way for it; a
/// message NATS routed before a newer subscription existed went to this one alone, and
/// must be in by then. Until it goes it stays the oldest for its subjects, so the newer
/// ones' copies are passed over; from `Leaving` on they wait for it to be drained.
async fn retire(
    id: u64,
    stop: oneshot::Sender<()>,
    client: async_nats::Client,
    fence: String,
    link: mpsc::Sender<Arriving>,
) {
    // A request nobody answers: NATS says "no responders" once it has read everything
    // this connection sent before it, the newer subscriptions included. (A flush only
    // writes them to the socket.)
    let _ = tokio::time::timeout(CONFIRM_WAIT, client.request(fence, Default::default())).await;
    tokio::time::sleep(RETIRE_GRACE).await;
    if link.send(Arriving::Leaving(id)).await.is_ok() {
        let _ = stop.send(());
    }
}

/// A subscription's task: passes what it brings to the link, in order; told to stop, it
/// unsubscribes, passes what it still holds, and says it is drained.
async fn pass_on(
    id: u64,
    mut subscriber: async_nats::Subscriber,
    mut stop: oneshot::Receiver<()>,
    link: mpsc::Sender<Arriving>,
) {
    loop {
        tokio::select! {
            message = subscriber.next() => match message {
                Some(message) => {
                    if link.send(Arriving::Message(id, message)).await.is_err() {
                        return;
                    }
                }
                None => break,
            },
            _ = &mut stop => {
                let _ = subscriber.unsubscribe().await;
                while let Some(message) = subscriber.next().await {
                    if link.send(Arriving::Message(id, message)).await.is_err() {
                        return;
                    }
                }
                break;
            }
        }
    }
    let _ = link.send(Arriving::Drained(id)).await;
}
