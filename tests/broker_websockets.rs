//! WebSocket listeners (`protocol websockets`): the upgrade with the `mqtt` subprotocol,
//! MQTT packets split across frames and several in one frame, ping/pong, close frames, text
//! frames and oversized upgrade requests refused, paho-mqtt over `ws://` (`wss://`, with a
//! certificate, is in `broker_tls.rs`).

mod common;

use common::*;
use midge::codec::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Instant;
use tungstenite::{client::IntoClientRequest, Message, WebSocket};

type Ws = WebSocket<TcpStream>;

fn broker(name: &str, extra: &str) -> Broker {
    let conf = config_file(
        name,
        &format!("listener 0 127.0.0.1\nprotocol websockets\nallow_anonymous true\n{extra}"),
    );
    Broker::start_configured(&["-c", &conf])
}

/// A WebSocket client asking for `subprotocol`.
fn ws_connect(port: u16, subprotocol: &str) -> Result<Ws, tungstenite::Error> {
    let mut request = format!("ws://127.0.0.1:{port}/mqtt").into_client_request()?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", subprotocol.parse().unwrap());
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    let (ws, response) = tungstenite::client(request, tcp).map_err(|e| match e {
        tungstenite::HandshakeError::Failure(e) => e,
        tungstenite::HandshakeError::Interrupted(_) => panic!("blocking handshake interrupted"),
    })?;
    assert_eq!(
        response.headers()["Sec-WebSocket-Protocol"],
        subprotocol,
        "the broker answers with the subprotocol asked for"
    );
    Ok(ws)
}

/// The second listener of the configuration: plain MQTT.
fn plain_port(broker: &Broker) -> u16 {
    broker.ports(2)[1]
}

fn bytes(packet: &Packet) -> Vec<u8> {
    packet.to_bytes(ProtocolVersion::V311).unwrap().to_vec()
}

/// Sends `connect` in one binary message and expects CONNACK; returns the buffer of what
/// came after it.
fn send_connect(ws: &mut Ws, connect: Connect) -> bytes::BytesMut {
    ws.send(Message::Binary(
        bytes(&Packet::Connect(Box::new(connect))).into(),
    ))
    .unwrap();
    let mut buf = bytes::BytesMut::new();
    assert!(matches!(
        recv_packets(ws, &mut buf, 1)[0],
        Packet::ConnAck(_)
    ));
    buf
}

/// Subscribes to `filter` (QoS 0) in one binary message and expects SUBACK.
fn ws_subscribe(ws: &mut Ws, buf: &mut bytes::BytesMut, filter: &str) {
    ws.send(Message::Binary(
        bytes(&subscribe(1, &[(filter, QoS::AtMostOnce)])).into(),
    ))
    .unwrap();
    assert!(matches!(recv_packets(ws, buf, 1)[0], Packet::SubAck(_)));
}

/// Reads messages until `n` packets decoded (frames may hold parts or several).
fn recv_packets(ws: &mut Ws, buf: &mut bytes::BytesMut, n: usize) -> Vec<Packet> {
    recv_packets_of(ws, buf, n, 1 << 20)
}

