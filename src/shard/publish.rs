//! PUBLISH and PUBREL from clients: QoS 0/1/2 in, topic aliases, retained messages, and
//! the publisher's acknowledgement. The message goes on to `route.rs`; the acknowledgements
//! of what the broker sends are in `outgoing.rs`, wills in `wills.rs`.

use bytes::Bytes;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::io::{Backend, ConnId};
use super::Shard;
use crate::auth::acl::Access;
use crate::codec::{MqttStr, Packet, ProtocolVersion, PubResponse, Publish, QoS, ReasonCode};
use crate::limits::{self, Limit};
use crate::retain::{Full, Source};
use crate::router::Message;
use crate::session::Qos2Publish;
use crate::topic::SessionId;

/// Why a payload marked UTF-8 was refused.
const NOT_UTF8: &str = "the payload is not valid UTF-8 as its Payload Format Indicator says";

/// A kept message's payload larger than this keeps the buffer its packet came in rather
/// than a copy (64 KiB: past it, the packet's buffer was sized for it, and a packet in a
/// buffer more than about twice its size is copied out of it, `Decoder::decode_from`).
const PAYLOAD_SHARED_FROM: usize = 64 * 1024;

impl<B: Backend> Shard<B> {
    /// Whether a payload said to be UTF-8 is: the part checked as it arrived
    /// (`receiving.rs`) is not checked again.
    fn payload_is_utf8(&mut self, payload: &[u8]) -> bool {
        let checked = self.receiving.payload_check.take();
        checked
            .and_then(|check| check.payload_is_utf8(payload))
            .unwrap_or_else(|| std::str::from_utf8(payload).is_ok())
    }

    /// A PUBLISH from a client, in the order its checks go: the topic it names, whether it
    /// is refused, whether the client may write it, a QoS 2 resend; then the message is
    /// kept (retained) and routed, and the publisher acknowledged.
    pub(super) fn on_publish(&mut self, conn: ConnId, session_id: SessionId, publish: Publish) {
        let name = self.conn_name(conn);
        self.stats().messages_received[publish.qos as usize].fetch_add(1, Ordering::Relaxed);
        #[cfg(debug_assertions)]
        if self.faults.panic_topic.as_deref() == Some(&*publish.topic) {
            panic!("fault injected by MIDGE_FAULT_PANIC_TOPIC");
        }
        let Some(publish) = self.with_full_topic(conn, &name, publish) else {
            return;
        };
        // Logged once the topic is known to be valid, as Mosquitto does: an invalid one may
        // be 65,535 levels long, and a log line is written whole.
        log::debug!("Received PUBLISH from {name} {}", publish.summary());
        let (packet_id, qos) = (publish.packet_id, publish.qos);
        if self.refused(conn, &name, &publish) {
            return;
        }
        let Some(authorised) = self.authorised(conn, session_id, &name, &publish) else {
            return;
        };
        let Some(duplicate) = self.qos2_resent(conn, session_id, &name, packet_id, qos) else {
            return;
        };
        // The acknowledgement goes before what this PUBLISH delivers back to its own client,
        // as Mosquitto writes them.
        let ack_at = self.conn(conn).map(|c| c.out_len());
        let mut matched = true;
        let mut stored = None;
        if !duplicate && authorised {
            let message = self.message_of(session_id, publish);
            if message.retain {
                let source = self.retain_source(session_id);
                if !self.keep_retained(&message, source) {
                    self.refuse_retained(conn, &name, packet_id, qos);
                    return;
                }
            }
            (matched, stored) = self.route(&message, Some(conn));
        } else if duplicate {
            // A resent QoS 2 PUBLISH: its PUBREC says the first copy is stored, so it waits
            // for what this shard handed to the cluster's stream so far.
            stored = (self.shared.cluster.get()).and_then(|c| c.last_stored_number(self.id));
        }
        if qos == QoS::ExactlyOnce {
            // Journaled in this turn, with the delivery (or the record of the message passed
            // to another shard, `crossing/transit.rs`): a resend after a crash is known.
            if let Some((session, changes)) = self.sessions.recording(&session_id) {
                session.awaiting_pubrel(packet_id, changes);
            }
        }
        self.acknowledge_publish(conn, &name, packet_id, (qos, matched, stored), ack_at);
    }

