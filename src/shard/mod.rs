//! A shard: one thread, pinned to a core, with its own event loop, its own listening sockets
//! on the shared ports (`SO_REUSEPORT`) and its own connections and sessions. Shards meet
//! only through mailboxes, the published subscription trie, and a few locks taken off the
//! publish path (client id registry on CONNECT, trie writer once per turn with changes,
//! retained store for retained messages).

mod accept;
mod aliases;
mod auth;
mod bridges;
pub mod clock;
mod close;
mod cluster_acks;
mod cluster_records;
mod cluster_replay;
mod cluster_sessions;
pub mod conn;
mod connack;
mod connect;
mod crossing;
mod deliver;
mod disk_wait;
mod encode;
mod handover;
mod holding;
mod invariants;
pub mod io;
mod journaling;
mod outgoing;
mod output;
mod owed;
mod publish;
mod receiving;
mod reload;
mod route;
mod sealing;
mod shared;
mod stats;
mod subscribe;
mod subscribing;
mod sys;
mod takeover;
mod timers;
mod transport;
mod trie_ops;
mod wills;

pub use shared::{Claim, ReloadSignals, Shared};
pub use stats::{Durations, Refused, Stats, StatsSnapshot, DURATION_BUCKETS_US};

use crossbeam_channel::Receiver;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::codec::Packet;
use crate::config::Config;
use crate::router::ShardMsg;
use conn::Conn;
use io::{Backend, ConnId, Event};

/// How often keepalives and CONNECT deadlines are checked.
const TIMER_TICK: Duration = Duration::from_millis(250);

pub struct Shard<B: Backend> {
    pub id: usize,
    shared: Arc<Shared>,
    /// This shard's copy of the settings, taken from `shared` when they change.
    config: Arc<Config>,
    backend: B,
    /// Boxed, so that the slot table and the session map stay small (8 bytes a slot) and
    /// their growth does not copy or strand large entries.
    conns: Vec<Option<Box<Conn>>>,
    /// The sessions held here, with their change record and timers (`session/table.rs`).
    sessions: crate::session::Table,
    events: Vec<Event>,
    /// Connections to write to and to close at the end of the turn, and what
    /// `memory_limit` counts of this shard's and the others' output (`output.rs`).
    output: output::Output,
    /// What this shard's subscriptions have under way: changes to the trie waiting for
    /// the end of the turn, ended sessions' subscriptions leaving it (`trie_ops.rs`),
    /// SUBSCRIBEs and UNSUBSCRIBEs handled a slice of filters a turn (`subscribing.rs`),
    /// and retained messages owed to new subscriptions (`owed.rs`).
    subs: SubscriptionWork,
    /// The targets and encodings of the message being routed (reused, `route.rs`).
    routing: route::Routing,
    /// What this shard passes to other shards and takes from them: outbox, mailbox, and
    /// with persistence their numbering, so that each message arrives exactly once across
    /// a crash (`crossing/`).
    crossing: crossing::Crossing,
    /// Connections not read and sessions not written to until their output drains, and
    /// when each bound was last logged (`holding.rs`).
    holding: holding::Holding,
    /// Sessions moving through this shard, and the claims on client ids whose sessions are
    /// on their way (`handover/`).
    handover: handover::Handover,
    /// TLS handshakes and the sealing of TLS and WebSocket output (`transport.rs`).
    transport: transport::Transport,
    /// Connections whose packets wait for the next turn, and the payload being checked as
    /// it arrives (`receiving.rs`).
    receiving: receiving::Receiving,
    /// `$SYS`: when this shard next refreshes its gauges (and shard 0 publishes).
    sys: sys::SysState,
    /// The time of this loop turn, when the shard started, the turns taken, and whether it
    /// worked since its last timer tick (`clock.rs`).
    clock: clock::TurnClock,
    /// `persistence true`: this shard's journal, and the clients held while it is not
    /// durable (`journaling.rs`, `disk_wait.rs`).
    disk: journaling::Disk,
    /// The bridges this shard runs (`shard/bridges/`); usually none.
    links: Vec<crate::bridge::Link>,
    /// In a cluster keeping sessions: the sessions whose records are to be written again
    /// (`cluster_records.rs`).
    records: cluster_records::Changed,
    /// Acknowledgements waiting for JetStream to store what they acknowledge
    /// (`cluster_acks.rs`).
    cluster_acks: cluster_acks::ClusterAcks,
    /// Sessions taken over from a gone node while what it missed is read again
    /// (`cluster_replay.rs`).
    replaying: cluster_replay::Replaying,
    /// Debug builds only: faults the tests inject.
    #[cfg(debug_assertions)]
    faults: Faults,
}

