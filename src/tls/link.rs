//! One connection's TLS session on its shard: received records in, plaintext out to the
//! codec; plaintext from the codec in, records out to the backend. No I/O of its own.

use bytes::BytesMut;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};
use std::io::{Read, Write};
use std::sync::Arc;

/// Bytes rustls may hold for one connection, each way, before it must be drained: the shard
/// drains both after every call, so this bounds a connection's TLS buffering.
const BUFFER_LIMIT: usize = 64 * 1024;

pub struct TlsLink {
    /// The server side for a TLS listener's clients, the client side for a bridge.
    session: Connection,
    /// Records received while the shard had no handshake time left this turn, in order;
    /// opened first on the next turn (see `shard/tls.rs`). At most one turn's read.
    pub held: BytesMut,
}

/// What came of received records.
#[derive(Debug, Default)]
pub struct Opened {
    /// The peer sent close_notify: no more plaintext will come.
    pub peer_closed: bool,
}

impl TlsLink {
    pub fn new(config: Arc<ServerConfig>) -> Result<TlsLink, rustls::Error> {
        Ok(Self::with(ServerConnection::new(config)?.into()))
    }

    /// The client side of a connection to `server` (a bridge's): the ClientHello waits in
    /// it, sealed out with the first bytes sent.
    pub fn client(
        config: Arc<ClientConfig>,
        server: rustls::pki_types::ServerName<'static>,
    ) -> Result<TlsLink, rustls::Error> {
        Ok(Self::with(ClientConnection::new(config, server)?.into()))
    }

    fn with(mut session: Connection) -> TlsLink {
        session.set_buffer_limit(Some(BUFFER_LIMIT));
        TlsLink {
            session,
            held: BytesMut::new(),
        }
    }

    pub fn is_handshaking(&self) -> bool {
        self.session.is_handshaking()
    }

    /// Takes received records: appends their plaintext to `plain` and what must go back to
    /// the peer (handshake messages; an alert on error) to `reply`.
    pub fn open(
        &mut self,
        mut records: &[u8],
        plain: &mut BytesMut,
        reply: &mut Vec<u8>,
    ) -> Result<Opened, rustls::Error> {
        let mut opened = Opened::default();
        while !records.is_empty() {
            // rustls takes at most one record's worth at a time; what it takes is
            // processed before the next read, so its buffers stay bounded.
            match self.session.read_tls(&mut records) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    self.drain_records(reply);
                    return Err(rustls::Error::General(format!("reading records: {e}")));
                }
            }
            let state = match self.session.process_new_packets() {
                Ok(state) => state,
                Err(e) => {
                    // The alert rustls queued for the peer goes out before the close.
                    self.drain_records(reply);
                    return Err(e);
                }
            };
            let readable = state.plaintext_bytes_to_read();
            if readable > 0 {
                let start = plain.len();
                plain.resize(start + readable, 0);
                self.session
                    .reader()
                    .read_exact(&mut plain[start..])
                    .expect("rustls said this much plaintext is ready");
            }
            opened.peer_closed |= state.peer_has_closed();
        }
        self.drain_records(reply);
        Ok(opened)
    }

    /// Seals `plain` into records appended to `out`.
    pub fn seal(&mut self, mut plain: &[u8], out: &mut Vec<u8>) {
        while !plain.is_empty() {
            let taken = self.session.writer().write(plain).unwrap_or(0);
            plain = &plain[taken..];
            let drained = self.drain_records(out);
            if taken == 0 && !drained {
                // Cannot happen with the buffers drained after every write; guard against
                // a loop that would never end.
                log::error!(
                    "TLS: {} plaintext bytes could not be sealed; dropped.",
                    plain.len()
                );
                return;
            }
        }
    }

    /// Seals a close_notify alert into `out`: the last records of a connection we close.
    pub fn close_notify(&mut self, out: &mut Vec<u8>) {
        self.session.send_close_notify();
        self.drain_records(out);
    }

    /// The peer's certificate (end entity), once the handshake checked it.
    pub fn peer_certificate(&self) -> Option<&[u8]> {
        Some(self.session.peer_certificates()?.first()?.as_ref())
    }

    fn drain_records(&mut self, out: &mut Vec<u8>) -> bool {
        let mut any = false;
        while self.session.wants_write() {
            match self.session.write_tls(out) {
                Ok(0) | Err(_) => break,
                Ok(_) => any = true,
            }
        }
        any
    }
}
