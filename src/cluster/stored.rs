//! QoS 1 and 2 messages between nodes through JetStream (`cluster_messages jetstream`).
//!
//! A node publishes each QoS 1 or 2 message into one stream, `midge_<cluster>_messages`, on
//! `<root>.q.<tokens>`. The stream republishes what it stored on `<root>.m.<tokens>`, the
//! subject the other nodes take messages of that topic from, with its sequence in the
//! stream (`Nats-Sequence`). So a message reaches the other nodes only once it is stored,
//! and only once: its id (`Nats-Msg-Id`, its origin and number) makes a second store of it
//! within the stream's duplicate window a no-op.
//!
//! Its publisher's PUBACK or PUBREC waits for the store (`shard/cluster_acks.rs`): a
//! message acknowledged is in JetStream, on as many servers as `cluster_replicas` says.
//!
//! Stores are made and acknowledged in the order the link hands them over, at most
//! `STORES_AT_ONCE` at a time; each shard is told how far its messages are done
//! (`Cluster::stored_through`). A store that fails is made again until `STORE_WAIT` has
//! passed since the first try; then the message goes on core NATS (at most once to the
//! other nodes), and its acknowledgement goes all the same, counted and said: a client is
//! not held longer for a cluster that cannot keep its message.
//!
//! Until the stream can be opened (JetStream off in the NATS servers), messages go on core
//! NATS as with `cluster_messages core`, acknowledged at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use std::future::IntoFuture;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::Cluster;
use crate::router::Mailboxes;

/// The stream's subjects are `<root>.q.>`: a message's is its core subject with `q` for `m`.
pub(super) const STORED: &str = "q";

/// Stores waited for at once; the others wait in the channel (their bytes counted with the
/// queue to the link: `Cluster::forward`).
const STORES_AT_ONCE: usize = 4096;

/// How long one try waits for JetStream's acknowledgement, and how long a message is tried
/// before it goes without.
pub(super) const TRY_WAIT: Duration = Duration::from_secs(2);
const STORE_WAIT: Duration = Duration::from_secs(30);

/// How long a message that could not be stored may wait for the NATS client's queue.
const FALLBACK_WAIT: Duration = Duration::from_millis(50);

/// Between two tries of a store that failed at once (NATS away: no responders).
const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// How often the stream is looked for (made if it went).
const OPEN_RETRY: Duration = Duration::from_secs(5);
const STREAM_CHECK: Duration = Duration::from_secs(30);

/// The duplicate window: a message tried again within it is stored once (no longer than
/// the stream keeps messages, which nats-server requires; `cluster_messages_max_age` is
/// 60 s at least, past `STORE_WAIT`).
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// A message to store, handed over by the link in the order of its shard's numbers.
pub(super) struct Store {
    pub shard: usize,
    pub number: u64,
    /// Its core subject (`<root>.m...`): where it goes if it cannot be stored.
    pub subject: String,
    pub id: String,
    /// `None`: it cannot be sent (NATS would refuse it): only its place in the order.
    pub bytes: Option<Bytes>,
    pub qos: u8,
    /// When the link handed it over: it is tried until `STORE_WAIT` after that.
    pub handed: tokio::time::Instant,
    /// Counted with the queue to the link until it is done.
    pub held: usize,
    /// The message (a replay knows it by its place in the stream, `replay.rs`).
    pub message: Arc<crate::router::Message>,
}

/// How a store ended.
enum Done {
    Stored,
    /// Not sent: NATS would refuse it (said and counted by the link).
    Skipped,
    /// Not stored within `STORE_WAIT`: sent on core NATS (true if that went).
    WentWithout(String, bool),
}

/// The stream's name for the cluster `name`.
pub(super) fn stream_name(name: &str) -> String {
    format!("midge_{name}_messages")
}

/// The subject the stream takes the message of core subject `subject` on (`<root>.m.x` is
/// `<root>.q.x`).
fn stream_subject(root: &str, subject: &str) -> String {
    let rest = subject
        .strip_prefix(root)
        .and_then(|s| s.strip_prefix(".m"))
        .unwrap_or_default();
    format!("{root}.{STORED}{rest}")
}

