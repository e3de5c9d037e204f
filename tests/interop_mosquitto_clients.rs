//! Interop with Debian's `mosquitto_pub` and `mosquitto_sub` (package mosquitto-clients,
//! installed by scripts/test.sh): QoS 0, 1 and 2, retained messages and wills.

mod common;

use common::*;
use std::process::{Child, Command, Output, Stdio};
use std::time::Instant;

fn tool(name: &str) -> Command {
    assert!(
        Command::new("which")
            .arg(name)
            .output()
            .is_ok_and(|o| o.status.success()),
        "{name} is missing: scripts/test.sh installs Debian's mosquitto-clients"
    );
    Command::new(name)
}

fn sub(port: u16, args: &[&str]) -> Child {
    tool("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn publish(port: u16, args: &[&str]) {
    let out = tool("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mosquitto_pub {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits for a process to exit by itself (within the deadline) and returns its output.
fn finish(mut child: Child) -> Output {
    let until = Instant::now() + DEADLINE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > until {
            let _ = child.kill();
            panic!(
                "process did not finish: {:?}",
                child.wait_with_output().unwrap()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// SUBACKs the broker has logged so far.
fn subacks(broker: &Broker) -> usize {
    broker
        .log_lines()
        .iter()
        .filter(|l| l.contains("Sending SUBACK"))
        .count()
}

/// Waits until the broker has sent `count` SUBACKs in all. Counted from the start (each
/// test's broker is new), never from what the log showed a moment ago: the log may not
/// yet show a SUBACK the broker has sent, and a count taken then would be one short.
fn wait_subacks(broker: &Broker, count: usize) {
    let until = Instant::now() + DEADLINE;
    while subacks(broker) < count {
        assert!(Instant::now() < until, "no SUBACK");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn publish_and_subscribe_at_every_qos() {
    Broker::each_threads(&[], |broker| {
        for (round, qos) in ["0", "1", "2"].into_iter().enumerate() {
            let child = sub(
                broker.port,
                &["-t", "interop/#", "-q", qos, "-C", "2", "-v"],
            );
            wait_subacks(broker, round + 1);
            publish(
                broker.port,
                &["-t", &format!("interop/q{qos}"), "-m", "hello", "-q", qos],
            );
            publish(broker.port, &["-t", "interop/x", "-m", "world", "-q", qos]);
            let out = finish(child);
            assert!(out.status.success());
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                format!("interop/q{qos} hello\ninterop/x world\n")
            );
        }
    });
}

#[test]
fn retained_messages_and_wills() {
    Broker::each_threads(&[], |broker| {
        publish(
            broker.port,
            &["-t", "interop/retained", "-m", "kept", "-r", "-q", "1"],
        );
        let out = finish(sub(
            broker.port,
            &["-t", "interop/retained", "-C", "1", "-F", "%r %t %p"],
        ));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "1 interop/retained kept\n"
        );

        let watcher = sub(broker.port, &["-t", "interop/will", "-C", "1", "-q", "1"]);
        let mut doomed = sub(
            broker.port,
            &[
                "-t",
                "nothing",
                "--will-topic",
                "interop/will",
                "--will-payload",
                "bye",
                "--will-qos",
                "1",
            ],
        );
        // The retained message's subscriber's, and these two.
        wait_subacks(broker, 3);
        // Killed: the socket closes without DISCONNECT, so the will goes out.
        doomed.kill().unwrap();
        doomed.wait().unwrap();
        let out = finish(watcher);
        assert_eq!(String::from_utf8_lossy(&out.stdout), "bye\n");
    });
}

#[test]
fn mqtt5_properties_pass_through_with_dash_v_5() {
    Broker::each_threads(&[], |broker| {
        let child = sub(
            broker.port,
            &["-V", "5", "-t", "v5/#", "-C", "1", "-F", "%t %p %P"],
        );
        wait_subacks(broker, 1);
        publish(
            broker.port,
            &[
                "-V",
                "5",
                "-t",
                "v5/x",
                "-m",
                "hi",
                "-D",
                "publish",
                "user-property",
                "color",
                "blue",
                "-q",
                "1",
            ],
        );
        let out = finish(child);
        assert!(out.status.success());
        // The user property arrives as sent (%P prints user properties as key:value).
        assert_eq!(String::from_utf8_lossy(&out.stdout), "v5/x hi color:blue\n");
    });
}

/// A subscription that matches more retained messages than a client's write buffer holds
/// gets every one of them, at the pace it reads (none dropped), as from Mosquitto.
#[test]
fn a_large_retained_set_arrives_whole() {
    const COUNT: usize = 20_000;
    let broker = Broker::start(&["--threads", "1"]);
    let mut publisher = Raw::connect(broker.port, "retainer");
    // 20,000 messages of 512 bytes: about 10 MiB, more than the 4 MiB a client may have
    // waiting.
    let payload = vec![b'r'; 512];
    let mut burst = Vec::new();
    for i in 0..COUNT {
        let packet = common::publish(
            &format!("ret/{i}"),
            &payload,
            midge::codec::QoS::AtMostOnce,
            0,
            true,
        );
        burst.extend_from_slice(
            &packet
                .to_bytes(midge::codec::ProtocolVersion::V311)
                .unwrap(),
        );
    }
    publisher.send_bytes(&burst);
    // Packets are handled in order: the PINGRESP comes after every PUBLISH is stored.
    publisher.send(&midge::codec::Packet::PingReq);
    assert_eq!(publisher.recv(), midge::codec::Packet::PingResp);

    // -W: mosquitto_sub gives up (exit 27) if the set does not arrive in time.
    let child = sub(
        broker.port,
        &[
            "-t",
            "ret/#",
            "-C",
            &COUNT.to_string(),
            "-F",
            "%t",
            "-W",
            "60",
        ],
    );
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    let lines = String::from_utf8_lossy(&out.stdout).lines().count();
    assert!(out.status.success(), "{:?} after {lines} lines", out.status);
    assert_eq!(lines, COUNT);
    eprintln!("{COUNT} retained messages in {:?}", started.elapsed());
}
