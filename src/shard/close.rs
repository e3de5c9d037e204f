//! Every way a connection ends: DISCONNECT, keepalive, protocol errors, the peer going away,
//! shutdown; wills, the end of clean sessions and the expiry of offline ones.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::io::{Backend, ConnId};
use super::Shard;
use crate::codec::{
    ConnAck, DecodeError, Disconnect, Packet, Properties, ProtocolVersion, ReasonCode,
};
use crate::session::{Session, WillAfterClose};
use crate::topic::{SessionId, SHARE_PREFIX};

/// Why a connection ended; decides the log line and whether the will is published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// DISCONNECT received: no will. [MQTT-3.14.4-3]
    ClientDisconnect,
    /// DISCONNECT with reason 0x04: the will is published (5.0 §3.14.2.1).
    ClientDisconnectWithWill,
    PeerClosed,
    SocketError,
    KeepAlive,
    ProtocolError,
    ConnectTimeout,
    /// CONNECT refused with a CONNACK error code.
    Refused,
    Shutdown,
}

impl CloseReason {
    fn publishes_will(self) -> bool {
        matches!(
            self,
            CloseReason::PeerClosed
                | CloseReason::ClientDisconnectWithWill
                | CloseReason::SocketError
                | CloseReason::KeepAlive
                | CloseReason::ProtocolError
        )
    }
}

impl<B: Backend> Shard<B> {
    pub(super) fn on_disconnect(
        &mut self,
        conn: ConnId,
        session_id: SessionId,
        disconnect: Disconnect,
    ) {
        let name = self.conn_name(conn);
        log::debug!("Received DISCONNECT from {name}");
        if let (Some(expiry), Some((session, changes))) = (
            disconnect.properties.session_expiry_interval,
            self.sessions.recording(&session_id),
        ) {
            // [MQTT-3.14.2-2] a session that was to end with the connection cannot be given
            // an expiry at DISCONNECT.
            if session.expiry_interval_s == 0 && expiry != 0 {
                self.protocol_violation(
                    conn,
                    "Session Expiry Interval set at DISCONNECT after 0 at CONNECT",
                );
                return;
            }
            session.set_parameters(session.version, expiry, expiry == 0, changes);
        }
        // 5.0: reason 0x04 asks for the will all the same.
        let reason = if disconnect.reason == ReasonCode::DisconnectWithWillMessage {
            CloseReason::ClientDisconnectWithWill
        } else {
            CloseReason::ClientDisconnect
        };
        self.connection_lost(conn, reason);
    }

    pub(super) fn keepalive_expired(&mut self, conn: ConnId) {
        let messages = self.config.connection_messages;
        let Some(c) = self.conn_mut(conn) else { return };
        if messages {
            log::info!("Client {} has exceeded timeout, disconnecting.", c.name());
        }
        if c.version() == Some(ProtocolVersion::V5) {
            let packet = Packet::Disconnect(Disconnect::with_reason(ReasonCode::KeepAliveTimeout));
            self.send_packet(conn, &packet);
        }
        self.close_conn(conn, CloseReason::KeepAlive);
    }

    /// A packet broke a rule the decoder cannot see (a second CONNECT, say).
    pub(super) fn protocol_violation(&mut self, conn: ConnId, what: &str) {
        let messages = self.config.connection_messages;
        let Some(c) = self.conn(conn) else { return };
        if messages {
            log::info!(
                "Client {} disconnected due to protocol error ({what}).",
                c.name()
            );
        }
        self.disconnect_with(conn, ReasonCode::ProtocolError, what);
    }

    /// Closes a connection for something it did: 5.0 clients get a DISCONNECT with the
    /// reason code. Why goes to the log, not into a Reason String: Mosquitto sends none, and
    /// tools compare the DISCONNECT's bytes. The will is published.
    pub(super) fn disconnect_with(&mut self, conn: ConnId, reason: ReasonCode, why: &str) {
        if self.conn(conn).and_then(|c| c.version()) == Some(ProtocolVersion::V5) {
            let name = self.conn_name(conn);
            log::debug!("Sending DISCONNECT to {name} (rc{}): {why}", reason as u8);
            let disconnect = Disconnect::with_reason(reason);
            self.send_packet(conn, &Packet::Disconnect(disconnect));
        }
        self.close_conn(conn, CloseReason::ProtocolError);
    }

