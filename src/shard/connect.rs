//! CONNECT: the checks a client passes (its certificate, its client id, its will, its
//! credentials), then its session found (here, on another shard, or new) and the connection
//! accepted. CONNACK is made in `connack.rs`, an old connection taken over in
//! `takeover.rs`; enhanced authentication is in `auth.rs`, how connections end in
//! `close.rs`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::io::{Backend, ConnId};
use super::{Claim, Shard};
use crate::codec::{Connect, ProtocolVersion, ReasonCode, Will};
use crate::config::Listener;
use crate::router::{SessionBox, ShardMsg};
use crate::session::Session;
use crate::topic::SessionId;

/// Why a CONNECT is not accepted.
enum Refusal {
    /// CONNACK with this reason, then close.
    Answer(ReasonCode),
    /// Closed without a CONNACK: 3.x has no code for what is wrong.
    Close,
}

/// What the checks of a CONNECT found.
struct Admitted {
    client_id: Arc<str>,
    /// The broker gave the client id (the client sent none).
    assigned: bool,
}

impl<B: Backend> Shard<B> {
    pub(super) fn on_connect(&mut self, conn: ConnId, mut connect: Box<Connect>) {
        // A SIGHUP sent or taken while this turn read the CONNECT: judge it by the new
        // settings.
        self.take_settings_for_connect();
        let Some(c) = self.conn_mut(conn) else { return };
        c.decoder.version = Some(connect.version);
        if connect.bridge {
            c.extras().bridge = true;
        }
        let listener = c.listener();
        let admitted = match self.admit(conn, listener, &mut connect) {
            Ok(admitted) => admitted,
            Err(Refusal::Answer(reason)) => return self.refuse(conn, &connect, reason),
            Err(Refusal::Close) => {
                if let Some(c) = self.take_conn(conn) {
                    self.close_socket(c);
                }
                return;
            }
        };
        let Admitted {
            client_id,
            assigned,
        } = admitted;
        let Some(c) = self.conn_mut(conn) else { return };
        c.client_id = Some(client_id.clone());
        let v5 = connect.version == ProtocolVersion::V5;
        if let (true, Some(name)) = (v5, connect.properties.authentication_method.clone()) {
            self.begin_enhanced_auth(conn, connect, client_id, assigned, name.as_str());
            return;
        }
        self.connect_authenticated(conn, connect, client_id, assigned);
    }

    /// The checks of a CONNECT on `listener`, in Mosquitto's order: the client
    /// certificate's user, the client id, the will, the credentials.
    fn admit(
        &mut self,
        conn: ConnId,
        listener: usize,
        connect: &mut Connect,
    ) -> Result<Admitted, Refusal> {
        let config = self.config.clone();
        let on = config.listener(listener);
        let certified = self.certificate_user(conn, on, connect)?;
        let (client_id, assigned) = self.client_id_for(listener, connect)?;
        check_will(&config, on, &client_id, connect)?;
        // 5.0 enhanced authentication decides for itself (`auth.rs`), as in Mosquitto.
        let v5 = connect.version == ProtocolVersion::V5;
        let enhanced = v5 && connect.properties.authentication_method.is_some();
        let user = connect.username.as_ref().map(|u| u.as_str());
        let security = config.security(listener);
        if !enhanced && !certified && !security.lets_in(user, connect.password.as_deref()) {
            // Mosquitto 2 refuses with "not authorised" (5 / 0x87), bad password or none.
            return Err(Refusal::Answer(ReasonCode::NotAuthorized));
        }
        Ok(Admitted {
            client_id,
            assigned,
        })
    }

    /// use_identity_as_username / use_subject_as_username: the client certificate names
    /// the user, and no password is asked for (as in Mosquitto). True if it did.
    fn certificate_user(
        &self,
        conn: ConnId,
        listener: &Listener,
        connect: &mut Connect,
    ) -> Result<bool, Refusal> {
        match self.certificate_username(conn, listener) {
            Ok(Some(name)) => {
                let name = crate::codec::MqttStr::new(&name)
                    .map_err(|_| Refusal::Answer(ReasonCode::NotAuthorized))?;
                connect.username = Some(name);
                connect.password = None;
                Ok(true)
            }
            Ok(None) => Ok(false),
            // No certificate (require_certificate false): bad user name or password, as
            // Mosquitto answers (3.1.1 return code 4).
            Err(()) => Err(Refusal::Answer(ReasonCode::BadUserNameOrPassword)),
        }
    }

