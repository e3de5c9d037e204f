//! Sessions that follow their clients (`cluster_sessions jetstream`, the default): at most
//! one live connection per client id in the whole cluster, and a client that connects to
//! another node takes its session there.
//!
//! Who owns a client id is kept in a JetStream key-value bucket (`midge_<cluster>_sessions`,
//! one key per client id, its value the owning node and the claim that wrote it). A CONNECT
//! waits while its node makes itself the owner by a compare-and-set on the key's revision:
//! read the owner, write this node expecting that revision. Of nodes racing for a client id,
//! exactly one write lands on each revision; the others read again and go after it.
//! Ownership is decided by those writes, never by timing (`claim.rs`).
//!
//! The node that wins asks the node it took the key from (`<root>.s.<node>`, a NATS
//! request naming the revision it won) for the session: that node closes its connection
//! (5.0: DISCONNECT 0x8E, `shard/takeover.rs`), takes the session out of its shard and
//! answers with it (`wire.rs`): subscriptions, messages in flight with their packet ids,
//! its queue, QoS 2 packet ids awaiting PUBREL, a waiting will.
//!
//! Sessions pass along in the order the key was written:
//! - A node makes one claim per client id at a time, the next only once its shard has taken
//!   the answer to the last (so the registry names that connection); of connections waiting
//!   behind it, only the latest is kept, the others lose (as an older connection loses to a
//!   newer one on one node).
//! - A request that comes while the node's own claim of the client id is being written, or
//!   that names a later revision than the one it won, waits until its connection has the
//!   session, then takes it from there. A request naming an earlier revision than the
//!   node's own is answered at once: the asker has lost. So a node only ever waits for nodes
//!   that wrote the key before it: no two wait on each other.
//!
//! The owner keeps the session's record in its key (`records.rs`): its subscriptions and
//! its connection's will, written as they change. A node that does not answer in time
//! (gone, or cut off) is passed over: the client goes on with the session its record
//! describes, and its will goes out as if its connection had closed. A node whose
//! heartbeats stop is found gone by another, which takes its sessions over from their
//! records and publishes its clients' wills (`nodes.rs`). When a session ends on its owner,
//! the key goes, expecting the revision the owner wrote last (a newer claim keeps it).
//! What the gone node missed is read again from the messages' stream for the sessions
//! taken over (`replay.rs`); what a record does not hold (messages in flight and queued on
//! the gone node before that) is lost with the node.

mod claim;
mod keys;
pub mod nodes;
mod records;
pub mod wire;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use hashbrown::HashMap;
use std::collections::VecDeque;
use tokio::sync::{mpsc, oneshot, watch, Notify, Semaphore};

use super::Cluster;
use crate::router::{Mailboxes, ShardMsg};
use crate::types::ConnId;
use claim::Claimer;
pub use keys::{client_key, node_token};
use wire::TakeAnswer;

/// Claims and releases the link may have handed this task and it has not taken yet.
pub(super) const WORK_MAX: usize = 4096;

/// Claims worked on at once; the others wait their turn in the task's queue.
const CLAIMS_AT_ONCE: usize = 256;

/// How long a claim may take in all: past it (NATS away, JetStream slow), the connection
/// goes on with this node alone deciding (said and counted: `sessions/unclaimed`).
pub const CLAIM_WAIT: Duration = Duration::from_secs(5);

/// How long a connection waits for the answer to its claim at most: past every deadline
/// above, so that only an answer lost on its way (a shard's mailbox full for seconds)
/// ends it.
pub const ANSWER_WAIT_MAX: Duration = Duration::from_secs(15);

/// What an asked node takes off the time the asking node waits, for the answer's way back.
const ANSWER_MARGIN_MS: u64 = 200;

/// How long before asking again a node that said it cannot answer yet.
const RETRY_AFTER: Duration = Duration::from_millis(20);

/// How long a shard's mailbox is waited for.
const SHARD_WAIT: Duration = Duration::from_secs(2);

/// How long the bucket is waited for at each step, and how often it is looked for again
/// while it cannot be opened.
const STEP_WAIT: Duration = Duration::from_secs(2);
pub(super) const OPEN_RETRY: Duration = Duration::from_secs(2);

