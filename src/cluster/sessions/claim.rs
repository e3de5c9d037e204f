//! A claim of a client id: this node written as its owner in the bucket by a
//! compare-and-set, then its session fetched from the node that owned it, then the answer
//! handed to the connection's shard (the module above says in what order).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_nats::jetstream::kv;
use bytes::Bytes;
use tokio::sync::watch;

use super::wire::{self, Owner, OwnerValue, TakeAnswer, TakeRequest};
use super::{
    client_key, in_time, send_patiently, take_subject, unclaimed, Bucket, ClaimAsk, Claimed,
    Claiming, Claims, ANSWER_WAIT_MAX, CLAIM_WAIT, RETRY_AFTER, STEP_WAIT,
};
use crate::cluster::replay::{Join, Replay};
use crate::cluster::Cluster;

/// What a claim keeps for fetching the session: its writes stop this long before its
/// deadline.
const FETCH_MIN: std::time::Duration = std::time::Duration::from_millis(1500);
use crate::router::{Mailboxes, ShardMsg};

/// What a claim works with.
pub(super) struct Claimer {
    pub cluster: Arc<Cluster>,
    pub client: async_nats::Client,
    pub mailboxes: Arc<Mailboxes>,
    pub bucket: watch::Receiver<Bucket>,
    pub claims: Claims,
    /// Replays gathering the sessions of a gone node's run that its clients' claims go on
    /// with from their records (`replay_for`).
    pub replays: Gathering,
}

/// Replays under way per gone node's run, still taking sessions.
pub(super) type Gathering = Arc<std::sync::Mutex<hashbrown::HashMap<(String, u64), Join>>>;

/// How long a replay for claims takes the sessions of other claims of the same gone run
/// before it reads: one replay for a crowd of clients coming back, not one each.
const GATHER: std::time::Duration = std::time::Duration::from_millis(500);

/// How a write of the key ended.
enum Written {
    Landed(u64),
    /// Another write came first: read again at once.
    Lost,
    /// It failed or was not answered: it may have landed all the same.
    Unknown,
}

impl Claimer {
    /// Makes `ask`'s claim, then that of the latest connection of the client here that
    /// came meanwhile, one after the other.
    pub(super) async fn claim_in_turn(mut self, ask: ClaimAsk) {
        let mut next = Some(ask);
        while let Some(ask) = next.take() {
            // From when the connection asked: a claim that waited its turn past it writes
            // nothing (its connection goes on on this node's say, or has gone).
            let deadline = tokio::time::Instant::from_std(ask.asked_at) + CLAIM_WAIT;
            let claimed = self.claim_in_time(&ask, deadline).await;
            next = self.deliver(ask, claimed).await;
        }
    }

    /// `ask`'s claim, unless NATS is away, its deadline passed while it waited its turn, or
    /// the bucket is not open by then.
    async fn claim_in_time(&mut self, ask: &ClaimAsk, deadline: tokio::time::Instant) -> Claimed {
        let why = if self.client.connection_state() != async_nats::connection::State::Connected {
            "NATS is away"
        } else if tokio::time::Instant::now() >= deadline {
            "it waited its turn too long"
        } else {
            match self.bucket_until(deadline).await {
                Some(store) => return self.claim(&store, ask, deadline).await,
                None => "the key-value bucket is not open",
            }
        };
        unclaimed(&self.cluster, &ask.client_id, why)
    }

    /// The bucket, once open (until `deadline`); `None` at once while it is down.
    async fn bucket_until(&mut self, deadline: tokio::time::Instant) -> Option<kv::Store> {
        let settled = self.bucket.wait_for(|b| !matches!(b, Bucket::Opening));
        match tokio::time::timeout_at(deadline, settled).await {
            Ok(Ok(bucket)) => match &*bucket {
                Bucket::Open(store) => Some((**store).clone()),
                _ => None,
            },
            _ => None,
        }
    }

