//! Counters every shard keeps (each on its own cache line), and their sum: what was
//! dropped and why, traffic, and the gauges `$SYS` publishes.

use std::sync::atomic::{AtomicU64, Ordering};

use super::Shared;

/// Counters of what was dropped, by reason: nothing is lost silently.
#[derive(Debug, Default)]
pub struct Stats {
    /// QoS 0 messages not sent because the client's write buffer was full.
    pub dropped_slow_client: AtomicU64,
    /// QoS 1/2 messages not queued because the session's queue was full.
    pub dropped_queue_full: AtomicU64,
    /// QoS 0 messages not passed to another shard because its mailbox was full.
    pub dropped_mailbox_full: AtomicU64,
    /// QoS 1/2 messages dropped because the overflow list was full too.
    pub dropped_overflow_full: AtomicU64,
    /// PUBLISH packets received and sent, by QoS (index 0, 1, 2).
    pub messages_received: [AtomicU64; 3],
    pub messages_sent: [AtomicU64; 3],
    /// Bounds a client reached, by `Limit` (its index).
    pub limits_hit: [AtomicU64; crate::limits::Limit::ALL.len()],
    /// CONNECTs refused and connections denied, by `Refused` (its index).
    pub refused: [AtomicU64; Refused::ALL.len()],
    /// 5.0 messages whose Message Expiry Interval ran out before delivery.
    pub dropped_expired: AtomicU64,
    /// Messages larger than the receiving client's Maximum Packet Size.
    pub dropped_too_large: AtomicU64,
    /// Messages the ACL kept from a topic (a PUBLISH or will its client may not write) or
    /// from a client (a delivery it may not read).
    pub dropped_acl: AtomicU64,
    /// MQTT packets of any type received and sent (PUBLISH included).
    pub packets_received: AtomicU64,
    pub packets_sent: AtomicU64,
    /// CONNECTs accepted.
    pub connects: AtomicU64,
    /// Bytes read from and handed to client sockets.
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Offline sessions ended by their expiry.
    pub clients_expired: AtomicU64,
    /// Gauges each shard refreshes for `$SYS` (every `sys_interval`): its sessions, those
    /// with a connected client, and their subscriptions.
    pub sessions: AtomicU64,
    pub clients_connected: AtomicU64,
    pub subscriptions: AtomicU64,
    /// QoS 1/2 messages sent and not yet acknowledged, and messages queued, over the
    /// shard's sessions (refreshed with the gauges above).
    pub inflight_messages: AtomicU64,
    pub queued_messages: AtomicU64,
    /// Loop turns the shard has taken (it turns at least every timer tick): the systemd
    /// watchdog pings only while every shard's count moves.
    pub loop_turns: AtomicU64,
    /// How long the shard's loop turns took (the wait excluded).
    pub turn_durations: Durations,
    /// With `persistence true`: how long each sync of the shard's journal to its disk took
    /// (`fdatasync`; none with `autosave_interval` 0 and `autosave_on_changes false`).
    pub persist_syncs: Durations,
    /// Writes, syncs and rewrites of the shard's journal that failed.
    pub persist_failures: AtomicU64,
    /// Clients held while the shard's journal is not durable (`disk_wait.rs`).
    pub persist_held_clients: AtomicU64,
}

/// A histogram of durations by `DURATION_BUCKETS_US` (the last bucket: longer), and their
/// sum in microseconds. One thread records (only the shard writes its own: no
/// read-modify-write); the metrics thread reads.
#[derive(Debug, Default)]
pub struct Durations {
    pub buckets: [AtomicU64; DURATION_BUCKETS_US.len() + 1],
    pub us_sum: AtomicU64,
}

impl Durations {
    pub fn record(&self, us: u64) {
        let bucket = DURATION_BUCKETS_US.partition_point(|&bound| bound < us);
        let add = |c: &AtomicU64, n: u64| c.store(c.load(Ordering::Relaxed) + n, Ordering::Relaxed);
        add(&self.buckets[bucket], 1);
        add(&self.us_sum, us);
    }
}

