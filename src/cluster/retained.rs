//! The cluster's retained messages (`cluster_retained jetstream`, the default): kept once,
//! in one JetStream stream, and found from every node when a client subscribes. A node
//! keeps none of them in memory.
//!
//! The stream (`midge_<cluster>_retained`) takes the subjects `<root>.r.>`: a retained
//! message is stored on its topic's subject (`subject.rs`, as messages are published under
//! `<root>.m`), and the stream keeps one message per subject, so a newer one replaces it.
//! An empty payload removes the topic's message: it is stored as an empty NATS message (a
//! tombstone, in order with the stores before and after it, from any node), which finds
//! nothing, and which the sweep deletes later. A KV bucket is such a stream underneath,
//! but its keys take only `[-/_=.a-zA-Z0-9]`, and topics need the subjects' `~` escapes.
//!
//! Ordering: the link hands this task, in the order the shards queued them, each store's
//! acknowledgement to wait for and each query; a query runs once every store before it is
//! acknowledged, so a client that subscribes after its own (or anyone's) retained publish
//! was taken finds it.
//!
//! Message Expiry: each stored message carries the wall-clock time it expires at (a
//! header); a query skips what has expired, and the sweep deletes it (NATS 2.9 has no
//! per-message TTL).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, stream};
use futures_util::StreamExt;
use tokio::sync::{mpsc, Semaphore};

mod reader;

use reader::LastPerSubject;

use super::subject::{filter_subjects_in, topic_subject_in, RETAINED};
use super::{wire, Cluster};
use crate::codec::QoS;
use crate::router::{Mailboxes, Message, ShardMsg};
use crate::topic::Subscription;
use crate::types::SessionId;

/// The header that says when a stored message expires (Unix milliseconds).
const EXPIRES_AT: &str = "Midge-Expires-At";

/// Work the link may have handed this task and it has not taken yet, and queries waiting
/// here: past it, a store's acknowledgement is not waited for (counted) and a query is not
/// asked (counted).
pub(super) const WORK_MAX: usize = 4096;

/// Stores' acknowledgements waited for at once (below async-nats's own bound on them).
const ACKS_AT_ONCE: usize = 4096;

/// Queries run at once, and what one may find: past either bound, what is left is not
/// sent (said and counted).
const QUERIES_AT_ONCE: usize = 8;
pub const FOUND_MAX: usize = 16_384;
const FOUND_BYTES_MAX: usize = 16 << 20;

/// How long a store's acknowledgement may take (from when the link handed it over), and
/// each step of a query; how long a query's consumer outlives it if it cannot be deleted.
const ACK_WAIT: Duration = Duration::from_secs(5);
const QUERY_STEP_WAIT: Duration = Duration::from_secs(5);
const CONSUMER_IDLE: Duration = Duration::from_secs(10);

/// How often the stream is looked for again while it cannot be made; the messages a sweep
/// (`cluster_retained_sweep_interval`) looks at at most.
const OPEN_RETRY: Duration = Duration::from_secs(2);
/// How often an open stream is checked for (and made again if it is gone).
const STREAM_CHECK: Duration = Duration::from_secs(30);
const SWEEP_VISITS_MAX: usize = 100_000;

/// How long the answer to a query may wait for its shard's mailbox.
const ANSWER_WAIT: Duration = Duration::from_secs(1);

/// A new subscription's retained messages, asked for by its shard.
pub struct Query {
    pub shard: usize,
    /// The shard's number for it (`Session::await_cluster`).
    pub question: u64,
    pub session: SessionId,
    pub filter: String,
    /// The subscription as it was made: if it is not the same when the answer comes (gone,
    /// or made again), the answer is not owed. `None` for a bridge's topics.
    pub sub: Option<Subscription>,
    pub qos: QoS,
    pub identifier: Option<u32>,
}

/// The answer to a `Query`: the retained messages it found.
pub struct Found {
    pub query: Query,
    pub messages: Vec<Arc<Message>>,
}

/// What the link hands this task, in order.
pub(super) enum Work {
    /// A store's acknowledgement, and until when it is waited for.
    Stored(jetstream::context::PublishAckFuture, tokio::time::Instant),
    Query(Query),
}

/// The stream's name for the cluster `name`.
fn stream_name(name: &str) -> String {
    format!("midge_{name}_retained")
}

/// The header map a stored message carries.
pub(super) fn headers(message: &Message) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    if let Some(at) = message.expires_at {
        let left = at.saturating_duration_since(Instant::now());
        let at = SystemTime::now() + left;
        let ms = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        headers.insert(EXPIRES_AT, ms.to_string().as_str());
    }
    headers
}

