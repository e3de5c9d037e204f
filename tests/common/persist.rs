//! Helpers of the persistence tests: a store directory, midge on it, persistent clients.

use super::*;
use std::path::{Path, PathBuf};

/// A fresh store directory for one test.
pub fn store(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("midge-persist-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// midge with persistence in `dir` (as root, so the store stays this test's).
pub fn broker(name: &str, dir: &Path, extra: &str, threads: &str) -> Broker {
    let conf = config_file(
        name,
        &format!(
            "user root\nlistener 0 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}\n{extra}",
            dir.display()
        ),
    );
    Broker::start_configured(&["-c", &conf, "--threads", threads])
}

pub fn persistent(port: u16, version: ProtocolVersion, id: &str) -> (Raw, ConnAck) {
    let mut connect = connect_packet(version, id, false, 60);
    if version == ProtocolVersion::V5 {
        connect.properties.session_expiry_interval = Some(3600);
    }
    Raw::connect_with(port, connect)
}

pub fn disconnect(mut c: Raw) {
    c.send(&Packet::Disconnect(Disconnect::default()));
    c.expect_closed();
}

/// Publishes QoS 1 and waits for its PUBACK.
pub fn publish_acked(c: &mut Raw, topic: &str, payload: &[u8], packet_id: u16, retain: bool) {
    c.send(&publish(
        topic,
        payload,
        QoS::AtLeastOnce,
        packet_id,
        retain,
    ));
    assert!(matches!(c.recv(), Packet::PubAck(_)));
}

/// Starts midge with persistence in `dir` expecting it to refuse (a store it cannot read):
/// what it logged.
pub fn refused_start(name: &str, dir: &Path) -> String {
    let conf = config_file(
        name,
        &format!(
            "user root\nlistener 0 127.0.0.1\npersistence true\npersistence_location {}/\n",
            dir.display()
        ),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_midge"))
        .args(io_backend_args())
        .args(["-c", &conf])
        .output()
        .unwrap();
    assert!(!out.status.success(), "midge started");
    String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout)
}

/// The store's journal files (`*.journal`), sorted.
pub fn journal_files(dir: &Path) -> Vec<PathBuf> {
    let store = dir.join("mosquitto.db.d");
    let mut files: Vec<PathBuf> = std::fs::read_dir(store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "journal"))
        .collect();
    files.sort();
    files
}

/// The retained messages under `keep/` a new subscriber gets, topic to payload: all that
/// come until none has for half a second.
pub fn retained_under_keep(port: u16) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut late = Raw::connect(port, "late");
    late.subscribe(&[("keep/#", QoS::AtMostOnce)]);
    let mut got = std::collections::BTreeMap::new();
    while let Some(packet) = late.poll_packet(std::time::Duration::from_millis(500)) {
        let Packet::Publish(p) = packet else {
            panic!("{packet:?}");
        };
        got.insert(p.topic.to_string(), p.payload.to_vec());
    }
    got
}