    /// Makes this node the owner of `ask`'s client id, then fetches the session from the
    /// node that owned it; `Unclaimed` if that cannot be done by `deadline`.
    async fn claim(
        &self,
        store: &kv::Store,
        ask: &ClaimAsk,
        deadline: tokio::time::Instant,
    ) -> Claimed {
        let cluster = &self.cluster;
        let key = client_key(&ask.client_id);
        let me = Owner {
            node: cluster.node_id.clone(),
            incarnation: cluster.incarnation,
            claim: ask.token,
        };
        let value = wire::encode_owner(&me, None);
        // The owner read before a write whose end is unknown: if it landed, the session is
        // that owner's.
        let mut before_unknown: Option<Option<OwnerValue>> = None;
        // Writes leave the fetch its time.
        let write_deadline = deadline.checked_sub(FETCH_MIN).unwrap_or(deadline);
        loop {
            if tokio::time::Instant::now() >= write_deadline {
                let why = "the key-value bucket did not answer in time";
                return unclaimed(cluster, &ask.client_id, why);
            }
            let entry = match in_time(store.entry(key.clone())).await {
                Ok(entry) => entry,
                Err(e) => {
                    log::debug!("Cluster: reading the owner of {}: {e}", ask.client_id);
                    tokio::time::sleep(RETRY_AFTER).await;
                    continue;
                }
            };
            let live = entry.as_ref().filter(|e| e.operation == kv::Operation::Put);
            let owner = live.map(|e| wire::decode_owner(&e.value));
            if let (Some(Ok(owner)), Some(previous)) = (&owner, &before_unknown) {
                if owner.owner == me {
                    // The write that was not answered landed.
                    let revision = live.map_or(0, |e| e.revision);
                    return self.won(ask, revision, previous.clone(), deadline).await;
                }
            }
            // The last write's revision, a removal's too: the claim writes after it.
            let last = entry.as_ref().map(|e| e.revision);
            let previous = match owner {
                Some(Ok(owner)) => Some(owner),
                Some(Err(e)) => {
                    log::warn!("Warning: cluster: the owner of {} in the bucket is not a node's ({e}); taken over.", ask.client_id);
                    None
                }
                None => None,
            };
            match write(store, &key, &value, last).await {
                Written::Landed(revision) => {
                    return self.won(ask, revision, previous, deadline).await;
                }
                Written::Lost => {
                    // What was held for this claim was for an earlier owner's.
                    self.hand_held(&ask.client_id, ask.shard, |_| true).await;
                }
                Written::Unknown => {
                    before_unknown = Some(previous);
                    self.hand_held(&ask.client_id, ask.shard, |_| true).await;
                    tokio::time::sleep(RETRY_AFTER).await;
                }
            }
        }
    }

    /// The claim won `revision`, taking the key from `previous`: requests naming a later
    /// revision are held from now, others go on; then the session is fetched.
    async fn won(
        &self,
        ask: &ClaimAsk,
        revision: u64,
        previous: Option<OwnerValue>,
        deadline: tokio::time::Instant,
    ) -> Claimed {
        self.with_claim(&ask.client_id, |c| c.won = Some(revision));
        self.hand_held(&ask.client_id, ask.shard, |r| r <= revision)
            .await;
        let cluster = &self.cluster;
        cluster
            .stats
            .sessions_claimed
            .fetch_add(1, Ordering::Relaxed);
        match previous {
            // Held elsewhere: fetched.
            Some(from) if from.owner.node != cluster.node_id => {
                let (mut claimed, gone_at) =
                    fetch(cluster, &self.client, &from, ask, revision, deadline).await;
                if let (Claimed::Owned { replay, .. }, Some(position)) = (&mut claimed, gone_at) {
                    *replay = self.replay_for(&from.owner, position);
                }
                claimed
            }
            // Held by an earlier run of this node: its record, unless the node's own
            // journal brought the session back (the shard prefers that one).
            Some(OwnerValue {
                owner,
                record: Some(record),
            }) if owner.incarnation != cluster.incarnation => Claimed::Owned {
                revision,
                session: Some(record),
                from_record: true,
                replay: None,
            },
            // Nobody held it, or this node did (perhaps before it restarted): its own
            // shards decide, as on a single broker.
            _ => Claimed::Owned {
                revision,
                session: None,
                from_record: false,
                replay: None,
            },
        }
    }

    /// A replay of what `owner`'s run (gone, as far as `position` in the messages'
    /// stream) missed, for the session a claim goes on with from its record: the one
    /// gathering that run's sessions, or a new one, run once the shards have them.
    fn replay_for(&self, owner: &Owner, position: u64) -> Option<Join> {
        let key = (owner.node.clone(), owner.incarnation);
        let mut gathering = self.replays.lock().expect("replays lock");
        if let Some(join) = gathering.get(&key) {
            return Some(join.clone());
        }
        let replay = Replay::new(&self.cluster)?;
        let join = replay.join();
        gathering.insert(key.clone(), join.clone());
        drop(gathering);
        let (cluster, mailboxes) = (self.cluster.clone(), self.mailboxes.clone());
        let js = async_nats::jetstream::new(self.client.clone());
        let replays = self.replays.clone();
        let what = format!("node {}", owner.node);
        tokio::spawn(async move {
            tokio::time::sleep(GATHER).await;
            replays.lock().expect("replays lock").remove(&key);
            replay.run(&cluster, &js, &mailboxes, position, &what).await
        });
        Some(join)
    }