    /// The client's id (the user name with `use_username_as_clientid`, one the broker
    /// gives for an empty one), and whether the broker gave it.
    fn client_id_for(
        &self,
        listener: usize,
        connect: &Connect,
    ) -> Result<(Arc<str>, bool), Refusal> {
        let config = &self.config;
        let refused = |reason| Err(Refusal::Answer(reason));
        let mut client_id: Arc<str> = Arc::from(connect.client_id.as_str());
        if config.listener(listener).use_username_as_clientid {
            // use_username_as_clientid: the user name is the client id; without one the
            // client is not authorised (as Mosquitto).
            match &connect.username {
                Some(user) => client_id = Arc::from(user.as_str()),
                None => return refused(ReasonCode::NotAuthorized),
            }
        }
        let mut assigned = false;
        if client_id.is_empty() {
            // [MQTT-3.1.3-8] (3.1.1) an empty id needs clean session; 3.1 needs an id;
            // `allow_zero_length_clientid false` refuses it as Mosquitto does.
            let security = config.security(listener);
            let v5 = connect.version == ProtocolVersion::V5;
            let allowed = security.allow_zero_length_clientid
                && connect.version != ProtocolVersion::V31
                && (connect.clean_start || v5);
            if !allowed {
                return refused(ReasonCode::ClientIdentifierNotValid);
            }
            // [MQTT-3.1.3-6] assign a unique identifier.
            let id = self.shared.new_session_id();
            client_id = Arc::from(assigned_client_id(&security.auto_id_prefix, id.get()).as_str());
            assigned = true;
        } else if connect.version == ProtocolVersion::V31 && client_id.len() > 23 {
            // MQTT 3.1 §3.1: the client identifier is 1 to 23 characters; Mosquitto refuses longer.
            return refused(ReasonCode::ClientIdentifierNotValid);
        }
        // A bridge's local client id is the bridge's: a client taking it would take the
        // bridge's session over.
        let bridges = config.bridges.iter();
        if bridges
            .map(crate::bridge::client_ids)
            .any(|ids| *ids.1 == *client_id)
        {
            log::info!("Client {client_id} uses the client id of a bridge; refused.");
            return refused(ReasonCode::ClientIdentifierNotValid);
        }
        // clientid_prefixes: other client ids are not authorised (as Mosquitto).
        let prefixes = config.clientid_prefixes.as_ref();
        if prefixes.is_some_and(|p| !client_id.starts_with(p.as_str())) {
            return refused(ReasonCode::NotAuthorized);
        }
        Ok((client_id, assigned))
    }

