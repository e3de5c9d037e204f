//! The bridges a shard runs (`bridge/`): each an outgoing connection made through the
//! backend (`Backend::connect`) and a local session (its local client id), on this shard.
//! Here is the glue: when to connect and where, CONNECT and CONNACK, the remote
//! subscriptions, keepalive, notifications, and what a lost connection does. Once CONNACK
//! has come, PUBLISH and its acknowledgements take the shard's usual paths both ways (the
//! flows are symmetric in MQTT), with the topics remapped (`bridge/topics.rs`).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::time::Duration;

use compact_str::CompactString;

use super::close::CloseReason;
use super::conn::Conn;
use super::io::{Backend, ConnId};
use super::subscribe::TrieOp;
use super::{Claim, Shard};
use crate::bridge::{Link, RemoteRequest, State};
use crate::codec::{
    ConnAck, Decoder, Packet, ProtocolVersion, Publish, QoS, ReasonCode, SubscriptionOptions, Will,
};
use crate::config::bridge::{Direction, StartType};
use crate::topic::{SessionId, Subscription};

/// How long a host name lookup may take before the attempt counts as failed.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);

impl<B: Backend> Shard<B> {
    /// Starts the bridges `indices` (of `Config::bridges`) on this shard, once its restored
    /// sessions are in: each gets its local session, and connects as its start type says
    /// (on the next timer tick).
    pub fn start_bridges(&mut self, indices: &[usize]) {
        for &index in indices {
            let Some(bridge) = self.config.bridges.get(index).cloned() else {
                continue;
            };
            let tls = match crate::bridge::tls_config(&bridge) {
                Ok(tls) => tls,
                Err(e) => {
                    log::error!("Error: bridge {}: {e}; it is not started.", bridge.name);
                    continue;
                }
            };
            let mut link = Link::new(index, bridge, self.now, tls);
            link.session = Some(self.bridge_session(&link));
            link.state = State::Down {
                retry_at: link.first_attempt(self.now),
            };
            self.links.push(link);
            // As Mosquitto: "0" (retained) on the notification topic until it is up.
            self.notify_locally(self.links.len() - 1, false);
        }
        // The subscriptions are live, and the first attempts start, before any client is
        // served (as Mosquitto's).
        if !self.links.is_empty() {
            self.apply_trie_ops();
            self.check_bridges();
        }
    }

    /// Whether a bridge with a clean local session drops what comes for it now: while it
    /// has no connection at all (Mosquitto queues for it only once a connection is being
    /// made).
    pub(super) fn bridge_drops(&self, i: usize) -> bool {
        let link = &self.links[i];
        matches!(link.state, State::Down { .. } | State::Resolving { .. })
            && (link.session)
                .and_then(|id| self.sessions.get(&id))
                .is_some_and(|s| s.clean)
    }

