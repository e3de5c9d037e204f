//! What a gone node never received, read again from the messages' stream for the sessions
//! taken over from it (`sessions/nodes.rs`).
//!
//! A node knows how far it has received the stream: every `FENCE_EVERY` it stores a fence
//! (an empty message on a subject of its own, no topic's: `subject::fence_subject`), and
//! the stream republishes the fence to it behind every message stored before it that the
//! node subscribed to (one publisher's messages reach one subscriber in order). The
//! sequence of the last fence that came back is the node's position
//! (`Cluster::position`), written beside its heartbeat (`nodes::position_of`).
//!
//! The node that takes a gone node's sessions over (all at once, or the sessions its
//! clients' claims go on with from their records, gathered for `claim::GATHER`) revives
//! them, each marked as being
//! replayed (`shard/cluster_replay.rs`), and once every shard has them (and so their
//! subscriptions are this node's interest, and every message routed without them is
//! handed to the stream and stored), stores a fence of its own: every message of another
//! node stored after that fence comes here as any other. What is between the gone node's
//! position and that fence is read from the stream, in order, and routed to the adopted
//! sessions alone (their subscriptions, not share groups): the other nodes' messages, and
//! this node's own numbered before the fence was asked for (`Cluster::forward` numbers
//! them per shard). Meanwhile whatever else comes for them is held; at the end, what the
//! replay delivered already (another node's at or before the fence, this node's numbered
//! before it) is dropped, and the rest delivered after it; for a while after, a late copy
//! of what the replay brought is dropped too. So each message stored after the gone node's
//! position reaches an adopted session once, in order; what the gone node received after
//! its last fence came back, and delivered, comes again (at least once for that moment).
//!
//! What the gone node received but had not delivered before its position (its sessions'
//! queues, messages in flight) is not read again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use hashbrown::HashSet;
use tokio::sync::{mpsc, oneshot};

use super::{subject, Cluster, ToLink};
use crate::router::{Mailboxes, ShardMsg};
use crate::topic::SessionId;

/// How often a node stores a fence to learn its position.
pub(super) const FENCE_EVERY: Duration = Duration::from_secs(1);

/// How long the shards may take to revive the adopted sessions (and then to pass a
/// barrier), this node's messages handed over before to be stored, and the fence.
const JOIN_WAIT: Duration = Duration::from_secs(10);
const STORED_WAIT: Duration = Duration::from_secs(35);
const FENCE_WAIT: Duration = Duration::from_secs(5);

/// How long one read of the stream may take, and the whole replay: past it, what is left
/// is not read (said), and the adopted sessions get what was held for them.
const STEP_WAIT: Duration = Duration::from_secs(5);
const REPLAY_MAX: Duration = Duration::from_secs(60);

/// Messages asked for in one fetch.
const FETCH_MAX: usize = 256;

/// A replay's number, unique in this run.
static NEXT_REPLAY: AtomicU64 = AtomicU64::new(1);

/// The sessions to replay for, as the shards revive them.
pub struct Replay {
    id: u64,
    sessions: Arc<Mutex<HashSet<SessionId>>>,
    revived: mpsc::Receiver<()>,
    join: Join,
}

/// A session's part in a replay, handed to the shard that revives it: it is done with once
/// dropped (revived and marked, or not revived).
#[derive(Clone)]
pub struct Join {
    id: u64,
    sessions: Arc<Mutex<HashSet<SessionId>>>,
    _open: mpsc::Sender<()>,
}

/// What waits on a shard for a session being replayed for (`shard/cluster_replay.rs`).
pub struct Held {
    pub(crate) replay: u64,
    pub(crate) since: std::time::Instant,
    pub(crate) messages: Vec<(Arc<crate::router::Message>, crate::router::Target)>,
}

/// Dropped by each shard once it reads it: every shard is past what it was doing.
pub struct Gate {
    _open: mpsc::Sender<()>,
}

/// Where a replay ended: the other nodes' messages through the stream's `through`, this
/// node's numbered before `numbers` (per shard). What is held for its sessions of those
/// is dropped: the replay delivered it.
pub struct Ended {
    pub through: u64,
    pub numbers: Vec<u64>,
}

impl Ended {
    /// Whether the replay delivered `message` (held for one of its sessions).
    pub fn delivered(&self, message: &crate::router::Message) -> bool {
        if message.stream.sequence > 0 {
            return message.stream.sequence <= self.through;
        }
        let own = message.stream.own.load(Ordering::Acquire);
        let (shard, number) = ((own >> 48) as usize, own & ((1 << 48) - 1));
        own != 0 && self.numbers.get(shard).is_some_and(|&next| number < next)
    }
}

