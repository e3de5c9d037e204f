//! Compaction against crashes and a full disk (issue 29): `kill -9` at random moments of a
//! compaction (SIGUSR1) loses nothing acknowledged, and a compaction that the disk has no
//! room for is given up while the journal goes on, at one and two shards.

mod common;

use common::persist::*;
use common::*;
use std::collections::BTreeMap;
use std::time::Duration;

/// A pseudo-random number from a seed (the test's moments vary from round to round and
/// from run to run, and a failing round names its seed).
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// Rounds: messages acknowledged, a compaction asked for, more acknowledged while it runs,
/// `kill -9` 0 to 40 ms into it; at the restart every acknowledged message is there, with
/// its last payload.
#[test]
fn a_crash_at_any_moment_of_a_compaction_loses_nothing_acknowledged() {
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    for threads in ["1", "2"] {
        let dir = store(&format!("compaction-crash-{threads}"));
        let name = format!("persist-compaction-crash-{threads}");
        let mut acked: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for round in 0..4u16 {
            let b = broker(&name, &dir, "", threads);
            let got = retained_under_keep(b.port);
            assert_eq!(
                got, acked,
                "round {round} at {threads} shards (seed {seed})"
            );
            let mut publisher = Raw::connect(b.port, "publisher");
            let mut id = 0;
            let mut publish = |publisher: &mut Raw, i: u16, round: u16| {
                id += 1;
                let topic = format!("keep/{i:03}");
                let payload = format!("{round}-{i}").repeat(100).into_bytes();
                publish_acked(publisher, &topic, &payload, id, true);
                acked.insert(topic, payload);
            };
            for i in 0..300 {
                publish(&mut publisher, i, round);
            }
            b.signal(libc::SIGUSR1);
            let more = next(&mut seed) % 20;
            for i in 300..300 + more as u16 {
                publish(&mut publisher, i, round);
            }
            std::thread::sleep(Duration::from_millis(next(&mut seed) % 40));
            drop(publisher);
            drop(b); // kill -9
        }
        let b = broker(&name, &dir, "", threads);
        assert_eq!(
            retained_under_keep(b.port),
            acked,
            "at {threads} shards (seed {seed})"
        );
        drop(b);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