    /// MQTT 5.0 §4.12: enhanced authentication runs before the session is touched.
    fn begin_enhanced_auth(
        &mut self,
        conn: ConnId,
        connect: Box<Connect>,
        client_id: Arc<str>,
        assigned: bool,
        name: &str,
    ) {
        let methods = self.shared.auth_methods.iter();
        let Some(method) = methods.into_iter().find(|m| m.name() == name).cloned() else {
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
    }

    /// CONNECT, once its client is known: in a cluster keeping sessions, its node becomes
    /// the owner of its client id first (`cluster_sessions.rs`); then its session is found.
    pub(super) fn connect_authenticated(
        &mut self,
        conn: ConnId,
        connect: Box<Connect>,
        client_id: Arc<str>,
        assigned: bool,
    ) {
        if let Some(connect) = self.claim_in_cluster(conn, connect, &client_id, assigned) {
            self.connect_claimed(conn, connect, client_id, assigned, None);
        }
    }

    /// CONNECT, with its client id this node's: find its session (`moved` from another
    /// node, here, on another shard, or new).
    pub(super) fn connect_claimed(
        &mut self,
        conn: ConnId,
        connect: Box<Connect>,
        client_id: Arc<str>,
        assigned: bool,
        moved: Option<SessionBox>,
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
            if let Some(moved) = moved {
                // This node held a session of the client while the cluster named another:
                // the one here goes on (the cluster lost track of it: NATS lost its state).
                self.moved_session_not_taken(moved, "another of its sessions is on this node");
            }
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
        // A session moved from another node replaces one left here (its owner since).
        let local_start = connect.clean_start || moved.is_some();
        let session = existing.and_then(|id| self.take_local_session(id, local_start));
        self.accept_connect(conn, *connect, client_id, assigned, moved.or(session));
    }

    /// Completes a CONNECT with the session it resumes (`Some`) or a new one: the session
    /// takes the connection's parameters, the connection its session, and CONNACK goes.
    pub(super) fn accept_connect(
        &mut self,
        conn: ConnId,
        connect: Connect,
        client_id: Arc<str>,
        assigned: bool,
        resumed: Option<SessionBox>,
    ) {
        let listener = self.conn(conn).map_or(0, |c| c.listener());
        let resumed = self.resumable(resumed, &connect, &client_id, listener);
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
        // The later of its claims (a session handed between shards may carry a later one
        // than a connection that waited for it).
        if let Some(revision) = self.conn_mut(conn).map(|c| c.take_cluster_revision()) {
            if revision > session.cluster_revision() {
                session.set_cluster_revision(revision);
            }
        }
        self.take_parameters(&mut session, &connect, listener);
        if session_present {
            self.adopt_subscriptions(&mut session);
        }
        if session.outgoing().owes() {
            // Retained messages still owed from before (perhaps on another shard).
            self.subs.owed.owing.push(session_id);
        }
        self.sessions.insert(session);
        self.record_connected(session_id);
        let claim = self.conn(conn).map_or(0, |c| c.claim);
        self.journal_session(session_id, claim);
        self.stats().connects.fetch_add(1, Relaxed);
        let keepalive = connect.keep_alive.min(self.config.keepalive_max_s);
        if !self.connection_accepted(conn, &connect, &client_id, session_id, keepalive) {
            return;
        }
        let connack = super::connack::Connack {
            session_present,
            client_id: &client_id,
            assigned,
            keepalive,
            listener,
        };
        if self.send_connack(conn, &connect, connack) && session_present {
            self.resume_outgoing(session_id);
        }
    }

    /// The session found for a CONNECT, if its client may resume it: a session is resumed
    /// only by its own user (with per-listener security, the same name on another listener
    /// is another user); another user's client taking the id gets a new session, not the
    /// messages queued for the first.
    fn resumable(
        &mut self,
        resumed: Option<SessionBox>,
        connect: &Connect,
        client_id: &str,
        listener: usize,
    ) -> Option<SessionBox> {
        let user = connect.username.as_ref().map(|u| u.as_str());
        let per_listener = self.config.per_listener_settings;
        let old = resumed?;
        if old.username() == user && !(per_listener && old.listener() != listener) {
            return Some(old);
        }
        log::info!(
            "Client {client_id} connected as a different user; its previous session is discarded."
        );
        self.end_session(old, false);
        None
    }

    /// What a session takes from the CONNECT that resumes or begins it.
    fn take_parameters(&mut self, session: &mut Session, connect: &Connect, listener: usize) {
        // [MQTT-3.1.3-9] the session resumed in time: a will still waiting is not sent.
        session.resumed();
        // 3.x: clean session 0 keeps the session. 5.0: the Session Expiry Interval decides
        // (absent or 0: the session ends with the connection, §3.1.2.11.2).
        let v5 = connect.version == ProtocolVersion::V5;
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
        let mount = self.config.listener(listener).mount_point.as_deref();
        session.will = connect.will.as_ref().and_then(|w| {
            let topic = match mount {
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
    }

    /// The connection takes its session and the CONNECT's parameters, and is logged as
    /// Mosquitto logs a new client. False if it is gone.
    fn connection_accepted(
        &mut self,
        conn: ConnId,
        connect: &Connect,
        client_id: &Arc<str>,
        session_id: SessionId,
        keepalive: u16,
    ) -> bool {
        let now = self.stamp();
        let Some(c) = super::conn::live_mut(&mut self.conns, conn) else {
            return false;
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
        true
    }
}

/// A will above the listener's max_qos, or retained where retain_available is false: 5.0
/// refuses it with 0x9B / 0x9A [MQTT-3.2.2-12] [MQTT-3.2.2-13]; 3.x has no way to say so and
/// is closed (a 3.x will is published unretained, as Mosquitto does). `message_size_limit`
/// bounds its payload too (5.0: 0x95 Packet too large; 3.x: 5 not authorised, as
/// Mosquitto); with a `mount_point` its topic must still be a topic under it.
fn check_will(
    config: &crate::config::Config,
    listener: &Listener,
    client_id: &str,
    connect: &Connect,
) -> Result<(), Refusal> {
    let Some(will) = &connect.will else {
        return Ok(());
    };
    let v5 = connect.version == ProtocolVersion::V5;
    if will.qos > listener.max_qos {
        log::info!("Client {client_id} sent a will above max_qos, disconnecting.");
        return Err(match v5 {
            true => Refusal::Answer(ReasonCode::QosNotSupported),
            false => Refusal::Close,
        });
    }
    if will.retain && !config.retain_available && v5 {
        return Err(Refusal::Answer(ReasonCode::RetainNotSupported));
    }
    let limit = config.message_size_limit;
    if limit > 0 && will.payload.len() > limit {
        log::debug!(
            "Client {client_id} connected with too large Will payload ({} bytes)",
            will.payload.len()
        );
        return Err(Refusal::Answer(match v5 {
            true => ReasonCode::PacketTooLarge,
            false => ReasonCode::NotAuthorized,
        }));
    }
    if let Some(mount) = &listener.mount_point {
        if super::publish::mounted_topic(mount, &will.topic).is_none() {
            return Err(Refusal::Answer(ReasonCode::TopicNameInvalid));
        }
    }
    Ok(())
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
