//! `$SYS/broker/...` statistics: Mosquitto's topics, retained, refreshed every
//! `sys_interval` seconds, and off with `sys_interval 0`.

mod common;

use common::*;
use midge::codec::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Reads `$SYS` publishes into `values` until `done` holds for them (or the deadline).
fn watch(
    monitor: &mut Raw,
    values: &mut HashMap<String, String>,
    what: &str,
    done: impl Fn(&HashMap<String, String>) -> bool,
) {
    let until = Instant::now() + DEADLINE;
    while !done(values) {
        assert!(
            Instant::now() < until,
            "$SYS never showed {what}; last values: {values:#?}"
        );
        if let Some(Packet::Publish(p)) = monitor.poll_packet(Duration::from_millis(100)) {
            let value = String::from_utf8_lossy(&p.payload).into_owned();
            values.insert(p.topic.to_string(), value);
        }
    }
}

/// A load average: per-minute rates with two decimals.
fn load(values: &HashMap<String, String>, topic: &str) -> f64 {
    let text = values.get(topic).map_or("0.00", String::as_str);
    assert_eq!(
        text.split('.').nth(1).map(str::len),
        Some(2),
        "{topic}: {text}"
    );
    text.parse().unwrap()
}

fn number(values: &HashMap<String, String>, topic: &str) -> u64 {
    values.get(topic).and_then(|v| v.parse().ok()).unwrap_or(0)
}

#[test]
fn sys_topics_report_the_broker() {
    let conf = config_file("sys", "sys_interval 1\n");
    let broker = Broker::start(&["-c", &conf, "--threads", "2"]);
    let mut monitor = Raw::connect(broker.port, "monitor");
    monitor.subscribe(&[("$SYS/broker/#", QoS::AtMostOnce)]);
    let mut values = HashMap::new();
    watch(&mut monitor, &mut values, "version and uptime", |v| {
        v.get("$SYS/broker/version")
            .is_some_and(|s| s.starts_with("midge version "))
            && v.get("$SYS/broker/uptime")
                .is_some_and(|s| s.ends_with(" seconds"))
    });

    // More clients, subscriptions, a retained message and some traffic: the figures follow.
    let mut c1 = Raw::connect(broker.port, "c1");
    c1.subscribe(&[("a/#", QoS::AtMostOnce), ("b", QoS::AtMostOnce)]);
    let mut c2 = Raw::connect(broker.port, "c2");
    c2.send(&publish("a/kept", b"retained", QoS::AtLeastOnce, 1, true));
    assert!(matches!(c2.recv(), Packet::PubAck(_)));
    assert_eq!(c1.recv_publish().topic.as_str(), "a/kept");
    watch(
        &mut monitor,
        &mut values,
        "the new clients and traffic",
        |v| {
            number(v, "$SYS/broker/clients/connected") == 3
                && number(v, "$SYS/broker/clients/total") == 3
                && number(v, "$SYS/broker/clients/maximum") >= 3
                && number(v, "$SYS/broker/subscriptions/count") == 3
                && number(v, "$SYS/broker/retained messages/count") >= 1
                && number(v, "$SYS/broker/publish/messages/received") >= 1
                && number(v, "$SYS/broker/publish/messages/sent") >= 1
                && number(v, "$SYS/broker/bytes/received") > 0
                && number(v, "$SYS/broker/bytes/sent") > 0
                // All packets (CONNECT, SUBSCRIBE, PUBACK...) count in messages/.
                && number(v, "$SYS/broker/messages/received")
                    > number(v, "$SYS/broker/publish/messages/received")
                && load(v, "$SYS/broker/load/publish/received/1min") > 0.0
                && load(v, "$SYS/broker/load/connections/15min") > 0.0
                && load(v, "$SYS/broker/load/bytes/sent/5min") > 0.0
        },
    );

    // A client leaves: connected goes down; a late subscriber gets the retained figures.
    c2.send(&Packet::Disconnect(Disconnect::default()));
    c2.expect_closed();
    watch(&mut monitor, &mut values, "the client leaving", |v| {
        number(v, "$SYS/broker/clients/connected") == 2
    });
    let mut late = Raw::connect(broker.port, "late");
    late.subscribe(&[("$SYS/broker/version", QoS::AtMostOnce)]);
    let p = late.recv_publish();
    assert!(p.retain && p.payload.starts_with(b"midge version "));
    // `#` does not match $SYS topics [MQTT-4.7.2-1].
    let mut everything = Raw::connect(broker.port, "everything");
    everything.subscribe(&[("#", QoS::AtMostOnce)]);
    assert_eq!(everything.recv_publish().topic.as_str(), "a/kept");
    everything.expect_nothing(Duration::from_millis(1500));
}

#[test]
fn sys_interval_0_publishes_nothing() {
    let conf = config_file("sys-off", "sys_interval 0\n");
    let broker = Broker::start(&["-c", &conf]);
    let mut monitor = Raw::connect(broker.port, "monitor");
    monitor.subscribe(&[("$SYS/#", QoS::AtMostOnce)]);
    monitor.expect_nothing(Duration::from_millis(1500));
}