    pub(super) fn decode_failed(&mut self, conn: ConnId, error: DecodeError) {
        let messages = self.config.connection_messages;
        let Some(c) = self.conn_mut(conn) else { return };
        let connected = c.session.is_some();
        let name = c.name().to_string();
        if !connected {
            // A CONNECT the broker cannot take (or anything else before one).
            self.stats().refused(super::stats::Refused::Protocol);
        }
        if let DecodeError::UnsupportedProtocolVersion(level) = error {
            // [MQTT-3.1.2-2] CONNACK 0x01 (in the 3.1.1 form: the client's form is unknown).
            if messages {
                log::info!("Client {name} disconnected, unsupported protocol version {level}.");
            }
            let ack = ConnAck {
                session_present: false,
                reason: ReasonCode::UnsupportedProtocolVersion,
                properties: Properties::default(),
            };
            self.send_packet(conn, &Packet::ConnAck(ack));
            self.close_conn(conn, CloseReason::Refused);
            return;
        }
        if messages {
            let kind = match error.reason_code() {
                ReasonCode::MalformedPacket => "malformed packet",
                ReasonCode::PacketTooLarge => "oversize packet",
                _ => "protocol error",
            };
            log::info!("Client {name} disconnected due to {kind}: {error}.");
        }
        // 5.0: a DISCONNECT with the reason, once connected. [MQTT-4.13.1-1]
        if connected {
            self.disconnect_with(conn, error.reason_code(), &error.to_string());
        } else {
            self.close_conn(conn, CloseReason::ProtocolError);
        }
    }

    /// The peer went away or failed.
    pub(super) fn connection_lost(&mut self, conn: ConnId, reason: CloseReason) {
        let Some(c) = self.conn(conn) else { return };
        if c.link().is_some() {
            // A bridge's connection: `link_closed` says what happened.
            self.close_conn(conn, reason);
            return;
        }
        if self.config.connection_messages && c.session.is_some() {
            match reason {
                CloseReason::PeerClosed => log::info!("Client {} closed its connection.", c.name()),
                CloseReason::SocketError => {
                    log::info!("Socket error on client {}, disconnecting.", c.name())
                }
                CloseReason::ClientDisconnect | CloseReason::ClientDisconnectWithWill => {
                    log::info!("Client {} disconnected.", c.name())
                }
                _ => {}
            }
        }
        if reason == CloseReason::Shutdown
            && c.version() == Some(ProtocolVersion::V5)
            && c.session.is_some()
        {
            self.send_packet(
                conn,
                &Packet::Disconnect(Disconnect::with_reason(ReasonCode::ServerShuttingDown)),
            );
        }
        self.close_conn(conn, reason);
    }

    /// Closes `conn` and settles its session: the will, and the end of a clean session.
    pub(super) fn close_conn(&mut self, conn: ConnId, reason: CloseReason) {
        let Some(c) = self.take_conn(conn) else {
            return;
        };
        if let Some(link) = c.link() {
            self.link_closed(c, link, reason);
            return;
        }
        let session_id = c.session;
        self.close_socket(c);
        let Some(id) = session_id else { return };
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        match session.connection_ended(self.clock.now, reason.publishes_will()) {
            WillAfterClose::None => {}
            WillAfterClose::Now(will) => self.publish_will(id, will),
            WillAfterClose::At(due) => self.schedule_will(id, due),
        }
        let Some(session) = self.sessions.get(&id) else {
            return;
        };
        if session.clean && reason != CloseReason::Shutdown {
            let session = self.sessions.remove(&id).expect("just found");
            self.end_session(session, true);
        } else {
            self.schedule_expiry(id);
            // Its will went, waits out its delay, or was cancelled by a DISCONNECT.
            self.record_changed(id);
        }
    }

    /// Starts an offline session's expiry clock: 5.0's Session Expiry Interval
    /// [MQTT-3.1.2-23], or `persistent_client_expiration` for a session that would never
    /// expire (3.x clean session 0, 5.0 0xFFFFFFFF).
    pub(super) fn schedule_expiry(&mut self, id: SessionId) {
        self.schedule_expiry_since(id, self.clock.now);
    }

    /// As `schedule_expiry`, for a session whose client went away at `since` (on another
    /// node: a session taken over from its record).
    pub(super) fn schedule_expiry_since(&mut self, id: SessionId, since: Instant) {
        if !self.sessions.contains_key(&id) {
            return;
        }
        let persistent_expiration = self.config.persistent_client_expiration;
        self.sessions.start_expiry(id, since, persistent_expiration);
        self.journal_disconnected(id);
    }

    /// Ends offline sessions whose expiry interval has run out.
    pub(super) fn expire_sessions(&mut self, now: Instant) {
        while let Some(id) = self.sessions.next_expired(now) {
            // The session ends before its will's delay: the will goes now (while the session,
            // whose rights the will is checked against, still exists).
            let will = self
                .sessions
                .get_mut(&id)
                .and_then(|s| s.take_waiting_will());
            if let Some(will) = will {
                self.publish_will(id, will);
            }
            let session = self.sessions.remove(&id).expect("just found");
            if self.config.connection_messages {
                log::info!("Expiring client {} due to timeout.", session.client_id);
            }
            self.shared.stats[self.id]
                .clients_expired
                .fetch_add(1, Ordering::Relaxed);
            self.end_session(session, true);
        }
    }

