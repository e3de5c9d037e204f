//! Sessions that follow their clients across the cluster (`cluster_sessions jetstream`, the
//! default; Debian's `nats-server` with JetStream on): one live connection per client id in
//! the whole cluster, a client taken over on another node keeps its session there (its
//! subscriptions and what was queued for it, in order), a clean start ends it, and nodes
//! racing for one client id leave exactly one connection.

mod common;

use common::cluster::*;
use common::nats::Nats;
use common::{Broker, DEADLINE};
use midge::client::{Client, ClientError};
use midge::codec::*;
use std::time::{Duration, Instant};

const BUCKET_OPEN: &str = "who owns each session is kept in the JetStream bucket";

/// `n` nodes with the sessions bucket open.
fn session_nodes(nats: &Nats, n: usize) -> Vec<Broker> {
    let nodes = nodes(nats, n, "sys_interval 1\n");
    for node in &nodes {
        node.wait_for_log(BUCKET_OPEN);
    }
    nodes
}

/// A client with a persistent session (3.x clean session 0; 5.0 an hour's expiry).
fn persistent(node: &Broker, id: &str, version: ProtocolVersion) -> (Client, ConnAck) {
    let mut options = options(node.port, id, version);
    options.clean = false;
    if version == ProtocolVersion::V5 {
        options.properties.session_expiry_interval = Some(3600);
    }
    Client::connect(&options).expect("connect")
}

fn payload(p: &Publish) -> String {
    String::from_utf8(p.payload.to_vec()).unwrap()
}

#[test]
fn a_client_taken_over_on_another_node_keeps_its_subscriptions_and_the_old_connection_is_told() {
    let nats = Nats::start();
    let nodes = session_nodes(&nats, 2);
    let (mut first, ack) = persistent(&nodes[0], "dev", ProtocolVersion::V5);
    assert!(!ack.session_present);
    subscribe(&mut first, &[("s/#", QoS::AtLeastOnce)]);

    let (mut second, ack) = persistent(&nodes[1], "dev", ProtocolVersion::V5);
    assert!(ack.session_present, "the session came from the other node");
    // [MQTT-3.1.4-3] the existing connection is closed; 5.0 says why (0x8E).
    assert!(
        matches!(
            closed(&mut first),
            ClientError::Closed(Some(ReasonCode::SessionTakenOver))
        ),
        "the old connection is told it was taken over"
    );
    nodes[0].wait_for_log("Client dev already connected, closing old connection.");

    // Its subscription is on the new node now: a message from the old node reaches it.
    let mut publisher = client(&nodes[0], "pub", ProtocolVersion::V5);
    wait_for_interest(&mut publisher, &mut [&mut second], "s/probe");
    publish(&mut publisher, "s/x", "after", QoS::AtLeastOnce);
    let p = next(&mut second);
    assert_eq!((p.topic.as_str(), payload(&p).as_str()), ("s/x", "after"));
    assert_eq!(p.qos, QoS::AtLeastOnce);

    // Back on the first node, the session comes back with it (and with it "after" again,
    // if its PUBACK had not been read when the session left: then it was in flight).
    drop(second);
    let (mut third, ack) = persistent(&nodes[0], "dev", ProtocolVersion::V5);
    assert!(ack.session_present, "the session came back");
    let before = wait_for_interest_after(&mut publisher, &mut [&mut third], "s/probe");
    assert!(before.is_empty() || before == [&b"after"[..]], "{before:?}");
}

#[test]
fn messages_queued_on_one_node_are_delivered_in_order_on_another() {
    let nats = Nats::start();
    let nodes = session_nodes(&nats, 2);
    let (mut device, _) = persistent(&nodes[0], "dev", ProtocolVersion::V311);
    subscribe(&mut device, &[("q/#", QoS::AtLeastOnce)]);
    device
        .disconnect(Properties::default())
        .expect("disconnect");

    // Queued on node 0 while the client is away (each PUBACK after it was routed there).
    let mut publisher = client(&nodes[0], "pub", ProtocolVersion::V311);
    for i in 1..=5 {
        publish(
            &mut publisher,
            &format!("q/{i}"),
            &i.to_string(),
            QoS::AtLeastOnce,
        );
    }

    let (mut device, ack) = persistent(&nodes[1], "dev", ProtocolVersion::V311);
    assert!(ack.session_present);
    let got: Vec<String> = (0..5).map(|_| payload(&next(&mut device))).collect();
    assert_eq!(
        got,
        ["1", "2", "3", "4", "5"],
        "each once, in order [MQTT-4.6.0-6]"
    );
    nothing_more(&mut device, Duration::from_millis(300));
    // Delivered: nothing is left of it to send again anywhere.
    device
        .disconnect(Properties::default())
        .expect("disconnect");
    let (mut device, ack) = persistent(&nodes[0], "dev", ProtocolVersion::V311);
    assert!(ack.session_present);
    nothing_more(&mut device, Duration::from_millis(300));
}

