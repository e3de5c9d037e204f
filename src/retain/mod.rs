//! Retained messages: one per topic name, in a trie by level so that a wildcard subscription
//! finds its matches without scanning every topic. Each level's names are kept in order, so
//! that a scan can stop anywhere and go on later from where it stopped (`scan`): what a new
//! subscription is owed is found a slice at a time, never under the lock for long.

mod levels;
mod scan;

use std::sync::Arc;

use crate::types::Message;
use levels::Levels;
pub use scan::ScanCursor;
use scan::Walk;

/// What one level of a topic holds in the store, counted against `retained_bytes_max`: its
/// entry in its parent (name, node) with room for a short name, measured (a chain of 200
/// empty levels: 15 MB for 200 topics).
pub const LEVEL_BYTES: usize = 96;

#[derive(Default)]
struct RetainNode {
    children: Levels<RetainNode>,
    message: Option<Arc<Message>>,
    /// Who published it, kept for `check_retain_source` only.
    source: Option<Arc<Source>>,
}

/// A retained message and who published it.
pub type Retained = (Arc<Message>, Option<Arc<Source>>);

/// The client that published a retained message: `check_retain_source` sends it to a new
/// subscriber only while this client may still publish to its topic (as Mosquitto).
#[derive(Debug)]
pub struct Source {
    pub client_id: Arc<str>,
    pub username: Option<String>,
    pub listener: usize,
}

/// A retained message would take the store past its bound (`RetainStore::try_set_from`).
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

#[derive(Default)]
pub struct RetainStore {
    root: RetainNode,
    count: usize,
    /// What the store holds: its levels (`LEVEL_BYTES` each) and messages
    /// (`Message::held_bytes`).
    levels: usize,
    message_bytes: usize,
    /// Changes made so far (and restored ones): orders changes journaled by different
    /// shards (`persist`).
    changes: u64,
}

impl RetainStore {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes the store holds, as counted against `retained_bytes_max`.
    pub fn bytes(&self) -> usize {
        self.levels * LEVEL_BYTES + self.message_bytes
    }

    /// As `set_from`, unless storing `message` would grow the store past `bytes_max`: a
    /// removal, a replacement by a message no larger, or one that fits are stored.
    pub fn try_set_from(
        &mut self,
        message: Arc<Message>,
        source: Option<Arc<Source>>,
        bytes_max: usize,
    ) -> Result<u64, Full> {
        if !message.payload.is_empty() {
            let (new_levels, old_bytes) = self.room_for(&message.topic);
            let growth =
                (new_levels * LEVEL_BYTES + message.held_bytes()).saturating_sub(old_bytes);
            if growth > 0 && self.bytes() + growth > bytes_max {
                return Err(Full);
            }
        }
        Ok(self.set_from(message, source))
    }

    /// For `topic`: how many of its levels the store lacks, and what the message it has
    /// there holds.
    fn room_for(&self, topic: &str) -> (usize, usize) {
        let mut node = &self.root;
        let mut levels = topic.split('/');
        for (depth, level) in levels.by_ref().enumerate() {
            match node.children.get(level) {
                Some(child) => node = child,
                None => return (topic.split('/').count() - depth, 0),
            }
        }
        (0, node.message.as_ref().map_or(0, |m| m.held_bytes()))
    }

    /// Stores `message` as the retained one for its topic, or with an empty payload removes
    /// it. [MQTT-3.3.1-5] [MQTT-3.3.1-10] [MQTT-3.3.1-11]
    pub fn set(&mut self, message: Arc<Message>) -> u64 {
        self.set_from(message, None)
    }

    /// As `set`, remembering who published it (for `check_retain_source`). Returns the
    /// change's number (increasing).
    pub fn set_from(&mut self, message: Arc<Message>, source: Option<Arc<Source>>) -> u64 {
        self.changes += 1;
        let topic = message.topic.to_string();
        if message.payload.is_empty() {
            if let Some(removed) = self.remove(&topic) {
                self.count -= 1;
                self.message_bytes -= removed.held_bytes();
            }
            return self.changes;
        }
        let mut node = &mut self.root;
        for level in topic.split('/') {
            let (child, made) = node.children.get_or_insert(level);
            self.levels += usize::from(made);
            node = child;
        }
        node.source = source;
        self.message_bytes += message.held_bytes();
        match node.message.replace(message) {
            Some(old) => self.message_bytes -= old.held_bytes(),
            None => self.count += 1,
        }
        self.changes
    }

