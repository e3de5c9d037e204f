//! A cluster of midge nodes on one NATS server (Debian's `nats-server`): what a client
//! publishes on one node reaches the subscribers of every node, with MQTT's rules kept
//! across the hop, each message once, in order; NATS restarted, the nodes come back.

mod common;

use bytes::Bytes;
use common::cluster::*;
use common::nats::Nats;
use common::{config_file, Broker, DEADLINE};
use midge::client::Client;
use midge::codec::*;
use std::time::{Duration, Instant};

#[test]
fn messages_cross_nodes_at_every_qos_in_order_once_each() {
    let nats = Nats::start();
    let nodes = nodes(&nats, 3, "");
    let mut publisher = client(&nodes[0], "pub", ProtocolVersion::V5);
    let mut on_b = client(&nodes[1], "sub-b", ProtocolVersion::V5);
    let mut on_c = client(&nodes[2], "sub-c", ProtocolVersion::V311);
    // Overlapping filters of one client, and of its node: each message still once.
    subscribe(
        &mut on_b,
        &[("a/#", QoS::ExactlyOnce), ("a/+", QoS::AtLeastOnce)],
    );
    subscribe(
        &mut on_c,
        &[("a/+", QoS::AtLeastOnce), ("+/b", QoS::AtMostOnce)],
    );
    wait_for_interest(&mut publisher, &mut [&mut on_b, &mut on_c], "a/probe");
    const N: usize = 30;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        for i in 0..N {
            publish(&mut publisher, "a/b", &format!("{}-{i}", qos as u8), qos);
        }
    }
    for (subscriber, granted) in [(&mut on_b, QoS::ExactlyOnce), (&mut on_c, QoS::AtLeastOnce)] {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            for i in 0..N {
                let p = next(subscriber);
                assert_eq!(&p.payload[..], format!("{}-{i}", qos as u8).as_bytes());
                // The lower of the published and the granted QoS (its highest over the
                // client's overlapping subscriptions).
                assert_eq!(p.qos, qos.min(granted), "{:?}", p.payload);
            }
        }
        nothing_more(subscriber, Duration::from_millis(300));
    }
}

#[test]
fn a_node_gets_nothing_back_of_what_it_published() {
    let nats = Nats::start();
    let nodes = nodes(&nats, 2, "");
    let mut publisher = client(&nodes[0], "pub", ProtocolVersion::V311);
    let mut beside = client(&nodes[0], "beside", ProtocolVersion::V311);
    let mut remote = client(&nodes[1], "remote", ProtocolVersion::V311);
    subscribe(&mut beside, &[("e/#", QoS::AtLeastOnce)]);
    subscribe(&mut remote, &[("e/#", QoS::AtLeastOnce)]);
    wait_for_interest(&mut publisher, &mut [&mut remote], "e/probe");
    for i in 0..20 {
        publish(&mut publisher, "e/x", &i.to_string(), QoS::AtLeastOnce);
    }
    for subscriber in [&mut beside, &mut remote] {
        for i in 0..20 {
            assert_eq!(&next(subscriber).payload[..], i.to_string().as_bytes());
        }
        nothing_more(subscriber, Duration::from_millis(300));
    }
}

