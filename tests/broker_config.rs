//! mosquitto.conf over real sockets: several listeners with their own limits, security and
//! mount points, SIGHUP reloads, logging destinations and types, pid file, user, and errors
//! that name the file and line.

mod common;

use common::*;
use midge::codec::*;
use std::process::Command;
use std::time::{Duration, Instant};

const V311: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;

fn with_login(version: ProtocolVersion, id: &str, user: &str, password: &str) -> Connect {
    let mut c = connect_packet(version, id, true, 60);
    c.username = Some(s(user));
    c.password = Some(bytes::Bytes::copy_from_slice(password.as_bytes()));
    c
}

/// Waits until `path` holds a line containing `text`.
fn wait_for_file_line(path: &str, text: &str) -> String {
    let until = Instant::now() + DEADLINE;
    loop {
        let content = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(line) = content.lines().find(|l| l.contains(text)) {
            return line.to_string();
        }
        assert!(
            Instant::now() < until,
            "no line with {text:?} in {path}:\n{content}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn listeners_have_their_own_security_and_connection_limits() {
    let pw = password_file("listeners", &[("alice", "a")]);
    let conf = config_file(
        "listeners",
        &format!(
            "per_listener_settings true\n\
             listener 0 127.0.0.1\nallow_anonymous true\nmax_connections 1\n\
             listener 0 127.0.0.1\npassword_file {pw}\n"
        ),
    );
    let broker = Broker::start_configured(&["-c", &conf]);
    let ports = broker.ports(2);

    // The open listener: anonymous clients, one at a time.
    let (_first, ack) = Raw::connect_with(ports[0], connect_packet(V311, "a1", true, 60));
    assert_eq!(ack.reason, ReasonCode::Success);
    let mut second = Raw::open(ports[0], V311);
    second.send(&Packet::Connect(Box::new(connect_packet(
        V311, "a2", true, 60,
    ))));
    assert!(second.expect_closed().is_empty(), "closed without CONNACK");
    broker.wait_for_log("denied: max_connections exceeded.");

    // The secured listener: its own password file, no anonymous clients, and the other
    // listener's limit does not apply.
    let (_, ack) = Raw::connect_with(ports[1], connect_packet(V311, "anon", true, 60));
    assert_eq!(ack.reason, ReasonCode::NotAuthorized);
    let (_, ack) = Raw::connect_with(ports[1], with_login(V5, "a3", "alice", "wrong"));
    assert_eq!(
        ack.reason,
        ReasonCode::NotAuthorized,
        "0x87, as Mosquitto 2"
    );
    let (_alice, ack) = Raw::connect_with(ports[1], with_login(V5, "a3", "alice", "a"));
    assert_eq!(ack.reason, ReasonCode::Success);
    let (_alice2, ack) = Raw::connect_with(ports[1], with_login(V5, "a4", "alice", "a"));
    assert_eq!(ack.reason, ReasonCode::Success);
}

#[test]
fn mount_point_gives_a_listener_its_own_topic_space() {
    let conf = config_file(
        "mount",
        "allow_anonymous true\n\
         listener 0 127.0.0.1\nmount_point tenant/\n\
         listener 0 127.0.0.1\n",
    );
    let broker = Broker::start_configured(&["-c", &conf, "--threads", "1"]);
    let ports = broker.ports(2);
    let mut outside = Raw::connect(ports[1], "outside");
    outside.subscribe(&[("#", QoS::AtMostOnce)]);
    let mut inside = Raw::connect(ports[0], "inside");
    inside.subscribe(&[("#", QoS::AtMostOnce)]);

    // A publish inside lands under the mount point; the inside client sees it without.
    inside.send(&publish("x", b"1", QoS::AtMostOnce, 0, false));
    assert_eq!(outside.recv_publish().topic.as_str(), "tenant/x");
    assert_eq!(inside.recv_publish().topic.as_str(), "x");
    // From outside: only topics under the mount point get in, with it taken off.
    outside.send(&publish("other/z", b"2", QoS::AtMostOnce, 0, false));
    outside.send(&publish("tenant/y", b"3", QoS::AtMostOnce, 0, false));
    assert_eq!(outside.recv_publish().topic.as_str(), "other/z");
    assert_eq!(outside.recv_publish().topic.as_str(), "tenant/y");
    let p = inside.recv_publish();
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("y", &b"3"[..]));

    // Retained messages and shared subscriptions are mounted too.
    outside.send(&publish("tenant/r", b"kept", QoS::AtMostOnce, 0, true));
    assert_eq!(outside.recv_publish().topic.as_str(), "tenant/r");
    assert_eq!(inside.recv_publish().topic.as_str(), "r");
    let mut late = Raw::connect(ports[0], "late");
    late.subscribe(&[("r", QoS::AtMostOnce)]);
    let p = late.recv_publish();
    assert_eq!((p.topic.as_str(), p.retain), ("r", true));
    let mut shared = Raw::open(ports[0], V5);
    shared.send(&Packet::Connect(Box::new(connect_packet(
        V5, "shared", true, 60,
    ))));
    assert!(matches!(shared.recv(), Packet::ConnAck(_)));
    shared.subscribe(&[("$share/g/s/#", QoS::AtMostOnce)]);
    outside.send(&publish("tenant/s/1", b"4", QoS::AtMostOnce, 0, false));
    assert_eq!(shared.recv_publish().topic.as_str(), "s/1");

    // A will from inside goes under the mount point.
    let mut c = connect_packet(V311, "mortal", true, 60);
    c.will = Some(Will {
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
        topic: s("gone"),
        payload: bytes::Bytes::from_static(b"bye"),
    });
    let (mortal, _) = Raw::connect_with(ports[0], c);
    mortal.stream.shutdown(std::net::Shutdown::Both).unwrap();
    loop {
        let p = outside.recv_publish();
        if p.topic.as_str() == "tenant/gone" {
            break;
        }
    }
}

#[test]
fn use_username_as_clientid() {
    let conf = config_file(
        "username-id",
        "listener 0 127.0.0.1\nuse_username_as_clientid true\nallow_anonymous true\n",
    );
    let broker = Broker::start_configured(&["-c", &conf]);
    let port = broker.ports(1)[0];
    let (mut first, ack) = Raw::connect_with(port, with_login(V311, "abc", "u1", "p"));
    assert_eq!(ack.reason, ReasonCode::Success);
    broker.wait_for_log("as u1 (p4");
    // Another client id with the same user name is the same client: it takes over.
    let (_second, ack) = Raw::connect_with(port, with_login(V311, "xyz", "u1", "p"));
    assert_eq!(ack.reason, ReasonCode::Success);
    first.expect_closed();
    // Without a user name there is no client id to use: not authorised.
    let (_, ack) = Raw::connect_with(port, connect_packet(V311, "anon", true, 60));
    assert_eq!(ack.reason, ReasonCode::NotAuthorized);
}

#[test]
fn sighup_reloads_security_and_logging_and_keeps_the_old_settings_on_error() {
    let pw = password_file("reload", &[("alice", "a")]);
    let acl = config_file("reload-acl", "user alice\ntopic readwrite alice/#\n");
    let log = std::env::temp_dir().join(format!("midge-test-{}-reload.log", std::process::id()));
    let log = log.to_string_lossy().into_owned();
    let _ = std::fs::remove_file(&log);
    // `user root`: the test's files are written as root with whatever umask the machine
    // has; a broker that dropped to `mosquitto` might not be allowed to read them again.
    // acl_strict_subscribe: a SUBACK shows which ACL is in force.
    let base = format!(
        "user root\nlistener 0 127.0.0.1\npassword_file {pw}\nacl_file {acl}\nacl_strict_subscribe true\n"
    );
    let conf = config_file("reload", &base);
    let broker = Broker::start_configured(&["-c", &conf, "--threads", "2"]);
    let port = broker.ports(1)[0];
    let (mut alice, ack) = Raw::connect_with(port, with_login(V5, "alice", "alice", "a"));
    assert_eq!(ack.reason, ReasonCode::Success);
    let (_, ack) = Raw::connect_with(port, connect_packet(V311, "anon", true, 60));
    assert_eq!(ack.reason, ReasonCode::NotAuthorized);

    // New password file (alice gone, bob added), anonymous access, a log file: reloaded
    // without a restart; alice is disconnected, the listener stays.
    password_file("reload", &[("bob", "b")]);
    config_file(
        "reload-acl",
        "user alice\ntopic readwrite alice/#\nuser bob\ntopic readwrite bob/#\n",
    );
    config_file(
        "reload",
        &format!("{base}allow_anonymous true\nlog_dest stderr\nlog_dest file {log}\n"),
    );
    broker.signal(libc::SIGHUP);
    let packets = alice.expect_closed();
    assert!(
        matches!(packets.as_slice(), [Packet::Disconnect(d)] if d.reason == ReasonCode::NotAuthorized),
        "{packets:?}"
    );
    broker.wait_for_log("is no longer authorised after a reload");
    let (mut bob, ack) = Raw::connect_with(port, with_login(V311, "bob", "bob", "b"));
    assert_eq!(ack.reason, ReasonCode::Success);
    let (_anon, ack) = Raw::connect_with(port, connect_packet(V311, "anon", true, 60));
    assert_eq!(ack.reason, ReasonCode::Success);
    wait_for_file_line(&log, "New client connected from 127.0.0.1");
    // The new ACL applies: bob reads his topics and nothing else.
    let ack = bob.subscribe(&[("bob/#", QoS::AtMostOnce), ("alice/#", QoS::AtMostOnce)]);
    assert_eq!(
        ack.reasons,
        vec![ReasonCode::GRANTED_QOS_0, ReasonCode::UnspecifiedError]
    );

    // A broken file: the reload is refused, said why, and the settings stay.
    config_file(
        "reload",
        &format!("{base}allow_anonymous true\nlistner 1\n"),
    );
    broker.signal(libc::SIGHUP);
    let line = broker.wait_for_log("failed, keeping the current settings");
    assert!(line.contains("did you mean listener?"), "{line}");
    // An unreadable password file likewise.
    config_file(
        "reload",
        &format!("listener 0 127.0.0.1\npassword_file {pw}.missing\n"),
    );
    broker.signal(libc::SIGHUP);
    broker.wait_for_log_count("failed, keeping the current settings", 2);
    let (_anon2, ack) = Raw::connect_with(port, connect_packet(V311, "anon2", true, 60));
    assert_eq!(
        ack.reason,
        ReasonCode::Success,
        "the last good settings stay"
    );
    let (_bob2, ack) = Raw::connect_with(port, with_login(V311, "bob2", "bob", "b"));
    assert_eq!(ack.reason, ReasonCode::Success);
    bob.send(&Packet::PingReq);
    assert!(
        matches!(bob.recv(), Packet::PingResp),
        "connections survive reloads"
    );
    let _ = std::fs::remove_file(&log);
}

#[test]
fn log_types_destinations_and_timestamp_format() {
    let log = std::env::temp_dir().join(format!("midge-test-{}-types.log", std::process::id()));
    let log = log.to_string_lossy().into_owned();
    let _ = std::fs::remove_file(&log);
    let conf = config_file(
        "log-types",
        &format!(
            "log_dest stderr\nlog_dest file {log}\nlog_type information\nlog_type subscribe\n\
             log_type unsubscribe\nlog_timestamp_format [%Y]\n\
             listener 0 127.0.0.1\nallow_anonymous true\nqueue_qos0_messages true\n"
        ),
    );
    let broker = Broker::start_quiet(&["-c", &conf]);
    let port = broker.ports(1)[0];
    let mut c = Raw::connect(port, "c1");
    c.subscribe(&[("a/b", QoS::AtLeastOnce)]);
    let line = wait_for_file_line(&log, "c1 1 a/b");
    assert!(
        line.starts_with("[20") && line.contains("]: c1 1 a/b"),
        "{line}"
    );
    let opening = broker.wait_for_log("listen socket on port");
    assert!(opening.starts_with("[20"), "{opening}");
    // Warnings are not among the types asked for: the not-yet-supported option is quiet.
    let content = std::fs::read_to_string(&log).unwrap();
    assert!(!content.contains("queue_qos0_messages"), "{content}");
    // Notice (connections) and debug (packets) lines are not among the types asked for.
    assert!(!content.contains("New client connected"), "{content}");
    assert!(!content.contains("Received SUBSCRIBE"), "{content}");
    let _ = std::fs::remove_file(&log);
}

#[test]
fn pid_file_and_user() {
    let pid_file = std::env::temp_dir().join(format!("midge-test-{}.pid", std::process::id()));
    let pid_path = pid_file.to_string_lossy().into_owned();
    let conf = config_file(
        "pid",
        // `user root`: stay root, so that the pid file written as root can be removed.
        &format!("pid_file {pid_path}\nuser root\nlistener 0 127.0.0.1\nallow_anonymous true\n"),
    );
    let broker = Broker::start_configured(&["-c", &conf]);
    broker.ports(1);
    let written = std::fs::read_to_string(&pid_file).unwrap();
    assert_eq!(written.trim(), broker.pid().to_string());
    assert!(broker.terminate().success());
    assert!(!pid_file.exists(), "pid file removed at exit");

    // `user`: started as root, midge runs as that user once its listeners are open.
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let conf = config_file(
        "user",
        "user nobody\nlistener 0 127.0.0.1\nallow_anonymous true\n",
    );
    let broker = Broker::start_configured(&["-c", &conf]);
    let port = broker.ports(1)[0];
    if root {
        broker.wait_for_log("Running as user nobody");
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", broker.pid())).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let uid: u32 = uid_line.split_whitespace().nth(2).unwrap().parse().unwrap();
    if root {
        assert_eq!(uid, 65534, "{uid_line}");
    } else {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(uid, unsafe { libc::geteuid() }, "not root: user is ignored");
    }
    let _c = Raw::connect(port, "still-serving");

    // No `user`: as root, Mosquitto's default `mosquitto` (or `nobody` without one).
    if root {
        let conf = config_file(
            "user-default",
            "listener 0 127.0.0.1\nallow_anonymous true\n",
        );
        let broker = Broker::start_configured(&["-c", &conf]);
        broker.ports(1);
        let line = broker.wait_for_log("Running as user ");
        let expected = Command::new("id")
            .args(["-u", "mosquitto"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map_or("65534".to_string(), |o| text_of(&o.stdout));
        assert!(
            line.ends_with(&format!("(uid {expected})."))
                || (expected == "65534" && line.contains("nobody")),
            "{line}"
        );
    }
}

fn text_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_string()
}

#[test]
fn max_queued_bytes_bounds_an_offline_queue() {
    let conf = config_file("queued-bytes", "max_queued_bytes 10\n");
    let broker = Broker::start(&["-c", &conf, "--threads", "1"]);
    let port = broker.port;
    let (mut sub, _) = Raw::connect_with(port, connect_packet(V311, "sub", false, 60));
    sub.subscribe(&[("q", QoS::AtLeastOnce)]);
    sub.send(&Packet::Disconnect(Disconnect::default()));
    sub.expect_closed();
    let mut publisher = Raw::connect(port, "pub");
    for (i, payload) in [b"aaaa", b"bbbb", b"cccc"].iter().enumerate() {
        publisher.send(&publish(
            "q",
            *payload,
            QoS::AtLeastOnce,
            i as u16 + 1,
            false,
        ));
        assert!(matches!(publisher.recv(), Packet::PubAck(_)));
    }
    let (mut sub, ack) = Raw::connect_with(port, connect_packet(V311, "sub", false, 60));
    assert!(ack.session_present);
    assert_eq!(&sub.recv_publish().payload[..], b"aaaa");
    assert_eq!(&sub.recv_publish().payload[..], b"bbbb");
    sub.expect_nothing(Duration::from_millis(100));
}

#[test]
fn a_bad_configuration_names_file_line_and_the_likely_option() {
    let conf = config_file("typo", "listener 0 127.0.0.1\nlistner 1883\n");
    let out = Command::new(env!("CARGO_BIN_EXE_midge"))
        .args(["-c", &conf])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{conf}:2: unknown option \"listner\" (did you mean listener?)"
        )),
        "{stderr}"
    );
    let conf = config_file("missing-include", "include_dir /nonexistent/midge\n");
    let out = Command::new(env!("CARGO_BIN_EXE_midge"))
        .args(["-c", &conf])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(":1: include_dir: cannot read"));
    // A Mosquitto option of a later feature is a warning, and the broker runs.
    let conf = config_file(
        "later",
        "queue_qos0_messages true\nmax_inflight_bytes 100\n",
    );
    let broker = Broker::start(&["-c", &conf]);
    broker.wait_for_log("queue_qos0_messages is not supported by midge yet; ignored.");
    let _c = Raw::connect(broker.port, "fine");
    // A bridge whose remote is not there: the broker starts, says so, and serves.
    let conf = config_file(
        "bridge-later",
        "connection central\naddress 127.0.0.1:1\ntopic sensors/# out 1\n",
    );
    let broker = Broker::start(&["-c", &conf]);
    broker.wait_for_log("Bridge central could not connect to 127.0.0.1:1");
    let _c = Raw::connect(broker.port, "fine");
    // A bad one stops the start, naming the line.
    let conf = config_file(
        "bridge-bad",
        "connection central\naddress 127.0.0.1\ntopic a sideways\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_midge"))
        .args(["-c", &conf])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains(":3: topic: \"sideways\" is not out, in or both"));
}

