//! Sessions that follow their clients (`cluster_sessions jetstream`, the default): at most
//! one live connection per client id in the whole cluster, and a client that connects to
//! another node takes its session there.
//!
//! Who owns a client id is kept in a JetStream key-value bucket (`midge_<cluster>_sessions`,
//! one key per client id, its value the owning node). A CONNECT waits while its node makes
//! itself the owner by a compare-and-set on the key's revision: read the owner, write this
//! node expecting that revision. Of nodes racing for a client id, exactly one write lands
//! on each revision; the others read again and go after it. Ownership is decided by those
//! writes, never by timing.
//!
//! The node that wins asks the node it took the key from (`<root>.s.<node>`, a NATS
//! request naming the revision it won) for the session: that node closes its connection
//! (5.0: DISCONNECT 0x8E, `shard/takeover.rs`), takes the session out of its shard and
//! answers with it (`wire.rs`): subscriptions, messages in flight with their packet ids,
//! its queue, QoS 2 packet ids awaiting PUBREL, a waiting will.
//!
//! Sessions pass along in the order the key was written. A node makes one claim per
//! client id at a time (a second connection's waits behind it). A request that comes while
//! the node's own claim of that client id is being written, or that names a later revision
//! than the one the node won and has not handed to its connection yet, waits until it has:
//! the node's connection gets the session first, then gives it up. A request naming an
//! earlier revision than the node's own is answered at once with what the node holds. So a
//! node only ever waits for answers from nodes that wrote the key before it: no two wait on
//! each other. A node that does not answer in time (gone, or cut off) is passed over: the
//! client starts without the session it held there (sessions kept in JetStream, so that a
//! node's death loses none, are the next step of issue 31).
//!
//! When a session ends on its owner, the key goes, expecting the revision the owner wrote
//! (a newer claim keeps it). A client id the broker gave (the client sent none) is unique
//! by construction and is not claimed.

mod keys;
pub mod wire;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::StreamExt;
use hashbrown::HashMap;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use super::Cluster;
use crate::router::{Mailboxes, ShardMsg};
use crate::types::ConnId;
pub use keys::{client_key, node_token};
use wire::{Owner, TakeAnswer, TakeRequest};

/// Claims and releases the link may have handed this task and it has not taken yet.
pub(super) const WORK_MAX: usize = 4096;

/// Claims worked on at once; the others wait their turn in the task's queue.
const CLAIMS_AT_ONCE: usize = 256;

/// Keys of ended sessions deleted at once.
const RELEASES_AT_ONCE: usize = 1024;

/// How long a claim may take in all: past it (NATS away, JetStream slow), the connection
/// goes on with this node alone deciding (said and counted: `sessions/unclaimed`).
pub const CLAIM_WAIT: Duration = Duration::from_secs(5);

/// How long a connection waits for the answer to its claim at most: past every deadline
/// above, so that only an answer lost on its way (a shard's mailbox full for seconds)
/// ends it.
pub const ANSWER_WAIT_MAX: Duration = Duration::from_secs(15);

/// How long before asking again a node that said it cannot answer yet.
const RETRY_AFTER: Duration = Duration::from_millis(20);

/// How long a take request waits for the shard that holds the session.
const SHARD_WAIT: Duration = Duration::from_secs(2);

/// How long the bucket is waited for at each step, and how often it is looked for again
/// while it cannot be opened.
const STEP_WAIT: Duration = Duration::from_secs(2);
const OPEN_RETRY: Duration = Duration::from_secs(2);

/// A connection's request to own its client id in the cluster.
pub struct ClaimAsk {
    pub client_id: Arc<str>,
    pub clean_start: bool,
    pub shard: usize,
    pub conn: ConnId,
    /// The shard's number for this claim (the connection's slot may be reused).
    pub token: u64,
}

/// The answer to a `ClaimAsk`.
pub enum Claimed {
    /// This node owns the client id since `revision`; the session the node that held it
    /// handed over, if it had one (`wire::encode_session`'s bytes).
    Owned {
        revision: u64,
        session: Option<Bytes>,
    },
    /// The cluster could not be asked in time: the connection goes on as on a single
    /// broker (said and counted).
    Unclaimed,
}

/// Another node's request for a session this node holds, passed to a shard.
pub struct TakeAsk {
    pub client_id: Arc<str>,
    pub clean_start: bool,
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
}

/// The bucket's name for the cluster `name`.
fn bucket_name(name: &str) -> String {
    format!("midge_{name}_sessions")
}

