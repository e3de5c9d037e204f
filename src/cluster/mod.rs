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
//! What this step does not do yet (issue 31): sessions are held by their node, not in
//! JetStream (a node that dies loses its clients' sessions), and between nodes a message
//! is delivered at most once (core NATS: a node or NATS server that goes down loses what
//! it had on the way).

mod connect;
pub mod dedup;
mod link;
pub mod patterns;
pub mod retained;
pub mod sessions;
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
}

/// A message on its way to NATS: its subject, and what the link encodes it from.
pub(crate) struct Outgoing {
    subject: String,
    message: Arc<Message>,
    /// The share groups the message went to on this node (`topic::group_hash`).
    served: Vec<u64>,
    origin: Origin,
    number: u64,
}

/// The filters the node's clients hold, each with how many subscriptions hold it, and the
/// filters whose count went to or from zero since the link last looked.
#[derive(Default)]
struct Interest {
    counts: HashMap<String, usize>,
    changed: HashSet<String>,
}

/// What the cluster counts (`$SYS/broker/cluster/...`, the metrics).
#[derive(Default)]
pub struct ClusterStats {
    pub connected: AtomicBool,
    pub forwarded: AtomicU64,
    pub forwarded_bytes: AtomicU64,
    pub received: AtomicU64,
    pub received_bytes: AtomicU64,
    /// Not published: the queue to the link was full, or NATS refused it.
    pub dropped_outgoing: AtomicU64,
    /// Not published: larger than the NATS server's max_payload.
    pub too_large: AtomicU64,
    /// Not delivered: the shard's mailbox stayed full.
    pub dropped_incoming: AtomicU64,
    /// Copies of a message taken already (overlapping subscriptions).
    pub duplicates: AtomicU64,
    /// Messages on midge's subjects that are not a message of this format, or not what a
    /// node sends.
    pub undecodable: AtomicU64,
    /// Times the NATS client dropped messages for a subscription the link did not read in time.
    pub slow_consumer: AtomicU64,
    /// NATS subscriptions held now.
    pub subscriptions: AtomicUsize,
    /// Past `cluster_max_subscriptions`: the node takes every message of the cluster; the
    /// times it began to; the filters held since without a subscription of their own.
    pub catching_all: AtomicBool,
    pub catch_all_started: AtomicU64,
    pub uncovered: AtomicUsize,
    /// Retained messages (and removals) JetStream acknowledged, and those it did not.
    pub retained_stored: AtomicU64,
    pub retained_not_stored: AtomicU64,
    /// Retained messages found for new subscriptions; queries that failed or could not
    /// be asked; queries that found more than a subscription is sent.
    pub retained_found: AtomicU64,
    pub retained_queries_failed: AtomicU64,
    pub retained_cut: AtomicU64,
    /// Removals and expired retained messages the sweep deleted from the stream.
    pub retained_swept: AtomicU64,
    /// Messages NATS gave this node for a share group that the publishing node served
    /// itself (not delivered again); messages published here that went to more share
    /// groups here than a message lists (`wire::SERVED_MAX`).
    pub served_there: AtomicU64,
    pub served_cut: AtomicU64,
    /// Messages NATS gave this node for a share group with no member here any more (the
    /// group's queue subscription was still going).
    pub group_gone: AtomicU64,
    /// Client ids this node made itself the owner of; connections that went on without
    /// the cluster deciding (it did not answer in time); sessions fetched from another node,
    /// handed to another, not fetched (the node did not answer), and queued messages left
    /// out of a session handed over (larger than NATS takes).
    pub sessions_claimed: AtomicU64,
    pub sessions_unclaimed: AtomicU64,
    pub sessions_moved_in: AtomicU64,
    pub sessions_moved_out: AtomicU64,
    pub sessions_not_fetched: AtomicU64,
    pub sessions_cut: AtomicU64,
}

/// A count the cluster keeps: its `$SYS` topic, its metric (name, help, counter or gauge),
/// and how it is read.
pub struct ClusterCount {
    pub topic: &'static str,
    pub metric: &'static str,
    pub help: &'static str,
    pub counter: bool,
    pub read: fn(&ClusterStats) -> u64,
}

const fn count(
    topic: &'static str,
    metric: &'static str,
    help: &'static str,
    counter: bool,
    read: fn(&ClusterStats) -> u64,
) -> ClusterCount {
    ClusterCount {
        topic,
        metric,
        help,
        counter,
        read,
    }
}

