//! What a node misses once it is gone (killed) is read again from the messages' stream for
//! its sessions, where they are taken over (Debian's `nats-server` with JetStream on): a
//! persistent session gets every QoS 1 message published for it while its node was gone,
//! once each and in order, with what comes the usual way once it is taken over.

mod common;

use common::cluster::*;
use common::nats::Nats;
use common::{Broker, DEADLINE};
use midge::client::{Client, ClientError};
use midge::codec::*;
use std::time::{Duration, Instant};

/// Said once a node's heartbeat carries how far it has received the stream.
const POSITIONED: &str = "this node's heartbeat says how far it has received the messages' stream";

/// Two nodes keeping sessions, each taking the other for gone after `timeout` seconds
/// without its heartbeat, both past their first heartbeat with a position.
fn positioned_nodes(nats: &Nats, timeout: u64) -> Vec<Broker> {
    let config = format!("sys_interval 1\ncluster_node_timeout {timeout}\n");
    let nodes = nodes(nats, 2, &config);
    for node in &nodes {
        node.wait_for_log(POSITIONED);
    }
    nodes
}

/// `id` on `node`, 5.0 with an hour's session expiry.
fn persistent(node: &Broker, id: &str) -> (Client, ConnAck) {
    let mut options = options(node.port, id, ProtocolVersion::V5);
    options.clean = false;
    options.properties.session_expiry_interval = Some(3600);
    Client::connect(&options).expect("connect")
}

/// A persistent 5.0 device on `node` taking `d/#` at QoS 1, its record written.
fn device(node: &Broker) -> Client {
    let (mut device, _) = persistent(node, "dev");
    subscribe(&mut device, &[("d/#", QoS::AtLeastOnce)]);
    node.wait_for_log("Cluster: the record of dev is in the bucket (1 subscriptions, no will).");
    device
}

fn number(p: &Publish) -> usize {
    std::str::from_utf8(&p.payload).unwrap().parse().unwrap()
}

/// Nodes as `positioned_nodes` makes them, the device on node0, node0 killed, and then
/// `n` QoS 1 messages numbered from 0 on `d/x` published on the other node (while no node
/// takes `d/#`; the stream keeps them): the nodes left, and the publisher.
fn published_while_gone(nats: &Nats, timeout: u64, n: usize) -> (Vec<Broker>, Client) {
    let mut nodes = positioned_nodes(nats, timeout);
    let device = device(&nodes[0]);
    kill_first(&mut nodes);
    drop(device);
    let mut publisher = client(&nodes[0], "pub", ProtocolVersion::V311);
    for i in 0..n {
        publish(&mut publisher, "d/x", &i.to_string(), QoS::AtLeastOnce);
    }
    (nodes, publisher)
}

/// `device` gets every number from 0 to `n - 1` on `d/x`, once each, in order.
fn gets_each_from_0(device: &mut Client, n: usize) {
    let got = numbers_until(device, "d/x", n - 1);
    assert_eq!(got[0], 0, "{got:?}");
    assert_each_once_in_order(got, n);
}

#[test]
fn what_is_published_while_a_node_is_gone_reaches_its_sessions_where_they_went() {
    let nats = Nats::start();
    // Published while node0 is gone, before its sessions are taken over.
    let (nodes, mut publisher) = published_while_gone(&nats, 2, 20);
    nodes[0].wait_for_log("the session of dev is taken over from node node0, which is gone");
    nodes[0].wait_for_log("missed are delivered to its 1 sessions taken over here");
    // And after it is taken over, the usual way.
    for i in 20..30 {
        publish(&mut publisher, "d/x", &i.to_string(), QoS::AtLeastOnce);
    }
    let (mut device, ack) = persistent(&nodes[0], "dev");
    assert!(ack.session_present);
    gets_each_from_0(&mut device, 30);
    nothing_more(&mut device, Duration::from_millis(300));
}

/// QoS 1 messages on `d/n`, numbered, one every 4 ms, from a client on `port` of its own.
fn publishing(port: u16, n: usize) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let options = options(port, "streamer", ProtocolVersion::V311);
        let mut publisher = Client::connect(&options).expect("connect").0;
        for i in 0..n {
            publish(&mut publisher, "d/n", &i.to_string(), QoS::AtLeastOnce);
            std::thread::sleep(Duration::from_millis(4));
        }
    })
}

#[test]
fn a_session_taken_over_while_messages_keep_coming_gets_each_once_in_order() {
    let nats = Nats::start();
    let mut nodes = positioned_nodes(&nats, 2);
    let mut device = device(&nodes[0]);
    // Messages come all along: before node0 goes, while it is gone, while its sessions
    // are taken over and read again for, and after.
    const N: usize = 1500;
    let streaming = publishing(nodes[1].port, N);
    let mut before = Vec::new();
    while before.len() < 100 {
        before.push(number(&next(&mut device)));
    }
    kill_first(&mut nodes);
    // What reached the device before its node went, to the last byte it was sent.
    let until = Instant::now() + DEADLINE;
    loop {
        match device.recv(Some(until)) {
            Ok(Some(p)) => before.push(number(&p)),
            Ok(None) => panic!("still connected after {DEADLINE:?}"),
            Err(ClientError::Closed(_) | ClientError::Io(_)) => break,
            Err(e) => panic!("{e:?}"),
        }
    }
    drop(device);
    nodes[0].wait_for_log("missed are delivered to its 1 sessions taken over here");
    // Back while messages still come (an offline session keeps 1000 at most).
    let (mut device, ack) = persistent(&nodes[0], "dev");
    assert!(ack.session_present);
    let after = numbers_until(&mut device, "d/n", N - 1);
    streaming.join().unwrap();
    // Each once and in order here (what the node had sent before it went may come again:
    // QoS 1), and nothing missing from both.
    let first = after[0];
    assert_each_once_in_order(after.clone(), N);
    let missing: Vec<usize> = (0..first).filter(|i| !before.contains(i)).collect();
    assert!(missing.is_empty(), "lost: {missing:?} (after from {first})");
}

#[test]
fn a_client_back_before_its_node_is_found_gone_gets_what_was_published_meanwhile() {
    let nats = Nats::start();
    // Found gone only after a minute: the client is back long before, its session taken
    // from its record when its node does not answer.
    let (nodes, mut publisher) = published_while_gone(&nats, 60, 20);
    let (mut device, ack) = persistent(&nodes[0], "dev");
    assert!(
        ack.session_present,
        "its subscriptions came from its record"
    );
    nodes[0].wait_for_log("the session of dev could not be fetched: node node0 is not there; it goes on from its record");
    for i in 20..30 {
        publish(&mut publisher, "d/x", &i.to_string(), QoS::AtLeastOnce);
    }
    gets_each_from_0(&mut device, 30);
    nodes[0].wait_for_log("missed are delivered to its 1 sessions taken over here");
    nothing_more(&mut device, Duration::from_millis(300));
}

#[test]
fn a_restarted_node_reads_again_what_it_missed_for_its_earlier_runs_sessions() {
    let nats = Nats::start();
    // The other node would take it for gone only after a minute; the node itself, started
    // again with a 2 s timeout, takes its earlier run over first.
    let (_nodes, _publisher) = published_while_gone(&nats, 60, 20);
    let again = restart_node(&nats, 0, "sys_interval 1\ncluster_node_timeout 2\n");
    again.wait_for_log("node node0 is gone (it is this node's earlier run)");
    again.wait_for_log("missed are delivered to its 1 sessions taken over here");
    let (mut device, ack) = persistent(&again, "dev");
    assert!(ack.session_present);
    gets_each_from_0(&mut device, 20);
}