/// The same, for packets of up to `size_max` bytes.
fn recv_packets_of(
    ws: &mut Ws,
    buf: &mut bytes::BytesMut,
    n: usize,
    size_max: usize,
) -> Vec<Packet> {
    let decoder = Decoder::client(ProtocolVersion::V311, size_max);
    let mut packets = Vec::new();
    let until = Instant::now() + DEADLINE;
    while packets.len() < n {
        while let Some(p) = decoder.decode_from(buf).unwrap() {
            packets.push(p);
        }
        if packets.len() >= n {
            break;
        }
        assert!(Instant::now() < until, "only {} packets", packets.len());
        match ws.read().expect("a message") {
            Message::Binary(b) => buf.extend_from_slice(&b),
            Message::Pong(_) | Message::Ping(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    packets
}

#[test]
fn mqtt_over_websockets_with_frames_split_and_joined() {
    let broker = broker("ws-frames", "listener 0 127.0.0.1\n");
    let mut sub = ws_connect(broker.port, "mqtt").unwrap();
    let connect = bytes(&Packet::Connect(Box::new(connect_packet(
        ProtocolVersion::V311,
        "ws-sub",
        true,
        60,
    ))));
    // CONNECT split over two frames, then SUBSCRIBE and PINGREQ together in one.
    let (a, b) = connect.split_at(5);
    sub.send(Message::Binary(a.to_vec().into())).unwrap();
    sub.send(Message::Binary(b.to_vec().into())).unwrap();
    let mut joined = bytes(&subscribe(1, &[("ws/#", QoS::AtLeastOnce)]));
    joined.extend(bytes(&Packet::PingReq));
    sub.send(Message::Binary(joined.into())).unwrap();
    let mut buf = bytes::BytesMut::new();
    let got = recv_packets(&mut sub, &mut buf, 3);
    assert!(matches!(got[0], Packet::ConnAck(ref a) if a.reason == ReasonCode::Success));
    assert!(matches!(got[1], Packet::SubAck(_)));
    assert!(matches!(got[2], Packet::PingResp));

    // A plain TCP client publishes; the WebSocket subscriber receives.
    let mut publisher = Raw::connect(plain_port(&broker), "tcp-pub");
    publisher.send(&publish("ws/t", b"through", QoS::AtLeastOnce, 1, false));
    match recv_packets(&mut sub, &mut buf, 1).remove(0) {
        Packet::Publish(p) => assert_eq!(&p.payload[..], b"through"),
        other => panic!("expected PUBLISH, got {other:?}"),
    }

    // A WebSocket ping is answered with a pong carrying the same data.
    sub.send(Message::Ping(b"hi".to_vec().into())).unwrap();
    let until = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < until, "no pong");
        if let Message::Pong(data) = sub.read().unwrap() {
            assert_eq!(&data[..], b"hi");
            break;
        }
    }
    broker.wait_for_log("as ws-sub (p4, c1, k60)");
    // Mosquitto's lines: its WebSocket listener is "websockets", and a WebSocket client
    // gets no "New connection from" line (a plain one does).
    broker.wait_for_log(&format!(
        "Opening websockets listen socket on port {}.",
        broker.port
    ));
    let new_connection_on = |port: u16| {
        let tail = format!("on port {port}.");
        (broker.log_lines().iter()).any(|l| l.contains("New connection from") && l.ends_with(&tail))
    };
    // The plain client connected after the WebSocket one: once its line is in, a line for
    // the WebSocket client would be too (the log is one ordered stream).
    let line = broker.wait_for_log("New connection from 127.0.0.1:");
    assert!(new_connection_on(plain_port(&broker)));
    assert!(
        line.ends_with(&format!("on port {}.", plain_port(&broker))),
        "{line}"
    );
    assert!(!new_connection_on(broker.port));
}

#[test]
fn a_close_frame_ends_the_connection_and_publishes_the_will() {
    let broker = broker("ws-close", "listener 0 127.0.0.1\n");
    let mut watcher = Raw::connect(plain_port(&broker), "watcher");
    watcher.subscribe(&[("will/#", QoS::AtMostOnce)]);
    let mut ws = ws_connect(broker.port, "mqttv3.1").unwrap();
    let mut connect = connect_with_will(
        ProtocolVersion::V311,
        "ws-will",
        QoS::AtMostOnce,
        false,
        b"gone",
    );
    connect.will.as_mut().unwrap().topic = s("will/ws");
    send_connect(&mut ws, connect);
    // Closing the WebSocket without DISCONNECT: the broker answers the close, the
    // connection ends, and the will goes out.
    ws.close(None).unwrap();
    let until = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < until, "the close was not answered");
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(&watcher.recv_publish().payload[..], b"gone");
}