    fn with_claim(&self, client_id: &str, change: impl FnOnce(&mut Claiming)) {
        let mut state = self.claims.lock().expect("claims lock");
        if let Some(claiming) = state.under_way.get_mut(client_id) {
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
    /// behind it; waits until the shard took it (so that its registry names the
    /// connection), then gives the next claim of the client here, if one waits.
    async fn deliver(&self, ask: ClaimAsk, claimed: Claimed) -> Option<ClaimAsk> {
        let (client_id, shard, token) = (ask.client_id.clone(), ask.shard, ask.token);
        let msg = ShardMsg::ClusterClaimed {
            conn: ask.conn,
            token,
            client_id: client_id.clone(),
            claimed,
        };
        let taken = self.claims.lock().expect("claims lock").taken.clone();
        if send_patiently(&self.cluster, &self.mailboxes, shard, msg).await {
            // Once the answer is in the mailbox (nothing runs on this thread in between):
            // requests go behind it from now.
            self.with_claim(&client_id, |c| c.answered_to = Some(shard));
            self.hand_held(&client_id, shard, |_| true).await;
            let until = tokio::time::Instant::now() + ANSWER_WAIT_MAX;
            loop {
                // Registered before the flag is looked at: a notice in between is not lost.
                let notified = taken.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let mut done = false;
                self.with_claim(&client_id, |c| done = c.taken);
                if done || tokio::time::timeout_at(until, notified).await.is_err() {
                    break;
                }
            }
        }
        self.hand_held(&client_id, shard, |_| true).await;
        let mut state = self.claims.lock().expect("claims lock");
        let claiming = state.under_way.get_mut(&client_id)?;
        match claiming.queued.take() {
            Some(next) => {
                // The next claim starts afresh; what is held waits for it.
                let held = std::mem::take(&mut claiming.held);
                *claiming = Claiming::new(next.token);
                claiming.held = held;
                Some(next)
            }
            None => {
                state.under_way.remove(&client_id);
                None
            }
        }
    }
}

/// Writes `value` to `key` if its last write is still revision `last` (or there is none).
async fn write(store: &kv::Store, key: &str, value: &Bytes, last: Option<u64>) -> Written {
    let (lost, why) = match last {
        Some(last) => {
            match tokio::time::timeout(STEP_WAIT, store.update(key, value.clone(), last)).await {
                Ok(Ok(revision)) => return Written::Landed(revision),
                Ok(Err(e)) => (
                    e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                    e.to_string(),
                ),
                Err(_) => (false, "no answer".into()),
            }
        }
        None => match tokio::time::timeout(STEP_WAIT, store.create(key, value.clone())).await {
            Ok(Ok(revision)) => return Written::Landed(revision),
            Ok(Err(e)) => (
                e.kind() == kv::CreateErrorKind::AlreadyExists,
                e.to_string(),
            ),
            Err(_) => (false, "no answer".into()),
        },
    };
    log::debug!("Cluster: writing the owner of {key}: {why}");
    match lost {
        true => Written::Lost,
        false => Written::Unknown,
    }
}

/// Asks the owner in `value` for the session of `ask`'s client, until `deadline`; if it
/// cannot answer, the session is the one its record describes, and if the owner is gone,
/// how far it had received the messages' stream.
async fn fetch(
    cluster: &Cluster,
    client: &async_nats::Client,
    value: &OwnerValue,
    ask: &ClaimAsk,
    revision: u64,
    deadline: tokio::time::Instant,
) -> (Claimed, Option<u64>) {
    let from = &value.owner;
    let subject = take_subject(cluster, &from.node);
    let stats = &cluster.stats;
    let owned = |session| Claimed::Owned {
        revision,
        session,
        from_record: false,
        replay: None,
    };
    let from_record = |why: &str| match &value.record {
        Some(record) => {
            stats.sessions_adopted.fetch_add(1, Ordering::Relaxed);
            log::warn!("Warning: cluster: the session of {} could not be fetched: {why}; it goes on from its record.", ask.client_id);
            Claimed::Owned {
                revision,
                session: Some(record.clone()),
                from_record: true,
                replay: None,
            }
        }
        None => owned(lost(cluster, ask, why)),
    };
    // Asked until there is time left to watch its heartbeat, if its session has a record
    // to go on from: a node that is gone but still seen by NATS (its host died; NATS finds
    // out at its next ping) answers nothing, and its session is not lost for that.
    let asked_until = match &value.record {
        Some(_) => deadline
            .checked_sub(HEARTBEAT_WATCH + WATCH_MARGIN)
            .filter(|until| *until > tokio::time::Instant::now() + WATCH_MARGIN)
            .unwrap_or(deadline),
        None => deadline,
    };
    loop {
        // Up to then: a node that waits for a claim of its own first answers late. The
        // asked node is told how long this one waits.
        let wait = asked_until.saturating_duration_since(tokio::time::Instant::now());
        let request = wire::encode_request(&TakeRequest {
            client_id: ask.client_id.to_string(),
            clean_start: ask.clean_start,
            revision,
            wait_ms: wait.as_millis() as u64,
            incarnation: from.incarnation,
        });
        let asked = client.request(subject.clone(), request);
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
                return (owned(Some(bytes)), None);
            }
            Ok(TakeAnswer::Nothing) => return (owned(None), None),
            Ok(TakeAnswer::NotThisRun) => {
                let why = format!("node {} restarted since", from.node);
                return (from_record(&why), None);
            }
            Ok(TakeAnswer::Superseded) => return (Claimed::Superseded, None),
            Ok(TakeAnswer::Retry) if tokio::time::Instant::now() + RETRY_AFTER < asked_until => {
                tokio::time::sleep(RETRY_AFTER).await;
            }
            Ok(TakeAnswer::Retry) => {
                let why = format!("node {} could not hand it over in time", from.node);
                return (owned(lost(cluster, ask, &why)), None);
            }
            // Gone (or cut off from NATS and JetStream alike, its connections with it):
            // the session is its record. Only slow: the client starts anew, as the session
            // is still there.
            Err(e) if value.record.is_some() => {
                return match owner_gone(cluster, from, deadline).await {
                    Some(position) => (from_record(&e), Some(position).filter(|&p| p > 0)),
                    None => (owned(lost(cluster, ask, &e)), None),
                };
            }
            Err(e) => return (owned(lost(cluster, ask, &e)), None),
        }
    }
}

