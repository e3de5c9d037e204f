//! A connection accepted on one of the shard's listening sockets: the listener's
//! connection limit, the connection record, its TLS or WebSocket layers, and Mosquitto's
//! log line.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use super::conn::{self, Conn};
use super::io::{Backend, ConnId};
use super::{stats, Shard};

impl<B: Backend> Shard<B> {
    pub(super) fn on_accepted(
        &mut self,
        conn: ConnId,
        peer: Option<SocketAddr>,
        local_port: u16,
        socket: usize,
    ) {
        self.free_slot(conn);
        let listener = self
            .shared
            .listener_of_socket
            .get(socket)
            .copied()
            .unwrap_or(0);
        // max_connections (per listener): over the limit, the new connection is
        // closed at once.
        let count = &self.shared.listener_connections[listener];
        let open = count.fetch_add(1, Ordering::AcqRel) + 1;
        if self
            .config
            .listener(listener)
            .connections_max
            .is_some_and(|max| open > max)
        {
            count.fetch_sub(1, Ordering::AcqRel);
            self.stats().refused(stats::Refused::MaxConnections);
            log::info!(
                "Client connection from {} denied: max_connections exceeded.",
                conn::peer_host(peer.map(|p| p.ip()), self.config.listener(listener))
            );
            self.backend.close(conn);
            return;
        }
        let index = conn.slot();
        self.shared.connections.fetch_add(1, Ordering::AcqRel);
        if self.conns.len() <= index {
            self.conns.resize_with(index + 1, || None);
        }
        let mut c = Box::new(Conn::new(
            conn,
            peer,
            listener,
            // Until CONNECT is accepted, a packet may be only as large as a CONNECT needs.
            (self.config.packet_size_max).min(crate::limits::CONNECT_PACKET_BYTES_MAX),
            self.stamp(),
        ));
        if !self.start_transport(&mut c) {
            self.shared.connections.fetch_sub(1, Ordering::AcqRel);
            count.fetch_sub(1, Ordering::AcqRel);
            self.backend.close(conn);
            return;
        }
        // Mosquitto logs no such line for a WebSocket client (its WebSocket
        // library accepts the connection); midge neither.
        if self.config.connection_messages && !self.config.listener(listener).websockets {
            log::info!(
                "New connection from {}:{} on port {local_port}.",
                c.peer_host(&self.config),
                c.peer_port(),
            );
        }
        log::debug!(
            "Connection from {}:{} is served by shard {}.",
            c.peer_host(&self.config),
            c.peer_port(),
            self.id
        );
        self.conns[index] = Some(c);
    }
}
