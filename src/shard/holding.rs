//! What clients make a shard hold, kept inside its bounds (`limits.rs`): the bytes of
//! connections whose CONNECT is not accepted yet (bounded broker-wide), and what waits to be
//! written to a client (one whose output backs up is not read until it drains, whatever
//! the packets are: replies to its own packets as much as deliveries). Reaching a bound is
//! counted (`Stats::limits_hit`) and logged at most once a second per bound and shard.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use super::close::CloseReason;
use super::conn::Hold;
use super::io::{Backend, ConnId};
use super::Shard;
use crate::limits::{self, Limit, OUTPUT_RESUME_BYTES, SLOW_BACKLOG_BYTES};
use crate::topic::SessionId;

/// The shortest time between two log lines about the same bound from one shard.
const LIMIT_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// What a connection holds before CONNECT, beyond its first unit, is counted in units of
/// this many bytes (rounded up), so that its share fits in one byte of its record
/// (`Conn::preconnect_held`).
const PRECONNECT_UNIT: usize = 4096;
/// The most one connection may hold before its CONNECT is accepted: 256 units (one free,
/// 255 counted). A CONNECT and a turn's read fit; more comes only from a client that sends on while its CONNECT is
/// judged (an authentication exchange, a session on its way from another shard).
const PRECONNECT_HELD_MAX: usize = (u8::MAX as usize + 1) * PRECONNECT_UNIT;
const _: () =
    assert!(limits::CONNECT_PACKET_BYTES_MAX + super::io::READ_MAX_PER_TURN < PRECONNECT_HELD_MAX);

/// Clients waiting for their output to drain that are checked every turn; past it, every
/// `DRAIN_CHECK_INTERVAL`.
const DRAIN_CHECK_EVERY_TURN_MAX: usize = 256;
const DRAIN_CHECK_INTERVAL: Duration = Duration::from_millis(5);

/// When each bound was last logged, and how many times it was reached since; when the
/// clients waiting to drain were last checked.
pub(super) struct Holding {
    last: [Option<Instant>; Limit::ALL.len()],
    unlogged: [u64; Limit::ALL.len()],
    drain_checked: Instant,
}

impl Holding {
    pub(super) fn new(now: Instant) -> Self {
        Holding {
            last: Default::default(),
            unlogged: Default::default(),
            drain_checked: now,
        }
    }
}

impl<B: Backend> Shard<B> {
    /// Counts a bound reached, and logs `line` unless that bound was logged less than
    /// `LIMIT_LOG_INTERVAL` ago (the next line says how many went unlogged).
    pub(super) fn limit_reached(&mut self, limit: Limit, line: impl FnOnce() -> String) {
        self.stats().limit_hit(limit);
        let logs = &mut self.holding;
        let i = limit as usize;
        if logs.last[i].is_some_and(|at| self.now < at + LIMIT_LOG_INTERVAL) {
            logs.unlogged[i] += 1;
            return;
        }
        logs.last[i] = Some(self.now);
        match std::mem::take(&mut logs.unlogged[i]) {
            0 => log::warn!("Warning: {}", line()),
            more => log::warn!("Warning: {} ({more} more since the last such line)", line()),
        }
    }

    /// Holds reading from `conn` for `why`. True if it was not held for `why` already.
    pub(super) fn hold_reading(&mut self, conn: ConnId, why: Hold) -> bool {
        let Some(c) = self.conn_mut(conn) else {
            return false;
        };
        if c.held.contains(why) {
            return false;
        }
        let was = c.held;
        c.held = was.with(why);
        if was == Hold::NONE {
            self.backend.pause_reading(conn);
        }
        true
    }

    /// Ends the hold for `why`; reading goes on once no reason is left.
    pub(super) fn release_reading(&mut self, conn: ConnId, why: Hold) {
        let now = self.stamp();
        let Some(c) = self.conn_mut(conn) else {
            return;
        };
        if !c.held.contains(why) {
            return;
        }
        if why == Hold::OUTPUT {
            // It read what waited for it: alive. Its keep alive counts from here (it was
            // not read meanwhile, `timers.rs`).
            c.heard_from(now);
        }
        c.held = c.held.without(why);
        if c.held == Hold::NONE {
            self.backend.resume_reading(conn);
        }
    }

    /// After a connection's writes were handed to the backend: if more than its bound waits
    /// for its socket (`client_write_max`, or `SLOW_BACKLOG_BYTES` while the broker is over
    /// `memory_limit`), it is not read until that drains, so that a client that sends and
    /// never reads cannot make the broker hold its replies without end: TCP pushes back on
    /// it instead.
    pub(super) fn hold_if_backed_up(&mut self, conn: ConnId) {
        let backlog = self.backend.queued_bytes(conn);
        if backlog <= SLOW_BACKLOG_BYTES {
            return;
        }
        let bound = if self.over_memory_limit() {
            SLOW_BACKLOG_BYTES
        } else {
            self.config.client_write_max
        };
        if backlog <= bound || !self.hold_reading(conn, Hold::OUTPUT) {
            return;
        }
        self.output_held.push(conn);
        let name = self.conn_name(conn);
        self.limit_reached(Limit::OutputBacklog, || {
            format!(
                "client {name} is not reading what it is sent ({backlog} bytes wait); \
                 not reading from it until that drains."
            )
        });
    }