/// Counts one more in `counter`; the count if it is worth saying: the 1st, 2nd, 4th,
/// 8th..., so that whoever floods a node with what it drops cannot flood its log too.
fn count_to_say(counter: &AtomicU64) -> Option<u64> {
    let seen = counter.fetch_add(1, Ordering::Relaxed) + 1;
    seen.is_power_of_two().then_some(seen)
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

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Every count, for `$SYS/broker/cluster/...` and the metrics alike.
pub const COUNTS: &[ClusterCount] = &[
    count(
        "$SYS/broker/cluster/connected",
        "midge_cluster_nats_connected",
        "Whether the node is connected to NATS (1) or not (0)",
        false,
        |s| u64::from(s.connected.load(Ordering::Relaxed)),
    ),
    count(
        "$SYS/broker/cluster/subscriptions",
        "midge_cluster_nats_subscriptions",
        "NATS subscriptions the node holds for its clients' filters",
        false,
        |s| s.subscriptions.load(Ordering::Relaxed) as u64,
    ),
    count(
        "$SYS/broker/cluster/catch_all",
        "midge_cluster_catch_all",
        "Whether the node takes every message of the cluster (1): its clients' filters need more NATS subscriptions than cluster_max_subscriptions",
        false,
        |s| u64::from(s.catching_all.load(Ordering::Relaxed)),
    ),
    count(
        "$SYS/broker/cluster/catch_all/started",
        "midge_cluster_catch_all_started",
        "Times the node began to take every message of the cluster",
        true,
        |s| load(&s.catch_all_started),
    ),
    count(
        "$SYS/broker/cluster/subscriptions/uncovered",
        "midge_cluster_uncovered_filters",
        "Filters of the node's clients without a NATS subscription of their own (past cluster_max_subscriptions; the catch-all brings their messages)",
        false,
        |s| s.uncovered.load(Ordering::Relaxed) as u64,
    ),
    count(
        "$SYS/broker/cluster/retained/stored",
        "midge_cluster_retained_stored",
        "Retained messages and removals stored in JetStream",
        true,
        |s| load(&s.retained_stored),
    ),
    count(
        "$SYS/broker/cluster/retained/not_stored",
        "midge_cluster_retained_not_stored",
        "Retained messages and removals JetStream did not take (not open, NATS away, no acknowledgement)",
        true,
        |s| load(&s.retained_not_stored),
    ),
    count(
        "$SYS/broker/cluster/retained/found",
        "midge_cluster_retained_found",
        "Retained messages found in JetStream for new subscriptions",
        true,
        |s| load(&s.retained_found),
    ),
    count(
        "$SYS/broker/cluster/retained/queries_failed",
        "midge_cluster_retained_queries_failed",
        "New subscriptions whose retained messages could not be looked for in JetStream",
        true,
        |s| load(&s.retained_queries_failed),
    ),
    count(
        "$SYS/broker/cluster/retained/cut",
        "midge_cluster_retained_cut",
        "New subscriptions matching more retained messages than one is sent",
        true,
        |s| load(&s.retained_cut),
    ),
    count(
        "$SYS/broker/cluster/retained/swept",
        "midge_cluster_retained_swept",
        "Removals and expired retained messages deleted from JetStream",
        true,
        |s| load(&s.retained_swept),
    ),
    count(
        "$SYS/broker/cluster/shared/served_there",
        "midge_cluster_shared_served_there",
        "Messages for a share group here that the publishing node served itself",
        true,
        |s| load(&s.served_there),
    ),
    count(
        "$SYS/broker/cluster/shared/served_cut",
        "midge_cluster_shared_served_cut",
        "Messages that went to more share groups on this node than a message lists (the others may serve them too)",
        true,
        |s| load(&s.served_cut),
    ),
    count(
        "$SYS/broker/cluster/shared/dropped",
        "midge_cluster_shared_dropped",
        "Messages for a share group that had no member on this node any more when they came",
        true,
        |s| load(&s.group_gone),
    ),
    count(
        "$SYS/broker/cluster/sessions/claimed",
        "midge_cluster_sessions_claimed",
        "Client ids this node made itself the owner of in the cluster",
        true,
        |s| load(&s.sessions_claimed),
    ),
    count(
        "$SYS/broker/cluster/sessions/unclaimed",
        "midge_cluster_sessions_unclaimed",
        "Connections accepted without the cluster deciding where their session is (it did not answer in time)",
        true,
        |s| load(&s.sessions_unclaimed),
    ),
    count(
        "$SYS/broker/cluster/sessions/moved_in",
        "midge_cluster_sessions_moved_in",
        "Sessions taken over from another node",
        true,
        |s| load(&s.sessions_moved_in),
    ),
    count(
        "$SYS/broker/cluster/sessions/moved_out",
        "midge_cluster_sessions_moved_out",
        "Sessions handed to another node",
        true,
        |s| load(&s.sessions_moved_out),
    ),
    count(
        "$SYS/broker/cluster/sessions/not_fetched",
        "midge_cluster_sessions_not_fetched",
        "Sessions another node held that could not be fetched (it did not answer): their clients started anew",
        true,
        |s| load(&s.sessions_not_fetched),
    ),
    count(
        "$SYS/broker/cluster/sessions/cut",
        "midge_cluster_sessions_cut",
        "Queued messages left out of sessions handed to another node (larger than NATS takes)",
        true,
        |s| load(&s.sessions_cut),
    ),
    count(
        "$SYS/broker/cluster/messages/forwarded",
        "midge_cluster_messages_forwarded",
        "Messages published to NATS for the other nodes",
        true,
        |s| load(&s.forwarded),
    ),
    count(
        "$SYS/broker/cluster/bytes/forwarded",
        "midge_cluster_bytes_forwarded",
        "Bytes published to NATS",
        true,
        |s| load(&s.forwarded_bytes),
    ),
    count(
        "$SYS/broker/cluster/messages/received",
        "midge_cluster_messages_received",
        "Messages from other nodes routed here",
        true,
        |s| load(&s.received),
    ),
    count(
        "$SYS/broker/cluster/bytes/received",
        "midge_cluster_bytes_received",
        "Bytes of messages from other nodes",
        true,
        |s| load(&s.received_bytes),
    ),
    count(
        "$SYS/broker/cluster/messages/dropped/outgoing",
        "midge_cluster_dropped_outgoing",
        "Messages not published to NATS: the queue to the NATS client was full, or NATS refused them",
        true,
        |s| load(&s.dropped_outgoing),
    ),
    count(
        "$SYS/broker/cluster/messages/dropped/too_large",
        "midge_cluster_too_large",
        "Messages not published to NATS: larger than its max_payload",
        true,
        |s| load(&s.too_large),
    ),
    count(
        "$SYS/broker/cluster/messages/dropped/incoming",
        "midge_cluster_dropped_incoming",
        "Messages from NATS not routed: the shard's mailbox stayed full",
        true,
        |s| load(&s.dropped_incoming),
    ),
    count(
        "$SYS/broker/cluster/messages/dropped/slow",
        "midge_cluster_slow_consumer",
        "Times the NATS client dropped messages the link did not read in time",
        true,
        |s| load(&s.slow_consumer),
    ),
    count(
        "$SYS/broker/cluster/messages/duplicates",
        "midge_cluster_duplicates",
        "Copies of a message already taken (overlapping NATS subscriptions), not routed again",
        true,
        |s| load(&s.duplicates),
    ),
    count(
        "$SYS/broker/cluster/messages/undecodable",
        "midge_cluster_undecodable",
        "Messages on the cluster's subjects that are not a node's",
        true,
        |s| load(&s.undecodable),
    ),
];

/// The node's part of the cluster, shared by its shards and the link.
pub struct Cluster {
    settings: ClusterSettings,
    /// Every subject of this cluster starts with it: `midge.<cluster_name>`.
    root: String,
    node_id: String,
    /// New at each start: tells this run's messages from an earlier run's (`dedup.rs`).
    incarnation: u64,
    /// Per shard: the number of the next message it publishes to NATS.
    numbers: Box<[CachePadded<AtomicU64>]>,
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
            numbers: (0..shards)
                .map(|_| CachePadded::new(AtomicU64::new(1)))
                .collect(),
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
    pub fn forward(&self, shard: usize, message: &Arc<Message>, served: Vec<u64>) {
        if is_sys(&message.topic) || !self.alive.load(Ordering::Relaxed) {
            return;
        }
        let size = message.held_bytes();
        let queued = self.outgoing_bytes.fetch_add(size, Ordering::Relaxed);
        if queued + size > OUTGOING_BYTES_MAX {
            self.outgoing_bytes.fetch_sub(size, Ordering::Relaxed);
            self.stats.dropped_outgoing.fetch_add(1, Ordering::Relaxed);
            if message.retain {
                retained::not_stored(self, "the queue to the NATS client is full");
            }
            return;
        }
        let number = self.numbers[shard].fetch_add(1, Ordering::Relaxed);
        let origin = Origin {
            incarnation: self.incarnation,
            shard: shard as u16,
        };
        let subject = subject::topic_subject(&self.root, &message.topic)
            .unwrap_or_else(|| subject::long_subject(&self.root));
        let out = Outgoing {
            subject,
            message: message.clone(),
            served,
            origin,
            number,
        };
        if self.outgoing.try_send(ToLink::Publish(out)).is_err() {
            self.outgoing_bytes.fetch_sub(size, Ordering::Relaxed);
            self.stats.dropped_outgoing.fetch_add(1, Ordering::Relaxed);
            if message.retain {
                retained::not_stored(self, "the queue to the NATS client is full");
            }
        }
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

    /// The most a session handed to another node may take (NATS's max_payload, less room
    /// for the answer's own bytes), once the link knows the server.
    pub fn session_bytes_max(&self) -> usize {
        let max = self.max_payload.load(Ordering::Relaxed);
        match max {
            0 => 1 << 20,
            max => max.saturating_sub(64),
        }
    }

    /// The link took `out` from the queue.
    fn taken_from_queue(&self, out: &Outgoing) {
        (self.outgoing_bytes).fetch_sub(out.message.held_bytes(), Ordering::Relaxed);
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
