//! `persistence_sync always`, then `kill -9` in the middle of a QoS 1 and QoS 2 stream from
//! a publisher with a persistent session, which after the restart sends again what was not
//! acknowledged, as MQTT asks [MQTT-4.4.0-1]: every message reaches the persistent
//! subscriber, each QoS 2 message exactly once, in publishing order. Three rounds on the
//! same store, killed after different numbers of acknowledgements, one just after SIGUSR1
//! asked for a compaction; at one shard, and at two with the publisher on the other shard
//! than the subscriber's session (its messages pass between the shards' journals).

mod common;

use common::persist::*;
use common::*;
use midge::codec::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

#[test]
fn acknowledged_messages_survive_a_crash_and_qos2_arrives_once() {
    for threads in ["1", "2"] {
        let dir = store(&format!("crash-{threads}"));
        let config = "persistence_sync always\nmax_queued_messages 0\n";
        let name = format!("persist-crash-{threads}");
        // A turn that took messages from another shard waits 100 ms before its journal write
        // (debug builds' fault injection, a slow disk): the subscriber's shard writes a
        // message well after the publisher's shard wrote its own records.
        let slow_disk = [("MIDGE_FAULT_COMMIT_DELAY_MS", "100")];
        let start = |dir: &Path| {
            let conf = config_file(
                &name,
                &format!(
                    "user root\nlistener 0 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}\n{config}",
                    dir.display()
                ),
            );
            Broker::spawn_env(&["-c", &conf, "--threads", threads], &slow_disk)
        };
        let shards: usize = threads.parse().unwrap();
        let mut b = start(&dir);
        // Rounds whose crash came between the two shards' writes of a message.
        let mut handed_on = 0;
        let (mut sub, _) = persistent(b.port, ProtocolVersion::V311, "victim");
        sub.subscribe(&[("crash/#", QoS::ExactlyOnce)]);
        let mut victim_shard = shard_of(&b, &sub);
        disconnect(sub);
        for (round, (kill_after, compacting)) in [(37, false), (200, true), (411, false)]
            .into_iter()
            .enumerate()
        {
            let round = round as u32;
            let mut publisher = Publisher::connect(&b, round, (shards, victim_shard));
            publisher.publish_until_killed(&b, kill_after, compacting);
            drop(b);
            b = start(&dir);
            b.wait_for_log("Restored ");
            handed_on += b.count_log("handed on");
            publisher.finish_after_restart(&b);
            let (got, shard) = receive_all(&b);
            victim_shard = shard;
            let sent: Vec<u32> = (1..publisher.next).map(|p| publisher.id(p)).collect();
            for id in &sent {
                assert!(
                    got.contains(id),
                    "{threads} shards, round {round}: message {id} was lost"
                );
            }
            // QoS 2 (even packet ids) exactly once; QoS 1 at least once.
            for id in sent.iter().filter(|id| *id % 2 == 0) {
                let times = got.iter().filter(|g| *g == id).count();
                assert_eq!(
                    times, 1,
                    "{threads} shards, round {round}: QoS 2 message {id}"
                );
            }
            let mut first_seen = Vec::new();
            for id in &got {
                if !first_seen.contains(id) {
                    first_seen.push(*id);
                }
            }
            let mut in_order = first_seen.clone();
            in_order.sort_unstable();
            assert_eq!(
                first_seen, in_order,
                "{threads} shards, round {round}: out of order"
            );
        }
        if shards > 1 {
            assert!(handed_on > 0, "no crash came between the shards' writes");
        }
        drop(b);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// A publisher with a persistent session, and what it has not had acknowledged.
struct Publisher {
    raw: Raw,
    round: u32,
    client_id: String,
    next: u16,
    /// Sent, no PUBACK or PUBREC yet: packet id and QoS.
    unacked: BTreeMap<u16, QoS>,
    /// PUBREC came and PUBREL went, no PUBCOMP yet.
    released: BTreeSet<u16>,
    acked: usize,
}

impl Publisher {
    /// With two shards, on the other one than the subscriber's session.
    fn connect(b: &Broker, round: u32, (shards, victim_shard): (usize, usize)) -> Publisher {
        let client_id = format!("publisher-{round}");
        let mut tries = 0;
        let raw = loop {
            let (raw, _) = persistent(b.port, ProtocolVersion::V311, &client_id);
            if shards == 1 || shard_of(b, &raw) != victim_shard {
                break raw;
            }
            tries += 1;
            assert!(
                tries < 50,
                "every connection landed on shard {victim_shard}"
            );
        };
        Publisher {
            raw,
            round,
            client_id,
            next: 1,
            unacked: BTreeMap::new(),
            released: BTreeSet::new(),
            acked: 0,
        }
    }

    /// The message number of a packet id (`round` * 100,000 + packet id), its payload.
    fn id(&self, packet_id: u16) -> u32 {
        self.round * 100_000 + u32::from(packet_id)
    }

    /// Takes the acknowledgements that come within `wait_ms` of each other.
    fn collect(&mut self, wait_ms: u64) {
        while let Some(packet) = self.raw.poll_packet(Duration::from_millis(wait_ms)) {
            match packet {
                Packet::PubAck(r) => {
                    self.unacked.remove(&r.packet_id);
                    self.acked += 1;
                }
                Packet::PubRec(r) => {
                    if self.unacked.remove(&r.packet_id).is_some() {
                        self.acked += 1;
                    }
                    self.released.insert(r.packet_id);
                    self.raw.send(&Packet::PubRel(r));
                }
                Packet::PubComp(r) => {
                    self.released.remove(&r.packet_id);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Publishes QoS 1 and 2 (alternately) in batches of 10, at most 20 unacknowledged (the
    /// broker's Receive Maximum for QoS 2), and kills the broker once `kill_after` are
    /// acknowledged (with more on their way; `compacting`: just after SIGUSR1).
    fn publish_until_killed(&mut self, b: &Broker, kill_after: usize, compacting: bool) {
        let until = std::time::Instant::now() + DEADLINE;
        while self.acked < kill_after {
            assert!(
                std::time::Instant::now() < until,
                "too few acknowledgements: {} of {}",
                self.acked,
                self.next - 1
            );
            if self.unacked.len() <= 10 {
                for _ in 0..10 {
                    let qos = if self.next.is_multiple_of(2) {
                        QoS::ExactlyOnce
                    } else {
                        QoS::AtLeastOnce
                    };
                    let payload = self.id(self.next).to_be_bytes();
                    self.raw
                        .send(&publish("crash/x", &payload, qos, self.next, false));
                    self.unacked.insert(self.next, qos);
                    self.next += 1;
                }
            }
            self.collect(10);
        }
        if compacting {
            b.signal(libc::SIGUSR1);
        }
        // SAFETY: kill(2) on the PID of the broker this test started.
        unsafe { libc::kill(b.pid() as i32, libc::SIGKILL) };
        self.collect(500);
    }

    /// Reconnects to the restarted broker and sends again what was not acknowledged
    /// (PUBLISH with DUP) and the PUBRELs not completed [MQTT-4.4.0-1], until all is.
    fn finish_after_restart(&mut self, b: &Broker) {
        let (raw, ack) = persistent(b.port, ProtocolVersion::V311, &self.client_id);
        assert!(ack.session_present, "{}", self.client_id);
        self.raw = raw;
        for (&packet_id, &qos) in &self.unacked {
            let payload = self.id(packet_id).to_be_bytes();
            let mut again = publish("crash/x", &payload, qos, packet_id, false);
            if let Packet::Publish(p) = &mut again {
                p.dup = true;
            }
            self.raw.send(&again);
        }
        for &packet_id in &self.released {
            self.raw.send(&Packet::PubRel(PubResponse::new(packet_id)));
        }
        let until = std::time::Instant::now() + DEADLINE;
        while !self.unacked.is_empty() || !self.released.is_empty() {
            assert!(std::time::Instant::now() < until, "not all acknowledged");
            self.collect(100);
        }
        disconnect(std::mem::replace(
            &mut self.raw,
            Raw::connect(b.port, "spare"),
        ));
    }
}

/// The shard serving `client`'s connection (from the broker's debug log).
fn shard_of(b: &Broker, client: &Raw) -> usize {
    let port = client.stream.local_addr().unwrap().port();
    let line = b.wait_for_log(&format!(
        "Connection from 127.0.0.1:{port} is served by shard"
    ));
    line.trim_end_matches('.')
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The persistent subscriber reads what is queued for it, acknowledging each, and leaves
/// (its session stays); returns the message numbers in the order they came, and the shard
/// its session is on now.
fn receive_all(b: &Broker) -> (Vec<u32>, usize) {
    let (mut sub, ack) = persistent(b.port, ProtocolVersion::V311, "victim");
    let shard = shard_of(b, &sub);
    assert!(ack.session_present);
    let mut got = Vec::new();
    while let Some(packet) = sub.poll_packet(Duration::from_millis(500)) {
        let p = match packet {
            Packet::Publish(p) => p,
            Packet::PubRel(r) => {
                sub.send(&Packet::PubComp(r));
                continue;
            }
            other => panic!("unexpected {other:?}"),
        };
        got.push(u32::from_be_bytes(p.payload[..4].try_into().unwrap()));
        match p.qos {
            QoS::ExactlyOnce => sub.send(&Packet::PubRec(PubResponse::new(p.packet_id))),
            _ => sub.send(&Packet::PubAck(PubResponse::new(p.packet_id))),
        }
    }
    disconnect(sub);
    (got, shard)
}
