//! A random workload over the simulated broker, and a model of what its clients must see.
//!
//! Clients connect (on any shard, so sessions move), subscribe, publish at QoS 0, 1 and 2,
//! acknowledge like real client libraries (resending unacknowledged messages with DUP when a
//! session resumes), stop reading for a while, disconnect, drop their connection, or take
//! their own session over from another connection. The model checks, against what the
//! clients received:
//! - no QoS 1/2 message is lost: a message the broker acknowledged to its publisher reaches
//!   every persistent session that had a matching subscription (SUBACK received) before it
//!   was published;
//! - no QoS 2 message is delivered twice to a session;
//! - messages of one publisher reach a subscriber in the order published [MQTT-4.6.0-6];
//! - a persistent session, once made, is always present again [MQTT-3.2.2-2];
//!
//! and, after every shard turn, the shards' own invariants (`Shard::check_invariants`).

use bytes::BytesMut;
use hashbrown::{HashMap, HashSet};
use midge::codec::*;

mod disk;

use super::client::{Client, Outgoing};
use super::wire::{brief, publish_packet, Key};
use super::Sim;

pub use super::rng::Rng;

const TOPICS: [&str; 3] = ["a", "b", "c/d"];
const FILTERS: [&str; 4] = ["a", "b", "c/+", "#"];

pub struct World {
    pub sim: Sim,
    rng: Rng,
    clients: Vec<Client>,
    /// Confirmed subscriptions of persistent clients: filter -> granted QoS.
    confirmed: HashMap<u32, HashMap<&'static str, QoS>>,
    /// How many SUBSCRIBEs each client has sent: a message is owed to a subscriber only if
    /// its subscriptions did not change between the PUBLISH and its acknowledgement (the
    /// broker may have routed it under either).
    sub_changes: HashMap<u32, u64>,
    /// (subscriber, message) pairs that must be delivered.
    owed: HashSet<(u32, Key)>,
    /// (subscriber, message) pairs delivered at QoS 1/2 (subscriber: persistent clients'
    /// index; others are keyed by incarnation too, below).
    delivered: HashSet<(u32, u32, Key)>,
    /// Last sequence number delivered at QoS 1/2, per subscriber session and publisher
    /// connection and topic.
    last_seq: HashMap<(u32, u32, u32, u32, String), u32>,
    /// Messages their publisher sent again (DUP, after a reconnect): the copy the broker
    /// takes may be the resent one, which may come after later messages (allowed).
    resent: HashSet<Key>,
    pub steps: u64,
    /// A digest of every packet each way, in order: two runs of one seed must agree.
    pub digest: u64,
    /// MIDGE_SIM_TRACE: print every action and packet.
    trace: bool,
    /// The simulated disk and its faults, when the broker persists (`with_disk`).
    pub disk: Option<disk::Disk>,
}

fn matches(filter: &str, topic: &str) -> bool {
    midge::topic::matches(filter, topic)
}

impl World {
    pub fn new(seed: u64, shards: usize, clients: usize) -> World {
        World::build(seed, shards, clients, false)
    }

    /// A broker that persists to a simulated disk that crashes and fails (`disk.rs`):
    /// every promise must hold across crashes too.
    pub fn with_disk(seed: u64, shards: usize, clients: usize) -> World {
        World::build(seed, shards, clients, true)
    }

    fn build(seed: u64, shards: usize, clients: usize, persist: bool) -> World {
        let mut config = midge::config::Config::default();
        config.listeners_with_ports(&[1883]);
        // No limit on queued messages: nothing may be dropped for a full queue here.
        config.queued_max = usize::MAX;
        let mut rng = Rng::new(seed);
        let clients = (0..clients as u32)
            .map(|index| {
                let version = if rng.chance(50) {
                    ProtocolVersion::V5
                } else {
                    ProtocolVersion::V311
                };
                Client {
                    index,
                    id: format!("c{index}"),
                    version,
                    persistent: rng.chance(60),
                    conn: None,
                    connacked: false,
                    inbox: BytesMut::new(),
                    incarnation: 0,
                    next_pid: 0,
                    seq: 0,
                    publishing: HashMap::new(),
                    awaiting_pubrel: HashSet::new(),
                    reading: true,
                    subscribing: HashMap::new(),
                    has_session: false,
                    keep_alive: if rng.chance(30) { 3 } else { 0 },
                }
            })
            .collect();
        let (sim, disk) = if persist {
            let (sim, disk) = disk::Disk::start(seed, shards, config);
            (sim, Some(disk))
        } else {
            (Sim::with_config(shards, config), None)
        };
        World {
            sim,
            disk,
            rng,
            clients,
            confirmed: HashMap::new(),
            sub_changes: HashMap::new(),
            owed: HashSet::new(),
            delivered: HashSet::new(),
            last_seq: HashMap::new(),
            resent: HashSet::new(),
            steps: 0,
            digest: 0,
            trace: {
                let trace = std::env::var_os("MIDGE_SIM_TRACE").is_some();
                if trace {
                    midge::logging::init(true);
                }
                trace
            },
        }
    }