/// The subject `topic`'s retained message is kept on, if it has one (a topic too long for
/// a subject has none: its retained message stays on its node).
pub(super) fn subject(cluster: &Cluster, topic: &str) -> Option<String> {
    topic_subject_in(&cluster.root, RETAINED, topic)
}

/// Serves the link's work until the link ends.
pub(super) async fn serve(
    cluster: Arc<Cluster>,
    js: jetstream::Context,
    mut work: mpsc::Receiver<Work>,
    mailboxes: Arc<Mailboxes>,
) {
    let mut stream: Option<stream::Stream> = None;
    let mut retry = tokio::time::interval(OPEN_RETRY);
    let mut sweep = tokio::time::interval(cluster.settings.sweep_every);
    sweep.reset(); // Not at once: the first sweep comes a period after the start.
    let mut sweeping: Option<tokio::task::JoinHandle<()>> = None;
    let cursor = Arc::new(AtomicU64::new(0));
    let mut check = tokio::time::interval(STREAM_CHECK);
    check.reset();
    let queries = Arc::new(Semaphore::new(QUERIES_AT_ONCE));
    let query_done = Arc::new(tokio::sync::Notify::new());
    // Stores' acknowledgements, waited for all at once, taken in order: `handed` of them
    // were handed over, `done` came (or failed). A query waits in `waiting` until every
    // store handed over before it is done, and for a free `queries` permit.
    let mut acks = futures_util::stream::FuturesOrdered::new();
    let (mut handed, mut done) = (0u64, 0u64);
    let mut waiting: std::collections::VecDeque<(u64, Query)> = Default::default();
    let mut said_unavailable = false;
    loop {
        let room = acks.len() < ACKS_AT_ONCE && waiting.len() < WORK_MAX;
        tokio::select! {
            next = work.recv(), if room => match next {
                None => break,
                Some(Work::Stored(ack, until)) => {
                    handed += 1;
                    let cluster = cluster.clone();
                    acks.push_back(async move { stored(&cluster, ack, until).await });
                }
                Some(Work::Query(query)) => waiting.push_back((handed, query)),
            },
            Some(()) = acks.next(), if !acks.is_empty() => done += 1,
            () = query_done.notified(), if !waiting.is_empty() => {}
            _ = retry.tick(), if stream.is_none() => {
                stream = open_first(&cluster, &js, &mut said_unavailable).await;
            }
            _ = sweep.tick(), if stream.is_some() => {
                let idle = sweeping.as_ref().is_none_or(|s| s.is_finished());
                if let (Some(stream), true) = (stream.clone(), idle) {
                    let (cluster, cursor) = (cluster.clone(), cursor.clone());
                    sweeping = Some(tokio::spawn(async move {
                        sweep_stream(&cluster, &stream, &cursor).await
                    }));
                }
            }
            _ = check.tick(), if stream.is_some() => {
                tokio::spawn(check_stream(cluster.clone(), js.clone()));
            }
        }
        // Queries whose stores are all done, as permits allow.
        while waiting.front().is_some_and(|(needs, _)| *needs <= done) {
            let Ok(permit) = queries.clone().try_acquire_owned() else {
                break;
            };
            let (_, query) = waiting.pop_front().expect("just seen");
            let (cluster, mailboxes, stream) = (cluster.clone(), mailboxes.clone(), stream.clone());
            let query_done = query_done.clone();
            tokio::spawn(async move {
                answer(&cluster, stream.as_ref(), query, &mailboxes).await;
                drop(permit);
                query_done.notify_one();
            });
        }
    }
}

/// The stream, once it can be opened; the first failure is said.
async fn open_first(
    cluster: &Cluster,
    js: &jetstream::Context,
    said_unavailable: &mut bool,
) -> Option<stream::Stream> {
    match open(cluster, js).await {
        Ok(opened) => {
            let name = &opened.cached_info().config.name;
            log::info!(target: "information", "Cluster: retained messages are kept in the JetStream stream {name}.");
            Some(opened)
        }
        Err(e) => {
            if !std::mem::replace(said_unavailable, true) {
                log::error!("Error: cluster: cannot open the JetStream stream for retained messages ({e}); they are not kept until it can be (is JetStream on in the NATS servers?). Trying again every {} s.", OPEN_RETRY.as_secs());
            }
            None
        }
    }
}

/// Makes the stream again if it went (deleted, or lost with its only server's disk); run
/// in the background, so that acknowledgements and queries do not wait.
async fn check_stream(cluster: Arc<Cluster>, js: jetstream::Context) {
    if let Err(e) = open(&cluster, &js).await {
        log::warn!("Warning: cluster: the JetStream stream for retained messages cannot be found or made: {e}.");
    }
}

