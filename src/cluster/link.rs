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
//!
//! Here: the link's state, its loop, and what arrives. `publish.rs`: what it sends.
//! `interest.rs`: its subscriptions (filters, share groups' queue groups, the catch-all)
//! and how one goes.

mod interest;
mod publish;

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hashbrown::{HashMap, HashSet};
use tokio::sync::{mpsc, oneshot};

use super::dedup::Copies;
use super::patterns::Patterns;
use super::retained::{self, Work};
use super::subject::{self, long_subject};
use super::{wire, Cluster, ToLink};
use crate::router::{Mailboxes, Message, ShardMsg};

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
    /// With `cluster_sessions jetstream`: the task that claims client ids and hands
    /// sessions over (`sessions.rs`).
    sessions: Option<mpsc::Sender<super::sessions::Work>>,
    /// With `cluster_messages jetstream`: the task that stores QoS 1 and 2 messages in
    /// order (`stored.rs`); what it holds stays counted with the queue to the link.
    stores: Option<mpsc::UnboundedSender<super::stored::Store>>,
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
    /// The subject this node's fences come back on (`replay.rs`), and the stream's name.
    own_fence: String,
    stream_name: String,
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
    let (arriving_tx, mut arriving) = mpsc::channel(ARRIVING_MAX);
    let mut link = Link::new(cluster.clone(), client, mailboxes, arriving_tx);
    // Topics too long for a subject come on one subject every node takes.
    link.add_pattern(long_subject(&cluster.root)).await;
    if cluster.settings.messages_in_jetstream {
        // This node's fences, coming back through the messages' stream (`replay.rs`).
        link.add_pattern(link.own_fence.clone()).await;
    }
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
    /// The link's state on a new connection; with `cluster_retained jetstream`, the
    /// retained task started beside it.
    fn new(
        cluster: Arc<Cluster>,
        client: async_nats::Client,
        mailboxes: Arc<Mailboxes>,
        arriving_tx: mpsc::Sender<Arriving>,
    ) -> Link {
        let retained = cluster.settings.retained_in_jetstream.then(|| {
            let js = async_nats::jetstream::new(client.clone());
            let (work, works) = mpsc::channel(retained::WORK_MAX);
            let serving = retained::serve(cluster.clone(), js.clone(), works, mailboxes.clone());
            tokio::spawn(serving);
            (js, work)
        });
        let sessions = cluster.settings.sessions_in_jetstream.then(|| {
            let (work, works) = mpsc::channel(super::sessions::WORK_MAX);
            let serving =
                super::sessions::serve(cluster.clone(), client.clone(), works, mailboxes.clone());
            tokio::spawn(serving);
            work
        });
        let stores = cluster.settings.messages_in_jetstream.then(|| {
            let (stores, taken) = mpsc::unbounded_channel();
            let serving =
                super::stored::serve(cluster.clone(), client.clone(), taken, mailboxes.clone());
            tokio::spawn(serving);
            stores
        });
        let shards = mailboxes.shards();
        Link {
            cluster: cluster.clone(),
            client,
            retained,
            sessions,
            stores,
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
            own_fence: subject::fence_subject(&cluster.root, cluster.incarnation),
            stream_name: super::stored::stream_name(&cluster.settings.name),
        }
    }

    fn arrived(&mut self, arriving: Arriving) {
        match arriving {
            Arriving::Message(_, message)
                if subject::is_fence(&self.cluster.root, &message.subject) =>
            {
                // A fence, no message: this node's, republished by the stream (not sent by
                // anyone else), tells how far it has received the stream. (Stored, not the
                // highest: the stream made again starts anew.)
                let stream = message.headers.as_ref().and_then(|h| h.get("Nats-Stream"));
                let from_stream = stream.is_some_and(|s| s.as_str() == self.stream_name);
                if *message.subject == *self.own_fence && from_stream {
                    if let Some(sequence) = stream_sequence(&message) {
                        self.cluster.position.store(sequence, Ordering::Relaxed);
                    }
                }
            }
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
                if let Some(seen) = super::count_to_say(&self.cluster.stats.undecodable) {
                    log::warn!(
                        "Warning: cluster: a message on {} that is not midge's: {e}; dropped ({seen} so far).",
                        nats.subject
                    );
                }
                None
            }
        }
    }

    /// Whether `arrived` is one this node published: the messages' stream republishes
    /// what it stores to every node that wants it, this one too (NATS's `no_echo` keeps
    /// back only what the node's own connection publishes). Routed here when published.
    fn own(&self, arrived: &wire::Arrived) -> bool {
        arrived.origin.incarnation == self.cluster.incarnation
    }

    /// A message NATS gave this node for the share group `key` (its queue group): to one
    /// of the group's members here, unless the publishing node served the group itself.
    fn take_for_group(&mut self, key: Arc<str>, hash: u64, nats: async_nats::Message) {
        let Some(arrived) = self.decoded(&nats, Instant::now()) else {
            return;
        };
        // (One of this node's own that came back through the stream: it served the group
        // if it had a member for it; if not, a member here now takes it.)
        let stats = &self.cluster.stats;
        if arrived.served.contains(&hash) {
            stats.served_there.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut message = arrived.message;
        message.stream.sequence = stream_sequence(&nats).unwrap_or(0);
        self.route_arrived(message, Some(key), nats.payload.len());
    }

    /// Counted as received (`bytes` on the wire) and handed to the shard its topic hashes
    /// to, for the node's plain subscriptions or for one share group.
    fn route_arrived(&mut self, message: Message, group: Option<Arc<str>>, bytes: usize) {
        let stats = &self.cluster.stats;
        stats.received.fetch_add(1, Ordering::Relaxed);
        (stats.received_bytes).fetch_add(bytes as u64, Ordering::Relaxed);
        let shard = self.cluster.shard_of(&message.topic);
        let size = message.held_bytes();
        let msg = ShardMsg::FromCluster {
            message: Box::new(message),
            group,
        };
        self.hand(shard, msg, size);
    }

    /// Decoded, checked, known as new, and passed to the shard its topic hashes to.
    fn take(&mut self, id: u64, nats: async_nats::Message) {
        let now = Instant::now();
        let Some(arrived) = self.decoded(&nats, now) else {
            return;
        };
        if self.own(&arrived) {
            return;
        }
        let stats = &self.cluster.stats;
        if (self.copies).is_copy(&nats.subject, arrived.origin, arrived.number, now) {
            stats.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.copies.took(id, arrived.origin, arrived.number);
        let mut message = arrived.message;
        message.stream.sequence = stream_sequence(&nats).unwrap_or(0);
        self.route_arrived(message, None, nats.payload.len());
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

/// The sequence in the messages' stream of what the stream republished (its
/// `Nats-Sequence` header); `None` for what a node published on core NATS.
fn stream_sequence(nats: &async_nats::Message) -> Option<u64> {
    let headers = nats.headers.as_ref()?;
    headers.get("Nats-Sequence")?.as_str().parse().ok()
}
