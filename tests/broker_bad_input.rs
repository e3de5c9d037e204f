//! Bad input: garbage, truncated packets, oversize lengths, CONNECT floods. Each gets a clean
//! disconnect and a log line, and leaves every other client unaffected.

mod common;

use common::*;
use midge::codec::*;
use std::io::Read;

/// A subscriber that must keep working through whatever the test throws at the broker.
fn bystander(broker: &Broker) -> (Raw, Raw) {
    let mut sub = Raw::connect(broker.port, "bystander");
    sub.subscribe(&[("still/here", QoS::AtLeastOnce)]);
    let publisher = Raw::connect(broker.port, "bystander-pub");
    (sub, publisher)
}

fn still_works(sub: &mut Raw, publisher: &mut Raw, n: u16) {
    publisher.send(&publish(
        "still/here",
        &n.to_be_bytes(),
        QoS::AtLeastOnce,
        n,
        false,
    ));
    assert!(matches!(publisher.recv(), Packet::PubAck(_)));
    let p = sub.recv_publish();
    assert_eq!(&p.payload[..], &n.to_be_bytes());
    sub.send(&Packet::PubAck(PubResponse::new(p.packet_id)));
}

#[test]
fn garbage_is_refused_and_logged() {
    Broker::each_threads(&[], |broker| {
        let (mut sub, mut publisher) = bystander(broker);
        // Before CONNECT: not a CONNECT.
        let mut g = Raw::open(broker.port, ProtocolVersion::V311);
        g.send_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(g.expect_closed().is_empty());
        // After CONNECT: a reserved packet type, bad flags, an invalid UTF-8 topic.
        for (i, bytes) in [
            &[0x00u8, 0x00][..],
            &[0xC3, 0x00],
            &[0x30, 0x05, 0x00, 0x02, 0xC3, 0x28, b'x'],
        ]
        .iter()
        .enumerate()
        {
            let mut c = Raw::connect(broker.port, &format!("garbage-{i}"));
            c.send_bytes(bytes);
            assert!(c.expect_closed().is_empty());
            broker.wait_for_log(&format!(
                "Client garbage-{i} disconnected due to malformed packet"
            ));
        }
        still_works(&mut sub, &mut publisher, 1);
    });
}

#[test]
fn truncated_packets_and_dropped_sockets() {
    Broker::each_threads(&[], |broker| {
        let (mut sub, mut publisher) = bystander(broker);
        // A PUBLISH declaring 100 bytes, 5 sent, then the socket closes.
        let mut c = Raw::connect(broker.port, "truncated");
        c.send_bytes(&[0x30, 100, 0x00, 0x03, b'a']);
        drop(c);
        broker.wait_for_log("Client truncated closed its connection.");
        // A CONNECT cut short, then closed.
        let mut c = Raw::open(broker.port, ProtocolVersion::V311);
        c.send_bytes(&[0x10, 0x0D, 0, 4, b'M']);
        drop(c);
        still_works(&mut sub, &mut publisher, 2);
    });
}

#[test]
fn an_oversize_packet_is_refused_before_it_arrives() {
    let conf = config_file("size", "max_packet_size 1024\n");
    let broker = Broker::start(&["-c", &conf]);
    let (mut sub, mut publisher) = bystander(&broker);
    // 3.1.1: the declared 1 MiB is refused as soon as the fixed header is read.
    let mut big = Raw::connect(broker.port, "big");
    big.send_bytes(&[0x30, 0x80, 0x80, 0x40]);
    assert!(big.expect_closed().is_empty());
    broker.wait_for_log("Client big disconnected due to oversize packet: packet of 1048580 bytes is larger than the maximum of 1024.");
    // 5.0: the limit is announced in CONNACK, and breaking it gets DISCONNECT 0x95.
    let (mut big5, ack) = Raw::connect_with(
        broker.port,
        connect_packet(ProtocolVersion::V5, "big5", true, 60),
    );
    assert_eq!(ack.properties.maximum_packet_size, Some(1024));
    big5.send_bytes(&[0x30, 0x80, 0x80, 0x40]);
    assert_eq!(
        without_reason_strings(big5.expect_closed()),
        vec![Packet::Disconnect(Disconnect::with_reason(
            ReasonCode::PacketTooLarge
        ))]
    );
    still_works(&mut sub, &mut publisher, 3);
}

#[test]
fn a_connect_flood_is_served_and_harms_nobody() {
    Broker::each_threads(&[], |broker| {
        let (mut sub, mut publisher) = bystander(broker);
        let mut flood: Vec<std::net::TcpStream> = Vec::new();
        let connect = Packet::Connect(Box::new(connect_packet(
            ProtocolVersion::V311,
            "",
            true,
            60,
        )))
        .to_bytes(ProtocolVersion::V311)
        .unwrap();
        for _ in 0..300 {
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", broker.port)).unwrap();
            std::io::Write::write_all(&mut stream, &connect).unwrap();
            flood.push(stream);
        }
        still_works(&mut sub, &mut publisher, 4);
        for stream in &mut flood {
            stream.set_read_timeout(Some(DEADLINE)).unwrap();
            let mut connack = [0u8; 4];
            stream.read_exact(&mut connack).unwrap();
            assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
        }
        drop(flood);
        still_works(&mut sub, &mut publisher, 5);
    });
}
