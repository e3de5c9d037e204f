//! The cluster's retained messages, kept once in JetStream (Debian's `nats-server` with
//! JetStream on): found from every node by exact and wildcard filters, replaced and removed
//! from any node, expired, and kept through a NATS restart.

mod common;

use bytes::Bytes;
use common::cluster::*;
use common::nats::Nats;
use common::{Broker, DEADLINE};
use midge::client::Client;
use midge::codec::*;
use std::time::{Duration, Instant};

const STREAM_OPEN: &str = "retained messages are kept in the JetStream stream";

/// `n` nodes that have their retained messages' stream open, with `$SYS` each second.
fn retained_nodes(nats: &Nats, n: usize) -> Vec<Broker> {
    retained_nodes_with(nats, n, "")
}

fn retained_nodes_with(nats: &Nats, n: usize, extra: &str) -> Vec<Broker> {
    let nodes = nodes(nats, n, &format!("sys_interval 1\n{extra}"));
    for node in &nodes {
        node.wait_for_log(STREAM_OPEN);
    }
    nodes
}

fn publish_retained(client: &mut Client, topic: &str, payload: &str, properties: Properties) {
    let payload = Bytes::from(payload.to_string());
    (client.publish(
        topic,
        payload,
        QoS::AtLeastOnce,
        true,
        properties,
        &mut Vec::new(),
    ))
    .expect("publish");
}

/// Waits until the node `sys` reads has had `n` retained messages (or removals) stored in
/// JetStream: a node that asks for them after that finds them.
fn wait_for_stored(sys: &mut Client, n: u64) {
    wait_for_sys(sys, "$SYS/broker/cluster/retained/stored", |v| v >= n);
}

fn sys_client(node: &Broker, id: &str) -> Client {
    let mut sys = client(node, id, ProtocolVersion::V311);
    subscribe(
        &mut sys,
        &[("$SYS/broker/cluster/retained/#", QoS::AtMostOnce)],
    );
    sys
}

/// What a new subscription to `filter` on `node` is sent: (topic, payload) of each
/// retained message, sorted by topic, after which nothing more comes.
fn retained_for(node: &Broker, id: &str, filter: &str) -> Vec<(String, String)> {
    let mut subscriber = client(node, id, ProtocolVersion::V5);
    subscribe(&mut subscriber, &[(filter, QoS::AtLeastOnce)]);
    let mut got = Vec::new();
    let quiet = Duration::from_millis(500);
    while let Some(p) = subscriber
        .recv(Some(Instant::now() + quiet))
        .expect("receive")
    {
        assert!(
            p.retain,
            "a retained message is sent with RETAIN set [MQTT-3.3.1-8]"
        );
        let payload = String::from_utf8(p.payload.to_vec()).unwrap();
        got.push((p.topic.to_string(), payload));
    }
    got.sort();
    got
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    (expected.iter())
        .map(|(t, p)| (t.to_string(), p.to_string()))
        .collect()
}

/// A retained message published on one node is found by a new subscription on another,
/// by an exact filter and by wildcards; a later one from another node replaces it, and an
/// empty one removes it, for every node. [MQTT-3.3.1-5] [MQTT-3.3.1-6] [MQTT-3.3.1-10]
#[test]
fn retained_messages_are_one_store_for_the_whole_cluster() {
    let nats = Nats::start();
    let nodes = retained_nodes(&nats, 2);
    let mut sys = sys_client(&nodes[0], "sys0");
    let mut sys1 = sys_client(&nodes[1], "sys1");
    let mut on_a = client(&nodes[0], "pub-a", ProtocolVersion::V311);
    let mut on_b = client(&nodes[1], "pub-b", ProtocolVersion::V311);
    publish_retained(&mut on_a, "r/a", "one", Properties::default());
    publish_retained(&mut on_a, "r/b/c", "two", Properties::default());
    publish_retained(&mut on_a, "s/a", "elsewhere", Properties::default());
    wait_for_stored(&mut sys, 3);
    let both = pairs(&[("r/a", "one"), ("r/b/c", "two")]);
    assert_eq!(retained_for(&nodes[1], "w1", "r/#"), both);
    assert_eq!(
        retained_for(&nodes[1], "w2", "+/a"),
        pairs(&[("r/a", "one"), ("s/a", "elsewhere")])
    );
    assert_eq!(
        retained_for(&nodes[1], "exact", "r/b/c"),
        pairs(&[("r/b/c", "two")])
    );
    assert_eq!(retained_for(&nodes[1], "none", "r/x"), pairs(&[]));
    // Replaced and removed from the other node.
    publish_retained(&mut on_b, "r/a", "", Properties::default());
    publish_retained(&mut on_b, "r/b/c", "three", Properties::default());
    wait_for_stored(&mut sys1, 2);
    for node in &nodes {
        assert_eq!(
            retained_for(node, "after", "r/#"),
            pairs(&[("r/b/c", "three")])
        );
        assert_eq!(retained_for(node, "gone", "r/a"), pairs(&[]));
    }
}

