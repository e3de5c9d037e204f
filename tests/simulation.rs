//! Shards on the simulated backend, stepped one turn at a time by the test on one thread:
//! races between shards made to happen on purpose, with the broker's invariants checked
//! after every step.

use bytes::BytesMut;
use midge::codec::*;
use midge::config::Config;
use midge::shard::io::sim::{SimBackend, SimNet};
use midge::shard::{Shard, Shared};
use midge::types::ConnId;
use std::time::Instant;

struct Sim {
    shards: Vec<Shard<SimBackend>>,
    nets: Vec<SimNet>,
    ticks: Vec<Instant>,
    /// Bytes each client has received and not yet decoded.
    inbox: hashbrown::HashMap<(usize, ConnId), BytesMut>,
}

impl Sim {
    fn new(shards: usize) -> Sim {
        let nets: Vec<SimNet> = (0..shards).map(|_| SimNet::new()).collect();
        let wakers = (0..shards).map(|_| SimNet::waker()).collect();
        let mut config = Config::default();
        config.listeners_with_ports(&[1883]);
        let (shared, receivers) = Shared::new(config, wakers, vec![0], Vec::new());
        let shards = receivers
            .into_iter()
            .enumerate()
            .map(|(id, rx)| Shard::new(id, shared.clone(), nets[id].backend(), rx))
            .collect();
        let ticks = vec![Instant::now(); nets.len()];
        Sim {
            shards,
            nets,
            ticks,
            inbox: Default::default(),
        }
    }

    /// One turn of shard `i`, then the invariants of every shard.
    fn step(&mut self, i: usize) {
        assert!(self.shards[i].turn(&mut self.ticks[i]));
        for shard in &self.shards {
            shard.check_invariants();
        }
    }

    /// Turns every shard until nothing is left to do; then every session is held by the
    /// shard the registry names, and by that shard alone.
    fn settle(&mut self) {
        for _ in 0..1000 {
            for i in 0..self.shards.len() {
                self.step(i);
            }
            let busy = self.nets.iter().any(SimNet::busy);
            if !busy && self.shards.iter().all(Shard::is_idle) {
                self.check_locations();
                return;
            }
        }
        panic!("the simulation does not settle");
    }

    fn check_locations(&self) {
        let registry = self.shards[0].shared().registry.lock().unwrap().clone();
        let mut held = hashbrown::HashMap::new();
        for (i, shard) in self.shards.iter().enumerate() {
            for client in shard.client_ids() {
                assert!(
                    held.insert(client.clone(), i).is_none(),
                    "{client} has sessions on two shards"
                );
                assert_eq!(registry.get(client), Some(&i), "{client} is on shard {i}");
            }
        }
    }

    fn send(&mut self, shard: usize, conn: ConnId, packet: &Packet, version: ProtocolVersion) {
        self.nets[shard].send(conn, &packet.to_bytes(version).unwrap());
    }

    /// The packets shard `shard` has sent to `conn` since the last call.
    fn received(&mut self, shard: usize, conn: ConnId, version: ProtocolVersion) -> Vec<Packet> {
        let buf = self.inbox.entry((shard, conn)).or_default();
        buf.extend_from_slice(&self.nets[shard].take(conn));
        let decoder = Decoder::client(version, 1 << 24);
        let mut packets = Vec::new();
        while let Some(p) = decoder.decode_from(buf).unwrap() {
            packets.push(p);
        }
        packets
    }
}

fn connect(client_id: &str, clean: bool) -> Packet {
    Packet::Connect(Box::new(Connect {
        version: ProtocolVersion::V311,
        bridge: false,
        clean_start: clean,
        keep_alive: 60,
        properties: Properties::default(),
        client_id: MqttStr::new(client_id).unwrap(),
        will: None,
        username: None,
        password: None,
    }))
}

const V311: ProtocolVersion = ProtocolVersion::V311;

fn connack(packets: &[Packet]) -> &ConnAck {
    match packets.first() {
        Some(Packet::ConnAck(ack)) => ack,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// A client's connection asks another shard for its session, goes away, and the client
/// connects again on the same shard before the session arrives: the new connection gets the
/// session (not a new one that the arriving session would then overwrite and leak).
#[test]
fn a_reconnect_while_the_session_is_on_its_way_waits_for_it() {
    let mut sim = Sim::new(2);
    // A persistent session on shard 0, with a subscription, offline.
    let a = sim.nets[0].connect();
    sim.send(0, a, &connect("mover", false), V311);
    let sub = Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        filters: vec![(
            MqttStr::new("t").unwrap(),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        )],
    });
    sim.send(0, a, &sub, V311);
    sim.settle();
    assert!(!connack(&sim.received(0, a, V311)).session_present);
    sim.nets[0].close(a);
    sim.settle();

    // The client connects on shard 1, which asks shard 0 for the session ...
    let b = sim.nets[1].connect();
    sim.send(1, b, &connect("mover", false), V311);
    sim.step(1);
    // ... goes away, and connects again on shard 1 before shard 0 has answered.
    sim.nets[1].close(b);
    let c = sim.nets[1].connect();
    sim.send(1, c, &connect("mover", false), V311);
    sim.step(1);
    sim.settle();
    let got = sim.received(1, c, V311);
    assert!(connack(&got).session_present, "{got:?}");
}

/// The shard that holds a session has a full mailbox when another shard asks for it: the
/// request waits for room (it is never dropped, and the client is not refused), and the
/// session arrives.
#[test]
fn a_session_request_to_a_full_mailbox_waits_and_arrives() {
    let mut sim = Sim::new(2);
    let a = sim.nets[0].connect();
    sim.send(0, a, &connect("busy", false), V311);
    sim.settle();
    assert!(!connack(&sim.received(0, a, V311)).session_present);
    sim.nets[0].close(a);
    sim.settle();

    // Fill shard 0's mailbox with deliveries to nobody.
    let shared = sim.shards[0].shared().clone();
    let message = std::sync::Arc::new(midge::types::Message {
        topic: MqttStr::new("x").unwrap(),
        payload: bytes::Bytes::new(),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
        origin: None,
        expires_at: None,
    });
    let mut sent = 0;
    while shared
        .mailboxes
        .send(
            0,
            midge::router::ShardMsg::Deliver {
                message: message.clone(),
                targets: Vec::new(),
            },
        )
        .is_ok()
    {
        sent += 1;
    }
    assert!(sent > 0);

    let b = sim.nets[1].connect();
    sim.send(1, b, &connect("busy", false), V311);
    sim.step(1);
    assert!(sim.received(1, b, V311).is_empty(), "no refusal");
    sim.settle();
    let got = sim.received(1, b, V311);
    let ack = connack(&got);
    assert_eq!(ack.reason, ReasonCode::Success);
    assert!(ack.session_present, "{got:?}");
}
