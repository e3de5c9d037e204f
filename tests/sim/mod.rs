//! The simulation harness: shards on the simulated backend, stepped one turn at a time on
//! one thread, with the broker's invariants checked after every step.
#![allow(dead_code)]

mod client;
mod import;
pub mod model;
mod rng;
mod wire;

use bytes::BytesMut;
use midge::codec::*;
use midge::config::Config;
use midge::persist::recover::RecoveredSession;
use midge::persist::storage::sim::SimStorage;
use midge::shard::clock::ManualClock;
use midge::shard::io::sim::{SimBackend, SimNet};
use midge::shard::{Shard, Shared};
use midge::types::{ConnId, SessionId};
use std::time::Instant;

pub struct Sim {
    pub shards: Vec<Shard<SimBackend>>,
    pub nets: Vec<SimNet>,
    /// The shards' time: moves only when the test says.
    pub clock: std::sync::Arc<ManualClock>,
    ticks: Vec<Instant>,
    /// Bytes each client has received and not yet decoded.
    inbox: hashbrown::HashMap<(usize, ConnId), BytesMut>,
    /// Every session as replayed from the shards' change records: what a journal would
    /// restore. Checked against the live sessions after every step (without a store: with
    /// one, the journals take the records, and recovery is what is checked).
    replayed: hashbrown::HashMap<SessionId, RecoveredSession>,
    /// The simulated disk the shards' journals are on (`with_store`).
    pub storage: Option<SimStorage>,
}

impl Sim {
    pub fn new(shards: usize) -> Sim {
        let mut config = Config::default();
        config.listeners_with_ports(&[1883]);
        Sim::with_config(shards, config)
    }

    pub fn with_config(shards: usize, config: Config) -> Sim {
        let nets: Vec<SimNet> = (0..shards).map(|_| SimNet::new()).collect();
        let wakers = (0..shards).map(|_| SimNet::waker()).collect();
        let clock = std::sync::Arc::new(ManualClock::new());
        let (shared, receivers) =
            Shared::with_clock(config, wakers, vec![0], Vec::new(), clock.clone());
        let shards = receivers
            .into_iter()
            .enumerate()
            .map(|(id, rx)| {
                let mut shard = Shard::new(id, shared.clone(), nets[id].backend(), rx);
                shard.record_changes(true);
                shard
            })
            .collect();
        let ticks = vec![Instant::now(); nets.len()];
        Sim {
            shards,
            nets,
            clock,
            ticks,
            inbox: Default::default(),
            replayed: Default::default(),
            storage: None,
        }
    }

    /// Shards that persist (`config` says where) on the simulated disk `storage`, started
    /// as the broker starts: the store read by the real recovery, each shard given its part
    /// and a new journal. An error is the start's (a damaged store, a disk that fails).
    pub fn with_store(
        shards: usize,
        config: Config,
        storage: &SimStorage,
        clock: std::sync::Arc<ManualClock>,
    ) -> Result<Sim, String> {
        let nets: Vec<SimNet> = (0..shards).map(|_| SimNet::new()).collect();
        let wakers = (0..shards).map(|_| SimNet::waker()).collect();
        let disk = std::sync::Arc::new(storage.clone());
        let mut store = midge::persist::start::open(&config, shards, disk)
            .map_err(|e| e.to_string())?
            .expect("persistence is on");
        let (shared, receivers) =
            Shared::with_clock(config, wakers, vec![0], Vec::new(), clock.clone());
        store.share(&shared);
        let mut written = true;
        let shards = receivers
            .into_iter()
            .enumerate()
            .map(|(id, rx)| {
                let mut shard = Shard::new(id, shared.clone(), nets[id].backend(), rx);
                let part = store.take_shard(id).expect("a part per shard");
                written &= shard.restore_from(part);
                shard
            })
            .collect();
        if !written {
            return Err("cannot write the new journals".into());
        }
        store.finish();
        let ticks = vec![Instant::now(); nets.len()];
        Ok(Sim {
            shards,
            nets,
            clock,
            ticks,
            inbox: Default::default(),
            replayed: Default::default(),
            storage: Some(storage.clone()),
        })
    }