/// What a shard's subscriptions have under way, paced a slice a turn.
#[derive(Default)]
struct SubscriptionWork {
    trie: trie_ops::TrieWork,
    queue: subscribing::Queue,
    owed: owed::OwedWork,
}

/// Faults injected for tests, in debug builds only.
#[cfg(debug_assertions)]
struct Faults {
    /// For the test of what a shard panic does: a PUBLISH to this topic (from
    /// `MIDGE_FAULT_PANIC_TOPIC`) panics the shard that reads it.
    panic_topic: Option<String>,
    /// For the test of acknowledgements across shards: a turn that took messages from other
    /// shards waits this long before its journal write, as a slow disk would
    /// (`MIDGE_FAULT_COMMIT_DELAY_MS`), and whether this turn took any.
    commit_delay: Option<(Duration, bool)>,
}

#[cfg(debug_assertions)]
impl Faults {
    fn from_env() -> Faults {
        Faults {
            panic_topic: std::env::var("MIDGE_FAULT_PANIC_TOPIC").ok(),
            commit_delay: std::env::var("MIDGE_FAULT_COMMIT_DELAY_MS")
                .ok()
                .and_then(|ms| ms.parse().ok())
                .map(|ms| (Duration::from_millis(ms), false)),
        }
    }
}

impl<B: Backend> Shard<B> {
    pub fn new(id: usize, shared: Arc<Shared>, backend: B, mailbox: Receiver<ShardMsg>) -> Self {
        let shards = shared.mailboxes.shards();
        let config = shared.config.load_full();
        let now = shared.clock.now();
        Shard {
            id,
            output: output::Output::new(config.write_bytes_max()),
            config,
            shared,
            backend,
            conns: Vec::new(),
            sessions: Default::default(),
            events: Vec::new(),
            subs: Default::default(),
            routing: route::Routing::new(shards),
            crossing: crossing::Crossing::new(shards, mailbox),
            holding: holding::Holding::new(now),
            handover: Default::default(),
            transport: Default::default(),
            receiving: Default::default(),
            sys: sys::SysState::default(),
            clock: clock::TurnClock {
                now,
                epoch: now,
                turns: 0,
                quiet: Default::default(),
            },
            disk: Default::default(),
            links: Vec::new(),
            records: Default::default(),
            cluster_acks: Default::default(),
            replaying: Default::default(),
            #[cfg(debug_assertions)]
            faults: Faults::from_env(),
        }
    }

    /// Arms the backend in the kernel (`Backend::start`), before the shards start serving
    /// together. What fails is logged and tried again by the first turn's wait.
    pub fn start_backend(&mut self) {
        if let Err(e) = self.backend.start() {
            log::error!("Error: shard {} event loop: {e}", self.id);
        }
    }

    /// Runs the event loop until shutdown.
    pub fn run(mut self) {
        let mut next_tick = self.shared.clock.now() + TIMER_TICK;
        while self.turn(&mut next_tick) {}
    }

    /// One turn of the event loop: wait (at most until `next_tick`), handle what came, send
    /// what that produced. False once the broker is shutting down (the shard has closed
    /// its connections). A simulation steps shards by calling this.
    pub fn turn(&mut self, next_tick: &mut Instant) -> bool {
        if self.shared.shutdown.load(Ordering::Acquire) {
            self.shut_down();
            return false;
        }
        let mut events = self.wait_for_events(*next_tick);
        // New settings (a reload) apply from here on, to what this wait brought in too.
        self.take_new_settings();
        self.output.memory.waiting_elsewhere = self.written_elsewhere();
        if !events.is_empty() || self.mailbox_ready() {
            self.clock.quiet.worked();
        }
        self.release_drained();
        // Before decoding: a client whose SUBSCRIBE ends now has what it sent meanwhile
        // read this turn.
        self.resume_subscribing();
        self.resume_decoding();
        self.seal_waiting();
        self.renew_scan_budget();
        self.resume_handshakes();
        for event in events.drain(..) {
            self.on_event(event);
        }
        self.events = events;
        self.drain_mailbox();
        if self.id == 0 {
            self.publish_log_lines();
        }
        if !self.crossing.outbox.defers() {
            self.retry_overflow(); // Else once the turn is on disk (`journal_turn`).
        }
        self.apply_trie_ops();
        self.sweep_trie(false);
        self.request_markers();
        self.send_all_owed();
        self.send_cluster_acks();
        if self.clock.now >= *next_tick {
            self.check_timers();
            *next_tick = self.clock.now + TIMER_TICK;
        }
        // Before the turn's packets go out: an acknowledgement follows what it acknowledges
        // to disk.
        self.journal_turn();
        self.flush();
        self.end_turn();
        true
    }