#[test]
fn a_clean_start_on_another_node_ends_the_session_there() {
    let nats = Nats::start();
    let nodes = session_nodes(&nats, 2);
    let (mut device, _) = persistent(&nodes[0], "dev", ProtocolVersion::V5);
    subscribe(&mut device, &[("c/#", QoS::AtLeastOnce)]);
    device
        .disconnect(Properties::default())
        .expect("disconnect");

    // A clean start whose session ends with its connection (no expiry).
    let mut clean = options(nodes[1].port, "dev", ProtocolVersion::V5);
    clean.clean = true;
    let (device, ack) = Client::connect(&clean).expect("connect");
    assert!(
        !ack.session_present,
        "[MQTT-3.2.2-2] a clean start has no session"
    );
    device
        .disconnect(Properties::default())
        .expect("disconnect");

    // The old session and its subscription are gone everywhere.
    let (mut device, ack) = persistent(&nodes[0], "dev", ProtocolVersion::V5);
    assert!(!ack.session_present);
    let mut publisher = client(&nodes[0], "pub", ProtocolVersion::V5);
    publish(&mut publisher, "c/x", "to nobody", QoS::AtLeastOnce);
    nothing_more(&mut device, Duration::from_millis(300));
}

#[test]
fn nodes_racing_for_one_client_id_leave_exactly_one_connection() {
    let nats = Nats::start();
    let nodes = session_nodes(&nats, 3);
    let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
    for round in 0..4 {
        // One connection per node, all at once.
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(ports.len()));
        let racers: Vec<_> = (ports.iter().copied())
            .map(|port| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let mut options = options(port, "racer", ProtocolVersion::V5);
                    options.clean = false;
                    options.properties.session_expiry_interval = Some(3600);
                    barrier.wait();
                    Client::connect(&options).expect("connect").0
                })
            })
            .collect();
        let mut clients: Vec<Client> = racers.into_iter().map(|r| r.join().unwrap()).collect();
        // All but one are taken over, each told so; the one left stays.
        let mut open: Vec<usize> = (0..clients.len()).collect();
        let until = Instant::now() + DEADLINE;
        while open.len() > 1 {
            assert!(Instant::now() < until, "round {round}: still open {open:?}");
            open.retain(|&i| {
                match clients[i].recv(Some(Instant::now() + Duration::from_millis(50))) {
                    Err(ClientError::Closed(Some(ReasonCode::SessionTakenOver))) => false,
                    Ok(None) => true,
                    other => panic!("round {round}: racer {i}: {other:?}"),
                }
            });
        }
        assert_eq!(open.len(), 1, "round {round}: every connection was closed");
        let left = open;
        // The one left holds the session: a message to its subscription reaches it.
        let survivor = &mut clients[left[0]];
        subscribe(survivor, &[(&format!("race/{round}/#"), QoS::AtLeastOnce)]);
        let mut publisher = client(
            &nodes[(left[0] + 1) % nodes.len()],
            "pub",
            ProtocolVersion::V5,
        );
        wait_for_interest(
            &mut publisher,
            &mut [survivor],
            &format!("race/{round}/probe"),
        );
        drop(clients);
    }
}

/// A raw client's persistent 3.1.1 session on `port`.
fn raw_persistent(port: u16, id: &str) -> (common::Raw, ConnAck) {
    common::Raw::connect_with(
        port,
        common::connect_packet(ProtocolVersion::V311, id, false, 60),
    )
}

