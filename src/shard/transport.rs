//! The layers between a connection's socket and its codec, on the shard: TLS (`tls/link.rs`)
//! and WebSockets (`ws/`), either or both (`wss://`: WebSockets inside TLS). Received bytes
//! go up through them into the connection's input; what the codec encodes goes down through
//! them before the backend sends it. A client certificate can name the user
//! (`use_identity_as_username`, `use_subject_as_username`).

use crate::limits::HANDSHAKE_TIME_PER_TURN;
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::close::CloseReason;
use super::conn::Conn;
use super::io::{Backend, ConnId};
use super::Shard;
use crate::config::Listener;

/// Records a connection may have waiting for its turn. A handshake needs a few kilobytes
/// (certificate chains included); more is a client flooding a broker that is busy.
const HELD_MAX: usize = 256 * 1024;

/// What TLS and WebSocket connections leave for the shard to carry on with.
#[derive(Default)]
pub(super) struct Transport {
    /// TLS handshake time this turn, and handshakes held to the next.
    pub(super) handshakes: Handshakes,
    /// Output waiting to be sealed (`sealing.rs`).
    pub(super) sealing: super::sealing::Sealing,
}

/// This turn's handshake time, and the connections whose handshake records wait for the
/// next turn (oldest first).
#[derive(Default)]
pub(super) struct Handshakes {
    spent: Duration,
    waiting: VecDeque<ConnId>,
}

impl Handshakes {
    /// Whether a turn should not sleep: records are waiting.
    pub(super) fn pending(&self) -> bool {
        !self.waiting.is_empty()
    }
}

/// MQTT bytes for the peer, framed (WebSockets) and sealed (TLS) as the connection needs;
/// `closing`: its last bytes, with a close frame and close_notify.
pub(super) fn seal(c: &mut Conn, plain: Bytes, closing: bool) -> Bytes {
    let Some(layers) = c.layers.as_deref_mut() else {
        return plain;
    };
    let framed = match layers.ws.as_mut() {
        Some(ws) => {
            let mut out = Vec::with_capacity(plain.len() + 16);
            if !plain.is_empty() {
                ws.frame(plain, &mut out);
            }
            if closing {
                ws.close(&mut out);
            }
            Bytes::from(out)
        }
        None => plain,
    };
    let Some(link) = layers.tls.as_mut() else {
        return framed;
    };
    // Records add at most ~22 bytes per 16 KiB record (TLS 1.3 AEAD tag, header, type).
    let mut sealed = Vec::with_capacity(framed.len() + 64 + framed.len() / 512);
    link.seal(&framed, &mut sealed);
    if closing {
        link.close_notify(&mut sealed);
    }
    Bytes::from(sealed)
}

/// Bytes from the peer up through the connection's layers into its input; what the layers
/// answer (handshakes, pongs, close handshakes, alerts, an HTTP error) goes to `reply`,
/// ready to send. `Ok(true)` when the peer closed.
fn open(c: &mut Conn, data: &[u8], reply: &mut Vec<u8>) -> Result<bool, String> {
    let mut peer_closed = false;
    let mut plain = BytesMut::new();
    let Some(layers) = c.layers.as_deref_mut() else {
        return Ok(false);
    };
    let (tls, ws, inbuf) = (&mut layers.tls, &mut layers.ws, &mut c.inbuf);
    let above_tls: &[u8] = match tls.as_mut() {
        Some(link) => {
            // Without WebSockets the plaintext is the input itself.
            let into = if ws.is_some() {
                &mut plain
            } else {
                &mut *inbuf
            };
            let opened = link
                .open(data, into, reply)
                .map_err(|e| format!("TLS error: {e}"))?;
            peer_closed |= opened.peer_closed;
            &plain
        }
        None => data,
    };
    if let Some(ws) = ws.as_mut() {
        let mut answer = Vec::new();
        let result = ws.received(above_tls, inbuf, &mut answer);
        // The WebSocket layer's answer goes out through TLS, if the connection has it.
        match tls.as_mut() {
            Some(link) => link.seal(&answer, reply),
            None => reply.append(&mut answer),
        }
        peer_closed |= result?.peer_closed;
    }
    Ok(peer_closed)
}

impl<B: Backend> Shard<B> {
    /// Bytes received on a connection with layers: what they carry joins the connection's
    /// input (decoded by the caller); the layers' answers go straight back. False if
    /// nothing is to be decoded now: the connection ended (a failed handshake, bad records
    /// or frames, the peer's close after its last packets), or its TLS handshake waits for
    /// the next turn.
    pub(super) fn transport_received(&mut self, conn: ConnId, data: &BytesMut) -> bool {
        let over_budget = self.transport.handshakes.spent >= HANDSHAKE_TIME_PER_TURN;
        let Some(c) = super::conn::live_mut(&mut self.conns, conn) else {
            return false;
        };
        let Some(link) = c.layers.as_deref_mut().and_then(|l| l.tls.as_mut()) else {
            return self.open_records(conn, data);
        };
        // Bytes after held ones wait behind them, so records stay in order.
        let waiting = !link.held.is_empty();
        if waiting || (over_budget && link.is_handshaking()) {
            if link.held.len() + data.len() > HELD_MAX {
                log::info!(
                    "Client connection from {} failed: more than {HELD_MAX} bytes sent during its TLS handshake.",
                    c.peer_host(&self.config)
                );
                self.connection_lost(conn, CloseReason::SocketError);
                return false;
            }
            link.held.extend_from_slice(data);
            if !waiting {
                self.transport.handshakes.waiting.push_back(conn);
                if self.transport.handshakes.waiting.len() == 1 {
                    log::debug!("TLS handshake time of this loop turn used up; handshakes wait for the next.");
                }
            }
            return false;
        }
        self.open_records(conn, data)
    }