    /// The bridge's local session: the one restored from disk (its queue kept, when the
    /// local session is not clean), or a new one; subscribed to exactly the bridge's
    /// `out` and `both` topics, with No Local (what comes in over the bridge does not go
    /// back out) and Retain As Published, as Mosquitto subscribes its bridges.
    fn bridge_session(&mut self, link: &Link) -> SessionId {
        let config = &link.config;
        let local_clean = config.local_clean_session.unwrap_or(config.clean_session);
        let client_id = link.local_client_id.clone();
        let mut session = match self.by_client.remove(&client_id) {
            Some(old) if local_clean => {
                if let Some(old) = self.sessions.remove(&old) {
                    self.end_session(old, false);
                }
                None
            }
            Some(old) => self.sessions.remove(&old),
            None => None,
        }
        .unwrap_or_else(|| {
            let id = self.shared.new_session_id();
            Box::new(crate::session::Session::begin(
                id,
                client_id.clone(),
                link.version,
                local_clean,
                &mut self.changes,
            ))
        });
        let expiry = if local_clean { 0 } else { u32::MAX };
        session.set_parameters(link.version, expiry, local_clean, &mut self.changes);
        session.username = config.local_username.as_deref().map(Box::from);
        session.listener = 0;
        let id = session.id;
        let wanted: Vec<(String, QoS)> = (config.topics.iter())
            .filter(|t| t.direction != Direction::In)
            .map(|t| (t.local_filter(), t.qos))
            .collect();
        let stale: Vec<CompactString> = (session.subscriptions().keys())
            .filter(|f| !wanted.iter().any(|(w, _)| w == f.as_str()))
            .cloned()
            .collect();
        for filter in stale {
            session.unsubscribe(&filter, &mut self.changes);
            self.trie_ops.push(TrieOp::Unsubscribe {
                filter,
                session: id,
            });
        }
        for (filter, qos) in wanted {
            let sub = Subscription {
                shard: self.id as u16,
                options: SubscriptionOptions {
                    qos,
                    no_local: true,
                    retain_as_published: true,
                    ..SubscriptionOptions::default()
                },
                identifier: None,
            };
            log::debug!("Bridge {client_id} doing local SUBSCRIBE on topic {filter}");
            session.subscribe(&filter, sub, &mut self.changes);
            self.trie_ops.push(TrieOp::Subscribe {
                filter: CompactString::from(filter),
                session: id,
                sub,
            });
        }
        let claim = self.shared.next_claim.fetch_add(1, Ordering::Relaxed);
        (self.shared.registry.lock().expect("registry lock")).insert(
            client_id.clone(),
            Claim {
                shard: self.id,
                number: claim,
            },
        );
        self.by_client.insert(client_id, id);
        self.sessions.insert(id, session);
        self.journal_session(id, claim);
        id
    }

    /// The bridge whose local session `session` is (there are few: a scan).
    pub(super) fn link_of_session(&self, session: SessionId) -> Option<usize> {
        if self.links.is_empty() {
            return None;
        }
        self.links.iter().position(|l| l.session == Some(session))
    }

    /// On the timer tick: attempts that are due, lookups that finished, deadlines,
    /// keepalive, a lazy bridge's threshold and idle timeout, probes of the first address.
    pub(super) fn check_bridges(&mut self) {
        let now = self.now;
        for i in 0..self.links.len() {
            let link = &mut self.links[i];
            match &link.state {
                State::Down { retry_at } => {
                    let due = retry_at.is_some_and(|at| at <= now);
                    let lazy_due = link.config.start_type == StartType::Lazy
                        && retry_at.is_none()
                        && (link.session)
                            .and_then(|id| self.sessions.get(&id))
                            .is_some_and(|s| {
                                s.outgoing().queue_len() >= link.config.threshold as usize
                            });
                    if due || lazy_due {
                        self.bridge_attempt(i);
                    }
                }
                State::Resolving { lookup, deadline } => {
                    let result = lookup.lock().expect("lookup lock").take();
                    match result {
                        Some(Ok(addresses)) if !addresses.is_empty() => {
                            self.bridge_connect(i, addresses[0])
                        }
                        Some(result) => {
                            let why = match result {
                                Err(e) => e.to_string(),
                                Ok(_) => "no address found".into(),
                            };
                            self.bridge_failed(i, &format!("looking up its address: {why}"));
                        }
                        None if *deadline <= now => {
                            self.bridge_failed(i, "looking up its address took too long");
                        }
                        None => {}
                    }
                }
                State::Connecting { conn, deadline } => {
                    if *deadline <= now {
                        let conn = *conn;
                        log::info!(
                            "Bridge {} got no CONNACK from {} in time; closing the connection.",
                            link.config.name,
                            show_address(link.current_address())
                        );
                        self.close_conn(conn, CloseReason::ConnectTimeout);
                    }
                }
                State::Up { conn } => {
                    let conn = *conn;
                    self.bridge_keepalive(i, conn);
                }
            }
        }
    }

