//! CONNACK: accepting a client with the properties a 5.0 client is told, or refusing one
//! with a reason code and closing [MQTT-3.2.2-7] (5.0: [MQTT-3.2.2-8]).

use std::sync::atomic::Ordering::Relaxed;

use super::io::{Backend, ConnId};
use super::Shard;
use crate::codec::{
    ConnAck, Connect, MqttStr, Packet, Properties, ProtocolVersion, QoS, ReasonCode,
};

/// What a CONNACK accepting a client says, beside the CONNECT it answers.
pub(super) struct Connack<'a> {
    pub(super) session_present: bool,
    pub(super) client_id: &'a str,
    /// The broker gave the client id: 5.0 tells it which.
    pub(super) assigned: bool,
    /// The keep alive in force (the client's, at most `max_keepalive`).
    pub(super) keepalive: u16,
    pub(super) listener: usize,
}

impl<B: Backend> Shard<B> {
    /// Sends the CONNACK accepting a client; false if the client cannot take it (closed).
    pub(super) fn send_connack(
        &mut self,
        conn: ConnId,
        connect: &Connect,
        connack: Connack,
    ) -> bool {
        let mut properties = Properties::default();
        if connect.version == ProtocolVersion::V5 {
            properties = self.connack_properties(connect, &connack);
        }
        if let Some(extras) = self.conn_mut(conn).and_then(|c| c.extras.as_mut()) {
            if let Some(method) = &extras.auth_method {
                // 5.0 §3.2.2.3.17: the method the client authenticated with.
                properties.authentication_method = MqttStr::new(method.name()).ok();
                properties.authentication_data = extras.auth_reply.take();
            }
        }
        let Connack {
            session_present,
            client_id,
            ..
        } = connack;
        let ack = Packet::ConnAck(ConnAck {
            session_present,
            reason: ReasonCode::Success,
            properties,
        });
        // [MQTT-3.1.2-24] not even the CONNACK may exceed the client's Maximum Packet Size:
        // a client that cannot take it is closed without one (as Mosquitto).
        let size_max = connect.properties.maximum_packet_size.map(|n| n as usize);
        let ack_len = ack.encoded_len(connect.version).unwrap_or(usize::MAX);
        if size_max.is_some_and(|max| ack_len > max) {
            log::info!(
                "Client {client_id} cannot take a CONNACK of {ack_len} bytes (its Maximum Packet Size), disconnecting."
            );
            self.close_conn(conn, super::close::CloseReason::ProtocolError);
            return false;
        }
        log::debug!(
            "Sending CONNACK to {client_id} ({}, 0)",
            u8::from(session_present)
        );
        self.send_packet(conn, &ack);
        true
    }

    /// The properties a 5.0 CONNACK tells the client: what it was given (its id, its keep
    /// alive), and the broker's limits where they are below the protocol's.
    fn connack_properties(&self, connect: &Connect, connack: &Connack) -> Properties {
        let config = &self.config;
        let mut properties = Properties::default();
        if connack.assigned {
            properties.assigned_client_identifier = MqttStr::new(connack.client_id).ok();
        }
        if connack.keepalive != connect.keep_alive {
            properties.server_keep_alive = Some(connack.keepalive);
        }
        properties.receive_maximum = u16::try_from(config.inflight_max)
            .ok()
            .filter(|&n| n < 65535);
        // [MQTT-3.1.2-28] Response Information only when asked for (and configured).
        if connect.properties.request_response_information == Some(true) {
            if let Some(prefix) = &config.response_topic_prefix {
                let client_id = connack.client_id;
                properties.response_information =
                    MqttStr::new(&format!("{prefix}/{client_id}")).ok();
            }
        }
        // The largest packet the broker accepts, when a limit below the protocol's is set.
        let size_max = config.packet_size_max;
        if size_max < crate::codec::VARINT_MAX as usize {
            properties.maximum_packet_size = u32::try_from(size_max).ok();
        }
        // [MQTT-3.2.2-9] [MQTT-3.2.2-10] what the broker does not support: retained
        // messages (retain_available false), QoS above the listener's max_qos.
        if !config.retain_available {
            properties.retain_available = Some(false);
        }
        let listener = config.listener(connack.listener);
        if listener.max_qos != QoS::ExactlyOnce {
            properties.maximum_qos = Some(listener.max_qos as u8);
        }
        // [MQTT-3.2.2-17] how many topic aliases the client may set (absent: none).
        let aliases = listener.topic_alias_max;
        properties.topic_alias_maximum = (aliases > 0).then_some(aliases);
        properties
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

    /// Encodes a last packet straight into a connection being closed.
    pub(super) fn send_raw(&mut self, c: &mut super::conn::Conn, packet: &Packet) {
        let version = c.version().unwrap_or(ProtocolVersion::V311);
        if packet.encode(version, &mut c.out).is_ok() {
            self.stats().packets_sent.fetch_add(1, Relaxed);
        }
    }
}
