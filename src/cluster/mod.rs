//! A cluster of midge nodes on NATS (`cluster_nats_url`): one topic space across machines.
//!
//! Each node publishes what its clients publish to NATS once, on the subject its topic maps
//! to (`subject.rs`), and subscribes to the subjects its clients' filters cover (reference
//! counted: one NATS subscription per distinct filter), so NATS brings it only what its
//! clients want, never its own messages (`no_echo`). What arrives is routed on the node's
//! own trie, as a message its own client published, but never sent on to NATS again.
//!
//! The NATS client runs on a thread of its own (`link.rs`); shards never wait for it.
//!
//! Retained messages are the cluster's, kept once in JetStream (`retained.rs`). A share
//! group's members on other nodes take its messages through a NATS queue group, unless the
//! publishing node served the group itself (`wire.rs`'s served groups).
//!
//! A client's session follows it to whichever node it connects to, with at most one live
//! connection per client id in the cluster (`sessions.rs`).
//!
//! QoS 1 and 2 messages go between nodes through a JetStream stream, their publishers
//! acknowledged once it has them (`stored.rs`); QoS 0 goes on core NATS, at most once. What
//! a node that dies missed is read again from the stream for its sessions where they are
//! taken over (`replay.rs`).
//!
//! What this step does not do yet (issue 31): a session's queue and in-flight messages are
//! held by its node, so a node that dies loses those it had received before its last known
//! position in the stream (its sessions' subscriptions and its clients' wills are taken
//! over: `sessions/nodes.rs`); a node cut off from NATS does not read again what it missed.

mod connect;
mod counts;
pub mod dedup;
mod link;
pub mod patterns;
pub mod replay;
pub mod retained;
pub mod sessions;
mod stored;
pub mod subject;
pub mod wire;

use std::hash::{BuildHasher, Hash, Hasher};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_utils::CachePadded;
use hashbrown::{HashMap, HashSet};
use tokio::sync::{mpsc, Notify};

use crate::config::cluster::ClusterSettings;
use crate::router::{Mailboxes, Message};
pub use connect::servers;
use counts::count_to_say;
pub use counts::{ClusterCount, ClusterStats, COUNTS};
use dedup::Origin;

/// Messages the shards may have waiting for the link to publish, and their bytes
/// (`Message::held_bytes`); past either they are dropped and counted.
const OUTGOING_MAX: usize = 65_536;
const OUTGOING_BYTES_MAX: usize = 64 << 20;

/// What the shards hand the link, in order.
pub(crate) enum ToLink {
    Publish(Outgoing),
    /// A new subscription's retained messages to find (`retained.rs`).
    Find(retained::Query),
    /// For the sessions task (`sessions.rs`): a connection's claim on its client id, or a
    /// session that ended.
    Sessions(sessions::Work),
    /// A fence to store once the subscriptions noted so far are made: its sequence in the
    /// messages' stream (`replay.rs`).
    Fence(tokio::sync::oneshot::Sender<Result<u64, String>>),
}

/// A message on its way to NATS: its subject, and what the link encodes it from.
pub(crate) struct Outgoing {
    subject: String,
    message: Arc<Message>,
    /// The share groups the message went to on this node (`topic::group_hash`).
    served: Vec<u64>,
    origin: Origin,
    number: u64,
    /// Goes through the messages' stream (`stored.rs`), its publisher's acknowledgement
    /// waiting for it; its bytes stay counted with the queue until it is stored.
    durable: bool,
}

/// The bit of `Origin::shard` that tells a stored message's numbers (`stored.rs`) from its
/// shard's others: they reach the other nodes by another way, each in its own order.
const STORED_ORIGIN: u16 = 0x8000;

/// The filters the node's clients hold, each with how many subscriptions hold it, and the
/// filters whose count went to or from zero since the link last looked.
#[derive(Default)]
struct Interest {
    counts: HashMap<String, usize>,
    changed: HashSet<String>,
}

