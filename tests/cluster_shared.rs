//! Shared subscriptions across a cluster: a `$share` group with members on several nodes
//! gets each message once in the whole cluster (NATS queue groups), the publishing node's
//! own members first.

mod common;

use common::cluster::*;
use common::nats::Nats;
use common::DEADLINE;
use midge::client::{Client, ConnectOptions};
use midge::codec::*;
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// Publishes probes on `topic` from `publisher` until each of `members` (of one share
/// group, on other nodes) has had one: every node's queue subscription is in place. The
/// probes are left for `next` to pass over.
fn wait_for_members(publisher: &mut Client, members: &mut [&mut Client], topic: &str) {
    let mut seen = vec![false; members.len()];
    let until = Instant::now() + DEADLINE;
    while seen.contains(&false) {
        publish(publisher, topic, "probe", QoS::AtMostOnce);
        for (i, member) in members.iter_mut().enumerate() {
            let wait = Instant::now() + Duration::from_millis(20);
            while let Some(p) = member.recv(Some(wait)).expect("receive") {
                seen[i] |= p.topic.ends_with("/probe");
            }
        }
        assert!(
            Instant::now() < until,
            "members never all reached: {seen:?}"
        );
    }
}

/// The payloads `member` gets (probes passed over) until nothing comes for a moment.
fn payloads(member: &mut Client) -> Vec<String> {
    let mut got = Vec::new();
    let quiet = Duration::from_millis(500);
    while let Some(p) = member.recv(Some(Instant::now() + quiet)).expect("receive") {
        if !p.topic.ends_with("/probe") {
            got.push(String::from_utf8(p.payload.to_vec()).unwrap());
        }
    }
    got
}

/// A group with members on two nodes, messages published on a third: each message to one
/// member in the whole cluster, and both take a share (5.0 §4.8.2: each message to one
/// session of the group).
#[test]
fn a_share_group_across_nodes_gets_each_message_once() {
    let nats = Nats::start();
    let nodes = nodes(&nats, 3, "");
    let mut publisher = client(&nodes[0], "pub", ProtocolVersion::V5);
    let mut one = client(&nodes[1], "m1", ProtocolVersion::V5);
    let mut two = client(&nodes[2], "m2", ProtocolVersion::V311);
    subscribe(&mut one, &[("$share/g/j/#", QoS::AtLeastOnce)]);
    subscribe(&mut two, &[("$share/g/j/#", QoS::AtLeastOnce)]);
    wait_for_members(&mut publisher, &mut [&mut one, &mut two], "j/probe");
    const N: usize = 60;
    for i in 0..N {
        publish(&mut publisher, "j/x", &i.to_string(), QoS::AtLeastOnce);
    }
    let (got_one, got_two) = (payloads(&mut one), payloads(&mut two));
    assert!(
        !got_one.is_empty() && !got_two.is_empty(),
        "{got_one:?} {got_two:?}"
    );
    let all: Vec<&String> = got_one.iter().chain(&got_two).collect();
    let distinct: HashSet<&String> = all.iter().copied().collect();
    assert_eq!((all.len(), distinct.len()), (N, N), "each once: {all:?}");
}

/// The publishing node's own member takes the group's messages; the group's members
/// elsewhere get them only once it has none.
#[test]
fn the_publishing_nodes_own_members_come_first() {
    let nats = Nats::start();
    let nodes = nodes(&nats, 2, "");
    let mut publisher = client(&nodes[0], "pub", ProtocolVersion::V311);
    let mut remote = client(&nodes[1], "remote", ProtocolVersion::V311);
    subscribe(&mut remote, &[("$share/near/n/#", QoS::AtMostOnce)]);
    wait_for_members(&mut publisher, &mut [&mut remote], "n/probe");
    let mut local = client(&nodes[0], "local", ProtocolVersion::V311);
    subscribe(&mut local, &[("$share/near/n/#", QoS::AtMostOnce)]);
    for i in 0..20 {
        publish(&mut publisher, "n/x", &i.to_string(), QoS::AtLeastOnce);
    }
    assert_eq!(payloads(&mut local).len(), 20);
    assert_eq!(payloads(&mut remote), Vec::<String>::new());
    (local.unsubscribe(
        &["$share/near/n/#".to_string()],
        Properties::default(),
        &mut Vec::new(),
    ))
    .expect("unsubscribe");
    publish(&mut publisher, "n/x", "now remote", QoS::AtLeastOnce);
    assert_eq!(&next(&mut remote).payload[..], b"now remote");
}

/// A node with both a plain subscriber and a group member for a topic gives each its copy
/// once: what comes for its subscriptions does not go to its groups, nor the reverse.
#[test]
fn a_plain_subscriber_and_a_group_member_each_get_one_copy() {
    let nats = Nats::start();
    let nodes = nodes(&nats, 2, "");
    let mut publisher = client(&nodes[0], "pub", ProtocolVersion::V311);
    let mut plain = client(&nodes[1], "plain", ProtocolVersion::V311);
    let mut member = client(&nodes[1], "member", ProtocolVersion::V311);
    subscribe(&mut plain, &[("k/#", QoS::AtLeastOnce)]);
    subscribe(&mut member, &[("$share/g/k/#", QoS::AtLeastOnce)]);
    wait_for_interest(&mut publisher, &mut [&mut plain], "k/probe");
    wait_for_members(&mut publisher, &mut [&mut member], "k/probe");
    let _ = payloads(&mut plain);
    publish(&mut publisher, "k/x", "once each", QoS::AtLeastOnce);
    assert_eq!(payloads(&mut plain), ["once each"]);
    assert_eq!(payloads(&mut member), ["once each"]);
}

/// The publishing node's only member of a group is offline (a persistent session): a QoS 0
/// message it could not take goes to an online member on another node; a QoS 1 message
/// waits for it, as on one node. (One shard a node: a shard takes members on its node's
/// other shards as able, as on one node.)
#[test]
fn a_qos0_message_no_member_here_can_take_goes_to_another_node() {
    let nats = Nats::start();
    let nodes = nodes_of(&nats, 2, "", 1);
    let mut publisher = client(&nodes[0], "pub", ProtocolVersion::V311);
    let mut online = client(&nodes[1], "online", ProtocolVersion::V311);
    subscribe(&mut online, &[("$share/g/z/#", QoS::AtLeastOnce)]);
    wait_for_members(&mut publisher, &mut [&mut online], "z/probe");
    let persistent = ConnectOptions {
        clean: false,
        ..options(nodes[0].port, "asleep", ProtocolVersion::V311)
    };
    let mut asleep = Client::connect(&persistent).expect("connect").0;
    subscribe(&mut asleep, &[("$share/g/z/#", QoS::AtLeastOnce)]);
    drop(asleep);
    nodes[0].wait_for_log("Client asleep closed its connection.");
    publish(&mut publisher, "z/x", "to whoever can", QoS::AtMostOnce);
    assert_eq!(payloads(&mut online), ["to whoever can"]);
    publish(
        &mut publisher,
        "z/x",
        "kept for the sleeper",
        QoS::AtLeastOnce,
    );
    assert_eq!(payloads(&mut online), Vec::<String>::new());
    let mut back = Client::connect(&persistent).expect("connect").0;
    assert_eq!(&next(&mut back).payload[..], b"kept for the sleeper");
}