/// Makes the stream, or finds it made by another node.
async fn open(cluster: &Cluster, js: &jetstream::Context) -> Result<stream::Stream, String> {
    let config = stream::Config {
        name: stream_name(&cluster.settings.name),
        description: Some("midge: the retained messages of a cluster, one per topic".into()),
        subjects: vec![format!("{}.{RETAINED}.>", cluster.root)],
        max_messages_per_subject: 1,
        storage: stream::StorageType::File,
        num_replicas: cluster.settings.replicas,
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    };
    let opening = js.get_or_create_stream(config);
    in_time(opening).await
}

/// What `step` gives within `QUERY_STEP_WAIT`, its error as text.
async fn in_time<T, E: std::fmt::Display>(
    step: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    super::within(QUERY_STEP_WAIT, step).await
}

/// Waits for JetStream to say it has a stored message (or removal).
async fn stored(
    cluster: &Cluster,
    ack: jetstream::context::PublishAckFuture,
    until: tokio::time::Instant,
) {
    let stats = &cluster.stats;
    match tokio::time::timeout_at(until, ack).await {
        Ok(Ok(_)) => {
            stats.retained_stored.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Err(e)) => not_stored(cluster, &e.to_string()),
        Err(_) => not_stored(cluster, "no acknowledgement in time"),
    }
}

/// Until when a store handed over now is waited for.
pub(super) fn ack_deadline() -> tokio::time::Instant {
    tokio::time::Instant::now() + ACK_WAIT
}

/// A retained message JetStream did not take: said (the 1st, 2nd, 4th...), counted.
pub(super) fn not_stored(cluster: &Cluster, why: &str) {
    if let Some(seen) = super::count_to_say(&cluster.stats.retained_not_stored) {
        log::warn!("Warning: cluster: a retained message was not stored in JetStream: {why} ({seen} so far).");
    }
}