    /// The number of the last change.
    pub fn last_change(&self) -> u64 {
        self.changes
    }

    /// Messages restored at start (`persist`); later changes are numbered after `changes`.
    pub fn restore(&mut self, retained: Vec<Retained>, changes: u64) {
        for (message, source) in retained {
            self.set_from(message, source);
        }
        self.changes = self.changes.max(changes);
    }

    /// Every retained message, with who published it, but the broker's own `$SYS` ones
    /// (what persistence keeps).
    pub fn all_but_sys(&self, out: &mut Vec<Retained>) {
        fn walk(node: &RetainNode, out: &mut Vec<Retained>) {
            if let Some(message) = &node.message {
                out.push((message.clone(), node.source.clone()));
            }
            for (_, child) in node.children.iter() {
                walk(child, out);
            }
        }
        for (name, child) in self.root.children.iter() {
            if name != "$SYS" {
                walk(child, out);
            }
        }
    }

    /// Removes the message at `topic`, if there is one, and the levels left empty.
    fn remove(&mut self, topic: &str) -> Option<Arc<Message>> {
        fn remove_below(
            node: &mut RetainNode,
            topic: &str,
            levels: &mut usize,
        ) -> Option<Arc<Message>> {
            let (level, rest) = match topic.split_once('/') {
                Some((level, rest)) => (level, Some(rest)),
                None => (topic, None),
            };
            let child = node.children.get_mut(level)?;
            let removed = match rest {
                None => {
                    child.source = None;
                    child.message.take()
                }
                Some(rest) => remove_below(child, rest, levels),
            };
            if child.message.is_none() && child.children.is_empty() {
                node.children.remove(level);
                *levels -= 1;
            }
            removed
        }
        remove_below(&mut self.root, topic, &mut self.levels)
    }

    /// The retained message of `topic` (a filter without wildcards), if `keep` accepts it.
    pub fn get(
        &self,
        topic: &str,
        keep: &dyn Fn(Option<&Source>, &Message) -> bool,
    ) -> Option<Arc<Message>> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        let mut out = Vec::new();
        Found {
            out: &mut out,
            keep,
        }
        .add(node);
        out.pop()
    }

    /// Every retained message whose topic matches `filter` (valid, not shared).
    pub fn matching(&self, filter: &str, out: &mut Vec<Arc<Message>>) {
        self.matching_from(filter, out, &|_, _| true);
    }

    /// As `matching`, keeping only messages whose source `keep` accepts (those stored
    /// without one are kept).
    pub fn matching_from(
        &self,
        filter: &str,
        out: &mut Vec<Arc<Message>>,
        keep: &dyn Fn(Option<&Source>, &Message) -> bool,
    ) {
        let levels: Vec<&str> = filter.split('/').collect();
        let mut found = Found { out, keep };
        Self::collect(&self.root, &levels, true, &mut found);
    }

    /// Goes on with a scan for the retained messages matching `filter` (valid, not shared)
    /// from `cursor`, putting those `keep` accepts in `out`, until it has looked at
    /// `visits_max` topic levels or found `found_max` messages. Returns how many levels it
    /// looked at; `cursor` is where the next slice goes on, or `None` once it is done.
    pub fn scan(
        &self,
        filter: &str,
        cursor: &mut Option<ScanCursor>,
        (visits_max, found_max): (usize, usize),
        out: &mut Vec<Arc<Message>>,
        keep: &dyn Fn(Option<&Source>, &Message) -> bool,
    ) -> usize {
        let levels: Vec<&str> = filter.split('/').collect();
        let mut walk = Walk {
            found: Found { out, keep },
            visits_left: visits_max.max(1),
            found_left: found_max.max(1),
            path: Vec::new(),
            stopped_at: None,
        };
        let after = cursor.as_ref().map(|c| &c.0[..]);
        let _ = walk.walk(&self.root, &levels, true, after);
        let visits = visits_max.max(1) - walk.visits_left;
        *cursor = walk.stopped_at.map(ScanCursor);
        visits
    }

    fn collect(node: &RetainNode, levels: &[&str], at_root: bool, out: &mut Found<'_>) {
        let Some((&level, rest)) = levels.split_first() else {
            out.add(node);
            return;
        };
        // [MQTT-4.7.2-1] wildcards at the first level do not match '$' topics.
        let visible = |name: &str| !(at_root && name.starts_with('$'));
        match level {
            "#" => {
                // '#' matches the parent level too.
                if !at_root {
                    out.add(node);
                }
                for (name, child) in node.children.iter() {
                    if visible(name) {
                        Self::collect_all(child, out);
                    }
                }
            }
            "+" => {
                for (name, child) in node.children.iter() {
                    if visible(name) {
                        Self::collect(child, rest, false, out);
                    }
                }
            }
            _ => {
                if let Some(child) = node.children.get(level) {
                    Self::collect(child, rest, false, out);
                }
            }
        }
    }

    fn collect_all(node: &RetainNode, out: &mut Found<'_>) {
        out.add(node);
        for (_, child) in node.children.iter() {
            Self::collect_all(child, out);
        }
    }
}

