//! Clients whose acknowledgements wait for the disk. While the shard's journal is not
//! durable (a write or a sync failed: `persist/journal/failing.rs`), a client that would be
//! told that something is safe is held instead: what it is sent stays in its connection, in
//! order; it is not read (what it sends waits in its socket, so what it can make the broker
//! hold stays bounded), until the live state is on disk again. Then everything it was sent
//! goes out at once. Its keep alive runs meanwhile: a client held past one and a half keep
//! alive periods (or `client_idle_timeout`) has given up waiting for its PINGRESP, and its
//! connection is closed as a silent one's (the held bytes dropped), so that connections of
//! clients that went away cannot pile up (and use up the descriptors a rewrite needs).
//!
//! Held: a client sent an acknowledgement (PUBACK, PUBREC, PUBCOMP; the CONNACK, SUBACK and
//! UNSUBACK of a persistent session), and a persistent session's client that is sent
//! anything or whose session changed (a QoS 1 or 2 delivery to it is journaled: sent
//! before it is on disk, a crash would let the publisher's resend deliver it twice; one
//! resent when it connects again may not be on disk yet). In the turn the failure is found
//! every client written to is held: that turn's changes were made before anyone knew. Clients that need
//! no disk go on: QoS 0 among clean sessions, pings, connections and subscriptions of
//! clean sessions.
//!
//! Held rather than refused (a 5.0 reason code such as 0x97): a held client loses nothing
//! and resends nothing, keeps its order, and needs no code of its own to recover, whatever
//! its protocol version; a refused 5.0 PUBLISH is dropped by most client libraries unless
//! the application retries it. A client that gives up on its own (its keep alive passes
//! without a PINGRESP) resends what was not acknowledged when it connects again, as MQTT
//! has it do after any lost connection.

use std::sync::atomic::Ordering;

use super::conn::Hold;
use super::io::{Backend, ConnId};
use super::Shard;
use crate::codec::Packet;

#[derive(Default)]
pub(super) struct DiskWait {
    /// The journal is not durable.
    failing: bool,
    /// Connections sent an acknowledgement this turn while it is not.
    acked: Vec<ConnId>,
    /// Connections held until it is.
    held: Vec<ConnId>,
    /// What the held connections were sent and not given yet (in `memory_limit`).
    pub(super) held_bytes: usize,
}

impl DiskWait {
    /// Whether the journal is not durable.
    pub(super) fn failing(&self) -> bool {
        self.failing
    }

    /// Whether `conn` is held until the journal is durable.
    pub(super) fn is_held(&self, conn: ConnId) -> bool {
        self.held.contains(&conn)
    }
}

impl<B: Backend> Shard<B> {
    /// `packet` was written for `conn`: while the disk fails, an acknowledgement that
    /// stands for what is on disk holds its client.
    #[inline]
    pub(super) fn acknowledging(&mut self, conn: ConnId, packet: &Packet) {
        if !self.disk.wait.failing {
            return;
        }
        let needs_disk = match packet {
            Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_) => true,
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) => {
                self.has_persistent_session(conn)
            }
            _ => false,
        };
        if needs_disk {
            self.disk.wait.acked.push(conn);
        }
    }

    /// After the turn's commit, before its output goes out: true if the journal is durable
    /// (every client held for it is released); otherwise the clients this turn's changes
    /// concern are held.
    pub(super) fn wait_for_disk(&mut self) -> bool {
        let Some(journal) = self.disk.journal.as_deref_mut() else {
            return true;
        };
        let failures = journal.failures_total();
        let durable = journal.durable();
        let touched = journal.take_touched();
        self.stats()
            .persist_failures
            .store(failures, Ordering::Relaxed);
        if durable {
            if self.disk.wait.failing {
                self.release_disk_held();
            }
            return true;
        }
        let first = !self.disk.wait.failing;
        self.disk.wait.failing = true;
        let mut conns = std::mem::take(&mut self.disk.wait.acked);
        // In the first turn, whoever was written to; after it, whoever has a persistent
        // session and was written to: what it is sent may stand for state not on disk (a
        // delivery resent after its client, or a bridge, connected again).
        let written = self.output.to_flush.iter();
        conns.extend(written.filter(|&&c| first || self.has_persistent_session(c)));
        conns.extend(touched.iter().filter_map(|s| self.sessions.get(s)?.conn));
        for conn in conns {
            if self.hold_reading(conn, Hold::DISK) {
                self.disk.wait.held.push(conn);
            }
        }
        let mut held = std::mem::take(&mut self.disk.wait.held);
        held.retain(|&conn| self.conn(conn).is_some_and(|c| c.held.contains(Hold::DISK)));
        self.disk.wait.held_bytes = (held.iter())
            .filter_map(|&conn| self.conn(conn))
            .map(|c| c.out_len())
            .sum();
        self.stats()
            .persist_held_clients
            .store(held.len() as u64, Ordering::Relaxed);
        self.disk.wait.held = held;
        false
    }

    fn has_persistent_session(&self, conn: ConnId) -> bool {
        let session = self.conn(conn).and_then(|c| c.session);
        session
            .and_then(|s| self.sessions.get(&s))
            .is_some_and(|s| !s.clean)
    }

    /// The journal is durable again: the held clients get what they were sent, and are
    /// read again (what they sent meanwhile from the next turn's start).
    fn release_disk_held(&mut self) {
        self.disk.wait.failing = false;
        self.disk.wait.acked.clear();
        self.disk.wait.held_bytes = 0;
        self.stats()
            .persist_held_clients
            .store(0, Ordering::Relaxed);
        for conn in std::mem::take(&mut self.disk.wait.held) {
            let Some(c) = self.conn(conn) else {
                continue;
            };
            if !c.held.contains(Hold::DISK) {
                continue;
            }
            if c.out_len() > 0 {
                self.output.to_flush.push(conn);
            }
            if self.hold_reading(conn, Hold::DECODE) {
                self.receiving.waiting.push(conn);
            }
            self.release_reading(conn, Hold::DISK);
        }
    }
}