    /// Keepalive on an established bridge: PINGREQ after a keepalive interval without
    /// sending, the connection closed if the PINGRESP has not come by the next; a lazy
    /// bridge idle for `idle_timeout` is stopped; a probe of the first address.
    fn bridge_keepalive(&mut self, i: usize, conn: ConnId) {
        let now = self.now;
        let link = &mut self.links[i];
        let keepalive = Duration::from_secs(link.config.keepalive.into());
        if link.config.start_type == StartType::Lazy
            && now.duration_since(link.last_message) >= link.config.idle_timeout
        {
            log::info!(
                "Bridge connection {} has exceeded idle timeout, disconnecting.",
                link.config.name
            );
            self.close_conn(conn, CloseReason::ClientDisconnect);
            return;
        }
        if !keepalive.is_zero() && now.duration_since(link.last_sent) >= keepalive {
            if link.ping_sent.is_some() {
                log::info!(
                    "Bridge {} has exceeded timeout, disconnecting.",
                    link.local_client_id
                );
                self.close_conn(conn, CloseReason::KeepAlive);
                return;
            }
            link.ping_sent = Some(now);
            link.last_sent = now;
            log::debug!("Sending PINGREQ to {}", link.local_client_id);
            self.send_packet(conn, &Packet::PingReq);
        }
        let link = &mut self.links[i];
        if link.probe.is_none() && link.primary_retry_at.is_some_and(|at| at <= now) {
            link.primary_retry_at = Some(now + crate::bridge::PRIMARY_RETRY);
            let (host, port) = link.config.addresses[0].clone();
            let bind = bind_address(&link.config.bind_address);
            if let Some(to) = literal_address(&host, port) {
                self.links[i].probe = self.backend.connect(to, bind).ok();
            }
        }
    }

    /// Starts an attempt on the current address: at once for an IP address (or
    /// `localhost`), after a lookup on a helper thread for a host name.
    fn bridge_attempt(&mut self, i: usize) {
        let link = &mut self.links[i];
        link.attempt_started();
        let (host, port) = link.current_address().clone();
        log::info!("Connecting bridge {} ({host}:{port})", link.config.name);
        if let Some(to) = literal_address(&host, port) {
            self.bridge_connect(i, to);
            return;
        }
        let lookup = crate::bridge::Lookup::default();
        let answer = lookup.clone();
        let spawned = std::thread::Builder::new()
            .name("midge-lookup".into())
            .spawn(move || {
                let result = (host.as_str(), port)
                    .to_socket_addrs()
                    .map(|addresses| addresses.collect());
                *answer.lock().expect("lookup lock") = Some(result);
            });
        match spawned {
            Ok(_) => {
                self.links[i].state = State::Resolving {
                    lookup,
                    deadline: self.now + LOOKUP_TIMEOUT,
                }
            }
            Err(e) => self.bridge_failed(i, &format!("cannot look up its address: {e}")),
        }
    }

    /// Opens the connection to `to`, with TLS if the bridge has it.
    fn bridge_connect(&mut self, i: usize, to: SocketAddr) {
        let link = &self.links[i];
        let bind = bind_address(&link.config.bind_address);
        let conn = match self.backend.connect(to, bind) {
            Ok(conn) => conn,
            Err(e) => {
                log::error!("Error creating bridge: {e}.");
                self.bridge_failed(i, &e.to_string());
                return;
            }
        };
        let packet_size_max = match link.config.max_packet_size {
            0 => self.config.packet_size_max,
            n => n as usize,
        };
        let mut c = Box::new(Conn::new(conn, Some(to), 0, 0, packet_size_max, self.now));
        c.decoder = Decoder::client(link.version, packet_size_max);
        c.version = Some(link.version);
        c.client_id = Some(link.local_client_id.clone());
        c.extras().link = Some(i);
        if let Some(tls) = &link.tls {
            let host = link.current_address().0.clone();
            let name = rustls::pki_types::ServerName::try_from(host)
                .map_err(|e| e.to_string())
                .and_then(|name| {
                    crate::tls::link::TlsLink::client(tls.clone(), name).map_err(|e| e.to_string())
                });
            match name {
                Ok(tls) => c.layers.get_or_insert_with(Default::default).tls = Some(tls),
                Err(e) => {
                    self.backend.close(conn);
                    self.bridge_failed(i, &format!("TLS: {e}"));
                    return;
                }
            }
        }
        let deadline = self.now + Duration::from_secs(link.config.keepalive.max(5).into());
        let index = conn.slot();
        if self.conns.len() <= index {
            self.conns.resize_with(index + 1, || None);
        }
        self.conns[index] = Some(c);
        self.shared.connections.fetch_add(1, Ordering::AcqRel);
        self.links[i].state = State::Connecting { conn, deadline };
    }