#[test]
fn text_frames_oversized_upgrades_and_other_subprotocols_are_refused() {
    let broker = broker(
        "ws-bad",
        "listener 0 127.0.0.1\nwebsockets_headers_size 2048\n",
    );
    let mut bystander = Raw::connect(plain_port(&broker), "bystander");

    // [MQTT-6.0.0-1] a text frame closes the connection, with a close frame saying 1003
    // (data it cannot take, RFC 6455 §7.4.1).
    let mut ws = ws_connect(broker.port, "mqtt").unwrap();
    ws.send(Message::Text("CONNECT".into())).unwrap();
    let until = Instant::now() + DEADLINE;
    let mut status = None;
    loop {
        assert!(Instant::now() < until, "not closed");
        match ws.read() {
            Ok(Message::Close(Some(frame))) => status = Some(u16::from(frame.code)),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert_eq!(status, Some(1003));
    broker.wait_for_log("text frame");

    // An upgrade request larger than websockets_headers_size: 431 and closed.
    let mut raw = TcpStream::connect(("127.0.0.1", broker.port)).unwrap();
    let cookie = "c".repeat(4000);
    write!(
        raw,
        "GET /mqtt HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    raw.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut answer = String::new();
    let _ = raw.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    broker.wait_for_log("larger than websockets_headers_size");

    // A client that wants another subprotocol is refused.
    let mut request = format!("ws://127.0.0.1:{}/", broker.port)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "chat".parse().unwrap());
    let tcp = TcpStream::connect(("127.0.0.1", broker.port)).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    assert!(tungstenite::client(request, tcp).is_err());

    // Plain MQTT on the WebSocket port is not an upgrade request: 400 and closed.
    let mut plain = TcpStream::connect(("127.0.0.1", broker.port)).unwrap();
    plain
        .write_all(&bytes(&Packet::Connect(Box::new(connect_packet(
            ProtocolVersion::V311,
            "plain",
            true,
            60,
        )))))
        .unwrap();
    plain.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(answer.starts_with(b"HTTP/1.1 400"), "{answer:?}");

    // Nobody else noticed.
    bystander.send(&Packet::PingReq);
    assert!(matches!(bystander.recv(), Packet::PingResp));
}

#[test]
fn paho_mqtt_over_websockets() {
    let broker = broker("ws-paho", "");
    paho_passes(&broker, &["--websockets"]);
}

#[test]
fn midge_tools_over_websockets() {
    let broker = broker("ws-tools", "");
    let url = format!("ws://127.0.0.1:{}/tools/ws", broker.port);
    let sub = {
        let url = url.clone();
        std::thread::spawn(move || {
            Command::new(env!("CARGO_BIN_EXE_midge-sub"))
                .args(["-L", &url, "-C", "1", "-W", "10", "-i", "ws-tool-sub"])
                .output()
                .unwrap()
        })
    };
    // Subscribed (the broker logs each subscription) before the message goes.
    broker.wait_for_log("ws-tool-sub 0 tools/ws");
    let out = Command::new(env!("CARGO_BIN_EXE_midge-pub"))
        .args(["-L", &url, "-m", "framed", "-q", "1"])
        .output()
        .unwrap();
    succeeded(&out);
    let got = sub.join().unwrap();
    assert_eq!(succeeded(&got), "framed\n");
}

/// Before its CONNECT is accepted, a WebSocket client's frame may be only as large as a
/// CONNECT may be (512 KiB): a larger one closes the connection before it is stored (issue
/// 28: the frame limit was max_packet_size, 256 MiB, for a client with no credentials).
/// Once connected, frames up to max_packet_size are taken.
#[test]
fn frames_before_connect_are_bounded_like_a_connect() {
    let broker = broker("ws-preconnect", "listener 0 127.0.0.1\n");
    let mut early = ws_connect(broker.port, "mqtt").unwrap();
    // The header of a masked binary frame of 100 MB, and its first megabyte: the broker
    // would buffer it all waiting for the rest.
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend_from_slice(&(100u64 << 20).to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    let tcp = early.get_mut();
    tcp.write_all(&frame).unwrap();
    let _ = tcp.write_all(&vec![0u8; 1 << 20]);
    tcp.set_read_timeout(Some(std::time::Duration::from_millis(50)))
        .unwrap();
    // Closed at once, not at the connect timeout (10 s).
    let until = Instant::now() + std::time::Duration::from_secs(3);
    loop {
        assert!(
            Instant::now() < until,
            "a 100 MB frame before CONNECT was waited for"
        );
        match early.read() {
            Err(tungstenite::Error::Io(e)) if read_again(&e) => {}
            Err(_) => break,
            Ok(_) => {}
        }
    }
    let mut ws = ws_connect(broker.port, "mqtt").unwrap();
    let connect = connect_packet(ProtocolVersion::V311, "ws-big", true, 60);
    let mut buf = send_connect(&mut ws, connect);
    ws_subscribe(&mut ws, &mut buf, "big");
    let payload = vec![7u8; 600 * 1024];
    let publish = publish("big", &payload, QoS::AtMostOnce, 0, false);
    ws.send(Message::Binary(bytes(&publish).into())).unwrap();
    let got = recv_packets(&mut ws, &mut buf, 1);
    let Packet::Publish(p) = &got[0] else {
        panic!("expected the PUBLISH back, got {got:?}")
    };
    assert_eq!(p.payload.len(), payload.len());
}

/// A large message to WebSocket subscribers is framed a slice at a time as each one reads,
/// from the one shared message, not copied and framed whole for each in one turn (before:
/// 50 MB to four subscribers held a shard for 280 ms, and the broker 525 MiB). Four
/// subscribers of a 16 MiB message each get it whole, and the broker's peak memory grows by
/// less than twice the message (before, each subscriber was framed its own copy, sent as one
/// message larger than most WebSocket clients take by default).
#[test]
fn a_large_message_is_framed_as_websocket_subscribers_read() {
    const SIZE: usize = 16 << 20;
    let broker = broker("ws-large-framed", "listener 0 127.0.0.1\n");
    let readers: Vec<_> = (0..4)
        .map(|i| {
            let mut ws = ws_connect(broker.port, "mqtt").unwrap();
            let mut buf = send_connect(
                &mut ws,
                connect_packet(ProtocolVersion::V311, &format!("sub-{i}"), true, 60),
            );
            ws_subscribe(&mut ws, &mut buf, "big");
            std::thread::spawn(move || {
                match recv_packets_of(&mut ws, &mut buf, 1, 32 << 20).remove(0) {
                    Packet::Publish(p) => p.payload,
                    other => panic!("expected PUBLISH, got {other:?}"),
                }
            })
        })
        .collect();
    // The publisher on the plain listener: what is measured is the sending.
    let mut publisher = Raw::connect(plain_port(&broker), "publisher");
    let before = common::hostile::peak_rss_kib(broker.pid());
    let payload = vec![0x5A; SIZE];
    publisher.send(&publish("big", &payload, QoS::AtMostOnce, 0, false));
    for reader in readers {
        assert!(reader.join().unwrap() == payload);
    }
    common::hostile::assert_peak_grew_under(broker.pid(), before, SIZE, 2.0);
}

/// A large packet in one WebSocket frame goes to the connection's input as it arrives,
/// unmasked a read at a time, not gathered whole first (before: tungstenite gathered the
/// frame, doubling as it came, and it was then copied: a 100 MB frame held three times its
/// size and a shard for 130 ms). A 17 MiB PUBLISH in one frame raises the broker's peak
/// memory by less than one and a half times itself, and is delivered whole.
#[test]
fn a_large_frame_is_read_as_it_arrives() {
    const SIZE: usize = 17 << 20;
    let broker = broker("ws-large-frame", "listener 0 127.0.0.1\n");
    let mut subscriber = Raw::connect(plain_port(&broker), "subscriber");
    subscriber.subscribe(&[("big", QoS::AtMostOnce)]);
    let mut publisher = ws_connect(broker.port, "mqtt").unwrap();
    send_connect(
        &mut publisher,
        connect_packet(ProtocolVersion::V311, "publisher", true, 60),
    );
    let before = common::hostile::peak_rss_kib(broker.pid());
    let payload = vec![0x5A; SIZE];
    publisher
        .send(Message::Binary(
            bytes(&publish("big", &payload, QoS::AtMostOnce, 0, false)).into(),
        ))
        .unwrap();
    assert!(subscriber.recv_publish().payload == payload);
    common::hostile::assert_peak_grew_under(broker.pid(), before, SIZE, 1.5);
}

/// A client that sends pings and never reads their pongs, without a CONNECT, backs up like
/// any output: past 64 KiB waiting for it, it is no longer read (before: every pong was
/// queued, as fast as the client sent pings, until its connect timeout).
#[test]
fn pings_never_read_back_up_and_stop_being_read() {
    let broker = broker("ws-ping-flood", "");
    let mut ws = ws_connect(broker.port, "mqtt").unwrap();
    let stream = ws.get_mut();
    stream
        .set_write_timeout(Some(std::time::Duration::from_millis(500)))
        .unwrap();
    // Masked (with a zero key) pings of 125 bytes.
    let ping: Vec<u8> = [&[0x89, 0x80 | 125, 0, 0, 0, 0][..], &[b'p'; 125]].concat();
    let pings = ping.repeat(8 * 1024);
    let mut written = 0usize;
    while written < 64 << 20 {
        match stream.write(&pings) {
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    assert!(
        written < 64 << 20,
        "the broker kept reading: {written} bytes"
    );
    broker.wait_for_log("client <unknown> is not reading what it is sent");
}