    /// The PUBLISH with the topic it names in full: its topic alias resolved, checked, and
    /// placed where a bridge's `in` line or the listener's mount point puts it. `None` if
    /// the client was disconnected for it.
    fn with_full_topic(&mut self, conn: ConnId, name: &str, publish: Publish) -> Option<Publish> {
        let mut publish = publish;
        if let Some(alias) = publish.properties.topic_alias {
            if let Err(reason) = self.resolve_topic_alias(conn, alias, &mut publish.topic) {
                log::info!("Client {name} sent an invalid topic alias {alias}, disconnecting.");
                self.disconnect_with(conn, reason, "invalid topic alias");
                return None;
            }
        }
        if let Err(e) = crate::topic::validate_topic_name(&publish.topic) {
            log::info!("Client {name} sent an invalid topic name ({e}), disconnecting.");
            // 0x82 as Mosquitto answers it (the spec names no code for a topic beyond the
            // broker's level limit).
            self.disconnect_with(conn, ReasonCode::ProtocolError, &e.to_string());
            return None;
        }
        // A bridge's: the topic its `in` lines give it here.
        let (listener, link) = self
            .conn(conn)
            .map_or((0, None), |c| (c.listener(), c.link()));
        if let Some(topic) = link.and_then(|i| self.bridge_incoming_topic(i, &publish.topic)) {
            publish.topic = topic;
        }
        // mount_point: the listener's clients publish inside their part of the topic space.
        let mount = self.config.listener(listener).mount_point.as_ref();
        if let Some(mount) = mount.filter(|_| link.is_none()) {
            let Some(topic) = mounted_topic(mount, &publish.topic) else {
                log::info!(
                    "Client {name} sent a topic too long for its mount point, disconnecting."
                );
                self.disconnect_with(conn, ReasonCode::TopicNameInvalid, TOO_LONG_MOUNTED);
                return None;
            };
            publish.topic = topic;
        }
        Some(publish)
    }

    /// Whether the PUBLISH is refused (answered, or its client disconnected): a QoS or a
    /// retain flag the listener does not allow, a payload over `message_size_limit`, or a
    /// payload that is not the UTF-8 it says it is.
    fn refused(&mut self, conn: ConnId, name: &str, publish: &Publish) -> bool {
        let (packet_id, qos) = (publish.packet_id, publish.qos);
        let listener = self.conn(conn).map_or(0, |c| c.listener());
        // Above the listener's max_qos (a Protocol Error, §3.2.2.3.4 after [MQTT-3.2.2-11]),
        // or retained where retain_available is false ([MQTT-3.2.2-14], §3.3.1.3): 5.0's
        // DISCONNECT 0x9B / 0x9A; 3.x is closed (as Mosquitto).
        let not_allowed = if qos > self.config.listener(listener).max_qos {
            Some((ReasonCode::QosNotSupported, "Too high QoS in PUBLISH"))
        } else if publish.retain && !self.config.retain_available {
            Some((ReasonCode::RetainNotSupported, "Retained PUBLISH"))
        } else {
            None
        };
        if let Some((reason, what)) = not_allowed {
            log::info!("{what} from {name}, disconnecting.");
            self.disconnect_with(conn, reason, what);
            return true;
        }
        // message_size_limit: a payload over it is dropped and answered. Mosquitto answers
        // 5.0 with 0x95 Packet too large, which PUBACK and PUBREC may not carry
        // [MQTT-3.4.2-1] [MQTT-3.5.2-1]: midge says 0x83 Implementation specific error ("valid,
        // but the receiver is not willing to accept it"), which also ends a QoS 2 flow.
        let limit = self.config.message_size_limit;
        if limit > 0 && publish.payload.len() > limit {
            log::debug!(
                "Dropped too large PUBLISH from {name} {}",
                publish.summary()
            );
            self.stats()
                .dropped_too_large
                .fetch_add(1, Ordering::Relaxed);
            let mut refusal = PubResponse::new(packet_id);
            refusal.reason = ReasonCode::ImplementationSpecificError;
            self.send_refusal(conn, qos, refusal);
            return true;
        }
        // 5.0 §3.3.2.3.2: a payload said to be UTF-8 that is not is refused with 0x99
        // (the specification lets the receiver check; midge does).
        if publish.properties.payload_format_indicator == Some(1)
            && !self.payload_is_utf8(&publish.payload)
        {
            self.refuse_not_utf8(conn, name, packet_id, qos);
            return true;
        }
        false
    }