    /// Whether a message of `size` bytes may be written to `conn` now: nothing waits for it,
    /// or what waits and the message stay within its bound (`client_write_max`, or
    /// `SLOW_BACKLOG_BYTES` while the broker is over `memory_limit`). A QoS 1/2 message
    /// that may not waits in its session's queue, as a reference to the one message.
    pub(super) fn can_write(&self, conn: ConnId, size: usize) -> bool {
        let Some(c) = self.conn(conn) else {
            return false;
        };
        let backlog = c.out_len() + self.backend.queued_bytes(conn);
        let bound = if self.over_memory_limit() {
            SLOW_BACKLOG_BYTES
        } else {
            self.config.client_write_max
        };
        backlog == 0 || backlog + size <= bound
    }

    /// Goes on with sessions whose queued messages waited for their connection to drain
    /// (`can_write`), once per turn.
    fn send_to_drained(&mut self) {
        if self.output_waiting.is_empty() {
            return;
        }
        let waiting: Vec<SessionId> = self.output_waiting.drain().collect();
        for session in waiting {
            // Puts it back if it still may not write.
            self.fill_window(session);
        }
    }

    /// Reads again from connections held for their output once it has drained to
    /// `OUTPUT_RESUME_BYTES`, and sends what waited for them to drain: every turn (after
    /// the wait that wrote it) while few wait, at most every `DRAIN_CHECK_INTERVAL` when
    /// many do (ten thousand stalled clients must not cost every turn a pass over them).
    pub(super) fn release_drained(&mut self) {
        let waiting = self.output_waiting.len() + self.output_held.len();
        if waiting > DRAIN_CHECK_EVERY_TURN_MAX {
            if self.now < self.holding.drain_checked + DRAIN_CHECK_INTERVAL {
                return;
            }
            self.holding.drain_checked = self.now;
        }
        self.send_to_drained();
        if self.output_held.is_empty() {
            return;
        }
        let mut held = std::mem::take(&mut self.output_held);
        held.retain(|&conn| {
            if self.conn(conn).is_none() {
                return false;
            }
            if self.backend.queued_bytes(conn) > OUTPUT_RESUME_BYTES {
                return true;
            }
            self.release_reading(conn, Hold::OUTPUT);
            false
        });
        held.append(&mut self.output_held);
        self.output_held = held;
    }

    /// Brings the broker-wide count of bytes held before CONNECT up to date with what
    /// `conn` holds now (its partial CONNECT, or the packets behind a CONNECT still being
    /// judged); a connection that takes the count past `limits::preconnect_bytes_max`, or
    /// holds more than `PRECONNECT_HELD_MAX` itself, is closed. Called after each receive,
    /// and (with nothing held) when it closes.
    pub(super) fn count_preconnect(&mut self, conn: ConnId) {
        let Some(c) = super::conn::live_mut(&mut self.conns, conn) else {
            return;
        };
        let accepted = c.session.is_some() || c.link().is_some();
        let bytes = if accepted { 0 } else { c.inbuf.len() };
        // The first unit is free: a CONNECT in pieces, a connection that sent a few bytes,
        // cost what any connection costs (and their count is bounded elsewhere), so that
        // thousands of them cannot fill the broker-wide bound with a byte each.
        let units = bytes
            .saturating_sub(PRECONNECT_UNIT)
            .div_ceil(PRECONNECT_UNIT);
        let held = u8::try_from(units).unwrap_or(u8::MAX);
        let before = std::mem::replace(&mut c.preconnect_held, held);
        let total = &self.shared.preconnect_bytes;
        if held <= before {
            total.fetch_sub(usize::from(before - held) * PRECONNECT_UNIT, Relaxed);
            return;
        }
        let added = usize::from(held - before) * PRECONNECT_UNIT;
        let now = total.fetch_add(added, Relaxed) + added;
        let max = limits::preconnect_bytes_max(self.write_bytes_max);
        if now <= max && units < usize::from(u8::MAX) {
            return;
        }
        let peer = format!("{}:{}", c.peer_host(&self.config), c.peer_port());
        self.limit_reached(Limit::PreconnectBytes, || {
            if now > max {
                format!(
                    "connections that have not sent a whole CONNECT hold more than {max} \
                     bytes; closing the one from {peer} (it held {bytes})."
                )
            } else {
                format!("closing the connection from {peer}: it held {bytes} bytes before its CONNECT was accepted.")
            }
        });
        self.close_conn(conn, CloseReason::ProtocolError);
    }

    /// What a closing connection held before CONNECT leaves the broker-wide count.
    pub(super) fn forget_preconnect(&self, held: u8) {
        if held > 0 {
            let bytes = usize::from(held) * PRECONNECT_UNIT;
            self.shared.preconnect_bytes.fetch_sub(bytes, Relaxed);
        }
    }
}
