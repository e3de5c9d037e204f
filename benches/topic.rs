//! Topic matching against tries of 10 k and 1 M subscriptions with IoT-shaped filters, and
//! applying 100 k subscribes in batches to tries of those sizes (the cost per subscribe must
//! not grow with the trie).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use midge::codec::SubscriptionOptions;
use midge::topic::*;
use std::hint::black_box;
use std::sync::Arc;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn sub(session: u64) -> Subscription {
    Subscription {
        shard: (session % 2) as u16,
        options: SubscriptionOptions::default(),
        identifier: None,
    }
}

/// `n` subscriptions: all but 200 are one device each on `devices/{id}/telemetry`; 100
/// dashboards on `devices/+/status`, 50 per-device `devices/{id}/#`, 50 loggers on `#`.
fn build(n: u64) -> Arc<Node> {
    let tree = SubscriptionTree::new();
    let mut w = TreeWriter::new(tree.clone());
    let mut add = |filter: String, session: u64| {
        w.subscribe(
            parse_filter(&filter).unwrap(),
            SessionId::new(session + 1),
            sub(session),
        );
    };
    for id in 0..n - 200 {
        add(format!("devices/{id}/telemetry"), id);
    }
    for d in 0..100 {
        add("devices/+/status".into(), n + d);
    }
    for d in 0..50 {
        add(format!("devices/{d}/#"), n + 100 + d);
    }
    for d in 0..50 {
        add("#".into(), n + 150 + d);
    }
    w.publish();
    tree.load_full()
}

fn matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("match");
    group.throughput(Throughput::Elements(1));
    for (label, n) in [("10k", 10_000u64), ("1M", 1_000_000)] {
        let root = build(n);
        let tree = SubscriptionTree::with_root(root);
        let mut id = 0u64;
        group.bench_function(format!("telemetry_{label}"), |b| {
            b.iter(|| {
                id = (id + 7919) % (n - 200);
                let topic = format!("devices/{id}/telemetry");
                let mut hits = 0u32;
                tree.load()
                    .for_each_match(black_box(&topic), &mut |_| hits += 1);
                debug_assert!(hits >= 51);
                hits
            })
        });
        group.bench_function(format!("status_{label}"), |b| {
            b.iter(|| {
                id = (id + 7919) % (n - 200);
                let topic = format!("devices/{id}/status");
                let mut hits = 0u32;
                tree.load()
                    .for_each_match(black_box(&topic), &mut |_| hits += 1);
                hits
            })
        });
    }
    // Fan-out: one topic, 10 k subscribers on the same filter. Throughput here is in
    // subscribers visited, the cost that grows with fan-out.
    let tree = SubscriptionTree::new();
    let mut w = TreeWriter::new(tree.clone());
    for session in 0..10_000 {
        w.subscribe(
            parse_filter("dashboards/telemetry").unwrap(),
            SessionId::new(session + 1),
            sub(session),
        );
    }
    w.publish();
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("fanout_10k_subscribers", |b| {
        b.iter(|| {
            let mut shards = [0u32; 2];
            tree.load()
                .for_each_match(black_box("dashboards/telemetry"), &mut |m| {
                    if let Match::Subscriber(_, s) = m {
                        shards[s.shard as usize] += 1;
                    }
                });
            shards
        })
    });
    group.finish();
}

fn subscribing(c: &mut Criterion) {
    const SUBSCRIBES: u64 = 100_000;
    const BATCH: u64 = 1_000;
    let mut group = c.benchmark_group("subscribe_100k_in_batches_of_1k");
    group.sample_size(10);
    group.throughput(Throughput::Elements(SUBSCRIBES));
    for (label, n) in [("onto_10k", 10_000u64), ("onto_1M", 1_000_000)] {
        let root = build(n);
        let filters: Vec<String> = (0..SUBSCRIBES)
            .map(|i| format!("devices/{}/telemetry", n + i))
            .collect();
        group.bench_function(label, |b| {
            b.iter_batched(
                || TreeWriter::new(SubscriptionTree::with_root(root.clone())),
                |mut w| {
                    for (i, filter) in filters.iter().enumerate() {
                        w.subscribe(
                            parse_filter(filter).unwrap(),
                            SessionId::new(n + i as u64 + 1),
                            sub(i as u64),
                        );
                        if (i as u64 + 1).is_multiple_of(BATCH) {
                            w.publish();
                        }
                    }
                    w
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, matching, subscribing);
criterion_main!(benches);
