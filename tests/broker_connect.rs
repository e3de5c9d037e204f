//! CONNECT and CONNACK over real sockets: return codes, client identifiers, the first-packet
//! and second-CONNECT rules, keepalive, connect timeout, and clean shutdown.

mod common;

use common::*;
use midge::codec::*;
use std::time::Duration;

#[test]
fn connack_and_mosquitto_log_lines() {
    Broker::each_threads(&[], |broker| {
        let mut c = Raw::connect(broker.port, "client-1");
        broker.wait_for_log("New connection from 127.0.0.1:");
        let line = broker.wait_for_log("New client connected from 127.0.0.1:");
        assert!(line.ends_with("as client-1 (p4, c1, k60)."), "{line}");
        broker.wait_for_log("Sending CONNACK to client-1 (0, 0)");
        // Every line starts with the unix time.
        let first = &broker.log_lines()[0];
        let (time, _) = first.split_once(": ").unwrap();
        assert!(time.parse::<u64>().unwrap() > 1_600_000_000, "{first}");
        c.send(&Packet::PingReq);
        assert_eq!(c.recv(), Packet::PingResp);
        c.send(&Packet::Disconnect(Disconnect::default()));
        assert!(c.expect_closed().is_empty());
        broker.wait_for_log("Client client-1 disconnected.");
    });
}

#[test]
fn the_first_packet_must_be_connect() {
    let broker = Broker::start(&[]);
    // [MQTT-3.1.0-1]
    let mut c = Raw::open(broker.port, ProtocolVersion::V311);
    c.send(&Packet::PingReq);
    assert!(c.expect_closed().is_empty());
    broker.wait_for_log("disconnected due to protocol error");
}

#[test]
fn a_second_connect_is_a_protocol_violation() {
    let broker = Broker::start(&[]);
    let mut c = Raw::connect(broker.port, "twice");
    // [MQTT-3.1.0-2]
    c.send(&Packet::Connect(Box::new(connect_packet(
        ProtocolVersion::V311,
        "twice",
        true,
        60,
    ))));
    assert!(c.expect_closed().is_empty());
    broker.wait_for_log("Client twice disconnected due to protocol error (second CONNECT).");
}

#[test]
fn an_unsupported_protocol_level_gets_connack_1() {
    let broker = Broker::start(&[]);
    let mut c = Raw::open(broker.port, ProtocolVersion::V311);
    // CONNECT "MQTT" level 6.
    c.send_bytes(&[
        0x10, 0x0D, 0, 4, b'M', b'Q', b'T', b'T', 6, 2, 0, 60, 0, 1, b'x',
    ]);
    // [MQTT-3.1.2-2] CONNACK 0x01, then the connection is closed.
    assert_eq!(
        c.expect_closed(),
        vec![Packet::ConnAck(ConnAck {
            session_present: false,
            reason: ReasonCode::UnsupportedProtocolVersion,
            properties: Properties::default(),
        })]
    );
}

#[test]
fn client_identifiers() {
    let broker = Broker::start(&[]);
    let refused = |version, id: &str, clean| {
        let (mut c, ack) = Raw::connect_with(broker.port, connect_packet(version, id, clean, 60));
        assert!(c.expect_closed().is_empty());
        ack.reason
    };
    // [MQTT-3.1.3-8] an empty id with clean session 0 is refused with 0x02 (3.1.1).
    assert_eq!(
        refused(ProtocolVersion::V311, "", false),
        ReasonCode::ClientIdentifierNotValid
    );
    // MQTT 3.1 needs 1 to 23 characters.
    assert_eq!(
        refused(ProtocolVersion::V31, "", true),
        ReasonCode::ClientIdentifierNotValid
    );
    assert_eq!(
        refused(ProtocolVersion::V31, &"x".repeat(24), true),
        ReasonCode::ClientIdentifierNotValid
    );
    let (_c, ack) = Raw::connect_with(
        broker.port,
        connect_packet(ProtocolVersion::V31, &"x".repeat(23), true, 60),
    );
    assert_eq!(ack.reason, ReasonCode::Success);
    // [MQTT-3.1.3-6] an empty id with clean session is given one (3.1.1)...
    let (_c, ack) = Raw::connect_with(
        broker.port,
        connect_packet(ProtocolVersion::V311, "", true, 60),
    );
    assert_eq!(ack.reason, ReasonCode::Success);
    broker.wait_for_log("as auto-");
    // ...and 5.0 is told which. [MQTT-3.2.2-16]
    let (_c, ack) = Raw::connect_with(
        broker.port,
        connect_packet(ProtocolVersion::V5, "", true, 60),
    );
    assert_eq!(ack.reason, ReasonCode::Success);
    let assigned = ack
        .properties
        .assigned_client_identifier
        .clone()
        .expect("assigned id");
    assert!(assigned.starts_with("auto-"), "{assigned}");
}

