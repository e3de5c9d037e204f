//! Bridges (issue 15), over loopback: midge bridged to Debian's mosquitto and the other way
//! round, two midges bridged both ways, notifications, TLS with a client certificate.
//! Faults (restarts, failover, bad remotes, lazy start, persistence) are in
//! `broker_bridge_faults.rs`.

mod common;

use common::bridge::*;
use common::tls::Pki;
use common::*;
use midge::codec::*;
use std::time::Duration;

/// A message that arrives once is followed by the next one sent, not by a copy of itself.
fn sentinel(publisher: &mut Raw, subscriber: &mut Raw, topic: &str) {
    publish_qos(publisher, topic, b"sentinel", QoS::AtLeastOnce, 99);
    let p = recv_acked(subscriber);
    assert_eq!((&*p.topic, &p.payload[..]), (topic, &b"sentinel"[..]));
}

#[test]
fn midge_bridges_to_mosquitto_in_out_and_both_with_prefixes_at_every_qos() {
    let remote = Mosquitto::start("bridge-m1", "allow_anonymous true\nsys_interval 1\n");
    let local = midge_bridged(
        "bridge-m1-local",
        remote.port,
        "topic out/# out 2 l/ r/\ntopic in/# in 2 l/ r/\ntopic both/# both 2\n\
         topic clients/total in 0 test/mosquitto/org $SYS/broker/\nnotifications false",
    );
    local.wait_for_log_count("Received SUBACK from", 3);
    let mut on_remote = Raw::connect(remote.port, "on-remote");
    on_remote.subscribe(&[("r/out/#", QoS::ExactlyOnce), ("both/#", QoS::ExactlyOnce)]);
    let mut on_local = Raw::connect(local.port, "on-local");
    on_local.subscribe(&[("l/in/#", QoS::ExactlyOnce), ("both/#", QoS::ExactlyOnce)]);
    let mut pub_local = Raw::connect(local.port, "pub-local");
    let mut pub_remote = Raw::connect(remote.port, "pub-remote");

    for (id, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let id = id as u16 + 1;
        // out: the local prefix gives way to the remote one.
        publish_qos(&mut pub_local, "l/out/a", &[id as u8], qos, id);
        let p = recv_topic(&mut on_remote, "r/out/a");
        assert_eq!((p.qos, &p.payload[..]), (qos, &[id as u8][..]));
        // in: the other way round.
        publish_qos(&mut pub_remote, "r/in/b", &[id as u8], qos, id);
        let p = recv_topic(&mut on_local, "l/in/b");
        assert_eq!((p.qos, &p.payload[..]), (qos, &[id as u8][..]));
        // both, no prefixes: each side's subscriber gets the other's message, once.
        publish_qos(&mut pub_local, "both/x", &[id as u8], qos, id);
        assert_eq!(recv_topic(&mut on_local, "both/x").qos, qos);
        assert_eq!(recv_topic(&mut on_remote, "both/x").qos, qos);
        publish_qos(&mut pub_remote, "both/y", &[id as u8], qos, id);
        assert_eq!(recv_topic(&mut on_remote, "both/y").qos, qos);
        assert_eq!(recv_topic(&mut on_local, "both/y").qos, qos);
    }
    // Nothing came back over the bridge (Mosquitto treats midge's bridge bit as a bridge):
    // the next message is next on both sides.
    sentinel(&mut pub_local, &mut on_local, "both/end-l");
    assert_eq!(recv_acked(&mut on_remote).topic.as_str(), "both/end-l");
    sentinel(&mut pub_remote, &mut on_remote, "both/end-r");
    assert_eq!(recv_acked(&mut on_local).topic.as_str(), "both/end-r");
    // A message published on a topic no `out` line carries stays local.
    publish_qos(&mut pub_local, "elsewhere", b"x", QoS::AtLeastOnce, 7);
    sentinel(&mut pub_local, &mut on_remote, "both/end2");
    assert_eq!(recv_acked(&mut on_local).topic.as_str(), "both/end2");
    // `in` remapping of the remote's own $SYS topics, as Mosquitto's test of it does.
    on_local.subscribe(&[("test/#", QoS::AtMostOnce)]);
    let p = recv_topic(&mut on_local, "test/mosquitto/orgclients/total");
    assert!(!p.payload.is_empty());
}

