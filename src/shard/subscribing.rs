//! A SUBSCRIBE's or UNSUBSCRIBE's filters, handled `FILTERS_PER_TURN` a loop turn at most
//! per shard: a packet of more goes on in the next turns, its client not read meanwhile
//! (its later packets wait for it), as the sequence of packets the specification says it
//! is [MQTT-3.8.4-4]. One packet lists up to 16,384 filters; the filters themselves are
//! handled in `subscribe.rs`.

use crate::limits::{FILTERS_PER_TURN, FILTERS_PER_TURN_SHARED};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::close::CloseReason;
use super::conn::Hold;
use super::io::{Backend, ConnId};
use super::shared::Shared;
use super::subscribe::{last_of_each_filter, RetainedRequest};
use super::Shard;
use crate::codec::{ReasonCode, Subscribe, Unsubscribe};
use crate::limits::Limit;
use crate::topic::SessionId;

/// The SUBSCRIBEs and UNSUBSCRIBEs that wait for later turns, and what is left of this
/// turn's budget of filters (`FILTERS_PER_TURN`).
pub(super) struct Queue {
    pub(super) packets: std::collections::VecDeque<Subscribing>,
    filters_left: usize,
}

impl Default for Queue {
    fn default() -> Queue {
        Queue {
            packets: Default::default(),
            filters_left: FILTERS_PER_TURN,
        }
    }
}

impl Queue {
    /// The first packet of `conn` waiting, taken out of the queue.
    fn take_of(&mut self, conn: ConnId) -> Option<Subscribing> {
        let at = self.packets.iter().position(|job| job.conn == conn)?;
        self.packets.remove(at)
    }
}

/// A SUBSCRIBE or UNSUBSCRIBE whose filters are handled a slice a turn.
pub(super) struct Subscribing {
    pub(super) conn: ConnId,
    pub(super) session: SessionId,
    /// Filters handled so far, and what each got.
    pub(super) done: usize,
    pub(super) reasons: Vec<ReasonCode>,
    pub(super) packet: Filters,
    /// Its peer closed behind it: the connection is lost once what it sent is handled.
    closing: Option<CloseReason>,
    /// While it waits for later turns, what it holds is counted in `memory_limit`.
    held: Option<HeldBytes>,
}

pub(super) enum Filters {
    Subscribe {
        packet: Subscribe,
        /// Retained messages owed once the SUBACK is out.
        retained: Vec<RetainedRequest>,
    },
    Unsubscribe(Unsubscribe),
}

impl Filters {
    pub(super) fn len(&self) -> usize {
        match self {
            Filters::Subscribe { packet, .. } => packet.filters.len(),
            Filters::Unsubscribe(packet) => packet.filters.len(),
        }
    }

    /// About what the packet took on the wire, which its filters still hold.
    fn size(&self) -> usize {
        match self {
            Filters::Subscribe { packet, .. } => {
                packet.filters.iter().map(|(f, _)| f.len() + 3).sum()
            }
            Filters::Unsubscribe(packet) => packet.filters.iter().map(|f| f.len() + 2).sum(),
        }
    }
}

/// Bytes counted in `Shared::receiving_bytes` until dropped.
struct HeldBytes {
    shared: Arc<Shared>,
    bytes: usize,
}

impl Drop for HeldBytes {
    fn drop(&mut self) {
        self.shared.receiving_bytes.fetch_sub(self.bytes, Relaxed);
    }
}

/// Where a slice of a packet's filters left it.
pub(super) enum Slice {
    Done,
    /// Filters are left for a later turn.
    More,
    /// Its connection is gone, or was closed for a filter that broke a rule.
    Closed,
}

impl<B: Backend> Shard<B> {
    pub(super) fn on_subscribe(&mut self, conn: ConnId, session: SessionId, subscribe: Subscribe) {
        log::debug!("Received SUBSCRIBE from {}", self.conn_name(conn));
        let retained = Vec::new();
        let packet = Filters::Subscribe {
            packet: subscribe,
            retained,
        };
        self.start_subscribing(conn, session, packet);
    }

