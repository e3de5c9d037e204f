//! Routing a message: match it once on the published subscription trie, group the
//! targets by the shard that holds their sessions, deliver this shard's (`deliver.rs`) and
//! pass one message to each other shard (`crossing/`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::encode::Variants;
use super::io::{Backend, ConnId};
use super::Shard;
use crate::codec::QoS;
use crate::limits::KEPT_CAPACITY;
use crate::router::{Message, Sent, ShardMsg, Target};
use crate::topic::{Match, Members, SessionId, Subscription};

impl<B: Backend> Shard<B> {
    /// Routes a message published on this node: to every matching subscription here
    /// (`route_here`), and to the other nodes of a cluster, with the share groups served
    /// here (this node's members go first; the other nodes serve only the groups it has
    /// none of). Returns whether any subscription matched (5.0's 0x10 No matching
    /// subscribers): in a cluster, any other node's may; and, if the message goes through
    /// the cluster's stream, the number its acknowledgement waits for (`cluster_acks.rs`).
    pub(super) fn route(
        &mut self,
        message: &Arc<Message>,
        from: Option<ConnId>,
    ) -> (bool, Option<u64>) {
        let Some(cluster) = self.shared.cluster.get().cloned() else {
            return (self.route_here(message, from, Scope::Here), None);
        };
        self.routing.served = Some(Vec::new());
        self.route_here(message, from, Scope::Here);
        let served = self.routing.served.take().unwrap_or_default();
        (true, cluster.forward(self.id, message, served))
    }

