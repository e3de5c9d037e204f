//! TLS connections on the shard: received records are opened into the connection's input,
//! what the codec encodes is sealed before the backend sends it (`tls/link.rs`), and a client
//! certificate can name the user (`use_identity_as_username`, `use_subject_as_username`).

use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::close::CloseReason;
use super::conn::Conn;
use super::io::{Backend, ConnId};
use super::Shard;
use crate::config::Listener;

/// CPU time a shard spends on TLS handshakes per loop turn before it holds the rest of them
/// to the next turn: a handshake signs (an RSA-2048 signature takes about a millisecond), and
/// a storm of them must not stall the shard's connected clients for longer than this.
const HANDSHAKE_TIME_PER_TURN: Duration = Duration::from_millis(2);
/// Records a connection may have waiting for its turn. A handshake needs a few kilobytes
/// (certificate chains included); more is a client flooding a broker that is busy.
const HELD_MAX: usize = 256 * 1024;

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

/// Plaintext for the peer, sealed into records if the connection is TLS.
pub(super) fn seal(c: &mut Conn, plain: Bytes, close_notify: bool) -> Bytes {
    let Some(link) = c.tls.as_mut() else {
        return plain;
    };
    // Records add at most ~22 bytes per 16 KiB record (TLS 1.3 AEAD tag, header, type).
    let mut sealed = Vec::with_capacity(plain.len() + 64 + plain.len() / 512);
    link.seal(&plain, &mut sealed);
    if close_notify {
        link.close_notify(&mut sealed);
    }
    Bytes::from(sealed)
}

impl<B: Backend> Shard<B> {
    /// Bytes received on a TLS connection: their plaintext joins the connection's input
    /// (decoded by the caller); handshake answers go straight back. False if nothing is to
    /// be decoded now: the connection ended (a failed handshake, bad records, the peer's
    /// close_notify after its last packets), or its handshake waits for the next turn.
    pub(super) fn tls_received(&mut self, conn: ConnId, data: &BytesMut) -> bool {
        let over_budget = self.handshakes.spent >= HANDSHAKE_TIME_PER_TURN;
        let Some(c) = self.conn_mut(conn) else {
            return false;
        };
        let Some(link) = c.tls.as_mut() else {
            return true;
        };
        // Bytes after held ones wait behind them, so records stay in order.
        let waiting = !link.held.is_empty();
        if waiting || (over_budget && link.is_handshaking()) {
            if link.held.len() + data.len() > HELD_MAX {
                log::info!(
                    "Client connection from {} failed: more than {HELD_MAX} bytes sent during its TLS handshake.",
                    c.peer.ip()
                );
                self.connection_lost(conn, CloseReason::SocketError);
                return false;
            }
            link.held.extend_from_slice(data);
            if !waiting {
                self.handshakes.waiting.push_back(conn);
                if self.handshakes.waiting.len() == 1 {
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
        self.handshakes.spent = Duration::ZERO;
        while self.handshakes.spent < HANDSHAKE_TIME_PER_TURN {
            let Some(conn) = self.handshakes.waiting.pop_front() else {
                return;
            };
            let Some(link) = self.conn_mut(conn).and_then(|c| c.tls.as_mut()) else {
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
        let Some(link) = c.tls.as_mut() else {
            return true;
        };
        let handshaking = link.is_handshaking();
        let started = handshaking.then(Instant::now);
        let mut reply = Vec::new();
        let result = link.open(records, &mut c.inbuf, &mut reply);
        let peer = c.peer;
        if let Some(started) = started {
            self.handshakes.spent += started.elapsed();
        }
        if !reply.is_empty() {
            self.stats()
                .bytes_sent
                .fetch_add(reply.len() as u64, Ordering::Relaxed);
            self.backend.send(conn, Bytes::from(reply));
        }
        match result {
            Ok(opened) if opened.peer_closed => {
                // What came before the close_notify is still read.
                self.process_input(conn);
                self.connection_lost(conn, CloseReason::PeerClosed);
                false
            }
            Ok(_) => true,
            Err(e) => {
                // Mosquitto logs OpenSSL's reason and closes; so does midge, with rustls's.
                log::info!(
                    "Client connection from {} failed: TLS error: {e}.",
                    peer.ip()
                );
                self.connection_lost(conn, CloseReason::SocketError);
                false
            }
        }
    }

    /// A new connection on a TLS listener gets its TLS session; false if none could be made.
    pub(super) fn start_tls(&self, c: &mut Conn) -> bool {
        let Some(tls) = &self.config.listener(c.listener).tls else {
            return true;
        };
        match crate::tls::link::TlsLink::new(tls.server.clone()) {
            Ok(link) => {
                c.tls = Some(Box::new(link));
                true
            }
            Err(e) => {
                log::error!("Client connection from {} failed: TLS: {e}.", c.peer.ip());
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
            .and_then(|c| c.tls.as_ref())
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