    pub(super) fn on_unsubscribe(
        &mut self,
        conn: ConnId,
        session: SessionId,
        unsubscribe: Unsubscribe,
    ) {
        log::debug!("Received UNSUBSCRIBE from {}", self.conn_name(conn));
        self.start_subscribing(conn, session, Filters::Unsubscribe(unsubscribe));
    }

    fn start_subscribing(&mut self, conn: ConnId, session: SessionId, packet: Filters) {
        let job = Subscribing {
            conn,
            session,
            done: 0,
            reasons: Vec::with_capacity(packet.len()),
            packet,
            closing: None,
            held: None,
        };
        self.go_on_subscribing(job, FILTERS_PER_TURN);
    }

    /// At the start of a turn: renews the turn's budgets of filters and of retained
    /// messages' requests, and goes on with what is left of both from the last turn,
    /// packets in turn.
    pub(super) fn resume_subscribing(&mut self) {
        self.subs.queue.filters_left = FILTERS_PER_TURN;
        self.renew_requests_budget();
        let waiting = self.subs.queue.packets.len();
        let share = if waiting > 1 {
            FILTERS_PER_TURN_SHARED
        } else {
            FILTERS_PER_TURN
        };
        // Those not reached stay in front for the next turn.
        for _ in 0..waiting {
            if self.subs.queue.filters_left == 0 {
                break;
            }
            let Some(job) = self.subs.queue.packets.pop_front() else {
                break;
            };
            self.go_on_subscribing(job, share);
        }
    }

    /// Handles as many of `job`'s filters as the turn's budget allows, `share` at most; a
    /// packet with filters left waits for a later turn, and its client with it.
    fn go_on_subscribing(&mut self, mut job: Subscribing, share: usize) {
        let left = job.packet.len() - job.done;
        let count = left.min(self.subs.queue.filters_left).min(share);
        self.subs.queue.filters_left -= count;
        let slice = match job.packet {
            _ if count == 0 => Slice::More,
            Filters::Subscribe { .. } => self.subscribe_slice(&mut job, count),
            Filters::Unsubscribe(_) => self.unsubscribe_slice(&mut job, count),
        };
        match slice {
            Slice::Closed => self.abandon_subscribing(job),
            Slice::More => {
                if job.held.is_none() {
                    // Counted once a packet, not logged: a client that subscribes to many
                    // filters at once meets it too.
                    self.stats().limit_hit(Limit::FiltersPerTurn);
                    let bytes = job.packet.size();
                    self.shared.receiving_bytes.fetch_add(bytes, Relaxed);
                    let shared = Arc::clone(&self.shared);
                    job.held = Some(HeldBytes { shared, bytes });
                    self.hold_reading(job.conn, Hold::SUBSCRIBING);
                }
                self.subs.queue.packets.push_back(job);
            }
            Slice::Done => {
                let (conn, closing) = (job.conn, job.closing);
                self.record_changed(job.session);
                self.answer_filters(job);
                if self
                    .conn(conn)
                    .is_some_and(|c| c.held.contains(Hold::SUBSCRIBING))
                {
                    // What it sent meanwhile is read from the next turn's start.
                    if closing.is_none() && self.hold_reading(conn, Hold::DECODE) {
                        self.receiving.waiting.push(conn);
                    }
                    self.release_reading(conn, Hold::SUBSCRIBING);
                }
                if let Some(reason) = closing {
                    self.input_ended(conn, reason);
                }
            }
        }
    }

