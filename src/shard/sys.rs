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
}

impl<B: Backend> Shard<B> {
    pub(super) fn sys_tick(&mut self, now: Instant) {
        let interval = self.config.sys_interval_s;
        if interval == 0 || self.sys.next.is_some_and(|at| now < at) {
            return;
        }
        self.sys.next = Some(now + Duration::from_secs(interval));
        let stats = &self.shared.stats[self.id];
        let connected = self.sessions.values().filter(|s| s.conn.is_some()).count();
        let subscriptions: usize = self.sessions.values().map(|s| s.subscriptions.len()).sum();
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
        let dropped = total.dropped_slow_client
            + total.dropped_queue_full
            + total.dropped_mailbox_full
            + total.dropped_overflow_full
            + total.dropped_expired
            + total.dropped_too_large;
        let uptime = self.shared.started.elapsed().as_secs();
        let values: [(&'static str, String); 14] = [
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
            (
                "$SYS/broker/clients/maximum",
                self.sys.clients_max.to_string(),
            ),
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
        ];
        for (topic, value) in values {
            if self.sys.published.get(topic) == Some(&value) {
                continue;
            }
            self.sys.published.insert(topic, value.clone());
            let message = Arc::new(Message {
                topic: MqttStr::from_static(topic),
                payload: Bytes::from(value),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: Default::default(),
                origin: None,
                expires_at: None,
            });
            self.shared
                .retained
                .lock()
                .expect("retained lock")
                .set(message.clone());
            self.route(&message, None);
        }
    }
}
