//! Persistence on a disk that fails (issue 29): nothing is acknowledged that is not on
//! disk. On a full file system (a small tmpfs this test mounts; CI runs as root) and with
//! syncs that fail (`MIDGE_FAULT_SYNC_FAILS_WHILE`, debug builds), a client's PUBACK,
//! PUBREC and SUBACK wait until the disk takes the change, other clients go on, writing
//! resumes by itself when the disk does, and a crash at any point recovers every
//! acknowledged message, at one and two shards.

mod common;

use common::metrics::{get, metrics_port, sample};
use common::persist::*;
use common::*;
use midge::codec::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A tmpfs of `size` mounted at a fresh directory, unmounted when dropped.
struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    /// `None` where the test may not mount (not root): said on stderr.
    fn mount(name: &str, size: &str) -> Option<SmallDisk> {
        let dir = store(name);
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status();
        if !mounted.is_ok_and(|s| s.success()) {
            eprintln!(
                "cannot mount a tmpfs at {} (not root?): not tested here",
                dir.display()
            );
            return None;
        }
        Some(SmallDisk { dir })
    }

    /// Fills what is left of it with a file: the next write that needs space fails.
    fn fill(&self) -> PathBuf {
        let path = self.dir.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 << 10];
        let mut left = chunk.as_slice();
        while !left.is_empty() {
            match file.write(left) {
                Ok(0) => break,
                Ok(n) if n < left.len() => left = &left[n..],
                Ok(_) => left = &chunk,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        path
    }
}

