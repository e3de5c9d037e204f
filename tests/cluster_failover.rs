//! A node's death in a cluster keeping sessions (Debian's `nats-server` with JetStream on):
//! each session's record (subscriptions, will) is in its key, so another node takes the
//! gone node's sessions over once its heartbeats stop for `cluster_node_timeout`,
//! publishing its clients' wills as their closed connections call for and queueing what
//! their subscriptions take until the clients come back; a client that comes back before
//! that goes on from its record.

mod common;

use common::cluster::*;
use common::nats::Nats;
use common::{Broker, DEADLINE};
use midge::client::Client;
use midge::codec::*;
use std::time::{Duration, Instant};

const BUCKET_OPEN: &str = "who owns each session is kept in the JetStream bucket";

/// `n` nodes with the sessions bucket open, each taking another for gone after `timeout`
/// seconds without its heartbeat.
fn failover_nodes(nats: &Nats, n: usize, timeout: u64) -> Vec<Broker> {
    let extra = failover_config(timeout);
    let nodes = nodes(nats, n, &extra);
    for node in &nodes {
        node.wait_for_log(BUCKET_OPEN);
    }
    nodes
}

fn failover_config(timeout: u64) -> String {
    format!("sys_interval 1\ncluster_node_timeout {timeout}\n")
}

/// A will on `topic` (QoS 1) with `delay` seconds of Will Delay Interval (5.0).
fn will(topic: &str, delay: Option<u32>) -> Will {
    let mut properties = Properties::default();
    properties.will_delay_interval = delay;
    Will {
        qos: QoS::AtLeastOnce,
        retain: false,
        properties,
        topic: common::s(topic),
        payload: bytes::Bytes::from(format!("{topic} gone")),
    }
}

/// Connects `id` to `node`: persistent (3.x clean session 0; 5.0 an hour's expiry) or
/// not, with `will`.
fn connect(
    node: &Broker,
    id: &str,
    version: ProtocolVersion,
    persistent: bool,
    will: Option<Will>,
) -> (Client, ConnAck) {
    let mut options = options(node.port, id, version);
    options.clean = !persistent;
    options.will = will;
    if version == ProtocolVersion::V5 && persistent {
        options.properties.session_expiry_interval = Some(3600);
    }
    Client::connect(&options).expect("connect")
}

/// Waits until `node` has written the record of `id` as `holding` says (its subscriptions
/// and will: "1 subscriptions, a will").
fn recorded(node: &Broker, id: &str, holding: &str) {
    node.wait_for_log(&format!(
        "Cluster: the record of {id} is in the bucket ({holding})."
    ));
}

/// A watcher on node 1 of every will, and a 5.0 client `dev` on node 0 with a persistent
/// session, a will (no delay) and a subscription to `d/#`, its record written.
fn watched_device(nodes: &[Broker]) -> (Client, Client) {
    let mut watcher = client(&nodes[1], "watcher", ProtocolVersion::V311);
    subscribe(&mut watcher, &[("will/#", QoS::AtLeastOnce)]);
    let dev_will = Some(will("will/dev", None));
    let (mut device, _) = connect(&nodes[0], "dev", ProtocolVersion::V5, true, dev_will);
    subscribe(&mut device, &[("d/#", QoS::AtLeastOnce)]);
    recorded(&nodes[0], "dev", "1 subscriptions, a will");
    (watcher, device)
}

/// The topics of the next `n` messages `client` gets, sorted.
fn topics(client: &mut Client, n: usize) -> Vec<String> {
    let mut got: Vec<String> = (0..n).map(|_| next(client).topic.to_string()).collect();
    got.sort();
    got
}

#[test]
fn the_wills_of_a_gone_nodes_clients_are_published_by_another_node() {
    let nats = Nats::start();
    let mut nodes = failover_nodes(&nats, 2, 2);
    let mut watcher = client(&nodes[1], "watcher", ProtocolVersion::V5);
    subscribe(&mut watcher, &[("will/#", QoS::AtLeastOnce)]);
    let v5 = ProtocolVersion::V5;
    // Each kind of will: a clean session's, a persistent 3.1.1 session's, one with a
    // second's delay, and one its client cancelled with DISCONNECT [MQTT-3.1.2-10].
    let _clean = connect(
        &nodes[0],
        "clean",
        v5,
        false,
        Some(will("will/clean", None)),
    );
    let _kept = connect(
        &nodes[0],
        "kept",
        ProtocolVersion::V311,
        true,
        Some(will("will/kept", None)),
    );
    let _late = connect(
        &nodes[0],
        "late",
        v5,
        true,
        Some(will("will/late", Some(1))),
    );
    let (quiet, _) = connect(&nodes[0], "quiet", v5, true, Some(will("will/quiet", None)));
    quiet.disconnect(Properties::default()).unwrap();
    nodes[0].wait_for_log("Received DISCONNECT from quiet");
    for id in ["clean", "kept", "late"] {
        recorded(&nodes[0], id, "0 subscriptions, a will");
    }
    recorded(&nodes[0], "quiet", "0 subscriptions, no will");
    kill_first(&mut nodes);
    assert_eq!(
        topics(&mut watcher, 3),
        ["will/clean", "will/kept", "will/late"]
    );
    nothing_more(&mut watcher, Duration::from_millis(1500));
    nodes[0].wait_for_log("node node0 is gone (it has not been heard from for 2 s)");
    nodes[0].wait_for_log("Cluster: 4 sessions of node node0 taken over here.");
}

