//! Sessions taken over from a node that is gone while what it missed is read again from
//! the cluster's messages' stream (`cluster/replay.rs`). What comes for them otherwise
//! meanwhile waits here; at the end of the replay, what the replay delivered already is
//! dropped and the rest delivered after it: each message reaches them once, in order. For a
//! while after, what comes late (a copy still on its way when the replay ended) is checked
//! the same way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hashbrown::{HashMap, HashSet};

use super::io::Backend;
use super::route::Scope;
use super::Shard;
use crate::cluster::replay::{Ended, Held, Join};
use crate::router::{Message, ShardMsg, Target};
use crate::topic::SessionId;

/// What may wait for one session, and on one shard in all (each about 100 bytes beside the
/// message, which its other deliveries share): past either, what comes is delivered as it
/// comes (its order with the replay's is then not kept), counted.
const HELD_MAX: usize = 10_000;
const HELD_ON_SHARD_MAX: usize = 1_000_000;

/// How long sessions wait for a replay that does not say it is done (its task gone, its
/// message lost): past every limit of the replay itself (`cluster/replay.rs`).
const REPLAY_WAIT_MAX: Duration = Duration::from_secs(180);

/// How long after a replay ended what comes late for its sessions is checked against it.
const LATE_WINDOW: Duration = Duration::from_secs(30);

/// The sessions of this shard being replayed for, and those whose replay ended lately.
#[derive(Default)]
pub(super) struct Replaying {
    held: HashMap<SessionId, Held>,
    ended: HashMap<u64, (Arc<Ended>, Instant)>,
    lately: HashMap<SessionId, u64>,
    /// Messages held for all sessions here.
    count: usize,
}

impl Replaying {
    pub(super) fn is_empty(&self) -> bool {
        self.held.is_empty() && self.lately.is_empty()
    }
}

/// What becomes of a message for a session being (or lately) replayed for.
pub(super) enum Replayed {
    Deliver,
    Held,
    /// The replay delivered it already.
    Drop,
}

impl<B: Backend> Shard<B> {
    /// `session`, revived here, is replayed for by `replay`: what comes for it otherwise
    /// waits until that is done. Marked before its subscriptions are in the trie (and so
    /// the cluster's interest): nothing comes for it unheld.
    pub(super) fn replayed_by(&mut self, session: SessionId, replay: &Join) {
        let held = Held {
            replay: replay.id(),
            since: self.clock.now,
            messages: Vec::new(),
        };
        self.replaying.held.insert(session, held);
        self.apply_trie_ops();
        replay.add(session);
    }

    /// Session `id` moves to shard `to`: what waits for its replay goes there first.
    pub(super) fn replay_moves(&mut self, id: SessionId, to: usize) {
        let Some(held) = self.replaying.held.remove(&id) else {
            return;
        };
        self.replaying.count -= held.messages.len();
        let msg = ShardMsg::ReplayMoved {
            session: id,
            held: Box::new(held),
        };
        (self.crossing.outbox).send_after_all(&self.shared.mailboxes, to, msg);
    }

    /// A session on its way here from another shard is being replayed for (or was: its
    /// replay ended here first).
    pub(super) fn on_replay_moved(&mut self, session: SessionId, held: Held) {
        let ended = self
            .replaying
            .ended
            .get(&held.replay)
            .map(|(e, _)| e.clone());
        self.replaying.count += held.messages.len();
        self.replaying.held.insert(session, held);
        if let Some(ended) = ended {
            self.replayed_for(session, Some(&ended));
        }
    }