/// This node's claim of one client id, from when it is asked for until its answer reached
/// its connection's shard.
#[derive(Default)]
struct Claiming {
    /// The revision it won; `None` while it is being made.
    won: Option<u64>,
    /// Other nodes' take requests held until the claim's connection has the session: the
    /// revision each names, and the request.
    held: Vec<(u64, TakeAsk)>,
    /// Claims of later connections of the client here, made one after the other.
    queued: std::collections::VecDeque<ClaimAsk>,
}

/// This node's claims: those under way, and those answered whose answer its shard has not
/// taken from its mailbox yet (the shard, and how many), by client id. A take request for
/// a client id answered here goes to the same shard, behind the answer: until the shard has
/// taken it, no registry of the node names the new connection.
#[derive(Default)]
pub struct ClaimsState {
    under_way: HashMap<Arc<str>, Claiming>,
    answered: HashMap<Arc<str>, (usize, usize)>,
}

pub type Claims = Arc<Mutex<ClaimsState>>;

impl ClaimsState {
    /// A shard took the answer to a claim of `client_id` from its mailbox.
    pub fn answer_taken(&mut self, client_id: &str) {
        if let Some((_, count)) = self.answered.get_mut(client_id) {
            *count -= 1;
            if *count == 0 {
                self.answered.remove(client_id);
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
    // The bucket once open: claims made before wait for it (within their deadline).
    let (opened, bucket) = watch::channel(None::<kv::Store>);
    tokio::spawn(open_bucket(cluster.clone(), js, opened));
    let claims_at_once = Arc::new(Semaphore::new(CLAIMS_AT_ONCE));
    let under_way = cluster.claims.clone();
    let releases = Arc::new(Semaphore::new(RELEASES_AT_ONCE));
    loop {
        tokio::select! {
            // Taken only with a claim's room free: the loop itself never waits for one, so
            // that other nodes' take requests are served while this node's claims wait on
            // them.
            next = work.recv(), if claims_at_once.available_permits() > 0 => match next {
                None => break,
                Some(Work::Claim(ask)) => {
                    {
                        let mut claims = under_way.lock().expect("claims lock");
                        if let Some(claiming) = claims.under_way.get_mut(&ask.client_id) {
                            claiming.queued.push_back(ask);
                            continue;
                        }
                        claims.under_way.insert(ask.client_id.clone(), Claiming::default());
                    }
                    let Ok(permit) = claims_at_once.clone().try_acquire_owned() else { break };
                    let claimer = Claimer {
                        cluster: cluster.clone(),
                        client: client.clone(),
                        mailboxes: mailboxes.clone(),
                        bucket: bucket.clone(),
                        under_way: under_way.clone(),
                    };
                    tokio::spawn(async move {
                        claimer.claim_in_turn(ask).await;
                        drop(permit);
                    });
                }
                Some(Work::Release { client_id, revision }) => {
                    // Past `RELEASES_AT_ONCE` the key stays: the next claim of the client
                    // asks this node, which answers that it holds nothing.
                    let store = bucket.borrow().clone();
                    if let (Some(store), Ok(permit)) = (store, releases.clone().try_acquire_owned()) {
                        tokio::spawn(async move {
                            release(store, client_id, revision).await;
                            drop(permit);
                        });
                    }
                }
            },
            Some(request) = requests.next() => {
                serve_take(&cluster, &client, &mailboxes, &under_way, request);
            }
        }
    }
}

/// Opens the bucket (making it if it is not there), trying again every `OPEN_RETRY` until
/// it opens; the first failure is said.
async fn open_bucket(
    cluster: Arc<Cluster>,
    js: jetstream::Context,
    opened: watch::Sender<Option<kv::Store>>,
) {
    let mut said_unavailable = false;
    loop {
        match in_time(open(&cluster, &js)).await {
            Ok(store) => {
                log::info!(target: "information", "Cluster: who owns each session is kept in the JetStream bucket {}.", bucket_name(&cluster.settings.name));
                opened.send_replace(Some(store));
                return;
            }
            Err(e) if !std::mem::replace(&mut said_unavailable, true) => {
                log::error!("Error: cluster: cannot open the JetStream bucket for sessions ({e}); until it can be, each node decides alone for its clients (is JetStream on in the NATS servers?). Trying again every {} s.", OPEN_RETRY.as_secs());
            }
            Err(_) => {}
        }
        tokio::time::sleep(OPEN_RETRY).await;
    }
}

/// The subject a node takes requests for sessions on.
fn take_subject(cluster: &Cluster, node: &str) -> String {
    format!("{}.s.{}", cluster.root, node_token(node))
}

/// The bucket, made if it is not there. Its stream is made here as a key-value bucket's
/// is (`KV_<bucket>`, one message per key): async-nats's own `create_key_value` first
/// reads the account's limits in a form nats-server 2.9 does not answer in.
async fn open(cluster: &Cluster, js: &jetstream::Context) -> Result<kv::Store, String> {
    let bucket = bucket_name(&cluster.settings.name);
    let config = jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        description: Some("midge: which node owns each client's session".into()),
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
    js.get_key_value(&bucket).await.map_err(|e| e.to_string())
}

/// What `step` gives within `STEP_WAIT`, its error as text.
async fn in_time<T, E: std::fmt::Display>(
    step: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(STEP_WAIT, step).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer".into()),
    }
}

/// What a claim works with.
struct Claimer {
    cluster: Arc<Cluster>,
    client: async_nats::Client,
    mailboxes: Arc<Mailboxes>,
    bucket: watch::Receiver<Option<kv::Store>>,
    under_way: Claims,
}

impl Claimer {
    /// Makes `ask`'s claim, then those of the client's connections here that came
    /// meanwhile, one after the other.
    async fn claim_in_turn(mut self, ask: ClaimAsk) {
        let mut next = Some(ask);
        while let Some(ask) = next.take() {
            let open = self.bucket.wait_for(Option::is_some);
            let store = match tokio::time::timeout(CLAIM_WAIT, open).await {
                Ok(Ok(store)) => store.clone(),
                _ => None,
            };
            let claimed = match store {
                Some(store) => self.claim(&store, &ask).await,
                None => unclaimed(
                    &self.cluster,
                    &ask.client_id,
                    "the key-value bucket is not open",
                ),
            };
            next = self.deliver(ask, claimed).await;
        }
    }

    /// Makes this node the owner of `ask`'s client id, then fetches the session from the
    /// node that owned it; `Unclaimed` if that cannot be done within `CLAIM_WAIT`.
    async fn claim(&self, store: &kv::Store, ask: &ClaimAsk) -> Claimed {
        let cluster = &self.cluster;
        let deadline = tokio::time::Instant::now() + CLAIM_WAIT;
        let key = client_key(&ask.client_id);
        let me = Owner {
            node: cluster.node_id.clone(),
            incarnation: cluster.incarnation,
        };
        let value = wire::encode_owner(&me);
        loop {
            if tokio::time::Instant::now() >= deadline {
                return unclaimed(
                    cluster,
                    &ask.client_id,
                    "the key-value bucket did not answer in time",
                );
            }
            let entry = match in_time(store.entry(key.clone())).await {
                Ok(entry) => entry,
                Err(e) => {
                    log::debug!("Cluster: reading the owner of {}: {e}", ask.client_id);
                    tokio::time::sleep(RETRY_AFTER).await;
                    continue;
                }
            };
            // The last write's revision, a removal's too: the claim writes after it.
            let last = entry.as_ref().map(|e| e.revision);
            let live = entry.filter(|e| e.operation == kv::Operation::Put);
            let previous = live.as_ref().map(|e| wire::decode_owner(&e.value));
            let revision = match write(store, &key, &value, last).await {
                Ok(revision) => revision,
                Err(lost_race) => {
                    // Another write came first (at once: read again), or this one did not
                    // land (NATS slow or away: after a pause). What was held for this
                    // claim was for an earlier owner's.
                    self.hand_held(&ask.client_id, ask.shard, |_| true).await;
                    if !lost_race {
                        tokio::time::sleep(RETRY_AFTER).await;
                    }
                    continue;
                }
            };
            // Held from now: requests naming a later revision; answered now: any other.
            let won = |r: u64| r <= revision;
            self.with_claim(&ask.client_id, |c| c.won = Some(revision));
            self.hand_held(&ask.client_id, ask.shard, won).await;
            cluster
                .stats
                .sessions_claimed
                .fetch_add(1, Ordering::Relaxed);
            let from = match previous {
                Some(Ok(owner)) if owner.node != me.node => owner,
                Some(Err(e)) => {
                    log::warn!("Warning: cluster: the owner of {} in the bucket is not a node's ({e}); taken over.", ask.client_id);
                    return Claimed::Owned {
                        revision,
                        session: None,
                    };
                }
                // Nobody held it, or this node did (perhaps before it restarted): its own
                // shards decide, as on a single broker.
                _ => {
                    return Claimed::Owned {
                        revision,
                        session: None,
                    }
                }
            };
            let session = fetch(cluster, &self.client, &from, ask, revision, deadline).await;
            return Claimed::Owned { revision, session };
        }
    }

    fn with_claim(&self, client_id: &str, change: impl FnOnce(&mut Claiming)) {
        let mut claims = self.under_way.lock().expect("claims lock");
        if let Some(claiming) = claims.under_way.get_mut(client_id) {
            change(claiming);
        }
    }

    /// Passes the held take requests that `now` says go now to `shard`.
    async fn hand_held(&self, client_id: &str, shard: usize, now: impl Fn(u64) -> bool) {
        let mut going = Vec::new();
        self.with_claim(client_id, |c| {
            let (go, stay) = std::mem::take(&mut c.held)
                .into_iter()
                .partition(|(r, _)| now(*r));
            c.held = stay;
            going = go;
        });
        for (_, take) in going {
            let msg = ShardMsg::ClusterTake(Box::new(take));
            send_patiently(&self.cluster, &self.mailboxes, shard, msg).await;
        }
    }

    /// Hands `claimed` to the connection's shard, then the take requests held for it,
    /// behind it; the next claim of the client here, if one waits.
    async fn deliver(&self, ask: ClaimAsk, claimed: Claimed) -> Option<ClaimAsk> {
        let (client_id, shard) = (ask.client_id.clone(), ask.shard);
        let msg = ShardMsg::ClusterClaimed {
            conn: ask.conn,
            token: ask.token,
            client_id: client_id.clone(),
            claimed,
        };
        {
            let mut claims = self.under_way.lock().expect("claims lock");
            claims
                .answered
                .entry(client_id.clone())
                .or_insert((shard, 0))
                .1 += 1;
        }
        if !send_patiently(&self.cluster, &self.mailboxes, shard, msg).await {
            self.under_way
                .lock()
                .expect("claims lock")
                .answer_taken(&client_id);
        }
        self.hand_held(&client_id, shard, |_| true).await;
        let mut claims = self.under_way.lock().expect("claims lock");
        let claiming = claims.under_way.get_mut(&client_id)?;
        let next = claiming.queued.pop_front();
        match next {
            Some(_) => claiming.won = None,
            None => {
                claims.under_way.remove(&client_id);
            }
        }
        next
    }
}

/// Writes `value` to `key` if its last write is still revision `last` (or there is none):
/// the revision written, or whether another write came first (`Err(true)`) rather than this
/// one failing.
async fn write(
    store: &kv::Store,
    key: &str,
    value: &Bytes,
    last: Option<u64>,
) -> Result<u64, bool> {
    let result = match last {
        Some(last) => {
            match tokio::time::timeout(STEP_WAIT, store.update(key, value.clone(), last)).await {
                Ok(Ok(revision)) => return Ok(revision),
                Ok(Err(e)) => (
                    e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                    e.to_string(),
                ),
                Err(_) => (false, "no answer".into()),
            }
        }
        None => match tokio::time::timeout(STEP_WAIT, store.create(key, value.clone())).await {
            Ok(Ok(revision)) => return Ok(revision),
            Ok(Err(e)) => (
                e.kind() == kv::CreateErrorKind::AlreadyExists,
                e.to_string(),
            ),
            Err(_) => (false, "no answer".into()),
        },
    };
    let (lost_race, why) = result;
    log::debug!("Cluster: writing the owner of {key}: {why}");
    Err(lost_race)
}

/// Said and counted: a connection goes on without the cluster's say.
pub(super) fn unclaimed(cluster: &Cluster, client_id: &str, why: &str) -> Claimed {
    if let Some(seen) = super::count_to_say(&cluster.stats.sessions_unclaimed) {
        log::warn!("Warning: cluster: client {client_id} connects without the cluster deciding which node holds its session: {why} ({seen} so far).");
    }
    Claimed::Unclaimed
}

/// Asks `from` for the session of `ask`'s client, until `deadline`: its bytes, or `None` if
/// it held none (or is not there to answer).
async fn fetch(
    cluster: &Cluster,
    client: &async_nats::Client,
    from: &Owner,
    ask: &ClaimAsk,
    revision: u64,
    deadline: tokio::time::Instant,
) -> Option<Bytes> {
    let request = wire::encode_request(&TakeRequest {
        client_id: ask.client_id.to_string(),
        clean_start: ask.clean_start,
        revision,
    });
    let subject = take_subject(cluster, &from.node);
    let stats = &cluster.stats;
    loop {
        // Up to the claim's deadline: a node that waits for a claim of its own first answers
        // late, and a session it hands over must not go to a node that stopped waiting.
        let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
        let asked = client.request(subject.clone(), request.clone());
        let answer = match tokio::time::timeout(wait, asked).await {
            Ok(Ok(message)) => wire::decode_answer(&message.payload),
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                Err(format!("node {} is not there", from.node))
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("node {} did not answer in time", from.node)),
        };
        match answer {
            Ok(TakeAnswer::Session(bytes)) => {
                stats.sessions_moved_in.fetch_add(1, Ordering::Relaxed);
                return Some(bytes);
            }
            Ok(TakeAnswer::Nothing) => return None,
            Ok(TakeAnswer::Retry) if tokio::time::Instant::now() + RETRY_AFTER < deadline => {
                tokio::time::sleep(RETRY_AFTER).await;
            }
            Ok(TakeAnswer::Retry) => {
                return lost(
                    cluster,
                    ask,
                    &format!("node {} could not hand it over in time", from.node),
                )
            }
            Err(e) => return lost(cluster, ask, &e),
        }
    }
}

/// Said and counted: the session another node held is not taken (it stays there, offline,
/// until it expires; the client starts anew here).
fn lost(cluster: &Cluster, ask: &ClaimAsk, why: &str) -> Option<Bytes> {
    if let Some(seen) = super::count_to_say(&cluster.stats.sessions_not_fetched) {
        log::warn!("Warning: cluster: the session of {} could not be fetched: {why}; it starts anew here ({seen} so far).", ask.client_id);
    }
    None
}

/// Into `shard`'s mailbox, waiting for room (a bounded time: a shard that stays full for
/// that long is counted as dropping it, and the connection meets its keep alive).
async fn send_patiently(
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
            Err(_) => {
                (cluster.stats.dropped_incoming).fetch_add(1, Ordering::Relaxed);
                return false;
            }
        }
    }
}

