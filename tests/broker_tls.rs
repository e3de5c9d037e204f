//! TLS listeners: server authentication, client certificates naming the user, certificates
//! that must be refused (another CA, expired, revoked), bad input on a TLS port, a handshake
//! that stops halfway or a storm of slow ones, configuration errors, cipher lists and
//! versions, certificates reloaded on SIGHUP. Certificates are made fresh for each run
//! (`common/tls.rs`); interop with other clients and tools is in `tls_interop.rs`.

mod common;

use common::tls::*;
use common::*;
use midge::codec::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn a_tls_listener_serves_mqtt_and_closes_plain_clients_cleanly() {
    let pki = Pki::new("server-auth");
    let broker = pki.broker("tls-server-auth", "allow_anonymous true\n");
    let ca = pki.path("ca.pem");
    let mut subscriber = tls_connect(broker.port, &ca, None).expect("handshake");
    assert_eq!(
        connect(&mut subscriber, "sub").unwrap().reason,
        ReasonCode::Success
    );
    match exchange(
        &mut subscriber,
        Some(&subscribe(1, &[("t/#", QoS::AtLeastOnce)])),
    ) {
        Some(Packet::SubAck(_)) => {}
        other => panic!("expected SUBACK, got {other:?}"),
    }

    // A plain MQTT client on the TLS port: its CONNECT is not a TLS record; it is closed,
    // and logged, and nobody else notices.
    let mut plain = TcpStream::connect(("127.0.0.1", broker.port)).unwrap();
    let hello = Packet::Connect(Box::new(connect_packet(
        ProtocolVersion::V311,
        "plain",
        true,
        60,
    )));
    plain
        .write_all(&hello.to_bytes(ProtocolVersion::V311).unwrap())
        .unwrap();
    plain.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut answer = Vec::new();
    plain.read_to_end(&mut answer).expect("closed, not reset");
    // A TLS alert record (content type 21), then the end of the connection.
    assert_eq!(answer.first(), Some(&0x15), "{answer:02X?}");
    broker.wait_for_log("failed: TLS error");

    // Messages larger than a TLS record (16 KiB) cross whole, both ways.
    let mut publisher = tls_connect(broker.port, &ca, None).expect("handshake");
    assert_eq!(
        connect(&mut publisher, "pub").unwrap().reason,
        ReasonCode::Success
    );
    let payload = vec![7u8; 100_000];
    let bytes = publish("t/big", &payload, QoS::AtMostOnce, 0, false)
        .to_bytes(ProtocolVersion::V311)
        .unwrap();
    publisher.write_all(&bytes).unwrap();
    match exchange(&mut subscriber, None) {
        Some(Packet::Publish(p)) => {
            assert_eq!(p.topic.as_str(), "t/big");
            assert_eq!(p.payload.len(), payload.len());
        }
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    broker.wait_for_log("New client connected from 127.0.0.1");
}

#[test]
fn client_certificates_name_the_user_and_bad_ones_are_refused() {
    let pki = Pki::new("client-certs");
    let acl = config_file("tls-acl", "user alice\ntopic readwrite alice/#\n");
    let broker = pki.broker(
        "tls-client-certs",
        &format!(
            "cafile {}\ncrlfile {}\nrequire_certificate true\nuse_identity_as_username true\nacl_file {acl}\n",
            pki.path("ca.pem"),
            pki.path("crl.pem"),
        ),
    );
    let ca = pki.path("ca.pem");
    let (cert, key) = (pki.path("alice.pem"), pki.path("alice.key"));
    let mut alice = tls_connect(broker.port, &ca, Some((&cert, &key))).expect("handshake");
    // No user name or password in CONNECT: the certificate's CN is the user name, and the
    // ACL grants alice her topics.
    assert_eq!(
        connect(&mut alice, "alice-1").unwrap().reason,
        ReasonCode::Success
    );
    broker.wait_for_log("as alice-1 (p4, c1, k60, u'alice')");
    match exchange(
        &mut alice,
        Some(&subscribe(1, &[("alice/#", QoS::AtMostOnce)])),
    ) {
        Some(Packet::SubAck(_)) => {}
        other => panic!("expected SUBACK, got {other:?}"),
    }
    let bytes = publish("alice/x", b"mine", QoS::AtMostOnce, 0, false)
        .to_bytes(ProtocolVersion::V311)
        .unwrap();
    alice.write_all(&bytes).unwrap();
    match exchange(&mut alice, None) {
        Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"mine"),
        other => panic!("expected PUBLISH, got {other:?}"),
    }

    // Refused in the handshake: no certificate, an expired one, a revoked one (crlfile),
    // one from another CA. Each is logged; alice stays connected throughout.
    let refused = |identity: Option<(&str, &str)>| {
        let Ok(mut stream) = tls_connect(broker.port, &ca, identity) else {
            return true;
        };
        // TLS 1.3: the client finishes before the server has checked its certificate; the
        // server's alert then ends the connection instead of a CONNACK.
        connect(&mut stream, "intruder").is_none()
    };
    assert!(refused(None), "no client certificate");
    for name in ["expired", "revoked", "stranger"] {
        let (cert, key) = (
            pki.path(&format!("{name}.pem")),
            pki.path(&format!("{name}.key")),
        );
        assert!(refused(Some((&cert, &key))), "{name} certificate accepted");
    }
    broker.wait_for_log_count("failed: TLS error", 4);
    assert!(!broker.has_log("as intruder"));
    match exchange(&mut alice, Some(&Packet::PingReq)) {
        Some(Packet::PingResp) => {}
        other => panic!("expected PINGRESP, got {other:?}"),
    }
}

