//! `metrics_listener`: Prometheus metrics over HTTP (issue 16).

mod common;

use common::metrics::*;
use common::*;
use midge::codec::*;
use std::io::{Read, Write};
use std::time::Instant;

#[test]
fn metrics_count_traffic_and_drops_per_shard_in_the_openmetrics_format() {
    let conf = config_file(
        "metrics",
        "metrics_listener 127.0.0.1:0\nallow_anonymous true\n",
    );
    let broker = Broker::start(&["-c", &conf, "--threads", "1"]);
    let port = metrics_port(&broker);
    let mut sub = Raw::connect(broker.port, "sub");
    sub.subscribe(&[("t", QoS::AtLeastOnce)]);
    let mut publisher = Raw::connect(broker.port, "pub");
    for i in 1..=3u16 {
        publisher.send(&publish("t", b"x", QoS::AtLeastOnce, i, false));
        assert!(matches!(publisher.recv(), Packet::PubAck(_)));
        sub.recv_publish();
    }
    // Refused: an empty client id without clean session [MQTT-3.1.3-8].
    let (_refused, ack) = Raw::connect_with(
        broker.port,
        connect_packet(ProtocolVersion::V311, "", false, 60),
    );
    assert_ne!(ack.reason, ReasonCode::Success);
    let (status, body) = get(port, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert_eq!(sample(&body, "midge_connections"), Some(2.0), "{body}");
    assert_eq!(
        sample(
            &body,
            "midge_messages_received_total{shard=\"0\",qos=\"1\"}"
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &body,
            "midge_messages_received_total{shard=\"0\",qos=\"0\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(&body, "midge_messages_sent_total{shard=\"0\",qos=\"1\"}"),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &body,
            "midge_connections_refused_total{shard=\"0\",reason=\"client_id\"}"
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            "midge_messages_dropped_total{shard=\"0\",reason=\"queue_full\"}"
        ),
        Some(0.0)
    );
    assert!(sample(&body, "midge_shard_loop_turns_total{shard=\"0\"}").unwrap() > 0.0);
    let turns = sample(&body, "midge_shard_loop_turn_seconds_count{shard=\"0\"}").unwrap();
    assert!(turns > 0.0);
    assert_eq!(
        sample(
            &body,
            "midge_shard_loop_turn_seconds_bucket{le=\"+Inf\",shard=\"0\"}"
        )
        .or_else(|| sample(
            &body,
            "midge_shard_loop_turn_seconds_bucket{shard=\"0\",le=\"+Inf\"}"
        )),
        Some(turns),
        "{body}"
    );
    assert_eq!(sample(&body, "midge_retained_messages"), Some(0.0));
    assert!(body.contains("# TYPE midge_messages_dropped counter"));
    // Anything else is not found; another method on /metrics is not allowed.
    assert_eq!(get(port, "/").0, "HTTP/1.1 404 Not Found");
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "POST /metrics HTTP/1.1\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 405"), "{reply}");
}

#[test]
fn metrics_say_whether_each_bridge_is_up() {
    let remote = Broker::start(&[]);
    let conf = config_file(
        "metrics-bridge",
        &format!(
            "metrics_listener 127.0.0.1:0\nlistener 0 127.0.0.1\nallow_anonymous true\n\
             connection up\naddress 127.0.0.1:{}\ntopic t out\n\
             connection down\naddress 127.0.0.1:{}\ntopic t out\n",
            remote.port,
            quiet_port()
        ),
    );
    let local = Broker::start_configured(&["-c", &conf]);
    let port = metrics_port(&local);
    local.wait_for_log("Received CONNACK on connection");
    let until = Instant::now() + DEADLINE;
    loop {
        let (_, body) = get(port, "/metrics");
        let up = sample(&body, "midge_bridge_up{bridge=\"up\"}");
        let down = sample(&body, "midge_bridge_up{bridge=\"down\"}");
        if up == Some(1.0) && down == Some(0.0) {
            break;
        }
        assert!(Instant::now() < until, "{body}");
    }
}