/// What `step` gives within `wait`, its error as text ("no answer" past it): a step of a
/// JetStream exchange, which must not hold up its task for longer.
async fn within<T, E: std::fmt::Display>(
    wait: std::time::Duration,
    step: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(wait, step).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer".into()),
    }
}

/// The node's part of the cluster, shared by its shards and the link.
pub struct Cluster {
    settings: ClusterSettings,
    /// Every subject of this cluster starts with it: `midge.<cluster_name>`.
    root: String,
    node_id: String,
    /// New at each start: tells this run's messages from an earlier run's (`dedup.rs`).
    incarnation: u64,
    /// Per shard: the number of the next message it publishes to NATS, of the next it
    /// publishes through the messages' stream, and how far those are done (stored, or gone
    /// without: `stored.rs`).
    numbers: Box<[CachePadded<AtomicU64>]>,
    stored_numbers: Box<[CachePadded<AtomicU64>]>,
    stored_through: Box<[CachePadded<AtomicU64>]>,
    /// The messages' stream is open (`cluster_messages jetstream`).
    messages_open: AtomicBool,
    /// How far this node has received the messages' stream: the sequence of its last fence
    /// that came back (`replay.rs`).
    position: AtomicU64,
    outgoing: mpsc::Sender<ToLink>,
    outgoing_bytes: AtomicUsize,
    /// False once the link has ended for good (it could not start): nothing is queued for
    /// it then, and interest is not kept.
    alive: AtomicBool,
    link: Mutex<Option<std::thread::JoinHandle<()>>>,
    interest: Mutex<Interest>,
    interest_changed: Notify,
    stop: Notify,
    shards: usize,
    /// This node's claims of client ids (`sessions.rs`).
    claims: sessions::Claims,
    /// The nodes' heartbeats (`sessions/nodes.rs`), once open: a claim asks it whether the
    /// owner that does not answer is gone.
    nodes_bucket: std::sync::OnceLock<async_nats::jetstream::kv::Store>,
    /// The NATS server's max_payload, as the link last saw it (0: not yet connected).
    max_payload: AtomicUsize,
    pub stats: ClusterStats,
}

impl Cluster {
    /// Starts the link to NATS for a node of `shards` shards; messages from other nodes go
    /// into `mailboxes`. An error (a server URL, a credentials file that cannot be read)
    /// stops the start.
    pub fn start(settings: ClusterSettings, mailboxes: Arc<Mailboxes>) -> io::Result<Arc<Cluster>> {
        servers(&settings).map_err(io::Error::other)?;
        let shards = mailboxes.shards();
        let (outgoing, receiver) = mpsc::channel(OUTGOING_MAX);
        let cluster = Arc::new(Cluster {
            root: format!("midge.{}", settings.name),
            node_id: settings.node_id(),
            incarnation: incarnation(),
            numbers: counters(shards, 1),
            stored_numbers: counters(shards, 1),
            stored_through: counters(shards, 0),
            messages_open: AtomicBool::new(false),
            position: AtomicU64::new(0),
            outgoing,
            outgoing_bytes: AtomicUsize::new(0),
            alive: AtomicBool::new(true),
            link: Mutex::new(None),
            interest: Mutex::default(),
            interest_changed: Notify::new(),
            stop: Notify::new(),
            shards,
            settings,
            claims: Arc::default(),
            nodes_bucket: std::sync::OnceLock::new(),
            max_payload: AtomicUsize::new(0),
            stats: ClusterStats::default(),
        });
        let options = connect::options(&cluster).map_err(io::Error::other)?;
        let link = cluster.clone();
        let thread = std::thread::Builder::new()
            .name("midge-cluster".into())
            .spawn(move || link::run(link, options, receiver, mailboxes))?;
        *cluster.link.lock().expect("link lock") = Some(thread);
        Ok(cluster)
    }

    /// Stops the link (the broker is shutting down) and waits for it: a bounded time, as it
    /// gives NATS what it has (`link::FLUSH_AT_STOP`).
    pub fn shut_down(&self) {
        self.stop.notify_one();
        let thread = self.link.lock().expect("link lock").take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }

    /// The link has ended for good: what would go to it is dropped from now on.
    fn link_gone(&self) {
        self.alive.store(false, Ordering::Release);
    }

    /// Hands `message`, published on this node by `shard`, to the link for NATS, with the
    /// share groups it went to here. `$SYS` topics are each node's own and stay here.
    /// Returns the number its acknowledgement waits for (`stored_through`) if it goes
    /// through the messages' stream.
    pub fn forward(&self, shard: usize, message: &Arc<Message>, served: Vec<u64>) -> Option<u64> {
        if is_sys(&message.topic) || !self.alive.load(Ordering::Relaxed) {
            return None;
        }
        let size = message.held_bytes();
        let queued = self.outgoing_bytes.fetch_add(size, Ordering::Relaxed);
        // Room first, then a number: a number taken is always handed over (the shard's
        // acknowledgements wait for each in turn, `stored_through`).
        let room = (queued + size <= OUTGOING_BYTES_MAX)
            .then(|| self.outgoing.try_reserve().ok())
            .flatten();
        let Some(room) = room else {
            self.outgoing_bytes.fetch_sub(size, Ordering::Relaxed);
            self.stats.dropped_outgoing.fetch_add(1, Ordering::Relaxed);
            if message.retain {
                retained::not_stored(self, "the queue to the NATS client is full");
            }
            return None;
        };
        let durable = message.qos != crate::codec::QoS::AtMostOnce
            && self.messages_open.load(Ordering::Acquire);
        let (numbers, mark) = match durable {
            true => (&self.stored_numbers, STORED_ORIGIN),
            false => (&self.numbers, 0),
        };
        let number = numbers[shard].fetch_add(1, Ordering::Relaxed);
        let origin = Origin {
            incarnation: self.incarnation,
            shard: shard as u16 | mark,
        };
        let subject = subject::topic_subject(&self.root, &message.topic)
            .unwrap_or_else(|| subject::long_subject(&self.root));
        let out = Outgoing {
            subject,
            message: message.clone(),
            served,
            origin,
            number,
            durable,
        };
        if durable {
            // Where a replay finds it (`replay.rs`); before the link may find it cannot be
            // stored.
            let own = crate::types::StreamPlace::own_place(shard, number);
            message.stream.own.store(own, Ordering::Release);
        }
        room.send(ToLink::Publish(out));
        durable.then_some(number)
    }

    /// How far `shard`'s messages through the stream are done: every number up to this
    /// one is stored, or went without (`stored.rs`).
    pub fn stored_through(&self, shard: usize) -> u64 {
        self.stored_through[shard].load(Ordering::SeqCst)
    }

    /// The number of the last message `shard` handed over for the stream, if any: a resent
    /// QoS 2 PUBLISH's answer waits for it (the first copy's store is at or before it).
    pub fn last_stored_number(&self, shard: usize) -> Option<u64> {
        let next = self.stored_numbers[shard].load(Ordering::Relaxed);
        (next > 1).then(|| next - 1)
    }

    /// Message `number` of `shard` through the stream is done (stored, or gone without):
    /// its `held` bytes leave the count of the queue, and its shard is told (woken if it
    /// sleeps) that its acknowledgements up to it may go.
    fn store_done(&self, mailboxes: &Mailboxes, shard: usize, number: u64, held: usize) {
        self.outgoing_bytes.fetch_sub(held, Ordering::Relaxed);
        self.stored_through[shard].store(number, Ordering::SeqCst);
        mailboxes.wake_if_sleeping(shard);
    }

    /// Whether the retained message of `topic` is the cluster's, kept in JetStream, not
    /// this node's own (`cluster_retained jetstream`; `$SYS` topics are each node's).
    /// A topic too long for a subject keeps its retained message on its node.
    pub fn keeps_retained(&self, topic: &str) -> bool {
        self.finds_retained(topic) && retained::subject(self, topic).is_some()
    }