#[test]
fn five_properties_expiry_and_retain_as_published_cross_nodes() {
    let nats = Nats::start();
    let nodes = nodes(&nats, 2, "");
    let mut publisher = client(&nodes[0], "pub", ProtocolVersion::V5);
    let mut remote = client(&nodes[1], "remote", ProtocolVersion::V5);
    subscribe_with(&mut remote, &[("p/#", QoS::AtLeastOnce)], true);
    wait_for_interest(&mut publisher, &mut [&mut remote], "p/probe");
    let mut properties = Properties::default();
    properties.content_type = Some(MqttStr::new("text/plain").unwrap());
    properties.response_topic = Some(MqttStr::new("p/reply").unwrap());
    properties.correlation_data = Some(Bytes::from_static(b"corr"));
    properties.payload_format_indicator = Some(1);
    properties.message_expiry_interval = Some(60);
    properties
        .user_properties
        .push((MqttStr::new("k").unwrap(), MqttStr::new("v").unwrap()));
    (publisher.publish(
        "p/x",
        Bytes::from_static(b"hello"),
        QoS::AtLeastOnce,
        true,
        properties,
        &mut Vec::new(),
    ))
    .expect("publish");
    let p = next(&mut remote);
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("p/x", &b"hello"[..]));
    assert!(
        p.retain,
        "Retain As Published keeps the flag across the hop"
    );
    let got = &p.properties;
    assert_eq!(got.content_type.as_deref(), Some("text/plain"));
    assert_eq!(got.response_topic.as_deref(), Some("p/reply"));
    assert_eq!(got.correlation_data.as_deref(), Some(&b"corr"[..]));
    assert_eq!(got.payload_format_indicator, Some(1));
    let expiry = got.message_expiry_interval.expect("expiry carried");
    assert!((55..=60).contains(&expiry), "{expiry}");
    let users: Vec<(String, String)> = (got.user_properties.iter())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(users, [("k".to_string(), "v".to_string())]);
}

