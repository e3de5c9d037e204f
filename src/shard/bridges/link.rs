//! A bridge's connection once made: the packets a broker sends a client (CONNACK, SUBACK,
//! PINGRESP, and PUBLISH with its acknowledgements, which take the shard's usual paths),
//! the remote subscriptions, notifications on both sides, and what a lost connection does
//! to the local session.

use super::show_address;
use crate::bridge::RemoteRequest;
use crate::codec::{ConnAck, Packet, ProtocolVersion, Publish, QoS, ReasonCode, Will};
use crate::config::bridge::Direction;
use crate::shard::close::CloseReason;
use crate::shard::conn::Conn;
use crate::shard::io::{Backend, ConnId};
use crate::shard::Shard;
use crate::topic::SessionId;

impl<B: Backend> Shard<B> {
    /// A packet on a bridge's connection: the server's side of MQTT.
    pub(in crate::shard) fn on_link_packet(&mut self, conn: ConnId, i: usize, packet: Packet) {
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
                self.links[i].last_message = self.clock.now;
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

    /// CONNACK: refused (the reason logged as Mosquitto words it; the next attempt drops
    /// what the remote could not take), or accepted: the local session goes online, the
    /// notification, the remote subscriptions, retained messages for the `out` topics, and
    /// what waited (unacknowledged first, with DUP) go out.
    fn on_link_connack(&mut self, conn: ConnId, i: usize, session_id: SessionId, ack: ConnAck) {
        let now = self.clock.now;
        let link = &mut self.links[i];
        log::debug!("Received CONNACK on connection {}.", link.local_client_id);
        let v5 = link.version == ProtocolVersion::V5;
        if ack.reason != ReasonCode::Success {
            let why = refused_because(link, v5, &ack);
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
        if let Some(up) = self.shared.bridges_up.get(link.index) {
            up.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let Some((session, changes)) = self.sessions.recording(&session_id) else {
            return;
        };
        if v5 {
            // [MQTT-3.3.4-9] the remote's Receive Maximum bounds what is in flight to it;
            // [MQTT-3.1.2-24] its Maximum Packet Size what is sent.
            session.receive_maximum = ack.properties.receive_maximum.unwrap_or(u16::MAX);
            session.packet_size_max =
                (ack.properties.maximum_packet_size).and_then(std::num::NonZeroU32::new);
        }
        if session.version != link.version {
            // It fell back to 3.1.1: the messages it sends are encoded so.
            let (expiry, clean) = (session.expiry_interval_s, session.clean);
            session.set_parameters(link.version, expiry, clean, changes);
        }
        session.conn = Some(conn);
        session.resumed();
        if let Some(c) = self.conn_mut(conn) {
            c.session = Some(session_id);
        }
        self.notify_remote(i, conn, session_id);
        self.notify_locally(i, true);
        self.send_remote_subscriptions(i, conn, session_id);
        // What was in flight goes again first (with DUP), then what waited, then the
        // retained messages (owed: they follow as the window allows).
        self.resume_outgoing(session_id);
        self.owe_bridge_retained(i, session_id);
    }

    /// The bridge's SUBSCRIBEs (and, with `bridge_attempt_unsubscribe`, UNSUBSCRIBEs) to
    /// the remote, for its `in` and `both` topics.
    fn send_remote_subscriptions(&mut self, i: usize, conn: ConnId, session_id: SessionId) {
        let requests = {
            let link = &self.links[i];
            let Some(session) = self.sessions.get_mut(&session_id) else {
                return;
            };
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
    pub(super) fn notify_locally(&mut self, i: usize, up: bool) {
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
            self.owe_retained(session_id, &filter, qos, None, None);
        }
    }

    /// A bridge's connection ended (whatever ended it): its local session goes offline
    /// (forgetting what it held if the local session is clean), the local notification
    /// says "0", and the next attempt is scheduled.
    pub(in crate::shard) fn link_closed(&mut self, c: Box<Conn>, i: usize, reason: CloseReason) {
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
        link.went_down(self.clock.now, true);
        if let Some(up) = self.shared.bridges_up.get(link.index) {
            up.store(false, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(probe) = link.probe.take() {
            self.backend.close(probe);
        }
        let Some(session_id) = link.session else {
            return;
        };
        if let Some(session) = self.sessions.get_mut(&session_id) {
            if session.conn == Some(conn) {
                session.connection_ended(self.clock.now, false);
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
}

/// Why the remote refused the bridge's CONNECT, as Mosquitto logs it; what it says the
/// remote cannot take (the bridge bit, retained messages, a QoS) the next attempt leaves
/// out.
fn refused_because(link: &mut crate::bridge::Link, v5: bool, ack: &ConnAck) -> String {
    match (v5, ack.reason) {
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
    }
}