/// Shortens the file that fills a disk by `bytes`: that much room is left.
fn leave_room(filler: &Path, bytes: u64) {
    let filled = std::fs::metadata(filler).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(filler)
        .unwrap();
    file.set_len(filled - bytes).unwrap();
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn disk_broker(name: &str, dir: &Path, threads: &str, env: &[(&str, &str)]) -> Broker {
    let conf = config_file(
        name,
        &format!(
            "user root\nlistener 0 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nmetrics_listener 127.0.0.1:0\n",
            dir.display()
        ),
    );
    Broker::spawn_env(&["-c", &conf, "--threads", threads], env)
}

/// The retained messages under `keep/` a new subscriber gets: (topic, payload length).
fn retained(port: u16) -> Vec<(String, usize)> {
    let got = retained_under_keep(port).into_iter();
    got.map(|(topic, payload)| (topic, payload.len())).collect()
}

fn topics(range: std::ops::Range<usize>, size: usize) -> Vec<(String, usize)> {
    let mut all: Vec<_> = range.map(|i| (format!("keep/{i:02}"), size)).collect();
    all.sort();
    all
}

/// Clients that need no disk go on while it fails: a clean session's QoS 0 message comes
/// back to it, and its ping is answered. (One client: a message passed from a failing shard
/// to another waits there behind the QoS 1 or 2 messages that shard passed before it, in
/// order, until they are on its disk.)
fn no_disk_clients_go_on(port: u16) {
    let mut client = Raw::connect(port, "clean");
    client.subscribe(&[("live", QoS::AtMostOnce)]);
    client.send(&publish("live", b"flows", QoS::AtMostOnce, 0, false));
    assert_eq!(&client.recv_publish().payload[..], b"flows");
    client.send(&Packet::PingReq);
    assert_eq!(client.recv(), Packet::PingResp);
}

/// Sends `count` retained QoS 1 messages of `size` bytes under `keep/`, numbered from
/// `first`, without waiting.
fn send_retained(c: &mut Raw, first: usize, count: usize, size: usize) {
    for i in first..first + count {
        let topic = format!("keep/{i:02}");
        c.send(&publish(
            &topic,
            &vec![b'x'; size],
            QoS::AtLeastOnce,
            i as u16 + 1,
            true,
        ));
    }
}

fn expect_pubacks(c: &mut Raw, first: usize, count: usize) {
    for i in first..first + count {
        match c.recv() {
            Packet::PubAck(ack) => assert_eq!(ack.packet_id, i as u16 + 1),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_full_disk_holds_acknowledgements_until_it_takes_them_and_a_crash_loses_none() {
    const SIZE: usize = 16 << 10;
    for threads in ["1", "2"] {
        let Some(disk) = SmallDisk::mount(&format!("full-{threads}"), "2m") else {
            return;
        };
        let name = format!("persist-full-{threads}");
        let b = disk_broker(&name, &disk.dir, threads, &[]);
        let (mut publisher, _) = persistent(b.port, ProtocolVersion::V5, "publisher");
        send_retained(&mut publisher, 0, 2, SIZE);
        expect_pubacks(&mut publisher, 0, 2);

        let filler = disk.fill();
        send_retained(&mut publisher, 2, 5, SIZE);
        // A QoS 2 message: its PUBREC stands for the packet id kept on disk.
        publisher.send(&publish("keep/q2", b"two", QoS::ExactlyOnce, 100, true));
        b.wait_for_log("Error: persistence write to");
        // Held, not refused: nothing comes back while the disk is full.
        publisher.expect_nothing(Duration::from_millis(300));
        no_disk_clients_go_on(b.port);
        let metrics = metrics_port(&b);
        let body = get(metrics, "/metrics").1;
        let held: f64 = (0..2)
            .filter_map(|s| {
                sample(
                    &body,
                    &format!("midge_persistence_held_clients{{shard=\"{s}\"}}"),
                )
            })
            .sum();
        assert!(held >= 1.0, "{body}");
        let failed: f64 = (0..2)
            .filter_map(|s| {
                sample(
                    &body,
                    &format!("midge_persistence_failures_total{{shard=\"{s}\"}}"),
                )
            })
            .sum();
        assert!(failed >= 1.0, "{body}");

        // Space comes back: the journal is written again from memory, by itself, and
        // everything held goes out in order.
        std::fs::remove_file(&filler).unwrap();
        expect_pubacks(&mut publisher, 2, 5);
        assert!(matches!(publisher.recv(), Packet::PubRec(r) if r.packet_id == 100));
        publisher.send(&Packet::PubRel(PubResponse::new(100)));
        assert_eq!(publisher.recv(), Packet::PubComp(PubResponse::new(100)));
        b.wait_for_log("written again from memory after the disk failed");

        // A crash (kill -9) with the disk full again: what was acknowledged is on disk.
        let filler = disk.fill();
        send_retained(&mut publisher, 7, 3, SIZE);
        b.wait_for_log_count("Error: persistence write to", 2);
        drop(publisher);
        drop(b);
        // Starting again with too little room for the new journals: a clear error, and the
        // journals read stay as they were (they alone hold the store).
        let journals = journal_files(&disk.dir);
        let before: Vec<Vec<u8>> = journals.iter().map(|j| std::fs::read(j).unwrap()).collect();
        leave_room(&filler, 8 << 10);
        let log = refused_start(&format!("{name}-refused"), &disk.dir);
        assert!(log.contains("cannot write the new journals"), "{log}");
        for (journal, bytes) in journals.iter().zip(&before) {
            assert_eq!(
                &std::fs::read(journal).unwrap(),
                bytes,
                "{}",
                journal.display()
            );
        }
        std::fs::remove_file(&filler).unwrap();
        let b = disk_broker(&name, &disk.dir, threads, &[]);
        let mut expected = topics(0..7, SIZE);
        expected.push(("keep/q2".into(), 3));
        expected.sort();
        let got = retained(b.port);
        // The three never acknowledged may or may not be there; all the others are.
        let acked: Vec<_> = got
            .iter()
            .filter(|t| expected.contains(t))
            .cloned()
            .collect();
        assert_eq!(acked, expected, "at {threads} shards");
        drop(b);
    }
}

#[test]
fn failed_syncs_hold_acknowledgements_and_deliveries_until_the_state_is_written_again() {
    for threads in ["1", "2"] {
        let dir = store(&format!("sync-fails-{threads}"));
        let fault = dir.with_extension("fault");
        let fault_env = fault.to_str().unwrap();
        let env = [("MIDGE_FAULT_SYNC_FAILS_WHILE", fault_env)];
        let name = format!("persist-sync-fails-{threads}");
        let b = disk_broker(&name, &dir, threads, &env);
        let (mut sub, _) = persistent(b.port, ProtocolVersion::V5, "keeper");
        sub.subscribe(&[("q/#", QoS::ExactlyOnce)]);
        let mut publisher = Raw::connect(b.port, "publisher");
        let (mut other, _) = persistent(b.port, ProtocolVersion::V311, "other");
        let (mut quitter, _) = persistent(b.port, ProtocolVersion::V311, "quitter");

        std::fs::write(&fault, b"").unwrap();
        publisher.send(&publish("q/x", b"once", QoS::ExactlyOnce, 7, false));
        b.wait_for_log("Error: persistence sync to");
        // The PUBREC stands for the message on disk, and so does its delivery to a
        // persistent session: neither goes out, nor does a persistent SUBACK (nor CONNACK).
        other.send(&subscribe(3, &[("r", QoS::AtLeastOnce)]));
        publisher.expect_nothing(Duration::from_millis(300));
        sub.expect_nothing(Duration::from_millis(1));
        other.expect_nothing(Duration::from_millis(1));
        no_disk_clients_go_on(b.port);
        // A PUBLISH and a DISCONNECT read together: the connection closes without the
        // PUBACK (a closing connection's last bytes wait for the turn's commit too).
        let v = ProtocolVersion::V311;
        let mut bytes = publish("elsewhere", b"bye", QoS::AtLeastOnce, 9, false)
            .to_bytes(v)
            .unwrap()
            .to_vec();
        bytes.extend_from_slice(
            &Packet::Disconnect(Disconnect::default())
                .to_bytes(v)
                .unwrap(),
        );
        quitter.send_bytes(&bytes);
        assert_eq!(quitter.expect_closed(), Vec::new());

        std::fs::remove_file(&fault).unwrap();
        assert!(matches!(publisher.recv(), Packet::PubRec(r) if r.packet_id == 7));
        publisher.send(&Packet::PubRel(PubResponse::new(7)));
        assert!(matches!(publisher.recv(), Packet::PubComp(r) if r.packet_id == 7));
        assert!(matches!(other.recv(), Packet::SubAck(_)));
        let first = sub.recv_publish();
        assert_eq!(
            (&first.payload[..], first.qos),
            (&b"once"[..], QoS::ExactlyOnce)
        );
        b.wait_for_log("written again from memory after the disk failed");

        // A crash before the subscriber answers: the delivery comes again, the same one
        // (its packet id kept on disk), and only once.
        drop((sub, publisher, other, quitter));
        drop(b);
        let b = disk_broker(&name, &dir, threads, &env);
        let (mut sub, ack) = persistent(b.port, ProtocolVersion::V5, "keeper");
        assert!(ack.session_present);
        let again = sub.recv_publish();
        assert_eq!(
            (&again.payload[..], again.packet_id, again.dup),
            (&b"once"[..], first.packet_id, true),
            "at {threads} shards"
        );
        sub.send(&Packet::PubRec(PubResponse::new(again.packet_id)));
        assert!(matches!(sub.recv(), Packet::PubRel(_)));
        sub.send(&Packet::PubComp(PubResponse::new(again.packet_id)));
        sub.expect_nothing(Duration::from_millis(200));
        drop(b);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Where the record holding `needle` begins in a journal (`src/persist/FORMAT.md`: a
/// 12-byte header, then records of a 4-byte length, a 4-byte checksum and the body).
fn record_holding(journal: &[u8], needle: &[u8]) -> usize {
    let mut pos = 12;
    while pos + 8 <= journal.len() {
        let len = u32::from_le_bytes(journal[pos..pos + 4].try_into().unwrap()) as usize;
        let body = &journal[pos + 8..pos + 8 + len];
        if body.windows(needle.len()).any(|w| w == needle) {
            return pos;
        }
        pos += 8 + len;
    }
    panic!("no record holds {needle:?}");
}

/// A flipped bit in the middle of a journal (bit 16 of a record's length, which then runs
/// past the end of the file) is damage, not a torn tail: the start stops naming the file
/// and the byte, changing nothing; with `persistence_on_damage set_aside` the file is kept
/// aside, the log says what was not read, and the broker starts with what came before it.
#[test]
fn a_flipped_bit_mid_journal_stops_the_start_or_is_set_aside_keeping_what_came_before() {
    let dir = store("bit-flip");
    let b = broker("persist-bit-flip", &dir, "", "1");
    let mut publisher = Raw::connect(b.port, "publisher");
    for i in 0..20u16 {
        let topic = format!("keep/{i:02}");
        publish_acked(&mut publisher, &topic, &[b'x'; 1000], i + 1, true);
    }
    drop(publisher);
    drop(b); // kill -9: the journal stays as the turns wrote it.
    let file = journal_files(&dir).pop().unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    let at = record_holding(&bytes, b"keep/10");
    bytes[at + 2] ^= 1;
    std::fs::write(&file, &bytes).unwrap();

    let log = refused_start("persist-bit-flip-refused", &dir);
    let said = format!("{}: record at byte {at}: length", file.display());
    assert!(log.contains(&said), "{log}");
    assert_eq!(std::fs::read(&file).unwrap(), bytes, "left as it was");

    let b = broker(
        "persist-bit-flip",
        &dir,
        "persistence_on_damage set_aside\n",
        "1",
    );
    b.wait_for_log("starting with what it held before that byte");
    b.wait_for_log("were not read");
    b.wait_for_log("Restored 10 retained messages");
    assert_eq!(retained(b.port), topics(0..10, 1000));
    let aside = file.with_extension("journal.damaged");
    assert_eq!(std::fs::read(&aside).unwrap(), bytes, "kept as it was");
    assert!(b.terminate().success());
    // It stays where it was put, through the next start too.
    let b = broker("persist-bit-flip", &dir, "", "1");
    b.wait_for_log("Restored 10 retained messages");
    assert_eq!(std::fs::read(&aside).unwrap(), bytes);
    drop(b);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A client held for the disk past one and a half keep alive periods has given up waiting
/// (it had no PINGRESP either): its connection is closed as a silent client's, what was held
/// for it dropped, so that the connections of clients that went away do not pile up while
/// the disk fails. Nothing it was not acknowledged is lost: it resends when it connects
/// again, and that waits for the disk as ever.
#[test]
fn a_client_held_past_its_keep_alive_is_closed_unacknowledged() {
    let dir = store("held-keepalive");
    let fault = dir.with_extension("fault");
    let env = [("MIDGE_FAULT_SYNC_FAILS_WHILE", fault.to_str().unwrap())];
    let b = disk_broker("persist-held-keepalive", &dir, "1", &env);
    let (mut brief, _) = Raw::connect_with(
        b.port,
        connect_packet(ProtocolVersion::V311, "brief", false, 1),
    );
    std::fs::write(&fault, b"").unwrap();
    brief.send(&publish("t", b"x", QoS::AtLeastOnce, 1, true));
    assert_eq!(brief.expect_closed(), Vec::new());
    b.wait_for_log("Client brief has exceeded timeout, disconnecting.");
    std::fs::remove_file(&fault).unwrap();
    // It connects again and resends: acknowledged once the disk takes it.
    let (mut again, ack) = Raw::connect_with(
        b.port,
        connect_packet(ProtocolVersion::V311, "brief", false, 60),
    );
    assert!(ack.session_present);
    publish_acked(&mut again, "t", b"x", 1, true);
    drop(b);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A compaction the disk has no room for is given up (its file removed) while the journal
/// goes on: what is acknowledged after it is on disk, and a crash loses none of it.
#[test]
fn a_compaction_without_room_is_given_up_and_the_journal_goes_on() {
    const SIZE: usize = 4 << 10;
    let Some(disk) = SmallDisk::mount("compaction-full", "2m") else {
        return;
    };
    let name = "persist-compaction-full";
    let b = disk_broker(name, &disk.dir, "1", &[]);
    let mut publisher = Raw::connect(b.port, "publisher");
    send_retained(&mut publisher, 0, 60, SIZE);
    expect_pubacks(&mut publisher, 0, 60);
    // Room for a few more turns, not for a second copy of the live state.
    let filler = disk.fill();
    leave_room(&filler, 64 << 10);
    b.signal(libc::SIGUSR1);
    b.wait_for_log("Warning: persistence: compacting");
    send_retained(&mut publisher, 60, 4, SIZE);
    expect_pubacks(&mut publisher, 60, 4);
    assert!(
        !b.has_log("Error: persistence write"),
        "the journal itself kept working"
    );
    drop(publisher);
    drop(b); // kill -9
    std::fs::remove_file(&filler).unwrap();
    let b = disk_broker(name, &disk.dir, "1", &[]);
    assert_eq!(retained(b.port), topics(0..64, SIZE));
    drop(b);
}