#[test]
fn debian_clients_through_two_nodes() {
    let nats = Nats::start();
    let nodes = nodes(&nats, 2, "");
    let mut probe_pub = client(&nodes[0], "probe-pub", ProtocolVersion::V311);
    let mut probe_sub = client(&nodes[1], "probe-sub", ProtocolVersion::V311);
    subscribe(&mut probe_sub, &[("d/#", QoS::AtMostOnce)]);
    wait_for_interest(&mut probe_pub, &mut [&mut probe_sub], "d/probe");
    // The same filter on the same node: NATS has it already.
    let sub = std::process::Command::new("mosquitto_sub")
        .args([
            "-p",
            &nodes[1].port.to_string(),
            "-t",
            "d/#",
            "-C",
            "3",
            "-q",
            "1",
            "-v",
        ])
        .args(["-W", "10", "-d"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_sub (Debian's mosquitto-clients)");
    let until = Instant::now() + DEADLINE;
    while nodes[1].count_log("Received SUBSCRIBE from") < 2 {
        assert!(Instant::now() < until, "mosquitto_sub never subscribed");
        std::thread::sleep(Duration::from_millis(20));
    }
    nodes[1].wait_for_log_count("Sending SUBACK to", 2);
    for i in 1..=3 {
        let status = std::process::Command::new("mosquitto_pub")
            .args(["-p", &nodes[0].port.to_string(), "-t", "d/x", "-q", "1"])
            .args(["-m", &format!("m{i}")])
            .status()
            .expect("mosquitto_pub");
        assert!(status.success());
    }
    let out = sub.wait_with_output().expect("mosquitto_sub ends");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("d/x ")).collect();
    assert_eq!(lines, ["d/x m1", "d/x m2", "d/x m3"], "{text}");
}

/// NATS goes away and comes back: each node keeps serving its own clients meanwhile, then
/// reconnects and subscribes again by itself.
#[test]
fn nats_restarted_the_nodes_come_back() {
    let nats = Nats::start();
    let nodes = nodes(&nats, 2, "");
    let mut publisher = client(&nodes[0], "pub", ProtocolVersion::V311);
    let mut beside = client(&nodes[0], "beside", ProtocolVersion::V311);
    let mut remote = client(&nodes[1], "remote", ProtocolVersion::V311);
    subscribe(&mut beside, &[("r/#", QoS::AtLeastOnce)]);
    subscribe(&mut remote, &[("r/#", QoS::AtLeastOnce)]);
    wait_for_interest(&mut publisher, &mut [&mut remote], "r/probe");
    let port = nats.stop();
    nodes[0].wait_for_log("cluster: disconnected from NATS");
    publish(&mut publisher, "r/x", "while away", QoS::AtLeastOnce);
    assert_eq!(&next(&mut beside).payload[..], b"while away");
    let _nats = Nats::start_on(port);
    nodes[0].wait_for_log_count("Cluster: connected to NATS as node node0.", 2);
    nodes[1].wait_for_log_count("Cluster: connected to NATS as node node1.", 2);
    // What was published while NATS was away may come after all: the NATS client keeps
    // what it could not send (within its bound) for the next connection.
    let before = wait_for_interest_after(&mut publisher, &mut [&mut remote], "r/probe");
    assert!(before.iter().all(|p| &p[..] == b"while away"), "{before:?}");
    publish(&mut publisher, "r/x", "back", QoS::AtLeastOnce);
    let mut got = next(&mut remote).payload;
    if before.is_empty() && &got[..] == b"while away" {
        got = next(&mut remote).payload;
    }
    assert_eq!(&got[..], b"back");
}

#[test]
fn the_cluster_is_seen_in_sys_and_the_last_unsubscribe_ends_the_interest() {
    let nats = Nats::start();
    let nodes = nodes(&nats, 2, "sys_interval 1\n");
    let mut publisher = client(&nodes[0], "pub", ProtocolVersion::V311);
    let mut remote = client(&nodes[1], "remote", ProtocolVersion::V311);
    let mut other = client(&nodes[1], "other", ProtocolVersion::V311);
    let mut sys = client(&nodes[1], "sys", ProtocolVersion::V311);
    subscribe(&mut sys, &[("$SYS/broker/cluster/#", QoS::AtMostOnce)]);
    wait_for_sys(&mut sys, "$SYS/broker/cluster/connected", |v| v == 1);
    // Two clients, one filter: one NATS subscription for each of its two subjects (`u`
    // and `u.>`), besides the one for topics too long for a subject and the one for the
    // node's fences (`replay.rs`).
    subscribe(&mut remote, &[("u/#", QoS::AtMostOnce)]);
    subscribe(&mut other, &[("u/#", QoS::AtMostOnce)]);
    wait_for_interest(&mut publisher, &mut [&mut remote, &mut other], "u/probe");
    wait_for_sys(&mut sys, "$SYS/broker/cluster/subscriptions", |v| v == 4);
    wait_for_sys(&mut sys, "$SYS/broker/cluster/messages/received", |v| {
        v >= 2
    });
    let unsubscribe = |c: &mut Client| {
        (c.unsubscribe(&["u/#".to_string()], Properties::default(), &mut Vec::new()))
            .expect("unsubscribe")
    };
    // One client left with the filter: the node keeps its interest.
    unsubscribe(&mut remote);
    wait_for_interest(&mut publisher, &mut [&mut other], "u/probe");
    unsubscribe(&mut other);
    wait_for_sys(&mut sys, "$SYS/broker/cluster/subscriptions", |v| v == 2);
}

/// The node's oldest NATS subscription for a subject goes while messages flow: the next
/// one takes its subjects over, and a client subscribed through it gets every message
/// once, in order (what the old one gave is known among the new one's copies).
#[test]
fn an_overlapping_subscription_going_under_traffic_loses_and_repeats_nothing() {
    let nats = Nats::start();
    let nodes = nodes(&nats, 2, "");
    let mut probe = client(&nodes[0], "probe", ProtocolVersion::V311);
    let mut wide = client(&nodes[1], "wide", ProtocolVersion::V311);
    let mut narrow = client(&nodes[1], "narrow", ProtocolVersion::V311);
    subscribe(&mut wide, &[("o/#", QoS::AtMostOnce)]);
    subscribe(&mut narrow, &[("o/+", QoS::AtMostOnce)]);
    wait_for_interest(&mut probe, &mut [&mut wide, &mut narrow], "o/probe");
    const N: usize = 3000;
    let streamer = stream(nodes[0].port, "o/x", N);
    let first = numbers_until(&mut narrow, "o/x", 500);
    (wide.unsubscribe(&["o/#".to_string()], Properties::default(), &mut Vec::new()))
        .expect("unsubscribe");
    let rest = numbers_until(&mut narrow, "o/x", N - 1);
    streamer.join().unwrap();
    assert_each_once_in_order(first.into_iter().chain(rest).collect(), N);
    nothing_more(&mut narrow, Duration::from_millis(300));
}

/// A client narrows its subscription (SUBSCRIBE `w/x`, UNSUBSCRIBE `w/#`, one after the
/// other at once) while messages flow: its node subscribes the new subject before it lets
/// the old one go, so no message falls in between.
#[test]
fn narrowing_a_subscription_under_traffic_leaves_no_gap() {
    let nats = Nats::start();
    let nodes = nodes(&nats, 2, "");
    let mut probe = client(&nodes[0], "probe", ProtocolVersion::V311);
    let mut subscriber = client(&nodes[1], "narrowing", ProtocolVersion::V311);
    subscribe(&mut subscriber, &[("w/#", QoS::AtMostOnce)]);
    wait_for_interest(&mut probe, &mut [&mut subscriber], "w/probe");
    const N: usize = 3000;
    let streamer = stream(nodes[0].port, "w/x", N);
    let first = numbers_until(&mut subscriber, "w/x", 500);
    let options = SubscriptionOptions {
        qos: QoS::AtMostOnce,
        no_local: false,
        retain_as_published: false,
        retain_handling: RetainHandling::SendAtSubscribe,
    };
    subscriber
        .send(&Packet::Subscribe(Subscribe {
            packet_id: 100,
            properties: Properties::default(),
            filters: vec![(MqttStr::new("w/x").unwrap(), options)],
        }))
        .unwrap();
    subscriber
        .send(&Packet::Unsubscribe(Unsubscribe {
            packet_id: 101,
            properties: Properties::default(),
            filters: vec![MqttStr::new("w/#").unwrap()],
        }))
        .unwrap();
    let rest = numbers_until(&mut subscriber, "w/x", N - 1);
    streamer.join().unwrap();
    assert_each_once_in_order(first.into_iter().chain(rest).collect(), N);
}

/// Whoever else publishes on the cluster's subjects cannot crash a node or slip a message
/// past it: bytes that are not a node's message, a topic that is not its subject's, a
/// `$SYS` topic, are each dropped and counted; a well-formed message still goes through.
#[test]
fn what_is_not_a_nodes_message_is_dropped_and_counted() {
    use midge::cluster::{dedup::Origin, wire};
    let nats = Nats::start();
    let nodes = nodes(&nats, 1, "sys_interval 1\n");
    let root = format!("midge.{}", cluster_name(&nats));
    let mut subscriber = client(&nodes[0], "sub", ProtocolVersion::V5);
    subscribe(
        &mut subscriber,
        &[
            ("#", QoS::AtMostOnce),
            ("$SYS/broker/cluster/messages/undecodable", QoS::AtMostOnce),
        ],
    );
    let message = |topic: &'static str| midge::router::Message {
        topic: MqttStr::from_static(topic),
        payload: Bytes::from_static(b"x"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
        origin: None,
        expires_at: None,
        order: Default::default(),
        stream: Default::default(),
    };
    let origin = Origin {
        incarnation: 42,
        shard: 0,
    };
    let now = Instant::now();
    let subject = format!("{root}.m.h.x");
    let until = Instant::now() + DEADLINE;
    // Until the node's subscription is in place, a well-formed message at a time.
    let mut number = 1;
    loop {
        nats_publish(
            &nats,
            &subject,
            &wire::encode(&message("h/x"), origin, number, now).unwrap(),
        );
        number += 1;
        match subscriber
            .recv(Some(Instant::now() + Duration::from_millis(100)))
            .unwrap()
        {
            Some(p) if p.topic.as_str() == "h/x" => break,
            _ => assert!(Instant::now() < until, "never delivered"),
        }
    }
    nats_publish(&nats, &subject, b"not a message");
    nats_publish(
        &nats,
        &subject,
        &wire::encode(&message("h/y"), origin, number, now).unwrap(),
    );
    nats_publish(
        &nats,
        &format!("{root}.m.$SYS.x"),
        &wire::encode(&message("$SYS/x"), origin, number + 1, now).unwrap(),
    );
    nats_publish(
        &nats,
        &subject,
        &wire::encode(&message("h/x"), origin, number + 2, now).unwrap(),
    );
    let until = Instant::now() + DEADLINE;
    let mut delivered = Vec::new();
    loop {
        let p = subscriber
            .recv(Some(until))
            .unwrap()
            .expect("undecodable counted");
        if p.topic.starts_with("$SYS/") {
            if &p.payload[..] == b"3" && delivered.len() == 1 {
                break;
            }
        } else {
            delivered.push(p.topic.to_string());
        }
    }
    assert_eq!(delivered, ["h/x"], "only the well-formed message");
}

/// A three-server NATS cluster loses the server a node is connected to: the node goes on
/// through another (one it was given, or one NATS told it of), subscribes again, and what
/// is published on one node reaches the other again.
#[test]
fn a_nats_server_of_three_killed_the_nodes_go_on_through_another() {
    let mut servers = Nats::start_cluster(3);
    let cluster = format!("t{}y{}", std::process::id(), servers[0].port);
    let node = |i: usize, urls: String| {
        let conf = config_file(
            &format!("nats-cluster-{}-{i}", servers_port(&urls)),
            &format!("cluster_nats_url {urls}\ncluster_name {cluster}\ncluster_node_id node{i}\n"),
        );
        let broker = Broker::start(&["-c", &conf, "--threads", "2"]);
        broker.wait_for_log(&format!("Cluster: connected to NATS as node node{i}."));
        broker
    };
    // Node 0 knows the first and the third server; node 1 only the second.
    let urls0 = format!("{} {}", servers[0].url(), servers[2].url());
    let nodes = [node(0, urls0), node(1, servers[1].url())];
    let mut publisher = client(&nodes[0], "pub", ProtocolVersion::V311);
    let mut remote = client(&nodes[1], "remote", ProtocolVersion::V311);
    subscribe(&mut remote, &[("k/#", QoS::AtLeastOnce)]);
    wait_for_interest(&mut publisher, &mut [&mut remote], "k/probe");
    // Whichever of its two servers node 0 is on, both go: it must find the last one.
    servers.remove(2).stop();
    servers.remove(0).stop();
    nodes[0].wait_for_log("cluster: disconnected from NATS");
    let until = Instant::now() + DEADLINE;
    while nodes[0].count_log("Cluster: connected to NATS as node node0.") < 2 {
        assert!(Instant::now() < until, "node 0 never reconnected");
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = wait_for_interest_after(&mut publisher, &mut [&mut remote], "k/probe");
    assert!(before.is_empty(), "{before:?}");
    publish(&mut publisher, "k/x", "through another", QoS::AtLeastOnce);
    assert_eq!(&next(&mut remote).payload[..], b"through another");
}

/// A filter whose last subscription goes and comes back at once (UNSUBSCRIBE then
/// SUBSCRIBE, a clean-start reconnect): the node's old NATS subscription for it is still
/// going when the new one is made. Both are kept apart, the old stays the oldest until it
/// is drained, and the client gets every message after its new SUBACK, once, in order.
#[test]
fn a_filter_gone_and_back_at_once_keeps_its_messages() {
    let nats = Nats::start();
    let nodes = nodes(&nats, 2, "");
    let mut probe = client(&nodes[0], "probe", ProtocolVersion::V311);
    let mut toggling = client(&nodes[1], "toggling", ProtocolVersion::V311);
    subscribe(&mut toggling, &[("q/#", QoS::AtMostOnce)]);
    wait_for_interest(&mut probe, &mut [&mut toggling], "q/probe");
    for _ in 0..3 {
        (toggling.unsubscribe(&["q/#".to_string()], Properties::default(), &mut Vec::new()))
            .expect("unsubscribe");
        subscribe(&mut toggling, &[("q/#", QoS::AtMostOnce)]);
    }
    // Past every retirement (a round trip and RETIRE_GRACE each), messages still come.
    const N: usize = 2000;
    let streamer = stream(nodes[0].port, "q/z", N);
    let got = numbers_until(&mut toggling, "q/z", N - 1);
    streamer.join().unwrap();
    assert_each_once_in_order(got, N);
}

/// A node's clients hold more distinct filters than `cluster_max_subscriptions`: the node
/// subscribes to every message of the cluster instead of one subscription each, says so
/// and counts it, and its clients still get what they want once each and nothing else.
/// Their filters back under half the limit, it subscribes to each again and lets the
/// catch-all go.
#[test]
fn past_its_subscription_limit_a_node_takes_everything_and_delivers_what_is_wanted() {
    let nats = Nats::start();
    let nodes = nodes(&nats, 2, "sys_interval 1\ncluster_max_subscriptions 4\n");
    let mut publisher = client(&nodes[0], "pub", ProtocolVersion::V311);
    let mut many = client(&nodes[1], "many", ProtocolVersion::V311);
    let mut sys = client(&nodes[1], "sys", ProtocolVersion::V311);
    subscribe(&mut sys, &[("$SYS/broker/cluster/#", QoS::AtMostOnce)]);
    // Six filters of two subjects each (`c/0` and `c/0/...`): two fit, the third starts
    // the catch-all.
    let filters: Vec<String> = (0..6).map(|i| format!("c/{i}/#")).collect();
    for filter in &filters {
        subscribe(&mut many, &[(filter, QoS::AtMostOnce)]);
    }
    nodes[1].wait_for_log("it now takes every message of the cluster");
    for i in 0..6 {
        wait_for_interest(&mut publisher, &mut [&mut many], &format!("c/{i}/probe"));
    }
    // The long subject's, the fences', two filters' two each, and the catch-all.
    wait_for_sys_values(
        &mut sys,
        &[
            ("$SYS/broker/cluster/catch_all", 1),
            ("$SYS/broker/cluster/catch_all/started", 1),
            ("$SYS/broker/cluster/subscriptions/uncovered", 4),
            ("$SYS/broker/cluster/subscriptions", 7),
        ],
    );
    for topic in ["c/0/x", "c/5/x", "elsewhere", "c/3"] {
        publish(&mut publisher, topic, topic, QoS::AtLeastOnce);
    }
    let mut got: Vec<String> = (0..3).map(|_| next(&mut many).topic.to_string()).collect();
    got.sort();
    assert_eq!(got, ["c/0/x", "c/3", "c/5/x"]);
    nothing_more(&mut many, Duration::from_millis(300));
    // One filter left, one without a subscription of its own: it gets them back.
    let gone: Vec<String> = (filters.iter().filter(|f| *f != "c/2/#").cloned()).collect();
    (many.unsubscribe(&gone, Properties::default(), &mut Vec::new())).expect("unsubscribe");
    nodes[1].wait_for_log("it takes only what they want");
    wait_for_sys_values(
        &mut sys,
        &[
            ("$SYS/broker/cluster/catch_all", 0),
            ("$SYS/broker/cluster/subscriptions/uncovered", 0),
            ("$SYS/broker/cluster/subscriptions", 4),
        ],
    );
    publish(
        &mut publisher,
        "c/0/x",
        "no longer wanted",
        QoS::AtLeastOnce,
    );
    publish(&mut publisher, "c/2/x", "still wanted", QoS::AtLeastOnce);
    assert_eq!(&next(&mut many).payload[..], b"still wanted");
}