/// The subject this node's fences are stored on (`replay.rs`).
pub(super) fn fence_subject(cluster: &Cluster) -> String {
    let copy = super::subject::fence_subject(&cluster.root, cluster.incarnation);
    stream_subject(&cluster.root, &copy)
}

/// Stores one of this node's fences (its copy, coming back, tells the link how far the
/// node has received the stream: `replay.rs`).
fn store_fence(cluster: &Cluster, js: &jetstream::Context) {
    let (js, subject) = (js.clone(), fence_subject(cluster));
    tokio::spawn(async move {
        let storing = js.publish(subject, Bytes::new());
        if let Ok(Ok(ack)) = tokio::time::timeout(TRY_WAIT, storing).await {
            let _ = tokio::time::timeout(TRY_WAIT, ack.into_future()).await;
        }
    });
}

/// The id JetStream knows a message by within its duplicate window.
pub(super) fn message_id(origin: super::dedup::Origin, number: u64) -> String {
    format!("{:x}.{}.{number}", origin.incarnation, origin.shard)
}

/// Makes the stores the link hands over until it ends.
pub(super) async fn serve(
    cluster: Arc<Cluster>,
    client: async_nats::Client,
    mut stores: mpsc::UnboundedReceiver<Store>,
    mailboxes: Arc<Mailboxes>,
) {
    let js = jetstream::new(client.clone());
    let mut opened = false;
    let mut said_unavailable = false;
    let mut retry = tokio::time::interval(OPEN_RETRY);
    let mut check = tokio::time::interval(STREAM_CHECK);
    check.reset();
    let mut fences = tokio::time::interval(super::replay::FENCE_EVERY);
    fences.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut acks = futures_util::stream::FuturesOrdered::new();
    loop {
        tokio::select! {
            next = stores.recv(), if acks.len() < STORES_AT_ONCE => {
                let Some(store) = next else { break };
                let (cluster, js, client) = (cluster.clone(), js.clone(), client.clone());
                acks.push_back(async move {
                    let done = store_one(&cluster, &js, &client, &store).await;
                    (store, done)
                });
            }
            Some((store, done)) = acks.next(), if !acks.is_empty() => {
                finished(&cluster, &mailboxes, store, done);
            }
            _ = retry.tick(), if !opened => {
                match open(&cluster, &js).await {
                    Ok(()) => {
                        opened = true;
                        cluster.messages_open.store(true, Ordering::Release);
                        log::info!(target: "information", "Cluster: QoS 1 and 2 messages between nodes go through the JetStream stream {}.", stream_name(&cluster.settings.name));
                    }
                    Err(e) if !std::mem::replace(&mut said_unavailable, true) => {
                        log::error!("Error: cluster: cannot open the JetStream stream for QoS 1 and 2 messages ({e}); they go between nodes at most once, acknowledged at once, until it can be (is JetStream on in the NATS servers?). Trying again every {} s.", OPEN_RETRY.as_secs());
                    }
                    Err(_) => {}
                }
            }
            _ = fences.tick(), if opened => store_fence(&cluster, &js),
            _ = check.tick(), if opened => {
                let (cluster, js) = (cluster.clone(), js.clone());
                tokio::spawn(async move {
                    if let Err(e) = open(&cluster, &js).await {
                        log::warn!("Warning: cluster: the JetStream stream for QoS 1 and 2 messages cannot be found or made: {e}.");
                    }
                });
            }
        }
    }
}

/// Makes the stream, or finds it made by another node.
async fn open(cluster: &Cluster, js: &jetstream::Context) -> Result<(), String> {
    let root = &cluster.root;
    let settings = &cluster.settings;
    let config = stream::Config {
        name: stream_name(&settings.name),
        description: Some("midge: QoS 1 and 2 messages between the nodes of a cluster".into()),
        subjects: vec![format!("{root}.{STORED}.>")],
        republish: Some(stream::Republish {
            source: format!("{root}.{STORED}.>"),
            destination: format!("{root}.m.>"),
            headers_only: false,
        }),
        storage: stream::StorageType::File,
        num_replicas: settings.replicas,
        max_age: settings.messages_max_age,
        max_bytes: i64::try_from(settings.messages_max_bytes).unwrap_or(i64::MAX),
        discard: stream::DiscardPolicy::Old,
        duplicate_window: DUPLICATE_WINDOW.min(settings.messages_max_age),
        ..Default::default()
    };
    let opening = js.get_or_create_stream(config);
    super::within(TRY_WAIT, opening).await.map(|_| ())
}