#[test]
fn a_handshake_that_stops_halfway_is_closed_at_the_connect_timeout() {
    let pki = Pki::new("stall");
    let broker = pki.broker("tls-stall", "allow_anonymous true\nconnect_timeout 1\n");
    let mut stalled = TcpStream::connect(("127.0.0.1", broker.port)).unwrap();
    // The first bytes of a ClientHello record, and then nothing.
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    let started = Instant::now();
    stalled.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut rest = Vec::new();
    let _ = stalled.read_to_end(&mut rest);
    assert!(
        started.elapsed() < DEADLINE,
        "the stalled handshake was not closed"
    );
    // Meanwhile and afterwards, others are served.
    let mut client = tls_connect(broker.port, &pki.path("ca.pem"), None).expect("handshake");
    assert_eq!(
        connect(&mut client, "after").unwrap().reason,
        ReasonCode::Success
    );
}

/// `midge --test-config -c FILE`: exit status and what it printed.
fn test_config(text: &str) -> (bool, String) {
    let conf = config_file("tls-check", text);
    let out = Command::new(env!("CARGO_BIN_EXE_midge"))
        .args(["--test-config", "-c", &conf])
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), said)
}

#[test]
fn tls_configuration_errors_stop_the_start_with_the_reason() {
    let pki = Pki::new("config");
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let ok = format!("listener 0 127.0.0.1\ncertfile {cert}\nkeyfile {key}\n");
    assert!(test_config(&ok).0, "{}", test_config(&ok).1);
    for (text, reason) in [
        (
            format!("listener 0 127.0.0.1\ncertfile {cert}\n"),
            "needs both certfile and keyfile",
        ),
        (
            format!("{ok}keyfile /nonexistent/key.pem\n"),
            "/nonexistent/key.pem",
        ),
        (format!("{ok}certfile {key}\n"), "certfile"),
        (format!("{ok}psk_hint hint\n"), "TLS-PSK is not available"),
        (format!("{ok}tls_version tlsv1.1\n"), "TLS before 1.2"),
        (
            format!("{ok}ciphers ECDHE-RSA-AES256-SHA384\n"),
            "ECDHE-RSA-AES256-SHA384 is not offered",
        ),
        (
            format!("{ok}ciphers_tls1.3 TLS_AES_128_CCM_SHA256\n"),
            "TLS_AES_128_CCM_SHA256 is not offered",
        ),
        (
            format!("{ok}tls_engine pkcs11\n"),
            "tls_engine is not supported",
        ),
        (
            format!("{ok}require_certificate true\n"),
            "needs cafile or capath",
        ),
        (
            format!(
                "{ok}cafile {}\nrequire_certificate true\ncrlfile {cert}\n",
                pki.path("ca.pem")
            ),
            "crlfile",
        ),
    ] {
        let (started, said) = test_config(&text);
        assert!(!started, "started with:\n{text}");
        assert!(said.contains(reason), "{reason:?} not in {said:?}");
    }
}