    /// Waits for events until `next_tick` at the latest (not at all if there is work now).
    fn wait_for_events(&mut self, next_tick: Instant) -> Vec<Event> {
        // `now` is when the last turn ended (read there for its duration): the clock is read
        // twice a turn, not four times (at tens of thousands of turns a second it showed in
        // profiles).
        let mut timeout = next_tick.saturating_duration_since(self.clock.now);
        self.shared.mailboxes.going_to_sleep(self.id);
        if self.has_work_now() {
            timeout = Duration::ZERO;
        }
        if let Some(limit) = self.compaction_wait_limit() {
            timeout = timeout.min(limit);
        }
        let mut events = std::mem::take(&mut self.events);
        if let Err(e) = self.backend.wait(Some(timeout), &mut events) {
            log::error!("Error: shard {} event loop: {e}", self.id);
            // Whatever failed is not retried in a hot loop (nor logged thousands of times
            // a second).
            std::thread::sleep(Duration::from_millis(10));
        }
        self.shared.mailboxes.awake(self.id);
        self.clock.turns += 1;
        self.stats()
            .loop_turns
            .store(self.clock.turns, Ordering::Relaxed);
        self.clock.now = self.shared.clock.now();
        events
    }

    /// What the other shards have written and their clients not yet read (for the memory
    /// limit).
    fn written_elsewhere(&self) -> usize {
        (self.shared.write_queued.iter().enumerate())
            .filter(|&(shard, _)| shard != self.id)
            .map(|(_, q)| q.load(Ordering::Relaxed))
            .sum()
    }

    /// What this shard holds written told the others; the turn's duration counted.
    fn end_turn(&mut self) {
        self.shared.write_queued[self.id].store(
            self.backend.queued_bytes_total() + self.transport.sealing.unsealed_bytes,
            Ordering::Relaxed,
        );
        let ended = self.shared.clock.now();
        let took = ended.saturating_duration_since(self.clock.now);
        self.stats().turn_durations.record(took.as_micros() as u64);
        self.clock.now = ended;
    }

    /// Whether the next turn has work without waiting for an event: the loop does not
    /// sleep then.
    fn has_work_now(&self) -> bool {
        self.mailbox_ready()
            // (What waits for a disk, this shard's or the one a blocked shard's, does not
            // spin the loop.)
            || (self.crossing.outbox.has_sendable() && !self.disk.wait.failing())
            || self.subs.owed.next_turn
            || self.transport.handshakes.pending()
            || self.transport.sealing.pending()
            || !self.receiving.waiting.is_empty()
            || !self.subs.trie.sweep.is_empty()
            || !self.subs.queue.packets.is_empty()
            || !self.subs.owed.requests.is_empty()
            || self.cluster_acks_due()
    }

