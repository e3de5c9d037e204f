//! A bridge between two simulated brokers: broker A's bridge connects out through its
//! simulated backend, and the test carries the bytes between that connection and a client
//! connection of broker B, as the network would, cutting the wire when it says. Every step
//! checks both brokers' invariants.

mod sim;

use midge::codec::*;
use midge::config::Config;
use midge::types::ConnId;
use sim::*;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Where broker B is, as broker A's bridge names it.
const CENTRAL: &str = "10.0.0.9:1883";

/// The wire between A's bridge connection and B's connection for it.
struct Wire {
    /// A's outgoing connection, as the test (standing for the network) holds it.
    far_end: ConnId,
    /// The same connection as broker B sees it.
    at_central: ConnId,
}

struct Pair {
    edge: Sim,
    central: Sim,
    wire: Option<Wire>,
}

impl Pair {
    fn new(bridge: &str) -> Pair {
        let text = format!(
            "listener 1883\nallow_anonymous true\nconnection central\naddress {CENTRAL}\n{bridge}"
        );
        let config = Config::from_text(Path::new("edge.conf"), &text).unwrap();
        let edge = Sim::with_config(1, config);
        edge.nets[0].listen(CENTRAL.parse::<SocketAddr>().unwrap());
        let mut pair = Pair {
            edge,
            central: Sim::new(1),
            wire: None,
        };
        pair.edge.shards[0].start_bridges(&[0]);
        pair
    }

    /// One step of each broker, then the network: a connection the bridge opened is
    /// joined to broker B, and the bytes on the wire cross it both ways.
    fn step(&mut self) {
        self.edge.step(0);
        self.central.step(0);
        let addr = CENTRAL.parse().unwrap();
        if let Some(far_end) = self.edge.nets[0].accept(addr) {
            let at_central = self.central.nets[0].connect();
            self.wire = Some(Wire {
                far_end,
                at_central,
            });
        }
        if let Some(wire) = &self.wire {
            let out = self.edge.nets[0].take(wire.far_end);
            if !out.is_empty() {
                self.central.nets[0].send(wire.at_central, &out);
            }
            let back = self.central.nets[0].take(wire.at_central);
            if !back.is_empty() {
                self.edge.nets[0].send(wire.far_end, &back);
            }
            let edge_closed = self.edge.nets[0].closed_by_shard(wire.far_end);
            let central_closed = self.central.nets[0].closed_by_shard(wire.at_central);
            if edge_closed || central_closed {
                self.cut();
            }
        }
    }

    /// The wire goes: each broker sees its end close.
    fn cut(&mut self) {
        if let Some(wire) = self.wire.take() {
            self.edge.nets[0].close(wire.far_end);
            self.central.nets[0].close(wire.at_central);
        }
    }

    fn steps(&mut self, n: usize) {
        for _ in 0..n {
            self.step();
        }
    }

    /// Time passes (keepalives, the bridge's restart timeout), a quarter second a step.
    fn wait(&mut self, duration: Duration) {
        let quarter = Duration::from_millis(250);
        for _ in 0..duration.as_millis() / quarter.as_millis() {
            self.edge.clock.advance(quarter);
            self.central.clock.advance(quarter);
            self.step();
        }
    }
}

/// A client of `sim` connected with `client_id`, its CONNACK read.
fn client(sim: &mut Sim, client_id: &str, clean: bool) -> ConnId {
    let conn = sim.nets[0].connect();
    sim.send(0, conn, &connect(client_id, clean), V311);
    conn
}

/// QoS 1 messages published on the edge broker reach a subscriber of the central one
/// through the bridge, in order; the wire is cut twice while they flow, and the bridge
/// (persistent on both sides) connects again and resends what was not acknowledged, so
/// every message arrives, in the order published, at least once [MQTT-4.6.0-6]
/// [MQTT-4.4.0-1].
#[test]
fn a_bridge_carries_qos1_messages_in_order_across_cuts() {
    let got = carry_across_cuts(QoS::AtLeastOnce);
    // At least once, in order: dropping repeats of what came before leaves what was sent.
    let mut seen = std::collections::HashSet::new();
    let firsts: Vec<&String> = got.iter().filter(|p| seen.insert(p.as_str())).collect();
    assert_eq!(
        firsts,
        sent().iter().collect::<Vec<_>>(),
        "received: {got:?}"
    );
}

/// The same at QoS 2 end to end (publisher, bridge topic, subscription): every message
/// arrives exactly once, in order, whatever the cuts lose on the wire [MQTT-4.3.3-1].
#[test]
fn a_bridge_carries_qos2_messages_exactly_once_across_cuts() {
    let got = carry_across_cuts(QoS::ExactlyOnce);
    assert_eq!(got, sent(), "received: {got:?}");
}

fn sent() -> Vec<String> {
    (1..=30).map(|i| format!("m{i:02}")).collect()
}

