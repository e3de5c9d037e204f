//! `metrics_listener ADDRESS:PORT`: Prometheus metrics, `GET /metrics` over HTTP, in the
//! OpenMetrics text format (encoded by `prometheus-client`). A thread of its own serves one
//! scrape at a time and reads what the shards already keep (counters each shard writes on
//! its own cache line, gauges, queue depths): a scrape adds nothing to the shards' work but
//! one short lock of the retained store to count it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::limits::Limit;
use crate::shard::{Durations, Refused, Shared, Stats, DURATION_BUCKETS_US};

/// The most a request may send before its blank line (a scraper sends a few hundred bytes).
const REQUEST_MAX: usize = 8 * 1024;
/// How long one client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves the metrics on `addr` from a thread of its own, until the broker stops. The
/// listening socket is bound here: an address that cannot be had stops the start.
pub fn serve(addr: SocketAddr, shared: Arc<Shared>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    let mut registry = Registry::default();
    registry.register_collector(Box::new(BrokerMetrics(shared.clone())));
    std::thread::Builder::new()
        .name("midge-metrics".into())
        .spawn(move || {
            while !shared.shutdown.load(Ordering::Acquire) {
                if !readable(&listener, SHUTDOWN_CHECK) {
                    continue;
                }
                match listener.accept() {
                    Ok((stream, _)) => answer(stream, &registry),
                    Err(e) => {
                        log::warn!("Warning: metrics_listener: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
    Ok(bound)
}

/// How often the metrics thread looks whether the broker is stopping.
const SHUTDOWN_CHECK: Duration = Duration::from_millis(250);

/// Whether a connection waits on `listener`, waiting at most `wait` for one.
fn readable(listener: &TcpListener, wait: Duration) -> bool {
    crate::os::wait_readable(listener, Some(wait)).unwrap_or(false)
}

/// One HTTP/1.x exchange: `GET /metrics` gets the metrics, anything else 404 or 405; the
/// connection closes after the answer.
fn answer(mut stream: TcpStream, registry: &Registry) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
    let _ = stream.set_write_timeout(Some(REQUEST_TIMEOUT));
    let mut request = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&chunk[..n]),
        }
        if request.len() > REQUEST_MAX {
            let _ = stream.write_all(&response("431 Request Header Fields Too Large", "", ""));
            return;
        }
    }
    let line = request.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    let reply = match (method, path) {
        (b"GET", b"/metrics") => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => response(
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    &body,
                ),
                Err(_) => response("500 Internal Server Error", "", ""),
            }
        }
        (_, b"/metrics") => response("405 Method Not Allowed", "", ""),
        _ => response("404 Not Found", "text/plain", "midge serves /metrics\n"),
    };
    let _ = stream.write_all(&reply);
}

fn response(status: &str, content_type: &str, body: &str) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if !content_type.is_empty() {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// The broker's figures, read at each scrape.
struct BrokerMetrics(Arc<Shared>);

impl std::fmt::Debug for BrokerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BrokerMetrics")
    }
}

/// How a figure is read from a shard's `Stats`.
type Reader = fn(&Stats) -> u64;

/// A shard's counter, by name, help and the field it is read from.
type ShardCounter = (&'static str, &'static str, Reader);

const SHARD_COUNTERS: &[ShardCounter] = &[
    (
        "midge_packets_received",
        "MQTT packets of every type received",
        |s| s.packets_received.load(Ordering::Relaxed),
    ),
    (
        "midge_packets_sent",
        "MQTT packets of every type sent",
        |s| s.packets_sent.load(Ordering::Relaxed),
    ),
    (
        "midge_bytes_received",
        "Bytes read from client sockets",
        |s| s.bytes_received.load(Ordering::Relaxed),
    ),
    ("midge_bytes_sent", "Bytes handed to client sockets", |s| {
        s.bytes_sent.load(Ordering::Relaxed)
    }),
    ("midge_connects", "CONNECTs accepted", |s| {
        s.connects.load(Ordering::Relaxed)
    }),
    (
        "midge_sessions_expired",
        "Offline sessions ended by their expiry",
        |s| s.clients_expired.load(Ordering::Relaxed),
    ),
    (
        "midge_shard_loop_turns",
        "Event loop turns the shard has taken",
        |s| s.loop_turns.load(Ordering::Relaxed),
    ),
];

/// One sample per shard (label `shard`), a counter or a gauge.
fn per_shard(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    values: &[u64],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (shard, &value) in values.iter().enumerate() {
        let shard = shard.to_string();
        let labels = [("shard", shard.as_str())];
        let sample = family.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(value).encode(sample)?,
            _ => ConstGauge::new(value as i64).encode(sample)?,
        }
    }
    Ok(())
}