/// A connection's request to own its client id in the cluster.
pub struct ClaimAsk {
    pub client_id: Arc<str>,
    pub clean_start: bool,
    pub shard: usize,
    pub conn: ConnId,
    /// The shard's number for this claim (the connection's slot may be reused); unique in
    /// the node's run, it marks the claim's write in the bucket.
    pub token: u64,
    /// When the connection asked: the claim's deadline runs from then, so that a claim
    /// that waited its turn too long writes nothing (its connection has given up).
    pub asked_at: std::time::Instant,
}

/// The answer to a `ClaimAsk`.
pub enum Claimed {
    /// This node owns the client id since `revision`; the session the node that held it
    /// handed over, if it had one (`wire::encode_session`'s bytes), or its record
    /// (`from_record`: that node did not answer, and the session's connection there is
    /// taken to have closed with it).
    Owned {
        revision: u64,
        session: Option<bytes::Bytes>,
        from_record: bool,
        /// From a record of a node that is gone: what that node missed is read again for
        /// the session (`replay.rs`); the shard marks it, then drops this.
        replay: Option<crate::cluster::replay::Join>,
    },
    /// The cluster could not be asked in time: the connection goes on as on a single
    /// broker (said and counted).
    Unclaimed,
    /// A later connection of the client (here or on another node) won: this one is closed,
    /// as an older connection is on one node.
    Superseded,
}

/// Another node's request for a session this node holds, passed to a shard.
pub struct TakeAsk {
    pub client_id: Arc<str>,
    pub clean_start: bool,
    /// The revision the asking node wrote: a session here claimed later is not given.
    pub revision: u64,
    /// Shards it went through (the registry moved on meanwhile): it is answered `Retry`
    /// after a few.
    pub hops: u8,
    pub reply: oneshot::Sender<TakeAnswer>,
}

/// What the link hands this task.
pub enum Work {
    Claim(ClaimAsk),
    /// The session of `client_id` claimed at `revision` ended here: its key goes, unless a
    /// newer claim wrote it since.
    Release {
        client_id: Arc<str>,
        revision: u64,
    },
    /// Whether the key of `client_id`, claimed here at `revision`, still names this node
    /// (this node was taken for gone): if not, its session here goes.
    Verify {
        client_id: Arc<str>,
        revision: u64,
    },
    /// The record of the session of `client_id`, claimed here at `revision`, to write.
    Record {
        client_id: Arc<str>,
        revision: u64,
        record: Record,
    },
}

/// A session's record (`wire::encode_record`; `None`: larger than NATS takes, so the key
/// says only who owns it), and what it holds, for the log.
#[derive(Clone)]
pub struct Record {
    pub bytes: Option<bytes::Bytes>,
    pub subscriptions: usize,
    pub will: bool,
}

impl Record {
    /// What it holds of the queue to the link.
    pub fn size(&self) -> usize {
        self.bytes.as_ref().map_or(0, bytes::Bytes::len) + 64
    }
}

/// The bucket's name for the cluster `name`.
fn bucket_name(name: &str) -> String {
    format!("midge_{name}_sessions")
}

/// Where the bucket is.
#[derive(Clone)]
enum Bucket {
    /// Not opened yet: a claim waits (within its deadline).
    Opening,
    Open(Box<kv::Store>),
    /// Opening it failed (and is tried again): a claim goes on at once without it.
    Down,
}

/// This node's claim of one client id, from when it is asked for until its shard took the
/// answer.
struct Claiming {
    /// The claim's number (`ClaimAsk::token`).
    token: u64,
    /// The revision it won; `None` while it is being made.
    won: Option<u64>,
    /// The shard its answer went to, once it went: requests go there, behind it.
    answered_to: Option<usize>,
    /// Whether that shard took the answer.
    taken: bool,
    /// Other nodes' take requests held until the claim's connection has the session: the
    /// revision each names, and the request.
    held: Vec<(u64, TakeAsk)>,
    /// The latest connection of the client here that came meanwhile: claimed next.
    queued: Option<ClaimAsk>,
}

impl Claiming {
    fn new(token: u64) -> Claiming {
        Claiming {
            token,
            won: None,
            answered_to: None,
            taken: false,
            held: Vec::new(),
            queued: None,
        }
    }
}

/// This node's claims under way, by client id, and how a shard says it took an answer.
#[derive(Default)]
pub struct ClaimsState {
    under_way: HashMap<Arc<str>, Claiming>,
    taken: Arc<Notify>,
}

pub type Claims = Arc<Mutex<ClaimsState>>;