    /// At the start of a turn: the handshakes held from the last one, oldest first, as far
    /// as this turn's handshake time goes.
    pub(super) fn resume_handshakes(&mut self) {
        self.transport.handshakes.spent = Duration::ZERO;
        while self.transport.handshakes.spent < HANDSHAKE_TIME_PER_TURN {
            let Some(conn) = self.transport.handshakes.waiting.pop_front() else {
                return;
            };
            let link = self.conn_mut(conn).and_then(|c| c.layers.as_deref_mut());
            let Some(link) = link.and_then(|l| l.tls.as_mut()) else {
                continue; // Closed meanwhile.
            };
            let held = std::mem::take(&mut link.held);
            if self.open_records(conn, &held) {
                self.process_input(conn);
            }
        }
    }

    fn open_records(&mut self, conn: ConnId, records: &[u8]) -> bool {
        let Some(c) = self.conn_mut(conn) else {
            return false;
        };
        let handshaking = (c.layers.as_ref())
            .and_then(|l| l.tls.as_ref())
            .is_some_and(|link| link.is_handshaking());
        let started = handshaking.then(Instant::now);
        let mut reply = Vec::new();
        let result = open(c, records, &mut reply);
        let (peer, listener) = (c.peer_ip, c.listener());
        if let Some(started) = started {
            self.transport.handshakes.spent += started.elapsed();
        }
        if !reply.is_empty() {
            self.count_sent(reply.len());
            self.backend.send(conn, Bytes::from(reply));
            // Pongs to a client that sends pings and never reads back up like any output.
            self.hold_if_backed_up(conn);
        }
        match result {
            Ok(true) => {
                // What came before the close is still read, all of it.
                self.input_ended(conn, CloseReason::PeerClosed);
                false
            }
            Ok(false) => true,
            Err(e) => {
                // Mosquitto logs OpenSSL's (or libwebsockets') reason and closes; so does
                // midge, with rustls's or its own.
                let host = super::conn::peer_host(peer, self.config.listener(listener));
                log::info!("Client connection from {host} failed: {e}.");
                self.connection_lost(conn, CloseReason::SocketError);
                false
            }
        }
    }

    /// A new connection gets the layers of its listener: a WebSocket upgrade to wait for,
    /// a TLS session; false if none could be made.
    pub(super) fn start_transport(&self, c: &mut Conn) -> bool {
        let listener = self.config.listener(c.listener());
        if !listener.websockets && listener.tls.is_none() {
            return true;
        }
        let layers = c.layers.get_or_insert_with(Default::default);
        if listener.websockets {
            // Until CONNECT is accepted, a frame may be only as large as a CONNECT
            // (`connect.rs` raises it to max_packet_size then).
            layers.ws = Some(crate::ws::WsLink::new(
                self.config.websockets_headers_size,
                ws_frame_max(self.config.packet_size_max, false),
            ));
        }
        let Some(tls) = &listener.tls else {
            return true;
        };
        match crate::tls::link::TlsLink::new(tls.server.clone()) {
            Ok(link) => {
                layers.tls = Some(link);
                true
            }
            Err(e) => {
                log::error!(
                    "Client connection from {} failed: TLS: {e}.",
                    c.peer_host(&self.config)
                );
                false
            }
        }
    }

    /// The user name the client certificate gives, when the listener says so:
    /// `Ok(None)` when it does not, `Err(())` when it should and there is none.
    pub(super) fn certificate_username(
        &self,
        conn: ConnId,
        listener: &Listener,
    ) -> Result<Option<String>, ()> {
        let Some(tls) = &listener.tls else {
            return Ok(None);
        };
        let settings = &tls.settings;
        if !settings.use_identity_as_username && !settings.use_subject_as_username {
            return Ok(None);
        }
        let certificate = self
            .conn(conn)
            .and_then(|c| c.layers.as_ref()?.tls.as_ref())
            .and_then(|link| link.peer_certificate());
        let name = certificate.and_then(|der| {
            if settings.use_subject_as_username {
                crate::tls::identity::subject(der)
            } else {
                crate::tls::identity::common_name(der)
            }
        });
        name.map(Some).ok_or(())
    }
}

/// The largest WebSocket frame a connection takes: what its packet limit allows (at least
/// 64 KiB), and before its CONNECT is accepted no more than a CONNECT may be.
pub(super) fn ws_frame_max(packet_size_max: usize, accepted: bool) -> usize {
    let packet_max = if accepted {
        packet_size_max
    } else {
        packet_size_max.min(crate::limits::CONNECT_PACKET_BYTES_MAX)
    };
    packet_max.max(64 * 1024)
}
