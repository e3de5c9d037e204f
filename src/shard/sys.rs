//! `$SYS/broker/...`: Mosquitto's broker statistics, published retained every
//! `sys_interval` seconds (0: never) by shard 0, only the values that changed. Counters are
//! per shard (`Stats`); gauges (sessions, connected clients, subscriptions) each shard
//! refreshes on the same interval, so a figure may lag by one interval across shards.

use bytes::Bytes;
use hashbrown::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::io::Backend;
use super::Shard;
use crate::codec::{MqttStr, QoS};
use crate::router::Message;

#[derive(Default)]
pub(super) struct SysState {
    /// When the gauges are next refreshed (and shard 0 next publishes).
    next: Option<Instant>,
    /// Shard 0: the value last published on each topic.
    published: HashMap<&'static str, String>,
    /// Shard 0: the most clients seen connected at once.
    clients_max: u64,
    /// Shard 0: when the load averages were last updated, and each one's state.
    load_at: Option<Instant>,
    loads: [Load; LOADS.len()],
}

/// Mosquitto's `$SYS/broker/load/<what>/{1min,5min,15min}`: per-minute rates averaged
/// exponentially over 1, 5 and 15 minutes.
#[derive(Default, Clone, Copy)]
struct Load {
    last_count: u64,
    averages: [f64; 3],
}

const WINDOWS_MIN: [f64; 3] = [1.0, 5.0, 15.0];

/// The load topics, in the order of `counts` in `publish_sys`.
const LOADS: [[&str; 3]; 7] = [
    [
        "$SYS/broker/load/messages/received/1min",
        "$SYS/broker/load/messages/received/5min",
        "$SYS/broker/load/messages/received/15min",
    ],
    [
        "$SYS/broker/load/messages/sent/1min",
        "$SYS/broker/load/messages/sent/5min",
        "$SYS/broker/load/messages/sent/15min",
    ],
    [
        "$SYS/broker/load/publish/received/1min",
        "$SYS/broker/load/publish/received/5min",
        "$SYS/broker/load/publish/received/15min",
    ],
    [
        "$SYS/broker/load/publish/sent/1min",
        "$SYS/broker/load/publish/sent/5min",
        "$SYS/broker/load/publish/sent/15min",
    ],
    [
        "$SYS/broker/load/bytes/received/1min",
        "$SYS/broker/load/bytes/received/5min",
        "$SYS/broker/load/bytes/received/15min",
    ],
    [
        "$SYS/broker/load/bytes/sent/1min",
        "$SYS/broker/load/bytes/sent/5min",
        "$SYS/broker/load/bytes/sent/15min",
    ],
    [
        "$SYS/broker/load/connections/1min",
        "$SYS/broker/load/connections/5min",
        "$SYS/broker/load/connections/15min",
    ],
];

impl<B: Backend> Shard<B> {
    /// `log_dest topic`: shard 0 publishes waiting log lines on `$SYS/broker/log/...`, a
    /// bounded number per turn.
    pub(super) fn publish_log_lines(&mut self) {
        const LINES_PER_TURN: usize = 256;
        let lines: Vec<_> = crate::logging::take_topic_lines(LINES_PER_TURN).collect();
        for (topic, line) in lines {
            // As Mosquitto: QoS 2, not retained, expiring after 20 seconds.
            let message = Arc::new(Message {
                topic: MqttStr::from_static(topic),
                payload: bytes::Bytes::from(line),
                qos: QoS::ExactlyOnce,
                retain: false,
                properties: Default::default(),
                origin: None,
                expires_at: Some(self.clock.now + Duration::from_secs(20)),
                order: self.publish_order(),
                stream: Default::default(),
            });
            self.route(&message, None);
        }
    }

    pub(super) fn sys_tick(&mut self, now: Instant) {
        let interval = self.config.sys_interval_s;
        if interval == 0 || self.sys.next.is_some_and(|at| now < at) {
            return;
        }
        self.sys.next = Some(now + Duration::from_secs(interval));
        let stats = &self.shared.stats[self.id];
        let (mut connected, mut subscriptions, mut inflight, mut queued) = (0, 0, 0, 0);
        for s in self.sessions.values() {
            connected += usize::from(s.conn.is_some());
            subscriptions += s.subscriptions().len();
            inflight += s.outgoing().inflight_len();
            queued += s.outgoing().queue_len();
        }
        stats
            .inflight_messages
            .store(inflight as u64, Ordering::Relaxed);
        stats
            .queued_messages
            .store(queued as u64, Ordering::Relaxed);
        stats
            .sessions
            .store(self.sessions.len() as u64, Ordering::Relaxed);
        stats
            .clients_connected
            .store(connected as u64, Ordering::Relaxed);
        stats
            .subscriptions
            .store(subscriptions as u64, Ordering::Relaxed);
        if self.id == 0 {
            self.publish_sys();
        }
    }

