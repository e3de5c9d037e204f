//! The subscription trie against a brute-force model, snapshot isolation, memory release, and
//! readers matching while a writer publishes batches.

use midge::codec::SubscriptionOptions;
use midge::topic::*;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};

fn sub(shard: u16, tag: u32) -> Subscription {
    Subscription {
        shard,
        options: SubscriptionOptions::default(),
        identifier: NonZeroU32::new(tag),
    }
}

/// What a topic matched, in a form that compares regardless of order.
#[derive(Debug, Default, PartialEq, Eq)]
struct Seen {
    subscribers: BTreeSet<(u64, u32)>,
    groups: BTreeSet<(String, Vec<(u64, u32)>)>,
}

fn tag(s: &Subscription) -> u32 {
    s.identifier.map_or(0, |n| n.get())
}

fn seen_in_trie(root: &Node, topic: &str) -> Seen {
    let mut seen = Seen::default();
    let mut subscribers = Vec::new();
    root.for_each_match(topic, &mut |m| match m {
        Match::Subscriber(session, s) => subscribers.push((session.get(), tag(s))),
        Match::Group { name, members, .. } => {
            let mut list: Vec<_> = members.iter().map(|(id, s)| (id.get(), tag(s))).collect();
            list.sort();
            seen.groups.insert((name.to_string(), list));
        }
    });
    let count = subscribers.len();
    seen.subscribers = subscribers.into_iter().collect();
    assert_eq!(
        count,
        seen.subscribers.len(),
        "a (session, filter) pair matched twice"
    );
    seen
}

type Model = BTreeMap<(String, u64), u32>;

fn seen_in_model(model: &Model, topic: &str) -> Seen {
    let mut seen = Seen::default();
    let mut groups: BTreeMap<(String, String), Vec<(u64, u32)>> = BTreeMap::new();
    for ((full, session), &tag) in model {
        let f = parse_filter(full).unwrap();
        if !matches(f.filter(), topic) {
            continue;
        }
        match f.group() {
            None => {
                seen.subscribers.insert((*session, tag));
            }
            Some(g) => groups
                .entry((g.to_string(), f.filter().to_string()))
                .or_default()
                .push((*session, tag)),
        }
    }
    for ((g, _), mut members) in groups {
        members.sort();
        seen.groups.insert((g, members));
    }
    seen
}

fn filter() -> impl Strategy<Value = String> {
    let level = prop_oneof![
        Just("a"),
        Just("b"),
        Just(""),
        Just("$x"),
        Just("+"),
        Just("#")
    ];
    let plain = proptest::collection::vec(level, 1..5)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("valid filter", |f| validate_filter(f).is_ok());
    prop_oneof![
        4 => plain.clone(),
        1 => (prop_oneof![Just("g"), Just("h")], plain).prop_map(|(g, f)| format!("$share/{g}/{f}")),
    ]
}

fn topic() -> impl Strategy<Value = String> {
    let level = prop_oneof![Just("a"), Just("b"), Just(""), Just("$x"), Just("c")];
    proptest::collection::vec(level, 1..5).prop_map(|levels| levels.join("/"))
}

#[derive(Debug, Clone)]
enum Op {
    Subscribe(String, u64),
    Unsubscribe(String, u64),
    Publish,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (filter(), 1..7u64).prop_map(|(f, s)| Op::Subscribe(f, s)),
        3 => (filter(), 1..7u64).prop_map(|(f, s)| Op::Unsubscribe(f, s)),
        1 => Just(Op::Publish),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn trie_matches_brute_force(ops in proptest::collection::vec(op(), 1..60), topics in proptest::collection::vec(topic(), 1..20)) {
        let tree = SubscriptionTree::new();
        let mut writer = TreeWriter::new(tree.clone());
        let mut model = Model::new();
        let mut published = model.clone();
        for (i, op) in ops.iter().enumerate() {
            match op {
                Op::Subscribe(f, s) => {
                    let old = writer.subscribe(parse_filter(f).unwrap(), SessionId::new(*s), sub(0, i as u32 + 1));
                    let model_old = model.insert((f.clone(), *s), i as u32 + 1);
                    prop_assert_eq!(old.map(|o| tag(&o)), model_old);
                }
                Op::Unsubscribe(f, s) => {
                    let old = writer.unsubscribe(parse_filter(f).unwrap(), SessionId::new(*s));
                    prop_assert_eq!(old.map(|o| tag(&o)), model.remove(&(f.clone(), *s)));
                }
                Op::Publish => {
                    writer.publish();
                    published = model.clone();
                }
            }
            prop_assert_eq!(writer.len(), model.len());
        }
        // Readers see the last published batch, never the unpublished changes.
        let snapshot = tree.load_full();
        prop_assert_eq!(snapshot.count(), published.len());
        for t in &topics {
            prop_assert_eq!(seen_in_trie(&snapshot, t), seen_in_model(&published, t), "published, topic {:?}", t);
            prop_assert_eq!(seen_in_trie(writer.working(), t), seen_in_model(&model, t), "working, topic {:?}", t);
        }
        writer.publish();
        // The old snapshot is unchanged by the new publication.
        for t in &topics {
            prop_assert_eq!(seen_in_trie(&snapshot, t), seen_in_model(&published, t));
            prop_assert_eq!(seen_in_trie(&tree.load(), t), seen_in_model(&model, t));
        }
        // Removing everything leaves an empty trie.
        for (f, s) in model.keys() {
            prop_assert!(writer.unsubscribe(parse_filter(f).unwrap(), SessionId::new(*s)).is_some());
        }
        prop_assert_eq!(writer.working().count(), 0);
    }
}