/// How long a claim watches the heartbeat of an owner that does not answer, and what it
/// keeps beside for the steps around.
const HEARTBEAT_WATCH: std::time::Duration = std::time::Duration::from_millis(2500);
const WATCH_MARGIN: std::time::Duration = std::time::Duration::from_millis(100);

/// Whether the node `owner` names is gone: another node took it for gone, a later run of it
/// replaced it, or its heartbeat does not move for `HEARTBEAT_WATCH` (within `deadline`;
/// it beats every second). If so, how far it had received the messages' stream (0: not
/// known).
async fn owner_gone(
    cluster: &Cluster,
    owner: &Owner,
    deadline: tokio::time::Instant,
) -> Option<u64> {
    let nodes = cluster.nodes_bucket.get()?;
    let key = super::node_token(&owner.node);
    let read = || async {
        let entry = in_time(nodes.entry(key.as_str())).await.ok()??;
        let value = super::nodes::node_in(&entry)?;
        let gone = value.taken_by.is_some() || value.incarnation != owner.incarnation;
        Some((gone, entry.revision))
    };
    let position = || super::nodes::position_of(nodes, &owner.node, owner.incarnation);
    let (gone, revision) = read().await?;
    if gone {
        return Some(position().await);
    }
    let until = tokio::time::Instant::now() + HEARTBEAT_WATCH;
    if until > deadline {
        return None;
    }
    tokio::time::sleep_until(until).await;
    let (gone, now) = read().await?;
    match gone || now == revision {
        true => Some(position().await),
        false => None,
    }
}

/// Said and counted: the session another node held is not taken (it stays there, offline,
/// until it expires; the client starts anew here).
fn lost(cluster: &Cluster, ask: &ClaimAsk, why: &str) -> Option<Bytes> {
    if let Some(seen) = crate::cluster::count_to_say(&cluster.stats.sessions_not_fetched) {
        log::warn!("Warning: cluster: the session of {} could not be fetched: {why}; it starts anew here ({seen} so far).", ask.client_id);
    }
    None
}
