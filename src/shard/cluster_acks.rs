//! Acknowledgements that wait for the cluster (`cluster_messages jetstream`): a QoS 1 or 2
//! message published here is acknowledged (PUBACK, PUBREC) once JetStream has stored it
//! (`cluster/stored.rs`), so that an acknowledged message outlives this node. It is
//! delivered to this node's subscribers at once all the same: only the answer waits.
//!
//! Waiting acknowledgements are kept in the order of their numbers, which is the order the
//! link stores their messages in, and go when the link says their number is done
//! (`Cluster::stored_through`). A client's later PUBACK or PUBREC waits behind its earlier
//! ones, whatever it is (a refusal, a resent QoS 2 PUBLISH): they go in the order of the
//! PUBLISH packets they answer [MQTT-4.6.0-2] [MQTT-4.6.0-3]. A client with
//! `ACKS_WAITING_MAX` answers waiting is not read, nor its packets read already decoded,
//! until some go, so that what it makes the node hold stays bounded (its messages wait,
//! counted, in the queue to the link).

use std::collections::VecDeque;

use super::conn::Hold;
use super::io::{Backend, ConnId};
use super::Shard;
use crate::codec::Packet;

/// Answers one client may have waiting before it is not read (its keep alive runs
/// meanwhile: one that gives up waiting is closed as a silent one).
pub(super) const ACKS_WAITING_MAX: u8 = 250;

/// One answer waiting: it goes once `number` is done.
struct Waiting {
    number: u64,
    conn: ConnId,
    packet: Packet,
}

#[derive(Default)]
pub(super) struct ClusterAcks {
    waiting: VecDeque<Waiting>,
}

impl ClusterAcks {
    /// Whether an answer can go now, the link having done up to `through`.
    pub(super) fn any_done(&self, through: u64) -> bool {
        self.waiting.front().is_some_and(|w| w.number <= through)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

impl<B: Backend> Shard<B> {
    /// Sends `packet`, a PUBACK or PUBREC to `conn`, at `at` in its output, unless it waits:
    /// for `stored` (the number of the message it acknowledges, if that goes through the
    /// stream), or behind the client's answers already waiting. True if it went now (its
    /// log line is then the caller's; one that waits has its line when it goes).
    pub(super) fn send_publish_answer(
        &mut self,
        conn: ConnId,
        packet: &Packet,
        stored: Option<u64>,
        at: Option<usize>,
    ) -> bool {
        let behind = self.conn(conn).is_some_and(|c| c.acks_waiting > 0);
        let number = match (stored, behind) {
            (Some(number), _) => number,
            // Behind the client's last, which is at most the last waiting.
            (None, true) => self.cluster_acks.waiting.back().map_or(0, |w| w.number),
            (None, false) => {
                self.send_packet_at(conn, packet, at);
                return true;
            }
        };
        let Some(c) = self.conn_mut(conn) else {
            return false;
        };
        // (Past the bound only while its peer is gone and what it sent is handled: then
        // the count only stops at its top.)
        c.acks_waiting = c.acks_waiting.saturating_add(1);
        let full = c.acks_waiting >= ACKS_WAITING_MAX;
        self.cluster_acks.waiting.push_back(Waiting {
            number,
            conn,
            packet: packet.clone(),
        });
        if full {
            self.hold_reading(conn, Hold::CLUSTER);
        }
        false
    }

    /// Sends the answers whose messages are done, in order.
    pub(super) fn send_cluster_acks(&mut self) {
        if self.cluster_acks.is_empty() {
            return;
        }
        let Some(cluster) = self.shared.cluster.get() else {
            return;
        };
        let through = cluster.stored_through(self.id);
        while self.cluster_acks.any_done(through) {
            let Some(done) = self.cluster_acks.waiting.pop_front() else {
                break;
            };
            let Some(c) = self.conn_mut(done.conn) else {
                continue; // Gone: a client that connects again resends what it was not answered.
            };
            c.acks_waiting = c.acks_waiting.saturating_sub(1);
            let release = c.acks_waiting < ACKS_WAITING_MAX && c.held.contains(Hold::CLUSTER);
            if let Packet::PubAck(r) | Packet::PubRec(r) = &done.packet {
                let name = self.conn_name(done.conn);
                log::debug!(
                    "Sending {} to {name} (Mid: {})",
                    done.packet.name(),
                    r.packet_id
                );
            }
            self.send_packet_at(done.conn, &done.packet, None);
            if release {
                // What it sent meanwhile is decoded from the next turn's start.
                if self.hold_reading(done.conn, Hold::DECODE) {
                    self.receiving.waiting.push(done.conn);
                }
                self.release_reading(done.conn, Hold::CLUSTER);
            }
        }
    }

    /// Whether answers can go now (the shard has work though its mailbox is empty).
    pub(super) fn cluster_acks_due(&self) -> bool {
        if self.cluster_acks.is_empty() {
            return false;
        }
        let through = (self.shared.cluster.get()).map_or(u64::MAX, |c| c.stored_through(self.id));
        self.cluster_acks.any_done(through)
    }
}