    /// A payload that is not the UTF-8 its Payload Format Indicator says: 0x99 for QoS 1/2,
    /// DISCONNECT for QoS 0 (which has no answer). Logged at most every
    /// `LIMIT_LOG_INTERVAL` (a client can send thousands a read).
    fn refuse_not_utf8(&mut self, conn: ConnId, name: &str, packet_id: u16, qos: QoS) {
        match self.holding.not_utf8.due(self.clock.now) {
            None => {}
            Some(0) => {
                log::info!("Client {name} sent a payload that is not the UTF-8 it said it was.")
            }
            Some(more) => log::info!(
                "Client {name} sent a payload that is not the UTF-8 it said it was ({more} more such payloads since the last such line)."
            ),
        }
        let mut refusal = PubResponse::new(packet_id);
        refusal.reason = ReasonCode::PayloadFormatInvalid;
        // [MQTT-3.1.2-29] a Reason String only for a client that wants problem details.
        if self.conn(conn).is_some_and(|c| c.problem_information) {
            refusal.properties.reason_string = Some(MqttStr::from_static(NOT_UTF8));
        }
        match qos {
            QoS::AtMostOnce => {
                self.disconnect_with(conn, ReasonCode::PayloadFormatInvalid, NOT_UTF8)
            }
            _ => self.send_refusal(conn, qos, refusal),
        }
    }

    /// acl_file: whether the client may write the PUBLISH's topic. One it may not is not
    /// delivered: 3.x has no way to be told and is acknowledged as usual; 5.0 QoS 1/2 is
    /// told 0x87 (`None`: answered, nothing more to do).
    fn authorised(
        &mut self,
        conn: ConnId,
        session_id: SessionId,
        name: &str,
        publish: &Publish,
    ) -> Option<bool> {
        if self.write_allowed(session_id, &publish.topic) {
            return Some(true);
        }
        self.stats().dropped_acl.fetch_add(1, Ordering::Relaxed);
        log::debug!("Denied PUBLISH from {name} to '{}'.", publish.topic);
        let v5 = self.conn(conn).and_then(|c| c.version()) == Some(ProtocolVersion::V5);
        if v5 && publish.qos != QoS::AtMostOnce {
            let mut refusal = PubResponse::new(publish.packet_id);
            refusal.reason = ReasonCode::NotAuthorized;
            self.send_refusal(conn, publish.qos, refusal);
            return None;
        }
        Some(false)
    }

    /// QoS 2, method B of §4.3.3: delivered on PUBLISH, its id remembered until PUBREL, so
    /// that a resend (true) is acknowledged and not delivered again. `None` if the client
    /// was disconnected: more unacknowledged than the Receive Maximum the broker gave.
    fn qos2_resent(
        &mut self,
        conn: ConnId,
        session_id: SessionId,
        name: &str,
        packet_id: u16,
        qos: QoS,
    ) -> Option<bool> {
        if qos != QoS::ExactlyOnce {
            return Some(false);
        }
        let receive_max = self.config.inflight_max;
        let arrival = (self.sessions.get(&session_id)).map_or(Qos2Publish::New, |s| {
            s.incoming().publish(packet_id, receive_max)
        });
        match arrival {
            Qos2Publish::New => Some(false),
            Qos2Publish::Duplicate => Some(true),
            // [MQTT-3.3.4-7] Receive Maximum exceeded. (QoS 1 is acknowledged at once.)
            Qos2Publish::OverReceiveMaximum => {
                log::info!(
                    "Client {name} exceeded the receive maximum {receive_max}, disconnecting."
                );
                self.disconnect_with(
                    conn,
                    ReasonCode::ReceiveMaximumExceeded,
                    "too many QoS 2 messages awaiting PUBREL",
                );
                None
            }
        }
    }

    /// The message a PUBLISH becomes, as routing and sessions keep it.
    fn message_of(&mut self, session_id: SessionId, publish: Publish) -> Arc<Message> {
        let qos = publish.qos;
        let mut properties = publish.properties;
        // Properties the broker answers itself are not forwarded. (Only written when
        // present: the first write allocates a property set, and most messages have none.)
        if properties.topic_alias.is_some() || !properties.subscription_identifiers.is_empty() {
            properties.topic_alias = None;
            properties.subscription_identifiers.clear();
        }
        // Messages that may be kept (retained, or QoS 1/2 waiting for acknowledgement or in
        // a queue) get their own copy of topic and payload: a slice would pin the whole
        // receive buffer. Not a large payload: its packet has a buffer sized for it
        // (`receiving.rs`; `Decoder::decode_from` copies a packet out of a buffer much
        // larger), so what it pins is about what was sent (at most about twice), and a copy
        // would hold it twice. QoS 0 passes through without a copy.
        let keep = publish.retain || qos != QoS::AtMostOnce;
        let (topic, payload) = if keep {
            let payload = if publish.payload.len() > PAYLOAD_SHARED_FROM {
                publish.payload
            } else {
                Bytes::copy_from_slice(&publish.payload)
            };
            (publish.topic.detached(), payload)
        } else {
            (publish.topic, publish.payload)
        };
        let expires_at = properties
            .message_expiry_interval
            .map(|s| self.clock.now + Duration::from_secs(s.into()));
        Arc::new(Message {
            topic,
            payload,
            qos,
            retain: publish.retain,
            properties,
            origin: Some(session_id),
            expires_at,
            order: self.publish_order(),
            stream: Default::default(),
        })
    }