    /// No work for its next turn, nor from or for other shards (mailbox and outbox empty):
    /// with every shard idle and no client traffic, a simulation has settled.
    pub fn is_idle(&self) -> bool {
        !self.has_work_now()
            && self.crossing.mailbox.receiver.is_empty()
            && self.crossing.outbox.is_empty()
            && !self.has_parked()
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Accepted {
                conn,
                peer,
                local_port,
                socket,
            } => self.on_accepted(conn, peer, local_port, socket),
            Event::Received { conn, data } => {
                self.shared.stats[self.id]
                    .bytes_received
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                let now = self.stamp();
                let Some(c) = self.conn_mut(conn) else { return };
                c.heard_from(now);
                let bridge_connecting = c.link().is_some() && c.session.is_none();
                if c.layers.is_some() {
                    if !self.transport_received(conn, &data) {
                        return;
                    }
                } else if c.inbuf.is_empty() {
                    c.inbuf = data;
                } else {
                    c.inbuf.extend_from_slice(&data);
                }
                if bridge_connecting && self.old_connack(conn) {
                    return;
                }
                self.process_input(conn);
            }
            Event::Connected { conn } => {
                self.on_connected(conn);
            }
            Event::Closed { conn, error } => {
                if !self.links.is_empty() && self.on_probe_closed(conn) {
                    return;
                }
                let reason = match error {
                    None => close::CloseReason::PeerClosed,
                    Some(_) => close::CloseReason::SocketError,
                };
                self.input_ended(conn, reason);
            }
        }
    }

    /// This turn's time as a connection record keeps it.
    fn stamp(&self) -> clock::Stamp {
        clock::Stamp::at(self.clock.now, self.clock.epoch)
    }

    /// This shard's counters.
    fn stats(&self) -> &Stats {
        &self.shared.stats[self.id]
    }

    fn conn_mut(&mut self, conn: ConnId) -> Option<&mut Conn> {
        conn::live_mut(&mut self.conns, conn)
    }

    /// The client id of a connection, for log lines: a shared handle, not a copy (this is
    /// on the PUBLISH path).
    fn conn_name(&self, conn: ConnId) -> Arc<str> {
        self.conn(conn)
            .and_then(|c| c.client_id.clone())
            .unwrap_or_else(|| Arc::from("<unknown>"))
    }

    /// Removes a connection from the table (to close it).
    fn take_conn(&mut self, conn: ConnId) -> Option<Box<Conn>> {
        let slot = self.conns.get_mut(conn.slot())?;
        if slot.as_ref().is_none_or(|c| c.id != conn) {
            return None;
        }
        let mut taken = slot.take();
        if let Some(c) = &mut taken {
            receiving::forget_input(&self.shared, c);
            self.forget_unsealed(c);
            self.shared.connections.fetch_sub(1, Ordering::AcqRel);
            // A bridge's own connection came in on no listener.
            if c.link().is_none() {
                self.shared.listener_connections[c.listener()].fetch_sub(1, Ordering::AcqRel);
            }
        }
        taken
    }

    fn conn(&self, conn: ConnId) -> Option<&Conn> {
        self.conns
            .get(conn.slot())
            .and_then(Option::as_deref)
            .filter(|c| c.id == conn)
    }

    fn on_packet(&mut self, conn: ConnId, packet: Packet) {
        let Some(c) = self.conn(conn) else { return };
        if let Some(link) = c.link() {
            self.on_link_packet(conn, link, packet);
            return;
        }
        let Some(session) = c.session else {
            // The decoder lets nothing but CONNECT through first [MQTT-3.1.0-1]; then, until
            // CONNACK, only the AUTH of an authentication exchange (§4.12).
            match packet {
                Packet::Connect(connect) if c.version().is_none() => self.on_connect(conn, connect),
                Packet::Auth(auth)
                    if c.extras.as_ref().is_some_and(|e| e.auth_exchange.is_some()) =>
                {
                    self.on_auth(conn, auth)
                }
                _ => self.protocol_violation(conn, "a packet before CONNACK"),
            }
            return;
        };
        if !matches!(packet, Packet::Subscribe(_) | Packet::Unsubscribe(_)) {
            // SUBACKs and UNSUBACKs waiting for this turn's trie batch go out before the
            // reply to any later packet: a client's replies come in the order it asked.
            self.apply_trie_ops();
        }
        match packet {
            // [MQTT-3.1.0-2] a second CONNECT is a protocol violation.
            Packet::Connect(_) => self.protocol_violation(conn, "second CONNECT"),
            Packet::Publish(publish) => self.on_publish(conn, session, publish),
            Packet::PubAck(ack) => self.on_puback(conn, session, ack.packet_id),
            Packet::PubRec(rec) => self.on_pubrec(conn, session, rec.packet_id, rec.reason),
            Packet::PubRel(rel) => self.on_pubrel(conn, session, rel.packet_id),
            Packet::PubComp(comp) => self.on_pubcomp(conn, session, comp.packet_id),
            Packet::Subscribe(subscribe) => self.on_subscribe(conn, session, subscribe),
            Packet::Unsubscribe(unsubscribe) => self.on_unsubscribe(conn, session, unsubscribe),
            Packet::PingReq => {
                log::debug!("Received PINGREQ from {}", self.conn_name(conn));
                self.send_packet(conn, &Packet::PingResp);
                log::debug!("Sending PINGRESP to {}", self.conn_name(conn));
            }
            Packet::Disconnect(disconnect) => self.on_disconnect(conn, session, disconnect),
            Packet::Auth(auth) => self.on_auth(conn, auth),
            // Server-to-client packets from a client. [MQTT-4.8.0-1] (5.0: §4.13)
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                self.protocol_violation(conn, "a packet only a server sends")
            }
        }
    }
}