    /// One turn of shard `i`, then the invariants of every shard.
    pub fn step(&mut self, i: usize) {
        assert!(self.shards[i].turn(&mut self.ticks[i]));
        for shard in &self.shards {
            shard.check_invariants();
        }
        self.check_replay(i);
    }

    /// Replays shard `i`'s change records; then every session, on any shard, equals its
    /// replay (a record missing or wrong shows here, at the step that made it).
    fn check_replay(&mut self, i: usize) {
        if self.storage.is_some() {
            return;
        }
        for change in self.shards[i].take_changes() {
            let replay = self.replayed.entry(change.session).or_default();
            replay.apply(&change.what);
            if replay.has_ended() {
                self.replayed.remove(&change.session);
            }
        }
        for shard in &self.shards {
            for (id, live) in shard.durable_sessions() {
                let replay = self.replayed.get(&id).map(RecoveredSession::durable);
                assert_eq!(replay, Some(live), "session {id:?}: replay and live differ");
            }
        }
    }

    /// Turns every shard until nothing is left to do; then every session is held by the
    /// shard the registry names, and by that shard alone.
    pub fn settle(&mut self) {
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
        let busy: Vec<String> = self.shards.iter().map(|s| s.busy_with()).collect();
        panic!("the simulation does not settle: {busy:#?}");
    }

    pub fn check_locations(&self) {
        let registry = self.shards[0].shared().registry.lock().unwrap().clone();
        let mut held = hashbrown::HashMap::new();
        for (i, shard) in self.shards.iter().enumerate() {
            for client in shard.client_ids() {
                assert!(
                    held.insert(client.clone(), i).is_none(),
                    "{client} has sessions on two shards"
                );
                assert_eq!(
                    registry.get(client).map(|c| c.shard()),
                    Some(i),
                    "{client} is on shard {i}"
                );
            }
        }
    }

    pub fn send(&mut self, shard: usize, conn: ConnId, packet: &Packet, version: ProtocolVersion) {
        self.nets[shard].send(conn, &packet.to_bytes(version).unwrap());
    }

    /// The packets shard `shard` has sent to `conn` since the last call.
    pub fn received(
        &mut self,
        shard: usize,
        conn: ConnId,
        version: ProtocolVersion,
    ) -> Vec<Packet> {
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

pub fn connect(client_id: &str, clean: bool) -> Packet {
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

pub const V311: ProtocolVersion = ProtocolVersion::V311;

/// A broker persisting under `/sim` (the default `mosquitto.db` and its store beside it),
/// each turn synced.
pub fn persisting_config() -> Config {
    let mut config = Config::default();
    config.listeners_with_ports(&[1883]);
    config.persistence = true;
    config.persistence_location = Some("/sim".into());
    config.persistence_sync = midge::persist::SyncPolicy::Always;
    config
}

/// A QoS 1 PUBLISH of `payload` to `topic` as packet `packet_id`.
pub fn publish_to(topic: &str, packet_id: u16, payload: &'static [u8]) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: MqttStr::new(topic).unwrap(),
        packet_id,
        properties: Properties::default(),
        payload: bytes::Bytes::from_static(payload),
    })
}

/// SUBSCRIBE (packet id 1) to `filter` at QoS 1.
pub fn subscribe_q1(filter: &str) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        filters: vec![(
            MqttStr::new(filter).unwrap(),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        )],
    })
}

/// SUBSCRIBE (packet id 1) to `n` filters `f/0`, `f/1`, ... at QoS 1: with more than
/// `FILTERS_PER_TURN`, handled over several turns.
pub fn subscribe_many(n: usize) -> Packet {
    let options = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        ..Default::default()
    };
    let filters = (0..n)
        .map(|i| (MqttStr::new(&format!("f/{i}")).unwrap(), options))
        .collect();
    Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        filters,
    })
}

/// The payloads of the PUBLISH packets among `packets`, in order.
pub fn payloads(packets: Vec<Packet>) -> Vec<bytes::Bytes> {
    (packets.into_iter())
        .filter_map(|packet| match packet {
            Packet::Publish(p) => Some(p.payload),
            _ => None,
        })
        .collect()
}

pub fn connack(packets: &[Packet]) -> &ConnAck {
    match packets.first() {
        Some(Packet::ConnAck(ack)) => ack,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}
