//! CONNECT and CONNACK, and session takeover (also across shards, by handoff). How
//! connections end is in `close.rs`, enhanced authentication in `auth.rs`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::io::{Backend, ConnId};
use super::{Claim, Shard};
use crate::codec::{
    ConnAck, Connect, Disconnect, Packet, Properties, ProtocolVersion, ReasonCode, Will,
};
use crate::router::{SessionBox, ShardMsg};
use crate::session::Session;
use crate::topic::SessionId;

impl<B: Backend> Shard<B> {
    pub(super) fn on_connect(&mut self, conn: ConnId, mut connect: Box<Connect>) {
        // A SIGHUP sent or taken while this turn read the CONNECT: judge it by the new
        // settings.
        self.take_settings_for_connect();
        let shared = self.shared.clone();
        let config = self.config.clone();
        let Some(c) = self.conn_mut(conn) else { return };
        c.decoder.version = Some(connect.version);
        if connect.bridge {
            c.extras().bridge = true;
        }
        let listener = config.listener(c.listener());
        let security = config.security(c.listener());
        let v5 = connect.version == ProtocolVersion::V5;
        // use_identity_as_username / use_subject_as_username: the client certificate names
        // the user, and no password is asked for (as in Mosquitto).
        let certified = match self.certificate_username(conn, listener) {
            Ok(Some(name)) => match crate::codec::MqttStr::new(&name) {
                Ok(name) => {
                    connect.username = Some(name);
                    connect.password = None;
                    true
                }
                Err(_) => {
                    self.refuse(conn, &connect, ReasonCode::NotAuthorized);
                    return;
                }
            },
            Ok(None) => false,
            // No certificate (require_certificate false): bad user name or password, as
            // Mosquitto answers (3.1.1 return code 4).
            Err(()) => {
                self.refuse(conn, &connect, ReasonCode::BadUserNameOrPassword);
                return;
            }
        };

        let mut client_id: Arc<str> = Arc::from(connect.client_id.as_str());
        if listener.use_username_as_clientid {
            // use_username_as_clientid: the user name is the client id; without one the
            // client is not authorised (as Mosquitto).
            match &connect.username {
                Some(user) => client_id = Arc::from(user.as_str()),
                None => {
                    self.refuse(conn, &connect, ReasonCode::NotAuthorized);
                    return;
                }
            }
        }
        let mut assigned = false;
        if client_id.is_empty() {
            // [MQTT-3.1.3-8] (3.1.1) an empty id needs clean session; 3.1 needs an id;
            // `allow_zero_length_clientid false` refuses it as Mosquitto does.
            let allowed = security.allow_zero_length_clientid
                && connect.version != ProtocolVersion::V31
                && (connect.clean_start || v5);
            if !allowed {
                self.refuse(conn, &connect, ReasonCode::ClientIdentifierNotValid);
                return;
            }
            // [MQTT-3.1.3-6] assign a unique identifier.
            let id = self.shared.new_session_id();
            client_id = Arc::from(assigned_client_id(&security.auto_id_prefix, id.get()).as_str());
            assigned = true;
        } else if connect.version == ProtocolVersion::V31 && client_id.len() > 23 {
            // MQTT 3.1 §3.1: the client identifier is 1 to 23 characters; Mosquitto refuses longer.
            self.refuse(conn, &connect, ReasonCode::ClientIdentifierNotValid);
            return;
        }
        // A bridge's local client id is the bridge's: a client taking it would take the
        // bridge's session over.
        if config
            .bridges
            .iter()
            .any(|b| *crate::bridge::client_ids(b).1 == *client_id)
        {
            log::info!("Client {client_id} uses the client id of a bridge; refused.");
            self.refuse(conn, &connect, ReasonCode::ClientIdentifierNotValid);
            return;
        }
        // clientid_prefixes: other client ids are not authorised (as Mosquitto).
        if config
            .clientid_prefixes
            .as_ref()
            .is_some_and(|p| !client_id.starts_with(p.as_str()))
        {
            self.refuse(conn, &connect, ReasonCode::NotAuthorized);
            return;
        }
        // A will above the listener's max_qos, or retained where retain_available is false:
        // 5.0 refuses it with 0x9B / 0x9A [MQTT-3.2.2-12] [MQTT-3.2.2-13]; 3.x has no way
        // to say so and is closed (a 3.x will is published unretained, as Mosquitto does).
        if let Some(will) = &connect.will {
            if will.qos > listener.max_qos {
                log::info!("Client {client_id} sent a will above max_qos, disconnecting.");
                if v5 {
                    self.refuse(conn, &connect, ReasonCode::QosNotSupported);
                } else if let Some(c) = self.take_conn(conn) {
                    self.close_socket(c);
                }
                return;
            }
            if will.retain && !config.retain_available && v5 {
                self.refuse(conn, &connect, ReasonCode::RetainNotSupported);
                return;
            }
        }
        // message_size_limit bounds a will's payload too (5.0: 0x95 Packet too large; 3.x:
        // 5 not authorised, as Mosquitto).
        let limit = config.message_size_limit;
        if let Some(will) = connect
            .will
            .as_ref()
            .filter(|w| limit > 0 && w.payload.len() > limit)
        {
            log::debug!(
                "Client {client_id} connected with too large Will payload ({} bytes)",
                will.payload.len()
            );
            let reason = if v5 {
                ReasonCode::PacketTooLarge
            } else {
                ReasonCode::NotAuthorized
            };
            self.refuse(conn, &connect, reason);
            return;
        }
        // mount_point: a will topic must still be a topic under it.
        if let (Some(mount), Some(will)) = (&listener.mount_point, &connect.will) {
            if super::publish::mounted_topic(mount, &will.topic).is_none() {
                self.refuse(conn, &connect, ReasonCode::TopicNameInvalid);
                return;
            }
        }
        // 5.0 enhanced authentication decides for itself (below), as in Mosquitto.
        let enhanced = v5 && connect.properties.authentication_method.is_some();
        let user = connect.username.as_ref().map(|u| u.as_str());
        if !enhanced && !certified && !security.lets_in(user, connect.password.as_deref()) {
            // Mosquitto 2 refuses with "not authorised" (5 / 0x87), bad password or none.
            self.refuse(conn, &connect, ReasonCode::NotAuthorized);
            return;
        }
        let Some(c) = self.conn_mut(conn) else { return };
        c.client_id = Some(client_id.clone());
        if let (true, Some(name)) = (v5, connect.properties.authentication_method.clone()) {
            // MQTT 5.0 §4.12: enhanced authentication runs before the session is touched.
            let method = shared
                .auth_methods
                .iter()
                .find(|m| m.name() == name.as_str())
                .cloned();
            let Some(method) = method else {
                self.refuse(conn, &connect, ReasonCode::BadAuthenticationMethod);
                return;
            };
            let data = connect.properties.authentication_data.clone();
            let (exchange, step) = method.begin(&client_id, data.as_deref());
            if let Some(c) = self.conn_mut(conn) {
                let extras = c.extras();
                extras.auth_method = Some(method);
                extras.auth_pending = Some(super::conn::PendingConnect {
                    connect,
                    client_id,
                    assigned,
                });
            }
            self.auth_step(conn, exchange, step);
            return;
        }
        self.connect_authenticated(conn, connect, client_id, assigned);
    }

