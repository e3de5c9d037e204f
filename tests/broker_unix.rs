//! Unix socket listeners (`listener 0 PATH`, as Mosquitto 2 writes them): Mosquitto's and
//! midge's tools and paho-mqtt over the socket, Mosquitto's log lines, the socket's mode,
//! the file removed at exit, a stale socket replaced, and a path in use or not a socket
//! refused with a clear error.

mod common;

use common::*;
use midge::codec::*;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A fresh directory for this test's socket.
fn socket_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("midge-unix-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// midge with a Unix socket listener at `path` and a loopback TCP one (for the port), as
/// root (so the socket file stays this test's to remove).
fn broker(name: &str, path: &Path, extra: &[&str]) -> Broker {
    let conf = config_file(
        name,
        &format!(
            "user root\nlistener 0 {}\nlistener 0 127.0.0.1\nallow_anonymous true\n",
            path.display()
        ),
    );
    let mut args = vec!["-c", conf.as_str()];
    args.extend_from_slice(extra);
    Broker::start_configured(&args)
}

/// Sends CONNECT over the Unix socket and returns the CONNACK's reason.
fn connect_over(path: &Path, client_id: &str) -> ReasonCode {
    let mut stream = UnixStream::connect(path).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let connect = connect_packet(ProtocolVersion::V311, client_id, true, 60);
    let bytes = Packet::Connect(Box::new(connect))
        .to_bytes(ProtocolVersion::V311)
        .unwrap();
    stream.write_all(&bytes).unwrap();
    let mut buf = bytes::BytesMut::new();
    let decoder = Decoder::client(ProtocolVersion::V311, 1024);
    loop {
        if let Some(packet) = decoder.decode_from(&mut buf).unwrap() {
            match packet {
                Packet::ConnAck(ack) => return ack.reason,
                other => panic!("expected CONNACK, got {other:?}"),
            }
        }
        let mut chunk = [0u8; 64];
        let n = read_retrying(&mut stream, &mut chunk).expect("CONNACK before the deadline");
        assert!(n > 0, "closed before CONNACK");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn mosquitto_and_midge_tools_publish_and_subscribe_over_a_unix_socket() {
    let dir = socket_dir("tools");
    let path = dir.join("mqtt.sock");
    let broker = broker("unix-tools", &path, &[]);
    let socket = path.to_str().unwrap();

    // Mode as Mosquitto leaves it: owner and group may connect, others not.
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o770);
    broker.wait_for_log(&format!("Opening unix listen socket on path {socket}."));

    let sub = Command::new(env!("CARGO_BIN_EXE_midge-sub"))
        .args([
            "--unix", socket, "-t", "unix/#", "-v", "-C", "2", "-W", "10",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    broker.wait_for_log("Sending SUBACK");
    let out = Command::new(program("mosquitto_pub"))
        .args([
            "--unix",
            socket,
            "-t",
            "unix/a",
            "-m",
            "from mosquitto_pub",
            "-q",
            "1",
        ])
        .output()
        .unwrap();
    succeeded(&out);
    let out = Command::new(env!("CARGO_BIN_EXE_midge-pub"))
        .args([
            "--unix",
            socket,
            "-t",
            "unix/b",
            "-m",
            "from midge-pub",
            "-q",
            "2",
        ])
        .output()
        .unwrap();
    succeeded(&out);
    let got = succeeded(&sub.wait_with_output().unwrap());
    assert_eq!(got, "unix/a from mosquitto_pub\nunix/b from midge-pub\n");

    // Mosquitto names a Unix socket peer by the socket's path, port 0.
    broker.wait_for_log(&format!("New connection from {socket}:0 on port 0."));
    broker.wait_for_log(&format!("New client connected from {socket}:0 as "));

    // mosquitto_sub over the socket gets what a TCP client publishes.
    let sub = Command::new(program("mosquitto_sub"))
        .args(["--unix", socket, "-t", "unix/c", "-C", "1", "-W", "10"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    broker.wait_for_log_count("Sending SUBACK", 2);
    let mut tcp = Raw::connect(broker.port, "tcp-publisher");
    tcp.send(&publish("unix/c", b"over tcp", QoS::AtMostOnce, 0, false));
    let got = succeeded(&sub.wait_with_output().unwrap());
    assert_eq!(got, "over tcp\n");

    // Mosquitto removes the socket file when it stops; so does midge.
    assert!(broker.terminate().success());
    assert!(!path.exists(), "the socket file is removed at exit");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn paho_over_a_unix_socket() {
    let dir = socket_dir("paho");
    let path = dir.join("paho.sock");
    let broker = broker("unix-paho", &path, &[]);
    paho_passes(&broker, &["--unix", path.to_str().unwrap()]);
    drop(broker);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn shards_share_one_unix_socket() {
    let dir = socket_dir("shards");
    let path = dir.join("shards.sock");
    let broker = broker("unix-shards", &path, &["--threads", "2"]);
    for i in 0..40 {
        assert_eq!(
            connect_over(&path, &format!("unix-{i}")),
            ReasonCode::Success
        );
    }
    broker.wait_for_log_count("New client connected from ", 40);
    // Every connection was taken by one of the two shards. Which one is the kernel's
    // choice: on io_uring the shards take turns while both are free (each accept is armed
    // again at the back of the socket's queue), but a shard that is slow to run leaves the
    // connection to the other, so on a loaded machine one may take them all (it did, in
    // one run in ten under a CPU hog); on epoll whichever is free first takes it.
    let served = broker
        .log_lines()
        .iter()
        .filter(|line| {
            line.contains("is served by shard 0") || line.contains("is served by shard 1")
        })
        .count();
    assert_eq!(served, 40, "{}", broker.log_lines().join("\n"));
    drop(broker);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// midge's exit and its log, started with a configuration naming `path` that must fail.
fn refused_start(name: &str, path: &Path) -> String {
    let conf = config_file(
        name,
        &format!(
            "user root\nlistener 0 {}\nallow_anonymous true\n",
            path.display()
        ),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_midge"))
        .args(io_backend_args())
        .args(["-c", &conf])
        .output()
        .unwrap();
    assert!(!out.status.success(), "midge started on {}", path.display());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_stale_socket_is_replaced_and_a_path_in_use_or_not_a_socket_is_refused() {
    let dir = socket_dir("refused");

    // A socket file nobody listens on any more (a broker that crashed): replaced.
    let stale = dir.join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    // A broker another test spawns meanwhile is forked holding a copy of the listener
    // until it execs: the socket is stale once a connect is refused.
    let until = std::time::Instant::now() + DEADLINE;
    while UnixStream::connect(&stale).is_ok() {
        assert!(
            std::time::Instant::now() < until,
            "the stale socket still listens"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let broker = broker("unix-stale", &stale, &[]);
    assert_eq!(connect_over(&stale, "after-stale"), ReasonCode::Success);
    drop(broker);

    // A socket another process still listens on: left alone, and midge says why.
    let live = dir.join("live.sock");
    let other = UnixListener::bind(&live).unwrap();
    let log = refused_start("unix-live", &live);
    assert!(
        log.contains(&format!(
            "Error: cannot listen on unix socket {}: another process listens on it",
            live.display()
        )),
        "{log}"
    );
    assert!(live.exists(), "the other process's socket is not removed");
    drop(other);

    // A file that is not a socket is never removed.
    let file = dir.join("notes.txt");
    std::fs::write(&file, "keep me").unwrap();
    let log = refused_start("unix-file", &file);
    assert!(log.contains("the path exists and is not a socket"), "{log}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    std::fs::remove_dir_all(&dir).unwrap();
}
