//! What goes to a TLS or WebSocket connection is framed and sealed a slice at a time, as
//! its socket drains, not all at once when it is sent: a 50 MB message to four TLS
//! subscribers was copied and encrypted in one turn (a 190 ms stall of the shard, 270 MiB
//! held; over WebSockets 280 ms and 525 MiB). What waits is the shared buffers it was
//! (`Conn::put_publish`), counted as waiting to be written like what the backend holds
//! (`Shard::unsent_bytes`, `memory_limit`), and each turn seals at most
//! `SEAL_PER_TURN_BYTES` of it over all connections, taking them in turn.

use crate::limits::{SEAL_AHEAD_BYTES, SEAL_PER_TURN_BYTES, SEAL_SLICE_BYTES};
use bytes::Bytes;

use super::io::{Backend, ConnId};
use super::{conn, transport, Shard};

/// The connections with bytes waiting to be sealed, taken in turn; how many bytes wait over
/// all of them; what this turn may still seal.
pub(super) struct Sealing {
    waiting: std::collections::VecDeque<ConnId>,
    pub(super) unsealed_bytes: usize,
    budget: usize,
}

impl Default for Sealing {
    fn default() -> Self {
        Sealing {
            waiting: Default::default(),
            unsealed_bytes: 0,
            budget: SEAL_PER_TURN_BYTES,
        }
    }
}

impl Sealing {
    /// Whether the next turn should not sleep: bytes wait that this turn had no budget for.
    pub(super) fn pending(&self) -> bool {
        self.budget == 0 && !self.waiting.is_empty()
    }
}

impl<B: Backend> Shard<B> {
    /// Bytes waiting to be written to `conn`: held by the backend, and waiting to be sealed.
    pub(super) fn unsent_bytes(&self, conn: ConnId) -> usize {
        self.backend.queued_bytes(conn) + self.conn(conn).map_or(0, |c| c.unsealed_len())
    }

    /// Hands a connection's turn output to the backend: as it is without layers; through
    /// them, a slice at a time, from here and from later turns (`seal_waiting`).
    pub(super) fn send_out(&mut self, conn: ConnId, pieces: impl Iterator<Item = Bytes>) {
        let Some(c) = conn::live_mut(&mut self.conns, conn) else {
            return;
        };
        let Some(layers) = c.layers.as_deref_mut() else {
            for data in pieces {
                self.count_sent(data.len());
                self.backend.send(conn, data);
            }
            return;
        };
        for piece in pieces.filter(|p| !p.is_empty()) {
            layers.unsealed_len += piece.len();
            self.transport.sealing.unsealed_bytes += piece.len();
            layers.unsealed.push_back(piece);
        }
        self.seal_some(conn);
        if let Some(layers) = self.conn_mut(conn).and_then(|c| c.layers.as_deref_mut()) {
            if layers.unsealed_len > 0 && !layers.sealing_listed {
                layers.sealing_listed = true;
                self.transport.sealing.waiting.push_back(conn);
            }
        }
    }

    /// At the start of a turn: seals more for the connections waiting, in turn, as far as
    /// their sockets drain and the turn's budget goes.
    pub(super) fn seal_waiting(&mut self) {
        self.transport.sealing.budget = SEAL_PER_TURN_BYTES;
        for _ in 0..self.transport.sealing.waiting.len() {
            if self.transport.sealing.budget == 0 {
                return;
            }
            let Some(conn) = self.transport.sealing.waiting.pop_front() else {
                return;
            };
            self.seal_some(conn);
            if let Some(layers) = self.conn_mut(conn).and_then(|c| c.layers.as_deref_mut()) {
                if layers.unsealed_len > 0 {
                    self.transport.sealing.waiting.push_back(conn);
                } else {
                    layers.sealing_listed = false;
                }
            }
        }
    }

    /// Seals slices of what waits for `conn` while the backend holds little for it and the
    /// turn's budget lasts.
    fn seal_some(&mut self, conn: ConnId) {
        while self.transport.sealing.budget > 0
            && self.backend.queued_bytes(conn) < SEAL_AHEAD_BYTES
        {
            let Some(c) = conn::live_mut(&mut self.conns, conn) else {
                return;
            };
            let Some(layers) = c.layers.as_deref_mut() else {
                return;
            };
            let Some(front) = layers.unsealed.front_mut() else {
                return;
            };
            // The last slice of a turn may go past its budget (no tiny records or frames).
            let take = front.len().min(SEAL_SLICE_BYTES);
            let slice = if take == front.len() {
                layers.unsealed.pop_front().unwrap_or_default()
            } else {
                front.split_to(take)
            };
            layers.unsealed_len -= take;
            self.transport.sealing.unsealed_bytes -= take;
            self.transport.sealing.budget = self.transport.sealing.budget.saturating_sub(take);
            let sealed = transport::seal(c, slice, false);
            self.count_sent(sealed.len());
            self.backend.send(conn, sealed);
        }
    }

    /// A connection leaving the table: what waits for it to be sealed leaves the count
    /// (the bytes themselves go with it, unsent, `close_socket`).
    pub(super) fn forget_unsealed(&mut self, c: &mut conn::Conn) {
        if let Some(layers) = c.layers.as_deref_mut() {
            self.transport.sealing.unsealed_bytes -= std::mem::take(&mut layers.unsealed_len);
        }
    }

    /// Counts bytes handed to the backend for a client (`$SYS/broker/bytes/sent`).
    pub(super) fn count_sent(&self, bytes: usize) {
        self.stats()
            .bytes_sent
            .fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
    }
}