    /// CONNECT, once its client is known: find its session (here, on another shard, or new).
    pub(super) fn connect_authenticated(
        &mut self,
        conn: ConnId,
        connect: Box<Connect>,
        client_id: Arc<str>,
        assigned: bool,
    ) {
        let (previous, claim) = {
            let mut registry = self.shared.registry.lock().expect("registry lock");
            let previous = registry.get(&client_id).copied();
            // Claim numbers increase over all client ids and across restarts (persistence
            // orders a client's sessions in different journals by them).
            let claim = Claim::new(self.id, self.shared.next_claim.fetch_add(1, Relaxed));
            registry.insert(client_id.clone(), claim);
            (previous, claim.number())
        };
        if let Some(c) = self.conn_mut(conn) {
            c.claim = claim;
        }
        let elsewhere = previous.map(Claim::shard).filter(|&owner| owner != self.id);
        let on_its_way = self.handover.claims.on_its_way(&client_id);
        if elsewhere.is_some() || on_its_way {
            // The session lives on another shard, or may be on its way here for an earlier
            // connection of this client: this connection waits for it, and CONNECT is
            // answered when it arrives (`on_handoff`).
            let clean_start = connect.clean_start;
            let now = self.stamp();
            if let Some(c) = self.conn_mut(conn) {
                c.wait_for_handoff(connect, now);
            }
            self.wait_for_session(conn, &client_id, claim);
            if let Some(owner) = elsewhere {
                self.handover.claims.ask(&client_id, claim);
                let msg = ShardMsg::TakeSession {
                    client_id,
                    to: self.id,
                    clean_start,
                    claim,
                };
                // Never dropped, and never refused for a full mailbox: the registry already
                // names this shard, so the request must reach the owner.
                self.crossing
                    .outbox
                    .send(&self.shared.mailboxes, owner, msg, true);
            }
            return;
        }
        let existing = self.sessions.id_of(&client_id);
        let session = existing.and_then(|id| self.take_local_session(id, connect.clean_start));
        self.accept_connect(conn, *connect, client_id, assigned, session);
    }

