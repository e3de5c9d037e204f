//! What the broker does when something goes wrong inside it: a message it cannot encode for
//! one subscriber, a shard that panics, and running out of file descriptors.

mod common;

use common::*;
use midge::codec::*;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

/// The largest remaining length a packet may have [MQTT-2.2.3].
const REMAINING_LENGTH_MAX: usize = 268_435_455;

#[test]
fn a_message_too_large_for_a_subscribers_version_is_dropped_for_it_alone() {
    let broker = Broker::start(&["--threads", "1"]);
    let mut v5 = Raw::connect_with(
        broker.port,
        connect_packet(ProtocolVersion::V5, "sub-v5", true, 60),
    )
    .0;
    v5.send(&subscribe(
        1,
        &[("big", QoS::AtMostOnce), ("small", QoS::AtMostOnce)],
    ));
    assert!(matches!(v5.recv(), Packet::SubAck(_)));
    let mut v3 = Raw::connect(broker.port, "sub-v3");
    v3.subscribe(&[("big", QoS::AtMostOnce)]);

    // A 3.1.1 PUBLISH of the largest remaining length: the 5.0 copy would need one byte
    // more (its property length) and cannot be encoded.
    let mut publisher = Raw::connect(broker.port, "publisher");
    let payload = vec![0x42; REMAINING_LENGTH_MAX - 2 - "big".len()];
    let packet = publish("big", &payload, QoS::AtMostOnce, 0, false);
    publisher.send(&packet);
    drop(payload);
    broker.wait_for_log("too large to send to sub-v5");

    // The 3.1.1 subscriber gets it whole; the 5.0 one does not, and its connection and the
    // broker carry on.
    let got = v3.recv_publish();
    assert_eq!(got.payload.len(), REMAINING_LENGTH_MAX - 5);
    publisher.send(&publish("small", b"after", QoS::AtMostOnce, 0, false));
    let next = v5.recv_publish();
    assert_eq!((&*next.topic, &next.payload[..]), ("small", &b"after"[..]));
}

#[test]
fn a_shard_that_panics_aborts_the_broker() {
    // Debug builds only: a PUBLISH to this topic panics the shard that reads it.
    let mut broker = Broker::start_with_env(
        &["--threads", "2"],
        &[("MIDGE_FAULT_PANIC_TOPIC", "fault/panic")],
    );
    let mut client = Raw::connect(broker.port, "doomed");
    client.send(&publish("fault/panic", b"x", QoS::AtMostOnce, 0, false));
    let status = broker.wait_exit();
    // Aborted (so that systemd restarts it), not left running with a dead shard.
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
    broker.wait_for_log("panicked (fault injected by MIDGE_FAULT_PANIC_TOPIC); aborting");
}

/// CPU time (user + system, in clock ticks) the process has used so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat format")
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn running_out_of_file_descriptors_neither_spins_nor_drops_clients() {
    let broker = Broker::start_with_fd_limit(&["--threads", "1"], 48);
    let mut first = Raw::connect(broker.port, "first");
    // More connections than descriptors left: the kernel completes the handshakes (its
    // backlog), the broker cannot accept them all.
    let mut waiting: Vec<std::net::TcpStream> = (0..80)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", broker.port)).unwrap())
        .collect();
    broker.wait_for_log("Error accepting a connection");

    // Out of descriptors, the shard waits between attempts instead of spinning (a spinning
    // shard would use the whole second) ...
    let before = cpu_ticks(broker.pid());
    first.expect_nothing(Duration::from_secs(1));
    let used = cpu_ticks(broker.pid()) - before;
    assert!(used < 30, "{used} ticks of CPU in one idle second");
    // ... serves the clients it has ...
    first.send(&Packet::PingReq);
    assert!(matches!(first.recv(), Packet::PingResp));
    // ... and accepts again once descriptors are free, having logged the run of failures
    // once, not at every retry.
    waiting.truncate(10);
    broker.wait_for_log("Accepting connections again");
    let mut late = Raw::connect(broker.port, "late");
    late.send(&Packet::PingReq);
    assert!(matches!(late.recv(), Packet::PingResp));
    let failures = broker.count_log("Error accepting a connection");
    let recoveries = broker.count_log("Accepting connections again");
    assert!(
        failures <= recoveries + 1,
        "{failures} failure lines for {recoveries} recoveries"
    );
}

/// `client_idle_timeout` (midge's own): a client with keepalive 0 is not held for ever when
/// its peer vanishes without a FIN; clients with a keepalive keep theirs (issue 16).
#[test]
fn client_idle_timeout_closes_silent_clients_without_keepalive() {
    let conf = config_file("idle-timeout", "client_idle_timeout 1\n");
    let broker = Broker::start(&["-c", &conf]);
    let started = std::time::Instant::now();
    let (mut silent, _) = Raw::connect_with(
        broker.port,
        connect_packet(ProtocolVersion::V311, "silent", true, 0),
    );
    let mut alive = Raw::connect(broker.port, "alive");
    silent.expect_closed();
    assert!(started.elapsed() >= std::time::Duration::from_secs(1));
    broker.wait_for_log("Client silent has exceeded timeout, disconnecting.");
    // The one with a keepalive of 60 s is still served.
    alive.send(&Packet::PingReq);
    assert!(matches!(alive.recv(), Packet::PingResp));
}

/// A log nobody reads (stderr a full pipe) never stops the broker: lines wait in a bounded
/// queue for the logging thread, and past it they are dropped and counted (issue 16).
#[test]
fn a_log_nobody_reads_never_stops_the_broker() {
    let port = quiet_port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_midge"))
        .args(io_backend_args())
        .args(["-v", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Ended if the test fails before it stops the broker itself.
    let mut child = KillOnDrop(Some(child));
    let until = std::time::Instant::now() + DEADLINE;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < until, "midge does not listen");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut sub = Raw::connect(port, "sub");
    sub.subscribe(&[("t", QoS::AtLeastOnce)]);
    let mut publisher = Raw::connect(port, "pub");
    // Four debug lines a message: far more than the pipe and the queue hold.
    for i in 0..6000u32 {
        let id = (i % 60_000 + 1) as u16;
        publisher.send(&publish("t", &i.to_be_bytes(), QoS::AtLeastOnce, id, false));
        assert!(matches!(publisher.recv(), Packet::PubAck(_)));
        let p = sub.recv_publish();
        sub.send(&Packet::PubAck(PubResponse::new(p.packet_id)));
    }
    let child = child.0.take().expect("the broker");
    // SAFETY: kill(2) on the PID of the child this test started and has not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("log lines were dropped"),
        "{}",
        &log[log.len().saturating_sub(2000)..]
    );
}

/// A broker this test started, killed and reaped if the test ends without stopping it.
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
