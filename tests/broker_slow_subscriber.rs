//! A subscriber that stops reading: QoS 0 to it is dropped and counted, the others keep
//! receiving everything, and the broker's memory stays bounded.

mod common;

use common::*;
use midge::codec::*;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Waits (up to the deadline) until the reader, at `received`, is at most `ahead` messages
/// behind message `sent`.
fn stay_ahead_by_at_most(received: &AtomicU32, sent: u32, ahead: u32) {
    let until = Instant::now() + DEADLINE;
    while sent - received.load(Ordering::Acquire) > ahead {
        assert!(
            Instant::now() < until,
            "the reader stopped at {}",
            received.load(Ordering::Acquire)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_stalled_subscriber_costs_bounded_memory_and_slows_nobody() {
    // 100 MiB pass the stalled subscriber: far more than the broker may hold for it.
    let messages: u32 = 100_000;
    const PAYLOAD: usize = 1024;
    for threads in ["1", "2"] {
        // mimalloc keeps freed pages for a while before giving them back; purging at once
        // makes RSS show what the broker holds, not what its allocator caches.
        let broker =
            &Broker::start_with_env(&["--threads", threads], &[("MIMALLOC_PURGE_DELAY", "0")]);
        // Subscribes, then never reads again.
        let mut stalled = Raw::connect(broker.port, "stalled");
        stalled.subscribe(&[("firehose", QoS::AtMostOnce)]);
        let mut reader = Raw::connect(broker.port, "reader");
        reader.subscribe(&[("firehose", QoS::AtMostOnce)]);
        let port = broker.port;
        let received = Arc::new(AtomicU32::new(0));
        let progress = received.clone();
        let reading = std::thread::spawn(move || {
            let mut count = 0u32;
            while count < messages {
                let p = reader.recv_publish();
                assert_eq!(p.payload.len(), PAYLOAD);
                count += 1;
                progress.store(count, Ordering::Release);
            }
            count
        });
        let before = rss_kib(broker.pid());
        let mut publisher = Raw::connect(port, "publisher");
        let payload = vec![0x5A; PAYLOAD];
        for i in 0..messages {
            // Keep the publisher at most 2 MiB ahead of the reader, below the 4 MiB a
            // client may have waiting: the reader is never the slow one here.
            stay_ahead_by_at_most(&received, i, 2000);
            publisher.send(&publish("firehose", &payload, QoS::AtMostOnce, 0, false));
        }
        // The reader got every message.
        assert_eq!(reading.join().unwrap(), messages);
        let after = rss_kib(broker.pid());
        // The stalled client's buffer is bounded (4 MiB by default) however much is sent.
        assert!(
            after < before + 32 * 1024,
            "RSS grew from {before} KiB to {after} KiB"
        );
        drop(stalled);
    }
}

/// A stalled subscriber with a small receive buffer: the kernel holds little for it, so what
/// the broker keeps for it shows in the broker's memory.
fn stalled_client(port: u16, id: &str, topic: &str) -> std::net::TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    socket.connect(&addr.into()).unwrap();
    let mut stream: std::net::TcpStream = socket.into();
    let connect = Packet::Connect(Box::new(connect_packet(ProtocolVersion::V311, id, true, 0)));
    let mut bytes = connect.to_bytes(ProtocolVersion::V311).unwrap().to_vec();
    bytes.extend_from_slice(
        &subscribe(1, &[(topic, QoS::AtMostOnce)])
            .to_bytes(ProtocolVersion::V311)
            .unwrap(),
    );
    std::io::Write::write_all(&mut stream, &bytes).unwrap();
    // CONNACK (4 bytes) and SUBACK (5 bytes); then it never reads again.
    let mut acks = [0u8; 9];
    std::io::Read::read_exact(&mut stream, &mut acks).unwrap();
    assert_eq!((acks[0], acks[4]), (0x20, 0x90));
    stream
}

#[test]
fn many_stalled_subscribers_hold_no_more_than_memory_limit() {
    const STALLED: usize = 64;
    const MESSAGES: u32 = 6_000;
    const PAYLOAD: usize = 1024;
    // Without memory_limit each stalled subscriber could hold its own 4 MiB: 256 MiB here.
    let conf = config_file(
        "memory-limit",
        "listener 0 127.0.0.1\nallow_anonymous true\nmemory_limit 16000000\n",
    );
    let broker = Broker::spawn_env(&["-c", &conf], &[("MIMALLOC_PURGE_DELAY", "0")]);
    let port = broker.port;
    let stalled: Vec<_> = (0..STALLED)
        .map(|i| stalled_client(port, &format!("stalled-{i}"), "flood"))
        .collect();
    let mut reader = Raw::connect(port, "reader");
    reader.subscribe(&[("flood", QoS::AtMostOnce)]);
    let received = Arc::new(AtomicU32::new(0));
    let progress = received.clone();
    let reading = std::thread::spawn(move || {
        for count in 1..=MESSAGES {
            let p = reader.recv_publish();
            assert_eq!(p.payload.len(), PAYLOAD);
            progress.store(count, Ordering::Release);
        }
    });
    let before = rss_kib(broker.pid());
    let mut publisher = Raw::connect(port, "publisher");
    let payload = vec![0x5A; PAYLOAD];
    for i in 0..MESSAGES {
        // The reader is never the slow one: the publisher stays at most 48 messages
        // (48 KiB) ahead of it, less than the 64 KiB a client may have waiting while the
        // broker is over memory_limit.
        stay_ahead_by_at_most(&received, i, 48);
        publisher.send(&publish("flood", &payload, QoS::AtMostOnce, 0, false));
    }
    // The healthy subscriber gets every message.
    reading.join().unwrap();
    let after = rss_kib(broker.pid());
    assert!(
        after < before + 48 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    drop(stalled);
}