/// Stores `store`, trying again until `STORE_WAIT`; past it, sends it on core NATS.
async fn store_one(
    cluster: &Cluster,
    js: &jetstream::Context,
    client: &async_nats::Client,
    store: &Store,
) -> Done {
    let Some(bytes) = &store.bytes else {
        return Done::Skipped;
    };
    let until = store.handed + STORE_WAIT;
    let subject = stream_subject(&cluster.root, &store.subject);
    let mut tries = 0u32;
    let why = loop {
        if tokio::time::Instant::now() >= until {
            // Waited behind others for all its time (NATS away for long): not tried.
            break "NATS did not take the messages before it in time".to_string();
        }
        tries += 1;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", store.id.as_str());
        let publishing = js.publish_with_headers(subject.clone(), headers, bytes.clone());
        let why = match tokio::time::timeout(TRY_WAIT, publishing).await {
            Ok(Ok(ack)) => match super::within(TRY_WAIT, ack.into_future()).await {
                Ok(_) => return Done::Stored,
                Err(e) => e,
            },
            // Its bytes and the id header pass what NATS takes: no try will do.
            Ok(Err(e)) if e.kind() == PublishErrorKind::MaxPayloadExceeded => break e.to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer".into(),
        };
        if tries == 1 {
            cluster.stats.store_retries.fetch_add(1, Ordering::Relaxed);
        }
        if tokio::time::Instant::now() + RETRY_PAUSE >= until {
            break why;
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    };
    // Bounded as a core publish is (`link::PUBLISH_WAIT`): the NATS client's own queue is
    // full while it reconnects.
    let publishing = client.publish(store.subject.clone(), bytes.clone());
    let sent = matches!(
        tokio::time::timeout(FALLBACK_WAIT, publishing).await,
        Ok(Ok(()))
    );
    Done::WentWithout(why, sent)
}

/// A store is done: counted, its bytes let go, and its shard told how far its messages are
/// done (woken if it sleeps).
fn finished(cluster: &Cluster, mailboxes: &Mailboxes, store: Store, done: Done) {
    let stats = &cluster.stats;
    match done {
        Done::Stored => {
            let len = store.bytes.as_ref().map_or(0, |b| b.len());
            stats.stored.fetch_add(1, Ordering::Relaxed);
            stats.forwarded.fetch_add(1, Ordering::Relaxed);
            (stats.forwarded_bytes).fetch_add(len as u64, Ordering::Relaxed);
        }
        Done::Skipped => store.message.stream.own.store(0, Ordering::Release),
        Done::WentWithout(why, sent) => {
            // Not in the stream: a replay does not bring it.
            store.message.stream.own.store(0, Ordering::Release);
            if sent {
                stats.forwarded.fetch_add(1, Ordering::Relaxed);
            } else {
                stats.dropped_outgoing.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(seen) = super::count_to_say(&stats.not_stored) {
                log::warn!("Warning: cluster: a QoS {} message was not stored in JetStream ({why}); it went to the other nodes at most once, and its publisher was acknowledged all the same ({seen} so far).", store.qos);
            }
        }
    }
    cluster.store_done(mailboxes, store.shard, store.number, store.held);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_core_subject_has_its_stream_subject_under_q() {
        assert_eq!(stream_subject("midge.c", "midge.c.m.a.b"), "midge.c.q.a.b");
        assert_eq!(stream_subject("midge.c", "midge.c.m.~~"), "midge.c.q.~~");
        assert_eq!(stream_subject("midge.c", "midge.c.m"), "midge.c.q");
    }
}