/// Publishes `sent()` at `qos` on the edge broker to a bridged topic, cutting the wire
/// after the 10th and the 20th, and returns the payloads the central broker's subscriber
/// received, every acknowledgement answered on both sides.
fn carry_across_cuts(qos: QoS) -> Vec<String> {
    let bridge = format!(
        "topic t/# out {}\ncleansession false\nrestart_timeout 1\n",
        qos as u8
    );
    let mut pair = Pair::new(&bridge);
    let subscriber = client(&mut pair.central, "subscriber", false);
    let mut subscribe = subscribe_q1("t/#");
    if let Packet::Subscribe(s) = &mut subscribe {
        s.filters[0].1.qos = qos;
    }
    pair.central.send(0, subscriber, &subscribe, V311);
    let publisher = client(&mut pair.edge, "publisher", true);
    pair.steps(20);
    assert!(pair.wire.is_some(), "the bridge did not connect");
    pair.central.received(0, subscriber, V311);
    pair.edge.received(0, publisher, V311);

    let sent = sent();
    let mut got = Vec::new();
    let answer = |pair: &mut Pair, got: &mut Vec<String>| {
        for packet in pair.central.received(0, subscriber, V311) {
            let reply = match packet {
                Packet::Publish(p) => {
                    got.push(String::from_utf8(p.payload.to_vec()).unwrap());
                    match p.qos {
                        QoS::ExactlyOnce => Packet::PubRec(PubResponse::new(p.packet_id)),
                        _ => Packet::PubAck(PubResponse::new(p.packet_id)),
                    }
                }
                Packet::PubRel(r) => Packet::PubComp(PubResponse::new(r.packet_id)),
                _ => continue,
            };
            pair.central.send(0, subscriber, &reply, V311);
        }
        for packet in pair.edge.received(0, publisher, V311) {
            if let Packet::PubRec(r) = packet {
                let rel = Packet::PubRel(PubResponse::new(r.packet_id));
                pair.edge.send(0, publisher, &rel, V311);
            }
        }
    };
    for (i, payload) in sent.iter().enumerate() {
        let publish = Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: MqttStr::new("t/x").unwrap(),
            packet_id: i as u16 + 1,
            properties: Properties::default(),
            payload: bytes::Bytes::from(payload.clone()),
        });
        pair.edge.send(0, publisher, &publish, V311);
        pair.step();
        answer(&mut pair, &mut got);
        if i == 9 || i == 19 {
            // Mid-flight: what is on the wire is lost with it.
            pair.cut();
            pair.wait(Duration::from_secs(2));
        }
    }
    for _ in 0..200 {
        pair.step();
        answer(&mut pair, &mut got);
        if got.last() == sent.last() && pair.edge.shards.iter().all(|s| s.is_idle()) {
            break;
        }
        pair.wait(Duration::from_millis(250));
    }
    got
}

/// A client of the edge broker sends a SUBSCRIBE of many filters (handled a slice a turn)
/// and a DISCONNECT, and closes its socket while the wire is down; the bridge's next
/// connection gets that client's slot from the backend. It does not overwrite the closing
/// connection: that one's packets are handled first (its session offline, resumable), and
/// the bridge connects and carries messages as before (both brokers' invariants are
/// checked every step).
#[test]
fn a_bridge_connecting_into_the_slot_of_a_closing_client_waits_for_it() {
    let mut pair = Pair::new("topic t/# out 1\ncleansession false\nrestart_timeout 1\n");
    let subscriber = client(&mut pair.central, "subscriber", false);
    pair.central.send(0, subscriber, &subscribe_q1("t/#"), V311);
    let leaving = client(&mut pair.edge, "leaving", false);
    pair.steps(20);
    assert!(pair.wire.is_some(), "the bridge did not connect");
    pair.edge.received(0, leaving, V311);
    pair.central.received(0, subscriber, V311);

    let subscribe = subscribe_many(16 * midge::limits::FILTERS_PER_TURN);
    pair.cut();
    pair.edge.send(0, leaving, &subscribe, V311);
    pair.edge
        .send(0, leaving, &Packet::Disconnect(Default::default()), V311);
    pair.edge.step(0);
    // Freed last, its slot is the next the simulated backend gives out: the bridge's.
    pair.edge.nets[0].close(leaving);
    pair.wait(Duration::from_secs(2));
    assert!(pair.wire.is_some(), "the bridge did not connect again");
    let far_end = pair.wire.as_ref().unwrap().far_end;
    assert_eq!(far_end.slot(), leaving.slot(), "the bridge took the slot");

    let publisher = client(&mut pair.edge, "publisher", true);
    pair.steps(5);
    pair.edge
        .send(0, publisher, &publish_to("t/x", 1, b"after"), V311);
    let mut got = Vec::new();
    for _ in 0..50 {
        pair.step();
        got.extend(payloads(pair.central.received(0, subscriber, V311)));
        if !got.is_empty() {
            break;
        }
    }
    assert_eq!(got, [&b"after"[..]]);
    let back = client(&mut pair.edge, "leaving", false);
    pair.steps(5);
    assert!(connack(&pair.edge.received(0, back, V311)).session_present);
}
