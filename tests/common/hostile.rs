//! What the hostile-client tests share (`broker_hostile*.rs`): they measure the broker's
//! memory and another client's round trip.

use super::Raw;
use midge::codec::Packet;
use std::time::{Duration, Instant};

/// mimalloc keeps freed pages for a while before giving them back; purging at once makes
/// RSS show what the broker holds, not what its allocator caches.
pub const PURGE_AT_ONCE: (&str, &str) = ("MIMALLOC_PURGE_DELAY", "0");

/// The tests of one file measure the broker's memory and another client's round trip: one at a time,
/// so that what one measures is not another's load (two cores run the whole suite).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// The longest another client may wait while a hostile one is handled: these tests run a
/// debug build on a 2-core machine beside the test harness (one round trip took 55 ms
/// there in CI's conditions), and the stalls they guard against took 54-145 ms in a release
/// build before their fixes, a debug build being several times slower.
pub const STALL_MAX: std::time::Duration = std::time::Duration::from_millis(150);

/// A PINGREQ's round trip on an ordinary client, which must stay short.
pub fn ping_round_trip(client: &mut Raw) -> Duration {
    let started = Instant::now();
    client.send(&Packet::PingReq);
    match client.recv() {
        Packet::PingResp => started.elapsed(),
        other => panic!("expected PINGRESP, got {other:?}"),
    }
}

/// Asserts that process `pid`'s peak resident memory grew by less than `times` the `size`
/// bytes of what it was given, since it was `before_kib` (`peak_rss_kib`).
pub fn assert_peak_grew_under(pid: u32, before_kib: u64, size: usize, times: f64) {
    let grown = peak_rss_kib(pid) - before_kib;
    let size_kib = size as u64 / 1024;
    assert!(
        (grown as f64) < times * size_kib as f64,
        "peak RSS grew by {grown} KiB for {size_kib} KiB (bound: {times} times)"
    );
}

/// The most memory process `pid` has held resident since it started (VmHWM), in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A 5.0 PUBLISH, QoS 1, topic "t", packet id 1, Payload Format Indicator 1, payload FF FF:
/// answered with PUBACK 0x99 and a Reason String, larger than itself.
pub const NOT_UTF8_PUBLISH: [u8; 12] = [0x32, 10, 0, 1, b't', 0, 1, 2, 0x01, 1, 0xFF, 0xFF];

/// 8,192 of them, to write over and over.
pub fn not_utf8_publishes() -> Vec<u8> {
    NOT_UTF8_PUBLISH.repeat(8192)
}