    /// An attempt failed before a connection existed.
    fn bridge_failed(&mut self, i: usize, why: &str) {
        let link = &mut self.links[i];
        log::info!(
            "Bridge {} could not connect to {}: {why}.",
            link.config.name,
            show_address(link.current_address())
        );
        link.went_down(self.now, true);
    }

    /// `Event::Connected`: a bridge's connection is made (send CONNECT), or a probe of a
    /// first address answered (go back to it). False if `conn` is neither.
    pub(super) fn on_connected(&mut self, conn: ConnId) -> bool {
        if let Some(i) = self.links.iter().position(|l| l.probe == Some(conn)) {
            self.backend.close(conn);
            let link = &mut self.links[i];
            link.probe = None;
            log::info!(
                "Bridge {}: its first address {} answers again; reconnecting there.",
                link.config.name,
                show_address(&link.config.addresses[0])
            );
            if let Some(current) = link.conn() {
                self.close_conn(current, CloseReason::ClientDisconnect);
            }
            let link = &mut self.links[i];
            link.address = 0;
            link.state = State::Down {
                retry_at: Some(self.now),
            };
            return true;
        }
        let Some(i) = self.conn(conn).and_then(|c| c.link()) else {
            return false;
        };
        let connect = self.links[i].connect_packet();
        self.links[i].last_sent = self.now;
        log::debug!(
            "Sending CONNECT to {} as {}",
            show_address(self.links[i].current_address()),
            connect.client_id.as_str()
        );
        self.send_packet(conn, &Packet::Connect(Box::new(connect)));
        true
    }

    /// `Event::Closed` for a probe (not a connection of the shard's table).
    pub(super) fn on_probe_closed(&mut self, conn: ConnId) -> bool {
        match self.links.iter_mut().find(|l| l.probe == Some(conn)) {
            Some(link) => {
                link.probe = None;
                true
            }
            None => false,
        }
    }

    /// A packet on a bridge's connection: the server's side of MQTT.
    pub(super) fn on_link_packet(&mut self, conn: ConnId, i: usize, packet: Packet) {
        let Some(session) = self.links[i].session else {
            return;
        };
        if !self.links[i].is_up() {
            match packet {
                Packet::ConnAck(ack) => self.on_link_connack(conn, i, session, ack),
                _ => self.protocol_violation(conn, "a packet before CONNACK"),
            }
            return;
        }
        let name = self.links[i].local_client_id.clone();
        match packet {
            Packet::Publish(publish) => {
                self.links[i].last_message = self.now;
                self.on_publish(conn, session, publish)
            }
            Packet::PubAck(ack) if self.links[i].notification_id == Some(ack.packet_id) => {
                self.links[i].notification_id = None;
            }
            Packet::PubAck(ack) => self.on_puback(conn, session, ack.packet_id),
            Packet::PubRec(rec) => self.on_pubrec(conn, session, rec.packet_id, rec.reason),
            Packet::PubRel(rel) => self.on_pubrel(conn, session, rel.packet_id),
            Packet::PubComp(comp) => self.on_pubcomp(conn, session, comp.packet_id),
            Packet::SubAck(ack) => {
                log::debug!("Received SUBACK from {name}");
                if ack.reasons.iter().any(|r| *r as u8 >= 0x80) {
                    log::warn!(
                        "Warning: bridge {}: the remote broker refused a subscription (SUBACK {:?}).",
                        self.links[i].config.name,
                        ack.reasons
                    );
                }
            }
            Packet::UnsubAck(_) => log::debug!("Received UNSUBACK from {name}"),
            Packet::PingResp => {
                log::debug!("Received PINGRESP from {name}");
                self.links[i].ping_sent = None;
            }
            Packet::Disconnect(d) => {
                log::info!(
                    "Bridge {} was disconnected by the remote broker (reason {:#04x}).",
                    self.links[i].config.name,
                    d.reason as u8
                );
                self.close_conn(conn, CloseReason::PeerClosed);
            }
            // Not the server's to send, but harmless, and Mosquitto's bridges answer it.
            Packet::PingReq => {
                log::debug!("Received PINGREQ from {name}");
                self.send_packet(conn, &Packet::PingResp);
            }
            Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::Subscribe(_)
            | Packet::Unsubscribe(_)
            | Packet::Auth(_) => self.protocol_violation(conn, "a packet a broker does not send"),
        }
    }

