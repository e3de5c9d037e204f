//! Taking over a Mosquitto database on the simulated disk: a crash at any storage operation
//! of the start that imports it, or a disk too full for it at any point, loses nothing the
//! database held, and the database is never imported twice.

use super::*;
use midge::persist::mosquitto_db::layout::*;
use midge::persist::mosquitto_db::{chunk, state};
use midge::persist::storage::sim::Faults;
use midge::persist::storage::Storage;
use std::path::Path;
use std::sync::Arc;

/// A Mosquitto 2 database: client `keeper` (3.1.1, persistent) subscribed to `news/#`, a
/// QoS 1 message in flight to it and two queued (QoS 1 and 2), and a retained message.
fn database() -> Vec<u8> {
    let mut file = header(6);
    chunk(&mut file, chunk::CONFIG, &config());
    let messages = [
        (1, "news/0", &b"zero"[..], 1),
        (2, "news/1", b"one", 1),
        (3, "news/2", b"two", 2),
        (4, "keep/a", b"kept", 1),
    ];
    for (id, topic, payload, qos) in messages {
        chunk(
            &mut file,
            chunk::MESSAGE,
            &message(id, 0, topic, payload, qos, &[]),
        );
    }
    chunk(&mut file, chunk::CLIENT, &client("keeper", 0, u32::MAX, 3));
    let held = [
        (1, 1, state::WAIT_FOR_PUBACK),
        (2, 1, state::QUEUED),
        (3, 2, state::QUEUED),
    ];
    for (id, qos, state) in held {
        let body = client_message("keeper", id, id as u16, qos, state, true, &[]);
        chunk(&mut file, chunk::CLIENT_MESSAGE, &body);
    }
    chunk(
        &mut file,
        chunk::SUBSCRIPTION,
        &subscription("keeper", "news/#", 2, 0, 0),
    );
    chunk(&mut file, chunk::RETAIN, &4u64.to_le_bytes());
    file
}

/// A disk holding the database where the store goes (`persisting_config`), synced.
fn disk_with_database(seed: u64) -> SimStorage {
    let storage = SimStorage::new(seed);
    let marker = persisting_config().persistence_marker().unwrap();
    storage.create_dir_all(marker.parent().unwrap()).unwrap();
    let tmp = Path::new("/sim/mosquitto.db.new");
    midge::persist::storage::replace_file(&storage, &marker, tmp, &database()).unwrap();
    storage
}

fn start(storage: &SimStorage) -> Result<Sim, String> {
    let clock = Arc::new(midge::shard::clock::ManualClock::new());
    Sim::with_store(2, persisting_config(), storage, clock)
}

/// What the database held is all there, once: `keeper` resumes its session and gets its
/// three messages in order (the one in flight again, DUP), its subscription still routes,
/// and the retained message is kept.
fn check_everything_came_over(sim: &mut Sim) {
    let keeper = sim.nets[0].connect();
    sim.send(0, keeper, &connect("keeper", false), V311);
    let reader = sim.nets[1].connect();
    sim.send(1, reader, &connect("reader", true), V311);
    sim.send(1, reader, &subscribe_q1("keep/#"), V311);
    sim.settle();
    sim.send(1, reader, &publish_to("news/3", 1, b"three"), V311);
    sim.settle();
    let got = sim.received(0, keeper, V311);
    assert!(connack(&got).session_present, "{got:?}");
    let delivered: Vec<(bool, &[u8])> = (got.iter())
        .filter_map(|packet| match packet {
            Packet::Publish(p) => Some((p.dup, &p.payload[..])),
            _ => None,
        })
        .collect();
    assert_eq!(
        delivered,
        [
            (true, &b"zero"[..]),
            (false, b"one"),
            (false, b"two"),
            (false, b"three")
        ]
    );
    let retained = payloads(sim.received(1, reader, V311));
    assert_eq!(retained, [&b"kept"[..]]);
}

/// The machine crashes at the first, second, ... storage operation of the start that takes
/// the database over, each time with a different tear of what was not synced; started again,
/// the broker has everything. Then, with no crash in the import, one right after it: still
/// everything, and not twice.
#[test]
fn a_crash_at_any_point_of_taking_over_a_mosquitto_database_loses_nothing() {
    let mut crashed = 0;
    for at in 1.. {
        let storage = disk_with_database(at);
        storage.crash_after(at);
        let first = start(&storage);
        if !storage.crashed() {
            storage.cancel_crash();
            let sim = first.expect("the import starts");
            storage.crash_now();
            storage.restart();
            drop(sim);
            check_everything_came_over(&mut start(&storage).expect("the store starts"));
            break;
        }
        crashed += 1;
        drop(first);
        storage.restart();
        storage.cancel_crash();
        let mut sim = start(&storage)
            .unwrap_or_else(|e| panic!("no start after a crash at operation {at}: {e}"));
        check_everything_came_over(&mut sim);
    }
    eprintln!("the import crashed at {crashed} points");
    // The import writes each shard's journal, the marker, and keeps the database aside.
    assert!(crashed >= 8, "the import crashed at {crashed} points only");
}

/// The disk has room for none, or only part, of what the import writes: the start fails,
/// the database stays as it was; with room again, everything comes over.
#[test]
fn a_disk_too_full_to_take_over_a_mosquitto_database_loses_nothing() {
    let (mut refused, mut room) = (0, 0);
    loop {
        let storage = disk_with_database(room);
        let capacity = storage.used() + room;
        storage.set_faults(Faults {
            capacity: Some(capacity),
            ..Default::default()
        });
        match start(&storage) {
            Ok(mut sim) => {
                storage.set_faults(Faults::default());
                check_everything_came_over(&mut sim);
                break;
            }
            Err(_) => {
                let marker = persisting_config().persistence_marker().unwrap();
                assert_eq!(storage.read(&marker).unwrap(), database());
                refused += 1;
                storage.set_faults(Faults::default());
                check_everything_came_over(&mut start(&storage).expect("room again"));
            }
        }
        room += 97;
    }
    eprintln!("refused {refused} times");
    assert!(refused >= 3, "refused {refused} times only");
}