    /// Whether the cluster may keep retained messages `filter` matches (and so is asked
    /// for them: `find_retained`).
    pub fn finds_retained(&self, filter: &str) -> bool {
        self.settings.retained_in_jetstream && !is_sys(filter) && self.alive.load(Ordering::Relaxed)
    }

    /// Asks the link for a new subscription's retained messages (`keeps_retained` of its
    /// filter): they come back to its shard (`ShardMsg::RetainedFromCluster`), once every
    /// retained message queued before is stored. False if it cannot be asked (counted).
    pub fn find_retained(&self, query: retained::Query) -> bool {
        let asked = self.outgoing.try_send(ToLink::Find(query)).is_ok();
        if !asked {
            (self.stats.retained_queries_failed).fetch_add(1, Ordering::Relaxed);
        }
        asked
    }

    /// Whether the cluster decides where clients' sessions are (`cluster_sessions
    /// jetstream`).
    pub fn keeps_sessions(&self) -> bool {
        self.settings.sessions_in_jetstream && self.alive.load(Ordering::Relaxed)
    }

    /// Asks the link to make this node the owner of a connection's client id; the answer
    /// comes to its shard (`ShardMsg::ClusterClaimed`). False if it cannot be asked (the
    /// queue to the link is full): the connection goes on without (counted).
    pub fn claim(&self, ask: sessions::ClaimAsk) -> bool {
        let work = ToLink::Sessions(sessions::Work::Claim(ask));
        let asked = self.outgoing.try_send(work).is_ok();
        if !asked {
            self.stats
                .sessions_unclaimed
                .fetch_add(1, Ordering::Relaxed);
        }
        asked
    }

    /// A shard took the answer to claim `token` of `client_id` from its mailbox.
    pub fn claim_answer_taken(&self, client_id: &str, token: u64) {
        let mut claims = self.claims.lock().expect("claims lock");
        claims.answer_taken(client_id, token);
    }

    /// The session of `client_id`, whose connection claimed it at `revision`, ended here.
    pub fn release(&self, client_id: Arc<str>, revision: u64) {
        let work = sessions::Work::Release {
            client_id,
            revision,
        };
        // Dropped with the queue full: the key stays, and the next claim of the client id
        // asks this node, which answers that it holds nothing.
        let _ = self.outgoing.try_send(ToLink::Sessions(work));
    }