/// A client that subscribes on the node where a retained message was just published (its
/// PUBACK come back) finds it: the node asks JetStream only once what it stored before is
/// acknowledged.
#[test]
fn a_retained_message_is_found_on_its_own_node_at_once() {
    let nats = Nats::start();
    let nodes = retained_nodes(&nats, 1);
    let mut publisher = client(&nodes[0], "pub", ProtocolVersion::V5);
    for i in 0..20 {
        let topic = format!("own/{i}");
        publish_retained(
            &mut publisher,
            &topic,
            &i.to_string(),
            Properties::default(),
        );
        let expected = pairs(&[(&topic, &i.to_string())]);
        assert_eq!(
            retained_for(&nodes[0], &format!("sub{i}"), &topic),
            expected
        );
    }
}

/// A retained message's Message Expiry runs across the cluster: found with what is left of
/// it, and no longer found once it has passed. [MQTT-3.3.2-5] [MQTT-3.3.2-6]
#[test]
fn a_retained_message_expires_for_every_node() {
    let nats = Nats::start();
    let nodes = retained_nodes(&nats, 2);
    let mut sys = sys_client(&nodes[0], "sys0");
    let mut publisher = client(&nodes[0], "pub", ProtocolVersion::V5);
    let mut properties = Properties::default();
    properties.message_expiry_interval = Some(2);
    publish_retained(&mut publisher, "x/short", "soon gone", properties);
    let mut properties = Properties::default();
    properties.message_expiry_interval = Some(600);
    publish_retained(&mut publisher, "x/long", "stays", properties);
    wait_for_stored(&mut sys, 2);
    let mut subscriber = client(&nodes[1], "early", ProtocolVersion::V5);
    subscribe(&mut subscriber, &[("x/long", QoS::AtLeastOnce)]);
    let p = next(&mut subscriber);
    let left = p.properties.message_expiry_interval.expect("expiry sent");
    assert!((590..=600).contains(&left), "{left}");
    // Once the short one's two seconds have passed, no node finds it.
    let until = Instant::now() + DEADLINE;
    let mut round = 0;
    loop {
        round += 1;
        let found = retained_for(&nodes[1], &format!("late{round}"), "x/#");
        if found == pairs(&[("x/long", "stays")]) {
            break;
        }
        assert_eq!(
            found,
            pairs(&[("x/long", "stays"), ("x/short", "soon gone")])
        );
        assert!(Instant::now() < until, "x/short never expired");
    }
}

/// JetStream keeps the retained messages on disk: NATS stopped and started again, the
/// nodes reconnect and find them.
#[test]
fn retained_messages_outlive_a_nats_restart() {
    let nats = Nats::start();
    let nodes = retained_nodes(&nats, 2);
    let mut sys = sys_client(&nodes[0], "sys0");
    let mut publisher = client(&nodes[0], "pub", ProtocolVersion::V311);
    publish_retained(&mut publisher, "kept/a", "on disk", Properties::default());
    wait_for_stored(&mut sys, 1);
    let port = nats.stop();
    let _nats = Nats::start_on(port);
    let until = Instant::now() + DEADLINE;
    let mut round = 0;
    loop {
        round += 1;
        let found = retained_for(&nodes[1], &format!("back{round}"), "kept/#");
        if found == pairs(&[("kept/a", "on disk")]) {
            break;
        }
        assert!(Instant::now() < until, "never found again: {found:?}");
    }
}

/// The sweep deletes from JetStream what is no longer found: a removal's empty message,
/// and a message whose expiry has passed.
#[test]
fn the_sweep_deletes_removals_and_expired_messages() {
    let nats = Nats::start();
    let nodes = retained_nodes_with(&nats, 1, "cluster_retained_sweep_interval 1\n");
    let mut sys = sys_client(&nodes[0], "sys0");
    let mut publisher = client(&nodes[0], "pub", ProtocolVersion::V5);
    publish_retained(&mut publisher, "sw/removed", "x", Properties::default());
    publish_retained(&mut publisher, "sw/removed", "", Properties::default());
    let mut properties = Properties::default();
    properties.message_expiry_interval = Some(1);
    publish_retained(&mut publisher, "sw/expired", "x", properties);
    publish_retained(&mut publisher, "sw/kept", "x", Properties::default());
    wait_for_stored(&mut sys, 4);
    wait_for_sys(&mut sys, "$SYS/broker/cluster/retained/swept", |v| v == 2);
    assert_eq!(
        retained_for(&nodes[0], "after", "sw/#"),
        pairs(&[("sw/kept", "x")])
    );
}