    /// Closes a connection that was waiting for its session, taken over by a newer one.
    pub(super) fn close_waiting(&mut self, conn: ConnId, client_id: &str) {
        if let Some(c) = self.take_conn(conn) {
            if self.config.connection_messages {
                log::info!("Client {client_id} already connected, closing old connection.");
            }
            self.close_socket(c);
        }
    }

    /// Takes this shard's session `id` for a new connection, closing its old connection.
    /// Returns it if it carries on (not clean on either side), `None` if it ended.
    pub(super) fn take_local_session(
        &mut self,
        id: SessionId,
        clean_start: bool,
    ) -> Option<SessionBox> {
        // Its subscriptions' changes so far point at this shard in the trie before it goes
        // (a later batch here would undo the new shard's).
        self.apply_trie_ops();
        if let Some(old) = self.sessions.get(&id)?.conn {
            self.cut_short_subscribing(old);
        }
        let session = self.sessions.get(&id)?;
        let ends = session.clean || clean_start;
        if let Some(old) = session.conn {
            if self.config.connection_messages {
                log::info!(
                    "Client {} already connected, closing old connection.",
                    session.client_id
                );
            }
            // [MQTT-3.1.4-3] the existing connection is closed.
            self.close_takeover(old, ends);
        }
        self.settle_subscribing(id, ends);
        let session = self.sessions.remove(&id)?;
        if ends {
            self.end_session(session, false);
            return None;
        }
        Some(session)
    }

    /// Closes `conn`, whose session is being taken over.
    fn close_takeover(&mut self, conn: ConnId, session_ends: bool) {
        let Some(mut c) = self.take_conn(conn) else {
            return;
        };
        if let Some(id) = c.session.take() {
            if let Some(session) = self.sessions.get_mut(&id) {
                let will = session.taken_over(session_ends);
                if c.version() == Some(ProtocolVersion::V5) {
                    self.send_raw(
                        &mut c,
                        &Packet::Disconnect(Disconnect::with_reason(ReasonCode::SessionTakenOver)),
                    );
                }
                if let Some(will) = will {
                    self.publish_will(id, will);
                }
            }
        }
        self.close_socket(c);
    }