    /// One random action by one client, then one turn of one shard, then every client
    /// that reads handles what it received.
    pub fn step(&mut self) {
        self.steps += 1;
        let c = self.rng.below(self.clients.len());
        let connected = self.clients[c].conn.is_some() && self.clients[c].connacked;
        match self.rng.below(100) {
            0..=9 if self.clients[c].conn.is_none() => self.connect(c),
            0..=39 if connected => {
                let topic = TOPICS[self.rng.below(TOPICS.len())];
                let qos = self.rng.qos();
                self.publish(c, topic, qos);
            }
            40..=47 if connected => {
                let filter = FILTERS[self.rng.below(FILTERS.len())];
                let qos = self.rng.qos();
                self.subscribe(c, filter, qos);
            }
            48..=50 if connected => self.disconnect(c),
            51..=53 if self.clients[c].conn.is_some() => self.drop_connection(c),
            54..=55 if self.clients[c].conn.is_some() => self.connect(c), // takeover
            56..=58 => self.clients[c].reading = !self.clients[c].reading,
            59 => self.pass_time(),
            _ => {}
        }
        let shard = self.rng.below(self.sim.shards.len());
        self.sim.step(shard);
        if self.disk.is_some() && self.disk_step() {
            return; // The machine crashed in this step: what it sent is lost.
        }
        for c in 0..self.clients.len() {
            if self.clients[c].reading {
                self.read(c);
            }
        }
    }

    /// Time passes (up to 3 s): keepalives are checked; clients with a keep alive ping
    /// first, as libraries do, but now and then one is late (and the broker may drop it).
    fn pass_time(&mut self) {
        let by = std::time::Duration::from_millis(self.rng.below(3000) as u64);
        if self.trace {
            eprintln!("{} time passes: {by:?}", self.steps);
        }
        self.sim.clock.advance(by);
        for c in 0..self.clients.len() {
            let client = &self.clients[c];
            if client.keep_alive > 0 && client.connacked && self.rng.chance(75) {
                self.send(c, &Packet::PingReq);
            }
        }
    }

