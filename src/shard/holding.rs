//! What clients make a shard hold, kept inside its bounds (`limits.rs`): what waits to be
//! written to a client (one whose output backs up is not read until it drains, whatever
//! the packets are: replies to its own packets as much as deliveries); what it sends is
//! counted in `receiving.rs`. Reaching a bound is counted (`Stats::limits_hit`) and logged
//! at most once a second per bound and shard.

use crate::limits::DRAIN_CHECK_EVERY_TURN_MAX;
use std::time::{Duration, Instant};

use super::conn::Hold;
use super::io::{Backend, ConnId};
use super::Shard;
use crate::limits::{Limit, OUTPUT_RESUME_BYTES, SLOW_BACKLOG_BYTES};
use crate::topic::SessionId;

/// The shortest time between two log lines about the same bound from one shard.
const LIMIT_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// How often the clients waiting for their output to drain are checked, when there are
/// more than `limits::DRAIN_CHECK_EVERY_TURN_MAX`.
const DRAIN_CHECK_INTERVAL: Duration = Duration::from_millis(5);

/// What is held back by its output: connections not read, and sessions not written to,
/// until what waits for them drains; when they were last checked; and the log lines about
/// each bound and about payloads refused as not the UTF-8 they said they were (a client can
/// send thousands a read), a line at most every `LIMIT_LOG_INTERVAL`.
pub(super) struct Holding {
    /// Connections not read until their output drains.
    pub(super) held: Vec<ConnId>,
    /// Sessions whose QoS 1/2 messages wait in their queue for their connection to drain.
    pub(super) waiting: hashbrown::HashSet<SessionId>,
    limits: [RateLimited; Limit::ALL.len()],
    pub(super) not_utf8: RateLimited,
    drain_checked: Instant,
}

/// A log line written at most once every `LIMIT_LOG_INTERVAL`.
#[derive(Default)]
pub(super) struct RateLimited {
    last: Option<Instant>,
    unlogged: u64,
}

impl RateLimited {
    /// `None` if the line is not to be written now (it is counted); otherwise how many went
    /// unwritten since the last.
    pub(super) fn due(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|at| now < at + LIMIT_LOG_INTERVAL) {
            self.unlogged += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

impl Holding {
    pub(super) fn new(now: Instant) -> Self {
        Holding {
            held: Vec::new(),
            waiting: Default::default(),
            limits: Default::default(),
            not_utf8: RateLimited::default(),
            drain_checked: now,
        }
    }
}

impl<B: Backend> Shard<B> {
    /// Counts a bound reached, and logs `line` unless that bound was logged less than
    /// `LIMIT_LOG_INTERVAL` ago (the next line says how many went unlogged).
    pub(super) fn limit_reached(&mut self, limit: Limit, line: impl FnOnce() -> String) {
        self.stats().limit_hit(limit);
        match self.holding.limits[limit as usize].due(self.clock.now) {
            None => {}
            Some(0) => log::warn!("Warning: {}", line()),
            Some(more) => {
                log::warn!("Warning: {} ({more} more since the last such line)", line())
            }
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
        if why.waits_for_broker() {
            // It was not read while it waited for the broker (`timers.rs`): its keep alive
            // counts from here.
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
        let backlog = self.unsent_bytes(conn);
        if backlog <= SLOW_BACKLOG_BYTES {
            return;
        }
        // Before its CONNECT is accepted a connection is owed little (a CONNACK, a TLS
        // handshake, WebSocket pongs): past SLOW_BACKLOG_BYTES it is sending to make the
        // broker hold, and is held itself.
        let connected = self
            .conn(conn)
            .is_some_and(|c| c.session.is_some() || c.link().is_some());
        let bound = if self.over_memory_limit() || !connected {
            SLOW_BACKLOG_BYTES
        } else {
            self.config.client_write_max
        };
        if backlog <= bound || !self.hold_reading(conn, Hold::OUTPUT) {
            return;
        }
        self.holding.held.push(conn);
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
        let backlog = c.out_len() + self.unsent_bytes(conn);
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
        if self.holding.waiting.is_empty() {
            return;
        }
        let waiting: Vec<SessionId> = self.holding.waiting.drain().collect();
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
        let waiting = self.holding.waiting.len() + self.holding.held.len();
        if waiting > DRAIN_CHECK_EVERY_TURN_MAX {
            if self.clock.now < self.holding.drain_checked + DRAIN_CHECK_INTERVAL {
                return;
            }
            self.holding.drain_checked = self.clock.now;
        }
        self.send_to_drained();
        if self.holding.held.is_empty() {
            return;
        }
        let mut held = std::mem::take(&mut self.holding.held);
        held.retain(|&conn| {
            if self.conn(conn).is_none() {
                return false;
            }
            if self.unsent_bytes(conn) > OUTPUT_RESUME_BYTES {
                return true;
            }
            self.release_reading(conn, Hold::OUTPUT);
            false
        });
        held.append(&mut self.holding.held);
        self.holding.held = held;
    }
}