    /// Encodes a last packet straight into a connection being closed.
    fn send_raw(&mut self, c: &mut super::conn::Conn, packet: &Packet) {
        let version = c.version().unwrap_or(ProtocolVersion::V311);
        if packet.encode(version, &mut c.out).is_ok() {
            self.shared.stats[self.id]
                .packets_sent
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Sends CONNACK with `reason` and closes. [MQTT-3.2.2-7] (5.0: [MQTT-3.2.2-8])
    pub(super) fn refuse(&mut self, conn: ConnId, connect: &Connect, reason: ReasonCode) {
        let Some(mut c) = self.take_conn(conn) else {
            return;
        };
        use super::stats::Refused;
        self.stats().refused(match reason {
            ReasonCode::NotAuthorized | ReasonCode::BadUserNameOrPassword => Refused::NotAuthorised,
            ReasonCode::ClientIdentifierNotValid => Refused::ClientId,
            ReasonCode::UnsupportedProtocolVersion | ReasonCode::ProtocolError => Refused::Protocol,
            _ => Refused::Other,
        });
        let id = connect.client_id.as_str();
        let ack = ConnAck {
            session_present: false,
            reason,
            properties: Properties::default(),
        };
        let code = if connect.version == ProtocolVersion::V5 {
            reason as u8
        } else {
            crate::codec::v3_return_code(reason)
        };
        log::debug!(
            "Sending CONNACK to {} (0, {code})",
            if id.is_empty() { "<unknown>" } else { id }
        );
        if self.config.connection_messages {
            let why = match reason {
                ReasonCode::NotAuthorized | ReasonCode::BadUserNameOrPassword => "not authorised",
                ReasonCode::ClientIdentifierNotValid => "invalid client id",
                ReasonCode::BadAuthenticationMethod => "unsupported authentication method",
                _ => "refused",
            };
            log::info!(
                "Client {} disconnected, {why}.",
                if id.is_empty() { "<unknown>" } else { id }
            );
        }
        c.decoder.version = Some(connect.version);
        self.send_raw(&mut c, &Packet::ConnAck(ack));
        self.close_socket(c);
    }

    /// Completes a CONNECT with the session it resumes (`Some`) or a new one.
    pub(super) fn accept_connect(
        &mut self,
        conn: ConnId,
        connect: Connect,
        client_id: Arc<str>,
        assigned: bool,
        resumed: Option<SessionBox>,
    ) {
        let v5 = connect.version == ProtocolVersion::V5;
        let user = connect.username.as_ref().map(|u| u.as_str());
        let listener = self.conn(conn).map_or(0, |c| c.listener());
        // With per-listener security, the same name on another listener is another user.
        let other_realm =
            |old: &Session| self.config.per_listener_settings && old.listener() != listener;
        let resumed = match resumed {
            // A session is resumed only by its own user: another user's client taking the
            // id gets a new session, not the messages queued for the first.
            Some(old) if old.username() != user || other_realm(&old) => {
                log::info!(
                    "Client {client_id} connected as a different user; its previous session is discarded."
                );
                self.end_session(old, false);
                None
            }
            other => other,
        };
        let session_present = resumed.is_some();
        // [MQTT-4.6.0-6] numbered after what the client published on earlier connections.
        self.catch_up_published();
        let mut session = resumed.unwrap_or_else(|| {
            let id = self.shared.new_session_id();
            Box::new(Session::begin(
                id,
                client_id.clone(),
                connect.version,
                connect.clean_start,
                self.sessions.changes(),
            ))
        });
        let session_id = session.id;
        session.conn = Some(conn);
        // [MQTT-3.1.3-9] the session resumed in time: a will still waiting is not sent.
        session.resumed();
        // 3.x: clean session 0 keeps the session. 5.0: the Session Expiry Interval decides
        // (absent or 0: the session ends with the connection, §3.1.2.11.2).
        let expiry = connect.properties.session_expiry_interval.unwrap_or(0);
        let clean = if v5 { expiry == 0 } else { connect.clean_start };
        session.set_parameters(connect.version, expiry, clean, self.sessions.changes());
        // [MQTT-3.3.4-9] the client's Receive Maximum bounds what is in flight to it;
        // [MQTT-3.1.2-24] its Maximum Packet Size bounds what is sent to it.
        session.receive_maximum = connect.properties.receive_maximum.unwrap_or(u16::MAX);
        session.packet_size_max =
            (connect.properties.maximum_packet_size).and_then(std::num::NonZeroU32::new);
        // The will lives as long as the connection: its own copy, not a slice of CONNECT's
        // receive buffer.
        // mount_point: the will goes to the listener's part of the topic space. (A will
        // whose topic does not fit there was refused in on_connect; were one to get here,
        // no will is better than one outside the mount point.)
        let mount = self.config.listener(listener).mount_point.clone();
        session.will = connect.will.as_ref().and_then(|w| {
            let topic = match &mount {
                Some(m) => super::publish::mounted_topic(m, &w.topic)?,
                None => w.topic.detached(),
            };
            Some(Box::new(Will {
                qos: w.qos,
                retain: w.retain,
                properties: w.properties.clone(),
                topic,
                payload: bytes::Bytes::copy_from_slice(&w.payload),
            }))
        });
        session.set_credentials(
            connect.username.as_ref().map(|u| u.as_str()),
            connect.password.as_deref(),
        );
        session.set_listener(listener);
        if session_present {
            self.adopt_subscriptions(&mut session);
        }
        if session.outgoing().owes() {
            // Retained messages still owed from before (perhaps on another shard).
            self.owed.owing.push(session_id);
        }
        self.sessions.insert(session);
        let claim = self.conn(conn).map_or(0, |c| c.claim);
        self.journal_session(session_id, claim);
        self.shared.stats[self.id]
            .connects
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);

        let keepalive = connect.keep_alive.min(self.config.keepalive_max_s);
        let now = self.stamp();
        let Some(c) = super::conn::live_mut(&mut self.conns, conn) else {
            return;
        };
        super::receiving::forget_input(&self.shared, c);
        c.session = Some(session_id);
        c.decoder.set_packet_size_max(self.config.packet_size_max);
        if let Some(ws) = c.layers.as_mut().and_then(|l| l.ws.as_mut()) {
            ws.set_frame_max(super::transport::ws_frame_max(
                self.config.packet_size_max,
                true,
            ));
        }
        c.client_id = Some(client_id.clone());
        c.keepalive_s = keepalive;
        if let Some(max) = connect.properties.topic_alias_maximum.filter(|&m| m > 0) {
            c.extras().out_alias_max = max;
        }
        c.problem_information = connect
            .properties
            .request_problem_information
            .unwrap_or(true);
        c.last_rx = now;
        if self.config.connection_messages {
            let (ip, port) = (c.peer_host(&self.config), c.peer_port());
            let user = connect
                .username
                .as_ref()
                .map(|u| format!(", u'{u}'"))
                .unwrap_or_default();
            log::info!(
                "New client connected from {ip}:{port} as {client_id} (p{}, c{}, k{}{user}).",
                connect.version as u8,
                u8::from(connect.clean_start),
                connect.keep_alive
            );
        }
        let mut properties = Properties::default();
        if v5 {
            if assigned {
                properties.assigned_client_identifier = crate::codec::MqttStr::new(&client_id).ok();
            }
            if keepalive != connect.keep_alive {
                properties.server_keep_alive = Some(keepalive);
            }
            properties.receive_maximum = u16::try_from(self.config.inflight_max)
                .ok()
                .filter(|&n| n < 65535);
            // [MQTT-3.1.2-28] Response Information only when asked for (and configured).
            if connect.properties.request_response_information == Some(true) {
                if let Some(prefix) = &self.config.response_topic_prefix {
                    properties.response_information =
                        crate::codec::MqttStr::new(&format!("{prefix}/{client_id}")).ok();
                }
            }
            // The largest packet the broker accepts, when a limit below the protocol's is set.
            let size_max = self.config.packet_size_max;
            if size_max < crate::codec::VARINT_MAX as usize {
                properties.maximum_packet_size = u32::try_from(size_max).ok();
            }
            // [MQTT-3.2.2-9] [MQTT-3.2.2-10] what the broker does not support: retained
            // messages (retain_available false), QoS above the listener's max_qos.
            if !self.config.retain_available {
                properties.retain_available = Some(false);
            }
            let max_qos = self.config.listener(listener).max_qos;
            if max_qos != crate::codec::QoS::ExactlyOnce {
                properties.maximum_qos = Some(max_qos as u8);
            }
            // [MQTT-3.2.2-17] how many topic aliases the client may set (absent: none).
            let aliases = self.config.listener(listener).topic_alias_max;
            properties.topic_alias_maximum = (aliases > 0).then_some(aliases);
        }
        if let Some(c) = self.conn_mut(conn) {
            if let Some(extras) = c.extras.as_mut() {
                if let Some(method) = &extras.auth_method {
                    // 5.0 §3.2.2.3.17: the method the client authenticated with.
                    properties.authentication_method =
                        crate::codec::MqttStr::new(method.name()).ok();
                    properties.authentication_data = extras.auth_reply.take();
                }
            }
        }
        let ack = ConnAck {
            session_present,
            reason: ReasonCode::Success,
            properties,
        };
        // [MQTT-3.1.2-24] not even the CONNACK may exceed the client's Maximum Packet Size:
        // a client that cannot take it is closed without one (as Mosquitto).
        let ack = Packet::ConnAck(ack);
        let size_max = connect.properties.maximum_packet_size.map(|n| n as usize);
        let ack_len = ack.encoded_len(connect.version).unwrap_or(usize::MAX);
        if size_max.is_some_and(|max| ack_len > max) {
            log::info!(
                "Client {client_id} cannot take a CONNACK of {ack_len} bytes (its Maximum Packet Size), disconnecting."
            );
            self.close_conn(conn, super::close::CloseReason::ProtocolError);
            return;
        }
        log::debug!(
            "Sending CONNACK to {client_id} ({}, 0)",
            u8::from(session_present)
        );
        self.send_packet(conn, &ack);
        if session_present {
            self.resume_outgoing(session_id);
        }
    }
}

/// A client identifier for a client that sent none [MQTT-3.1.3-6]: the prefix and 36
/// characters shaped as a UUID, as Mosquitto's (tools compare the CONNACK's length).
/// Unique: the last 16 hex digits are the session number, which no other session has;
/// the first 16 are random per process, so that identifiers are not guessed across
/// restarts.
fn assigned_client_id(prefix: &str, unique: u64) -> String {
    use std::hash::{BuildHasher, Hasher};
    static RANDOM: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let random = *RANDOM.get_or_init(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(u64::from(std::process::id()));
        h.finish()
    });
    let hex = format!("{random:016X}{unique:016X}");
    format!(
        "{prefix}{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn assigned_identifiers_are_shaped_as_mosquittos_and_unique() {
        let a = super::assigned_client_id("auto-", 1);
        let b = super::assigned_client_id("auto-", 2);
        assert_eq!(a.len(), "auto-".len() + 36);
        assert_ne!(a, b);
        let uuid = &a["auto-".len()..];
        let dashes: Vec<usize> = uuid.match_indices('-').map(|(i, _)| i).collect();
        assert_eq!(dashes, [8, 13, 18, 23]);
    }
}