    /// A 5.0 bridge's remote that answers with a 3.x CONNACK (remaining length 2; a 5.0
    /// CONNACK has at least 3) does not speak 5.0: as Mosquitto, the next attempt speaks
    /// 3.1.1 if it said "unacceptable protocol version". True if that is what came.
    pub(super) fn old_connack(&mut self, conn: ConnId) -> bool {
        let Some(c) = self.conn(conn) else {
            return false;
        };
        let Some(i) = c.link() else { return false };
        let old = c.version == Some(ProtocolVersion::V5)
            && c.inbuf.len() >= 4
            && c.inbuf[..2] == [0x20, 0x02];
        if !old {
            return false;
        }
        let code = c.inbuf[3];
        let link = &mut self.links[i];
        if code == 0x01 {
            log::info!(
                "Warning: Remote bridge {} does not support MQTT v5.0, reconnecting using MQTT v3.1.1.",
                link.config.name
            );
            link.version = ProtocolVersion::V311;
        } else {
            log::error!("Connection Refused: return code {code} (a 3.x CONNACK to a 5.0 CONNECT)");
        }
        self.close_conn(conn, CloseReason::Refused);
        true
    }

    /// CONNACK: refused (the reason logged as Mosquitto words it; the next attempt drops
    /// what the remote could not take), or accepted: the local session goes online, the
    /// notification, the remote subscriptions, retained messages for the `out` topics, and
    /// what waited (unacknowledged first, with DUP) go out.
    fn on_link_connack(&mut self, conn: ConnId, i: usize, session_id: SessionId, ack: ConnAck) {
        let now = self.now;
        let link = &mut self.links[i];
        log::debug!("Received CONNACK on connection {}.", link.local_client_id);
        let v5 = link.version == ProtocolVersion::V5;
        if ack.reason != ReasonCode::Success {
            let why = match (v5, ack.reason) {
                (false, ReasonCode::UnsupportedProtocolVersion) => {
                    // Perhaps the bridge bit: the next attempt goes without it.
                    link.try_private = false;
                    "unacceptable protocol version".to_string()
                }
                (false, ReasonCode::ClientIdentifierNotValid) => "identifier rejected".into(),
                (false, ReasonCode::ServerUnavailable) => "broker unavailable".into(),
                (false, ReasonCode::BadUserNameOrPassword) => "bad user name or password".into(),
                (false, ReasonCode::NotAuthorized) => "not authorised".into(),
                (false, _) => "unknown reason".into(),
                (true, ReasonCode::RetainNotSupported) => {
                    link.remote_retain = false;
                    "retain not available (will retry)".into()
                }
                (true, ReasonCode::QosNotSupported) => {
                    link.remote_max_qos = match ack.properties.maximum_qos {
                        Some(q) => QoS::from_u8(q).unwrap_or(QoS::AtMostOnce),
                        None => QoS::from_u8((link.remote_max_qos as u8).saturating_sub(1))
                            .unwrap_or(QoS::AtMostOnce),
                    };
                    "QoS not supported (will retry)".into()
                }
                (true, reason) => format!("{reason:?}"),
            };
            log::error!("Connection Refused: {why}");
            self.close_conn(conn, CloseReason::Refused);
            return;
        }
        if v5 {
            let p = &ack.properties;
            if let Some(q) = p.maximum_qos.and_then(QoS::from_u8) {
                link.remote_max_qos = q;
            }
            if p.retain_available == Some(false) {
                link.remote_retain = false;
            }
            if let Some(keepalive) = p.server_keep_alive {
                link.config.keepalive = keepalive;
            }
        }
        link.connected(conn, now);
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        if v5 {
            // [MQTT-3.3.4-9] the remote's Receive Maximum bounds what is in flight to it;
            // [MQTT-3.1.2-24] its Maximum Packet Size what is sent.
            session.receive_maximum = ack.properties.receive_maximum.unwrap_or(u16::MAX);
            session.packet_size_max = (ack.properties.maximum_packet_size).map(|n| n as usize);
        }
        if session.version != link.version {
            // It fell back to 3.1.1: the messages it sends are encoded so.
            let (expiry, clean) = (session.expiry_interval_s, session.clean);
            session.set_parameters(link.version, expiry, clean, &mut self.changes);
        }
        session.conn = Some(conn);
        session.resumed();
        if let Some(c) = self.conn_mut(conn) {
            c.session = Some(session_id);
        }
        self.notify_remote(i, conn, session_id);
        self.notify_locally(i, true);
        let requests = {
            let link = &self.links[i];
            let session = self.sessions.get_mut(&session_id).expect("found above");
            link.remote_subscriptions(|| session.take_packet_id())
        };
        for request in requests {
            let (id, kind, filter, packet) = match request {
                RemoteRequest::Subscribe(s) => {
                    let filter = s.filters[0].0.to_string();
                    (s.packet_id, "SUBSCRIBE", filter, Packet::Subscribe(s))
                }
                RemoteRequest::Unsubscribe(u) => {
                    let filter = u.filters[0].to_string();
                    (u.packet_id, "UNSUBSCRIBE", filter, Packet::Unsubscribe(u))
                }
            };
            log::debug!(
                "Bridge {} sending {kind} (Mid: {id}, Topic: {filter})",
                self.links[i].local_client_id
            );
            self.send_packet(conn, &packet);
        }
        // What was in flight goes again first (with DUP), then what waited, then the
        // retained messages (owed: they follow as the window allows).
        self.resume_outgoing(session_id);
        self.owe_bridge_retained(i, session_id);
    }

