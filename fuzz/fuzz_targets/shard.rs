//! Fuzzes a whole broker: two shards on the simulated backend, stepped on one thread, fed
//! arbitrary bytes from many clients (connects, writes split anywhere, closes, time passing).
//! Whatever arrives, no shard panics, and the shards' invariants hold after every step
//! (`Shard::check_invariants`).
//!
//! The input is read as a list of operations: one byte of kind, one of client, then for
//! writes one of length and that many bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use midge::config::Config;
use midge::shard::clock::ManualClock;
use midge::shard::io::sim::SimNet;
use midge::shard::{Shard, Shared};
use midge::types::ConnId;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SHARDS: usize = 2;
const CLIENTS: usize = 8;

fuzz_target!(|data: &[u8]| {
    let mut config = Config::default();
    config.listeners_with_ports(&[1883]);
    // Small limits, so that the fuzzer reaches them.
    config.packet_size_max = 2048;
    config.inflight_max = 4;
    config.queued_max = 16;
    // Every client bound within reach: what waits for a client (QoS 0 dropped, QoS 1/2
    // queued, reading held), the broker's memory_limit (a quarter of it bounds partial
    // CONNECTs), subscriptions by count.
    config.client_write_max = 4096;
    config.memory_limit = 16 * 1024;
    config.subscriptions_per_client_max = 8;
    let nets: Vec<SimNet> = (0..SHARDS).map(|_| SimNet::new()).collect();
    let wakers = (0..SHARDS).map(|_| SimNet::waker()).collect();
    let clock = Arc::new(ManualClock::new());
    let (shared, receivers) =
        Shared::with_clock(config, wakers, vec![0], Vec::new(), clock.clone());
    let mut shards: Vec<_> = receivers
        .into_iter()
        .enumerate()
        .map(|(id, rx)| Shard::new(id, shared.clone(), nets[id].backend(), rx))
        .collect();
    let mut ticks = vec![Instant::now(); SHARDS];
    let mut conns: Vec<Option<(usize, ConnId)>> = vec![None; CLIENTS];

    let mut input = data;
    let mut next = |n: usize| -> Option<&[u8]> {
        if input.len() < n {
            return None;
        }
        let (taken, rest) = input.split_at(n);
        input = rest;
        Some(taken)
    };
    while let Some(op) = next(2) {
        let (kind, client) = (op[0], usize::from(op[1]) % CLIENTS);
        match kind % 6 {
            // Connect (again): on the shard the kind byte picks.
            0 => {
                let shard = usize::from(kind / 6) % SHARDS;
                conns[client] = Some((shard, nets[shard].connect()));
            }
            // Write bytes.
            1 | 2 => {
                let Some(len) = next(1) else { break };
                let Some(bytes) = next(usize::from(len[0])) else { break };
                if let Some((shard, conn)) = conns[client] {
                    nets[shard].send(conn, bytes);
                }
            }
            // Go away.
            3 => {
                if let Some((shard, conn)) = conns[client].take() {
                    nets[shard].close(conn);
                }
            }
            // Time passes.
            4 => clock.advance(Duration::from_millis(u64::from(kind) * 40)),
            // Read what came (a client that stops reading is the default).
            _ => {
                if let Some((shard, conn)) = conns[client] {
                    let _ = nets[shard].take(conn);
                }
            }
        }
        let shard = usize::from(op[1]) % SHARDS;
        shards[shard].turn(&mut ticks[shard]);
        for s in &shards {
            s.check_invariants();
        }
    }
    // Let everything in flight between the shards land, still checking.
    for _ in 0..8 {
        for (i, s) in shards.iter_mut().enumerate() {
            s.turn(&mut ticks[i]);
        }
        for s in &shards {
            s.check_invariants();
        }
    }
});