#[test]
fn dollar_topics_and_parent_levels() {
    let tree = SubscriptionTree::new();
    let mut w = TreeWriter::new(tree.clone());
    for (i, f) in [
        "#",
        "+/monitor/Clients",
        "$SYS/#",
        "$SYS/monitor/+",
        "sport/#",
        "sport/+",
    ]
    .iter()
    .enumerate()
    {
        w.subscribe(
            parse_filter(f).unwrap(),
            SessionId::new(i as u64 + 1),
            sub(0, i as u32 + 1),
        );
    }
    w.publish();
    let ids = |topic: &str| {
        let mut v: Vec<u64> = seen_in_trie(&tree.load(), topic)
            .subscribers
            .iter()
            .map(|s| s.0)
            .collect();
        v.sort();
        v
    };
    // [MQTT-4.7.2-1] wildcard-first filters never match '$' topics.
    assert_eq!(ids("$SYS/monitor/Clients"), vec![3, 4]);
    // "sport/#" matches "sport" itself; "sport/+" does not.
    assert_eq!(ids("sport"), vec![1, 5]);
    assert_eq!(ids("sport/"), vec![1, 5, 6]);
}

#[test]
fn superseded_snapshots_are_freed() {
    let tree = SubscriptionTree::new();
    let mut w = TreeWriter::new(tree.clone());
    w.subscribe(parse_filter("a/b").unwrap(), SessionId::new(1), sub(0, 1));
    w.publish();
    let old = Arc::downgrade(&tree.load_full());
    assert!(old.upgrade().is_some());
    w.subscribe(parse_filter("a/c").unwrap(), SessionId::new(1), sub(0, 2));
    w.publish();
    assert!(
        old.upgrade().is_none(),
        "nothing holds the old root, so it is gone"
    );
}

#[test]
fn a_change_copies_only_its_path() {
    let tree = SubscriptionTree::new();
    let mut w = TreeWriter::new(tree.clone());
    for i in 1..=1000u64 {
        w.subscribe(
            parse_filter(&format!("devices/{i}/telemetry")).unwrap(),
            SessionId::new(i),
            sub(0, 1),
        );
    }
    w.subscribe(
        parse_filter("other/x").unwrap(),
        SessionId::new(1),
        sub(0, 1),
    );
    w.publish();
    let before = tree.load_full();
    w.subscribe(
        parse_filter("devices/5/telemetry").unwrap(),
        SessionId::new(77),
        sub(0, 1),
    );
    w.publish();
    let after = tree.load_full();
    // An untouched subtree is shared, not copied: its subscription seen through both roots
    // is the very same object.
    let address = |root: &Node, topic: &str| {
        let mut found = None;
        root.for_each_match(topic, &mut |m| {
            if let Match::Subscriber(_, s) = m {
                found = Some(s as *const Subscription);
            }
        });
        found.unwrap()
    };
    assert_eq!(address(&before, "other/x"), address(&after, "other/x"));
    assert_eq!(
        address(&before, "devices/6/telemetry"),
        address(&after, "devices/6/telemetry")
    );
    assert_eq!(
        seen_in_trie(&after, "devices/5/telemetry")
            .subscribers
            .len(),
        2
    );
    assert_eq!(
        seen_in_trie(&before, "devices/5/telemetry")
            .subscribers
            .len(),
        1
    );
}

#[test]
fn readers_see_whole_batches_while_the_writer_publishes() {
    const BATCH: u64 = 50;
    const BATCHES: u64 = 200;
    const READERS: usize = 2;
    let tree = SubscriptionTree::new();
    let done = Arc::new(AtomicBool::new(false));
    let removing = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(READERS + 1));
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let (tree, done, start, removing) =
                (tree.clone(), done.clone(), start.clone(), removing.clone());
            std::thread::spawn(move || {
                start.wait();
                let (mut loads, mut last) = (0u64, 0u64);
                // Bounded: stops when the writer is done, or after a fixed number of loads.
                while !done.load(Ordering::Acquire) && loads < 50_000_000 {
                    let snapshot = tree.load();
                    let mut n = 0u64;
                    snapshot.for_each_match("load/7/x", &mut |_| n += 1);
                    assert_eq!(n % BATCH, 0, "a reader saw half a batch: {n}");
                    // Read after the snapshot: if removals had not begun then, this snapshot
                    // is from the adding phase, where counts only grow.
                    if !removing.load(Ordering::Acquire) {
                        assert!(n >= last, "went back while adding: {last} -> {n}");
                        last = n;
                    }
                    loads += 1;
                }
                loads
            })
        })
        .collect();
    let mut w = TreeWriter::new(tree.clone());
    start.wait();
    for b in 0..BATCHES {
        for i in 0..BATCH {
            w.subscribe(
                parse_filter("load/#").unwrap(),
                SessionId::new(b * BATCH + i + 1),
                sub(1, 1),
            );
        }
        w.publish();
    }
    removing.store(true, Ordering::Release);
    for b in 0..BATCHES {
        for i in 0..BATCH {
            assert!(w
                .unsubscribe(
                    parse_filter("load/#").unwrap(),
                    SessionId::new(b * BATCH + i + 1)
                )
                .is_some());
        }
        w.publish();
    }
    done.store(true, Ordering::Release);
    for r in readers {
        assert!(r.join().expect("reader panicked") > 0);
    }
    assert_eq!(tree.load().count(), 0);
}