#[test]
fn a_gone_nodes_session_takes_what_is_published_until_its_client_is_back_elsewhere() {
    let nats = Nats::start();
    let mut nodes = failover_nodes(&nats, 2, 2);
    let v5 = ProtocolVersion::V5;
    let (mut device, _) = connect(&nodes[0], "dev", v5, true, None);
    subscribe(&mut device, &[("d/#", QoS::AtLeastOnce)]);
    recorded(&nodes[0], "dev", "1 subscriptions, no will");
    kill_first(&mut nodes);
    drop(device);
    nodes[0].wait_for_log("the session of dev is taken over from node node0, which is gone");
    let mut publisher = client(&nodes[0], "pub", ProtocolVersion::V311);
    publish(&mut publisher, "d/1", "while away", QoS::AtLeastOnce);
    let (mut device, ack) = connect(&nodes[0], "dev", v5, true, None);
    assert!(ack.session_present);
    let p = next(&mut device);
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("d/1", &b"while away"[..])
    );
    // Its subscription is its own again: what is published now reaches it too.
    publish(&mut publisher, "d/2", "now", QoS::AtLeastOnce);
    assert_eq!(next(&mut device).topic.as_str(), "d/2");
}

#[test]
fn a_client_back_before_its_node_is_found_gone_goes_on_from_its_record() {
    let nats = Nats::start();
    // Found gone only after a minute: the client is back long before.
    let mut nodes = failover_nodes(&nats, 2, 60);
    let (mut watcher, _device) = watched_device(&nodes);
    let v5 = ProtocolVersion::V5;
    kill_first(&mut nodes);
    let mut sys = client(&nodes[0], "sys", ProtocolVersion::V311);
    subscribe(
        &mut sys,
        &[("$SYS/broker/cluster/sessions/#", QoS::AtMostOnce)],
    );
    let (mut device, ack) = connect(&nodes[0], "dev", v5, true, None);
    assert!(
        ack.session_present,
        "its subscriptions came from its record"
    );
    nodes[0].wait_for_log("the session of dev could not be fetched: node node0 is not there; it goes on from its record");
    wait_for_sys(&mut sys, "$SYS/broker/cluster/sessions/adopted", |n| n == 1);
    // Its connection closed with its node, without DISCONNECT: its will went [MQTT-3.1.2-8].
    assert_eq!(next(&mut watcher).topic.as_str(), "will/dev");
    let mut publisher = client(&nodes[0], "pub", ProtocolVersion::V311);
    publish(&mut publisher, "d/1", "here", QoS::AtLeastOnce);
    assert_eq!(next(&mut device).topic.as_str(), "d/1");
    nothing_more(&mut watcher, Duration::from_millis(300));
}

/// A node that stops for longer than the timeout (a paused process: its heartbeats stop,
/// its connections stay) is taken for gone and its sessions taken over; when it goes on, it
/// finds its key naming the node that took it, and closes the connections of its sessions,
/// whose clients find them where they went.
#[test]
fn a_node_taken_for_gone_while_it_was_stopped_gives_its_sessions_up() {
    let nats = Nats::start();
    let nodes = failover_nodes(&nats, 2, 2);
    let v5 = ProtocolVersion::V5;
    let (mut device, _) = connect(&nodes[0], "dev", v5, true, None);
    subscribe(&mut device, &[("d/#", QoS::AtLeastOnce)]);
    recorded(&nodes[0], "dev", "1 subscriptions, no will");
    nodes[0].signal(libc::SIGSTOP);
    nodes[1].wait_for_log("the session of dev is taken over from node node0, which is gone");
    nodes[0].signal(libc::SIGCONT);
    nodes[0].wait_for_log("the other nodes took this node for gone");
    closed(&mut device);
    let (mut device, ack) = connect(&nodes[1], "dev", v5, true, None);
    assert!(ack.session_present);
    let mut publisher = client(&nodes[1], "pub", ProtocolVersion::V311);
    publish(&mut publisher, "d/1", "here", QoS::AtLeastOnce);
    assert_eq!(next(&mut device).topic.as_str(), "d/1");
}