/// Why a connection was refused (the metrics' label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Bad user name or password, no certificate where one names the user, not allowed.
    NotAuthorised,
    /// An empty, too long or otherwise unacceptable client id (a bridge's included).
    ClientId,
    /// An unsupported protocol version, or a CONNECT the broker cannot take.
    Protocol,
    /// `max_connections` on its listener.
    MaxConnections,
    /// Anything else (an unsupported authentication method, a will above `max_qos`...).
    Other,
}

impl Refused {
    pub const ALL: [Refused; 5] = [
        Refused::NotAuthorised,
        Refused::ClientId,
        Refused::Protocol,
        Refused::MaxConnections,
        Refused::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refused::NotAuthorised => "not_authorised",
            Refused::ClientId => "client_id",
            Refused::Protocol => "protocol",
            Refused::MaxConnections => "max_connections",
            Refused::Other => "other",
        }
    }
}

/// Upper bounds (microseconds) of the duration histograms.
pub const DURATION_BUCKETS_US: [u64; 13] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

impl Stats {
    /// `count` more messages that did not reach a client for `why` (not counted: QoS 0 for
    /// a client that is away, and anything for a clean bridge whose link is down: nothing
    /// waits for them, as MQTT says).
    pub fn dropped(&self, why: crate::session::DropReason, count: u64) {
        use crate::session::DropReason;
        let counter = match why {
            DropReason::Offline => return,
            DropReason::QueueFull => &self.dropped_queue_full,
            DropReason::Acl => &self.dropped_acl,
            DropReason::Expired => &self.dropped_expired,
            DropReason::SlowClient => &self.dropped_slow_client,
            DropReason::TooLarge => &self.dropped_too_large,
        };
        counter.fetch_add(count, Ordering::Relaxed);
    }

    /// One more PUBLISH of `qos` written to a client.
    pub fn publish_sent(&self, qos: crate::codec::QoS) {
        self.messages_sent[qos as usize].fetch_add(1, Ordering::Relaxed);
        self.packets_sent.fetch_add(1, Ordering::Relaxed);
    }

    /// One more connection refused for `why`.
    pub fn refused(&self, why: Refused) {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn limit_hit(&self, limit: crate::limits::Limit) {
        self.limits_hit[limit as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// A sum of `Stats` at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub dropped_slow_client: u64,
    pub dropped_queue_full: u64,
    pub dropped_mailbox_full: u64,
    pub dropped_overflow_full: u64,
    pub messages_received: u64,
    pub messages_sent: u64,
    pub dropped_expired: u64,
    pub dropped_too_large: u64,
    pub packets_received: u64,
    pub packets_sent: u64,
    pub connects: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub clients_expired: u64,
    pub sessions: u64,
    pub clients_connected: u64,
    pub subscriptions: u64,
}

impl Shared {
    /// Each shard's loop turns so far.
    pub fn loop_turns(&self) -> Vec<u64> {
        (self.stats.iter())
            .map(|s| s.loop_turns.load(Ordering::Relaxed))
            .collect()
    }

    /// The sum of every shard's counters.
    pub fn total_stats(&self) -> StatsSnapshot {
        let mut total = StatsSnapshot::default();
        for s in self.stats.iter() {
            let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
            total.dropped_slow_client += get(&s.dropped_slow_client);
            total.dropped_queue_full += get(&s.dropped_queue_full);
            total.dropped_mailbox_full += get(&s.dropped_mailbox_full);
            total.dropped_overflow_full += get(&s.dropped_overflow_full);
            total.messages_received += s.messages_received.iter().map(get).sum::<u64>();
            total.messages_sent += s.messages_sent.iter().map(get).sum::<u64>();
            total.dropped_expired += get(&s.dropped_expired);
            total.dropped_too_large += get(&s.dropped_too_large);
            total.packets_received += get(&s.packets_received);
            total.packets_sent += get(&s.packets_sent);
            total.connects += get(&s.connects);
            total.bytes_received += get(&s.bytes_received);
            total.bytes_sent += get(&s.bytes_sent);
            total.clients_expired += get(&s.clients_expired);
            total.sessions += get(&s.sessions);
            total.clients_connected += get(&s.clients_connected);
            total.subscriptions += get(&s.subscriptions);
        }
        total
    }
}
