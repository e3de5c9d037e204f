//! systemd's notify protocol, against a socket the test provides (`NOTIFY_SOCKET`):
//! READY=1 once the broker serves, RELOADING=1 and READY=1 around SIGHUP, WATCHDOG=1 while
//! its shards turn, STOPPING=1 on SIGTERM (issue 16).

mod common;

use common::*;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

/// The next datagram that is not a watchdog ping (those are counted in `pings`).
fn next_state(socket: &UnixDatagram, pings: &mut usize) -> String {
    let until = Instant::now() + DEADLINE;
    let mut buf = [0u8; 512];
    loop {
        assert!(
            Instant::now() < until,
            "no state from midge within {DEADLINE:?}"
        );
        let Ok(n) = socket.recv(&mut buf) else {
            continue;
        };
        let state = String::from_utf8_lossy(&buf[..n]).into_owned();
        if state == "WATCHDOG=1" {
            *pings += 1;
        } else {
            return state;
        }
    }
}

#[test]
fn midge_tells_systemd_when_it_is_ready_reloading_alive_and_stopping() {
    let path = std::env::temp_dir().join(format!("midge-test-{}-notify", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let conf = config_file("systemd", "user root\nallow_anonymous true\n");
    let notify = path.to_str().unwrap();
    let broker = Broker::start_with_env(
        &["-c", &conf, "--threads", "2"],
        &[("NOTIFY_SOCKET", notify), ("WATCHDOG_USEC", "300000")],
    );
    let mut pings = 0;
    assert_eq!(next_state(&socket, &mut pings), "READY=1\nSTATUS=Serving");
    // It serves once it says so.
    let _c = Raw::connect(broker.port, "after-ready");
    // Pings every 150 ms while both shards turn.
    let until = Instant::now() + DEADLINE;
    let mut buf = [0u8; 64];
    while pings < 3 {
        assert!(Instant::now() < until, "watchdog pings");
        if let Ok(n) = socket.recv(&mut buf) {
            assert_eq!(&buf[..n], b"WATCHDOG=1");
            pings += 1;
        }
    }
    broker.signal(libc::SIGHUP);
    let reloading = next_state(&socket, &mut pings);
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    assert_eq!(next_state(&socket, &mut pings), "READY=1\nSTATUS=Serving");
    broker.wait_for_log("Reloading config.");
    broker.signal(libc::SIGTERM);
    assert_eq!(next_state(&socket, &mut pings), "STOPPING=1");
    let _ = std::fs::remove_file(&path);
}
