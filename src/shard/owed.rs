//! Retained messages owed to new subscriptions, sent at the pace the client reads: never
//! all at once (a filter may match a hundred thousand of them), never dropped.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::encode::Variants;
use super::io::Backend;
use super::Shard;
use crate::codec::QoS;
use crate::types::{Message, SessionId, Target};

impl<B: Backend> Shard<B> {
    /// Owes `messages` (retained, matching a new subscription) to a session; they go out as
    /// its client reads (`send_owed`).
    pub(super) fn owe_retained(
        &mut self,
        session_id: SessionId,
        messages: Vec<Arc<Message>>,
        qos: QoS,
        identifier: Option<u32>,
    ) {
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        let was_idle = !session.outgoing().owes();
        let dropped = session.owe(messages, qos, identifier);
        if dropped > 0 {
            log::info!(
                "Client {} is owed too many retained messages; {dropped} dropped.",
                session.client_id
            );
            self.shared.stats[self.id]
                .dropped_queue_full
                .fetch_add(dropped as u64, Ordering::Relaxed);
        }
        if was_idle && session.outgoing().owes() {
            self.owing.push(session_id);
        }
        self.send_owed(session_id);
    }

    /// Sends what a session is owed while its client keeps up: until its connection has
    /// `OWED_WRITE_MAX` bytes waiting, or (QoS 1/2) its inflight window is full. Returns
    /// false once nothing is owed any more (or the session is gone).
    pub(super) fn send_owed(&mut self, session_id: SessionId) -> bool {
        let inflight_max = self.config.inflight_max;
        loop {
            let Some(session) = self.sessions.get(&session_id) else {
                return false;
            };
            let Some(conn) = session.conn else {
                return session.outgoing().owes();
            };
            let Some(qos) = session
                .outgoing()
                .next_owed_qos(self.config.upgrade_outgoing_qos)
            else {
                return false;
            };
            let window_full = !session.outgoing().has_room(session.window(inflight_max));
            let unsent = self.backend.queued_bytes(conn);
            let waiting = self.conn(conn).map_or(0, |c| c.out.len()) + unsent;
            if qos != QoS::AtMostOnce && window_full {
                return true; // An acknowledgement makes room.
            }
            if waiting >= OWED_WRITE_MAX {
                // The socket drains what it holds (and says so when it was full); what is
                // only in this turn's buffer goes out at the end of the turn, and the next
                // turn must come at once to go on.
                self.owed_next_turn |= unsent < OWED_WRITE_MAX;
                return true;
            }
            let owed = self
                .sessions
                .get_mut(&session_id)
                .and_then(|s| s.take_owed())
                .expect("just seen");
            // Variants are per message: each retained message is encoded on its own.
            let target = Target {
                session: session_id,
                qos,
                // [MQTT-3.3.1-8] the RETAIN flag is set on retained messages sent for a new
                // subscription.
                retain: true,
                identifiers: owed.identifier.into_iter().collect(),
            };
            self.deliver_to_session(&owed.message, &target, &mut Variants::default());
        }
    }

    /// Goes on with every session owed retained messages (once per turn).
    pub(super) fn send_all_owed(&mut self) {
        self.owed_next_turn = false;
        let mut owing = std::mem::take(&mut self.owing);
        owing.retain(|&id| self.send_owed(id));
        owing.append(&mut self.owing);
        self.owing = owing;
    }
}

/// Bytes a connection may have waiting to be written before owed retained messages wait
/// for it to drain.
const OWED_WRITE_MAX: usize = 256 * 1024;