    /// The remote learns the bridge is up: "1", retained, on the notification topic (not
    /// with `notifications_local_only`). Not kept in flight: its acknowledgement is only
    /// recognised and passed over.
    fn notify_remote(&mut self, i: usize, conn: ConnId, session_id: SessionId) {
        let link = &self.links[i];
        let Some(topic) = link.notification_topic.clone() else {
            return;
        };
        if link.config.notifications_local_only {
            return;
        }
        let Ok(topic) = crate::codec::MqttStr::new(&topic) else {
            return;
        };
        let qos = QoS::AtLeastOnce.min(link.remote_max_qos);
        let retain = link.remote_retain;
        let packet_id = match qos {
            QoS::AtMostOnce => 0,
            _ => (self.sessions.get_mut(&session_id)).map_or(0, |s| s.take_packet_id()),
        };
        self.links[i].notification_id = (packet_id != 0).then_some(packet_id);
        let publish = Publish {
            dup: false,
            qos,
            retain,
            topic,
            packet_id,
            properties: Default::default(),
            payload: bytes::Bytes::from_static(b"1"),
        };
        self.send_packet(conn, &Packet::Publish(publish));
    }

    /// The local broker learns the bridge's state: "1" or "0", retained, on the
    /// notification topic (QoS 1, as Mosquitto queues it).
    fn notify_locally(&mut self, i: usize, up: bool) {
        let link = &self.links[i];
        let (Some(topic), Some(session)) = (&link.notification_topic, link.session) else {
            return;
        };
        let Ok(topic) = crate::codec::MqttStr::new(topic) else {
            return;
        };
        let will = Will {
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Default::default(),
            topic,
            payload: bytes::Bytes::from_static(if up { b"1" } else { b"0" }),
        };
        self.publish_will(session, will);
    }

