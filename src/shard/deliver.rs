//! Delivering: routing a message (match once, group targets by shard, one message per target
//! shard), putting it into sessions (encoded once per variant: `encode.rs`), and the
//! outbound QoS 1/2 window and queue.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::aliases::Alias;
use super::io::{Backend, ConnId};
use super::Shard;
use crate::codec::{MqttStr, Packet, ProtocolVersion, PubResponse, QoS};
use crate::config::Config;
use crate::limits::SLOW_BACKLOG_BYTES;
use crate::router::{Message, Sent, ShardMsg, Target};
use crate::session::{capped, Backlog, Decision, DropReason, Limits, Rules};
use crate::topic::{Match, SessionId};

use super::encode::{build_publish, encode_publish, mount_strip, VariantKey, Variants};

impl<B: Backend> Shard<B> {
    /// Moves queued messages into the inflight window while there is room.
    pub(super) fn fill_window(&mut self, session_id: SessionId) {
        let inflight_max = self.config.inflight_max;
        loop {
            let Some(session) = self.sessions.get_mut(&session_id) else {
                return;
            };
            if session.conn.is_none() {
                return;
            }
            let Some(conn) = session.conn else { return };
            let next_size = session
                .outgoing()
                .queued()
                .next()
                .map(|q| q.message.payload.len());
            if next_size.is_some_and(|size| !self.can_write(conn, size)) {
                // Sent once its client has read what waits for it (`holding.rs`).
                self.holding.waiting.insert(session_id);
                return;
            }
            let Some((session, changes)) = self.sessions.recording(&session_id) else {
                return;
            };
            let window = session.window(inflight_max);
            let Some(queued) = session.next_queued(window, changes) else {
                return;
            };
            // acl_file: checked again as the message leaves the queue, so that an ACL
            // reloaded meanwhile decides what a returning client still gets (Mosquitto).
            if !self.may_read(session_id, &queued.message.topic) {
                self.stats().dropped(DropReason::Acl, 1);
                continue;
            }
            self.send_to_session(
                session_id,
                &queued.message,
                &queued.target,
                &mut Variants::default(),
                Some(queued.packet_id),
            );
        }
    }

    /// After a persistent session resumes: resend unacknowledged messages with DUP, in
    /// order [MQTT-4.4.0-1], then fill the window from the queue.
    pub(super) fn resume_outgoing(&mut self, session_id: SessionId) {
        let Some(session) = self.sessions.get(&session_id) else {
            return;
        };
        let Some(conn) = session.conn else { return };
        let v5 = session.version == ProtocolVersion::V5;
        let mount = self
            .config
            .listener(session.listener())
            .mount_point
            .as_deref();
        let in_flight = session.outgoing().in_flight();
        let now = self.clock.now;
        let link = self.link_of_session(session_id);
        let mut packets = Vec::with_capacity(in_flight.len());
        for f in in_flight {
            if f.released {
                // [MQTT-4.4.0-1] (3.1.1): after PUBREC, the PUBREL is what gets resent.
                packets.push((f.packet_id, Packet::PubRel(PubResponse::new(f.packet_id))));
            } else {
                let strip = mount_strip(mount, &f.message.topic).unwrap_or(0);
                let mut publish =
                    build_publish(&f.message, f.qos, f.retain, &f.identifiers, v5, strip, now);
                publish.dup = true;
                publish.packet_id = f.packet_id;
                if let Some(i) = link {
                    super::bridges::outgoing(&mut self.links[i], now, &mut publish);
                }
                packets.push((f.packet_id, Packet::Publish(publish)));
            }
        }
        for (packet_id, packet) in &packets {
            if !self.send_packet(conn, packet) {
                // It no longer encodes for this client (it came back with another protocol
                // version): dropped and counted rather than holding its slot for ever.
                self.stats().dropped(DropReason::TooLarge, 1);
                if let Some((session, changes)) = self.sessions.recording(&session_id) {
                    session.abandon(*packet_id, changes);
                }
            }
        }
        self.fill_window(session_id);
    }

