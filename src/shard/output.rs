//! What a shard sends its clients: packets encoded into each connection's turn buffer,
//! and the buffers handed to the backend, one piece per connection, at the end of the turn.

use std::sync::atomic::Ordering;

use super::io::{Backend, ConnId};
use super::{conn, Shard};
use crate::codec::{Packet, ProtocolVersion};

/// What a loop turn sends: the connections it deals with at its end, and what
/// `memory_limit` counts of the bytes waiting for clients.
pub(super) struct Output {
    /// Connections with bytes in their `out`, to hand to the backend (`flush`).
    pub(super) to_flush: Vec<ConnId>,
    /// Connections closed this turn, closed at its end (`close::close_sockets`). Boxed as
    /// the slab keeps them: they move in and out without being copied.
    #[allow(clippy::vec_box)]
    pub(super) to_close: Vec<Box<conn::Conn>>,
    pub(super) memory: WriteMemory,
}

impl Output {
    pub(super) fn new(memory_limit: usize) -> Output {
        Output {
            to_flush: Vec::new(),
            to_close: Vec::new(),
            memory: WriteMemory::new(memory_limit),
        }
    }
}

/// What `memory_limit` counts of the bytes waiting for clients, beside the backend's own
/// count and what is kept for them (`Shared::kept_bytes`).
pub(super) struct WriteMemory {
    /// `memory_limit` in force.
    pub(super) limit: usize,
    /// The bytes other shards had waiting for their clients at this turn's start.
    pub(super) waiting_elsewhere: usize,
    /// The bytes this shard encoded for its clients this turn, not yet handed to the
    /// backend.
    pub(super) encoded_this_turn: usize,
}

impl WriteMemory {
    fn new(limit: usize) -> WriteMemory {
        WriteMemory {
            limit,
            waiting_elsewhere: 0,
            encoded_this_turn: 0,
        }
    }
}

impl<B: Backend> Shard<B> {
    /// Encodes `packet` into the connection's turn buffer.
    /// False if it could not be encoded (logged) or the connection is gone.
    pub(super) fn send_packet(&mut self, conn: ConnId, packet: &Packet) -> bool {
        self.send_packet_at(conn, packet, None)
    }

    /// As `send_packet`, but written at `at` in what goes out this turn (before what was
    /// added since `at` was its `out_len()`), if given.
    pub(super) fn send_packet_at(
        &mut self,
        conn: ConnId,
        packet: &Packet,
        at: Option<usize>,
    ) -> bool {
        let Some(c) = self.conn_mut(conn) else {
            return false;
        };
        let version = c.version().unwrap_or(ProtocolVersion::V311);
        let was_empty = c.out_len() == 0;
        let encoded = match at.filter(|&at| at < c.out_len()) {
            None => {
                let start = c.out.len();
                let encoded = packet.encode(version, &mut c.out).map(|_| ());
                if encoded.is_err() {
                    c.out.truncate(start);
                }
                encoded
            }
            Some(at) => packet
                .to_bytes(version)
                .map(|bytes| c.insert_out(at, &bytes)),
        };
        if let Err(e) = encoded {
            log::error!(
                "Error: cannot encode {} for {}: {e}",
                packet.name(),
                c.name()
            );
            return false;
        }
        self.shared.stats[self.id]
            .packets_sent
            .fetch_add(1, Ordering::Relaxed);
        if was_empty {
            self.output.to_flush.push(conn);
        }
        self.acknowledging(conn, packet);
        true
    }

    /// Whether the bytes waiting for clients over all shards, with what is kept for them
    /// (`Shared::kept_bytes`), are past `memory_limit`.
    pub(super) fn over_memory_limit(&self) -> bool {
        self.memory_held() > self.output.memory.limit
    }

    /// What the broker holds for clients as `memory_limit` counts it: what waits to be
    /// written (this shard's as of now, the others' as of their last turn) and what is kept
    /// (`Shared::kept_bytes`).
    pub(super) fn memory_held(&self) -> usize {
        self.output.memory.waiting_elsewhere
            + self.backend.queued_bytes_total()
            + self.transport.sealing.unsealed_bytes
            + self.output.memory.encoded_this_turn
            + self.disk.wait.held_bytes
            + self.shared.kept_bytes()
    }

    /// Sends each connection's turn buffer in one piece.
    pub(super) fn flush(&mut self) {
        self.close_sockets();
        self.output.memory.encoded_this_turn = 0;
        // Drained and put back: the list keeps its allocation from turn to turn.
        let mut dirty = std::mem::take(&mut self.output.to_flush);
        for conn in dirty.drain(..) {
            let Some(c) = conn::live_mut(&mut self.conns, conn) else {
                continue;
            };
            // A client held for the disk keeps what it is sent until then (`disk_wait.rs`).
            if c.out_len() == 0 || c.held.contains(conn::Hold::DISK) {
                continue;
            }
            let pieces: smallvec::SmallVec<[bytes::Bytes; 1]> = c.take_out().collect();
            self.send_out(conn, pieces.into_iter());
            self.hold_if_backed_up(conn);
        }
        dirty.shrink_to(crate::limits::KEPT_CAPACITY);
        self.output.to_flush = dirty;
        // Closed while being written to.
        self.close_sockets();
    }
}