#[test]
fn a_connection_without_connect_or_with_half_a_packet_is_closed() {
    let conf = config_file("connect-timeout", "connect_timeout 1\n");
    let broker = Broker::start(&["-c", &conf]);
    let mut silent = Raw::open(broker.port, ProtocolVersion::V311);
    let mut half = Raw::open(broker.port, ProtocolVersion::V311);
    half.send_bytes(&[0x10, 0x0D, 0, 4, b'M', b'Q']);
    assert!(silent.expect_closed().is_empty());
    assert!(half.expect_closed().is_empty());
    // A client that connected in time is unaffected.
    let mut fine = Raw::connect(broker.port, "fine");
    fine.send(&Packet::PingReq);
    assert_eq!(fine.recv(), Packet::PingResp);
}

/// The connect timeout counts from the accept, not from the last byte: a client that sends
/// its CONNECT a byte at a time, never pausing as long as the timeout, is still closed.
#[test]
fn a_connect_sent_a_byte_at_a_time_does_not_hold_off_the_connect_timeout() {
    use std::io::{Read, Write};
    let conf = config_file("connect-trickle", "connect_timeout 1\n");
    let broker = Broker::start(&["-c", &conf]);
    let mut bytes = bytes::BytesMut::new();
    let connect = connect_packet(ProtocolVersion::V311, &"t".repeat(200), true, 60);
    (Packet::Connect(Box::new(connect)))
        .encode(ProtocolVersion::V311, &mut bytes)
        .unwrap();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", broker.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let started = std::time::Instant::now();
    let mut closed_after = None;
    // 200 ms apart, the whole CONNECT would take 40 s; the timeout is 1 s.
    for byte in &bytes[..bytes.len() - 1] {
        if stream.write_all(&[*byte]).is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        match stream.read(&mut [0; 16]) {
            Ok(0) => {
                closed_after = Some(started.elapsed());
                break;
            }
            Ok(n) => panic!("{n} bytes before CONNECT was whole"),
            Err(e) if read_again(&e) => {}
            Err(_) => {
                closed_after = Some(started.elapsed());
                break;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never closed");
    }
    let closed_after = closed_after.expect("closed before the CONNECT was whole");
    assert!(closed_after < Duration::from_secs(4), "{closed_after:?}");
}

#[test]
fn keepalive_timeout_closes_and_pings_keep_alive() {
    let broker = Broker::start(&[]);
    let (mut quiet, _) = Raw::connect_with(
        broker.port,
        connect_packet(ProtocolVersion::V311, "quiet", true, 1),
    );
    let (mut pinger, _) = Raw::connect_with(
        broker.port,
        connect_packet(ProtocolVersion::V311, "pinger", true, 1),
    );
    // [MQTT-3.1.2-24] silent for 1.5 x keepalive: closed.
    let started = std::time::Instant::now();
    for _ in 0..6 {
        pinger.send(&Packet::PingReq);
        assert_eq!(pinger.recv(), Packet::PingResp);
        std::thread::sleep(Duration::from_millis(400));
    }
    assert!(quiet.expect_closed().is_empty());
    assert!(started.elapsed() >= Duration::from_millis(1500));
    broker.wait_for_log("Client quiet has exceeded timeout, disconnecting.");
    assert!(!broker.has_log("Client pinger has exceeded timeout"));
}

#[test]
fn sigterm_closes_connections_and_exits_0() {
    let broker = Broker::start(&["--threads", "2"]);
    let (mut v5, _) = Raw::connect_with(
        broker.port,
        connect_packet(ProtocolVersion::V5, "five", true, 60),
    );
    let mut v3 = Raw::connect(broker.port, "three");
    let status = broker.terminate();
    assert!(status.success(), "{status:?}");
    assert_eq!(
        v5.expect_closed(),
        vec![Packet::Disconnect(Disconnect::with_reason(
            ReasonCode::ServerShuttingDown
        ))]
    );
    assert!(v3.expect_closed().is_empty());
}

#[test]
fn anonymous_clients_are_refused_when_not_allowed() {
    let conf = config_file("anonymous", "allow_anonymous false\n");
    let broker = Broker::start(&["-c", &conf]);
    // 3.1.1: CONNACK 5, not authorized.
    let (mut c, ack) = Raw::connect_with(
        broker.port,
        connect_packet(ProtocolVersion::V311, "anon", true, 60),
    );
    assert_eq!(ack.reason, ReasonCode::NotAuthorized);
    assert_eq!(v3_return_code(ack.reason), 5);
    assert!(c.expect_closed().is_empty());
    broker.wait_for_log("Client anon disconnected, not authorised.");
    // 5.0: reason code 0x87.
    let (_c, ack) = Raw::connect_with(
        broker.port,
        connect_packet(ProtocolVersion::V5, "anon5", true, 60),
    );
    assert_eq!(ack.reason, ReasonCode::NotAuthorized);
}

#[test]
fn daemon_mode_runs_in_the_background() {
    // A free port outside Linux's ephemeral range (32768-60999), where the brokers the other
    // tests start with `-p 0` get theirs: bound by us, released, then given to the daemon.
    let port = (0..1000u16)
        .map(|i| 20_000 + (std::process::id() as u16 % 9_000 + i) % 10_000)
        .find(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("a free port below the ephemeral range");
    let conf = config_file(
        "daemon",
        &format!("listener {port} 127.0.0.1\nallow_anonymous true\n"),
    );
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_midge"))
        .args(["-d", "-c", &conf])
        .status()
        .unwrap();
    // The foreground process returns at once; the daemon goes on.
    assert!(status.success());
    let daemon = find_process_with_arg(&conf).expect("the daemon is running");
    let until = std::time::Instant::now() + DEADLINE;
    let mut c = loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break Raw::connect(port, "to-daemon");
        }
        assert!(
            std::time::Instant::now() < until,
            "the daemon does not listen"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    c.send(&Packet::PingReq);
    assert_eq!(c.recv(), Packet::PingResp);
    // SAFETY: kill(2) on the daemon this test started (found by its unique config path).
    unsafe { libc::kill(daemon, libc::SIGTERM) };
    assert!(c.expect_closed().is_empty());
}

/// The PID of a midge process whose command line contains `arg`.
fn find_process_with_arg(arg: &str) -> Option<i32> {
    let until = std::time::Instant::now() + DEADLINE;
    while std::time::Instant::now() < until {
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains("midge") && cmdline.contains(arg) {
                return Some(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

#[test]
fn a_configured_listener_refuses_anonymous_clients_by_default() {
    // As Mosquitto 2: `listener` without `allow_anonymous true` means no anonymous clients.
    let port = (0..1000u16)
        .map(|i| 20_000 + (std::process::id() as u16 % 9_000 + 500 + i) % 10_000)
        .find(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("a free port below the ephemeral range");
    let conf = config_file("listener-anon", &format!("listener {port} 127.0.0.1\n"));
    let _broker = Broker::start_configured(&["-c", &conf]);
    let (mut c, ack) = Raw::connect_with(
        port,
        connect_packet(ProtocolVersion::V311, "anon", true, 60),
    );
    assert_eq!(ack.reason, ReasonCode::NotAuthorized);
    assert!(c.expect_closed().is_empty());
}

#[test]
fn max_connections_and_clientid_prefixes() {
    let conf = config_file("limits", "max_connections 2\nclientid_prefixes ok-\n");
    let broker = Broker::start(&["--threads", "2", "-c", &conf]);
    let first = Raw::connect(broker.port, "ok-1");
    let mut second = Raw::connect(broker.port, "ok-2");
    // A third connection is closed at once, before any CONNACK (as Mosquitto).
    let mut third = Raw::open(broker.port, ProtocolVersion::V311);
    third.send(&Packet::Connect(Box::new(connect_packet(
        ProtocolVersion::V311,
        "ok-3",
        true,
        60,
    ))));
    assert!(third.expect_closed().is_empty());
    broker.wait_for_log("denied: max_connections exceeded.");
    // When one leaves, there is room again.
    drop(first);
    broker.wait_for_log("Client ok-1 closed its connection.");
    second.send(&Packet::PingReq);
    assert_eq!(second.recv(), Packet::PingResp);
    // clientid_prefixes: another id is not authorised (CONNACK 5).
    let (mut bad, ack) = Raw::connect_with(
        broker.port,
        connect_packet(ProtocolVersion::V311, "bad-1", true, 60),
    );
    assert_eq!(v3_return_code(ack.reason), 5);
    assert!(bad.expect_closed().is_empty());
    broker.wait_for_log("Client bad-1 disconnected, not authorised.");
    let _again = Raw::connect(broker.port, "ok-4");
}