    /// Routes `message` to every matching subscription: match once on the published trie,
    /// group the targets by owning shard, deliver this shard's directly and send one message
    /// to each other shard. `from` is the publishing connection (paused if its messages wait).
    /// Returns whether any subscription matched (5.0's 0x10 No matching subscribers).
    pub(super) fn route(&mut self, message: &Arc<Message>, from: Option<ConnId>) -> bool {
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
        let ended_here = &self.trie.leaving_groups;
        let upgrade = self.config.upgrade_outgoing_qos;
        // A group member this shard knows cannot take a message now: offline, or its window
        // full. Members on other shards are taken as able (their state is theirs), unless
        // their session ended and its subscriptions are still leaving the trie (`leaving`).
        let cannot_accept = |session: &SessionId, sub: &crate::topic::Subscription| {
            usize::from(sub.shard) == here
                && sessions.get(session).is_none_or(|s| {
                    s.conn.is_none() || s.outgoing().window_full(s.window(inflight_max))
                })
        };
        // Mosquitto's "no matching subscribers" counts a subscription even when No Local
        // keeps the message from it.
        let mut matched = false;
        snapshot.for_each_match(&message.topic, &mut |m| {
            let (session, sub) = match m {
                Match::Subscriber(session, sub) => {
                    matched = true;
                    // [MQTT-3.8.3-3] No Local: not back to the publisher.
                    if sub.options.no_local && Some(session) == message.origin {
                        return;
                    }
                    (session, sub)
                }
                Match::Group { members, turn, .. } => {
                    // One member per group, taken in turn in the order they subscribed (as
                    // Mosquitto rotates its list), passing over members that cannot accept;
                    // if none can, the first in turn whose session lives queues it.
                    let n = members.len();
                    if n == 0 {
                        return;
                    }
                    let start = turn.fetch_add(1, Ordering::Relaxed) % n;
                    let gone = |session: &SessionId| {
                        leaving.as_ref().is_some_and(|l| l.contains(session))
                            || ended_here.contains(session)
                    };
                    let in_turn = || members.iter().skip(start).chain(members.iter().take(start));
                    let pick = in_turn()
                        .find(|(session, sub)| !gone(session) && !cannot_accept(session, sub))
                        .or_else(|| in_turn().find(|(session, _)| !gone(session)));
                    // A group whose members are all gone is no match.
                    let Some((session, sub)) = pick else { return };
                    matched = true;
                    (*session, sub)
                }
            };
            let shard = usize::from(sub.shard).min(shards - 1);
            targets[shard].push(Target {
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
            });
        });
        drop(snapshot);
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
        self.routing.targets = targets;
        matched
    }

