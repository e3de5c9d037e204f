//! Delivering a routed message (`route.rs`) to the sessions held here: what each session
//! decides (`session/delivery.rs`: send, queue or drop) carried out, encoded once per
//! variant (`encode.rs`) into the connection's turn buffer (`output.rs`). What follows a
//! QoS 1/2 send (acknowledgements, the window, resending) is in `outgoing.rs`.

use std::sync::Arc;

use super::aliases::Alias;
use super::io::Backend;
use super::Shard;
use crate::codec::{MqttStr, ProtocolVersion, QoS};
use crate::config::Config;
use crate::limits::SLOW_BACKLOG_BYTES;
use crate::router::{Message, Target};
use crate::session::{capped, Backlog, Decision, DropReason, Limits, Rules};
use crate::topic::SessionId;

use super::cluster_replay::Replayed;
use super::conn::Conn;
use super::encode::{build_publish, encode_publish, mount_strip, Encoded, VariantKey, Variants};

impl<B: Backend> Shard<B> {
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
                let settled =
                    forwarded || !self.handover.moves.any_settling() || !self.hold(message, target);
                // (`replaying` is almost always empty too.)
                let replayed = match settled && !self.replaying.is_empty() {
                    true => self.replay_holds(message, target),
                    false => Replayed::Deliver,
                };
                if settled && matches!(replayed, Replayed::Deliver) {
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
    pub(super) fn may_read(&self, session_id: SessionId, topic: &str) -> bool {
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
            owed: self.subs.owed.sending,
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
    pub(super) fn send_to_session(
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
        // mount_point: the client sees topics without its listener's prefix (and only
        // topics under it).
        let listener = self.config.listener(session.listener());
        let Some(strip) = mount_strip(listener.mount_point.as_deref(), &message.topic) else {
            return;
        };
        let key = VariantKey {
            v5: session.version == ProtocolVersion::V5,
            qos: target.qos,
            retain: target.retain,
            dup: false,
            strip,
        };
        let link = link.map(|i| &mut self.links[i]);
        let (encoded, new_alias) = encode(c, link, variants, message, target, key, now);
        let Some(encoded) = encoded else {
            stats.dropped(DropReason::TooLarge, 1);
            warn_too_large(message, &session.client_id);
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
        log_sent(&session.client_id, message, target, packet_id);
        stats.publish_sent(target.qos);
        if was_empty {
            self.output.to_flush.push(conn);
        }
    }
}

fn warn_too_large(message: &Message, client_id: &str) {
    log::warn!(
        "Warning: a message to '{}' ({} bytes) is too large to send to {client_id} in its protocol version; dropped for that client.",
        message.topic,
        message.payload.len(),
    );
}

fn log_sent(client_id: &str, message: &Message, target: &Target, packet_id: u16) {
    log::debug!(
        "Sending PUBLISH to {client_id} (d0, q{}, r{}, m{packet_id}, '{}', ... ({} bytes))",
        target.qos as u8,
        u8::from(target.retain),
        message.topic,
        message.payload.len()
    );
}

/// The PUBLISH of `message` for the subscriber of `c` (`target`): the variant `key` shared
/// with others, or one encoded for it alone (kept in `variants` until the next): with its
/// subscription identifiers, its topic aliases, or (a bridge, `link`) its remapped topic.
/// With the alias to remember for the topic if the PUBLISH sets a new one (remembered once
/// it is sent). `None`: too large to encode in its protocol version.
fn encode<'v>(
    c: &mut Conn,
    link: Option<&mut crate::bridge::Link>,
    variants: &'v mut Variants,
    message: &Message,
    target: &Target,
    key: VariantKey,
    now: std::time::Instant,
) -> (Option<Encoded<'v>>, Option<u16>) {
    let alias_max = usize::from(c.out_alias_max());
    let own = link.is_some() || (key.v5 && (alias_max > 0 || !target.identifiers.is_empty()));
    if !own {
        return (variants.get(key, message, now), None);
    }
    let mut publish = build_publish(
        message,
        target.qos,
        target.retain,
        &target.identifiers,
        key.v5,
        key.strip,
        now,
    );
    publish.packet_id = u16::from(target.qos != QoS::AtMostOnce);
    if let Some(link) = link {
        super::bridges::outgoing(link, now, &mut publish);
    }
    let mut new_alias = None;
    if alias_max > 0 {
        // Topic aliases on the broker's sends (§3.3.2.3.4), up to the client's Topic Alias
        // Maximum [MQTT-3.3.2-8]: a topic seen again goes as its alias alone.
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
    let version = if key.v5 {
        ProtocolVersion::V5
    } else {
        ProtocolVersion::V311
    };
    (
        variants.keep_own(encode_publish(publish, version)),
        new_alias,
    )
}

/// The ACL a session's client reads under: none for a bridge's own session (the broker's,
/// as Mosquitto).
fn read_acl(config: &Config, listener: usize, bridged: bool) -> Option<&crate::auth::acl::Acl> {
    let acl = config.security(listener).acl.as_deref();
    acl.filter(|_| !bridged)
}