/// Waits until every shard has read a gate: what they routed before is handed over.
async fn all_shards_past(cluster: &Cluster, mailboxes: &Mailboxes) {
    let (open, mut passed) = mpsc::channel(1);
    for shard in 0..mailboxes.shards() {
        let gate = Gate {
            _open: open.clone(),
        };
        super::sessions::send_patiently(cluster, mailboxes, shard, ShardMsg::ReplayGate(gate))
            .await;
    }
    drop(open);
    let _ = tokio::time::timeout(JOIN_WAIT, passed.recv()).await;
}

/// This node's next numbers for the stream, once every message numbered before is stored
/// (or went without); none if they are not in time (the replay then brings none of this
/// node's own messages, and none held is taken for brought).
async fn stored_so_far(cluster: &Cluster) -> Vec<u64> {
    let next: Vec<u64> = (cluster.stored_numbers.iter())
        .map(|n| n.load(Ordering::SeqCst))
        .collect();
    let until = tokio::time::Instant::now() + STORED_WAIT;
    let all_done = || (next.iter().enumerate()).all(|(s, &n)| cluster.stored_through(s) + 1 >= n);
    while !all_done() {
        if tokio::time::Instant::now() >= until {
            return Vec::new();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    next
}

impl Join {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// `session` was revived and marked as being replayed for.
    pub fn add(&self, session: SessionId) {
        self.sessions.lock().expect("replay lock").insert(session);
    }
}

impl Replay {
    /// A replay, if the messages' stream is open.
    pub(super) fn new(cluster: &Cluster) -> Option<Replay> {
        if !cluster.messages_open.load(Ordering::Acquire) {
            return None;
        }
        let id = NEXT_REPLAY.fetch_add(1, Ordering::Relaxed);
        let sessions = Arc::default();
        let (open, revived) = mpsc::channel(1);
        let join = Join {
            id,
            sessions: Arc::clone(&sessions),
            _open: open,
        };
        Some(Replay {
            id,
            sessions,
            revived,
            join,
        })
    }

    pub(super) fn join(&self) -> Join {
        self.join.clone()
    }

    /// Once every session is revived: reads the stream after `from` up to a fence stored
    /// now, for the sessions revived; then tells the shards the replay is done. `what`
    /// names whose sessions they are, for the log.
    pub(super) async fn run(
        self,
        cluster: &Cluster,
        js: &jetstream::Context,
        mailboxes: &Mailboxes,
        from: u64,
        what: &str,
    ) {
        let Replay {
            id,
            sessions,
            mut revived,
            join,
        } = self;
        drop(join);
        // `None` once every `Join` is dropped.
        let _ = tokio::time::timeout(JOIN_WAIT, revived.recv()).await;
        let sessions: HashSet<SessionId> = std::mem::take(&mut *sessions.lock().expect("lock"));
        if sessions.is_empty() {
            return;
        }
        let sessions = Arc::new(sessions);
        let router = (id % mailboxes.shards() as u64) as usize;
        all_shards_past(cluster, mailboxes).await;
        let numbers = stored_so_far(cluster).await;
        // Nothing read: what waited for the sessions is all delivered.
        let nothing = || Ended {
            through: 0,
            numbers: Vec::new(),
        };
        let ended = match (from, fence(cluster).await) {
            (0, _) => {
                log::warn!("Warning: cluster: {what} did not say how far it had received the messages' stream (an earlier version, or the stream just opened): what it missed is not read again for its sessions.");
                nothing()
            }
            (_, Err(e)) => {
                log::warn!("Warning: cluster: the messages {what} missed cannot be read again for its sessions: {e}.");
                nothing()
            }
            (from, Ok(fence)) if fence <= from => {
                log::warn!("Warning: cluster: the messages' stream is not the one {what} had received (made again since?): what it missed is not read again for its sessions.");
                nothing()
            }
            (from, Ok(fence)) => {
                let read = Read {
                    cluster,
                    mailboxes,
                    router,
                    sessions: &sessions,
                    numbers: &numbers,
                    handled: AtomicU64::new(from),
                };
                let outcome = read.between(js, from, fence).await;
                let stats = &cluster.stats;
                stats.replays.fetch_add(1, Ordering::Relaxed);
                match outcome {
                    Ok(n) => {
                        log::info!(target: "information", "Cluster: {n} messages {what} missed are delivered to its {} sessions taken over here.", sessions.len());
                        Ended {
                            through: fence,
                            numbers,
                        }
                    }
                    Err(e) => {
                        stats.replays_cut.fetch_add(1, Ordering::Relaxed);
                        log::warn!("Warning: cluster: the messages {what} missed are not all read again for its sessions: {e}.");
                        // What was read, and none of this node's own (some may come twice).
                        Ended {
                            through: read.handled.load(Ordering::Relaxed),
                            numbers: Vec::new(),
                        }
                    }
                }
            }
        };
        let ended = Arc::new(ended);
        let done = ShardMsg::ReplayDone {
            replay: id,
            ended,
            from_router: true,
        };
        // (Not taken: the shards let the sessions go on after `shard::cluster_replay`'s
        // own limit.)
        let _ = super::sessions::send_patiently(cluster, mailboxes, router, done).await;
    }
}

/// Stores a fence after the link has made the subscriptions noted so far: its sequence.
async fn fence(cluster: &Cluster) -> Result<u64, String> {
    let (reply, answer) = oneshot::channel();
    let asking = async {
        let asked = cluster.outgoing.send(ToLink::Fence(reply)).await;
        asked.map_err(|_| "the NATS client is gone".to_string())?;
        answer.await.map_err(|_| "no answer".to_string())?
    };
    match tokio::time::timeout(FENCE_WAIT, asking).await {
        Ok(answer) => answer,
        Err(_) => Err("no fence stored in time".into()),
    }
}

/// A replay's reading: to `sessions` through shard `router`, this node's own messages
/// numbered before `numbers` alone.
struct Read<'r> {
    cluster: &'r Cluster,
    mailboxes: &'r Mailboxes,
    router: usize,
    sessions: &'r Arc<HashSet<SessionId>>,
    numbers: &'r [u64],
    /// The stream's sequence up to which every message was routed (or passed over).
    handled: AtomicU64,
}

impl Read<'_> {
    /// Routes the stream's messages after `from` up to `through`: how many were read.
    async fn between(
        &self,
        js: &jetstream::Context,
        from: u64,
        through: u64,
    ) -> Result<u64, String> {
        let Read {
            cluster,
            mailboxes,
            router,
            sessions,
            ..
        } = *self;
        let until = tokio::time::Instant::now() + REPLAY_MAX;
        let name = super::stored::stream_name(&cluster.settings.name);
        let stream = super::within(STEP_WAIT, js.get_stream(&name)).await?;
        let config = consumer::pull::Config {
            filter_subject: format!("{}.{}.>", cluster.root, super::stored::STORED),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from + 1,
            },
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(10),
            memory_storage: true,
            ..Default::default()
        };
        let consumer = super::within(STEP_WAIT, stream.create_consumer(config)).await?;
        let name = consumer.cached_info().name.clone();
        let mut read = 0u64;
        let mut expected = from + 1;
        let result = loop {
            if tokio::time::Instant::now() >= until {
                break Err(format!("not done in {} s", REPLAY_MAX.as_secs()));
            }
            let fetching = consumer.fetch().max_messages(FETCH_MAX).messages();
            let mut batch = match super::within(STEP_WAIT, fetching).await {
                Ok(batch) => batch,
                Err(e) => break Err(e),
            };
            let mut last = None;
            let mut failed = None;
            while let Ok(next) = tokio::time::timeout(STEP_WAIT, batch.next()).await {
                let message = match next {
                    Some(Ok(message)) => message,
                    Some(Err(e)) => {
                        failed = Some(e.to_string());
                        break;
                    }
                    None => break,
                };
                let Ok(info) = message.info() else { continue };
                let (sequence, pending) = (info.stream_sequence, info.pending);
                let published = info.published.unix_timestamp_nanos();
                if sequence > expected {
                    // Gone from the stream (past its limits): counted.
                    let missed = sequence - expected;
                    cluster
                        .stats
                        .replay_missed
                        .fetch_add(missed, Ordering::Relaxed);
                }
                expected = sequence + 1;
                last = Some((sequence, pending));
                if sequence > through {
                    break;
                }
                let subject = message.subject.as_str();
                let Some(mut routed) = self.replayed(subject, &message.payload, published) else {
                    self.handled.store(sequence, Ordering::Relaxed);
                    continue;
                };
                routed.stream.sequence = sequence;
                routed.stream.replayed = true;
                let msg = ShardMsg::Replayed {
                    message: Box::new(routed),
                    sessions: sessions.clone(),
                };
                if !super::sessions::send_patiently(cluster, mailboxes, router, msg).await {
                    failed = Some("a shard's mailbox stayed full".into());
                    break;
                }
                read += 1;
                cluster.stats.replayed.fetch_add(1, Ordering::Relaxed);
                self.handled.store(sequence, Ordering::Relaxed);
            }
            if let Some(e) = failed {
                break Err(e);
            }
            // Done once the fence (or what followed it) was seen; until then, read on: a
            // batch may end early (the server slow, a step's time up).
            if expected > through {
                break Ok(read);
            }
            if last.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::spawn(async move {
            let _ = tokio::time::timeout(STEP_WAIT, stream.delete_consumer(&name)).await;
        });
        result
    }

    /// A message of the stream as routed here: `None` for a fence, what is not a node's
    /// message (counted), what expired since it was stored, or one of this node's own
    /// numbered after the replay began (it reached the sessions here as it was published).
    fn replayed(
        &self,
        subject: &str,
        payload: &[u8],
        published_ns: i128,
    ) -> Option<crate::router::Message> {
        let cluster = self.cluster;
        // `<root>.q.x` was published on `<root>.m.x`.
        let rest = subject
            .strip_prefix(cluster.root.as_str())?
            .strip_prefix(&format!(".{}", super::stored::STORED))?;
        let subject = format!("{}.m{rest}", cluster.root);
        if subject::is_fence(&cluster.root, &subject) {
            return None;
        }
        let now = std::time::Instant::now();
        let arrived =
            super::wire::decode(payload, now).and_then(|a| cluster.check_arrived(&subject, a));
        let arrived = match arrived {
            Ok(arrived) => arrived,
            Err(_) => {
                cluster.stats.undecodable.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        if arrived.origin.incarnation == cluster.incarnation {
            let shard = usize::from(arrived.origin.shard & !super::STORED_ORIGIN);
            if self
                .numbers
                .get(shard)
                .is_none_or(|&next| arrived.number >= next)
            {
                return None;
            }
        }
        let mut message = arrived.message;
        // Its expiry counts the time since it was stored.
        if let Some(expires_at) = message.expires_at {
            let stored = SystemTime::UNIX_EPOCH
                + Duration::from_nanos(u64::try_from(published_ns).unwrap_or(0));
            let waited = SystemTime::now().duration_since(stored).unwrap_or_default();
            match expires_at.checked_sub(waited) {
                Some(at) if at > now => message.expires_at = Some(at),
                _ => return None,
            }
        }
        Some(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{MqttStr, Properties, QoS};
    use crate::types::{Message, StreamPlace};

    fn message(sequence: u64, own: Option<(usize, u64)>) -> Message {
        let message = Message {
            topic: MqttStr::new("t").unwrap(),
            payload: bytes::Bytes::new(),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::default(),
            origin: None,
            expires_at: None,
            order: Default::default(),
            stream: StreamPlace {
                sequence,
                ..Default::default()
            },
        };
        if let Some((shard, number)) = own {
            let place = StreamPlace::own_place(shard, number);
            message.stream.own.store(place, Ordering::Relaxed);
        }
        message
    }

    #[test]
    fn a_replay_brought_what_is_up_to_its_fence_and_its_own_numbered_before() {
        let ended = Ended {
            through: 100,
            numbers: vec![5, 9],
        };
        // Another node's, through the stream: by its sequence.
        assert!(ended.delivered(&message(100, None)));
        assert!(!ended.delivered(&message(101, None)));
        // This node's own, by shard and number.
        assert!(ended.delivered(&message(0, Some((0, 4)))));
        assert!(!ended.delivered(&message(0, Some((0, 5)))));
        assert!(ended.delivered(&message(0, Some((1, 8)))));
        assert!(!ended.delivered(&message(0, Some((2, 1)))), "no such shard");
        // Neither (QoS 0, core NATS, not stored): never brought.
        assert!(!ended.delivered(&message(0, None)));
        // A replay that read none of this node's own brought none of them.
        let cut = Ended {
            through: 100,
            numbers: Vec::new(),
        };
        assert!(!cut.delivered(&message(0, Some((0, 1)))));
        assert!(cut.delivered(&message(7, None)));
    }
}