    /// The peer closed, or its socket failed: what it sent before is handled, all of it (a
    /// DISCONNECT among it means no will [MQTT-3.1.2-10]), then the connection is lost. A
    /// SUBSCRIBE among it goes on a slice a turn as ever (closing connections cannot pile
    /// the work of their packets into one turn), and what follows it waits with the
    /// connection.
    pub(super) fn input_ended(&mut self, conn: ConnId, reason: CloseReason) {
        self.drain_input(conn);
        if let Some(job) = self
            .subs
            .queue
            .packets
            .iter_mut()
            .find(|job| job.conn == conn)
        {
            job.closing = Some(reason);
            return;
        }
        self.connection_lost(conn, reason);
    }

    /// The backend has given out `conn` (accepted, or a bridge's connect): the slot it
    /// names is made free in the shard's table first. The backend gives a slot out again
    /// once it reported its connection closed, and a connection whose peer closed while its
    /// SUBSCRIBE goes a slice a turn is still in it (`finish_closed`).
    pub(super) fn free_slot(&mut self, conn: ConnId) {
        let closing = (self.conns.get(conn.slot()))
            .and_then(Option::as_ref)
            .map(|c| c.id);
        if let Some(closing) = closing.filter(|&closing| closing != conn) {
            self.finish_closed(closing);
        }
    }

    /// A connection closed by its peer, still in its slot because its SUBSCRIBE goes a
    /// slice a turn: what it sent is handled now, as when its session is taken over
    /// (`cut_short_subscribing`: its remaining filters are dropped; it had no SUBACK, and
    /// its socket is gone, so a persistent session keeps the filters handled so far), and
    /// the connection is lost.
    fn finish_closed(&mut self, conn: ConnId) {
        self.cut_short_subscribing(conn);
        if self.conn(conn).is_some() {
            self.connection_lost(conn, CloseReason::PeerClosed);
        }
    }

    /// A packet whose connection went before its filters were all handled: the retained
    /// messages of those it handled are still owed to its session, if it lives on.
    fn abandon_subscribing(&mut self, job: Subscribing) {
        if let Filters::Subscribe { retained, .. } = job.packet {
            if self.sessions.get(&job.session).is_some() {
                self.owe_requested(job.session, last_of_each_filter(retained));
            }
        }
    }

    /// Session `id` leaves this shard's table (taken over, or handed to another shard): the
    /// retained messages that its SUBSCRIBEs under way (their connection is closed) and its
    /// waiting requests are owed are owed to it now, and go with it; unless it `ends`.
    pub(super) fn settle_subscribing(&mut self, id: SessionId, ends: bool) {
        let mut requests = Vec::new();
        self.subs.owed.requests.retain_mut(|(session, waiting)| {
            if *session == id {
                requests.extend(waiting);
            }
            *session != id
        });
        let mut at = 0;
        while at < self.subs.queue.packets.len() {
            if self.subs.queue.packets[at].session != id {
                at += 1;
                continue;
            }
            let job = self
                .subs
                .queue
                .packets
                .remove(at)
                .expect("within the queue");
            if let Filters::Subscribe { retained, .. } = job.packet {
                requests.extend(last_of_each_filter(retained));
            }
        }
        if ends {
            return;
        }
        for request in requests {
            self.owe_if_subscribed(id, request);
        }
    }

    /// `conn`'s session is taken over while a SUBSCRIBE of its goes a slice a turn: what it
    /// sent after that packet and was read is handled now, the remaining filters of its
    /// SUBSCRIBEs dropped (it had no SUBACK for them), so that a DISCONNECT among it still
    /// means no will [MQTT-3.1.2-10]. (The filters handled so far stay, and their retained
    /// messages are owed.) If its peer had closed, the connection is lost.
    pub(super) fn cut_short_subscribing(&mut self, conn: ConnId) {
        let Some(mut job) = self.subs.queue.take_of(conn) else {
            return;
        };
        let closing = job.closing;
        loop {
            self.abandon_subscribing(job);
            self.release_reading(conn, Hold::SUBSCRIBING);
            self.drain_input(conn);
            let Some(next) = self.subs.queue.take_of(conn) else {
                break;
            };
            job = next;
        }
        if let Some(reason) = closing {
            self.connection_lost(conn, reason);
        }
    }
}