#[test]
fn log_dest_topic_publishes_log_lines_on_sys() {
    let conf = config_file("log-topic", "log_dest stderr\nlog_dest topic\n");
    let broker = Broker::start(&["-c", &conf, "--threads", "2"]);
    let mut watcher = Raw::connect(broker.port, "watcher");
    watcher.subscribe(&[("$SYS/broker/log/#", QoS::AtLeastOnce)]);
    let mut newcomer = Raw::connect(broker.port, "newcomer");
    newcomer.subscribe(&[("some/topic", QoS::AtMostOnce)]);
    let (mut connected, mut subscribed) = (false, false);
    while !(connected && subscribed) {
        let p = watcher.recv_publish();
        let line = String::from_utf8_lossy(&p.payload).into_owned();
        assert_ne!(
            p.topic.as_str(),
            "$SYS/broker/log/D",
            "debug lines stay off the topic"
        );
        if p.topic.as_str() == "$SYS/broker/log/N" && line.contains("as newcomer") {
            assert!(
                line.contains(": New client connected from 127.0.0.1:"),
                "{line}"
            );
            connected = true;
        }
        if p.topic.as_str() == "$SYS/broker/log/M/subscribe"
            && line.ends_with("newcomer 0 some/topic")
        {
            subscribed = true;
        }
        if matches!(p.qos, QoS::AtLeastOnce) {
            watcher.send(&Packet::PubAck(PubResponse::new(p.packet_id)));
        }
    }
}