/// A counter per shard (`shards`) and per value of one more label (`label`, its
/// `values`), read as `read(stats, index of the value)`.
fn per_shard_by(
    encoder: &mut DescriptorEncoder,
    shards: &[(String, &Stats)],
    metric: &str,
    help: &str,
    (label, values): (&str, &[&str]),
    read: impl Fn(&Stats, usize) -> u64,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(metric, help, None, MetricType::Counter)?;
    for (shard, stats) in shards {
        for (index, value) in values.iter().enumerate() {
            let labels = [("shard", shard.as_str()), (label, value)];
            ConstCounter::new(read(stats, index)).encode(family.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

/// A histogram per shard of the durations `pick` chooses.
fn durations(
    encoder: &mut DescriptorEncoder,
    shards: &[(String, &Stats)],
    metric: &str,
    help: &str,
    pick: impl Fn(&Stats) -> &Durations,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(metric, help, None, MetricType::Histogram)?;
    let bounds = DURATION_BUCKETS_US.iter().map(|&us| us as f64 / 1e6);
    for (shard, stats) in shards {
        let durations = pick(stats);
        let counts = durations.buckets.iter().map(|c| c.load(Ordering::Relaxed));
        let buckets: Vec<(f64, u64)> = bounds.clone().chain([f64::MAX]).zip(counts).collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = durations.us_sum.load(Ordering::Relaxed) as f64 / 1e6;
        let labels = [("shard", shard.as_str())];
        let mut metric = family.encode_family(&labels)?;
        metric.encode_histogram::<[(&str, &str); 0]>(sum, count, &buckets, None)?;
    }
    Ok(())
}

/// Messages dropped, by the label `reason`.
const DROPS: &[(&str, Reader)] = &[
    ("slow_client", |s| {
        s.dropped_slow_client.load(Ordering::Relaxed)
    }),
    ("queue_full", |s| {
        s.dropped_queue_full.load(Ordering::Relaxed)
    }),
    ("mailbox_full", |s| {
        s.dropped_mailbox_full.load(Ordering::Relaxed)
    }),
    ("overflow_full", |s| {
        s.dropped_overflow_full.load(Ordering::Relaxed)
    }),
    ("expired", |s| s.dropped_expired.load(Ordering::Relaxed)),
    ("too_large", |s| s.dropped_too_large.load(Ordering::Relaxed)),
    ("acl", |s| s.dropped_acl.load(Ordering::Relaxed)),
];

/// Gauges each shard refreshes every `sys_interval`, as for `$SYS`.
const SHARD_GAUGES: &[ShardCounter] = &[
    (
        "midge_sessions",
        "Sessions held (refreshed every sys_interval)",
        |s| s.sessions.load(Ordering::Relaxed),
    ),
    (
        "midge_clients_connected",
        "Sessions with a connected client (refreshed every sys_interval)",
        |s| s.clients_connected.load(Ordering::Relaxed),
    ),
    (
        "midge_subscriptions",
        "Subscriptions (refreshed every sys_interval)",
        |s| s.subscriptions.load(Ordering::Relaxed),
    ),
    (
        "midge_inflight_messages",
        "QoS 1/2 messages sent and not acknowledged yet (refreshed every sys_interval)",
        |s| s.inflight_messages.load(Ordering::Relaxed),
    ),
    (
        "midge_queued_messages",
        "Messages queued for sessions, offline or past their window (refreshed every sys_interval)",
        |s| s.queued_messages.load(Ordering::Relaxed),
    ),
];

impl Collector for BrokerMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let shared = &self.0;
        let shards: Vec<(String, &Stats)> = (shared.stats.iter().enumerate())
            .map(|(i, s)| (i.to_string(), &**s))
            .collect();
        let gauge = |encoder: &mut DescriptorEncoder, name, help, value: i64| {
            let g = ConstGauge::new(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
        };
        gauge(
            &mut encoder,
            "midge_connections",
            "Open connections (a bridge's outgoing one included)",
            shared.connections.load(Ordering::Relaxed) as i64,
        )?;
        let retained = shared.retained.lock().map_or(0, |r| r.len());
        gauge(
            &mut encoder,
            "midge_retained_messages",
            "Retained messages",
            retained as i64,
        )?;
        for (name, help, read) in SHARD_COUNTERS {
            let values: Vec<u64> = shards.iter().map(|(_, stats)| read(stats)).collect();
            per_shard(&mut encoder, name, help, MetricType::Counter, &values)?;
        }
        let qos = ["0", "1", "2"];
        let help = "PUBLISH packets received from clients (and bridges), by QoS";
        per_shard_by(
            &mut encoder,
            &shards,
            "midge_messages_received",
            help,
            ("qos", &qos),
            |s, q| s.messages_received[q].load(Ordering::Relaxed),
        )?;
        let help = "PUBLISH packets sent to clients (and bridges), by QoS";
        per_shard_by(
            &mut encoder,
            &shards,
            "midge_messages_sent",
            help,
            ("qos", &qos),
            |s, q| s.messages_sent[q].load(Ordering::Relaxed),
        )?;
        let reasons: Vec<&str> = DROPS.iter().map(|(reason, _)| *reason).collect();
        let help = "Messages not delivered, by reason (nothing is dropped silently)";
        per_shard_by(
            &mut encoder,
            &shards,
            "midge_messages_dropped",
            help,
            ("reason", &reasons),
            |s, r| DROPS[r].1(s),
        )?;
        let reasons: Vec<&str> = Refused::ALL.iter().map(|r| r.label()).collect();
        let help = "Connections refused (at CONNECT, or at accept for max_connections), by reason";
        per_shard_by(
            &mut encoder,
            &shards,
            "midge_connections_refused",
            help,
            ("reason", &reasons),
            |s, r| s.refused[r].load(Ordering::Relaxed),
        )?;
        let limits: Vec<&str> = Limit::ALL.iter().map(|l| l.label()).collect();
        let help = "Bounds clients reached (a connection closed, its reading held, something refused or dropped), by bound";
        per_shard_by(
            &mut encoder,
            &shards,
            "midge_limits_hit",
            help,
            ("limit", &limits),
            |s, l| s.limits_hit[l].load(Ordering::Relaxed),
        )?;
        for (name, help, read) in SHARD_GAUGES {
            let values: Vec<u64> = shards.iter().map(|(_, stats)| read(stats)).collect();
            per_shard(&mut encoder, name, help, MetricType::Gauge, &values)?;
        }
        let depths: Vec<u64> = (0..shards.len())
            .map(|i| shared.mailboxes.depth(i) as u64)
            .collect();
        let help = "Messages from other shards waiting in the shard's mailbox";
        per_shard(
            &mut encoder,
            "midge_shard_mailbox_depth",
            help,
            MetricType::Gauge,
            &depths,
        )?;
        let queued: Vec<u64> = (shared.write_queued.iter())
            .map(|q| q.load(Ordering::Relaxed) as u64)
            .collect();
        gauge(
            &mut encoder,
            "midge_preconnect_bytes",
            "Bytes held by connections whose CONNECT is not accepted yet",
            shared.preconnect_bytes.load(Ordering::Relaxed) as i64,
        )?;
        let help = "Bytes the shard's sockets have not taken yet";
        per_shard(
            &mut encoder,
            "midge_shard_write_queued_bytes",
            help,
            MetricType::Gauge,
            &queued,
        )?;
        durations(
            &mut encoder,
            &shards,
            "midge_shard_loop_turn_seconds",
            "How long the shard's event loop turns take (waiting excluded)",
            |s| &s.turn_durations,
        )?;
        let config = shared.config.load();
        if config.persistence {
            durations(
                &mut encoder,
                &shards,
                "midge_persistence_sync_seconds",
                "How long syncing the shard's journal to disk takes (fdatasync)",
                |s| &s.persist_syncs,
            )?;
            let read = |f: fn(&Stats) -> &AtomicU64| -> Vec<u64> {
                (shards.iter())
                    .map(|(_, s)| f(s).load(Ordering::Relaxed))
                    .collect()
            };
            per_shard(
                &mut encoder,
                "midge_persistence_failures",
                "Writes, syncs and rewrites of the shard's journal that failed (the disk full or failing)",
                MetricType::Counter,
                &read(|s| &s.persist_failures),
            )?;
            per_shard(
                &mut encoder,
                "midge_persistence_held_clients",
                "Clients whose acknowledgements wait until the shard's journal is on disk again",
                MetricType::Gauge,
                &read(|s| &s.persist_held_clients),
            )?;
        }
        if let Some(cluster) = shared.cluster.get() {
            for count in crate::cluster::COUNTS {
                let (name, help) = (count.metric, count.help);
                let value = (count.read)(&cluster.stats);
                if count.counter {
                    let c = ConstCounter::new(value);
                    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
                } else {
                    gauge(&mut encoder, name, help, value as i64)?;
                }
            }
        }
        if !config.bridges.is_empty() {
            let mut family = encoder.encode_descriptor(
                "midge_bridge_up",
                "Whether the bridge's connection is up (1) or not (0)",
                None,
                MetricType::Gauge,
            )?;
            for (bridge, up) in config.bridges.iter().zip(shared.bridges_up.iter()) {
                let up = i64::from(up.load(Ordering::Relaxed));
                let labels = [("bridge", bridge.name.as_str())];
                ConstGauge::new(up).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