/// Where `collect` puts what it finds.
struct Found<'a> {
    out: &'a mut Vec<Arc<Message>>,
    keep: &'a dyn Fn(Option<&Source>, &Message) -> bool,
}

impl Found<'_> {
    /// Takes the node's message, if it has one that `keep` accepts. True if it did.
    fn add(&mut self, node: &RetainNode) -> bool {
        let Some(message) = &node.message else {
            return false;
        };
        if !(self.keep)(node.source.as_deref(), message) {
            return false;
        }
        self.out.push(message.clone());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{MqttStr, QoS};

    fn msg(topic: &str, payload: &'static [u8]) -> Arc<Message> {
        Arc::new(Message {
            topic: MqttStr::new(topic).unwrap(),
            payload: bytes::Bytes::from_static(payload),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: Default::default(),
            origin: None,
            expires_at: None,
            order: Default::default(),
            stream: Default::default(),
        })
    }

    fn topics(store: &RetainStore, filter: &str) -> Vec<String> {
        let mut out = Vec::new();
        store.matching(filter, &mut out);
        let mut t: Vec<String> = out.iter().map(|m| m.topic.to_string()).collect();
        t.sort();
        t
    }

    #[test]
    fn stores_replaces_deletes_and_matches() {
        let mut s = RetainStore::default();
        for t in ["a", "a/b", "a/b/c", "$SYS/x", "b/c"] {
            s.set(msg(t, b"1"));
        }
        s.set(msg("a/b", b"2"));
        assert_eq!(s.len(), 5);
        assert_eq!(topics(&s, "#"), ["a", "a/b", "a/b/c", "b/c"]);
        assert_eq!(topics(&s, "a/#"), ["a", "a/b", "a/b/c"]);
        assert_eq!(topics(&s, "+/+"), ["a/b", "b/c"]);
        assert_eq!(topics(&s, "$SYS/#"), ["$SYS/x"]);
        assert_eq!(topics(&s, "+/x"), Vec::<String>::new());
        s.set(msg("a/b", b""));
        assert_eq!(s.len(), 4);
        assert_eq!(topics(&s, "a/+"), Vec::<String>::new());
        s.set(msg("a/b/c", b""));
        s.set(msg("a", b""));
        assert_eq!(topics(&s, "#"), ["b/c"]);
        assert!(
            s.root.children.get("a").is_none(),
            "empty branches are pruned"
        );
    }

    /// The store counts each level and message it holds and gives it all back; past its
    /// bound it takes removals and replacements that do not grow it, and nothing else.
    #[test]
    fn what_the_store_holds_is_counted_and_bounded() {
        let mut s = RetainStore::default();
        let held = |m: &Arc<Message>| m.held_bytes();
        let deep = msg("x/////", b"1");
        assert_eq!(s.try_set_from(deep.clone(), None, usize::MAX), Ok(1));
        assert_eq!(s.bytes(), 6 * LEVEL_BYTES + held(&deep));
        let bound = s.bytes();
        let sibling = msg("x/y", b"1");
        assert_eq!(s.try_set_from(sibling.clone(), None, bound), Err(Full));
        assert_eq!(s.try_set_from(msg("x/////", b"2"), None, bound), Ok(2));
        assert_eq!(s.try_set_from(msg("x/////", b"22"), None, bound), Err(Full));
        assert_eq!(s.len(), 1);
        assert!(s.try_set_from(msg("x/////", b""), None, 0).is_ok());
        assert_eq!((s.len(), s.bytes()), (0, 0));
        assert!(s.try_set_from(sibling.clone(), None, usize::MAX).is_ok());
        s.set(msg("x/y/z", b"1"));
        s.set(msg("x/y", b""));
        s.set(msg("x/y/z", b""));
        assert_eq!(s.bytes(), 0, "every level and message given back");
    }

    /// Every topic of `store` that `filter` matches, found in slices of `visits` levels and
    /// `found` messages, with `between` applied to the store between slices.
    fn scanned(
        store: &mut RetainStore,
        filter: &str,
        (visits, found): (usize, usize),
        mut between: impl FnMut(&mut RetainStore, usize),
    ) -> Vec<String> {
        let mut out = Vec::new();
        let mut cursor = None;
        let mut slices = 0;
        loop {
            let looked = store.scan(filter, &mut cursor, (visits, found), &mut out, &|_, _| true);
            assert!(looked <= visits.max(1));
            slices += 1;
            assert!(slices < 100_000, "the scan goes on forever");
            if cursor.is_none() {
                return out.iter().map(|m| m.topic.to_string()).collect();
            }
            between(store, slices);
        }
    }

    /// A store of topics from a few level names, deep and wide enough for every filter
    /// shape, `$` topics among them.
    fn varied_store(seed: u64) -> (RetainStore, Vec<String>) {
        let names = ["a", "b", "$x", "c", "+x", "d"];
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move |n: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % n as u64) as usize
        };
        let mut store = RetainStore::default();
        let mut topics = Vec::new();
        for _ in 0..200 {
            let depth = 1 + next(4);
            let levels: Vec<&str> = (0..depth)
                .map(|i| {
                    if i > 0 && names[next(6)] == "$x" {
                        "e"
                    } else {
                        names[next(6)]
                    }
                })
                .collect();
            let topic = levels.join("/").replace('+', "p");
            store.set(msg(&topic, b"1"));
            topics.push(topic);
        }
        topics.sort();
        topics.dedup();
        (store, topics)
    }

    const FILTERS: [&str; 12] = [
        "#", "a/#", "+", "+/+", "+/b/#", "a/+/c", "$x/#", "$x/+", "b", "a/b/c/d", "+/+/+/+", "d/#",
    ];

    #[test]
    fn a_scan_in_slices_finds_what_matching_does_once_each() {
        for seed in 0..40 {
            let (mut store, _) = varied_store(seed);
            for filter in FILTERS {
                let expected = topics(&store, filter);
                for slice in [(1, 1), (1, 1000), (2, 1), (3, 2), (7, 3), (1000, 1000)] {
                    let mut got = scanned(&mut store, filter, slice, |_, _| {});
                    let in_order = got.clone();
                    got.sort();
                    assert_eq!(
                        got, expected,
                        "{filter} in slices of {slice:?}, seed {seed}"
                    );
                    got.dedup();
                    assert_eq!(got.len(), in_order.len(), "duplicates for {filter}");
                }
            }
        }
    }

    /// Between slices the store changes: a message there all along is found once, one
    /// removed before the scan reaches it is not found, nothing is found twice.
    #[test]
    fn a_scan_survives_changes_between_slices() {
        for seed in 0..40 {
            let (_, topics_before) = varied_store(seed);
            for filter in FILTERS {
                let (mut s, _) = varied_store(seed);
                let all = topics(&s, filter);
                // Removes every third topic and adds new ones as the scan goes.
                let mut removed = Vec::new();
                let got = scanned(&mut s, filter, (3, 2), |store, slice| {
                    if slice % 3 == 0 {
                        let victim = &topics_before[(slice * 7) % topics_before.len()];
                        store.set(msg(victim, b""));
                        removed.push(victim.clone());
                    }
                    store.set(msg(&format!("a/new{slice}"), b"1"));
                });
                let mut sorted = got.clone();
                sorted.sort();
                sorted.dedup();
                assert_eq!(sorted.len(), got.len(), "duplicates for {filter}");
                for topic in &all {
                    if !removed.contains(topic) {
                        assert!(
                            got.contains(topic),
                            "{topic} missed by {filter}, seed {seed}"
                        );
                    }
                }
            }
        }
    }
}