    /// Passes `message` to `shard` for its sessions `targets` (`forwarded`: they moved
    /// there from here). With persistence it is numbered and journaled (`crossing/transit.rs`).
    fn pass_to_shard(
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

    /// Delivers to sessions owned here (or forwards those that moved away). What comes
    /// straight here (not `forwarded`) for a session still settling waits for the old
    /// route to drain (`handover/settling.rs`).
    pub(super) fn deliver_here(
        &mut self,
        message: &Arc<Message>,
        targets: &[Target],
        forwarded: bool,
    ) {
        let mut variants = std::mem::take(&mut self.routing.variants);
        let mut moved: Vec<(usize, Target)> = Vec::new();
        for target in targets {
            if self.sessions.contains_key(&target.session) {
                // (`settling` is almost always empty: no lookup on the usual path.)
                if forwarded || !self.handover.moves.any_settling() || !self.hold(message, target) {
                    self.deliver_to_session(message, target, &mut variants);
                }
            } else if let Some(to) = self.handover.moves.moved_to(target.session) {
                moved.push((to, target.clone()));
            }
        }
        variants.clear();
        self.routing.variants = variants;
        for (shard, target) in moved {
            self.pass_to_shard(shard, message, vec![target], true, None);
        }
    }

    /// Whether this session's client may read `topic` (`Session::may_read`).
    fn may_read(&self, session_id: SessionId, topic: &str) -> bool {
        // A bridge's own session reads everything (its ACL is none: `read_acl`).
        if self.link_of_session(session_id).is_some() {
            return true;
        }
        self.sessions
            .get(&session_id)
            .is_some_and(|s| s.may_read(read_acl(&self.config, s.listener(), false), topic))
    }

    /// One message into one session: what the session decides (`session/delivery.rs`),
    /// carried out.
    pub(super) fn deliver_to_session(
        &mut self,
        message: &Arc<Message>,
        target: &Target,
        variants: &mut Variants,
    ) {
        let link = self.link_of_session(target.session);
        let link_down = link.is_some_and(|i| self.bridge_drops(i));
        let target = capped(target, link.map(|i| self.links[i].remote_max_qos));
        let Some(conn) = self.sessions.get(&target.session).map(|s| s.conn) else {
            return;
        };
        let writable = target.qos == QoS::AtMostOnce
            || conn.is_some_and(|c| self.can_write(c, message.payload.len()));
        let config = &self.config;
        let Some((session, changes)) = self.sessions.recording(&target.session) else {
            return;
        };
        let rules = Rules {
            acl: read_acl(config, session.listener(), link.is_some()),
            link_down,
            limits: Limits {
                writable,
                ..session.limits(
                    config.inflight_max,
                    config.queued_max,
                    config.queued_bytes_max,
                )
            },
        };
        match session.decide(message, &target, &rules, changes) {
            Decision::Send => {
                self.send_to_session(target.session, message, &target, variants, None)
            }
            Decision::Queued {
                waits_for_reader: true,
            } => {
                // Sent once its client has read what waits for it (`holding.rs`).
                self.holding.waiting.insert(target.session);
            }
            Decision::Queued { .. } => {}
            Decision::Dropped(why) => {
                self.stats().dropped(why, 1);
                let session = self.sessions.get(&target.session);
                if why == DropReason::QueueFull
                    && session.is_some_and(|s| s.outgoing().dropped().is_power_of_two())
                {
                    log::info!(
                        "Outgoing messages are being dropped for client {}.",
                        session.map_or("", |s| &s.client_id)
                    );
                }
            }
        }
    }

    /// Encodes the PUBLISH for `target` into its connection's buffer; QoS 1/2 enters the
    /// inflight window. Dropped, and counted: an expired message (5.0 Message Expiry), one
    /// larger than the client's Maximum Packet Size, and QoS 0 to a backed-up client.
    fn send_to_session(
        &mut self,
        session_id: SessionId,
        message: &Arc<Message>,
        target: &Target,
        variants: &mut Variants,
        numbered: Option<u16>,
    ) {
        let write_max = self.config.client_write_max;
        let link = self.link_of_session(session_id);
        let over_memory_limit = self.over_memory_limit();
        let now = self.clock.now;
        let stats = &self.shared.stats[self.id];
        let Some((session, changes)) = self.sessions.recording(&session_id) else {
            return;
        };
        let Some(conn) = session.conn else { return };
        let Some(c) = super::conn::live_mut(&mut self.conns, conn) else {
            return;
        };
        let backend = &self.backend;
        let backlog = || Backlog {
            bytes: c.out_len() + c.unsealed_len() + backend.queued_bytes(conn),
            write_max,
            over_memory_limit,
            slow_max: SLOW_BACKLOG_BYTES,
        };
        if let Err(why) = session.worth_sending(message, target.qos, now, backlog) {
            stats.dropped(why, 1);
            return;
        }
        let v5 = session.version == ProtocolVersion::V5;
        // mount_point: the client sees topics without its listener's prefix (and only
        // topics under it).
        let mount = self
            .config
            .listener(session.listener())
            .mount_point
            .as_deref();
        let Some(strip) = mount_strip(mount, &message.topic) else {
            return;
        };
        let key = VariantKey {
            v5,
            qos: target.qos,
            retain: target.retain,
            dup: false,
            strip,
        };
        let own;
        let alias_max = usize::from(c.out_alias_max());
        let mut new_alias = None;
        let encoded = if link.is_some() || (v5 && (alias_max > 0 || !target.identifiers.is_empty()))
        {
            // Encoded for this subscriber alone: its subscription identifiers, or its
            // topic aliases, or (a bridge) its remapped topic, are its own.
            let mut publish = build_publish(
                message,
                target.qos,
                target.retain,
                &target.identifiers,
                v5,
                strip,
                now,
            );
            publish.packet_id = u16::from(target.qos != QoS::AtMostOnce);
            if let Some(i) = link {
                super::bridges::outgoing(&mut self.links[i], now, &mut publish);
            }
            if alias_max > 0 {
                // Topic aliases on the broker's sends (§3.3.2.3.4), up to the client's Topic
                // Alias Maximum [MQTT-3.3.2-8]: a topic seen again goes as its alias alone.
                match c.extras().out_aliases.choose(&message.topic, alias_max) {
                    Alias::Known(alias) => {
                        publish.topic = MqttStr::default();
                        publish.properties.topic_alias = Some(alias);
                    }
                    Alias::New(alias) => {
                        publish.properties.topic_alias = Some(alias);
                        new_alias = Some(alias);
                    }
                    Alias::None => {}
                }
            }
            let version = if v5 {
                ProtocolVersion::V5
            } else {
                ProtocolVersion::V311
            };
            own = encode_publish(publish, version);
            own.as_ref().map(|own| own.encoded())
        } else {
            variants.get(key, message, now)
        };
        let Some(encoded) = encoded else {
            stats.dropped(DropReason::TooLarge, 1);
            log::warn!(
                "Warning: a message to '{}' ({} bytes) is too large to send to {} in its protocol version; dropped for that client.",
                message.topic,
                message.payload.len(),
                session.client_id
            );
            return;
        };
        if let Err(why) = session.fits(encoded.len()) {
            stats.dropped(why, 1);
            return;
        }
        if let Some(alias) = new_alias {
            c.extras().out_aliases.set(&message.topic, alias);
        }
        let packet_id = if target.qos == QoS::AtMostOnce {
            0
        } else {
            session.start(message, target, numbered, changes)
        };
        let was_empty = c.out_len() == 0;
        c.put_publish(&encoded, packet_id);
        self.output.memory.encoded_this_turn += encoded.len();
        log::debug!(
            "Sending PUBLISH to {} (d0, q{}, r{}, m{packet_id}, '{}', ... ({} bytes))",
            session.client_id,
            target.qos as u8,
            u8::from(target.retain),
            message.topic,
            message.payload.len()
        );
        stats.messages_sent[target.qos as usize].fetch_add(1, Ordering::Relaxed);
        stats.packets_sent.fetch_add(1, Ordering::Relaxed);
        if was_empty {
            self.output.to_flush.push(conn);
        }
    }
}

/// The ACL a session's client reads under: none for a bridge's own session (the broker's,
/// as Mosquitto).
fn read_acl(config: &Config, listener: usize, bridged: bool) -> Option<&crate::auth::acl::Acl> {
    let acl = config.security(listener).acl.as_deref();
    acl.filter(|_| !bridged)
}

/// What routing a message reuses from one message to the next.
pub(super) struct Routing {
    /// Per target shard, the targets of the message being routed.
    pub(super) targets: Vec<Vec<Target>>,
    /// The encodings of the message being delivered (`encode.rs`).
    pub(super) variants: Variants,
}

impl Routing {
    pub(super) fn new(shards: usize) -> Routing {
        Routing {
            targets: vec![Vec::new(); shards],
            variants: Variants::default(),
        }
    }
}

/// Entries a reused list keeps room for between messages or turns (the local targets of a
/// message, the connections written in a turn).
pub(super) const KEPT_CAPACITY: usize = 256;

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
            }
            _ => out.push(t),
        }
    }
    *targets = out;
}