impl ClaimsState {
    /// A shard took the answer to claim `token` of `client_id` from its mailbox.
    pub fn answer_taken(&mut self, client_id: &str, token: u64) {
        if let Some(claiming) = self.under_way.get_mut(client_id) {
            if claiming.token == token {
                claiming.taken = true;
                self.taken.notify_waiters();
            }
        }
    }
}

/// Serves the link's claims and releases, and other nodes' take requests, until the link
/// ends.
pub(super) async fn serve(
    cluster: Arc<Cluster>,
    client: async_nats::Client,
    mut work: mpsc::Receiver<Work>,
    mailboxes: Arc<Mailboxes>,
) {
    let js = jetstream::new(client.clone());
    let subject = take_subject(&cluster, &cluster.node_id);
    let mut requests = match client.subscribe(subject.clone()).await {
        Ok(requests) => requests,
        Err(e) => {
            log::error!("Error: cluster: cannot take requests for sessions on {subject}: {e}; sessions do not move from this node.");
            return;
        }
    };
    let (opened, bucket) = watch::channel(Bucket::Opening);
    tokio::spawn(open_bucket(cluster.clone(), js.clone(), opened));
    let watching = nodes::serve(cluster.clone(), js, bucket.clone(), mailboxes.clone());
    tokio::spawn(watching);
    let claims_at_once = Arc::new(Semaphore::new(CLAIMS_AT_ONCE));
    let claims = cluster.claims.clone();
    let records = Arc::new(records::Records::new(mailboxes.clone()));
    // Claims waiting for a claim's room (records, releases and other nodes' take requests
    // never wait behind them).
    let mut waiting: VecDeque<ClaimAsk> = VecDeque::new();
    // Rung as a claim gives its permit back (kept if nobody waits: never missed).
    let freed = Arc::new(Notify::new());
    let replays = claim::Gathering::default();
    let claimer = || Claimer {
        cluster: cluster.clone(),
        client: client.clone(),
        mailboxes: mailboxes.clone(),
        bucket: bucket.clone(),
        claims: claims.clone(),
        replays: replays.clone(),
    };
    loop {
        while let Some(ask) = waiting.pop_front() {
            let Ok(permit) = claims_at_once.clone().try_acquire_owned() else {
                waiting.push_front(ask);
                break;
            };
            let Some(ask) = queue_behind(&cluster, &mailboxes, &claims, ask) else {
                continue;
            };
            let (claimer, freed) = (claimer(), freed.clone());
            tokio::spawn(async move {
                claimer.claim_in_turn(ask).await;
                drop(permit);
                freed.notify_one();
            });
        }
        tokio::select! {
            next = work.recv() => match next {
                None => break,
                Some(Work::Claim(ask)) if waiting.len() < WORK_MAX => waiting.push_back(ask),
                Some(Work::Claim(ask)) => {
                    let why = "too many connections wait for their claims";
                    let claimed = unclaimed(&cluster, &ask.client_id, why);
                    let msg = ShardMsg::ClusterClaimed {
                        conn: ask.conn,
                        token: ask.token,
                        client_id: ask.client_id,
                        claimed,
                    };
                    if mailboxes.send(ask.shard, msg).is_err() {
                        // Its connection meets `ANSWER_WAIT_MAX`.
                        (cluster.stats.dropped_incoming).fetch_add(1, Ordering::Relaxed);
                    }
                }
                // With the bucket not open the key stays: the next claim of the client asks
                // this node, which answers that it holds nothing.
                Some(Work::Release { client_id, revision }) => {
                    if let Some(store) = open_store(&bucket) {
                        records.release(&cluster, &store, client_id, revision);
                    }
                }
                Some(Work::Verify { client_id, revision }) => {
                    if let Some(store) = open_store(&bucket) {
                        records.verify(&cluster, &store, client_id, revision);
                    }
                }
                Some(Work::Record { client_id, revision, record }) => {
                    cluster.record_taken(&record);
                    match open_store(&bucket) {
                        Some(store) => records.record(&cluster, &store, client_id, revision, record),
                        None => {
                            cluster.stats.records_not_written.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            },
            request = requests.next() => match request {
                Some(request) => serve_take(&cluster, &client, &mailboxes, &claims, &records, request),
                None => break, // The client is closing.
            },
            // A claim ended: the waiting ones are looked at again.
            () = freed.notified(), if !waiting.is_empty() => {}
        }
    }
}

/// The sessions bucket, if it is open.
fn open_store(bucket: &watch::Receiver<Bucket>) -> Option<kv::Store> {
    match &*bucket.borrow() {
        Bucket::Open(store) => Some((**store).clone()),
        _ => None,
    }
}

/// `ask` goes behind a claim of its client id under way here (`None`), replacing one that
/// waited already (which has lost: answered `Superseded`); or, if none is under way, is
/// claimed now.
fn queue_behind(
    cluster: &Cluster,
    mailboxes: &Mailboxes,
    claims: &Claims,
    ask: ClaimAsk,
) -> Option<ClaimAsk> {
    let mut state = claims.lock().expect("claims lock");
    let Some(claiming) = state.under_way.get_mut(&ask.client_id) else {
        state
            .under_way
            .insert(ask.client_id.clone(), Claiming::new(ask.token));
        return Some(ask);
    };
    let lost = claiming.queued.replace(ask)?;
    drop(state);
    let msg = ShardMsg::ClusterClaimed {
        conn: lost.conn,
        token: lost.token,
        client_id: lost.client_id,
        claimed: Claimed::Superseded,
    };
    if mailboxes.send(lost.shard, msg).is_err() {
        // Its connection meets `ANSWER_WAIT_MAX`.
        (cluster.stats.dropped_incoming).fetch_add(1, Ordering::Relaxed);
    }
    None
}

/// Opens the bucket (making it if it is not there), trying again every `OPEN_RETRY` until
/// it opens; the first failure is said.
async fn open_bucket(cluster: Arc<Cluster>, js: jetstream::Context, opened: watch::Sender<Bucket>) {
    let mut said_unavailable = false;
    loop {
        match in_time(open(&cluster, &js)).await {
            Ok(store) => {
                log::info!(target: "information", "Cluster: who owns each session is kept in the JetStream bucket {}.", bucket_name(&cluster.settings.name));
                opened.send_replace(Bucket::Open(Box::new(store)));
                return;
            }
            Err(e) => {
                opened.send_replace(Bucket::Down);
                if !std::mem::replace(&mut said_unavailable, true) {
                    log::error!("Error: cluster: cannot open the JetStream bucket for sessions ({e}); until it can be, each node decides alone for its clients (is JetStream on in the NATS servers?). Trying again every {} s.", OPEN_RETRY.as_secs());
                }
            }
        }
        tokio::time::sleep(OPEN_RETRY).await;
    }
}

/// The subject a node takes requests for sessions on.
fn take_subject(cluster: &Cluster, node: &str) -> String {
    format!("{}.s.{}", cluster.root, node_token(node))
}

/// The sessions bucket, made if it is not there.
async fn open(cluster: &Cluster, js: &jetstream::Context) -> Result<kv::Store, String> {
    let bucket = bucket_name(&cluster.settings.name);
    let description = "midge: which node owns each client's session, and its record";
    open_kv(cluster, js, &bucket, description).await
}

/// A key-value bucket, made if it is not there. Its stream is made here as a key-value
/// bucket's is (`KV_<bucket>`, one message per key): async-nats's own `create_key_value`
/// first reads the account's limits in a form nats-server 2.9 does not answer in.
async fn open_kv(
    cluster: &Cluster,
    js: &jetstream::Context,
    bucket: &str,
    description: &str,
) -> Result<kv::Store, String> {
    let config = jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(description.into()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        storage: jetstream::stream::StorageType::File,
        num_replicas: cluster.settings.replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    };
    js.get_or_create_stream(config)
        .await
        .map_err(|e| e.to_string())?;
    js.get_key_value(bucket).await.map_err(|e| e.to_string())
}

/// What `step` gives within `STEP_WAIT`, its error as text.
async fn in_time<T, E: std::fmt::Display>(
    step: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    super::within(STEP_WAIT, step).await
}

/// Said and counted: a connection goes on without the cluster's say.
pub(super) fn unclaimed(cluster: &Cluster, client_id: &str, why: &str) -> Claimed {
    if let Some(seen) = super::count_to_say(&cluster.stats.sessions_unclaimed) {
        log::warn!("Warning: cluster: client {client_id} connects without the cluster deciding which node holds its session: {why} ({seen} so far).");
    }
    Claimed::Unclaimed
}

/// Into `shard`'s mailbox, waiting for room (a bounded time: a shard that stays full for
/// that long is counted as dropping it). False if it was dropped; a take request dropped
/// is answered "ask again".
pub(super) async fn send_patiently(
    cluster: &Cluster,
    mailboxes: &Mailboxes,
    shard: usize,
    msg: ShardMsg,
) -> bool {
    let deadline = tokio::time::Instant::now() + SHARD_WAIT;
    let mut msg = msg;
    loop {
        match mailboxes.send(shard, msg) {
            Ok(()) => return true,
            Err(back) if tokio::time::Instant::now() < deadline => {
                msg = back;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(back) => {
                (cluster.stats.dropped_incoming).fetch_add(1, Ordering::Relaxed);
                if let ShardMsg::ClusterTake(take) = back {
                    let _ = take.reply.send(TakeAnswer::Retry);
                }
                return false;
            }
        }
    }
}

/// Another node's request for a session: passed to the shard that looks it up, or held
/// behind this node's own claim of the client id (module doc), and answered when the shard
/// has done, within the time the asking node waits.
fn serve_take(
    cluster: &Arc<Cluster>,
    client: &async_nats::Client,
    mailboxes: &Arc<Mailboxes>,
    claims: &Claims,
    records: &Arc<records::Records>,
    request: async_nats::Message,
) {
    let Some(reply_to) = request.reply.clone() else {
        return; // Not a request: nobody to answer.
    };
    let asked = match wire::decode_request(&request.payload) {
        Ok(asked) => asked,
        Err(e) => {
            if let Some(seen) = super::count_to_say(&cluster.stats.undecodable) {
                log::warn!("Warning: cluster: a request for a session that is not a node's: {e}; dropped ({seen} so far).");
            }
            return;
        }
    };
    let (reply, answer) = oneshot::channel();
    let take = TakeAsk {
        client_id: asked.client_id.as_str().into(),
        clean_start: asked.clean_start,
        revision: asked.revision,
        hops: 0,
        reply,
    };
    let (now, shard) = {
        let mut state = claims.lock().expect("claims lock");
        match state.under_way.get_mut(&*take.client_id) {
            // Answered to a shard that has not taken it yet: behind it.
            Some(c) if c.answered_to.is_some() => (Some(take), c.answered_to),
            Some(c) if c.won.is_none_or(|won| won < asked.revision) => {
                c.held.push((asked.revision, take));
                (None, None)
            }
            _ => (Some(take), None),
        }
    };
    let shard = shard.unwrap_or_else(|| cluster.shard_of(&asked.client_id));
    // The asker stops waiting then: a shard that comes to the request later gives nothing
    // (it sees the answer is not waited for).
    // (Less a margin for the answer's way back; counted from the request's arrival.)
    let wait = Duration::from_millis(asked.wait_ms.saturating_sub(ANSWER_MARGIN_MS));
    let until = tokio::time::Instant::now() + wait.min(ANSWER_WAIT_MAX);
    let (cluster, client, mailboxes) = (cluster.clone(), client.clone(), mailboxes.clone());
    let records = records.clone();
    tokio::spawn(async move {
        if let Some(take) = now {
            let msg = ShardMsg::ClusterTake(Box::new(take));
            send_patiently(&cluster, &mailboxes, shard, msg).await;
        }
        let answer = match tokio::time::timeout_at(until, answer).await {
            Ok(Ok(answer)) => answer,
            _ => return, // Not answered in time: the asker has gone on.
        };
        let answer = match answer {
            // Held by an earlier run of this node, which is gone.
            TakeAnswer::Nothing if asked.incarnation != cluster.incarnation => {
                TakeAnswer::NotThisRun
            }
            answer => answer,
        };
        let moved = matches!(answer, TakeAnswer::Session(_));
        let client_id = asked.client_id;
        if matches!(
            answer,
            TakeAnswer::Session(_) | TakeAnswer::Nothing | TakeAnswer::NotThisRun
        ) {
            // The asker owns the key: this node writes it no more.
            records.forget(&client_id, asked.revision);
        }
        if let Err(e) = client.publish(reply_to, wire::encode_answer(&answer)).await {
            if moved {
                log::warn!("Warning: cluster: the session of {client_id} could not be sent to the node that took it over: {e}.");
            }
            return;
        }
        if moved {
            cluster
                .stats
                .sessions_moved_out
                .fetch_add(1, Ordering::Relaxed);
        }
    });
}