    /// The retained messages under the bridge's `out` topics, owed to it at each connect
    /// (as Mosquitto sends them), so the remote has the current state.
    fn owe_bridge_retained(&mut self, i: usize, session_id: SessionId) {
        let topics: Vec<(String, QoS)> = (self.links[i].config.topics.iter())
            .filter(|t| t.direction != Direction::In)
            .map(|t| (t.local_filter(), t.qos))
            .collect();
        for (filter, qos) in topics {
            let mut messages = Vec::new();
            (self.shared.retained.lock())
                .expect("retained lock")
                .matching_from(&filter, &mut messages, &|_, _| true);
            if !messages.is_empty() {
                self.owe_retained(session_id, messages, qos, None);
            }
        }
    }

    /// A bridge's connection ended (whatever ended it): its local session goes offline
    /// (forgetting what it held if the local session is clean), the local notification
    /// says "0", and the next attempt is scheduled.
    pub(super) fn link_closed(&mut self, c: Box<Conn>, i: usize, reason: CloseReason) {
        let conn = c.id;
        self.close_socket(c);
        let Some(link) = self.links.get_mut(i) else {
            return;
        };
        if link.conn() != Some(conn) {
            return;
        }
        let was_up = link.is_up();
        let name = link.local_client_id.clone();
        if reason != CloseReason::Shutdown && reason != CloseReason::Refused {
            match (was_up, reason) {
                (true, CloseReason::PeerClosed) => {
                    log::info!("Client {name} closed its connection.")
                }
                (true, CloseReason::SocketError) => {
                    log::info!("Socket error on client {name}, disconnecting.")
                }
                (false, _) => log::info!(
                    "Bridge {} could not connect to {}: {}.",
                    link.config.name,
                    show_address(link.current_address()),
                    match reason {
                        CloseReason::SocketError => "connection failed",
                        CloseReason::PeerClosed => "the connection was closed",
                        CloseReason::ConnectTimeout => "no answer",
                        _ => "protocol error",
                    }
                ),
                _ => {}
            }
        }
        link.went_down(self.now, true);
        if let Some(probe) = link.probe.take() {
            self.backend.close(probe);
        }
        let Some(session_id) = link.session else {
            return;
        };
        if let Some(session) = self.sessions.get_mut(&session_id) {
            if session.conn == Some(conn) {
                session.connection_ended(self.now, false);
                if session.clean {
                    // local_cleansession: nothing waits for the next connection.
                    session.forget_messages();
                }
            }
        }
        if was_up && reason != CloseReason::Shutdown {
            self.notify_locally(i, false);
        }
    }

    /// The local topic of a message a bridge received (remapped by its `in` topics).
    pub(super) fn bridge_incoming_topic(
        &self,
        i: usize,
        topic: &crate::codec::MqttStr,
    ) -> Option<crate::codec::MqttStr> {
        let remapped = crate::bridge::topics::local_topic(&self.links[i].config.topics, topic)?;
        crate::codec::MqttStr::new(&remapped).ok()
    }
}

/// What a bridge sends the remote for a local message: the topic remapped, RETAIN
/// cleared when the remote cannot take it (`bridge_outgoing_retain false`, or its CONNACK
/// said so). A free function: the caller holds the session and connection it goes to.
pub(super) fn outgoing(link: &mut Link, now: std::time::Instant, publish: &mut Publish) {
    link.last_message = now;
    if let Some(topic) = crate::bridge::topics::remote_topic(&link.config.topics, &publish.topic) {
        if let Ok(topic) = crate::codec::MqttStr::new(&topic) {
            publish.topic = topic;
        }
    }
    publish.retain &= link.remote_retain;
}

/// An address that needs no lookup: an IP address, or `localhost`.
fn literal_address(host: &str, port: u16) -> Option<SocketAddr> {
    if host == "localhost" {
        return Some(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    host.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, port))
}

/// `bridge_bind_address`: the local address to connect from (any port).
fn bind_address(address: &Option<String>) -> Option<SocketAddr> {
    let ip = address.as_deref()?.parse::<IpAddr>().ok()?;
    Some(SocketAddr::new(ip, 0))
}

fn show_address((host, port): &(String, u16)) -> String {
    format!("{host}:{port}")
}