/// A client subscribes while a topic's retained message changes fast: it never gets the
/// topic's newer message and then an older retained one (the node's question to JetStream
/// takes a moment, during which newer messages are delivered).
#[test]
fn a_new_subscriber_never_goes_back_to_an_older_retained_message() {
    let nats = Nats::start();
    let nodes = retained_nodes(&nats, 1);
    let port = nodes[0].port;
    const N: usize = 4000;
    let streamer = std::thread::spawn(move || {
        let options = options(port, "streamer", ProtocolVersion::V311);
        let mut publisher = Client::connect(&options).expect("connect").0;
        for i in 0..N {
            publish_retained(
                &mut publisher,
                "fast/x",
                &i.to_string(),
                Properties::default(),
            );
            std::thread::sleep(Duration::from_micros(200));
        }
    });
    for round in 0..10 {
        let mut subscriber = client(&nodes[0], &format!("late{round}"), ProtocolVersion::V5);
        subscribe(&mut subscriber, &[("fast/#", QoS::AtMostOnce)]);
        let mut last = None;
        for _ in 0..50 {
            let p = next(&mut subscriber);
            let n: usize = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
            assert!(last < Some(n), "{n} after {last:?} (retain {})", p.retain);
            last = Some(n);
        }
    }
    streamer.join().unwrap();
}

/// What the cluster keeps is matched against the filter again: a leading wildcard does not
/// find `$`-topics [MQTT-4.7.2-1]; an exact filter finds its own topic.
#[test]
fn a_leading_wildcard_finds_no_dollar_topic_in_the_cluster() {
    let nats = Nats::start();
    let nodes = retained_nodes(&nats, 2);
    let mut sys = sys_client(&nodes[0], "sys0");
    let mut publisher = client(&nodes[0], "pub", ProtocolVersion::V311);
    publish_retained(&mut publisher, "$dollar/a", "hidden", Properties::default());
    publish_retained(&mut publisher, "plain/a", "seen", Properties::default());
    wait_for_stored(&mut sys, 2);
    assert_eq!(
        retained_for(&nodes[1], "w", "+/a"),
        pairs(&[("plain/a", "seen")])
    );
    assert_eq!(
        retained_for(&nodes[1], "all", "#"),
        pairs(&[("plain/a", "seen")])
    );
    let exact = retained_for(&nodes[1], "exact", "$dollar/a");
    assert_eq!(exact, pairs(&[("$dollar/a", "hidden")]));
}

/// Two overlapping subscriptions of one client, made one after the other: each is sent
/// the retained message, as on a single node (the first's copy does not stand for the
/// second's).
#[test]
fn overlapping_subscriptions_each_get_the_retained_message() {
    let nats = Nats::start();
    let nodes = retained_nodes(&nats, 1);
    let mut publisher = client(&nodes[0], "pub", ProtocolVersion::V311);
    publish_retained(&mut publisher, "ov/x", "kept", Properties::default());
    let mut subscriber = client(&nodes[0], "both", ProtocolVersion::V5);
    subscribe(&mut subscriber, &[("ov/#", QoS::AtLeastOnce)]);
    assert_eq!(&next(&mut subscriber).payload[..], b"kept");
    subscribe(&mut subscriber, &[("ov/+", QoS::AtLeastOnce)]);
    let p = next(&mut subscriber);
    assert_eq!((&p.payload[..], p.retain), (&b"kept"[..], true));
}

/// A burst of retained messages larger than the link's queue to the retained task is
/// stored whole: the acknowledgements are waited for all at once, not one after another.
#[test]
fn a_burst_of_retained_messages_is_stored_whole() {
    let nats = Nats::start();
    let nodes = retained_nodes(&nats, 1);
    let mut sys = client(&nodes[0], "sys", ProtocolVersion::V311);
    subscribe(
        &mut sys,
        &[("$SYS/broker/cluster/retained/#", QoS::AtMostOnce)],
    );
    let mut publisher = client(&nodes[0], "pub", ProtocolVersion::V311);
    const N: u64 = 6000;
    for i in 0..N {
        let payload = Bytes::from(i.to_string());
        (publisher.publish(
            &format!("burst/{i}"),
            payload,
            QoS::AtMostOnce,
            true,
            Properties::default(),
            &mut Vec::new(),
        ))
        .expect("publish");
    }
    wait_for_sys_values(
        &mut sys,
        &[
            ("$SYS/broker/cluster/retained/stored", N),
            ("$SYS/broker/cluster/retained/not_stored", 0),
        ],
    );
}