    /// What becomes of `message` for `target`: held while its replay goes on (but what
    /// the replay brings, and what comes for a share group alone, which the replay does
    /// not take: no order to keep), dropped just after if the replay brought it.
    pub(super) fn replay_holds(&mut self, message: &Arc<Message>, target: &Target) -> Replayed {
        if message.stream.replayed || target.shared {
            return Replayed::Deliver;
        }
        if let Some(held) = self.replaying.held.get_mut(&target.session) {
            if held.messages.len() >= HELD_MAX || self.replaying.count >= HELD_ON_SHARD_MAX {
                if let Some(cluster) = self.shared.cluster.get() {
                    let unheld = &cluster.stats.replay_unheld;
                    unheld.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                return Replayed::Deliver;
            }
            held.messages.push((message.clone(), target.clone()));
            self.replaying.count += 1;
            return Replayed::Held;
        }
        let replay = self.replaying.lately.get(&target.session);
        let ended = replay.and_then(|r| self.replaying.ended.get(r));
        match ended {
            Some((ended, _)) if ended.delivered(message) => {
                self.count_replay_duplicates(1);
                Replayed::Drop
            }
            _ => Replayed::Deliver,
        }
    }

    /// A message read again from the stream: to those of `sessions` it matches, alone.
    pub(super) fn on_replayed(&mut self, mut message: Message, sessions: &HashSet<SessionId>) {
        message.order = self.publish_order();
        self.route_here(&Arc::new(message), None, Scope::Sessions(sessions));
    }

    /// `replay` is done (`ended`): its sessions here go on. The shard that routed it passes
    /// this on to the others, behind what it routed to them.
    pub(super) fn on_replay_done(&mut self, replay: u64, ended: Arc<Ended>, from_router: bool) {
        if from_router {
            for shard in (0..self.shared.mailboxes.shards()).filter(|&s| s != self.id) {
                let msg = ShardMsg::ReplayDone {
                    replay,
                    ended: ended.clone(),
                    from_router: false,
                };
                let mailboxes = &self.shared.mailboxes;
                self.crossing.outbox.send_after_all(mailboxes, shard, msg);
            }
        }
        let now = self.clock.now;
        (self.replaying.ended).insert(replay, (ended.clone(), now));
        let done: Vec<SessionId> = (self.replaying.held.iter())
            .filter(|(_, held)| held.replay == replay)
            .map(|(&session, _)| session)
            .collect();
        for session in done {
            self.replayed_for(session, Some(&ended));
        }
    }

    /// At a tick: sessions whose replay never said it was done go on; replays ended long
    /// enough ago are forgotten.
    pub(super) fn end_overdue_replays(&mut self, now: Instant) {
        if self.replaying.is_empty() && self.replaying.ended.is_empty() {
            return;
        }
        let overdue: Vec<SessionId> = (self.replaying.held.iter())
            .filter(|(_, held)| now.duration_since(held.since) >= REPLAY_WAIT_MAX)
            .map(|(&session, _)| session)
            .collect();
        for session in overdue {
            log::warn!("Warning: cluster: a session taken over from a node that is gone waited {} s for what that node missed; it goes on without the rest.", REPLAY_WAIT_MAX.as_secs());
            self.replayed_for(session, None);
        }
        let replaying = &mut self.replaying;
        (replaying.ended).retain(|_, (_, at)| now.duration_since(*at) < LATE_WINDOW);
        let ended = &replaying.ended;
        replaying
            .lately
            .retain(|_, replay| ended.contains_key(replay));
    }

    /// The replay for `session` is done (`None`: given up on): what waited goes, but what
    /// the replay delivered already.
    pub(super) fn replayed_for(&mut self, session: SessionId, ended: Option<&Ended>) {
        let Some(held) = self.replaying.held.remove(&session) else {
            return;
        };
        self.replaying.count -= held.messages.len();
        if ended.is_some() {
            self.replaying.lately.insert(session, held.replay);
        }
        let mut duplicates = 0;
        for (message, target) in held.messages {
            if ended.is_some_and(|ended| ended.delivered(&message)) {
                duplicates += 1;
                continue;
            }
            self.deliver_here(&message, std::slice::from_ref(&target), true);
        }
        self.count_replay_duplicates(duplicates);
    }

    fn count_replay_duplicates(&self, n: u64) {
        if let (Some(cluster), true) = (self.shared.cluster.get(), n > 0) {
            let stats = &cluster.stats;
            (stats.replay_duplicates).fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
    }
}
