//! QoS 1 and 2 messages between nodes through JetStream (`cluster_messages jetstream`, the
//! default; Debian's `nats-server` with JetStream on): a message is stored once in the
//! cluster's messages stream before its publisher is acknowledged, reaches the other nodes
//! from there, and reaches this node's own subscribers at once; while it cannot be stored
//! (NATS away) its acknowledgement waits, in order, and a client with too many waiting is
//! not read.

mod common;

use bytes::Bytes;
use common::cluster::*;
use common::nats::Nats;
use common::{Broker, DEADLINE};
use midge::client::Client;
use midge::codec::*;
use std::time::{Duration, Instant};

const STREAM_OPEN: &str = "QoS 1 and 2 messages between nodes go through the JetStream stream";

/// How many messages the cluster's messages stream holds.
fn stored_messages(nats: &Nats) -> u64 {
    let subject = format!("$JS.API.STREAM.INFO.midge_{}_messages", cluster_name(nats));
    let info = nats_request(nats, &subject, b"");
    json_number(&info, "messages").unwrap_or_else(|| panic!("no count in {info}"))
}

fn stored_nodes(nats: &Nats, n: usize, extra: &str) -> Vec<Broker> {
    let nodes = nodes(nats, n, extra);
    for node in &nodes {
        node.wait_for_log(STREAM_OPEN);
    }
    nodes
}

/// Reads what `client` is sent until its QoS 1/2 publishes are all acknowledged, in the
/// order sent.
fn settled(client: &mut Client) {
    let until = Instant::now() + 2 * DEADLINE;
    let mut held = Vec::new();
    let done = client
        .settle_until(0, Some(until), &mut held)
        .expect("settle");
    assert_eq!(client.outstanding(), 0, "never acknowledged");
    assert!(
        done.windows(2).all(|w| w[0].0 < w[1].0),
        "out of order: {done:?}"
    );
}

/// The acknowledgements `client` gets within `quiet`.
fn answers_within(client: &mut Client, quiet: Duration) -> usize {
    let until = Instant::now() + quiet;
    let done = client
        .settle_until(0, Some(until), &mut Vec::new())
        .expect("settle");
    done.len()
}

fn start_publish(client: &mut Client, topic: &str, payload: String, qos: QoS) {
    let payload = Bytes::from(payload);
    (client.start_publish(topic, payload, qos, false, Properties::default())).expect("publish");
}

#[test]
fn qos_1_and_2_cross_nodes_through_the_stream_each_stored_once_before_its_answer() {
    let nats = Nats::start();
    let nodes = stored_nodes(&nats, 2, "");
    let mut publisher = client(&nodes[0], "pub", ProtocolVersion::V5);
    let mut beside = client(&nodes[0], "beside", ProtocolVersion::V311);
    let mut remote = client(&nodes[1], "remote", ProtocolVersion::V5);
    subscribe(&mut beside, &[("s/#", QoS::ExactlyOnce)]);
    subscribe(&mut remote, &[("s/#", QoS::ExactlyOnce)]);
    wait_for_interest(&mut publisher, &mut [&mut remote], "s/probe");
    let before = stored_messages(&nats);
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        publish(&mut publisher, "s/x", &format!("{}", qos as u8), qos);
    }
    // Answered: both stored (QoS 0 is not).
    assert_eq!(stored_messages(&nats), before + 2);
    for subscriber in [&mut beside, &mut remote] {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let p = next(subscriber);
            assert_eq!(&p.payload[..], format!("{}", qos as u8).as_bytes());
            assert_eq!(p.qos, qos);
        }
        // Once each: the stream's copy does not come back to the node that published it.
        nothing_more(subscriber, Duration::from_millis(300));
    }
}

