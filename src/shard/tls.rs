//! TLS connections on the shard: received records are opened into the connection's input,
//! what the codec encodes is sealed before the backend sends it (`tls/link.rs`), and a client
//! certificate can name the user (`use_identity_as_username`, `use_subject_as_username`).

use bytes::{Bytes, BytesMut};
use std::sync::atomic::Ordering;

use super::close::CloseReason;
use super::conn::Conn;
use super::io::{Backend, ConnId};
use super::Shard;
use crate::config::Listener;

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
    /// (decoded by the caller); handshake answers go straight back. False if the connection
    /// ended (a failed handshake, bad records, or the peer's close_notify after its last
    /// packets).
    pub(super) fn tls_received(&mut self, conn: ConnId, data: &BytesMut) -> bool {
        let Some(c) = self.conn_mut(conn) else {
            return false;
        };
        let Some(link) = c.tls.as_mut() else {
            return true;
        };
        let mut reply = Vec::new();
        let result = link.open(data, &mut c.inbuf, &mut reply);
        let peer = c.peer;
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