/// Finds what `query` asks for and hands it to its shard.
async fn answer(
    cluster: &Cluster,
    stream: Option<&stream::Stream>,
    query: Query,
    mailboxes: &Mailboxes,
) {
    let stats = &cluster.stats;
    let messages = match stream {
        Some(stream) => match find(cluster, stream, &query.filter).await {
            Ok(messages) => messages,
            Err(e) => {
                query_failed(cluster, &query.filter, &e);
                Vec::new()
            }
        },
        None => {
            query_failed(cluster, &query.filter, "the stream is not open");
            Vec::new()
        }
    };
    // Sent even when empty: the session counts the answers it waits for.
    stats
        .retained_found
        .fetch_add(messages.len() as u64, Ordering::Relaxed);
    let shard = query.shard;
    let mut msg = ShardMsg::RetainedFromCluster(Box::new(Found { query, messages }));
    let until = Instant::now() + ANSWER_WAIT;
    loop {
        match mailboxes.send(shard, msg) {
            Ok(()) => return,
            Err(back) if Instant::now() < until => {
                msg = back;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(_) => {
                stats.dropped_incoming.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

fn query_failed(cluster: &Cluster, filter: &str, why: &str) {
    if let Some(seen) = super::count_to_say(&cluster.stats.retained_queries_failed) {
        log::warn!("Warning: cluster: the retained messages for '{filter}' could not be found: {why} ({seen} so far).");
    }
}

/// The retained messages matching `filter`, from the stream: the last message of each
/// subject its subjects cover, without removals and what has expired.
async fn find(
    cluster: &Cluster,
    stream: &stream::Stream,
    filter: &str,
) -> Result<Vec<Arc<Message>>, String> {
    let mut found = FoundParts::default();
    for subject in filter_subjects_in(&cluster.root, RETAINED, filter) {
        let exact = !subject.split('.').any(|t| t == "*" || t == ">");
        if exact {
            let getting = stream.get_last_raw_message_by_subject(&subject);
            match tokio::time::timeout(QUERY_STEP_WAIT, getting).await {
                Ok(Ok(m)) => found.add(cluster, filter, &subject, &m.payload, &m.headers),
                Ok(Err(e)) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {}
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err("no answer".into()),
            }
            continue;
        }
        let mut reader = LastPerSubject::open(stream, subject, None).await?;
        let read = loop {
            let batch = match reader.next_batch().await {
                Ok(batch) if batch.is_empty() => break Ok(()),
                Ok(batch) => batch,
                Err(e) => break Err(e),
            };
            for m in &batch {
                found.add(cluster, filter, &m.subject, &m.payload, &m.headers);
            }
            if found.cut {
                break Ok(());
            }
        };
        reader.close();
        read?;
    }
    if found.cut {
        cluster.stats.retained_cut.fetch_add(1, Ordering::Relaxed);
        log::warn!(
            "Warning: cluster: more retained messages match '{filter}' than one subscription is sent ({FOUND_MAX} or {FOUND_BYTES_MAX} bytes); the first are sent."
        );
    }
    Ok(found.messages)
}

/// What a query has found so far, and the stream's messages it read (removals and expired
/// ones included); `cut` once a bound is reached.
#[derive(Default)]
struct FoundParts {
    messages: Vec<Arc<Message>>,
    bytes: usize,
    visits: usize,
    cut: bool,
}

/// Messages of the stream one query reads at most (removals and expired ones the sweep
/// has not deleted yet count).
const VISITS_MAX: usize = 4 * FOUND_MAX;

impl FoundParts {
    /// Adds the message stored on `subject`, unless it is a removal, expired, not a
    /// node's message for that subject (counted), or not one `filter` matches: the
    /// subjects cover more than the filter (`$`-topics under a leading wildcard
    /// [MQTT-4.7.2-1], a filter cut short for a subject).
    fn add(
        &mut self,
        cluster: &Cluster,
        filter: &str,
        subject: &str,
        payload: &[u8],
        headers: &async_nats::HeaderMap,
    ) {
        self.visits += 1;
        if self.visits > VISITS_MAX {
            self.cut = true;
        }
        if payload.is_empty() || self.cut {
            return;
        }
        let Some(message) = stored_message(cluster, subject, payload, headers) else {
            return;
        };
        if !crate::topic::matches(filter, &message.topic) {
            return;
        }
        let size = message.held_bytes();
        if self.messages.len() >= FOUND_MAX || self.bytes + size > FOUND_BYTES_MAX {
            self.cut = true;
            return;
        }
        self.bytes += size;
        self.messages.push(Arc::new(message));
    }
}

/// The retained message stored on `subject`, if it is one a node stores there and has not
/// expired.
fn stored_message(
    cluster: &Cluster,
    subject: &str,
    payload: &[u8],
    headers: &async_nats::HeaderMap,
) -> Option<Message> {
    let now = Instant::now();
    let decoded = wire::decode(payload, now).and_then(|arrived| {
        let message = arrived.message;
        if self::subject(cluster, &message.topic).as_deref() != Some(subject) {
            return Err(format!(
                "its topic '{}' is not its subject's",
                message.topic
            ));
        }
        if super::is_sys(&message.topic) || !message.retain {
            return Err("not a retained message a node stores".into());
        }
        let mut message = message;
        message.properties.topic_alias = None;
        message.properties.subscription_identifiers.clear();
        Ok(message)
    });
    let mut message = match decoded {
        Ok(message) => message,
        Err(e) => {
            if let Some(seen) = super::count_to_say(&cluster.stats.undecodable) {
                log::warn!("Warning: cluster: a retained message on {subject} that is not midge's: {e}; skipped ({seen} so far).");
            }
            return None;
        }
    };
    if let Some(left) = expiry_left(headers) {
        if left.is_zero() {
            return None;
        }
        message.expires_at = Some(now + left);
    }
    Some(message)
}

/// What is left of a stored message's expiry, if it expires (zero once it has).
fn expiry_left(headers: &async_nats::HeaderMap) -> Option<Duration> {
    let at: u64 = headers.get(EXPIRES_AT)?.as_str().parse().ok()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    Some(Duration::from_millis(at).saturating_sub(now))
}

/// Deletes the removals and the expired messages the stream still holds (each by its
/// sequence number, so that a message stored since on the same subject stays), looking at
/// `SWEEP_VISITS_MAX` messages from `cursor` on (a sequence; the next sweep goes on from
/// where this one stopped, and from the start once it reached the end).
async fn sweep_stream(cluster: &Cluster, stream: &stream::Stream, cursor: &AtomicU64) {
    let all = format!("{}.{RETAINED}.>", cluster.root);
    let from = cursor.load(Ordering::Relaxed).max(1);
    let Ok(mut reader) = LastPerSubject::open(stream, all, Some(from)).await else {
        return;
    };
    let mut visits = 0;
    let mut next = from;
    while visits < SWEEP_VISITS_MAX {
        let Ok(batch) = reader.next_batch().await else {
            break;
        };
        if batch.is_empty() {
            break;
        }
        visits += batch.len();
        for m in batch {
            next = m.sequence + 1;
            let gone = m.payload.is_empty() || expiry_left(&m.headers).is_some_and(|l| l.is_zero());
            if gone && matches!(stream.delete_message(m.sequence).await, Ok(true)) {
                cluster.stats.retained_swept.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    if reader.done {
        next = 0;
    }
    cursor.store(next, Ordering::Relaxed);
    reader.close();
}