    /// A message from another node of the cluster: routed here as one of this node's, in
    /// the order it came, never sent on to NATS. `group`: it came for that share group
    /// alone (a NATS queue group); otherwise for this node's other subscriptions alone.
    pub(super) fn route_from_cluster(
        &mut self,
        mut message: crate::router::Message,
        group: Option<Arc<str>>,
    ) {
        message.order = self.publish_order();
        let scope = match &group {
            Some(key) => Scope::Group(key),
            None => Scope::NotShared,
        };
        let matched = self.route_here(&Arc::new(message), None, scope);
        if let (Some(_), false, Some(cluster)) = (&group, matched, self.shared.cluster.get()) {
            cluster.stats.group_gone.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Routes `message` to every matching subscription on this node: match once on the
    /// published trie, group the targets by owning shard, deliver this shard's directly
    /// and send one message to each other shard. `from` is the publishing connection
    /// (paused if its messages wait). Returns whether any subscription matched.
    pub(super) fn route_here(
        &mut self,
        message: &Arc<Message>,
        from: Option<ConnId>,
        scope: Scope,
    ) -> bool {
        // Subscriptions read earlier in this turn take effect first: packets act in the
        // order the shard reads them, whoever sent them.
        self.apply_trie_ops();
        // Read before the trie: an ended session leaves this set only once a trie without
        // its subscriptions is published, so a snapshot that has them is read with a set
        // that has it.
        let leaving = (self.shared.leaving_count.load(Ordering::SeqCst) > 0)
            .then(|| self.shared.leaving_groups.load());
        let snapshot = self.shared.trie.load();
        let mut targets = std::mem::take(&mut self.routing.targets);
        let shards = targets.len();
        let (here, sessions, inflight_max) = (self.id, &self.sessions, self.config.inflight_max);
        let ended_here = &self.subs.trie.leaving_groups;
        let upgrade = self.config.upgrade_outgoing_qos;
        // A group member this shard knows cannot take a message now: offline, or its window
        // full. Members on other shards are taken as able (their state is theirs), unless
        // their session ended and its subscriptions are still leaving the trie (`leaving`).
        let cannot_accept = |session: &SessionId, sub: &Subscription| {
            usize::from(sub.shard) == here
                && sessions.get(session).is_none_or(|s| {
                    s.conn.is_none() || s.outgoing().window_full(s.window(inflight_max))
                })
        };
        // Mosquitto's "no matching subscribers" counts a subscription even when No Local
        // keeps the message from it.
        let mut matched = false;
        let served = &mut self.routing.served;
        snapshot.for_each_match(&message.topic, &mut |m| {
            let (session, sub, shared) = match m {
                Match::Subscriber(..) | Match::Group { .. } if !scope.takes(&m) => return,
                Match::Subscriber(session, sub) => {
                    matched = true;
                    // [MQTT-3.8.3-3] No Local: not back to the publisher.
                    if sub.options.no_local && Some(session) == message.origin {
                        return;
                    }
                    (session, sub, false)
                }
                Match::Group {
                    members,
                    turn,
                    key_hash,
                    ..
                } => {
                    let gone = |session: &SessionId| {
                        leaving.as_ref().is_some_and(|l| l.contains(session))
                            || ended_here.contains(session)
                    };
                    // A group whose members are all gone is no match.
                    let Some((session, sub, able)) =
                        pick_member(members, turn, gone, cannot_accept)
                    else {
                        return;
                    };
                    // In a cluster, a QoS 0 message no member here can take now is left to
                    // the group's members on other nodes (here it would be dropped); QoS
                    // 1/2 waits for the member picked here, as on one node.
                    if let (false, Some(_), QoS::AtMostOnce) = (able, &served, message.qos) {
                        return;
                    }
                    matched = true;
                    if let Some(served) = served.as_mut() {
                        served.push(key_hash);
                    }
                    (session, sub, true)
                }
            };
            let shard = usize::from(sub.shard).min(shards - 1);
            targets[shard].push(target_for(message, session, sub, upgrade, shared));
        });
        drop(snapshot);
        self.dispatch(message, &mut targets, from);
        self.routing.targets = targets;
        matched
    }

    /// Each shard's targets of `message`: this shard's delivered, the others' passed.
    fn dispatch(
        &mut self,
        message: &Arc<Message>,
        targets: &mut [Vec<Target>],
        from: Option<ConnId>,
    ) {
        for (shard, list) in targets.iter_mut().enumerate() {
            if list.is_empty() {
                continue;
            }
            merge_overlapping(list);
            if shard == self.id {
                // Borrowed and cleared, not taken: the list keeps its allocation for the
                // next message (it was one allocation per message routed), up to a size
                // that a large fan-out does not leave behind.
                self.deliver_here(message, list, false);
                list.clear();
                list.shrink_to(KEPT_CAPACITY);
                continue;
            }
            let targets = std::mem::take(list);
            self.pass_to_shard(shard, message, targets, false, from);
        }
    }

    /// Passes `message` to `shard` for its sessions `targets` (`forwarded`: they moved
    /// there from here). With persistence it is numbered and journaled (`crossing/transit.rs`).
    pub(super) fn pass_to_shard(
        &mut self,
        shard: usize,
        message: &Arc<Message>,
        targets: Vec<Target>,
        forwarded: bool,
        from: Option<ConnId>,
    ) {
        let receipt = self.transit_number(shard, message.qos);
        let journaled = receipt.map(|r| (r.number, targets.clone()));
        let msg = ShardMsg::Deliver {
            message: message.clone(),
            targets,
            forwarded,
            receipt,
        };
        let kept = self.send_to_shard(shard, msg, message.qos, from);
        if let (true, Some((number, targets))) = (kept, journaled) {
            self.journal_forward(shard, number, message, &targets);
        }
    }

    /// Passes a message to another shard, behind what already waits for it. QoS 0 that
    /// cannot go at once is dropped (counted); QoS 1/2 waits in the outbox, and its
    /// publisher is paused until the outbox is empty. False if it was dropped.
    fn send_to_shard(
        &mut self,
        shard: usize,
        msg: ShardMsg,
        qos: QoS,
        from: Option<ConnId>,
    ) -> bool {
        if qos == QoS::AtMostOnce {
            let sent = self
                .crossing
                .outbox
                .send_or_drop(&self.shared.mailboxes, shard, msg);
            if !sent {
                self.stats()
                    .dropped_mailbox_full
                    .fetch_add(1, Ordering::Relaxed);
            }
            return sent;
        }
        match self
            .crossing
            .outbox
            .send(&self.shared.mailboxes, shard, msg, false)
        {
            Sent::Delivered => {}
            Sent::Dropped => {
                self.stats()
                    .dropped_overflow_full
                    .fetch_add(1, Ordering::Relaxed);
                return false;
            }
            Sent::Held => {
                if let Some(conn) = from {
                    if self.hold_reading(conn, super::conn::Hold::OUTBOX) {
                        self.crossing.paused.push(conn);
                    }
                }
            }
        }
        true
    }
}

/// Which of a node's subscriptions a message is routed to.
#[derive(Clone, Copy)]
pub(super) enum Scope<'k> {
    /// Published on this node: every one.
    Here,
    /// From another node, through its subscriptions' NATS subjects: all but share groups.
    NotShared,
    /// From another node, for one share group (`$share/{group}/{filter}`) alone.
    Group(&'k str),
    /// Read again from the cluster's stream for these sessions alone, not share groups
    /// (`cluster_replay.rs`).
    Sessions(&'k hashbrown::HashSet<SessionId>),
}

impl Scope<'_> {
    fn takes(&self, m: &Match<'_>) -> bool {
        match (self, m) {
            (Scope::Here, _) => true,
            (Scope::NotShared, Match::Subscriber(..)) => true,
            (Scope::Group(wanted), Match::Group { key, .. }) => &***key == *wanted,
            (Scope::Sessions(sessions), Match::Subscriber(session, _)) => {
                sessions.contains(session)
            }
            _ => false,
        }
    }
}

/// What routing a message reuses from one message to the next.
pub(super) struct Routing {
    /// Per target shard, the targets of the message being routed.
    pub(super) targets: Vec<Vec<Target>>,
    /// In a cluster, while a message published here is routed: the share groups it went
    /// to here.
    pub(super) served: Option<Vec<u64>>,
    /// The encodings of the message being delivered (`encode.rs`).
    pub(super) variants: Variants,
}

impl Routing {
    pub(super) fn new(shards: usize) -> Routing {
        Routing {
            targets: vec![Vec::new(); shards],
            served: None,
            variants: Variants::default(),
        }
    }
}

/// Several subscriptions of one session matching one topic: deliver once, at the highest
/// QoS, with every subscription identifier (MQTT 5.0 §4.7.3 allows this; Mosquitto sends
/// one copy per subscription, midge sends one).
fn merge_overlapping(targets: &mut Vec<Target>) {
    if targets.len() < 2 {
        return;
    }
    targets.sort_unstable_by_key(|t| t.session);
    let mut out: Vec<Target> = Vec::with_capacity(targets.len());
    for t in targets.drain(..) {
        match out.last_mut() {
            Some(last) if last.session == t.session => {
                last.qos = last.qos.max(t.qos);
                last.retain |= t.retain;
                last.identifiers.extend(t.identifiers);
                last.shared &= t.shared;
            }
            _ => out.push(t),
        }
    }
    *targets = out;
}

/// One member of a share group, taken in turn in the order they subscribed (as Mosquitto
/// rotates its list), passing over members that are `gone` or `cannot_accept`; if none
/// can, the first in turn that is not gone (its session queues the message), said by the
/// last `false`.
fn pick_member<'m>(
    members: &'m Members,
    turn: &AtomicUsize,
    gone: impl Fn(&SessionId) -> bool,
    cannot_accept: impl Fn(&SessionId, &Subscription) -> bool,
) -> Option<(SessionId, &'m Subscription, bool)> {
    let n = members.len();
    if n == 0 {
        return None;
    }
    let start = turn.fetch_add(1, Ordering::Relaxed) % n;
    let in_turn = || members.iter().skip(start).chain(members.iter().take(start));
    let able = in_turn().find(|(session, sub)| !gone(session) && !cannot_accept(session, sub));
    if let Some((session, sub)) = able {
        return Some((*session, sub, true));
    }
    let waiting = in_turn().find(|(session, _)| !gone(session));
    waiting.map(|(session, sub)| (*session, sub, false))
}

/// What one matching subscription is sent of `message`.
fn target_for(
    message: &Message,
    session: SessionId,
    sub: &Subscription,
    upgrade: bool,
    shared: bool,
) -> Target {
    Target {
        session,
        // 3.1.1 and 5.0 §3.8.4: the lower of the published and the granted QoS
        // (upgrade_outgoing_qos: the granted QoS, as Mosquitto's option asks).
        qos: if upgrade {
            sub.options.qos
        } else {
            message.qos.min(sub.options.qos)
        },
        // [MQTT-3.3.1-9] (3.1.1) / Retain As Published (5.0 [MQTT-3.3.1-12]).
        retain: message.retain && sub.options.retain_as_published,
        identifiers: sub.identifier.map(|n| n.get()).into_iter().collect(),
        shared,
    }
}