#[test]
fn mosquitto_bridges_to_midge_and_midge_does_not_echo_to_it() {
    let local = Broker::start(&[]);
    let remote = Mosquitto::start(
        "bridge-m2",
        &format!(
            "allow_anonymous true\nconnection tomidge\naddress 127.0.0.1:{}\n\
             topic t/# both 2 m/ n/\nnotifications false\nrestart_timeout 1\n",
            local.port
        ),
    );
    // Mosquitto's bridge says it is one (the bridge bit) and subscribes.
    local.wait_for_log(" n/t/#");
    let mut on_midge = Raw::connect(local.port, "on-midge");
    on_midge.subscribe(&[("n/t/#", QoS::ExactlyOnce)]);
    let mut on_mosquitto = Raw::connect(remote.port, "on-mosquitto");
    on_mosquitto.subscribe(&[("m/t/#", QoS::ExactlyOnce)]);
    let mut pub_midge = Raw::connect(local.port, "pub-midge");
    let mut pub_mosquitto = Raw::connect(remote.port, "pub-mosquitto");
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        publish_qos(&mut pub_mosquitto, "m/t/1", b"a", qos, 1);
        assert_eq!(recv_topic(&mut on_mosquitto, "m/t/1").qos, qos);
        assert_eq!(recv_topic(&mut on_midge, "n/t/1").qos, qos);
        publish_qos(&mut pub_midge, "n/t/2", b"b", qos, 2);
        assert_eq!(recv_topic(&mut on_midge, "n/t/2").qos, qos);
        assert_eq!(recv_topic(&mut on_mosquitto, "m/t/2").qos, qos);
    }
    // Each once: midge does not send Mosquitto's bridge what it published, nor the reverse.
    sentinel(&mut pub_midge, &mut on_midge, "n/t/end");
    assert_eq!(recv_acked(&mut on_mosquitto).topic.as_str(), "m/t/end");
    sentinel(&mut pub_mosquitto, &mut on_mosquitto, "m/t/end2");
    assert_eq!(recv_acked(&mut on_midge).topic.as_str(), "n/t/end2");
    drop(remote);
}

/// Two midges bridged `both` on `#`: each message arrives once on each side, with the
/// bridge bit (3.1.1) and with No Local (5.0).
#[test]
fn two_midges_bridged_both_ways_on_everything_do_not_loop() {
    for version in ["mqttv311", "mqttv50"] {
        let b = Broker::start(&[]);
        let a = midge_bridged(
            &format!("bridge-loop-{version}"),
            b.port,
            &format!("topic # both 1\nbridge_protocol_version {version}"),
        );
        a.wait_for_log("Received SUBACK from");
        let mut sub_a = Raw::connect(a.port, "sub-a");
        sub_a.subscribe(&[("t/#", QoS::AtLeastOnce)]);
        let mut sub_b = Raw::connect(b.port, "sub-b");
        sub_b.subscribe(&[("t/#", QoS::AtLeastOnce)]);
        let mut pub_a = Raw::connect(a.port, "pub-a");
        let mut pub_b = Raw::connect(b.port, "pub-b");
        for i in 0..5u8 {
            publish_qos(&mut pub_a, "t/a", &[i], QoS::AtLeastOnce, 1);
            assert_eq!(recv_topic(&mut sub_a, "t/a").payload[..], [i]);
            assert_eq!(recv_topic(&mut sub_b, "t/a").payload[..], [i]);
            publish_qos(&mut pub_b, "t/b", &[i], QoS::AtLeastOnce, 2);
            assert_eq!(recv_topic(&mut sub_b, "t/b").payload[..], [i]);
            assert_eq!(recv_topic(&mut sub_a, "t/b").payload[..], [i]);
        }
        sentinel(&mut pub_a, &mut sub_a, "t/end");
        sentinel(&mut pub_b, &mut sub_b, "t/end");
        assert_eq!(recv_topic(&mut sub_a, "t/end").payload[..], b"sentinel"[..]);
        assert_eq!(recv_topic(&mut sub_b, "t/end").payload[..], b"sentinel"[..]);
        sub_a.expect_nothing(Duration::from_millis(300));
        sub_b.expect_nothing(Duration::from_millis(300));
    }
}

