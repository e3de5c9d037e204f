//! A bridge's way to a connection: when an attempt is due and where it goes (a lookup on
//! a helper thread for a host name), the connection through the backend (with TLS),
//! deadlines, keepalive, probing the first address again, and a 3.x remote's answer to a
//! 5.0 CONNECT.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::show_address;
use crate::bridge::State;
use crate::codec::{Decoder, Packet, ProtocolVersion};
use crate::config::bridge::StartType;
use crate::shard::close::CloseReason;
use crate::shard::conn::Conn;
use crate::shard::io::{Backend, ConnId};
use crate::shard::Shard;

/// How long a host name lookup may take before the attempt counts as failed.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);

impl<B: Backend> Shard<B> {
    /// On the timer tick: attempts that are due, lookups that finished, deadlines,
    /// keepalive, a lazy bridge's threshold and idle timeout, probes of the first address.
    pub(in crate::shard) fn check_bridges(&mut self) {
        let now = self.clock.now;
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
        let now = self.clock.now;
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
                    deadline: self.clock.now + LOOKUP_TIMEOUT,
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
        self.free_slot(conn);
        let link = &self.links[i];
        let packet_size_max = match link.config.max_packet_size {
            0 => self.config.packet_size_max,
            n => n as usize,
        };
        let mut c = Box::new(Conn::new(conn, Some(to), 0, packet_size_max, self.stamp()));
        c.decoder = Decoder::client(link.version, packet_size_max);
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
        let deadline = self.clock.now + Duration::from_secs(link.config.keepalive.max(5).into());
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
        link.went_down(self.clock.now, true);
    }

    /// `Event::Connected`: a bridge's connection is made (send CONNECT), or a probe of a
    /// first address answered (go back to it). False if `conn` is neither.
    pub(in crate::shard) fn on_connected(&mut self, conn: ConnId) -> bool {
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
                retry_at: Some(self.clock.now),
            };
            return true;
        }
        let Some(i) = self.conn(conn).and_then(|c| c.link()) else {
            return false;
        };
        let connect = self.links[i].connect_packet();
        self.links[i].last_sent = self.clock.now;
        log::debug!(
            "Sending CONNECT to {} as {}",
            show_address(self.links[i].current_address()),
            connect.client_id.as_str()
        );
        self.send_packet(conn, &Packet::Connect(Box::new(connect)));
        true
    }

    /// `Event::Closed` for a probe (not a connection of the shard's table).
    pub(in crate::shard) fn on_probe_closed(&mut self, conn: ConnId) -> bool {
        match self.links.iter_mut().find(|l| l.probe == Some(conn)) {
            Some(link) => {
                link.probe = None;
                true
            }
            None => false,
        }
    }

    /// A 5.0 bridge's remote that answers with a 3.x CONNACK (remaining length 2; a 5.0
    /// CONNACK has at least 3) does not speak 5.0: as Mosquitto, the next attempt speaks
    /// 3.1.1 if it said "unacceptable protocol version". True if that is what came.
    pub(in crate::shard) fn old_connack(&mut self, conn: ConnId) -> bool {
        let Some(c) = self.conn(conn) else {
            return false;
        };
        let Some(i) = c.link() else { return false };
        let old = c.version() == Some(ProtocolVersion::V5)
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
