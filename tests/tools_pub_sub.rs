//! `midge-pub` and `midge-sub` as processes: mosquitto_pub/mosquitto_sub options, output
//! formats and exit codes, against midge and against Debian's mosquitto, and round trips
//! with Debian's mosquitto_pub/mosquitto_sub.

mod common;

use common::*;
use std::io::Write;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn tool(name: &str) -> Command {
    match name {
        "midge-pub" => Command::new(env!("CARGO_BIN_EXE_midge-pub")),
        "midge-sub" => Command::new(env!("CARGO_BIN_EXE_midge-sub")),
        other => Command::new(other),
    }
}

/// Runs a tool to its end (bounded by its own -W or -C, and by a test deadline).
fn run(name: &str, port: u16, args: &[&str]) -> Output {
    run_within(name, port, args, DEADLINE)
}

fn run_within(name: &str, port: u16, args: &[&str], deadline: Duration) -> Output {
    let mut child = tool(name)
        .args(["-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_within(&mut child, deadline);
    child.wait_with_output().unwrap()
}

fn wait(child: &mut Child) {
    wait_within(child, DEADLINE)
}

fn wait_within(child: &mut Child, deadline: Duration) {
    let until = Instant::now() + deadline;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > until {
            let _ = child.kill();
            panic!("a tool did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Starts a subscriber and waits until the broker has acknowledged its subscription
/// (midge's log says so; for mosquitto, a retained marker published first comes back).
/// The subscriber gets a client id of its own, so that the SUBACK waited for is its own:
/// a count of SUBACKs taken just before could miss one the log does not show yet.
fn subscriber(name: &str, broker: &Broker, args: &[&str]) -> Child {
    static SUBSCRIBERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SUBSCRIBERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id = format!("subscriber-{n}-");
    let child = tool(name)
        .args(["-p", &broker.port.to_string(), "-i", &id])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    broker.wait_for_log(&format!("Sending SUBACK to {id}"));
    child
}

fn finish(mut child: Child) -> Output {
    wait(&mut child);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn publish_and_subscribe_with_midge() {
    let broker = Broker::start(&[]);
    let port = broker.port;
    let sub = subscriber(
        "midge-sub",
        &broker,
        &["-t", "a/#", "-v", "-q", "1", "-C", "4"],
    );
    assert!(
        run("midge-pub", port, &["-t", "a/b", "-m", "hello", "-q", "1"])
            .status
            .success()
    );
    assert!(run("midge-pub", port, &["-t", "a/c", "-n", "-q", "2"])
        .status
        .success());
    let file = std::env::temp_dir().join(format!("midge-test-{}-payload", std::process::id()));
    std::fs::write(&file, b"from a file").unwrap();
    let path = file.to_string_lossy();
    assert!(
        run("midge-pub", port, &["-t", "a/d", "-f", &path, "-V", "5"])
            .status
            .success()
    );
    let mut lines = tool("midge-pub")
        .args(["-p", &port.to_string(), "-t", "a/e", "-l", "-V", "mqttv31"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    lines
        .stdin
        .take()
        .unwrap()
        .write_all(b"one line\n")
        .unwrap();
    wait(&mut lines);
    let out = finish(sub);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "a/b hello\na/c (null)\na/d from a file\na/e one line\n"
    );
    let _ = std::fs::remove_file(file);
}

#[test]
fn formats_retained_handling_and_filters() {
    let broker = Broker::start(&["--threads", "1"]);
    let port = broker.port;
    let ok = |args: &[&str]| assert!(run("midge-pub", port, args).status.success());
    ok(&["-t", "r/1", "-m", "hi", "-r", "-q", "1"]);
    ok(&["-t", "r/2", "-m", "{\"n\":1}", "-r", "-q", "1"]);
    // -F: topic, payload, length, QoS, retain, hex, escapes, and JSON.
    let out = run(
        "midge-sub",
        port,
        &["-t", "r/1", "-C", "1", "-F", "%t|%p|%l|%q|%r|%x|%X|%%\\t@@"],
    );
    assert_eq!(text(&out.stdout), "r/1|hi|2|0|1|6869|6869|%\t@\n");
    let out = run(
        "midge-sub",
        port,
        &["-t", "r/2", "-C", "1", "-F", "%J", "-N"],
    );
    let json = text(&out.stdout);
    assert!(
        json.starts_with("{\"tst\":\"")
            && json.ends_with(
                ",\"topic\":\"r/2\",\"qos\":0,\"retain\":1,\"payloadlen\":7,\"payload\":{\"n\":1}}"
            ),
        "{json}"
    );
    // -T filters a topic out; -R skips retained messages (then -W runs out: 27).
    let out = run("midge-sub", port, &["-t", "r/#", "-T", "r/1", "-C", "1"]);
    assert_eq!(text(&out.stdout), "{\"n\":1}\n");
    let out = run("midge-sub", port, &["-t", "r/#", "-R", "-W", "1"]);
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(27), String::new())
    );
    assert_eq!(text(&out.stderr), "Timed out\n");
    // --retained-only stops at the first live message; --remove-retained clears them.
    let out = run(
        "midge-sub",
        port,
        &["-t", "r/#", "--retained-only", "-W", "1", "-v"],
    );
    let mut lines: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    lines.sort();
    assert_eq!(
        lines,
        ["r/1 hi", "r/2 {\"n\":1}"],
        "retained messages in any order"
    );
    let out = run(
        "midge-sub",
        port,
        &["-t", "r/#", "--remove-retained", "-C", "2"],
    );
    assert!(out.status.success());
    let out = run("midge-sub", port, &["-t", "r/#", "-W", "1"]);
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(27), String::new())
    );
    // -c with -i: a persistent session collects messages while the tool is away; -U drops
    // a subscription of it.
    let keep = ["-c", "-i", "keeper", "-q", "1"];
    assert!(run(
        "midge-sub",
        port,
        &[&keep[..], &["-t", "p/1", "-t", "p/2", "-E"]].concat()
    )
    .status
    .success());
    assert!(run(
        "midge-sub",
        port,
        &[&keep[..], &["-U", "p/2", "-E"]].concat()
    )
    .status
    .success());
    ok(&["-t", "p/2", "-m", "dropped", "-q", "1"]);
    ok(&["-t", "p/1", "-m", "kept", "-q", "1"]);
    let out = run(
        "midge-sub",
        port,
        &[&keep[..], &["-t", "p/1", "-C", "1", "-v"]].concat(),
    );
    assert_eq!(text(&out.stdout), "p/1 kept\n");
    let out = run("midge-sub", port, &["-c", "-t", "p/1", "-E"]);
    assert_eq!(out.status.code(), Some(1), "-c needs a client id");
    // --random-filter 100 prints everything; an out-of-range share is refused.
    ok(&["-t", "p/1", "-m", "sampled", "-r"]);
    let out = run(
        "midge-sub",
        port,
        &["-t", "p/1", "-C", "1", "--random-filter", "100"],
    );
    assert_eq!(text(&out.stdout), "sampled\n");
    let out = run("midge-sub", port, &["-t", "p/1", "--random-filter", "0"]);
    assert_eq!(out.status.code(), Some(1));
    // -E: exit once subscribed; an invalid format is refused before connecting.
    assert!(run("midge-sub", port, &["-t", "x", "-E"]).status.success());
    let out = run("midge-sub", port, &["-t", "x", "-F", "%c"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with("Error: Invalid format specifier 'c'."));
}

#[test]
fn exit_codes_match_mosquittos() {
    let pw = password_file("tools", &[("alice", "secret")]);
    let conf = config_file(
        "tools",
        &format!("listener 0 127.0.0.1\npassword_file {pw}\n"),
    );
    let broker = Broker::start_configured(&["-c", &conf]);
    let port = broker.ports(1)[0];
    for name in ["midge-pub", "mosquitto_pub", "midge-sub", "mosquitto_sub"] {
        let args: &[&str] = if name.ends_with("pub") {
            &["-t", "t", "-m", "x"]
        } else {
            &["-t", "t", "-C", "1"]
        };
        // Refused (not authorised): the CONNACK code.
        let out = run(name, port, args);
        assert_eq!(out.status.code(), Some(5), "{name}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains("Connection Refused: not authorised."));
        // A wrong password: Mosquitto 2 refuses it as not authorised too (5).
        let mut wrong = vec!["-u", "alice", "-P", "nope"];
        wrong.extend_from_slice(args);
        assert_eq!(run(name, port, &wrong).status.code(), Some(5), "{name}");
        // Nothing listening: 1. Bad QoS: 1, before connecting.
        assert_eq!(
            run(name, quiet_port(), args).status.code(),
            Some(1),
            "{name}"
        );
        let mut bad = vec!["-q", "3"];
        bad.extend_from_slice(args);
        let out = run(name, port, &bad);
        assert_eq!(out.status.code(), Some(1), "{name}");
        assert!(text(&out.stderr).contains("Invalid QoS given: 3"), "{name}");
    }
    // -L with credentials in the URL.
    let url = format!("mqtt://alice:secret@127.0.0.1:{port}/url/topic");
    let out = run("midge-pub", port, &["-L", &url, "-m", "via url", "-q", "1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        run("midge-pub", port, &["-t", "a/#", "-m", "x"])
            .status
            .code(),
        Some(1)
    );
}

#[test]
fn tools_work_with_debian_mosquitto_and_its_clients() {
    // midge-pub -> mosquitto -> midge-sub and mosquitto_sub, with 5.0 properties.
    let mosquitto = Mosquitto::start("tools-mosquitto", "allow_anonymous true\n");
    let port = mosquitto.port;
    let out = run(
        "midge-pub",
        port,
        &[
            "-t",
            "m/1",
            "-m",
            "kept",
            "-r",
            "-q",
            "2",
            "-V",
            "5",
            "-D",
            "publish",
            "user-property",
            "k",
            "v",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(
        "midge-sub",
        port,
        &["-t", "m/#", "-C", "1", "-V", "5", "-F", "%t %p %P %r"],
    );
    assert_eq!(text(&out.stdout), "m/1 kept k:v 1\n");
    let out = run("mosquitto_sub", port, &["-t", "m/#", "-C", "1", "-v"]);
    assert_eq!(text(&out.stdout), "m/1 kept\n");
    let out = run("midge-sub", port, &["-t", "none", "-W", "1"]);
    assert_eq!(out.status.code(), Some(27));
    // The same -F format prints the same bytes from both tools.
    let format = "[%10t][%-10t][%08l][%.2p][%q][%r][%x][%X][%m]\\t%%";
    let ours = run("midge-sub", port, &["-t", "m/1", "-C", "1", "-F", format]);
    let theirs = run(
        "mosquitto_sub",
        port,
        &["-t", "m/1", "-C", "1", "-F", format],
    );
    assert_eq!(text(&ours.stdout), text(&theirs.stdout));

    // mosquitto_pub -> midge -> midge-sub, and midge-pub -> midge -> mosquitto_sub.
    let broker = Broker::start(&[]);
    let sub = subscriber(
        "midge-sub",
        &broker,
        &["-t", "i/#", "-C", "2", "-v", "-V", "5"],
    );
    let out = run(
        "mosquitto_pub",
        broker.port,
        &["-t", "i/1", "-m", "from mosquitto_pub", "-q", "1"],
    );
    assert!(out.status.success());
    let out = run(
        "midge-pub",
        broker.port,
        &["-t", "i/2", "-m", "from midge-pub", "--repeat", "1"],
    );
    assert!(out.status.success());
    assert_eq!(
        text(&finish(sub).stdout),
        "i/1 from mosquitto_pub\ni/2 from midge-pub\n"
    );
    let sub = subscriber("mosquitto_sub", &broker, &["-t", "j", "-C", "3"]);
    let out = run(
        "midge-pub",
        broker.port,
        &[
            "-t",
            "j",
            "-m",
            "again",
            "--repeat",
            "3",
            "--repeat-delay",
            "0.01",
        ],
    );
    assert!(out.status.success());
    assert_eq!(text(&finish(sub).stdout), "again\nagain\nagain\n");
}

#[test]
fn a_killed_subscriber_leaves_its_will() {
    let broker = Broker::start(&[]);
    let watcher = subscriber("midge-sub", &broker, &["-t", "wills/#", "-C", "1", "-v"]);
    let mut mortal = subscriber(
        "midge-sub",
        &broker,
        &[
            "-t",
            "x",
            "--will-topic",
            "wills/sub",
            "--will-payload",
            "gone",
            "--will-qos",
            "1",
        ],
    );
    mortal.kill().unwrap();
    let _ = mortal.wait();
    let out = finish(watcher);
    assert_eq!(text(&out.stdout), "wills/sub gone\n");
}

#[test]
fn a_broker_that_stops_answering_pings_ends_the_subscriber() {
    use midge::codec::{ConnAck, Decoder, Packet, Properties, ProtocolVersion, ReasonCode, SubAck};
    // A fake broker: CONNACK and SUBACK, then silence (no PINGRESP).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let fake = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut server = Decoder::server(1 << 20);
        let mut buf = bytes::BytesMut::new();
        let mut chunk = [0u8; 1024];
        let mut answered = 0;
        let mut pings = 0;
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        while let Ok(n) = read_retrying(&mut stream, &mut chunk) {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            while let Ok(Some(packet)) = server.decode_from(&mut buf) {
                let reply = match packet {
                    Packet::Connect(_) => Some(Packet::ConnAck(ConnAck {
                        session_present: false,
                        reason: ReasonCode::Success,
                        properties: Properties::default(),
                    })),
                    Packet::Subscribe(s) => Some(Packet::SubAck(SubAck {
                        packet_id: s.packet_id,
                        properties: Properties::default(),
                        reasons: vec![ReasonCode::GRANTED_QOS_0],
                    })),
                    Packet::PingReq => {
                        pings += 1;
                        None
                    }
                    _ => None,
                };
                server.version = Some(ProtocolVersion::V311);
                if let Some(reply) = reply {
                    answered += 1;
                    stream
                        .write_all(&reply.to_bytes(ProtocolVersion::V311).unwrap())
                        .unwrap();
                }
            }
        }
        (answered, pings)
    });
    let started = Instant::now();
    // PINGREQ after 5 s of quiet, given up 5 s later.
    let out = run_within(
        "midge-sub",
        port,
        &["-t", "t", "-k", "5"],
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("PINGRESP"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "gave up before the keep alive ran out"
    );
    let (answered, pings) = fake.join().unwrap();
    assert_eq!((answered, pings), (2, 1));
}

#[test]
fn stdin_lines_at_qos_1_and_2_are_pipelined_and_all_arrive_in_order() {
    let broker = Broker::start(&["--threads", "1"]);
    let port = broker.port;
    let sub = subscriber(
        "midge-sub",
        &broker,
        &["-t", "bulk", "-q", "2", "-C", "2000"],
    );
    let mut expected = String::new();
    for (qos, range) in [("1", 0..1000), ("2", 1000..2000)] {
        let lines: String = range.map(|i| format!("line {i}\n")).collect();
        expected.push_str(&lines);
        let mut publisher = tool("midge-pub")
            .args([
                "-p",
                &port.to_string(),
                "-t",
                "bulk",
                "-l",
                "-q",
                qos,
                "-M",
                "20",
            ])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        publisher
            .stdin
            .take()
            .unwrap()
            .write_all(lines.as_bytes())
            .unwrap();
        let out = finish(publisher);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let out = finish(sub);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), expected);
}
