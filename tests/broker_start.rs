//! Starting on a port: one broker per port, as Mosquitto (issue 29, items 3 and 4).

mod common;

use common::*;
use midge::codec::*;
use std::process::Command;
use std::time::Instant;

/// A second broker on a port another one listens on refuses to start after waiting a
/// bounded time for it (3 s), as Mosquitto refuses ("Error: Address already in use", a
/// non-zero exit): it joined the first one's port (`SO_REUSEPORT`), and the kernel spread
/// new connections, and so sessions, over both. The first goes on serving.
#[test]
fn a_second_broker_on_a_port_in_use_refuses_to_start() {
    let first = Broker::start(&[]);
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_midge"))
        .args(io_backend_args())
        .args(["-p", &first.port.to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("is in use; waiting up to 3 s"), "{log}");
    assert!(log.contains("Error: Address already in use"), "{log}");
    assert!(!log.contains("listen socket on port"), "{log}");
    assert!(started.elapsed() < DEADLINE);
    let mut still = Raw::connect(first.port, "still-served");
    still.send(&Packet::PingReq);
    assert!(matches!(still.recv(), Packet::PingResp));
}

/// A broker killed (`kill -9`) and started again at once on its port: the new one waits
/// for the old listening socket to go (on io_uring the dead process's ring held it a
/// moment, and connections queued on it were reset), then serves the first CONNECT.
#[test]
fn a_broker_started_again_at_once_after_kill_9_serves_its_first_connect() {
    let mut broker = Broker::start(&[]);
    let port = broker.port.to_string();
    for round in 0..3 {
        broker.signal(libc::SIGKILL);
        broker.wait_exit();
        broker = Broker::spawn_env(&["-p", &port], &[]);
        let (mut c, ack) = Raw::connect_with(
            broker.port,
            connect_packet(ProtocolVersion::V311, &format!("round-{round}"), true, 60),
        );
        assert_eq!(ack.reason, ReasonCode::Success);
        c.send(&Packet::PingReq);
        assert!(matches!(c.recv(), Packet::PingResp));
    }
}
