//! What the subscription trie holds per subscription, counted by the allocator (requested
//! bytes, so the figure does not depend on the allocator or on the machine). The broker's
//! RSS per subscription is measured by `scripts/memory.py`; this keeps the trie's share of
//! it from growing back unnoticed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use midge::topic::*;

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed on unchanged to the system allocator, which upholds
// `GlobalAlloc`'s contract; the counter only observes sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's layout goes on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn bytes_per_subscription(filters: &[String], sessions: u64) -> f64 {
    let sub = Subscription {
        shard: 0,
        options: Default::default(),
        identifier: None,
    };
    let tree = SubscriptionTree::new();
    let mut writer = TreeWriter::new(tree.clone());
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    for (i, filter) in filters.iter().enumerate() {
        let session = SessionId::new(i as u64 % sessions + 1);
        writer.subscribe(parse_filter(filter).unwrap(), session, sub);
        if i % 1000 == 999 {
            writer.publish();
        }
    }
    writer.publish();
    assert_eq!(tree.load().count(), filters.len());
    let bytes = (LIVE_BYTES.load(Ordering::Relaxed) - before) as f64 / filters.len() as f64;
    println!("{bytes:.0} bytes per subscription");
    bytes
}

/// The allocator's counter is global: the measurements run one after the other.
#[test]
fn bytes_per_subscription_stay_small() {
    // memory.py's shape: 1000 levels of 100 filters each, over 10 sessions.
    let per_level: Vec<String> = (0..100_000)
        .map(|i| format!("memory/sub/{}/{i}", i / 100))
        .collect();
    let bytes = bytes_per_subscription(&per_level, 10);
    // A node with its name inline (112 bytes with its reference count) and its slot in a
    // hash trie: 150 measured when this was written. `imbl`'s maps and a node, a leaf, a
    // member list and a name apiece cost 360.
    assert!(bytes < 170.0, "{bytes:.0} bytes per subscription");

    // One device each on `devices/{id}/telemetry`: a million-child level, and a node per
    // device with one child.
    let devices: Vec<String> = (0..100_000)
        .map(|id| format!("devices/{id}/telemetry"))
        .collect();
    let bytes = bytes_per_subscription(&devices, 100_000);
    assert!(bytes < 280.0, "{bytes:.0} bytes per subscription");
}