#[test]
fn what_is_in_flight_both_ways_moves_with_its_packet_ids() {
    let nats = Nats::start();
    let nodes = session_nodes(&nats, 2);
    let (mut device, _) = raw_persistent(nodes[0].port, "dev");
    device.subscribe(&[("f/#", QoS::ExactlyOnce)]);
    let mut publisher = client(&nodes[0], "pub", ProtocolVersion::V311);
    // To the device: a QoS 1 message never acknowledged, a QoS 2 one whose PUBREL went out.
    publish(&mut publisher, "f/1", "one", QoS::AtLeastOnce);
    publish(&mut publisher, "f/2", "two", QoS::ExactlyOnce);
    let one = device.recv_publish();
    let two = device.recv_publish();
    device.send(&Packet::PubRec(PubResponse::new(two.packet_id)));
    assert_eq!(
        device.recv(),
        Packet::PubRel(PubResponse::new(two.packet_id))
    );
    // From the device: a QoS 2 PUBLISH answered with PUBREC, its PUBREL not sent yet.
    device.send(&common::publish("up", b"once", QoS::ExactlyOnce, 42, false));
    assert_eq!(device.recv(), Packet::PubRec(PubResponse::new(42)));

    let (mut device, ack) = raw_persistent(nodes[1].port, "dev");
    assert!(ack.session_present);
    // [MQTT-4.4.0-1] unacknowledged PUBLISH and PUBREL are sent again, with their ids.
    let again = device.recv_publish();
    assert_eq!((again.packet_id, again.dup), (one.packet_id, true));
    assert_eq!(
        (again.topic.as_str(), &again.payload[..]),
        ("f/1", &b"one"[..])
    );
    assert_eq!(
        device.recv(),
        Packet::PubRel(PubResponse::new(two.packet_id))
    );
    device.send(&Packet::PubAck(PubResponse::new(one.packet_id)));
    device.send(&Packet::PubComp(PubResponse::new(two.packet_id)));
    // Packet id 42 still awaits PUBREL on the new node: PUBREL completes it.
    device.send(&Packet::PubRel(PubResponse::new(42)));
    assert_eq!(device.recv(), Packet::PubComp(PubResponse::new(42)));
    device.expect_nothing(Duration::from_millis(300));
}

/// A session with no record (one that ends with its connection, without a will: there is
/// nothing to keep of it) is not waited for when its node is gone. (Sessions with a record
/// go on from it: `cluster_failover.rs`.)
#[test]
fn a_client_whose_node_died_connects_to_another_and_starts_anew_said_and_counted() {
    let nats = Nats::start();
    let mut nodes = session_nodes(&nats, 2);
    let mut device = client(&nodes[0], "dev", ProtocolVersion::V5);
    subscribe(&mut device, &[("d/#", QoS::AtLeastOnce)]);
    kill_first(&mut nodes);
    let mut sys = client(&nodes[0], "sys", ProtocolVersion::V311);
    subscribe(
        &mut sys,
        &[("$SYS/broker/cluster/sessions/#", QoS::AtMostOnce)],
    );
    // The client is not kept waiting, and starts anew.
    let (_device, ack) = persistent(&nodes[0], "dev", ProtocolVersion::V5);
    assert!(!ack.session_present);
    nodes[0].wait_for_log("the session of dev could not be fetched: node node0 is not there");
    wait_for_sys(&mut sys, "$SYS/broker/cluster/sessions/not_fetched", |n| {
        n == 1
    });
}

#[test]
fn paho_is_taken_over_across_nodes_with_its_session() {
    let nats = Nats::start();
    let nodes = session_nodes(&nats, 2);
    let (a, b) = (nodes[0].port.to_string(), nodes[1].port.to_string());
    common::paho_script_passes("paho_takeover.py", &[&a, &b], &[&nodes[0], &nodes[1]]);
}

#[test]
fn what_a_client_sends_behind_its_connect_is_read_once_the_cluster_answers() {
    let nats = Nats::start();
    let nodes = session_nodes(&nats, 1);
    // CONNECT and SUBSCRIBE in one write: the SUBSCRIBE waits with the CONNECT for the
    // claim, and is answered after it.
    let mut raw = common::Raw::open(nodes[0].port, ProtocolVersion::V311);
    let connect = Packet::Connect(Box::new(common::connect_packet(
        ProtocolVersion::V311,
        "eager",
        true,
        60,
    )));
    let mut bytes = connect.to_bytes(ProtocolVersion::V311).unwrap().to_vec();
    let subscribe = common::subscribe(1, &[("e/#", QoS::AtLeastOnce)]);
    bytes.extend_from_slice(&subscribe.to_bytes(ProtocolVersion::V311).unwrap());
    raw.send_bytes(&bytes);
    assert!(matches!(raw.recv(), Packet::ConnAck(_)));
    assert!(matches!(raw.recv(), Packet::SubAck(_)));
}
