//! A subscriber that stops reading: QoS 0 to it is dropped and counted, the others keep
//! receiving everything, and the broker's memory stays bounded.

mod common;

use common::*;
use midge::codec::*;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
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
            let until = Instant::now() + DEADLINE;
            while i - received.load(Ordering::Acquire) > 2000 {
                assert!(
                    Instant::now() < until,
                    "the reader stopped at {}",
                    received.load(Ordering::Acquire)
                );
                std::thread::sleep(Duration::from_millis(1));
            }
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