#[test]
fn persistent_client_expiration_ends_abandoned_sessions() {
    // midge takes seconds too (Mosquitto's smallest unit is the hour).
    let conf = config_file("pce", "persistent_client_expiration 1s\n");
    let broker = Broker::start(&["-c", &conf]);
    let (mut c, _) = Raw::connect_with(broker.port, connect_packet(V311, "keeper", false, 60));
    c.subscribe(&[("t", QoS::AtLeastOnce)]);
    c.send(&Packet::Disconnect(Disconnect::default()));
    c.expect_closed();
    broker.wait_for_log("Expiring client keeper due to timeout.");
    let (_c, ack) = Raw::connect_with(broker.port, connect_packet(V311, "keeper", false, 60));
    assert!(!ack.session_present);
}

#[test]
fn a_topic_too_long_for_the_mount_point_is_refused_not_unmounted() {
    let conf = config_file(
        "mount-long",
        "allow_anonymous true\nlistener 0 127.0.0.1\nmount_point tenant/\nlistener 0 127.0.0.1\n",
    );
    let broker = Broker::start_configured(&["-c", &conf]);
    let ports = broker.ports(2);
    let mut outside = Raw::connect(ports[1], "outside");
    outside.subscribe(&[("#", QoS::AtMostOnce)]);
    // A topic name of 65,530 bytes is valid alone, but not under "tenant/".
    let long = "x".repeat(65_530);
    let mut c = Raw::open(ports[0], V5);
    c.send(&Packet::Connect(Box::new(connect_packet(
        V5, "long", true, 60,
    ))));
    assert!(matches!(c.recv(), Packet::ConnAck(_)));
    c.send(&publish(&long, b"p", QoS::AtMostOnce, 0, false));
    let packets = without_reason_strings(c.expect_closed());
    assert_eq!(
        packets,
        vec![Packet::Disconnect(Disconnect::with_reason(
            ReasonCode::TopicNameInvalid
        ))]
    );
    // A will with such a topic: the CONNECT is refused.
    let mut w = connect_packet(V5, "long-will", true, 60);
    w.will = Some(Will {
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
        topic: s(&long),
        payload: bytes::Bytes::from_static(b"w"),
    });
    let (_, ack) = Raw::connect_with(ports[0], w);
    assert_eq!(ack.reason, ReasonCode::TopicNameInvalid);
    // Nothing reached the outside, and the broker still serves.
    outside.send(&publish("marker", b"m", QoS::AtMostOnce, 0, false));
    assert_eq!(outside.recv_publish().topic.as_str(), "marker");
}