#[test]
fn sighup_reloads_certificates_and_keeps_connected_clients() {
    let (first, second) = (Pki::new("reload-1"), Pki::new("reload-2"));
    let live = std::env::temp_dir().join(format!("midge-tls-{}-reload-live", std::process::id()));
    std::fs::create_dir_all(&live).unwrap();
    let install = |pki: &Pki| {
        for file in ["server.pem", "server.key"] {
            std::fs::copy(pki.path(file), live.join(file)).unwrap();
        }
    };
    install(&first);
    let conf = config_file(
        "tls-reload",
        &format!(
            "listener 0 127.0.0.1\ncertfile {}\nkeyfile {}\nallow_anonymous true\n",
            live.join("server.pem").display(),
            live.join("server.key").display()
        ),
    );
    let broker = Broker::start_configured(&["-c", &conf]);
    let mut connected = tls_connect(broker.port, &first.path("ca.pem"), None).expect("handshake");
    assert_eq!(
        connect(&mut connected, "kept").unwrap().reason,
        ReasonCode::Success
    );

    // The server certificate changes to one from another CA.
    install(&second);
    broker.signal(libc::SIGHUP);
    let until = Instant::now() + DEADLINE;
    while tls_connect(broker.port, &second.path("ca.pem"), None).is_err() {
        assert!(Instant::now() < until, "the new certificate was not taken");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(tls_connect(broker.port, &first.path("ca.pem"), None).is_err());
    match exchange(&mut connected, Some(&Packet::PingReq)) {
        Some(Packet::PingResp) => {}
        other => panic!("the connected client was dropped by the reload: {other:?}"),
    }

    // A broken certificate: the reload fails, says why, and the current one stays.
    std::fs::write(live.join("server.pem"), "not a certificate").unwrap();
    broker.signal(libc::SIGHUP);
    broker.wait_for_log("keeping the current settings");
    let mut after = tls_connect(broker.port, &second.path("ca.pem"), None).expect("handshake");
    assert_eq!(
        connect(&mut after, "after").unwrap().reason,
        ReasonCode::Success
    );
    let _ = std::fs::remove_dir_all(&live);
}

#[test]
fn a_storm_of_slow_handshakes_is_spread_over_loop_turns_and_every_one_completes() {
    // RSA-3072 signatures take milliseconds: a few handshakes use up a turn's handshake
    // time, and the rest wait for the next turns instead of stalling the shard.
    let pki = Pki::new("rsa");
    let (key, cert) = (pki.path("rsa.key"), pki.path("rsa.pem"));
    let ext = pki.dir.join("ext");
    std::fs::write(&ext, "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("Debian's openssl");
        succeeded(&out);
    };
    let csr = pki.path("rsa.csr");
    openssl(&[
        "req",
        "-newkey",
        "rsa:3072",
        "-nodes",
        "-keyout",
        &key,
        "-out",
        &csr,
        "-subj",
        "/CN=localhost",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &pki.path("ca.pem"),
        "-CAkey",
        &pki.path("ca.key"),
        "-CAcreateserial",
        "-out",
        &cert,
        "-days",
        "2",
        "-extfile",
        &ext.to_string_lossy(),
    ]);
    let conf = config_file(
        "tls-rsa-storm",
        &format!("listener 0 127.0.0.1\ncertfile {cert}\nkeyfile {key}\nallow_anonymous true\n"),
    );
    let broker = Broker::start_configured(&["-c", &conf, "--threads", "1"]);
    let ca = pki.path("ca.pem");
    let clients: Vec<_> = (0..24)
        .map(|i| {
            let (ca, port) = (ca.clone(), broker.port);
            std::thread::spawn(move || {
                let mut stream = tls_connect(port, &ca, None).expect("handshake");
                connect(&mut stream, &format!("storm-{i}")).map(|ack| ack.reason)
            })
        })
        .collect();
    for client in clients {
        assert_eq!(client.join().unwrap(), Some(ReasonCode::Success));
    }
    broker.wait_for_log("TLS handshake time of this loop turn used up");
}

#[test]
fn cipher_lists_choose_the_suites() {
    let pki = Pki::new("ciphers");
    let ca = pki.path("ca.pem");
    let tls12: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
    let any: &[&'static rustls::SupportedProtocolVersion] =
        &[&rustls::version::TLS13, &rustls::version::TLS12];
    for (options, client, expected) in [
        (
            "ciphers DEFAULT:!aNULL:!AESGCM\n",
            tls12,
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        ),
        (
            "ciphers_tls1.3 TLS_AES_128_GCM_SHA256\n",
            any,
            "TLS13_AES_128_GCM_SHA256",
        ),
    ] {
        let broker = pki.broker("tls-ciphers", &format!("allow_anonymous true\n{options}"));
        let mut stream = tls_connect_with(broker.port, &ca, None, client).expect("handshake");
        let suite = stream.conn.negotiated_cipher_suite().expect("negotiated");
        assert_eq!(format!("{:?}", suite.suite()), expected, "{options}");
        assert_eq!(
            connect(&mut stream, "c").unwrap().reason,
            ReasonCode::Success
        );
    }
}

#[test]
fn tls_version_sets_the_lowest_version() {
    let pki = Pki::new("versions");
    let ca = pki.path("ca.pem");
    let broker = pki.broker(
        "tls-versions",
        "allow_anonymous true\ntls_version tlsv1.3\n",
    );
    let tls12: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
    assert!(tls_connect_with(broker.port, &ca, None, tls12).is_err());
    let stream = tls_connect(broker.port, &ca, None).expect("handshake");
    assert_eq!(
        stream.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

#[test]
fn use_identity_as_username_without_a_client_certificate_is_a_bad_user_name() {
    // As Mosquitto: without require_certificate no certificate is asked for, and a client
    // that has none has no user name: CONNACK 4 (bad user name or password).
    let pki = Pki::new("no-identity");
    let broker = pki.broker("tls-no-identity", "use_identity_as_username true\n");
    let mut stream = tls_connect(broker.port, &pki.path("ca.pem"), None).expect("handshake");
    let ack = connect(&mut stream, "no-identity").expect("a CONNACK");
    assert_eq!(ack.reason, ReasonCode::BadUserNameOrPassword);
    let bytes = Packet::ConnAck(ack)
        .to_bytes(ProtocolVersion::V311)
        .unwrap();
    assert_eq!(&bytes[..], &[0x20, 0x02, 0x00, 0x04]);
}

/// The next PUBLISH on `stream`, read whole (up to 32 MiB), or `None` if the connection
/// ended first.
fn read_publish(stream: &mut TlsStream) -> Option<Publish> {
    let decoder = Decoder::client(ProtocolVersion::V311, 32 << 20);
    let mut buf = bytes::BytesMut::new();
    let until = Instant::now() + DEADLINE;
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        match decoder.decode_from(&mut buf).expect("a valid packet") {
            Some(Packet::Publish(p)) => return Some(p),
            Some(_) => continue,
            None => {}
        }
        assert!(Instant::now() < until, "no PUBLISH within {DEADLINE:?}");
        match stream.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if read_again(&e) => {}
            Err(_) => return None,
        }
    }
}

/// A large message to TLS subscribers is sealed a slice at a time as each one reads, from
/// the one shared message, not copied and sealed whole for each in one turn (before: 50 MB
/// to four subscribers held a shard for 190 ms, and the broker 270 MiB). Four subscribers of
/// a 16 MiB message each get it whole, the broker's peak memory grows by less than twice the
/// message (before: about nine times), and another client is served meanwhile.
#[test]
fn a_large_message_is_sealed_as_tls_subscribers_read() {
    const SIZE: usize = 16 << 20;
    let pki = Pki::new("large-sealed");
    let broker = pki.broker("tls-large-sealed", "allow_anonymous true\n");
    let ca = pki.path("ca.pem");
    let subscriber = |i: usize| {
        let mut s = tls_connect(broker.port, &ca, None).expect("handshake");
        connect(&mut s, &format!("sub-{i}")).unwrap();
        match exchange(&mut s, Some(&subscribe(1, &[("big", QoS::AtMostOnce)]))) {
            Some(Packet::SubAck(_)) => s,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    };
    let readers: Vec<_> = (0..4)
        .map(|i| {
            let mut s = subscriber(i);
            std::thread::spawn(move || read_publish(&mut s).map(|p| p.payload))
        })
        .collect();
    let mut bystander = tls_connect(broker.port, &ca, None).expect("handshake");
    connect(&mut bystander, "bystander").unwrap();
    let mut publisher = tls_connect(broker.port, &ca, None).expect("handshake");
    connect(&mut publisher, "publisher").unwrap();
    let before = common::hostile::peak_rss_kib(broker.pid());
    let payload = vec![0x5A; SIZE];
    let bytes = publish("big", &payload, QoS::AtMostOnce, 0, false)
        .to_bytes(ProtocolVersion::V311)
        .unwrap();
    publisher.write_all(&bytes).unwrap();
    publisher.flush().unwrap();
    let started = Instant::now();
    assert!(matches!(
        exchange(&mut bystander, Some(&Packet::PingReq)),
        Some(Packet::PingResp)
    ));
    assert!(started.elapsed() < Duration::from_secs(1));
    for reader in readers {
        assert!(reader.join().unwrap().expect("delivered") == payload);
    }
    common::hostile::assert_peak_grew_under(broker.pid(), before, SIZE, 2.0);
}