/// NATS away: the message reaches the node's own subscribers at once, its answer waits
/// (tried again in the background), and goes once NATS is back and has stored it, once
/// however often it was tried; the other node gets it from the stream.
#[test]
fn while_nats_is_away_an_answer_waits_until_the_message_is_stored() {
    let nats = Nats::start();
    let nodes = stored_nodes(&nats, 2, "sys_interval 1\n");
    let mut publisher = client(&nodes[0], "pub", ProtocolVersion::V311);
    let mut beside = client(&nodes[0], "beside", ProtocolVersion::V311);
    let mut sys = client(&nodes[0], "sys", ProtocolVersion::V311);
    let mut remote = client(&nodes[1], "remote", ProtocolVersion::V311);
    subscribe(&mut beside, &[("w/#", QoS::AtLeastOnce)]);
    subscribe(&mut remote, &[("w/#", QoS::AtLeastOnce)]);
    wait_for_interest(&mut publisher, &mut [&mut remote], "w/probe");
    let before = stored_messages(&nats);
    let port = nats.stop();
    nodes[0].wait_for_log("cluster: disconnected from NATS");
    start_publish(&mut publisher, "w/x", "while away".into(), QoS::AtLeastOnce);
    assert_eq!(&next(&mut beside).payload[..], b"while away");
    // Nothing can have stored it: its answer has not come.
    let answered = answers_within(&mut publisher, Duration::from_millis(300));
    assert_eq!(answered, 0, "answered while NATS was away");
    let nats = Nats::start_on(port);
    settled(&mut publisher);
    assert_eq!(stored_messages(&nats), before + 1, "stored once");
    subscribe(
        &mut sys,
        &[("$SYS/broker/cluster/messages/#", QoS::AtMostOnce)],
    );
    wait_for_sys(&mut sys, "$SYS/broker/cluster/messages/stored", |v| v == 1);
}

/// A client that goes on publishing while its answers wait is not read past
/// `ACKS_WAITING_MAX` (250) of them: what it makes the node hold stays bounded. Once the
/// messages are stored every answer goes, in order, and the rest is read.
#[test]
fn a_client_with_too_many_answers_waiting_is_not_read_until_they_go() {
    const SENT: usize = 1200;
    let nats = Nats::start();
    let nodes = stored_nodes(&nats, 1, "");
    let mut publisher = client(&nodes[0], "pub", ProtocolVersion::V311);
    let mut beside = client(&nodes[0], "beside", ProtocolVersion::V311);
    subscribe(&mut beside, &[("b/#", QoS::AtMostOnce)]);
    let port = nats.stop();
    nodes[0].wait_for_log("cluster: disconnected from NATS");
    for i in 0..SENT {
        start_publish(&mut publisher, "b/x", i.to_string(), QoS::AtLeastOnce);
    }
    for i in 0..250 {
        assert_eq!(&next(&mut beside).payload[..], i.to_string().as_bytes());
    }
    nothing_more(&mut beside, Duration::from_millis(300));
    assert_eq!(
        answers_within(&mut publisher, Duration::from_millis(100)),
        0
    );
    let _nats = Nats::start_on(port);
    let got = numbers_until(&mut beside, "b/x", SENT - 1);
    assert_each_once_in_order(got, SENT);
    settled(&mut publisher);
}

/// `cluster_messages core`: no stream; a QoS 1 message is answered at once, NATS or not.
#[test]
fn with_cluster_messages_core_an_answer_never_waits_for_nats() {
    let nats = Nats::start();
    let nodes = nodes(&nats, 2, "cluster_messages core\n");
    let mut publisher = client(&nodes[0], "pub", ProtocolVersion::V311);
    let mut remote = client(&nodes[1], "remote", ProtocolVersion::V311);
    subscribe(&mut remote, &[("c/#", QoS::AtLeastOnce)]);
    wait_for_interest(&mut publisher, &mut [&mut remote], "c/probe");
    publish(&mut publisher, "c/x", "through core", QoS::AtLeastOnce);
    assert_eq!(&next(&mut remote).payload[..], b"through core");
    let _port = nats.stop();
    nodes[0].wait_for_log("cluster: disconnected from NATS");
    // Answered (the helper waits for the PUBACK) with NATS away.
    publish(&mut publisher, "c/x", "away", QoS::AtLeastOnce);
    assert!(!nodes[0].has_log(STREAM_OPEN));
}