#[test]
fn a_reload_revokes_subscriptions_and_client_ids_the_new_settings_refuse() {
    let both = "topic read a/#\ntopic read b/#\ntopic write #\n";
    let acl = config_file("revoke-acl", both);
    let base = format!(
        "user root\nlistener 0 127.0.0.1\nallow_anonymous true\nacl_file {acl}\nsys_interval 0\nacl_strict_subscribe true\n"
    );
    let conf = config_file("revoke", &base);
    let broker = Broker::start_configured(&["-c", &conf, "--threads", "1"]);
    let port = broker.ports(1)[0];
    let mut c = Raw::connect(port, "c");
    let ack = c.subscribe(&[("a/#", QoS::AtMostOnce), ("b/#", QoS::AtMostOnce)]);
    assert_eq!(ack.reasons, vec![ReasonCode::GRANTED_QOS_0; 2]);
    let mut keeper = Raw::connect(port, "keep-1");
    let mut publisher = Raw::connect(port, "keep-pub");

    // b/# is no longer readable: c's subscription to it is revoked...
    config_file("revoke-acl", "topic read a/#\ntopic write #\n");
    broker.signal(libc::SIGHUP);
    broker.wait_for_log("Subscription of c to b/# revoked by the reloaded ACL.");
    // ...and stays revoked when the ACL allows it again (a probe's SUBACK shows the new ACL
    // is in force before anything is published).
    config_file("revoke-acl", both);
    broker.signal(libc::SIGHUP);
    let mut probe = Raw::connect(port, "probe");
    let until = Instant::now() + DEADLINE;
    while probe.subscribe(&[("b/#", QoS::AtMostOnce)]).reasons != [ReasonCode::GRANTED_QOS_0] {
        assert!(Instant::now() < until, "the ACL was not reloaded");
        std::thread::sleep(Duration::from_millis(20));
    }
    publisher.send(&publish("b/x", b"1", QoS::AtMostOnce, 0, false));
    publisher.send(&publish("a/marker", b"2", QoS::AtMostOnce, 0, false));
    assert_eq!(probe.recv_publish().topic.as_str(), "b/x");
    assert_eq!(
        c.recv_publish().topic.as_str(),
        "a/marker",
        "b/x came through a revoked subscription"
    );

    // clientid_prefixes added by a reload: clients outside it are disconnected.
    config_file("revoke", &format!("{base}clientid_prefixes keep-\n"));
    broker.signal(libc::SIGHUP);
    c.expect_closed();
    keeper.send(&Packet::PingReq);
    assert!(matches!(keeper.recv(), Packet::PingResp));
}

/// A client that connects right after SIGHUP is judged by the reloaded settings: only the
/// shard threads take the signal, so the shard that wakes for the connection runs the
/// handler (which marks the reload pending) first, and waits for the reload (as
/// Mosquitto's one loop handles the signal before it reads on).
#[test]
fn a_client_connecting_right_after_sighup_meets_the_new_settings() {
    let base = "user root\nlistener 0 127.0.0.1\nsys_interval 0\n";
    let conf = config_file("sighup-at-once", &format!("{base}allow_anonymous true\n"));
    let broker = Broker::start_configured(&["-c", &conf]);
    let port = broker.ports(1)[0];
    let (_, ack) = Raw::connect_with(port, connect_packet(V311, "before", true, 60));
    assert_eq!(ack.reason, ReasonCode::Success);
    config_file("sighup-at-once", &format!("{base}allow_anonymous false\n"));
    broker.signal(libc::SIGHUP);
    let (_, ack) = Raw::connect_with(port, connect_packet(V311, "after", true, 60));
    assert_eq!(ack.reason, ReasonCode::NotAuthorized);
}