#[test]
fn notifications_say_when_the_bridge_is_up_and_when_it_is_gone() {
    let remote = Mosquitto::start("bridge-note", "allow_anonymous true\n");
    let local = midge_bridged(
        "bridge-note-local",
        remote.port,
        "topic t/# out 1\nremote_clientid edge1",
    );
    local.wait_for_log("Received CONNACK on connection local.edge1");
    let state = "$SYS/broker/connection/edge1/state";
    // Retained on both sides: a subscriber that comes later learns it.
    let mut on_remote = Raw::connect(remote.port, "watch-remote");
    on_remote.subscribe(&[(state, QoS::AtLeastOnce)]);
    let p = recv_topic(&mut on_remote, state);
    assert!(p.retain);
    assert_eq!(&p.payload[..], b"1");
    let mut on_local = Raw::connect(local.port, "watch-local");
    on_local.subscribe(&[(state, QoS::AtLeastOnce)]);
    let p = recv_topic(&mut on_local, state);
    assert_eq!((&p.payload[..], p.retain), (&b"1"[..], true));
    // The remote goes away: the local side says so.
    remote.terminate();
    let p = recv_topic(&mut on_local, state);
    assert_eq!(&p.payload[..], b"0");
    local.wait_for_log("Client local.edge1 closed its connection.");
}

#[test]
fn the_remote_publishes_the_bridges_will_when_midge_stops() {
    let remote = Mosquitto::start("bridge-will", "allow_anonymous true\n");
    let local = midge_bridged(
        "bridge-will-local",
        remote.port,
        "topic t/# out 1\nremote_clientid edge2",
    );
    local.wait_for_log("Received CONNACK on connection local.edge2");
    let state = "$SYS/broker/connection/edge2/state";
    let mut on_remote = Raw::connect(remote.port, "watch-remote");
    on_remote.subscribe(&[(state, QoS::AtLeastOnce)]);
    assert_eq!(&recv_topic(&mut on_remote, state).payload[..], b"1");
    local.terminate();
    assert_eq!(&recv_topic(&mut on_remote, state).payload[..], b"0");
}

#[test]
fn notifications_local_only_tell_the_remote_nothing() {
    let remote = Mosquitto::start("bridge-note-lo", "allow_anonymous true\n");
    let local = midge_bridged(
        "bridge-note-lo-local",
        remote.port,
        "topic t/# both 1\nremote_clientid edge3\nnotifications_local_only true",
    );
    local.wait_for_log("Received SUBACK from local.edge3");
    let mut on_remote = Raw::connect(remote.port, "watch-remote");
    on_remote.subscribe(&[
        ("$SYS/broker/connection/#", QoS::AtLeastOnce),
        ("t/#", QoS::AtLeastOnce),
    ]);
    let mut pub_local = Raw::connect(local.port, "pub-local");
    // The next message over the bridge comes first: no notification was retained there.
    sentinel(&mut pub_local, &mut on_remote, "t/end");
    let mut on_local = Raw::connect(local.port, "watch-local");
    on_local.subscribe(&[("$SYS/broker/connection/edge3/state", QoS::AtLeastOnce)]);
    assert_eq!(&recv_acked(&mut on_local).payload[..], b"1");
}

#[test]
fn a_bridge_over_tls_presents_its_client_certificate() {
    let pki = Pki::new("bridge-tls");
    let tls_port = quiet_port();
    let conf = config_file(
        "bridge-tls-remote",
        &format!(
            "listener 0 127.0.0.1\nallow_anonymous true\n\
             listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n\
             use_identity_as_username true\n",
            pki.path("ca.pem"),
            pki.path("server.pem"),
            pki.path("server.key")
        ),
    );
    let remote = Broker::start_configured(&["-c", &conf]);
    let local = midge_bridged(
        "bridge-tls-local",
        tls_port,
        &format!(
            "topic t/# both 1\nbridge_cafile {}\nbridge_certfile {}\nbridge_keyfile {}",
            pki.path("ca.pem"),
            pki.path("alice.pem"),
            pki.path("alice.key")
        ),
    );
    local.wait_for_log("Received SUBACK from");
    // The remote knows the bridge by its certificate's name.
    remote.wait_for_log("u'alice'");
    let mut on_remote = Raw::connect(remote.port, "on-remote");
    on_remote.subscribe(&[("t/#", QoS::AtLeastOnce)]);
    let mut pub_local = Raw::connect(local.port, "pub-local");
    publish_qos(&mut pub_local, "t/secure", b"over tls", QoS::AtLeastOnce, 1);
    assert_eq!(
        &recv_topic(&mut on_remote, "t/secure").payload[..],
        b"over tls"
    );

    // Without a certificate the remote refuses the handshake, and the bridge says so.
    let refused = midge_bridged(
        "bridge-tls-nocert",
        tls_port,
        &format!("topic t/# both 1\nbridge_cafile {}", pki.path("ca.pem")),
    );
    refused.wait_for_log("Bridge bridge-tls-nocert could not connect");
}