    /// Removes a session's subscriptions and, if asked, its registry entry.
    #[allow(
        clippy::boxed_local,
        reason = "sessions live boxed (the table, the handoffs); the box is freed here"
    )]
    pub(super) fn end_session(&mut self, session: Box<Session>, unregister: bool) {
        let (id, client_id) = (session.id, session.client_id.clone());
        if session.cluster_revision() != 0 {
            self.release_in_cluster(client_id.clone(), session.cluster_revision());
        }
        let subscriptions = session.end(self.sessions.changes());
        // Its subscriptions leave the trie a slice a turn (`sweep_trie`): an ended session's
        // id is never used again, and what reaches it meanwhile is passed over. A share
        // group passes it over from now on (a message must not be given to a member that
        // is gone while another could take it).
        // (Published once a turn for all of them, before the sweep: `sweep_trie`.)
        let in_groups = subscriptions.keys().any(|f| f.starts_with(SHARE_PREFIX));
        if in_groups {
            self.subs.trie.leaving_groups.insert(id);
        }
        if !subscriptions.is_empty() {
            self.subs
                .trie
                .sweep
                .push_back((id, subscriptions.into_keys(), in_groups));
        }
        // (Not while a later connection here waits for a session of the client: the claim
        // named here is its own.)
        if unregister && self.handover.claims.waiting(&client_id).is_none() {
            self.shared.release_claim(&client_id, self.id);
        }
    }

    /// The broker stops: every connection closes (its session going offline), what the
    /// journal has is synced, and the last packets go out.
    pub(super) fn shut_down(&mut self) {
        self.apply_trie_ops();
        self.sweep_trie(true);
        let ids: Vec<ConnId> = self.conns.iter().flatten().map(|c| c.id).collect();
        for conn in ids {
            self.connection_lost(conn, CloseReason::Shutdown);
        }
        if self.disk.journal.is_some() {
            self.deliver_in_transit();
        }
        self.journal_close();
        self.flush();
    }

    /// Hands a closing connection's last bytes to the backend and closes its socket; with
    /// a journal, at the end of the turn (`close_sockets`), once the turn is on disk: its
    /// last bytes may acknowledge what the turn changed (a PUBLISH and a DISCONNECT read
    /// together).
    pub(super) fn close_socket(&mut self, c: Box<super::conn::Conn>) {
        self.mark_published();
        if self.disk.journal.is_some() {
            self.output.to_close.push(c);
        } else {
            self.close_socket_now(c, true);
        }
    }

    /// The sockets closed this turn, after its journal commit: their last bytes go if the
    /// journal is durable, and are dropped if not (the client resends what was not
    /// acknowledged when it connects again).
    pub(super) fn close_sockets(&mut self) {
        if self.output.to_close.is_empty() {
            return;
        }
        let durable = self.disk.journal.as_deref().is_none_or(|j| j.durable());
        for c in std::mem::take(&mut self.output.to_close) {
            self.close_socket_now(c, durable);
        }
    }

    fn close_socket_now(&mut self, mut c: Box<super::conn::Conn>, durable: bool) {
        let mut pieces: Vec<bytes::Bytes> = c.take_out().collect();
        if !durable || c.held.contains(super::conn::Hold::DISK) {
            pieces.clear();
        }
        let Some(layers) = c.layers.as_ref() else {
            for piece in pieces {
                self.backend.send(c.id, piece);
            }
            self.backend.close(c.id);
            return;
        };
        // A TLS or WebSocket connection's last bytes end with its close. Bytes still
        // waiting to be sealed are not sent (`sealing.rs`), nor what would follow them, cut
        // short: only the close; nor is a last turn's output larger than what is sealed
        // ahead of a socket (a large message), which would be sealed in this turn at once.
        let last_turn: usize = pieces.iter().map(bytes::Bytes::len).sum();
        let cut_short = !layers.unsealed.is_empty() || last_turn > crate::limits::SEAL_AHEAD_BYTES;
        let mut pieces = if cut_short { Vec::new() } else { pieces };
        let last = pieces.pop().unwrap_or_default();
        for piece in pieces {
            let sealed = super::transport::seal(&mut c, piece, false);
            self.backend.send(c.id, sealed);
        }
        let last = super::transport::seal(&mut c, last, true);
        if !last.is_empty() {
            self.backend.send(c.id, last);
        }
        self.backend.close(c.id);
    }
}