    /// Folds a packet into `digest` (FNV-1a: the same in every process).
    fn fold(&mut self, c: usize, packet: &Packet, to_broker: bool) {
        let line = format!("{to_broker} {c} {:?}", packet);
        for byte in line.bytes() {
            self.digest = (self.digest ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn send(&mut self, c: usize, packet: &Packet) {
        self.fold(c, packet, true);
        let client = &self.clients[c];
        if self.trace {
            eprintln!(
                "{} {:?} -> {}",
                self.steps,
                client.conn,
                brief(packet, &client.id)
            );
        }
        let Some((shard, conn)) = client.conn else {
            return;
        };
        self.sim.nets[shard].send(conn, &packet.to_bytes(client.version).unwrap());
    }

    fn next_pid(&mut self, c: usize) -> u16 {
        let client = &mut self.clients[c];
        loop {
            client.next_pid = client.next_pid.wrapping_add(1);
            let id = client.next_pid;
            if id != 0
                && !client.publishing.contains_key(&id)
                && !client.subscribing.contains_key(&id)
            {
                return id;
            }
        }
    }

    fn connect(&mut self, c: usize) {
        let shard = self.rng.below(self.sim.shards.len());
        let conn = self.sim.nets[shard].connect();
        let client = &mut self.clients[c];
        // A connection it leaves behind is the broker's to close (a takeover).
        client.conn = Some((shard, conn));
        client.connacked = false;
        client.inbox.clear();
        client.incarnation += 1;
        client.awaiting_pubrel.retain(|_| client.persistent);
        let mut properties = Properties::default();
        if client.persistent && client.version == ProtocolVersion::V5 {
            properties.session_expiry_interval = Some(u32::MAX);
        }
        let connect = Packet::Connect(Box::new(Connect {
            version: client.version,
            bridge: false,
            clean_start: !client.persistent,
            keep_alive: client.keep_alive,
            properties,
            client_id: MqttStr::new(&client.id).unwrap(),
            will: None,
            username: None,
            password: None,
        }));
        self.send(c, &connect);
    }

    fn publish(&mut self, c: usize, topic: &'static str, qos: QoS) {
        let pid = if qos == QoS::AtMostOnce {
            0
        } else {
            self.next_pid(c)
        };
        let client = &mut self.clients[c];
        client.seq += 1;
        let key = Key {
            publisher: client.index,
            incarnation: client.incarnation,
            seq: client.seq,
        };
        if qos != QoS::AtMostOnce {
            let owed_to = self
                .confirmed
                .iter()
                .filter(|(_, subs)| {
                    subs.iter()
                        .any(|(f, &granted)| granted != QoS::AtMostOnce && matches(f, topic))
                })
                .map(|(&s, _)| (s, self.sub_changes.get(&s).copied().unwrap_or(0)))
                .collect();
            client.publishing.insert(
                pid,
                Outgoing {
                    key,
                    qos,
                    topic,
                    owed_to,
                    released: false,
                },
            );
        }
        let packet = publish_packet(topic, qos, pid, false, key);
        self.send(c, &packet);
    }

    fn subscribe(&mut self, c: usize, filter: &'static str, qos: QoS) {
        let pid = self.next_pid(c);
        // Until its SUBACK, what the filter is subscribed at is uncertain (a lower QoS may
        // already be in force): nothing published meanwhile is owed through it.
        let index = self.clients[c].index;
        let changes = self.sub_changes.entry(index).or_default();
        *changes += 1;
        let sent = *changes;
        self.clients[c].subscribing.insert(pid, (filter, sent));
        if let Some(subs) = self.confirmed.get_mut(&index) {
            subs.remove(filter);
        }
        let packet = Packet::Subscribe(Subscribe {
            packet_id: pid,
            properties: Properties::default(),
            filters: vec![(
                MqttStr::new(filter).unwrap(),
                SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            )],
        });
        self.send(c, &packet);
    }

    fn disconnect(&mut self, c: usize) {
        self.send(c, &Packet::Disconnect(Disconnect::default()));
        self.drop_connection(c);
    }

    fn drop_connection(&mut self, c: usize) {
        if self.trace {
            eprintln!(
                "{} {:?} {} drops",
                self.steps, self.clients[c].conn, self.clients[c].id
            );
        }
        let client = &mut self.clients[c];
        if let Some((shard, conn)) = client.conn.take() {
            self.sim.nets[shard].close(conn);
        }
        client.connacked = false;
        if !client.persistent {
            // Its session ends with the connection: what it had in flight is gone.
            client.publishing.clear();
            client.awaiting_pubrel.clear();
        }
        client.subscribing.clear();
    }

    /// Handles what the client's connection received.
    fn read(&mut self, c: usize) {
        let Some((shard, conn)) = self.clients[c].conn else {
            return;
        };
        let bytes = self.sim.nets[shard].take(conn);
        let client = &mut self.clients[c];
        client.inbox.extend_from_slice(&bytes);
        let decoder = Decoder::client(client.version, 1 << 24);
        let mut packets = Vec::new();
        while let Some(p) = decoder
            .decode_from(&mut client.inbox)
            .expect("a valid packet")
        {
            packets.push(p);
        }
        for packet in packets {
            self.on_packet(c, packet);
        }
        if self.sim.nets[shard].closed_by_shard(conn) && self.clients[c].conn == Some((shard, conn))
        {
            // The broker closed it (a DISCONNECT, a takeover): gone.
            self.clients[c].conn = None;
            self.clients[c].connacked = false;
            self.clients[c].subscribing.clear();
            if !self.clients[c].persistent {
                self.clients[c].publishing.clear();
                self.clients[c].awaiting_pubrel.clear();
            }
        }
    }

    fn on_packet(&mut self, c: usize, packet: Packet) {
        self.fold(c, &packet, false);
        if self.trace {
            eprintln!(
                "{} {:?} <- {}",
                self.steps,
                self.clients[c].conn,
                brief(&packet, &self.clients[c].id)
            );
        }
        let client = &mut self.clients[c];
        let index = client.index;
        match packet {
            Packet::ConnAck(ack) => {
                assert_eq!(ack.reason, ReasonCode::Success, "{} refused", client.id);
                if client.persistent && client.has_session {
                    assert!(
                        ack.session_present,
                        "{}: persistent session lost",
                        client.id
                    );
                }
                client.has_session = client.persistent;
                client.connacked = true;
                if client.persistent && ack.session_present {
                    // Resend what is unfinished, as a client library does [MQTT-4.4.0-1].
                    let mut resend: Vec<Packet> = Vec::new();
                    let mut pids: Vec<u16> = client.publishing.keys().copied().collect();
                    pids.sort_unstable_by_key(|p| client.publishing[p].key.seq);
                    for pid in pids {
                        let o = &client.publishing[&pid];
                        self.resent.insert(o.key);
                        resend.push(if o.released {
                            Packet::PubRel(PubResponse::new(pid))
                        } else {
                            publish_packet(o.topic, o.qos, pid, true, o.key)
                        });
                    }
                    for p in resend {
                        self.send(c, &p);
                    }
                } else {
                    client.publishing.clear();
                    client.awaiting_pubrel.clear();
                }
            }
            Packet::SubAck(ack) => {
                if let Some((filter, sent)) = client.subscribing.remove(&ack.packet_id) {
                    // A later SUBSCRIBE to the same filter, still unanswered, decides it.
                    let later = client
                        .subscribing
                        .values()
                        .any(|&(f, other)| f == filter && other > sent);
                    if later {
                        return;
                    }
                    let granted = match ack.reasons.first() {
                        Some(ReasonCode::GrantedQos1) => Some(QoS::AtLeastOnce),
                        Some(ReasonCode::GrantedQos2) => Some(QoS::ExactlyOnce),
                        Some(r) if *r == ReasonCode::GRANTED_QOS_0 => Some(QoS::AtMostOnce),
                        _ => None,
                    };
                    if let (true, Some(granted)) = (client.persistent, granted) {
                        self.confirmed
                            .entry(index)
                            .or_default()
                            .insert(filter, granted);
                    }
                }
            }
            Packet::Publish(p) => {
                let key = Key::read(&p.payload);
                match p.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => {
                        self.delivery(c, key, &p.topic);
                        self.send(c, &Packet::PubAck(PubResponse::new(p.packet_id)));
                    }
                    QoS::ExactlyOnce => {
                        if self.clients[c].awaiting_pubrel.insert(p.packet_id) {
                            let session = self.session_key(c);
                            assert!(
                                !self.delivered.contains(&(session.0, session.1, key)),
                                "{key:?} delivered twice at QoS 2 to {}",
                                self.clients[c].id
                            );
                            self.delivery(c, key, &p.topic);
                        } else {
                            assert!(
                                p.dup || self.clients[c].persistent,
                                "a resent QoS 2 PUBLISH without DUP"
                            );
                        }
                        self.send(c, &Packet::PubRec(PubResponse::new(p.packet_id)));
                    }
                }
            }
            Packet::PubRel(rel) => {
                client.awaiting_pubrel.remove(&rel.packet_id);
                self.send(c, &Packet::PubComp(PubResponse::new(rel.packet_id)));
            }
            Packet::PubAck(ack) => {
                if let Some(o) = client.publishing.remove(&ack.packet_id) {
                    assert_eq!(o.qos, QoS::AtLeastOnce);
                    self.owe(&o);
                }
            }
            Packet::PubRec(rec) => {
                let newly_released = client
                    .publishing
                    .get_mut(&rec.packet_id)
                    .is_some_and(|o| !std::mem::replace(&mut o.released, true));
                if newly_released {
                    let o = &self.clients[c].publishing[&rec.packet_id];
                    let owed: Vec<_> = self.still_owed(o).collect();
                    self.owed.extend(owed);
                }
                self.send(c, &Packet::PubRel(PubResponse::new(rec.packet_id)));
            }
            Packet::PubComp(comp) => {
                client.publishing.remove(&comp.packet_id);
            }
            Packet::Disconnect(_) | Packet::PingResp | Packet::UnsubAck(_) => {}
            other => panic!("{} got {other:?}", client.id),
        }
    }

    /// The broker acknowledged `o`: it is owed to the subscribers whose subscriptions did
    /// not change since it was sent.
    fn owe(&mut self, o: &Outgoing) {
        let owed: Vec<_> = self.still_owed(o).collect();
        self.owed.extend(owed);
    }

    fn still_owed<'a>(&'a self, o: &'a Outgoing) -> impl Iterator<Item = (u32, Key)> + 'a {
        o.owed_to
            .iter()
            .filter(|(s, changes)| self.sub_changes.get(s).copied().unwrap_or(0) == *changes)
            .map(|&(s, _)| (s, o.key))
    }

    /// A session's identity in the model: persistent clients have one for the whole run;
    /// other clients one per connection.
    fn session_key(&self, c: usize) -> (u32, u32) {
        let client = &self.clients[c];
        (
            client.index,
            if client.persistent {
                0
            } else {
                client.incarnation
            },
        )
    }

    fn delivery(&mut self, c: usize, key: Key, topic: &str) {
        let session = self.session_key(c);
        if !self.delivered.insert((session.0, session.1, key)) {
            return; // A QoS 1 message again (allowed).
        }
        if self.resent.contains(&key) {
            return;
        }
        let order = (
            session.0,
            session.1,
            key.publisher,
            key.incarnation,
            topic.to_string(),
        );
        if let Some(&last) = self.last_seq.get(&order) {
            assert!(
                key.seq > last,
                "{}: {key:?} on {topic} after seq {last} [MQTT-4.6.0-6]",
                self.clients[c].id
            );
        }
        self.last_seq.insert(order, key.seq);
    }

    /// Every persistent client comes back and reads everything; then nothing owed may be
    /// missing.
    pub fn drain_and_check(&mut self) {
        self.disk_heals();
        for c in 0..self.clients.len() {
            self.clients[c].reading = true;
            if self.clients[c].persistent && self.clients[c].conn.is_none() {
                self.connect(c);
            }
        }
        for _ in 0..200 {
            for shard in 0..self.sim.shards.len() {
                self.sim.step(shard);
            }
            for c in 0..self.clients.len() {
                self.read(c);
                // Closed by the broker meanwhile (a connection of its own won): back again.
                if self.clients[c].persistent && self.clients[c].conn.is_none() {
                    self.connect(c);
                }
            }
            let traffic = self.sim.nets.iter().any(|n| n.busy());
            // (Clients held while a journal is written again wait for the rewrite.)
            let held = (self.sim.shards.iter()).any(|s| s.waits_for_disk())
                || (self.sim.nets.iter()).any(|n| !n.paused_with_input().is_empty());
            let quiet = !traffic && !held && self.sim.shards.iter().all(|s| s.is_idle());
            if quiet {
                break;
            }
            if !traffic && self.disk.is_some() {
                // Only a timer is left (a rewrite after a failed disk waits for its pause).
                self.sim
                    .clock
                    .advance(std::time::Duration::from_millis(300));
            }
        }
        self.sim.settle();
        for c in 0..self.clients.len() {
            self.read(c);
        }
        // With every client reading and the disk well, no connection may be left unread.
        for (i, net) in self.sim.nets.iter().enumerate() {
            let stalled = net.paused_with_input();
            assert!(stalled.is_empty(), "shard {i} does not read {stalled:?}");
        }
        for &(s, key) in &self.owed {
            assert!(
                self.delivered.contains(&(s, 0, key)),
                "{key:?} never reached c{s}"
            );
        }
        self.restart_and_check_sessions();
    }

    pub fn owed_count(&self) -> usize {
        self.owed.len()
    }
}
