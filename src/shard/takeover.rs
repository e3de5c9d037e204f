//! A client connecting with the id of a session this shard holds: the old connection is
//! closed [MQTT-3.1.4-3] (5.0: DISCONNECT 0x8E), its will goes if the session ends, and the
//! session carries on with the new connection (here, or handed to another shard:
//! `handover/`).

use super::io::{Backend, ConnId};
use super::Shard;
use crate::codec::{Disconnect, Packet, ProtocolVersion, ReasonCode};
use crate::router::SessionBox;
use crate::topic::SessionId;

impl<B: Backend> Shard<B> {
    /// Closes a connection that was waiting for its session, taken over by a newer one.
    pub(super) fn close_waiting(&mut self, conn: ConnId, client_id: &str) {
        if let Some(c) = self.take_conn(conn) {
            if self.config.connection_messages {
                log::info!("Client {client_id} already connected, closing old connection.");
            }
            self.close_socket(c);
        }
    }

    /// Takes this shard's session `id` for a new connection, closing its old connection.
    /// Returns it if it carries on (not clean on either side), `None` if it ended.
    pub(super) fn take_local_session(
        &mut self,
        id: SessionId,
        clean_start: bool,
    ) -> Option<SessionBox> {
        // Its subscriptions' changes so far point at this shard in the trie before it goes
        // (a later batch here would undo the new shard's).
        self.apply_trie_ops();
        if let Some(old) = self.sessions.get(&id)?.conn {
            self.cut_short_subscribing(old);
        }
        let session = self.sessions.get(&id)?;
        let ends = session.clean || clean_start;
        if let Some(old) = session.conn {
            if self.config.connection_messages {
                log::info!(
                    "Client {} already connected, closing old connection.",
                    session.client_id
                );
            }
            // [MQTT-3.1.4-3] the existing connection is closed.
            self.close_takeover(old, ends);
        }
        self.settle_subscribing(id, ends);
        let session = self.sessions.remove(&id)?;
        if ends {
            self.end_session(session, false);
            return None;
        }
        Some(session)
    }

    /// Closes `conn`, whose session is being taken over.
    fn close_takeover(&mut self, conn: ConnId, session_ends: bool) {
        let Some(mut c) = self.take_conn(conn) else {
            return;
        };
        if let Some(id) = c.session.take() {
            if let Some(session) = self.sessions.get_mut(&id) {
                let will = session.taken_over(session_ends);
                if c.version() == Some(ProtocolVersion::V5) {
                    self.send_raw(
                        &mut c,
                        &Packet::Disconnect(Disconnect::with_reason(ReasonCode::SessionTakenOver)),
                    );
                }
                if let Some(will) = will {
                    self.publish_will(id, will);
                }
            }
        }
        self.close_socket(c);
    }
}