#[test]
fn a_metrics_address_that_cannot_be_had_stops_the_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let conf = config_file(
        "metrics-taken",
        &format!("metrics_listener {}\n", taken.local_addr().unwrap()),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_midge"))
        .args(["-c", &conf, "-p", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("metrics_listener 127.0.0.1:"));
}

/// Every series the Grafana dashboard in `contrib/` queries is one midge serves (with
/// persistence, a bridge and a cluster, whose series are served only then).
#[test]
fn the_grafana_dashboard_queries_only_metrics_midge_serves() {
    let dir = common::persist::store("metrics-dashboard");
    let nats = common::nats::Nats::start();
    let conf = config_file(
        "metrics-dashboard",
        &format!(
            "metrics_listener 127.0.0.1:0\nlistener 0 127.0.0.1\nuser root\n\
             persistence true\npersistence_location {}\n\
             cluster_nats_url {}\ncluster_name dash{}\n\
             connection b\naddress 127.0.0.1:{}\ntopic t out\n",
            dir.display(),
            nats.url(),
            std::process::id(),
            quiet_port()
        ),
    );
    let broker = Broker::start_configured(&["-c", &conf]);
    let (_, body) = get(metrics_port(&broker), "/metrics");
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/midge-grafana.json"
    ))
    .unwrap();
    let mut names: Vec<&str> = dashboard
        .match_indices("midge_")
        .map(|(at, _)| {
            let rest = &dashboard[at..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|name| !name.starts_with("midge-"))
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        let served = body.lines().any(|l| {
            !l.starts_with('#')
                && (l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        });
        assert!(
            served,
            "the dashboard asks for {name}, which midge does not serve"
        );
    }
}

/// Messages queued for an offline session show in the queue depth (refreshed every
/// `sys_interval`).
#[test]
fn metrics_show_what_waits_in_queues() {
    let conf = config_file(
        "metrics-queues",
        "metrics_listener 127.0.0.1:0\nsys_interval 1\nallow_anonymous true\n",
    );
    let broker = Broker::start(&["-c", &conf, "--threads", "1"]);
    let port = metrics_port(&broker);
    let (mut away, _) = Raw::connect_with(
        broker.port,
        connect_packet(ProtocolVersion::V311, "away", false, 60),
    );
    away.subscribe(&[("q", QoS::AtLeastOnce)]);
    away.send(&Packet::Disconnect(Disconnect::default()));
    away.expect_closed();
    let mut publisher = Raw::connect(broker.port, "pub");
    for i in 1..=3u16 {
        publisher.send(&publish("q", b"x", QoS::AtLeastOnce, i, false));
        assert!(matches!(publisher.recv(), Packet::PubAck(_)));
    }
    let until = Instant::now() + DEADLINE;
    loop {
        let (_, body) = get(port, "/metrics");
        if sample(&body, "midge_queued_messages{shard=\"0\"}") == Some(3.0) {
            assert_eq!(
                sample(&body, "midge_inflight_messages{shard=\"0\"}"),
                Some(0.0)
            );
            break;
        }
        assert!(Instant::now() < until, "{body}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// With persistence, each shard's journal syncs show in a histogram; without it the
/// family is not served at all.
#[test]
fn metrics_time_the_persistence_syncs() {
    let (_, body) = {
        let conf = config_file(
            "metrics-no-persist",
            "metrics_listener 127.0.0.1:0\nallow_anonymous true\n",
        );
        let broker = Broker::start(&["-c", &conf, "--threads", "1"]);
        get(metrics_port(&broker), "/metrics")
    };
    assert!(!body.contains("midge_persistence_sync_seconds"), "{body}");

    let dir = common::persist::store("metrics-sync");
    let broker =
        common::persist::broker("metrics-sync", &dir, "metrics_listener 127.0.0.1:0\n", "1");
    let port = metrics_port(&broker);
    let mut publisher = Raw::connect(broker.port, "pub");
    for i in 1..=3u16 {
        // A retained message changes the store: the turn's journal write is synced
        // (`persistence_sync always`, the default) before the PUBACK.
        publisher.send(&publish("kept", b"x", QoS::AtLeastOnce, i, true));
        assert!(matches!(publisher.recv(), Packet::PubAck(_)));
    }
    let (_, body) = get(port, "/metrics");
    assert!(body.contains("# TYPE midge_persistence_sync_seconds histogram"));
    let syncs = sample(&body, "midge_persistence_sync_seconds_count{shard=\"0\"}").unwrap();
    assert!(syncs >= 3.0, "{body}");
    assert!(sample(&body, "midge_persistence_sync_seconds_sum{shard=\"0\"}").is_some());
}

/// What the ACL keeps back is counted: a PUBLISH its client may not write, and a delivery
/// its subscriber may not read.
#[test]
fn metrics_count_what_the_acl_keeps_back() {
    let acl = std::env::temp_dir().join(format!("midge-test-{}-metrics-acl", std::process::id()));
    std::fs::write(&acl, "topic write w/#\ntopic readwrite rw/#\n").unwrap();
    let conf = config_file(
        "metrics-acl",
        &format!(
            "metrics_listener 127.0.0.1:0\nallow_anonymous true\nacl_file {}\n",
            acl.display()
        ),
    );
    let broker = Broker::start(&["-c", &conf, "--threads", "1"]);
    let port = metrics_port(&broker);
    let mut sub = Raw::connect(broker.port, "sub");
    sub.subscribe(&[("#", QoS::AtLeastOnce)]);
    let mut publisher = Raw::connect(broker.port, "pub");
    // Not writable: acknowledged (3.1.1 has no refusal) and dropped.
    publisher.send(&publish("x", b"no", QoS::AtLeastOnce, 1, false));
    assert!(matches!(publisher.recv(), Packet::PubAck(_)));
    // Writable but not readable by the subscriber of `#`.
    publisher.send(&publish("w/1", b"no", QoS::AtLeastOnce, 2, false));
    assert!(matches!(publisher.recv(), Packet::PubAck(_)));
    // Both ways allowed: delivered, and after the two above (one shard, in order).
    publisher.send(&publish("rw/1", b"yes", QoS::AtLeastOnce, 3, false));
    assert!(matches!(publisher.recv(), Packet::PubAck(_)));
    assert_eq!(&sub.recv_publish().payload[..], b"yes");
    let (_, body) = get(port, "/metrics");
    assert_eq!(
        sample(
            &body,
            "midge_messages_dropped_total{shard=\"0\",reason=\"acl\"}"
        ),
        Some(2.0),
        "{body}"
    );
}
