//! Bridges when things go wrong (issue 15): the remote restarted in the middle of a QoS 1
//! stream, failover between addresses and back, lazy and once start types, remotes that
//! never answer, send garbage or refuse, and messages queued for the remote surviving a
//! restart of the local broker.

mod common;

use common::bridge::*;
use common::*;
use midge::codec::*;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Waits until `done` holds, failing after `limit`.
fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < until, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_qos1_stream_survives_a_restart_of_the_remote_complete_and_in_order() {
    let dir = persist::store("bridge-restart");
    let remote_conf = format!(
        "user root\nallow_anonymous true\npersistence true\npersistence_location {}/\n",
        dir.display()
    );
    let remote = Mosquitto::start("bridge-restart", &remote_conf);
    let port = remote.port;
    let local = midge_bridged(
        "bridge-restart-local",
        port,
        "topic s/# out 1\ncleansession false\nnotifications false",
    );
    local.wait_for_log("Received CONNACK on connection");
    let (mut sub, _) = persistent_client(port, "stream-sub");
    sub.subscribe(&[("s/#", QoS::AtLeastOnce)]);

    const COUNT: u32 = 300;
    let mut publisher = Raw::connect(local.port, "stream-pub");
    let sending = std::thread::spawn(move || {
        for i in 0..COUNT {
            let id = (i % 60_000 + 1) as u16;
            publish_qos(
                &mut publisher,
                "s/n",
                &i.to_be_bytes(),
                QoS::AtLeastOnce,
                id,
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let mut seen: Vec<u32> = Vec::new();
    let take = |sub: &mut Raw, seen: &mut Vec<u32>, until: u32| {
        while seen.last().is_none_or(|&n| n < until) {
            let Some(packet) = sub.poll_packet(DEADLINE) else {
                return false;
            };
            if let Packet::Publish(p) = packet {
                sub.send(&Packet::PubAck(PubResponse::new(p.packet_id)));
                let n = u32::from_be_bytes(p.payload[..4].try_into().unwrap());
                if !seen.contains(&n) {
                    seen.push(n);
                }
            }
        }
        true
    };
    assert!(take(&mut sub, &mut seen, 80));
    // Mid-stream, the remote goes away (saving its state) and comes back on its port.
    remote.terminate();
    let remote = Mosquitto::start_on("bridge-restart", &remote_conf, port);
    let (mut sub, ack) = persistent_client(port, "stream-sub");
    assert!(ack.session_present);
    assert!(
        take(&mut sub, &mut seen, COUNT - 1),
        "got {} of {COUNT}",
        seen.len()
    );
    sending.join().unwrap();
    // Every message, and (counting each once) in the order it was published.
    assert_eq!(seen, (0..COUNT).collect::<Vec<_>>());
    assert!(local.count_log("Received CONNACK on connection") >= 2);
    drop(remote);
}

#[test]
fn a_bridge_fails_over_to_its_second_address_and_returns_to_the_first() {
    let ports = quiet_ports(2);
    let second = Mosquitto::start_on("bridge-fail-2", "allow_anonymous true\n", ports[1]);
    let conf = config_file(
        "bridge-failover",
        &format!(
            "listener 0 127.0.0.1\nallow_anonymous true\nconnection failover\n\
             address 127.0.0.1:{} 127.0.0.1:{}\nrestart_timeout 1\ntopic t/# out 1\n\
             notifications false\n",
            ports[0], ports[1]
        ),
    );
    let local = Broker::start_configured(&["-c", &conf]);
    // The first refuses (nothing listens): the second takes the bridge.
    local.wait_for_log("Received CONNACK on connection");
    assert!(local.has_log(&format!("could not connect to 127.0.0.1:{}", ports[0])));
    let mut on_second = Raw::connect(second.port, "on-second");
    on_second.subscribe(&[("t/#", QoS::AtLeastOnce)]);
    let mut publisher = Raw::connect(local.port, "pub");
    publish_qos(&mut publisher, "t/1", b"to the second", QoS::AtLeastOnce, 1);
    assert_eq!(
        &recv_topic(&mut on_second, "t/1").payload[..],
        b"to the second"
    );

    // The first comes up: the bridge finds it (it probes every 5 seconds) and goes back.
    let first = Mosquitto::start_on("bridge-fail-1", "allow_anonymous true\n", ports[0]);
    let mut on_first = Raw::connect(first.port, "on-first");
    on_first.subscribe(&[("t/#", QoS::AtLeastOnce)]);
    wait_until(Duration::from_secs(15), "back on the first address", || {
        local.count_log("Received CONNACK on connection") >= 2
    });
    assert!(local.has_log("answers again"));
    publish_qos(&mut publisher, "t/2", b"to the first", QoS::AtLeastOnce, 2);
    assert_eq!(
        &recv_topic(&mut on_first, "t/2").payload[..],
        b"to the first"
    );
}

#[test]
fn a_lazy_bridge_starts_at_its_threshold_and_stops_when_idle() {
    let remote = Mosquitto::start("bridge-lazy", "allow_anonymous true\n");
    let local = midge_bridged(
        "bridge-lazy-local",
        remote.port,
        "topic t/# out 1\nstart_type lazy\nthreshold 3\nidle_timeout 2\nnotifications false",
    );
    let mut on_remote = Raw::connect(remote.port, "on-remote");
    on_remote.subscribe(&[("t/#", QoS::AtLeastOnce)]);
    let mut publisher = Raw::connect(local.port, "pub");
    for i in 1..=2u8 {
        publish_qos(&mut publisher, "t/x", &[i], QoS::AtLeastOnce, i.into());
    }
    // Below the threshold: no connection (the threshold is checked every 250 ms).
    std::thread::sleep(Duration::from_millis(700));
    assert!(!local.has_log("Connecting bridge"));
    publish_qos(&mut publisher, "t/x", &[3], QoS::AtLeastOnce, 3);
    for i in 1..=3u8 {
        assert_eq!(recv_topic(&mut on_remote, "t/x").payload[..], [i]);
    }
    local.wait_for_log(
        "Bridge connection bridge-lazy-local has exceeded idle timeout, disconnecting.",
    );
}

#[test]
fn a_once_bridge_tries_once() {
    let port = quiet_port();
    let local = midge_bridged("bridge-once", port, "topic t/# out 1\nstart_type once");
    local.wait_for_log("could not connect");
    // Three restart timeouts later, still one attempt.
    std::thread::sleep(Duration::from_millis(3_000));
    assert_eq!(local.count_log("Connecting bridge"), 1);
}

/// A remote played by the test: what it does with each connection it accepts.
fn fake_remote(behave: fn(std::net::TcpStream), stop: Arc<AtomicBool>) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(60);
        let mut held = Vec::new();
        while !stop.load(Ordering::Relaxed) && Instant::now() < until {
            match listener.accept() {
                Ok((stream, _)) => {
                    count.fetch_add(1, Ordering::Relaxed);
                    stream.set_nonblocking(false).unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_secs(2)))
                        .unwrap();
                    let kept = stream.try_clone().unwrap();
                    behave(stream);
                    held.push(kept);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    (port, accepted)
}

#[test]
fn remotes_that_stay_silent_send_garbage_or_refuse_are_retried_and_harm_no_one() {
    let stop = Arc::new(AtomicBool::new(false));
    let (silent, silent_count) = fake_remote(|_| {}, stop.clone());
    let (garbage, garbage_count) = fake_remote(
        |mut s| {
            let _ = s.read(&mut [0u8; 256]);
            let _ = s.write_all(&[0xF0, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]);
        },
        stop.clone(),
    );
    let (refusing, refusing_count) = fake_remote(
        |mut s| {
            let _ = s.read(&mut [0u8; 256]);
            // CONNACK, 3.1.1 return code 5: not authorised.
            let _ = s.write_all(&[0x20, 0x02, 0x00, 0x05]);
        },
        stop.clone(),
    );
    let bridge = |name: &str, port: u16| {
        format!(
            "connection {name}\naddress 127.0.0.1:{port}\nrestart_timeout 1\nkeepalive_interval 5\ntopic t/# both 1\n"
        )
    };
    let conf = config_file(
        "bridge-bad-remotes",
        &format!(
            "listener 0 127.0.0.1\nallow_anonymous true\n{}{}{}",
            bridge("silent", silent),
            bridge("garbage", garbage),
            bridge("refusing", refusing)
        ),
    );
    let local = Broker::start_configured(&["-c", &conf]);
    let limit = Duration::from_secs(20);
    wait_until(limit, "a second connection to the garbage remote", || {
        garbage_count.load(Ordering::Relaxed) >= 2
    });
    wait_until(limit, "a second connection to the refusing remote", || {
        refusing_count.load(Ordering::Relaxed) >= 2
    });
    // Meanwhile the broker serves its own clients.
    let mut sub = Raw::connect(local.port, "local-sub");
    sub.subscribe(&[("t/#", QoS::AtLeastOnce)]);
    let mut publisher = Raw::connect(local.port, "local-pub");
    publish_qos(&mut publisher, "t/ok", b"fine", QoS::AtLeastOnce, 1);
    assert_eq!(&recv_topic(&mut sub, "t/ok").payload[..], b"fine");
    wait_until(limit, "a second connection to the silent remote", || {
        silent_count.load(Ordering::Relaxed) >= 2
    });
    stop.store(true, Ordering::Relaxed);
    assert!(local.has_log("Bridge silent got no CONNACK"));
    assert!(local.has_log("Bridge garbage could not connect"));
    assert!(local.has_log("Connection Refused: not authorised"));
    // Retried at the restart timeout, not in a loop.
    assert!(refusing_count.load(Ordering::Relaxed) < 40);
}

#[test]
fn messages_queued_for_the_remote_survive_a_restart_of_the_local_broker() {
    let dir = persist::store("bridge-queue");
    let port = quiet_port();
    let bridge = format!(
        "connection keep\naddress 127.0.0.1:{port}\nrestart_timeout 1\ncleansession false\n\
         topic q/# out 1\nnotifications false\n"
    );
    let local = persist::broker("bridge-queue", &dir, &bridge, "2");
    let mut publisher = Raw::connect(local.port, "pub");
    for i in 1..=5u8 {
        publish_qos(&mut publisher, "q/m", &[i], QoS::AtLeastOnce, i.into());
    }
    drop(publisher);
    local.terminate();
    let remote = Mosquitto::start_on("bridge-queue-remote", "allow_anonymous true\n", port);
    let mut on_remote = Raw::connect(remote.port, "on-remote");
    on_remote.subscribe(&[("q/#", QoS::AtLeastOnce)]);
    let local = persist::broker("bridge-queue", &dir, &bridge, "2");
    let mut got = Vec::new();
    while got.len() < 5 {
        match on_remote.poll_packet(DEADLINE) {
            Some(Packet::Publish(p)) => {
                on_remote.send(&Packet::PubAck(PubResponse::new(p.packet_id)));
                got.push(p.payload[0]);
            }
            other => panic!("{other:?} after {got:?}: {:#?}", local.log_lines()),
        }
    }
    assert_eq!(got, [1, 2, 3, 4, 5], "{:#?}", local.log_lines());
    drop(local);
}

#[test]
fn a_5_0_bridge_falls_back_to_3_1_1_when_the_remote_does_not_speak_5_0() {
    // A 3.1.1-only remote: a 5.0 CONNECT gets the 3.x CONNACK "unacceptable protocol
    // version"; a 3.1.1 one is accepted. The test records each CONNECT's protocol level.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let local = midge_bridged(
        "bridge-fallback",
        port,
        "topic t/# out 1\nbridge_protocol_version mqttv50\nnotifications false",
    );
    let mut levels = Vec::new();
    for _ in 0..2 {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut connect = [0u8; 64];
        let n = read_retrying(&mut s, &mut connect).unwrap();
        assert!(n >= 9, "a CONNECT");
        // Fixed header (2), protocol name (6), then the level.
        levels.push(connect[8]);
        let answer: &[u8] = if connect[8] == 5 {
            &[0x20, 0x02, 0x00, 0x01]
        } else {
            &[0x20, 0x02, 0x00, 0x00]
        };
        s.write_all(answer).unwrap();
    }
    // 3.1.1 with the bridge bit, the second time.
    assert_eq!(levels, [5, 0x84]);
    local.wait_for_log("does not support MQTT v5.0, reconnecting using MQTT v3.1.1.");
    local.wait_for_log("Received CONNACK on connection");
}