/// A node that restarts (without persistence) takes over the sessions of its earlier run:
/// their wills go out, and their subscriptions are kept for their clients.
#[test]
fn a_restarted_node_takes_over_the_sessions_of_its_earlier_run() {
    let nats = Nats::start();
    let mut nodes = failover_nodes(&nats, 2, 60);
    let (mut watcher, device) = watched_device(&nodes);
    let v5 = ProtocolVersion::V5;
    kill_first(&mut nodes);
    drop(device);
    // Node 0 again, as it was configured.
    // (Its earlier run is taken for gone once its key stood still for this node's timeout.)
    let again = restart_node(&nats, 0, &failover_config(2));
    again.wait_for_log("node node0 is gone (it is this node's earlier run)");
    assert_eq!(next(&mut watcher).topic.as_str(), "will/dev");
    again.wait_for_log("the session of dev is taken over from node node0");
    let (mut device, ack) = connect(&again, "dev", v5, true, None);
    assert!(ack.session_present);
    let mut publisher = client(&nodes[0], "pub", ProtocolVersion::V311);
    wait_for_interest(&mut publisher, &mut [&mut device], "d/probe");
    publish(&mut publisher, "d/1", "back", QoS::AtLeastOnce);
    assert_eq!(next(&mut device).topic.as_str(), "d/1");
}

/// An owner that is there for NATS but answers nothing (a stopped process) is passed over
/// once its heartbeat stands still: the client goes on from its record, its old
/// connection's will goes out, and the old node, going on, closes that connection.
#[test]
fn an_owner_that_does_not_answer_is_passed_over_once_its_heartbeat_stands_still() {
    let nats = Nats::start();
    let nodes = failover_nodes(&nats, 2, 60);
    let (mut watcher, mut old) = watched_device(&nodes);
    let v5 = ProtocolVersion::V5;
    nodes[0].signal(libc::SIGSTOP);
    let (mut device, ack) = connect(&nodes[1], "dev", v5, true, None);
    nodes[0].signal(libc::SIGCONT);
    assert!(
        ack.session_present,
        "its subscriptions came from its record"
    );
    nodes[1].wait_for_log("the session of dev could not be fetched");
    assert_eq!(next(&mut watcher).topic.as_str(), "will/dev");
    closed(&mut old);
    let mut publisher = client(&nodes[1], "pub", ProtocolVersion::V311);
    publish(&mut publisher, "d/1", "here", QoS::AtLeastOnce);
    assert_eq!(next(&mut device).topic.as_str(), "d/1");
}

/// A session taken over from a gone node keeps the expiry it had there: counted from when
/// its client went away, not from the takeover [MQTT-3.1.2-23]. Here it ran out while the
/// node was being found gone: it ends at the takeover, and its client starts anew.
#[test]
fn a_session_taken_over_expires_when_it_would_have_on_its_node() {
    let nats = Nats::start();
    // Found gone 3 to 4 s after its death; the session expires 3 s after its client left.
    let mut nodes = failover_nodes(&nats, 2, 4);
    let mut options = options(nodes[0].port, "dev", ProtocolVersion::V5);
    options.clean = false;
    options.properties.session_expiry_interval = Some(3);
    let (mut device, _) = Client::connect(&options).expect("connect");
    subscribe(&mut device, &[("d/#", QoS::AtLeastOnce)]);
    device.disconnect(Properties::default()).unwrap();
    // Its record written again once it is offline.
    let until = Instant::now() + DEADLINE;
    while !nodes[0]
        .log_lines()
        .iter()
        .skip_while(|l| !l.contains("Received DISCONNECT from dev"))
        .any(|l| l.contains("Cluster: the record of dev is in the bucket"))
    {
        assert!(Instant::now() < until, "no record after the DISCONNECT");
        std::thread::sleep(Duration::from_millis(5));
    }
    kill_first(&mut nodes);
    nodes[0].wait_for_log("the session of dev is taken over from node node0, which is gone");
    // Ended at once (counted from its client's DISCONNECT, its 3 s ran out before the
    // takeover): not resumed.
    let (_device, ack) = connect(&nodes[0], "dev", ProtocolVersion::V5, true, None);
    assert!(!ack.session_present);
    nodes[0].wait_for_log("Expiring client dev due to timeout.");
}