    /// PUBACK or PUBREC to the publisher, at `ack_at` in what goes out this turn, or once
    /// the cluster stored the message (`stored`: `cluster_acks.rs`).
    fn acknowledge_publish(
        &mut self,
        conn: ConnId,
        name: &str,
        packet_id: u16,
        (qos, matched, stored): (QoS, bool, Option<u64>),
        ack_at: Option<usize>,
    ) {
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                let mut ack = PubResponse::new(packet_id);
                // 5.0: 0x10 No matching subscribers, as Mosquitto tells it (for QoS 1 only).
                if !matched
                    && self.conn(conn).and_then(|c| c.version()) == Some(ProtocolVersion::V5)
                {
                    ack.reason = ReasonCode::NoMatchingSubscribers;
                }
                if self.send_publish_answer(conn, &Packet::PubAck(ack), stored, ack_at) {
                    log::debug!("Sending PUBACK to {name} (Mid: {packet_id})");
                }
            }
            QoS::ExactlyOnce => {
                let rec = Packet::PubRec(PubResponse::new(packet_id));
                if self.send_publish_answer(conn, &rec, stored, ack_at) {
                    log::debug!("Sending PUBREC to {name} (Mid: {packet_id})");
                }
            }
        }
    }

    /// MQTT 5.0 topic aliases (§3.3.2.3.4): a PUBLISH with a topic and an alias sets the
    /// alias; one with an alias and no topic uses it.
    fn resolve_topic_alias(
        &mut self,
        conn: ConnId,
        alias: u16,
        topic: &mut MqttStr,
    ) -> Result<(), ReasonCode> {
        let Some(c) = super::conn::live_mut(&mut self.conns, conn) else {
            return Ok(());
        };
        let alias_max = self.config.listener(c.listener()).topic_alias_max;
        // [MQTT-3.3.2-9] no alias above the Topic Alias Maximum the broker sent (0: none).
        if alias > alias_max {
            return Err(ReasonCode::TopicAliasInvalid);
        }
        let slot = usize::from(alias) - 1;
        let aliases = &mut c.extras().topic_aliases;
        if aliases.len() < usize::from(alias_max) {
            aliases.resize(usize::from(alias_max), None);
        }
        if topic.is_empty() {
            // An alias with no mapping yet is a Protocol Error (§3.3.2.3.4).
            *topic = aliases[slot].clone().ok_or(ReasonCode::ProtocolError)?;
        } else {
            aliases[slot] = Some(topic.detached());
        }
        Ok(())
    }

    /// Who publishes a retained message, when `check_retain_source` needs to know.
    fn retain_source(&self, session_id: SessionId) -> Option<Arc<crate::retain::Source>> {
        if !self.config.check_retain_source {
            return None;
        }
        let s = self.sessions.get(&session_id)?;
        Some(Arc::new(crate::retain::Source {
            client_id: s.client_id.clone(),
            username: s.username().map(str::to_string),
            listener: s.listener(),
        }))
    }

    /// Whether this session's client may publish to `topic`: never to `$SYS` (but for a
    /// bridge's `$SYS/broker/connection/+/state`) nor to a `$share/...` topic, as in
    /// Mosquitto (a client cannot forge the broker's statistics); then the ACL, if any.
    pub(super) fn write_allowed(&self, session_id: SessionId, topic: &str) -> bool {
        // A bridge's local session is the broker's own, as in Mosquitto: no ACL applies.
        if self.link_of_session(session_id).is_some() {
            return true;
        }
        if topic.starts_with("$SYS") {
            if !crate::topic::matches("$SYS/broker/connection/+/state", topic) {
                return false;
            }
        } else if topic.starts_with("$share") {
            return false;
        }
        self.sessions.get(&session_id).is_some_and(|s| {
            self.config
                .security(s.listener())
                .acl
                .as_ref()
                .is_none_or(|acl| acl.check_topic(s.username(), &s.client_id, topic, Access::Write))
        })
    }

    pub(super) fn on_pubrel(&mut self, conn: ConnId, session_id: SessionId, packet_id: u16) {
        let name = self.conn_name(conn);
        log::debug!("Received PUBREL from {name} (Mid: {packet_id})");
        let known = (self.sessions.recording(&session_id))
            .is_some_and(|(s, changes)| s.pubrel(packet_id, changes));
        // An unknown id is answered all the same, as Mosquitto does: it is a PUBREL sent
        // again after a reconnect (0x92 would be allowed, and is not what tools expect).
        if !known {
            log::debug!("PUBREL from {name} for an unknown packet identifier {packet_id}.");
        }
        log::debug!("Sending PUBCOMP to {name} (Mid: {packet_id})");
        self.send_packet(conn, &Packet::PubComp(PubResponse::new(packet_id)));
    }

    /// Stores (or with an empty payload removes) a retained message, and journals it,
    /// unless the retained messages would pass `limits::retained_bytes_max`: false then
    /// (counted, logged). In a cluster that keeps retained messages in JetStream, the
    /// link stores it there as it forwards the message.
    pub(super) fn keep_retained(
        &mut self,
        message: &Arc<Message>,
        source: Option<Arc<Source>>,
    ) -> bool {
        if (self.shared.cluster.get()).is_some_and(|c| c.keeps_retained(&message.topic)) {
            return true; // The cluster keeps it, in JetStream (`cluster/retained.rs`).
        }
        let bytes_max = limits::retained_bytes_max(self.output.memory.limit);
        let mut store = self.shared.retained.lock().expect("retained lock");
        let stored = store.try_set_from(message.clone(), source.clone(), bytes_max);
        self.shared
            .retained_bytes
            .store(store.bytes(), Ordering::Relaxed);
        drop(store);
        match stored {
            Ok(seq) => {
                self.journal_retained(seq, message, source.as_deref());
                true
            }
            Err(Full) => {
                self.limit_reached(Limit::RetainedBytes, || {
                    format!(
                        "the retained messages would hold more than {bytes_max} bytes; \
                         a retained message to '{}' refused.",
                        message.topic
                    )
                });
                false
            }
        }
    }

    /// A retained PUBLISH the retained messages have no room for is not published: 5.0 QoS
    /// 1/2 is told 0x97 Quota exceeded; a 3.x QoS 1/2 publisher, which has no way to be
    /// told, is disconnected unacknowledged, so that it sends the message again later (as
    /// Mosquitto does past its memory_limit); QoS 0 is dropped.
    fn refuse_retained(&mut self, conn: ConnId, name: &str, packet_id: u16, qos: QoS) {
        let v5 = self.conn(conn).and_then(|c| c.version()) == Some(ProtocolVersion::V5);
        match qos {
            QoS::AtMostOnce => {}
            _ if v5 => {
                let mut refusal = PubResponse::new(packet_id);
                refusal.reason = ReasonCode::QuotaExceeded;
                self.send_refusal(conn, qos, refusal);
            }
            _ => {
                log::info!(
                    "Client {name} sent a retained message with no room for it, disconnecting."
                );
                self.disconnect_with(
                    conn,
                    ReasonCode::QuotaExceeded,
                    "no room for retained messages",
                );
            }
        }
    }

    /// Answers a QoS 1/2 PUBLISH that is not published (a PUBREC with a failure code ends
    /// its QoS 2 exchange); nothing for QoS 0.
    fn send_refusal(&mut self, conn: ConnId, qos: QoS, refusal: PubResponse) {
        let packet = match qos {
            QoS::AtMostOnce => return,
            QoS::AtLeastOnce => Packet::PubAck(refusal),
            QoS::ExactlyOnce => Packet::PubRec(refusal),
        };
        // Behind the client's answers waiting for the cluster, if any.
        let _ = self.send_publish_answer(conn, &packet, None, None);
    }
}

const TOO_LONG_MOUNTED: &str = "topic too long under the listener's mount point";

/// `mount_point`: `topic` inside the listener's part of the topic space, or `None` if the
/// two together pass the 65,535 bytes a topic may have [MQTT-1.5.3-1].
pub(super) fn mounted_topic(mount: &str, topic: &str) -> Option<MqttStr> {
    MqttStr::new(&format!("{mount}{topic}")).ok()
}