    fn publish_sys(&mut self) {
        let total = self.shared.total_stats();
        let retained = self.shared.retained.lock().expect("retained lock").len();
        self.sys.clients_max = self.sys.clients_max.max(total.clients_connected);
        let uptime = self.shared.started.elapsed().as_secs();
        let values = gauges(&total, retained, self.sys.clients_max, uptime);
        let counts = [
            total.packets_received,
            total.packets_sent,
            total.messages_received,
            total.messages_sent,
            total.bytes_received,
            total.bytes_sent,
            total.connects,
        ];
        let loads = self.update_loads(counts);
        let cluster = (self.shared.cluster.get().cloned()).map(|cluster| {
            (crate::cluster::COUNTS.iter())
                .map(move |count| (count.topic, (count.read)(&cluster.stats).to_string()))
        });
        let values = values
            .into_iter()
            .chain(cluster.into_iter().flatten())
            .chain(
                [
                    (
                        "$SYS/broker/messages/received",
                        total.packets_received.to_string(),
                    ),
                    ("$SYS/broker/messages/sent", total.packets_sent.to_string()),
                ]
                .into_iter()
                .chain(loads),
            );
        for (topic, value) in values {
            if self.sys.published.get(topic) != Some(&value) {
                self.sys.published.insert(topic, value.clone());
                self.publish_sys_value(topic, value);
            }
        }
    }

    /// One `$SYS` value that changed: retained, and routed to its subscribers.
    fn publish_sys_value(&mut self, topic: &'static str, value: String) {
        let message = Arc::new(Message {
            topic: MqttStr::from_static(topic),
            payload: Bytes::from(value),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: Default::default(),
            origin: None,
            expires_at: None,
            order: self.publish_order(),
            stream: Default::default(),
        });
        // The broker's own: not bounded, but counted with the others.
        let mut store = self.shared.retained.lock().expect("retained lock");
        store.set(message.clone());
        self.shared
            .retained_bytes
            .store(store.bytes(), Ordering::Relaxed);
        drop(store);
        self.route(&message, None);
    }

    /// Moves the load averages on by the time since their last update, with the counts
    /// now, and returns them as `$SYS` values (two decimals, as Mosquitto).
    fn update_loads(&mut self, counts: [u64; LOADS.len()]) -> Vec<(&'static str, String)> {
        let now = self.clock.now;
        let elapsed_s = self
            .sys
            .load_at
            .map(|at| now.duration_since(at).as_secs_f64());
        self.sys.load_at = Some(now);
        let mut out = Vec::with_capacity(LOADS.len() * 3);
        for ((load, count), topics) in self.sys.loads.iter_mut().zip(counts).zip(LOADS) {
            if let Some(dt) = elapsed_s.filter(|&dt| dt > 0.0) {
                let per_minute = count.saturating_sub(load.last_count) as f64 * 60.0 / dt;
                for (average, window) in load.averages.iter_mut().zip(WINDOWS_MIN) {
                    let keep = (-dt / (window * 60.0)).exp();
                    *average = *average * keep + per_minute * (1.0 - keep);
                }
            }
            load.last_count = count;
            for (average, topic) in load.averages.iter().zip(topics) {
                out.push((topic, format!("{average:.2}")));
            }
        }
        out
    }
}

/// Mosquitto's `$SYS/broker/...` gauges and counters, from the shards' counters summed.
fn gauges(
    total: &super::StatsSnapshot,
    retained: usize,
    clients_max: u64,
    uptime: u64,
) -> [(&'static str, String); 14] {
    let dropped = total.dropped_slow_client
        + total.dropped_queue_full
        + total.dropped_mailbox_full
        + total.dropped_overflow_full
        + total.dropped_expired
        + total.dropped_too_large;
    [
        (
            "$SYS/broker/version",
            format!("midge version {}", env!("CARGO_PKG_VERSION")),
        ),
        ("$SYS/broker/uptime", format!("{uptime} seconds")),
        (
            "$SYS/broker/clients/connected",
            total.clients_connected.to_string(),
        ),
        (
            "$SYS/broker/clients/disconnected",
            (total.sessions.saturating_sub(total.clients_connected)).to_string(),
        ),
        ("$SYS/broker/clients/total", total.sessions.to_string()),
        ("$SYS/broker/clients/maximum", clients_max.to_string()),
        (
            "$SYS/broker/clients/expired",
            total.clients_expired.to_string(),
        ),
        (
            "$SYS/broker/subscriptions/count",
            total.subscriptions.to_string(),
        ),
        ("$SYS/broker/retained messages/count", retained.to_string()),
        (
            "$SYS/broker/publish/messages/received",
            total.messages_received.to_string(),
        ),
        (
            "$SYS/broker/publish/messages/sent",
            total.messages_sent.to_string(),
        ),
        ("$SYS/broker/publish/messages/dropped", dropped.to_string()),
        (
            "$SYS/broker/bytes/received",
            total.bytes_received.to_string(),
        ),
        ("$SYS/broker/bytes/sent", total.bytes_sent.to_string()),
    ]
}