    /// The record of the session of `client_id`, which this node claimed at `revision`,
    /// to write to its key (`sessions/records.rs`). False if the queue to the link is full:
    /// the shard offers it again at its next tick.
    pub fn record(&self, client_id: Arc<str>, revision: u64, record: sessions::Record) -> bool {
        // Its bytes count with the messages waiting for the link.
        let size = record.size();
        if self.outgoing_bytes.fetch_add(size, Ordering::Relaxed) + size > OUTGOING_BYTES_MAX {
            self.outgoing_bytes.fetch_sub(size, Ordering::Relaxed);
            return false;
        }
        let work = sessions::Work::Record {
            client_id,
            revision,
            record,
        };
        if self.outgoing.try_send(ToLink::Sessions(work)).is_err() {
            self.outgoing_bytes.fetch_sub(size, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Asks the link whether the key of `client_id`, claimed here at `revision`, still
    /// names this node; if not, its shard is told (`ShardMsg::ClusterLost`). False if the
    /// queue to the link is full.
    pub fn verify(&self, client_id: Arc<str>, revision: u64) -> bool {
        let work = sessions::Work::Verify {
            client_id,
            revision,
        };
        self.outgoing.try_send(ToLink::Sessions(work)).is_ok()
    }

    /// A record left the queue to the link (taken by the sessions task, or dropped).
    fn record_taken(&self, record: &sessions::Record) {
        (self.outgoing_bytes).fetch_sub(record.size(), Ordering::Relaxed);
    }

    /// The most a session handed to another node may take (NATS's max_payload, less room
    /// for the answer's own bytes), once the link knows the server.
    pub fn session_bytes_max(&self) -> usize {
        let max = self.max_payload.load(Ordering::Relaxed);
        match max {
            0 => 1 << 20,
            max => max.saturating_sub(64),
        }
    }

    /// The link took `out` from the queue (a message through the stream stays counted until
    /// it is done: `store_taken`).
    fn taken_from_queue(&self, out: &Outgoing) {
        if !out.durable {
            (self.outgoing_bytes).fetch_sub(out.message.held_bytes(), Ordering::Relaxed);
        }
    }

    /// What another node sent on `subject`, checked before it is routed here. Whoever may
    /// publish on the cluster's subjects is trusted as a node (README), but what comes must
    /// still be what a node sends: the topic its subject says, no `$SYS` topic, none of the
    /// properties a client's hop sets.
    fn check_arrived(
        &self,
        subject: &str,
        mut arrived: wire::Arrived,
    ) -> Result<wire::Arrived, String> {
        let topic = &arrived.message.topic;
        let expected = subject::topic_subject(&self.root, topic)
            .unwrap_or_else(|| subject::long_subject(&self.root));
        if expected != subject {
            return Err(format!("its topic '{topic}' is not its subject's"));
        }
        if is_sys(topic) {
            return Err("a $SYS topic".into());
        }
        let properties = &mut arrived.message.properties;
        if properties.topic_alias.is_some() || !properties.subscription_identifiers.is_empty() {
            properties.topic_alias = None;
            properties.subscription_identifiers.clear();
        }
        Ok(arrived)
    }

    /// A subscription to `filter` was added (`true`) or removed on this node. Called with
    /// the trie's writer locked. A shared subscription's filter is the whole
    /// `$share/{group}/{filter}` (the link takes it through a NATS queue group). `$SYS`
    /// filters stay this node's own.
    pub fn interest(&self, filter: &str, added: bool) {
        let topic_filter = shared_filter(filter).map_or(filter, |(_, f)| f);
        if is_sys(topic_filter) || !self.alive.load(Ordering::Relaxed) {
            return;
        }
        let mut interest = self.interest.lock().expect("interest lock");
        let count = interest.counts.entry_ref(filter).or_insert(0);
        let was = *count;
        *count = if added {
            was + 1
        } else {
            was.saturating_sub(1)
        };
        let now = *count;
        if now == 0 {
            interest.counts.remove(filter);
        }
        if (was == 0) != (now == 0) {
            interest.changed.insert(filter.to_string());
            drop(interest);
            self.interest_changed.notify_one();
        }
    }

    /// The shard that routes messages of `topic` from other nodes: always the same one,
    /// so that they are routed in the order they came.
    fn shard_of(&self, topic: &str) -> usize {
        let hash = foldhash::fast::FixedState::default().hash_one(topic);
        (hash % self.shards as u64) as usize
    }

    /// A subject nobody subscribes to, for round trips through the server (`link::retire`).
    fn fence_subject(&self) -> String {
        format!("{}.fence.{:x}", self.root, self.incarnation)
    }
}

/// `shards` counters starting at `first`.
fn counters(shards: usize, first: u64) -> Box<[CachePadded<AtomicU64>]> {
    (0..shards)
        .map(|_| CachePadded::new(AtomicU64::new(first)))
        .collect()
}

/// The group and the filter of a shared subscription's `$share/{group}/{filter}`.
fn shared_filter(filter: &str) -> Option<(&str, &str)> {
    filter.strip_prefix("$share/")?.split_once('/')
}

/// Whether `topic` (or a filter) is under `$SYS`, which each node keeps to itself.
fn is_sys(topic: &str) -> bool {
    topic == "$SYS" || topic.starts_with("$SYS/")
}

/// A number unlikely to repeat across this node's starts, or to be another node's.
fn incarnation() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    std::process::id().hash(&mut hasher);
    std::time::SystemTime::now().hash(&mut hasher);
    hasher.finish()
}
