//! Compaction with records arriving while its file is written: the file under the
//! journal's name reads back whole at every step (before the switch: the old file; after:
//! the new one), with the same state.

use super::*;
use crate::codec::{MqttStr, Properties, ProtocolVersion, QoS};
use crate::persist::recover;
use crate::session::{Changes, Limits};
use crate::types::Target;
use smallvec::smallvec;

fn message(payload: &'static [u8]) -> Arc<Message> {
    Arc::new(Message {
        topic: MqttStr::from_static("t"),
        payload: bytes::Bytes::from_static(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties::default(),
        origin: None,
        expires_at: None,
        order: Default::default(),
        stream: Default::default(),
    })
}

/// Queues `message` for the offline `session` and journals the change.
fn queue(journal: &mut Journal, session: &mut Session, message: &Arc<Message>) {
    let mut changes = Changes::default();
    changes.record(true);
    let target = Target {
        session: session.id,
        qos: QoS::AtLeastOnce,
        retain: false,
        identifiers: smallvec![],
        shared: false,
    };
    let limits = Limits {
        writable: true,
        window: 10,
        queued_max: usize::MAX,
        queued_bytes_max: 0,
    };
    session.offer(message, &target, limits, &mut changes);
    let clock = WallClock::now();
    for change in changes.take() {
        journal.change(&change, &clock);
    }
    journal.commit(Instant::now());
}

/// The queued payloads the store in `dir` holds for `client`.
fn queued(dir: &Path, client: &str) -> Vec<Vec<u8>> {
    let r = recover::recover(
        &crate::persist::storage::Os,
        dir,
        &WallClock::now(),
        false,
        None,
    )
    .unwrap();
    let session = r.sessions.iter().find(|s| s.client_id == client).unwrap();
    session
        .queued
        .iter()
        .map(|(m, _)| m.payload.to_vec())
        .collect()
}

fn copy_of(dir: &Path, name: &str) -> PathBuf {
    let copy = dir.with_extension(name);
    let _ = std::fs::remove_dir_all(&copy);
    std::fs::create_dir_all(&copy).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, copy.join(path.file_name().unwrap())).unwrap();
    }
    copy
}

fn payloads(list: &[&[u8]]) -> Vec<Vec<u8>> {
    list.iter().map(|p| p.to_vec()).collect()
}

#[test]
fn changes_during_a_compaction_reach_the_new_file_once() {
    let dir = std::env::temp_dir().join(format!("midge-compaction-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut journal = Journal::create(
        Arc::new(crate::persist::storage::Os),
        &dir,
        0,
        1,
        SyncPolicy::Never,
    )
    .unwrap();
    let clock = WallClock::now();
    let mut one = Session::new(
        SessionId::new(1),
        "one".into(),
        ProtocolVersion::V311,
        false,
    );
    let mut two = Session::new(
        SessionId::new(2),
        "two".into(),
        ProtocolVersion::V311,
        false,
    );
    journal.session(&one, 1, None, &clock);
    journal.session(&two, 2, None, &clock);
    let [a, b, c, d, e] = [b"a", b"b", b"c", b"d", b"e"].map(|p| message(p));
    queue(&mut journal, &mut one, &a);
    queue(&mut journal, &mut two, &a);

    journal.begin_compaction(Instant::now(), vec![one.id, two.id], Vec::new(), 0);
    // Neither is in the new file yet: to the journal only.
    queue(&mut journal, &mut one, &b);
    // The last one given is written first.
    assert_eq!(journal.next_to_compact(&clock), Some(two.id));
    journal.compact_session(&two, None, &clock);
    // two is in the new file: to both; one still is not.
    queue(&mut journal, &mut two, &c);
    queue(&mut journal, &mut one, &d);
    assert_eq!(journal.next_to_compact(&clock), Some(one.id));
    journal.compact_session(&one, None, &clock);
    assert_eq!(journal.next_to_compact(&clock), None);
    queue(&mut journal, &mut one, &e);
    journal.advance_compaction(Instant::now());
    assert!(journal.compacting(), "synced in the background first");
    // A crash now: the journal has everything.
    let before = copy_of(&dir, "before-switch");
    assert_eq!(queued(&before, "one"), payloads(&[b"a", b"b", b"d", b"e"]));
    assert_eq!(queued(&before, "two"), payloads(&[b"a", b"c"]));

    let until = Instant::now() + std::time::Duration::from_secs(10);
    while journal.compacting() {
        assert!(Instant::now() < until, "the compaction does not finish");
        journal.advance_compaction(Instant::now());
        std::thread::yield_now();
    }
    assert_eq!(queued(&dir, "one"), payloads(&[b"a", b"b", b"d", b"e"]));
    assert_eq!(queued(&dir, "two"), payloads(&[b"a", b"c"]));
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        files,
        ["shard-0-1.journal"],
        "the new file took the journal's place"
    );
    // After the switch, a message the new file has is named, not written again.
    let path = dir.join("shard-0-1.journal");
    let size = std::fs::metadata(&path).unwrap().len();
    queue(&mut journal, &mut two, &a);
    let grown = std::fs::metadata(&path).unwrap().len() - size;
    assert!(grown < 40, "a Queued record only ({grown} bytes)");
    assert_eq!(queued(&dir, "two"), payloads(&[b"a", b"c", b"a"]));
    for d in [&dir, &before] {
        std::fs::remove_dir_all(d).unwrap();
    }
}