/// Another node's request for a session: passed to the shard that looks it up, or held
/// behind this node's own claim of the client id (module doc), and answered when the shard
/// has done.
fn serve_take(
    cluster: &Arc<Cluster>,
    client: &async_nats::Client,
    mailboxes: &Arc<Mailboxes>,
    under_way: &Claims,
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
        hops: 0,
        reply,
    };
    let (now, shard) = {
        let mut claims = under_way.lock().expect("claims lock");
        let answered_to = claims
            .answered
            .get(&*take.client_id)
            .map(|&(shard, _)| shard);
        match claims.under_way.get_mut(&*take.client_id) {
            Some(claiming) if claiming.won.is_none_or(|won| won < asked.revision) => {
                claiming.held.push((asked.revision, take));
                (None, 0)
            }
            _ => (
                Some(take),
                answered_to.unwrap_or_else(|| cluster.shard_of(&asked.client_id)),
            ),
        }
    };
    let (cluster, client, mailboxes) = (cluster.clone(), client.clone(), mailboxes.clone());
    tokio::spawn(async move {
        if let Some(take) = now {
            let msg = ShardMsg::ClusterTake(Box::new(take));
            send_patiently(&cluster, &mailboxes, shard, msg).await;
        }
        // Not answered in time (a shard that could not be reached): "ask again"; the
        // session, if any, is still here.
        let answer = match tokio::time::timeout(SHARD_WAIT + CLAIM_WAIT, answer).await {
            Ok(Ok(answer)) => answer,
            _ => TakeAnswer::Retry,
        };
        if matches!(answer, TakeAnswer::Session(_)) {
            cluster
                .stats
                .sessions_moved_out
                .fetch_add(1, Ordering::Relaxed);
        }
        let _ = client.publish(reply_to, wire::encode_answer(&answer)).await;
    });
}

/// The key of a session that ended goes, unless a newer claim wrote it.
async fn release(store: kv::Store, client_id: Arc<str>, revision: u64) {
    let key = client_key(&client_id);
    if let Err(e) = in_time(store.delete_expect_revision(&key, Some(revision))).await {
        log::debug!("Cluster: the key of {client_id} stays: {e}");
    }
}
